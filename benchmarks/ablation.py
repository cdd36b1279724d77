"""A data ablation on the demo corpus, timed: writes `benchmarks/ablation.md` (the last measured table).

    make ablation-demo            # builds the demo corpus and its KenLM models first, then runs this
    .venv/bin/python benchmarks/ablation.py [--config curation/configs/ablation-demo.yaml] [--token-budget N]

Runs `run_ablation` (what `flywheel ablate` runs) and records the wall time of each phase, so the
report says where the time went on this machine, next to the numbers: per budget, docs kept,
tokens, epochs and held-out loss (and novel-line loss) per domain for every variant as mean ± sd
over the seeds, each variant's paired difference against the baseline with its 95% interval and
whether it exceeds the noise, loss vs budget, and the leakage check. It states numbers only: the
reading is written by a person (README).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflows.ablation.config import load_ablation_config  # noqa: E402
from workflows.ablation.runner import run_ablation  # noqa: E402


def mean_sd(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['mean']:.3f}" if row["sd"] is None else f"{row['mean']:.3f} ± {row['sd']:.3f}"


def interval(vs: dict | None) -> tuple[str, str]:
    """("mean [lo, hi]", "yes"/"no") of a paired difference; "-" without one (the baseline, one seed)."""
    if vs is None:
        return "-", "-"
    return f"{vs['mean']:+.3f} [{vs['lo']:+.3f}, {vs['hi']:+.3f}]", "yes" if vs["exceeds_noise"] else "no"


MEASURE_TITLES = {"loss": "held-out loss", "novel_loss": "novel-line loss (held-out lines that occur at most "
                                                          "{n} times in the raw corpus)"}


def markdown(result: dict, phases: list[tuple[str, float]], config: Path, wall: float) -> str:
    domains, measures, baseline = result["domains"], result["measures"], result["baseline"]
    rows = {(r["variant"], r["budget"], r["measure"], r["domain"]): r for r in result["summary"]}
    variants = result["variants"]
    epochs = {(r["variant"], r["budget"]): r["epochs"] for r in result["runs"]}
    budgets = ", ".join(f"`{b['label']}` = {b['steps']} steps = {b['tokens']:,} tokens" for b in result["budgets"])
    title = {m: MEASURE_TITLES[m].format(n=result["holdout"].get("novel_max_line_count")) for m in measures}
    lines = [
        "# Data ablation on the demo corpus",
        "",
        f"Measured by `benchmarks/ablation.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"config `{config}`: preset `{result['preset']}`, {result['tokens_per_step']:,} tokens per step; budgets "
        f"{budgets}; seeds {', '.join(map(str, result['seeds']))} (each run's model init and data order); "
        f"a {result['corpus_sample']:.0%} sample of the corpus's documents ({result.get('not_sampled_docs', 0):,} left "
        f"out; sample and held-out seed {result['seed']}). "
        f"Wall time {wall / 60:.1f} min.",
        "",
        "Losses are in nats per token (lower is better; one shared tokenizer, so comparable across rows), "
        "mean ± sample standard deviation over the seeds. A difference is the variant minus "
        f"`{baseline}`, paired by seed, with its 95% interval (Student's t); it exceeds the noise when the interval "
        "excludes 0.",
    ]
    for b in result["budgets"]:
        label = b["label"]
        for measure in measures:
            lines += ["", f"## Budget `{label}`: {title[measure]}", "",
                      "| variant | docs kept | tokens | epochs | " + " | ".join(domains) + " | overall |",
                      "|---|---:|---:|---:|" + "---:|" * (len(domains) + 1)]
            for v in variants:
                cells = " | ".join(mean_sd(rows.get((v["name"], label, measure, d))) for d in [*domains, "overall"])
                e = epochs.get((v["name"], label))
                lines.append(f"| {v['name']} | {v['docs_kept']:,} | {v['tokens']:,} | "
                             f"{'-' if e is None else f'{e:.2f}'} | {cells} |")
        lines += ["", f"Budget `{label}`, overall difference against `{baseline}`:", "",
                  "| variant | " + " | ".join(f"{m} difference [95%] | exceeds noise" for m in measures) + " |",
                  "|---|" + "---:|---|" * len(measures)]
        for v in variants:
            if v["name"] != baseline:
                cells = [c for m in measures for c in interval((rows.get((v["name"], label, m, "overall")) or {})
                                                                .get("vs_baseline"))]
                lines.append(f"| {v['name']} | " + " | ".join(cells) + " |")
    for measure in measures:
        lines += ["", f"## {title[measure][0].upper()}{title[measure][1:]} vs budget (overall)", "",
                  "| variant | " + " | ".join(f"`{b['label']}` ({b['tokens']:,})" for b in result["budgets"]) + " |",
                  "|---|" + "---:|" * len(result["budgets"])]
        for v in variants:
            cells = " | ".join(mean_sd(rows.get((v["name"], b["label"], measure, "overall")))
                               for b in result["budgets"])
            lines.append(f"| {v['name']} | {cells} |")
    leak, holdout = result["leakage"], result["holdout"]
    sources = ", ".join(f"{d}: `{s}`" for d, s in holdout["sources"].items())
    lines += [
        "",
        "## Held-out sets and time",
        "",
        f"Held-out: {leak['held_out_docs']} documents ({sources}); {leak['removed_from_training_pool']} "
        f"training documents within word-5-gram Jaccard {leak['near_duplicate_jaccard']} of one were removed from "
        f"the pool; near-duplicate pairs found in any variant's training set: {leak['pairs_found']}.",
        "",
        "| phase | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in phases]
    reused = [f"`{v['name']}` {sum(s['reused'] for s in v['curation']['segments'])}/{len(v['curation']['segments'])}"
              for v in variants if v["curation"]["segments"]]
    if reused:
        lines += ["", "Curation segments reused from the prefix cache: " + ", ".join(reused) + "."]
    lines += ["", "Variants: " + "; ".join(f"`{v['name']}`: {v['description'] or ', '.join(v['stages'])}"
                                          for v in variants), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "curation" / "configs" / "ablation-demo.yaml")
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ablation.md")
    args = parser.parse_args()
    cfg = load_ablation_config(args.config, token_budget=args.token_budget)
    marks: list[tuple[str, float]] = []  # (phase, when it started); "train (k/n done)" is one phase

    def progress(phase: str) -> None:
        name = "train" if phase.startswith("train") else phase
        if not marks or marks[-1][0] != name:
            marks.append((name, time.perf_counter()))
        print(f"[{time.perf_counter() - started:7.1f}s] {phase}", flush=True)

    started = time.perf_counter()
    result = run_ablation(cfg, progress=progress, base_dir=args.config.parent)
    ended = time.perf_counter()
    phases = [(name, (marks[i + 1][1] if i + 1 < len(marks) else ended) - t) for i, (name, t) in enumerate(marks)]
    wall = ended - started
    try:
        shown = args.config.resolve().relative_to(ROOT)
    except ValueError:
        shown = args.config
    text = markdown(result, phases, shown, wall)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
