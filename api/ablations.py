"""Ablations: a data ablation (workflows.ablation) on one corpus, in a Ray actor.

    POST /ablations --> row `queued` (config validated by workflows.ablation.config) --> detached
                        named actor `flywheel-ablation-<id>` (namespace "flywheel")
    actor  --> writes `running`, runs `run_ablation(cfg, progress=...)` with the corpus's files as
               `corpus` and the row's out_uri as `output`; each progress phase goes to the row
               --> then `succeeded` | `failed` itself
    GET    --> state from the row; per-variant loss curves from OUT's files while it runs; the
               result table and the leakage check from OUT/ablation.json once it is done

Same lifecycle as curation and training jobs (api/jobs.py). The runner's file layout under OUT:

    variants/<name>/train/metrics.jsonl   one line per optimiser step: {step, loss, tokens, ...}
    variants/<name>/train/eval.jsonl      one line per evaluation: {step, tokens, overall: {loss, ...},
                                          domains: {domain: {loss, ...}}, ...}
    ablation.json                         written last: {domains, leakage, variants, table, ...}

spelled out here so that the web process reads progress without importing the runner (or torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.db import Database
from api.jobs import JobRunner, PhaseRecorder, run_job
from api.models import Ablation, Corpus
from api.run_files import finite, thin
from contract.jsonl import read_json, read_jsonl
from contract.layout import AblationRun
from curation.io.files import plan_reads
from workflows.ablation.config import parse_ablation_config

MAX_CURVE_POINTS = 500


def execute_ablation_job(database_url: str, job_id: str, read_roots: tuple[str, ...] | None = None) -> str:
    """Run one queued ablation to its end, writing every state change; returns the final state.

    Runs inside the ablation's Ray actor (tests may call it directly). `read_roots`: the ablation
    fails before reading anything if a corpus file really lies outside them; None: no limit.
    """

    def ablate(db: Database, ablation: Ablation) -> None:
        # The runner (curation stages, MinHash, training) loads in the ablation's actor, not with the web process.
        from workflows.ablation.runner import run_ablation

        with db.session() as s:
            corpus = s.get(Corpus, ablation.corpus_id)
            corpus_input = corpus.pipeline_input()
        cfg = parse_ablation_config(ablation.config, corpus=[corpus_input], output=ablation.out_uri)
        if read_roots is not None:  # the runner plans its reads itself: check the corpus's files first
            plan_reads(corpus_input["path"], cfg.default_domain, confine_to=read_roots)
        run_ablation(cfg, progress=PhaseRecorder(db, ablation.id, Ablation))

    return run_job(database_url, job_id, Ablation, ablate, phase="starting")


class AblationRunner(JobRunner):
    """Start, cancel, check and reap ablation actors (the curation runner over `ablations`)."""

    table = Ablation
    actor_prefix = "flywheel-ablation-"
    execute = staticmethod(execute_ablation_job)


# --- progress and results, read from OUT -------------------------------------------------------

def _train_point(record: dict[str, Any]) -> dict[str, Any] | None:
    if not isinstance(record.get("step"), int):
        return None
    return {"step": record["step"], "tokens": _count(record.get("tokens")), "loss": finite(record.get("loss"))}


def _eval_point(record: dict[str, Any]) -> dict[str, Any] | None:
    if not isinstance(record.get("step"), int):
        return None
    overall = record.get("overall") if isinstance(record.get("overall"), dict) else {}
    domains = record.get("domains") if isinstance(record.get("domains"), dict) else {}
    return {"step": record["step"], "tokens": _count(record.get("tokens")), "loss": finite(overall.get("loss")),
            "domains": {str(d): finite(m.get("loss")) for d, m in domains.items() if isinstance(m, dict)}}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def variant_curves(out_dir: str | Path, variant: str, max_points: int = MAX_CURVE_POINTS) -> dict[str, list]:
    """One variant's training loss per step and held-out loss per evaluation, each thinned to
    `max_points` (empty while its training has not started)."""
    run = AblationRun(str(out_dir)).variant_training(variant)
    train = [p for r in read_jsonl(Path(run.metrics)) if (p := _train_point(r))]
    evals = [p for r in read_jsonl(Path(run.eval)) if (p := _eval_point(r))]
    return {"train": thin(train, max_points), "eval": thin(evals, max_points)}


def read_curves(out_dir: str | Path, variants: list[str], max_points: int = MAX_CURVE_POINTS) -> dict[str, dict]:
    return {name: variant_curves(out_dir, name, max_points) for name in variants}


def read_result(out_dir: str | Path) -> dict[str, Any] | None:
    """OUT/ablation.json (None until the runner has written it)."""
    return read_json(Path(AblationRun(str(out_dir)).result))


def variant_names(config: dict[str, Any]) -> list[str]:
    return [v["name"] for v in config.get("variants", [])]
