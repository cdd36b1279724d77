"""Token shards: the on-disk format and its writer.

A shard is two files side by side:

    shard-NNNNN.bin   token ids, a flat little-endian array: uint16 ("<u2") when the tokenizer's
                      vocab_size <= 65536, else uint32 ("<u4"). No header: `bytes = tokens * itemsize`.
    shard-NNNNN.idx   document starts, a flat little-endian uint64 ("<u8") array of
                      `documents + 1` offsets in tokens: idx[0] == 0, strictly increasing,
                      idx[-1] == tokens (the end). Document d is bin[idx[d]:idx[d+1]].

Raw arrays rather than .npy so that any language can read them with no parser, and both map
directly with `numpy.memmap`. Documents are stored as given (the tokenizer stage decides about
BOS/EOS). A document never straddles two shards unless it alone exceeds the shard size; then
it is cut into shard-sized pieces and every shard after the first piece is marked
`continues_previous` (its idx[0] starts the rest of the previous shard's last document).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from contract.atomic import write_atomic

TOKEN_DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
INDEX_DTYPE = np.dtype("<u8")
UINT16_MAX_VOCAB = 2**16
DEFAULT_TARGET_TOKENS = 2**24  # 32 MiB of uint16: one HTTP fetch, cheap to re-verify
_HASH_CHUNK = 8 * 2**20


def token_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a manifest `dtype` name ("uint16" | "uint32")."""
    try:
        return TOKEN_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown token dtype {name!r}: expected one of {sorted(TOKEN_DTYPES)}") from None


def dtype_for_vocab(vocab_size: int) -> str:
    """The narrowest shard dtype that holds every id of a vocabulary of this size."""
    if vocab_size < 1 or vocab_size > 2**32:
        raise ValueError(f"vocab_size {vocab_size} out of range [1, 2**32]")
    return "uint16" if vocab_size <= UINT16_MAX_VOCAB else "uint32"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def open_tokens(path: str | os.PathLike, dtype: str) -> np.ndarray:
    """Memory-map a shard's .bin read-only (an empty file maps to an empty array)."""
    dt = token_dtype(dtype)
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=dt)
    return np.memmap(path, dtype=dt, mode="r")


def open_index(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a shard's .idx read-only."""
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=INDEX_DTYPE)
    return np.memmap(path, dtype=INDEX_DTYPE, mode="r")


def index_problem(idx: np.ndarray, tokens: int, documents: int) -> str | None:
    """Why `idx` is not a valid document index for a shard of `tokens` / `documents`, or None."""
    if len(idx) != documents + 1:
        return f"index holds {len(idx)} offsets, expected documents + 1 = {documents + 1}"
    if int(idx[0]) != 0:
        return f"index starts at {int(idx[0])}, expected 0"
    if int(idx[-1]) != tokens:
        return f"index ends at {int(idx[-1])}, expected the token count {tokens}"
    if documents > 0 and not bool(np.all(idx[1:] > idx[:-1])):
        bad = int(np.argmax(idx[1:] <= idx[:-1]))
        return f"index is not strictly increasing at document {bad} ({int(idx[bad])} -> {int(idx[bad + 1])})"
    return None


@dataclass(frozen=True)
class ShardRecord:
    """What the writer knows about one finished shard: everything its manifest entry needs."""

    path: str | Path  # the .bin (a local path, or a URI once published to a store)
    index_path: str | Path  # the .idx
    bytes: int
    tokens: int
    documents: int  # pieces in this shard: a continued document counts once per shard it spans
    sha256: str
    index_sha256: str
    domains: dict[str, int]  # domain -> tokens
    continues_previous: bool = False


@dataclass
class _OpenShard:
    name: str
    bin_tmp: Path
    file: BinaryIO
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    tokens: int = 0
    starts: list[int] = field(default_factory=list)
    domains: Counter = field(default_factory=Counter)
    continues_previous: bool = False


class ShardWriter:
    """Append documents, get shards of at most `target_tokens` tokens.

    Each file is written under a hidden temporary name, fsynced, then renamed into place
    (.idx first, .bin last), so a reader never sees half a shard. Use as a context manager, or
    call `close()`; both return/keep the per-shard records in `records`. On an exception inside
    the `with` block the unfinished shard's temporary file is deleted; finished shards stay.

    Several writers may share one folder if their `start_index` ranges do not overlap.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        dtype: str,
        target_tokens: int = DEFAULT_TARGET_TOKENS,
        start_index: int = 0,
    ) -> None:
        if target_tokens < 1:
            raise ValueError(f"target_tokens must be >= 1, got {target_tokens}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self._np_dtype = token_dtype(dtype)
        self._max_id = int(np.iinfo(self._np_dtype).max)
        self.target_tokens = int(target_tokens)
        self._next_index = start_index
        self._open: _OpenShard | None = None
        self.records: list[ShardRecord] = []
        self._closed = False

    def add(self, doc_ids: np.ndarray, domain: str) -> None:
        """Append one document (a 1-D array of non-negative integer token ids)."""
        if self._closed:
            raise ValueError("ShardWriter is closed")
        ids = np.asarray(doc_ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"a document is a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
        if ids.size == 0:
            raise ValueError("empty document: every document needs at least one token")
        if int(ids.min()) < 0 or int(ids.max()) > self._max_id:
            raise ValueError(
                f"token ids must lie in [0, {self._max_id}] for dtype {self.dtype}, "
                f"got [{int(ids.min())}, {int(ids.max())}]"
            )
        data = np.ascontiguousarray(ids, dtype=self._np_dtype)
        if self._open is not None and self._open.tokens + len(data) > self.target_tokens:
            self._roll()
        continued = False
        # Only a document longer than a whole shard gets here more than once.
        while len(data) > self.target_tokens:
            self._append(data[: self.target_tokens], domain, continued)
            data = data[self.target_tokens :]
            self._roll()
            continued = True
        self._append(data, domain, continued)

    def close(self) -> list[ShardRecord]:
        if not self._closed:
            self._roll()
            self._closed = True
        return list(self.records)

    def abort(self) -> None:
        """Drop the unfinished shard (its temporary file); finished shards stay."""
        if self._open is not None:
            self._open.file.close()
            self._open.bin_tmp.unlink(missing_ok=True)
            self._open = None
        self._closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _append(self, piece: np.ndarray, domain: str, continued: bool) -> None:
        shard = self._open or self._start()
        if continued and shard.tokens == 0:
            shard.continues_previous = True
        shard.starts.append(shard.tokens)
        raw = piece.tobytes()
        shard.file.write(raw)
        shard.digest.update(raw)
        shard.tokens += len(piece)
        shard.domains[domain] += len(piece)

    def _start(self) -> _OpenShard:
        name = shard_name(self._next_index)
        self._next_index += 1
        tmp = self.out_dir / f".{name}.bin.{os.getpid()}.tmp"
        self._open = _OpenShard(name=name, bin_tmp=tmp, file=open(tmp, "wb"))
        return self._open

    def _roll(self) -> None:
        shard, self._open = self._open, None
        if shard is None:
            return
        shard.file.flush()
        os.fsync(shard.file.fileno())
        shard.file.close()
        index = np.asarray(shard.starts + [shard.tokens], dtype=INDEX_DTYPE).tobytes()
        idx_path = self.out_dir / f"{shard.name}.idx"
        bin_path = self.out_dir / f"{shard.name}.bin"
        write_atomic(idx_path, index)
        os.replace(shard.bin_tmp, bin_path)
        self.records.append(
            ShardRecord(
                path=bin_path,
                index_path=idx_path,
                bytes=shard.tokens * self._np_dtype.itemsize,
                tokens=shard.tokens,
                documents=len(shard.starts),
                sha256=shard.digest.hexdigest(),
                index_sha256=hashlib.sha256(index).hexdigest(),
                domains=dict(sorted(shard.domains.items())),
                continues_previous=shard.continues_previous,
            )
        )


