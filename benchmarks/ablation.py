"""A data ablation on the demo corpus, timed: writes `benchmarks/ablation.md` (the last measured table).

    make ablation-demo            # builds the demo corpus and its KenLM models first, then runs this
    .venv/bin/python benchmarks/ablation.py [--config curation/configs/ablation-demo.yaml] [--token-budget N]

Runs `run_ablation` (what `flywheel ablate` runs) and records the wall time of each phase, so the
report says where the time went on this machine, next to the table: docs kept, tokens, epochs
and held-out loss per domain for every variant, and the leakage check.
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


def markdown(result: dict, phases: list[tuple[str, float]], config: Path, wall: float) -> str:
    domains = result["domains"]
    lines = [
        "# Data ablation on the demo corpus",
        "",
        f"Measured by `benchmarks/ablation.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"config `{config}`: preset `{result['preset']}`, {result['steps']} steps x {result['tokens_per_step']:,} "
        f"tokens = {result['steps'] * result['tokens_per_step']:,} tokens per variant, seed {result['seed']}. "
        f"Wall time {wall / 60:.1f} min.",
        "",
        "Held-out loss in nats per token (lower is better; one shared tokenizer, so comparable across rows):",
        "",
        "| variant | docs kept | tokens | epochs | " + " | ".join(domains) + " | overall |",
        "|---|---:|---:|---:|" + "---:|" * (len(domains) + 1),
    ]
    for v, row in zip(result["variants"], result["table"], strict=True):
        losses = [row["loss"].get(d) for d in domains] + [row["overall"]]
        cells = " | ".join("-" if x is None else f"{x:.3f}" for x in losses)
        lines.append(f"| {v['name']} | {v['docs_kept']:,} | {v['tokens']:,} | {v['epochs']:.2f} | {cells} |")
    leak = result["leakage"]
    lines += [
        "",
        f"Held-out: {leak['held_out_docs']} documents ({', '.join(domains)}); {leak['removed_from_training_pool']} "
        f"training documents within word-5-gram Jaccard {leak['near_duplicate_jaccard']} of one were removed from "
        f"the pool; near-duplicate pairs found in any variant's training set: {leak['pairs_found']}.",
        "",
        "| phase | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in phases]
    lines += ["", "Variants: " + "; ".join(f"`{v['name']}`: {v['description'] or ', '.join(v['stages'])}"
                                          for v in result["variants"]), ""]
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
