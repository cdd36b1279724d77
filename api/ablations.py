"""Ablations: a data ablation (workflows.ablation) on one corpus, in a Ray actor.

    POST /ablations --> row `queued` (config validated by workflows.ablation.config) --> detached
                        named actor `flywheel-ablation-<id>` (namespace "flywheel")
    actor  --> writes `running`, runs `run_ablation(cfg, progress=...)` with the corpus's files as
               `corpus` and the row's out_uri as `output`; each progress phase goes to the row
               --> then `succeeded` | `failed` itself
    GET    --> state from the row; per-run loss curves from OUT's files while it runs; budgets,
               runs, summary (mean ± sd over seeds, paired differences) and leakage from
               OUT/ablation.json once it is done

Same lifecycle as curation and training jobs (api/jobs.py). The runner's file layout under OUT
(contract.layout.AblationRun), one training run per (variant, budget, seed):

    variants/<name>/runs/<budget>-seed<seed>/metrics.jsonl   one line per optimiser step: {step, loss, tokens, ...}
    variants/<name>/runs/<budget>-seed<seed>/eval.jsonl      one line per evaluation: {step, tokens,
                                          overall: {loss, ...}, domains: {domain: {loss, ...}}, ...}
    ablation.json                         written last: {budgets, seeds, runs, summary, table, leakage, ...}

spelled out here so that the web process reads progress without importing the runner (or torch).
An ablation run from before seeds and budgets (one budget, one seed) trained in variants/<name>/train/ and wrote
an ablation.json without budgets, runs or summary: `legacy_result` reads it in today's shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.db import Database
from api.jobs import JobRunner, PhaseRecorder, run_job
from api.models import Ablation, Corpus
from api.run_files import finite, thin
from contract.jsonl import read_json, read_jsonl
from contract.layout import AblationRun, TrainingRun
from curation.config import ConfigError
from curation.io.files import plan_reads
from workflows.ablation.config import budget_label, parse_ablation_config

MAX_CURVE_POINTS = 500
# The AblationConfig fields that name an ablation's training runs (besides its variants).
PLAN_KEYS = ("budgets", "token_budget", "seeds", "seed")


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
        if read_roots is not None:  # the runner plans its reads itself: check the corpus's and held-out files first
            plan_reads(corpus_input["path"], cfg.default_domain, confine_to=read_roots)
            for domain, source in cfg.holdout.sources.items():
                plan_reads(source, domain, confine_to=read_roots)
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


def run_key(variant: str, budget: str, seed: int) -> str:
    """A training run's name in `curves`: the variant and its run folder ("raw/1x-seed1")."""
    return f"{variant}/{AblationRun.run_name(budget, seed)}"


def planned_runs(config: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(variant, budget label, seed) of every training run the stored config asks for, variant by
    variant. AblationConfig reads its budgets and seeds (`token_budget` and `seed` as the older
    spellings), so the labels are the runner's; the service's own fields are stand-ins, and
    stages are left out (not needed here). A "4x" budget is only resolved to tokens after
    curation, so runs are named by the label. None planned for a config that no longer validates."""
    plan = {k: config[k] for k in PLAN_KEYS if k in config}
    try:
        cfg = parse_ablation_config({**plan, "variants": [{"name": n} for n in variant_names(config)]},
                                    corpus=["-"], output="-")
    except ConfigError:
        return []
    return [(v.name, budget_label(b), s) for v in cfg.variants for b in cfg.budgets for s in cfg.seeds]


def run_training(out_dir: str | Path, variant: str, budget: str, seed: int, legacy: bool) -> TrainingRun:
    """Where a run trains; `legacy` (the config asks for one run per variant): an ablation from
    before seeds and budgets trained in variants/<name>/train/, used when the run's own folder has no log."""
    ablation = AblationRun(str(out_dir))
    run = ablation.run(variant, budget, seed)
    if legacy and not Path(run.metrics).exists():
        old = ablation.variant_training(variant)
        if Path(old.metrics).exists():
            return old
    return run


def run_curves(run: TrainingRun, max_points: int = MAX_CURVE_POINTS) -> dict[str, list]:
    """One run's training loss per step and held-out loss per evaluation, each thinned to
    `max_points` (empty while its training has not started)."""
    train = [p for r in read_jsonl(Path(run.metrics)) if (p := _train_point(r))]
    evals = [p for r in read_jsonl(Path(run.eval)) if (p := _eval_point(r))]
    return {"train": thin(train, max_points), "eval": thin(evals, max_points)}


def read_curves(out_dir: str | Path, config: dict[str, Any], max_points: int = MAX_CURVE_POINTS) -> dict[str, dict]:
    """Every planned run's curves, keyed by `run_key`, with its variant, budget and seed."""
    runs = planned_runs(config)
    legacy = len(runs) == len(variant_names(config))
    return {run_key(v, b, s): {"variant": v, "budget": b, "seed": s,
                               **run_curves(run_training(out_dir, v, b, s, legacy), max_points)}
            for v, b, s in runs}


def read_result(out_dir: str | Path) -> dict[str, Any] | None:
    """OUT/ablation.json (None until the runner has written it), an old one in today's shape."""
    result = read_json(Path(AblationRun(str(out_dir)).result))
    if result is None:
        return None
    result = json_safe(result)
    return legacy_result(result) if "budgets" not in result else result


def json_safe(value: Any) -> Any:
    """`value` with every NaN/inf (a diverged run's loss) as None: JSON has no such numbers."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def legacy_result(result: dict[str, Any]) -> dict[str, Any]:
    """An ablation.json from before seeds and budgets (one budget, one seed, a result per variant) as
    today's: one budget named by its token count, each variant's result its one run, a summary of
    n=1 (no sd, no paired difference). Fields it lacks are left for validation to report."""
    variants = result.get("variants")
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        return result
    label = budget_label(result.get("token_budget"))
    trained = next((v["trained_tokens"] for v in variants if "trained_tokens" in v), result.get("token_budget"))
    seed = result.get("seed")
    runs = [{"variant": v.get("name"), "budget": label, "seed": seed, "novel": None,
             **{k: v.get(k) for k in ("steps", "trained_tokens", "epochs", "seconds", "dir", "eval")}}
            for v in variants]
    summary = []
    for run in runs:
        ev = _mapping(run["eval"])
        losses = {"overall": _mapping(ev.get("overall")).get("loss"),
                  **{d: _mapping(m).get("loss") for d, m in _mapping(ev.get("domains")).items()}}
        summary += [{"variant": run["variant"], "budget": label, "measure": "loss", "domain": d, "n": 1,
                     "mean": loss, "sd": None, "vs_baseline": None} for d, loss in losses.items()]
    return {**result, "seeds": [seed], "baseline": variants[0].get("name") if variants else None,
            "budgets": [{"label": label, "tokens": trained, "steps": result.get("steps")}],
            "measures": ["loss"], "runs": runs, "summary": summary}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def variant_names(config: dict[str, Any]) -> list[str]:
    return [v["name"] for v in config.get("variants", [])]
