"""Curation stage prefixes shared by ablation variants: each runs once, cached by fingerprint.

    dedup:        [url exact minhash simhash]
    filtered:     [url exact minhash simhash] + [language heuristics perplexity]
    filtered-mix: [url exact minhash simhash] + [language heuristics perplexity] + [mixture]
                   \\______ cache point ______/  \\_________ cache point _________/  \\ cache point

    CACHE/<key>/            one Pipeline run per segment: data/, rejects/, stats.json (index/ ...)
    CACHE/<key>/_complete   written last: the folder is whole and is reused without running
    OUT/variants/<v>/curated/segments.json   the segments a variant's data went through, where
                            their rejects lie, and the variant's combined per-stage accounting

A cache point is a prefix someone starts from: a whole variant's list, or a prefix at which
variants part (>= 2 share it and they do not all go on with the same next stage). A prefix that
every variant sharing it extends the same way gets no point of its own: nothing would ever start
there, and each point costs a write of the documents. The price: a second run that edits stage k
reuses only up to the last cache point before k.

A point's key is the sha256 of canonical JSON holding the pool's fingerprint (names and row order
aside), the run's seed and default domain, every stage of the prefix from the pool on (its
`StageSpec.dump()`), the bytes of the local files its parameters name (models) and the stage's
own source file. Not in the key: code a stage imports (curation/dedup/, ...) and models a stage
bundles (the default fastText lid.176): after changing those, delete the cache folder.

The cache is a local folder, never evicted (delete it to reclaim the space), with one writer at a
time: two ablations running at once on the same cache folder could both run a missing prefix
into the same place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contract.atomic import write_json_atomic
from contract.layout import CurationRun
from contract.stores import filesystem_for
from curation.config import PipelineConfig, StageSpec
from curation.pipeline import Pipeline, RunResult
from curation.stages import stage_class
from curation.stages.base import DETAIL, KEPT, REASON, RunContext
from curation.stats import RunStats, StageStats

COMPLETE = "_complete"  # in a cache folder, written last: the run in it finished
SEGMENTS = "segments.json"  # in a variant's curated folder
# Bumped when what a cache folder holds changes meaning (its layout, the key's fields).
CACHE_VERSION = 1
SEGMENT_READ_METHOD = "previous segment's documents, every column kept"
FINGERPRINT_COLUMNS = ("id", "text", "domain", "url", "metadata")

Span = tuple[int, int]  # stages [start, end) of one variant's list


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def plan_segments(stages_of: dict[str, list[StageSpec]]) -> dict[str, list[Span]]:
    """Each variant's stage list cut at its cache points (tokenize excluded by the caller): the
    spans in order, covering the list; an empty list has no span."""
    lists = {name: [_canonical(s.dump()) for s in stages] for name, stages in stages_of.items()}

    def is_point(prefix: list[str]) -> bool:
        users = [lst for lst in lists.values() if lst[:len(prefix)] == prefix]
        whole = any(len(lst) == len(prefix) for lst in users)
        next_stages = {lst[len(prefix)] for lst in users if len(lst) > len(prefix)}
        return whole or (len(users) >= 2 and len(next_stages) > 1)

    plan = {}
    for name, lst in lists.items():
        ends = [i for i in range(1, len(lst) + 1) if is_point(lst[:i])]
        plan[name] = list(zip([0, *ends[:-1]], ends))
    return plan


def input_fingerprint(data_dir: str | Path) -> str:
    """sha256 over the documents of a Parquet folder, independent of file names and row order
    (Ray Data names files by uuid): the sorted (id, blake2b of text, domain, url, metadata).

    NOTE: read in the driver, one batch at a time, keeping 16 bytes + the id per document:
    ~0.1 s for the demo's ~3k documents, ~5 GB and minutes for 100M. The cluster version is a
    Ray Data map_batches of the row digests and a sort by id (or an order-free sum of the
    digests mod 2^128, which needs no sort)."""
    rows = []
    dataset = pq.ParquetDataset(str(data_dir))
    names = set(dataset.schema.names)
    columns = [c for c in FINGERPRINT_COLUMNS if c in names]
    for fragment in dataset.fragments:
        for batch in fragment.to_batches(columns=columns):
            values = {c: batch.column(c).to_pylist() for c in columns}
            for i, doc_id in enumerate(values["id"]):
                row = _canonical([values[c][i] if c in values else None for c in FINGERPRINT_COLUMNS])
                rows.append((doc_id, hashlib.blake2b(row.encode(), digest_size=16).digest()))
    rows.sort()
    h = hashlib.sha256()
    for doc_id, digest in rows:
        h.update(doc_id.encode() + b"\x00" + digest)
    return h.hexdigest()


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def referenced_files(spec: StageSpec) -> dict[str, str]:
    """{path: digest} for every parameter string that names a local file or folder (perplexity's
    ARPA models, language's fastText model, minhash's dedup_against runs). A file: the sha256 of
    its bytes (editing a model in place must miss the cache; ~0.1 s per 100 MB). A folder (an
    earlier run): the sorted (relative path, size, mtime) of its files, not their bytes; only
    strings holding a "/" count as folders, so a domain name ("code") that happens to name a
    folder of the working directory is not walked. Object-store URIs are keyed by their string
    only."""
    found = {}
    for s in _strings(spec.params.model_dump(mode="json")):
        try:
            path = Path(s)
            is_file, is_dir = path.is_file(), "/" in s and path.is_dir()
        except (OSError, ValueError):  # not a path at all (too long, a NUL byte)
            continue
        if "://" in s or not (is_file or is_dir):
            continue
        if is_file:
            found[s] = "sha256:" + _file_sha256(path)
        else:
            listing = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                             for p in path.rglob("*") if p.is_file())
            found[s] = "listing:" + hashlib.sha256(_canonical(listing).encode()).hexdigest()
    return found


def _stage_source_sha256(name: str) -> str:
    return _file_sha256(Path(inspect.getfile(stage_class(name))))


def prefix_key(input_fp: str, stages: list[StageSpec], seed: int, default_domain: str) -> str:
    """The cache key of the documents `stages` (from the pool on) leave of the input `input_fp`."""
    recipe = {"version": CACHE_VERSION, "input": input_fp, "seed": seed, "default_domain": default_domain,
              "stages": [{"spec": s.dump(), "files": referenced_files(s), "code": _stage_source_sha256(s.name)}
                         for s in stages]}
    return hashlib.sha256(_canonical(recipe).encode()).hexdigest()


def _stored_documents(files: pa.Table) -> pa.Table:
    """The documents of one data file of an earlier run, every column as stored, each kept."""
    fs, path = filesystem_for(files["uri"][0].as_py())
    table = pq.read_table(path, filesystem=fs)
    n = table.num_rows
    return table.append_column(REASON, pa.array([KEPT] * n, pa.string())).append_column(
        DETAIL, pa.array(["{}"] * n, pa.string()))


class SegmentPipeline(Pipeline):
    """A Pipeline whose documents are an earlier run's kept documents as that run left them.

    The reader would fold every column it does not know (`repeats` from mixture, `lang`, ...)
    into `metadata`, so a later stage (tokenize, heuristics) would no longer see them: here the
    read step passes the earlier run's Parquet through with every column, as the same stages
    would see it in one run. The ids are unique already (the earlier run enforced it).
    NOTE: one Ray task per data file, as the reader plans it; `ray.data.read_parquet` took 15 s
    for 15 small files on this 2-core box (its metadata and size-sampling tasks), this 0.4 s."""

    def _read(self, ctx: RunContext) -> tuple[Any, str]:
        import ray.data  # Ray Data: started by the run

        files = [t.uri for t in self.read_tasks]
        plan = ray.data.from_items([{"uri": uri} for uri in files], override_num_blocks=max(1, len(files)))
        return plan.map_batches(_stored_documents, batch_size=1, batch_format="pyarrow"), SEGMENT_READ_METHOD


def combine_stats(runs: list[RunStats]) -> list[StageStats]:
    """The per-stage accounting of runs that fed each other, in order: the first run whole, then
    each later run's stages after its read step (a pass-through of the earlier run's output,
    checked to be one)."""
    stages = list(runs[0].stages)
    for run in runs[1:]:
        read, *rest = run.stages
        if read.dropped or read.docs_in != stages[-1].docs_out or read.docs_out != read.docs_in:
            raise ValueError(f"run {run.run_id}: its read step is not a pass-through of the run before "
                             f"({read.docs_in} in, {read.docs_out} out after {stages[-1].docs_out})")
        stages += rest
    return stages


@dataclasses.dataclass
class Segment:
    stages: list[str]
    key: str
    reused: bool
    seconds: float
    dir: str

    def report(self) -> dict[str, Any]:
        """The segment as ablation.json's variants[].curation.segments[] holds it."""
        return {"stages": self.stages, "key": self.key, "reused": self.reused, "seconds": self.seconds}


class PrefixCache:
    """Runs variants' curation through shared, cached stage prefixes (one ablation run)."""

    def __init__(self, cache_dir: str | Path, pool_dir: str | Path, *, seed: int, default_domain: str,
                 stages_of: dict[str, list[StageSpec]]):
        self.cache_dir = Path(cache_dir)
        self.pool_dir = str(pool_dir)
        self.seed, self.default_domain = seed, default_domain
        self.stages_of = stages_of
        self.plan = plan_segments(stages_of)
        self.input_fp = input_fingerprint(pool_dir)

    def _config(self, source: str, output: str, stages: list[StageSpec]) -> PipelineConfig:
        return PipelineConfig(inputs=[source], output=output, seed=self.seed, default_domain=self.default_domain,
                              stages=stages)

    def _pipeline(self, source: str, output: str, stages: list[StageSpec]) -> Pipeline:
        config = self._config(source, output, stages)
        if source == self.pool_dir:  # the pool as every variant reads it without a cache
            return Pipeline(config, overwrite=True)
        return SegmentPipeline(config, overwrite=True)

    def segment(self, name: str, span: Span, source: str) -> tuple[Segment, RunStats]:
        """One segment of variant `name`: reused when its folder is complete, else run from `source`."""
        started = time.perf_counter()
        stages = self.stages_of[name]
        key = prefix_key(self.input_fp, stages[:span[1]], self.seed, self.default_domain)
        folder = self.cache_dir / key
        reused = (folder / COMPLETE).is_file()
        if not reused:
            result = self._pipeline(source, str(folder), stages[span[0]:span[1]]).run()
            write_json_atomic(folder / COMPLETE, {"key": key, "input_fingerprint": self.input_fp,
                                                  "stages": [s.dump() for s in stages[:span[1]]],
                                                  "seconds": result.stats.seconds})
        stats = RunStats.from_json(json.loads((folder / CurationRun.STATS).read_text()))
        seconds = round(time.perf_counter() - started, 3)
        return Segment([s.name for s in stages[span[0]:span[1]]], key, reused, seconds, str(folder)), stats

    def curate(self, name: str, tokenize: StageSpec, output: str | Path) -> tuple[RunResult, list[Segment]]:
        """Variant `name`'s curation: its segments (cached), then `tokenize` on the last one's
        documents into `output`. The result's stats are every stage's, from the pool's read on."""
        source, runs, segments = self.pool_dir, [], []
        for span in self.plan[name]:
            segment, stats = self.segment(name, span, source)
            segments.append(segment)
            runs.append(stats)
            source = CurationRun(segment.dir).data
        result = self._pipeline(source, str(output), [tokenize]).run()
        stages = combine_stats([*runs, result.stats])
        seconds = round(result.stats.seconds + sum(s.seconds for s in segments), 3)  # this variant's wall time
        combined = RunStats(run_id=result.stats.run_id, config_sha256=result.stats.config_sha256,
                            config=result.stats.config, stages=stages, seconds=seconds)
        write_json_atomic(Path(output) / SEGMENTS, {
            "input_fingerprint": self.input_fp,
            "segments": [{**s.report(), "dir": s.dir, "rejects": CurationRun(s.dir).rejects} for s in segments],
            "stages": [s.to_json() for s in stages], "totals": combined.totals(),
        })  # fmt: skip
        return dataclasses.replace(result, stats=combined), segments


def default_cache_dir(out: Path, cache_dir: str | None) -> Path:
    return Path(cache_dir).resolve() if cache_dir else out / "cache"


__all__ = ["PrefixCache", "Segment", "SegmentPipeline", "combine_stats", "default_cache_dir", "input_fingerprint",
           "plan_segments", "prefix_key", "referenced_files"]
