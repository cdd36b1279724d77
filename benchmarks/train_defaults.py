"""Do the preset defaults learn? `flywheel train --preset tiny --steps 60` on a manifest, measured.

    .venv/bin/python benchmarks/train_defaults.py build/demo-run/manifest.json \\
        [--preset tiny] [--steps 60] [--workers 1 2] [--seeds 0 1] [--lr 1e-3 3e-3] [--warmup 6] [--local]

Each run is `training.cli.train_command` (what `flywheel train` calls; Ray Train unless --local)
in a fresh output folder, with only the preset, steps, workers and seed set (plus --lr /
--warmup when given, for sweeps): everything else is the preset's default. Drop = 1 - (mean loss
of the last 5 steps) / (loss of step 1), from metrics.jsonl. The issue's target: >= 15% for tiny.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.cli import train_command  # noqa: E402
from training.metrics_log import read_metrics  # noqa: E402

TARGET = 0.15


def run_once(manifest: str, out: Path, preset: str, steps: int, workers: int, seed: int,
             lr: float | None, warmup: int | None, local: bool) -> dict:  # fmt: skip
    config: dict = {"seed": seed}
    if lr is not None:
        config["optimizer"] = {"lr": lr}
    if warmup is not None:
        config.setdefault("optimizer", {})["schedule"] = {"warmup_steps": warmup}
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps(config))
    train_command(out / "run.json", manifest=manifest, preset=preset, steps=steps, workers=workers,
                  out=out / "train", local=local)  # fmt: skip
    records = read_metrics(out / "train")
    losses = [r["loss"] for r in records]
    last = statistics.mean(losses[-5:])
    return {"first": losses[0], "last5": last, "drop": 1 - last / losses[0], "peak_lr": max(r["lr"] for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[None], help="override the preset's peak LR")
    parser.add_argument("--warmup", type=int, default=None, help="override the warmup steps")
    parser.add_argument("--local", action="store_true", help="local processes instead of Ray Train")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="train-defaults-"))
    print("| lr | workers | seed | peak lr logged | loss step 1 | mean last 5 | drop |\n|---|---:|---:|---:|---:|---:|---:|")
    drops = []
    for lr in args.lr:
        for workers in args.workers:
            for seed in args.seeds:
                out = root / f"lr{lr or 'default'}-w{workers}-s{seed}"
                r = run_once(args.manifest, out, args.preset, args.steps, workers, seed, lr, args.warmup, args.local)
                drops.append(r["drop"])
                print(f"| {lr or 'default'} | {workers} | {seed} | {r['peak_lr']:.3g} | {r['first']:.3f} | "
                      f"{r['last5']:.3f} | {r['drop']:.1%} |", flush=True)  # fmt: skip
    print(f"smallest drop {min(drops):.1%} (target >= {TARGET:.0%}); runs under {root}")


if __name__ == "__main__":
    main()
