"""Running a post-training curation config: read, the enabled steps in order, then the output.

    OUTPUT/data/<kind>-<split>.jsonl     kept records, in input order, the contract's shapes
    OUTPUT/rejects/<step>-00000-<run>.parquet   the pretraining run's columns; `text` holds the
                                         record as JSON (or the line as read), so nothing is lost
    OUTPUT/stats.json                    per-step accounting (`flywheel stats OUTPUT`)
    OUTPUT/posttrain_manifest.json       last: the commit point

Every step returns every record it was given with a verdict; the runner checks
`in == kept + sum(dropped)` per step (in records, words and bytes) before the next step runs.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import pyarrow as pa
from pyarrow import fs as pafs

from contract.atomic import write_atomic, write_json_atomic
from contract.layout import join
from contract.manifest import Provenance, installed_flywheel_version
from contract.posttrain import (
    KINDS,
    SPLITS,
    Decontamination,
    PosttrainFile,
    PosttrainManifest,
    PosttrainRun,
    posttrain_totals,
    write_posttrain_manifest,
)
from contract.stores import filesystem_for
from curation.io.files import write_parquet
from curation.pipeline import REJECT_COLUMNS, AccountingError, OutputError, OutputExists
from curation.posttrain import decontaminate as decon
from curation.posttrain import exact, near, pii
from curation.posttrain.config import PosttrainConfig
from curation.posttrain.rows import Row, Verdict, read_rows
from curation.stages.base import RunContext
from curation.stats import RunStats, StageStats

ProgressFn = Callable[[str, dict[str, Any]], None]
READ_METHOD = "JSONL + record schema"


class NothingKept(OutputError):
    """Every record was rejected: stats.json and rejects/ say why; no manifest is written."""


@dataclass
class PosttrainResult:
    output: str
    stats: RunStats
    manifest: PosttrainManifest
    manifest_path: str
    rejects_dir: str


def _prepare(fs: pafs.FileSystem, root: str, output: str, overwrite: bool) -> None:
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise OutputExists(f"output {output} is a file")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(root)):
        if not overwrite:
            raise OutputExists(f"output {output} is not empty (use --overwrite to replace it)")
        fs.delete_dir_contents(root)
    fs.create_dir(join(root, PosttrainRun.REJECTS), recursive=True)
    fs.create_dir(join(root, PosttrainRun.DATA), recursive=True)


def _rejects_table(dropped: list[Verdict], step: str) -> pa.Table:
    rows = [v.row for v in dropped]
    columns = {"id": [r.id for r in rows], "stage": [step] * len(rows), "reason": [v.reason for v in dropped],
               "detail": [json.dumps(v.detail or {}, sort_keys=True) for v in dropped],
               "domain": [r.kind for r in rows], "source": [r.source for r in rows],
               "n_tokens": pa.array([r.words for r in rows], pa.int64()), "text": [r.payload() for r in rows]}
    return pa.table({c: columns[c] for c in REJECT_COLUMNS})


class _Runner:
    def __init__(self, cfg: PosttrainConfig, progress: ProgressFn):
        self.cfg, self.progress = cfg, progress
        self.fs, self.root = filesystem_for(cfg.output)
        self.rejects = join(cfg.output, PosttrainRun.REJECTS)
        self.stats = RunStats(run_id=uuid.uuid4().hex[:12], config_sha256=cfg.fingerprint(), config=cfg.dump())

    def settle(self, name: str, method: str, given: list[Row] | None, out: list[Verdict], started: float,
               extra: dict[str, Any] | None = None) -> list[Row]:
        """Check a step's accounting, write its rejects, record its stats; the kept rows."""
        if given is not None and (len(out) != len(given) or [v.row.id for v in out] != [r.id for r in given]):
            raise AccountingError(f"step {name!r}: {len(given)} records in, {len(out)} verdicts out")
        kept = [v for v in out if not v.reason]
        dropped = [v for v in out if v.reason]
        if dropped:
            write_parquet(_rejects_table(dropped, name), f"{self.rejects}/{name}-00000-{self.stats.run_id}.parquet")
        docs, tokens = Counter(), Counter()
        for v in dropped:
            docs[v.reason] += 1
            tokens[v.reason] += v.row.words
        prev = self.stats.stages[-1] if self.stats.stages else None
        words_out = sum(v.row.words for v in kept)
        bytes_out = sum(len(v.row.text.encode()) for v in kept)
        if prev is None:
            docs_in, tokens_in = len(out), words_out + sum(tokens.values())
            bytes_in = bytes_out + sum(len(v.row.text.encode()) for v in dropped)
        else:
            docs_in, tokens_in, bytes_in = prev.docs_out, prev.tokens_out, prev.bytes_out
        st = StageStats(name=name, method=method, docs_in=docs_in, docs_out=len(kept), tokens_in=tokens_in,
                        tokens_out=words_out, bytes_in=bytes_in, bytes_out=bytes_out, dropped=dict(sorted(docs.items())),
                        dropped_tokens=dict(sorted(tokens.items())), seconds=round(time.perf_counter() - started, 3),
                        extra=extra or {})
        st.check()
        self.stats.stages.append(st)
        self.progress("stage_done", {"stats": st})
        return [v.row for v in kept]

    def run(self) -> tuple[list[Row], Decontamination | None]:
        cfg = self.cfg
        # The eval sets first: one that cannot be read fails the run before any work.
        index = decon.build_index(cfg.decontamination) if cfg.decontamination is not None else None
        t = time.perf_counter()
        self.progress("stage_start", {"name": "read"})
        rows = self.settle("read", READ_METHOD, None, read_rows(cfg.inputs), t)
        for name, method, step in _steps(cfg, index):
            self.progress("stage_start", {"name": name})
            t = time.perf_counter()
            out, extra = step([Verdict(r) for r in rows])
            rows = self.settle(name, method, rows, out, t, extra)
        if index is None:
            return rows, None
        dropped = next(s.docs_removed for s in self.stats.stages if s.name == decon.NAME)
        return rows, Decontamination(ngram=index.n, min_matches=cfg.decontamination.min_matches,
                                     eval_sets=index.sets, dropped=dropped)

    def write_files(self, rows: list[Row]) -> list[PosttrainFile]:
        files = []
        for kind in KINDS:
            for split in SPLITS:
                part = [r for r in rows if r.kind == kind and r.split == split]
                if not part:
                    continue
                data = "".join(r.record.to_json() + "\n" for r in part).encode()
                path = PosttrainRun.data_file(kind, split)
                write_atomic(join(self.root, path), data, self.fs)
                files.append(PosttrainFile(path=path, kind=kind, split=split, records=len(part), bytes=len(data),
                                           sha256=hashlib.sha256(data).hexdigest(), words=sum(r.words for r in part)))
        return files


Step = Callable[[list[Verdict]], tuple[list[Verdict], dict[str, Any]]]


def _steps(cfg: PosttrainConfig, index: decon.EvalIndex | None) -> list[tuple[str, str, Step]]:
    """(name, method, step) of the enabled steps, in order: dedup first (cheap, and it spares
    the slow PII engine the copies), decontamination on the text as written, PII last."""
    steps: list[tuple[str, str, Step]] = []
    if cfg.exact_dedup is not None:
        steps.append((exact.NAME, exact.METHOD, lambda vs: (exact.exact_dedup(vs, cfg.exact_dedup), {})))
    if cfg.near_dedup is not None:
        steps.append((near.NAME, near.METHOD, lambda vs: (near.near_dedup(vs, cfg.near_dedup), {})))
    if index is not None:
        summary = {"eval_sets": [s.model_dump() for s in index.sets], "ngram": index.n, "eval_ngrams": len(index.owner)}
        steps.append((decon.NAME, decon.METHOD,
                      lambda vs: (decon.decontaminate(vs, index, cfg.decontamination), summary)))
    if cfg.pii is not None:
        ctx = RunContext(seed=cfg.seed, output=cfg.output)
        steps.append((pii.NAME, pii.METHOD, lambda vs: pii.redact(vs, cfg.pii, ctx)))
    return steps


def run_posttrain(cfg: PosttrainConfig, *, overwrite: bool = False,
                  progress: ProgressFn | None = None) -> PosttrainResult:
    """Curate `cfg`'s inputs into its output folder; the manifest is written last."""
    started = time.perf_counter()
    runner = _Runner(cfg, progress or (lambda event, info: None))
    try:
        _prepare(runner.fs, runner.root, cfg.output, overwrite)
    except OSError as e:
        raise OutputError(f"output {cfg.output}: cannot write there ({e})") from None
    rows, decontamination = runner.run()
    files = runner.write_files(rows)
    runner.stats.seconds = round(time.perf_counter() - started, 3)
    stats_json = runner.stats.to_json()
    write_json_atomic(join(runner.root, PosttrainRun.STATS), stats_json, fs=runner.fs)
    if not files:
        raise NothingKept(f"no record of {runner.stats.stages[0].docs_in} survived curation: "
                          f"see {join(cfg.output, PosttrainRun.STATS)} and {runner.rejects}")
    manifest = PosttrainManifest(
        version=1, format="posttrain", dataset_id=cfg.name(), files=files, totals=posttrain_totals(files),
        decontamination=decontamination,
        provenance=Provenance(inputs=[i.model_dump(mode="json", exclude_none=True) for i in cfg.inputs],
                              config=cfg.dump(), config_sha256=cfg.fingerprint(), stages=stats_json["stages"],
                              created_at=datetime.now(timezone.utc), flywheel_version=installed_flywheel_version()))
    where = write_posttrain_manifest(PosttrainRun(cfg.output).manifest, manifest)
    return PosttrainResult(output=cfg.output, stats=runner.stats, manifest=manifest, manifest_path=where,
                           rejects_dir=runner.rejects)
