"""The service's storage root: a local folder or any `pyarrow.fs` URI (`s3://bucket/prefix`).

Everything the service writes lives under one root, addressed by *keys* (relative POSIX paths
the service makes itself, checked by `check_key`):

    tmp/<uuid>                      uploads in flight on local storage (moved into place when complete)
    corpora/<corpus_id>/<name>      uploaded corpus files
    jobs/<job_id>/                  a job's OUTPUT: data/, rejects/, stats.json, manifest.json, shards/
    training/<training_job_id>/     a training job's out_dir: metrics.jsonl, checkpoints/
    ablations/<ablation_id>/        an ablation's OUT: variants/, holdout/, ablation.json

Jobs get `uri(key)`, a location `contract.stores.filesystem_for` understands, so the Ray
workers write to the same place the service reads from.
"""

from __future__ import annotations

import posixpath
import time
from urllib.parse import unquote

import pyarrow.fs as pafs

from contract.stores import filesystem_for, is_object_store

TMP = "tmp"


class UnsafeKey(ValueError):
    pass


def check_key(key: str) -> str:
    """`key` if it is a plain relative path inside the root; `UnsafeKey` otherwise."""
    decoded = unquote(key)
    parts = decoded.split("/")
    if (not key or decoded.startswith("/") or "\\" in decoded or "\x00" in decoded
            or any(p in ("", ".", "..") for p in parts)):
        raise UnsafeKey(f"not a safe storage key: {key!r}")
    return key


class Storage:
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, base = filesystem_for(self.root)
        self.base = base.rstrip("/")
        self.fs.create_dir(self.base, recursive=True)

    @property
    def publishes_on_close(self) -> bool:
        """True on object stores (S3, GCS): a streamed object appears only when its stream is closed
        (the multipart upload completes). A local file is there, half written, from the start."""
        return is_object_store(self.fs)

    def path(self, key: str) -> str:
        """The path of `key` inside `self.fs`."""
        return f"{self.base}/{check_key(key)}"

    def uri(self, key: str) -> str:
        """A location of `key` for other processes (a local absolute path or a URI)."""
        return f"{self.root}/{check_key(key)}"

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self.path(key)).type != pafs.FileType.NotFound

    def size(self, key: str) -> int:
        return self.fs.get_file_info(self.path(key)).size

    def open_write(self, key: str):
        path = self.path(key)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        return self.fs.open_output_stream(path)

    def move(self, src: str, dst: str) -> None:
        dst_path = self.path(dst)
        self.fs.create_dir(posixpath.dirname(dst_path), recursive=True)
        self.fs.move(self.path(src), dst_path)

    def delete(self, key: str) -> None:
        try:
            self.fs.delete_file(self.path(key))
        except FileNotFoundError:
            pass

    def delete_tree(self, key: str) -> None:
        try:
            self.fs.delete_dir(self.path(key))
        except FileNotFoundError:
            pass

    def sweep_tmp(self, older_than_s: float = 24 * 3600) -> int:
        """Delete uploads left in tmp/ by a crashed server; recent ones may still be in flight."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(TMP), allow_not_found=True))
        cutoff = time.time() - older_than_s
        stale = [i.path for i in infos if i.type == pafs.FileType.File and i.mtime and i.mtime.timestamp() < cutoff]
        for p in stale:
            self.fs.delete_file(p)
        return len(stale)
