"""`flywheel ablate`: curate each variant, train the same model on each, evaluate on the same held-out sets.

    OUT/ablation_config.json          the validated config
    OUT/read/                         the raw corpus read once (ids unique, malformed rejected)
    OUT/sample/                       `corpus_sample` < 1: the documents kept (data/), the rest (rejects/)
    OUT/holdout/eval/<domain>.jsonl   held-out sets; OUT/holdout/removed/ what left the pool and why
    OUT/pool/                         the training pool every variant starts from
    OUT/tokenizer.json                the shared tokenizer (trained on the pool, or given)
    OUT/cache/<key>/                  curation stage prefixes, each run once per distinct (stages, input)
                                      and reused by every variant (and every later run) that starts with them
                                      (workflows.ablation.prefix_cache; `cache_dir` moves it)
    OUT/variants/<name>/curated/      that variant's tokenize run on its last prefix (stats.json with every
                                      stage's accounting, manifest.json, shards) and segments.json (which
                                      cache folders, reused or not, hold its rejects)
    OUT/variants/<name>/runs/<budget>-seed<seed>/   metrics.jsonl, eval.jsonl, checkpoints/
    OUT/ablation.json                 the result (written last, atomically)

Curation runs one segment at a time (each pipeline already spreads over the whole cluster);
training runs as Ray tasks of `cpus_per_variant` CPUs each, `parallel` at a time, one process
per (variant, budget, seed) (the tiny/small presets on CPU), longest first. At one budget every
variant trains for the same number of steps of the same global batch: the same number of tokens,
whatever its curated size (smaller data is repeated, over more epochs). Each run ends with its
evaluation on the held-out sets (eval.jsonl) and on their novel-line versions (`novel`);
workflows.ablation.stats turns the seeds into means, sds and paired intervals.
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
from workflows.ablation.config import AblationConfig, budget_label, budget_tokens
from workflows.ablation.holdout import count_leaks, split_holdout
from workflows.ablation.prefix_cache import PrefixCache, default_cache_dir
from workflows.ablation.sample import sample_corpus
from workflows.ablation.stats import MEASURES, summarize

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


RunKey = tuple[str, str, int]  # (variant, budget label, seed)


def tokens_per_step(cfg: AblationConfig) -> int:
    """The global batch in tokens, as the trainer will compute it from `cfg.train`."""
    return TrainConfig.model_validate({**cfg.train, "optimizer": cfg.train.get("optimizer", {})}).global_batch_tokens


def resolve_budgets(cfg: AblationConfig, smallest_variant_tokens: int, per_step: int) -> list[dict[str, Any]]:
    """[{label, tokens trained, steps}] ascending by tokens: each budget rounded up to whole global
    batches ("Nx" budgets are N x the smallest curated variant's tokens)."""
    budgets = []
    for b in cfg.budgets:
        steps = math.ceil(budget_tokens(b, smallest_variant_tokens) / per_step)
        budgets.append({"label": budget_label(b), "tokens": steps * per_step, "steps": steps})
    return sorted(budgets, key=lambda b: b["tokens"])


def train_config(cfg: AblationConfig, manifest: Path, out_dir: str, eval_files: list[str], steps: int,
                 seed: int) -> dict:
    return {**cfg.train, "manifest": str(manifest), "out_dir": out_dir, "steps": steps, "seed": seed,
            "workers": 1, "resume": False, "eval_files": eval_files, "eval_every_steps": cfg.eval_every_steps}


def train_variant(config: dict[str, Any], threads: int, novel_files: list[str], tokenizer: str) -> dict[str, Any]:
    """One training run in this process (a Ray task); returns its final evaluation on the held-out
    sets (the trainer's last eval.jsonl line) and on the novel-line sets (its last checkpoint)."""
    import torch  # torch: loaded in each training task, not by the driver

    from training.evaluate import evaluate_checkpoint  # torch, as above
    from training.launch import launch_local  # torch, as above

    torch.set_num_threads(max(1, threads))
    cfg = TrainConfig.model_validate(config)
    started = time.perf_counter()
    launch_local(cfg)
    evals = read_metrics(cfg.out_dir, TrainingRun.EVAL)
    final = evals[-1] if evals else {}
    novel = None
    if novel_files:
        report = evaluate_checkpoint(TrainingRun(cfg.out_dir).checkpoints, novel_files, tokenizer=tokenizer,
                                     seq_len=cfg.seq_len).to_dict()
        novel = {"overall": report.get("overall"), "domains": report.get("domains")}
    return {"seconds": round(time.perf_counter() - started, 1), "step": final.get("step"),
            "eval": {"overall": final.get("overall"), "domains": final.get("domains")}, "novel": novel}


def _train_all(jobs: dict[RunKey, dict], cfg: AblationConfig, progress: Progress, novel_files: list[str],
               tokenizer: Path) -> dict[RunKey, dict]:
    """Train every run as a Ray task, at most `parallel` at once, the most steps first: on a few
    CPUs the last task to start is then a short one, so fewer CPUs idle at the end."""
    import ray  # Ray: started by the run

    runtime.init_ray()
    cpus = cfg.cpus_per_variant
    limit = cfg.parallel or max(1, int(runtime.cluster_cpus() // cpus))
    task = ray.remote(num_cpus=cpus, max_retries=0)(train_variant)
    pending = sorted(jobs.items(), key=lambda kv: -kv[1]["steps"])  # stable: config order within a budget
    running, results = {}, {}
    while pending or running:
        while pending and len(running) < limit:
            key, config = pending.pop(0)
            running[task.remote(config, int(math.ceil(cpus)), novel_files, str(tokenizer))] = key
        done, _ = ray.wait(list(running), num_returns=1)
        key = running.pop(done[0])
        results[key] = ray.get(done[0])
        progress(f"train ({len(results)}/{len(jobs)} done)")
    return results


def results_table(variants: list[dict], summary: list[dict], budget: str, domains: list[str]) -> list[dict]:
    """The old one-row-per-variant table (clients before seeds and budgets): mean losses at `budget`."""
    means = {(r["variant"], r["domain"]): r["mean"] for r in summary
             if r["budget"] == budget and r["measure"] == "loss"}
    return [{"variant": v["name"], "tokens": v["tokens"], "docs_kept": v["docs_kept"],
             "loss": {d: means.get((v["name"], d)) for d in domains}, "overall": means.get((v["name"], "overall"))}
            for v in variants]


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
    per_step = tokens_per_step(cfg)

    progress("read")
    runtime.init_ray()
    read = _run_pipeline(list(cfg.corpus), str(out / "read"), [], cfg)
    sample = sample_corpus(read.data_dir, out / "sample", cfg.corpus_sample, cfg.seed)

    progress("holdout")
    h = cfg.holdout
    split = split_holdout(
        sample.data_dir, str(out / "holdout" / "clean"), out / "holdout", str(out / AblationRun.POOL),
        per_domain=h.docs_per_domain, oversample=h.oversample, threshold=h.near_duplicate_jaccard, seed=cfg.seed,
        skip_domains=set(h.skip_domains),
        run_clean=lambda src, dst: _run_pipeline([src], dst, list(h.clean_stages), cfg).data_dir,
        sources=dict(h.sources), novel_max_line_count=h.novel_max_line_count,
        run_read=lambda src, domain, dst: _run_pipeline([{"path": src, "domain": domain}], dst, [], cfg).data_dir,
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

    # Stage prefixes shared by variants run once, cached by fingerprint (workflows/ablation/prefix_cache.py).
    with_tokenize = {v.name: shared_tokenize_stage(stages_of[v.name], tokenizer) for v in cfg.variants}
    cache = PrefixCache(default_cache_dir(out, cfg.cache_dir), out / AblationRun.POOL, seed=cfg.seed,
                        default_domain=cfg.default_domain,
                        stages_of={name: stages[:-1] for name, stages in with_tokenize.items()})
    curated: dict[str, dict] = {}
    for k, v in enumerate(cfg.variants, start=1):
        progress(f"curate {v.name} ({k}/{len(cfg.variants)})")
        curated_dir = variant_dir(out, v.name) / AblationRun.CURATED
        result, segments = cache.curate(v.name, with_tokenize[v.name][-1], curated_dir)
        manifest = parse_manifest(Path(result.extra["tokenize"]).read_bytes())
        leaks = count_leaks(ray.data.read_parquet(result.data_dir), split.index)
        curated[v.name] = {"run": result, "manifest": result.extra["tokenize"], "tokens": manifest.totals.tokens,
                           "leaks": leaks, "segments": [s.report() for s in segments]}

    budgets = resolve_budgets(cfg, min(c["tokens"] for c in curated.values()), per_step)
    layout = AblationRun(str(out))
    jobs = {(v.name, b["label"], seed): train_config(cfg, Path(curated[v.name]["manifest"]),
                                                     layout.run(v.name, b["label"], seed).root, eval_files,
                                                     b["steps"], seed)
            for v in cfg.variants for b in budgets for seed in cfg.seeds}  # fmt: skip
    novel_of = split.novel_eval_files  # domain -> the held-out set without frequent lines
    novel_files = [novel_of[d] for d in sorted(novel_of)]
    progress(f"train (0/{len(jobs)} done)")
    trained = _train_all(jobs, cfg, progress, novel_files, tokenizer)

    progress("report")
    domains = sorted(split.eval_files)
    variants = []
    for v in cfg.variants:
        stats = curated[v.name]["run"].stats
        variants.append({
            "name": v.name, "description": v.description,
            "stages": [s.name for s in stages_of[v.name] if s.name != "tokenize"],
            "docs_in": stats.stages[0].docs_in, "docs_kept": stats.stages[-1].docs_out,
            "tokens": curated[v.name]["tokens"], "curation": {"segments": curated[v.name]["segments"]},
            "leaks": len(curated[v.name]["leaks"]),
        })  # fmt: skip
    runs = []
    for (name, label, seed), config in jobs.items():  # config order: variant, budget ascending, seed
        tokens, done = curated[name]["tokens"], trained[(name, label, seed)]
        trained_tokens = config["steps"] * per_step
        runs.append({"variant": name, "budget": label, "seed": seed, "steps": config["steps"],
                     "trained_tokens": trained_tokens, "epochs": round(trained_tokens / tokens, 3) if tokens else None,
                     "seconds": done["seconds"], "dir": str(Path(config["out_dir"]).relative_to(out)),
                     "eval": done["eval"], "novel": done["novel"]})  # fmt: skip
    measures = [m for m in MEASURES if m == "loss" or novel_files]
    summary = summarize(runs, cfg.baseline_variant, domains, measures)
    result = {
        "seed": cfg.seed, "seeds": list(cfg.seeds), "baseline": cfg.baseline_variant, "budgets": budgets,
        "preset": cfg.train.get("preset", "tiny"), "tokens_per_step": per_step, "domains": domains,
        "measures": measures,
        "eval_files": {d: str(Path(p).relative_to(out)) for d, p in split.eval_files.items()},
        "novel_eval_files": {d: str(Path(p).relative_to(out)) for d, p in novel_of.items()},
        "holdout": {"sources": {d: h.sources.get(d, "corpus") for d in domains},
                    "novel_max_line_count": h.novel_max_line_count,
                    "novel_removed": split.novel_removed},
        "leakage": {"near_duplicate_jaccard": h.near_duplicate_jaccard, "held_out_docs": split.held_out_docs,
                    "removed_from_training_pool": split.removed_near_duplicates,
                    "pairs_found": sum(v["leaks"] for v in variants),
                    "examples": [pair for c in curated.values() for pair in c["leaks"]][:10]},
        "pool_docs": split.pool_docs, "corpus_sample": cfg.corpus_sample, "not_sampled_docs": sample.not_sampled,
        "variants": variants, "runs": runs, "summary": summary,
        "table": results_table(variants, summary, budgets[-1]["label"], domains),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    write_json_atomic(out / AblationRun.RESULT, result)
    return result


__all__ = ["run_ablation"]
