"""`flywheel ablate`: curate each variant, train the same model on each, evaluate on the same held-out sets.

    OUT/ablation_config.json          the validated config
    OUT/read/                         the raw corpus read once (ids unique, malformed rejected)
    OUT/holdout/eval/<domain>.jsonl   held-out sets; OUT/holdout/removed/ what left the pool and why
    OUT/pool/                         the training pool every variant starts from
    OUT/tokenizer.json                the shared tokenizer (trained on the pool, or given)
    OUT/variants/<name>/curated/      that variant's curation run (stats.json, manifest.json, shards)
    OUT/variants/<name>/train/        metrics.jsonl, eval.jsonl, checkpoints/
    OUT/ablation.json                 the result (written last, atomically)

Curation runs one variant at a time (each pipeline already spreads over the whole cluster);
training runs as Ray tasks of `cpus_per_variant` CPUs each, `parallel` at a time, one process
per variant (the tiny/small presets on CPU). Every variant trains for the same number of steps
of the same global batch: the same number of tokens, whatever its curated size (smaller data is
repeated, over more epochs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.atomic import write_json_atomic
from contract.layout import AblationRun, TrainingRun
from contract.manifest import parse_manifest
from curation import runtime
from curation.config import PipelineConfig, StageSpec
from curation.pipeline import Pipeline
from curation.stages.tokenize import TokenizeParams, train_tokenizer_on
from training.metrics_log import read_metrics
from training.train_config import TrainConfig
from workflows.ablation.config import AblationConfig
from workflows.ablation.holdout import count_leaks, split_holdout

Progress = Callable[[str], None]


def variant_dir(out: Path, name: str) -> Path:
    return Path(AblationRun(str(out)).variant(name))


def _run_pipeline(inputs: list, output: str, stages: list[StageSpec], cfg: AblationConfig) -> Any:
    config = PipelineConfig(inputs=inputs, output=output, seed=cfg.seed, default_domain=cfg.default_domain,
                            stages=stages)
    return Pipeline(config, overwrite=True).run()


def shared_tokenize_stage(stages: list[StageSpec], tokenizer: Path) -> list[StageSpec]:
    """`stages` with its tokenize stage (if any) replaced by one that uses the shared tokenizer
    and keeps the variant's other tokenize parameters (shard size, add_bos), appended last."""
    given = next((s for s in stages if s.name == "tokenize"), None)
    params = given.params.model_dump(exclude={"tokenizer", "vocab_size"}, exclude_unset=True) if given else {}
    others = [s for s in stages if s.name != "tokenize"]
    return [*others, StageSpec.model_validate({"name": "tokenize", **params, "tokenizer": str(tokenizer)})]


def train_steps(cfg: AblationConfig) -> tuple[int, int]:
    """(steps, tokens per step): the budget rounded up to whole global batches."""

    per_step = TrainConfig.model_validate({**cfg.train, "optimizer": cfg.train.get("optimizer", {})}).global_batch_tokens
    return math.ceil(cfg.token_budget / per_step), per_step


def train_config(cfg: AblationConfig, manifest: Path, out_dir: Path, eval_files: list[str], steps: int) -> dict:
    return {**cfg.train, "manifest": str(manifest), "out_dir": str(out_dir), "steps": steps, "seed": cfg.seed,
            "workers": 1, "resume": False, "eval_files": eval_files, "eval_every_steps": cfg.eval_every_steps}


def train_variant(config: dict[str, Any], threads: int) -> dict[str, Any]:
    """One variant's training run in this process (a Ray task); returns its final evaluation."""
    import torch  # torch: loaded in each training task, not by the driver

    from training.launch import launch_local  # torch, as above

    torch.set_num_threads(max(1, threads))
    cfg = TrainConfig.model_validate(config)
    started = time.perf_counter()
    launch_local(cfg)
    evals = read_metrics(cfg.out_dir, TrainingRun.EVAL)
    final = evals[-1] if evals else {}
    return {"seconds": round(time.perf_counter() - started, 1), "step": final.get("step"),
            "eval": {"overall": final.get("overall"), "domains": final.get("domains")}}


def _train_all(jobs: dict[str, dict], cfg: AblationConfig, progress: Progress) -> dict[str, dict]:
    """Train every variant as a Ray task, at most `parallel` at once."""
    import ray  # Ray: started by the run

    runtime.init_ray()
    cpus = cfg.cpus_per_variant
    limit = cfg.parallel or max(1, int(runtime.cluster_cpus() // cpus))
    task = ray.remote(num_cpus=cpus, max_retries=0)(train_variant)
    pending, running, results = list(jobs.items()), {}, {}
    while pending or running:
        while pending and len(running) < limit:
            name, config = pending.pop(0)
            running[task.remote(config, int(math.ceil(cpus)))] = name
        done, _ = ray.wait(list(running), num_returns=1)
        name = running.pop(done[0])
        results[name] = ray.get(done[0])
        progress(f"train ({len(results)}/{len(jobs)} done)")
    return results


def results_table(variants: list[dict], domains: list[str]) -> list[dict]:
    return [{"variant": v["name"], "tokens": v["tokens"], "docs_kept": v["docs_kept"],
             "loss": {d: (v["eval"]["domains"] or {}).get(d, {}).get("loss") for d in domains},
             "overall": (v["eval"]["overall"] or {}).get("loss")} for v in variants]


def run_ablation(cfg: AblationConfig, *, progress: Progress | None = None, base_dir: Path | None = None) -> dict:
    """Run the whole ablation; writes OUT/ablation.json last and returns its content."""
    import ray.data  # Ray Data: started by the run

    progress = progress or (lambda phase: None)
    out = Path(cfg.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / AblationRun.RESULT).unlink(missing_ok=True)
    write_json_atomic(out / AblationRun.CONFIG, cfg.dump())
    started = time.perf_counter()
    stages_of = {v.name: cfg.resolve_stages(v, base_dir) for v in cfg.variants}  # config errors before work
    steps, per_step = train_steps(cfg)

    progress("read")
    runtime.init_ray()
    read = _run_pipeline(list(cfg.corpus), str(out / "read"), [], cfg)

    progress("holdout")
    h = cfg.holdout
    split = split_holdout(
        read.data_dir, str(out / "holdout" / "clean"), out / "holdout", str(out / AblationRun.POOL),
        per_domain=h.docs_per_domain, oversample=h.oversample, threshold=h.near_duplicate_jaccard, seed=cfg.seed,
        skip_domains=set(h.skip_domains),
        run_clean=lambda src, dst: _run_pipeline([src], dst, list(h.clean_stages), cfg).data_dir,
    )  # fmt: skip
    eval_files = [split.eval_files[d] for d in sorted(split.eval_files)]
    if not eval_files:
        raise ValueError("no held-out set: every domain is in holdout.skip_domains")

    progress("tokenizer")
    tokenizer = out / AblationRun.TOKENIZER
    if cfg.tokenizer.path:
        tokenizer.write_bytes(Path(cfg.tokenizer.path).read_bytes())
    else:
        params = TokenizeParams(vocab_size=cfg.tokenizer.vocab_size, train_sample_docs=cfg.tokenizer.train_sample_docs)
        trained, _ = train_tokenizer_on(ray.data.read_parquet(str(out / AblationRun.POOL)), split.pool_docs, params,
                                        cfg.seed)
        tokenizer.write_text(trained)

    curated: dict[str, dict] = {}
    for k, v in enumerate(cfg.variants, start=1):
        progress(f"curate {v.name} ({k}/{len(cfg.variants)})")
        result = _run_pipeline([str(out / AblationRun.POOL)], str(variant_dir(out, v.name) / AblationRun.CURATED),
                               shared_tokenize_stage(stages_of[v.name], tokenizer), cfg)
        manifest = parse_manifest(Path(result.extra["tokenize"]).read_bytes())
        leaks = count_leaks(ray.data.read_parquet(result.data_dir), split.index)
        curated[v.name] = {"run": result, "manifest": result.extra["tokenize"], "tokens": manifest.totals.tokens,
                           "leaks": leaks}

    progress(f"train (0/{len(cfg.variants)} done)")
    jobs = {v.name: train_config(cfg, Path(curated[v.name]["manifest"]), variant_dir(out, v.name) / AblationRun.TRAIN,
                                 eval_files, steps) for v in cfg.variants}  # fmt: skip
    trained = _train_all(jobs, cfg, progress)

    progress("report")
    domains = sorted(split.eval_files)
    variants = []
    for v in cfg.variants:
        stats = curated[v.name]["run"].stats
        tokens = curated[v.name]["tokens"]
        variants.append({
            "name": v.name, "description": v.description,
            "stages": [s.name for s in stages_of[v.name] if s.name != "tokenize"],
            "docs_in": stats.stages[0].docs_in, "docs_kept": stats.stages[-1].docs_out, "tokens": tokens,
            "steps": steps, "trained_tokens": steps * per_step,
            "epochs": round(steps * per_step / tokens, 3) if tokens else None,
            "seconds": trained[v.name]["seconds"], "eval": trained[v.name]["eval"],
            "leaks": len(curated[v.name]["leaks"]), "dir": str(variant_dir(out, v.name).relative_to(out)),
        })  # fmt: skip
    result = {
        "seed": cfg.seed, "token_budget": cfg.token_budget, "preset": cfg.train.get("preset", "tiny"),
        "steps": steps, "tokens_per_step": per_step, "domains": domains,
        "eval_files": {d: str(Path(p).relative_to(out)) for d, p in split.eval_files.items()},
        "leakage": {"near_duplicate_jaccard": h.near_duplicate_jaccard, "held_out_docs": split.held_out_docs,
                    "removed_from_training_pool": split.removed_near_duplicates,
                    "pairs_found": sum(v["leaks"] for v in variants),
                    "examples": [pair for c in curated.values() for pair in c["leaks"]][:10]},
        "pool_docs": split.pool_docs, "variants": variants, "table": results_table(variants, domains),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    write_json_atomic(out / AblationRun.RESULT, result)
    return result


__all__ = ["run_ablation"]
