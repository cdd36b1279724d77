"""`tokenize`: train (or load) a byte-level BPE, encode every document, write token shards.

    OUTPUT/tokenizer.json            the tokenizer (trained on a seeded sample, or copied)
    OUTPUT/shards/shard-<key>-<n>-<hash>.bin   token ids (uint16 when the vocabulary fits, else uint32)
    OUTPUT/shards/shard-<key>-<n>-<hash>.idx   document starts (see contract/shards.py)
    OUTPUT/manifest.json             written by `finalize(run_stats)` once the run's stats exist

1. Tokenizer: `tokenizer: PATH` is copied byte for byte; otherwise a BPE is trained on the
   driver from a sample streamed with `iter_batches` (documents kept with probability
   train_sample_docs / docs by a hash of (seed, id), stopping at train_sample_bytes), so the
   driver holds the trainer's pre-token counts, never the corpus.
2. Encode: `map_batches` tasks; the tokenizer is built once per worker process from the
   tokenizer.json text (so workers need no shared disk for it); `encode_batch_fast` per batch.
   A document becomes `ids + [EOS]`: EOS separates documents in the packed stream and the .idx
   marks where each starts, so no BOS by default (`add_bos: true` puts one in front too).
   `n_bpe_tokens` is the length of that one copy, EOS (and BOS) included.
3. Order: each document is written `repeats` times (the `mixture` stage's column; once when it
   did not run). Copy r of document id gets the key hash(seed, id, r) and a Ray Data sort on the
   key spreads repeats over the stream. The key is uniform on [0, 2^62), so the sort is given
   exact boundaries for P equal ranges, P = ceil(tokens / (0.9 * shard_tokens)): each range then
   fills about one shard (the 0.9 leaves room for the ranges' sampling noise).
4. Write: one `ShardWriter` per key range (as Ray hands the sorted blocks over), into local
   scratch; each finished shard is then published under its final name, `shard-<first key of
   its range>-<n>-<content hash>`: a rename on local disk, one upload on an object store (no
   shared disk: the worker writes straight to the output). The manifest lists them in key
   order. Output is identical for any block count of the input.

OUTPUT is a local path or any `pyarrow.fs` URI (`s3://`: the standard AWS_* variables give the
endpoint and credentials). An object store has no atomic rename, so the names carry the key
range and the content hash, and `manifest.json`, written last, is the commit point: a failed run
publishes none, and a manifest never names a shard of another run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyarrow import fs as pafs
from pydantic import Field, model_validator

from contract.atomic import write_atomic
from contract.layout import CurationRun, join
from contract.manifest import build_manifest, installed_flywheel_version, write_manifest
from contract.shards import ShardRecord, ShardWriter, dtype_for_vocab
from contract.stores import filesystem_for
from contract.tokenizer import SpecialTokens, load_tokenizer, special_ids, vocab_size_of
from curation.stages.base import KEPT, RunContext, Stage, StageParams, set_column, with_verdicts
from curation.stages.mixture import REPEATS
from curation.tokenizer import BYTE_ALPHABET_SIZE, batched_texts, train_bpe

if TYPE_CHECKING:
    import ray.data


TOKENS = "_tokens"  # list<uint32> per document; never leaves the stage
ORDER = "_order"
N_BPE = "n_bpe_tokens"
KEY_BITS = 62
FILL = 0.9  # a sort range holds ~90% of a shard, so noise rarely spills it into a second one


class TokenizeParams(StageParams):
    vocab_size: int = Field(default=128_000, ge=BYTE_ALPHABET_SIZE + 3, le=2**32)
    tokenizer: str | None = None  # an existing tokenizer.json (path or URI) instead of training
    special_tokens: SpecialTokens = SpecialTokens()
    min_frequency: int = Field(default=2, ge=1)  # BPE: a pair must occur this often to merge
    train_sample_docs: int = Field(default=1_000_000, ge=1)
    train_sample_bytes: int = Field(default=2**30, ge=1)
    shard_tokens: int = Field(default=2**24, ge=1)
    add_bos: bool = False
    dataset_id: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one_vocabulary(self) -> "TokenizeParams":
        if self.tokenizer is not None and "vocab_size" in self.model_fields_set:
            raise ValueError("vocab_size comes from the tokenizer file: give `tokenizer` or `vocab_size`, not both")
        return self


def _publish(local: Path, fs: pafs.FileSystem, dest: str) -> None:
    """A finished local file to `dest` on `fs`: a rename on local disk (scratch lies in the same
    folder tree), one upload elsewhere (an object appears whole or not at all)."""
    if isinstance(fs, pafs.LocalFileSystem):
        os.replace(local, dest)
        return
    pafs.copy_files(str(local), dest, destination_filesystem=fs)
    local.unlink()


def published_name(part: int, local: int, record: ShardRecord) -> str:
    """A shard's final name: unique within a run (its key range and place in it) and naming its
    content, so no stale object of an earlier run on the same output can pass for it."""
    content = hashlib.sha256(f"{record.sha256}:{record.index_sha256}".encode()).hexdigest()[:16]
    return f"shard-{part:016x}-{local:04d}-{content}"


def _hash_key(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little")


class _TrainSample:
    """Keeps each document with probability `rate`, decided by hash(seed, id): same sample on
    every run, whatever the blocks."""

    def __init__(self, seed: int, rate: float):
        self.prefix = f"{seed}\x00".encode()
        self.threshold = int(rate * 2**64)

    def __call__(self, batch: pa.Table) -> pa.Table:
        keep = [_hash_key(self.prefix + i.encode(), b"bpe-sample") < self.threshold for i in batch["id"].to_pylist()]
        return batch.filter(pa.array(keep, pa.bool_()))


def train_tokenizer_on(ds: "ray.data.Dataset", n_docs: int, p: TokenizeParams, seed: int) -> tuple[str, dict[str, Any]]:
    """Train the BPE on a seeded sample of `ds` (id, text); returns its tokenizer.json text and
    how it was trained. The sample streams to the driver with `iter_batches`: the driver holds
    the BPE trainer's pre-token counts, never the corpus."""
    rate = min(1.0, p.train_sample_docs / max(n_docs, 1))
    sample = ds.select_columns(["id", "text"]).map_batches(_TrainSample(seed, rate), batch_format="pyarrow")
    counted = {"docs": 0, "bytes": 0}

    def texts():
        for chunk in batched_texts(sample.iter_batches(batch_format="pyarrow", batch_size=256),
                                   p.train_sample_docs, p.train_sample_bytes):
            counted["docs"] += len(chunk)
            counted["bytes"] += sum(len(t.encode()) for t in chunk)
            yield chunk

    tok = train_bpe(texts(), p.vocab_size, p.special_tokens, p.min_frequency)
    return tok.to_str(), {"trained": True, "requested_vocab_size": p.vocab_size, "sample_docs": counted["docs"],
            "sample_bytes": counted["bytes"]}


_TOKENIZERS: dict[str, Any] = {}  # per worker process: sha256 of tokenizer.json -> tokenizer


class _Encoder:
    """Task: adds `_tokens`, `n_bpe_tokens` and a kept verdict. The tokenizer is built once per
    worker process (Ray reuses them across tasks) and cached there.

    NOTE: plain tasks rather than an actor pool: actors cost a fresh process each (seconds) and
    hold their CPU for the whole operator, while the cached tokenizer gives the same
    once-per-worker set-up."""

    def __init__(self, tokenizer_json: str, eos: int, bos: int | None):
        self.tokenizer_json = tokenizer_json
        self.key = hashlib.sha256(tokenizer_json.encode()).hexdigest()
        self.eos, self.bos = eos, bos

    def _tokenizer(self):
        tok = _TOKENIZERS.get(self.key)
        if tok is None:
            # One CPU per task: Ray supplies the parallelism, the tokenizer's own threads would
            # only oversubscribe the cores.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            tok = _TOKENIZERS[self.key] = load_tokenizer(self.tokenizer_json)
        return tok

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [t or "" for t in batch["text"].to_pylist()]
        ids = [e.ids for e in self._tokenizer().encode_batch_fast(texts, add_special_tokens=False)]
        head = 0 if self.bos is None else 1
        lengths = np.fromiter((len(x) + head + 1 for x in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=np.uint32)
        for start, end, x in zip(offsets[:-1], offsets[1:], ids):
            if head:
                values[start] = self.bos
            values[start + head:end - 1] = x
            values[end - 1] = self.eos
        tokens = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
        batch = set_column(batch, TOKENS, tokens)
        batch = set_column(batch, N_BPE, pa.array(lengths, pa.int64()))
        return with_verdicts(batch, [KEPT] * batch.num_rows, None)


class _Copies:
    """Each document `repeats` times, each copy with its order key hash(seed, id, r) in [0, 2^62)."""

    def __init__(self, seed: int):
        self.prefix = f"{seed}\x00".encode()

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        if REPEATS in batch.column_names:
            repeats = batch[REPEATS].to_numpy(zero_copy_only=False).astype(np.int64)
            batch = batch.drop_columns([REPEATS])
        else:
            repeats = np.ones(n, dtype=np.int64)
        rows = np.repeat(np.arange(n), repeats)
        copy = np.arange(len(rows)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
        ids = batch["id"].to_pylist()
        keys = [_hash_key(self.prefix + ids[i].encode() + b"\x00" + str(r).encode(), b"order") >> (64 - KEY_BITS)
                for i, r in zip(rows.tolist(), copy.tolist())]
        out = batch.take(pa.array(rows, pa.int64()))
        return out.append_column(ORDER, pa.array(keys, pa.int64()))


_PART_SCHEMA = pa.schema([
    ("part", pa.int64()), ("local", pa.int64()), ("path", pa.string()), ("index_path", pa.string()),
    ("bytes", pa.int64()), ("tokens", pa.int64()), ("documents", pa.int64()), ("sha256", pa.string()),
    ("index_sha256", pa.string()), ("domains", pa.string()), ("continues_previous", pa.bool_()),
])


class _PartWriter:
    """Task: a sorted block -> shards in `parts_dir/<first key>/`, returned as record rows.

    Ray may hand over a range split in several blocks, or (fused) several ranges in one batch:
    the batch is cut at the sort boundaries here, so which documents share a shard depends only
    on the ranges, never on how blocks were bundled."""

    def __init__(self, shards_uri: str, dtype: str, shard_tokens: int, boundaries: list[int]):
        self.shards_uri = shards_uri
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.boundaries = np.asarray(boundaries, dtype=np.int64)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows == 0:
            return _PART_SCHEMA.empty_table()
        keys = batch[ORDER].to_numpy(zero_copy_only=False)
        if np.any(keys[1:] < keys[:-1]):
            raise RuntimeError("tokenize: a block after the sort is not in key order")
        tokens = batch[TOKENS].combine_chunks()
        offsets = tokens.offsets.to_numpy()
        values = tokens.values.to_numpy()
        domains = batch["domain"].to_pylist()
        ranges = np.searchsorted(self.boundaries, keys, side="right")
        cuts = np.flatnonzero(np.diff(ranges)) + 1
        fs, root = filesystem_for(self.shards_uri)
        local = isinstance(fs, pafs.LocalFileSystem)
        if local:
            fs.create_dir(root)
        # Scratch beside the output on local disk (a rename publishes), else this node's temp.
        scratch = Path(tempfile.mkdtemp(prefix=".parts-", dir=root if local else None))
        rows = []
        try:
            for start, end in zip(np.r_[0, cuts], np.r_[cuts, len(keys)]):
                first = int(keys[start])
                with ShardWriter(scratch / f"{first:016x}", self.dtype, target_tokens=self.shard_tokens) as writer:
                    for i in range(start, end):
                        writer.add(values[offsets[i]:offsets[i + 1]], domains[i])
                for k, r in enumerate(writer.records):
                    name = published_name(first, k, r)
                    _publish(r.index_path, fs, f"{root}/{name}.idx")
                    _publish(r.path, fs, f"{root}/{name}.bin")  # .bin last: a listed .bin has its .idx
                    rows.append({"part": first, "local": k, "path": f"{name}.bin", "index_path": f"{name}.idx",
                                 "bytes": r.bytes, "tokens": r.tokens, "documents": r.documents,
                                 "sha256": r.sha256, "index_sha256": r.index_sha256,
                                 "domains": json.dumps(r.domains), "continues_previous": r.continues_previous})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return pa.Table.from_pylist(rows, schema=_PART_SCHEMA)


def _token_partials(batch: pa.Table) -> pa.Table:
    bpe = batch[N_BPE].to_numpy(zero_copy_only=False).astype(np.int64)
    words = batch["n_tokens"].to_numpy(zero_copy_only=False).astype(np.int64)
    repeats = (batch[REPEATS].to_numpy(zero_copy_only=False).astype(np.int64)
               if REPEATS in batch.column_names else np.ones_like(bpe))
    return pa.table({"docs": [batch.num_rows], "bpe": [int(bpe.sum())], "words": [int(words.sum())],
                     "copies": [int(repeats.sum())], "bpe_out": [int((bpe * repeats).sum())]})


def token_totals(encoded: "ray.data.Dataset") -> dict[str, int]:
    """docs, bpe (one copy each), words, copies and bpe_out (with repeats) over `encoded`."""
    columns = [N_BPE, "n_tokens"] + ([REPEATS] if REPEATS in encoded.columns() else [])
    totals = {"docs": 0, "bpe": 0, "words": 0, "copies": 0, "bpe_out": 0}
    for row in encoded.select_columns(columns).map_batches(_token_partials, batch_format="pyarrow",
                                                           batch_size=None).take_all():
        for k in totals:
            totals[k] += int(row[k])
    return totals


def write_shards(encoded: "ray.data.Dataset", shards_uri: str, dtype: str, shard_tokens: int, seed: int,
                 total_tokens: int) -> list["ShardRecord"]:
    """Every copy of every document of `encoded`, in hash order, as shards under `shards_uri`
    (a local folder or a URI), written by the workers; their records in stream order."""

    partitions = max(1, math.ceil(total_tokens / (FILL * shard_tokens)))
    # The last boundary is the end of the key space (no key reaches it): the list is never
    # empty, which would make Ray sample boundaries instead.
    boundaries = [(i << KEY_BITS) // partitions for i in range(1, partitions + 1)]
    columns = ["id", "domain", TOKENS] + ([REPEATS] if REPEATS in encoded.columns() else [])
    rows = (encoded.select_columns(columns)
            .map_batches(_Copies(seed), batch_format="pyarrow", batch_size=1024)
            .sort(ORDER, boundaries=boundaries)
            .map_batches(_PartWriter(shards_uri, dtype, shard_tokens, boundaries), batch_format="pyarrow",
                         batch_size=None)
            .take_all())
    return [ShardRecord(path=join(shards_uri, row["path"]), index_path=join(shards_uri, row["index_path"]),
                        bytes=row["bytes"], tokens=row["tokens"], documents=row["documents"], sha256=row["sha256"],
                        index_sha256=row["index_sha256"], domains=json.loads(row["domains"]),
                        continues_previous=row["continues_previous"])
            for row in sorted(rows, key=lambda r: (r["part"], r["local"]))]


class Tokenize(Stage):
    name = "tokenize"
    method = "Byte-level BPE + shards"
    Params = TokenizeParams
    reads = ("id", "text", "domain", "n_tokens")  # and `repeats`, when the mixture stage ran
    writes = (N_BPE,)

    def __init__(self, params: TokenizeParams, ctx: RunContext):
        super().__init__(params, ctx)
        self.records: list[ShardRecord] = []
        self.summary: dict[str, Any] = {}
        self.tokenizer_sha256 = ""

    @property
    def run_files(self) -> CurationRun:
        return CurationRun(self.ctx.output)

    def run(self, ds: "ray.data.Dataset") -> "ray.data.Dataset":
        p: TokenizeParams = self.params
        run = self.run_files
        started = time.perf_counter()
        n_docs = ds.count()
        if n_docs == 0:
            raise ValueError("tokenize: no documents reached this stage, so there is nothing to tokenize")
        tokenizer_json, training = self._tokenizer(ds, n_docs)
        fs, tokenizer_path = filesystem_for(run.tokenizer)
        fs.create_dir(tokenizer_path.rsplit("/", 1)[0])
        write_atomic(tokenizer_path, tokenizer_json.encode(), fs)
        self.tokenizer_sha256 = hashlib.sha256(tokenizer_json.encode()).hexdigest()
        tok = load_tokenizer(tokenizer_json)
        ids = special_ids(tok, p.special_tokens)
        if p.add_bos and ids.bos is None:
            raise ValueError(f"add_bos: the tokenizer has no {p.special_tokens.bos!r} token")
        vocab = vocab_size_of(tok)
        dtype = dtype_for_vocab(vocab)
        trained_at = time.perf_counter()

        encoder = _Encoder(tokenizer_json, ids.eos, ids.bos if p.add_bos else None)
        encoded = ds.map_batches(encoder, batch_format="pyarrow", batch_size=512, zero_copy_batch=True).materialize()
        totals = token_totals(encoded)
        encoded_at = time.perf_counter()

        self.records = write_shards(encoded, run.shards, dtype, p.shard_tokens, self.ctx.seed, totals["bpe_out"])
        written_at = time.perf_counter()
        self.summary = {
            "tokenizer": {**training, "file": CurationRun.TOKENIZER, "vocab_size": vocab,
                          "special_ids": {"bos": ids.bos, "eos": ids.eos, "pad": ids.pad}, "add_bos": p.add_bos},
            "dtype": dtype,
            "bpe_tokens": totals["bpe"],
            "bpe_tokens_per_word": round(totals["bpe"] / totals["words"], 4) if totals["words"] else None,
            "documents_written": sum(r.documents - r.continues_previous for r in self.records),
            "tokens_written": sum(r.tokens for r in self.records),
            "shards": len(self.records),
            "shard_bytes": sum(r.bytes for r in self.records),
            "seconds": {"tokenizer": round(trained_at - started, 3), "encode": round(encoded_at - trained_at, 3),
                        "shards": round(written_at - encoded_at, 3)},
        }
        if self.summary["tokens_written"] != totals["bpe_out"]:
            raise RuntimeError(f"tokenize: wrote {self.summary['tokens_written']} tokens, expected {totals['bpe_out']}")
        return encoded.drop_columns([TOKENS])

    def summarize(self, out: "ray.data.Dataset") -> dict[str, Any]:
        return dict(self.summary)

    def _tokenizer(self, ds: "ray.data.Dataset", n_docs: int) -> tuple[str, dict[str, Any]]:
        """The tokenizer.json text and how it was obtained (copied byte for byte, or trained)."""
        p: TokenizeParams = self.params
        if p.tokenizer is not None:
            fs, src = filesystem_for(p.tokenizer)
            with fs.open_input_stream(src) as f:
                raw = f.read()
            return raw.decode(), {"trained": False, "source": p.tokenizer}
        return train_tokenizer_on(ds, n_docs, p, self.ctx.seed)

    def finalize(self, run_stats: dict[str, Any]) -> Path | str:
        """Write OUTPUT/manifest.json: shards, tokenizer, mixture, provenance (the run's
        `RunStats.to_json()`). The pipeline calls it once the run's stats are complete."""

        if not self.records:
            raise RuntimeError("tokenize.finalize: no shards were written (run() has not run)")
        run = self.run_files
        tok = self.summary["tokenizer"]
        config = run_stats.get("config", {})
        folder = posixpath.basename(self.ctx.output.rstrip("/")) or "dataset"
        manifest = build_manifest(
            manifest_path=run.manifest,
            dataset_id=self.params.dataset_id or f"{folder}-{run_stats['config_sha256'][:12]}",
            dtype=self.summary["dtype"],
            tokenizer={"path": CurationRun.TOKENIZER, "sha256": self.tokenizer_sha256,
                       "vocab_size": tok["vocab_size"], "special_ids": tok["special_ids"]},
            records=self.records,
            mixture=manifest_mixture(run_stats, self.records),
            provenance={
                "inputs": config.get("inputs", []),
                "config": config,
                "config_sha256": run_stats["config_sha256"],
                "stages": run_stats.get("stages", []),
                "created_at": datetime.now(timezone.utc),
                "flywheel_version": installed_flywheel_version(),
            },
        )
        return write_manifest(run.manifest, manifest)


def manifest_mixture(run_stats: dict[str, Any], records: list["ShardRecord"]) -> dict[str, Any]:
    """The `mixture` stage's summary when it ran; else the natural mix of the shards."""
    for stage in run_stats.get("stages", []):
        if stage.get("name") == "mixture" and stage.get("extra"):
            return {"sampled": True, **stage["extra"]}
    tokens: dict[str, int] = {}
    for r in records:
        for d, t in r.domains.items():
            tokens[d] = tokens.get(d, 0) + t
    total = sum(tokens.values())
    return {"sampled": False, "temperature": 1.0,
            "weights": {d: round(t / total, 6) for d, t in sorted(tokens.items())},
            "epochs": {d: 1.0 for d in sorted(tokens)}}
