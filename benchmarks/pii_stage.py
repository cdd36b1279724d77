"""The `pii` stage in the pipeline, this tree against an earlier commit, on the demo corpus.

    .venv/bin/python benchmarks/pii_stage.py [--baseline bf0417d] [--rounds 3] [--markdown benchmarks/pii_stage.md]

The input is what the `pii` stage sees in `make demo`: the demo corpus after every earlier stage
of `curation/configs/demo.yaml` (written once to build/bench/pre-pii). Each code tree runs a
pipeline of the `pii` stage alone, with its defaults, on an embedded Ray with every core, in a
process of its own started outside the repository (Ray workers put their working directory on
sys.path); the earlier commit is exported with `git archive`. MB/s per core = stage input
MB / stage seconds / cores: actor start-up (model loading) included, as a run pays it.

A shared machine's speed drifts by 2x between runs, so one ratio settles nothing: `--rounds N`
runs both trees N times, interleaved (the order alternates by round, so a slow spell hits both
sides alike), and reports each round's ratio and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRE_PII = ROOT / "build" / "bench" / "pre-pii"

RUN = '''
import json, os, sys
sys.path.insert(0, sys.argv[1])
import ray
ray.init(num_cpus=int(sys.argv[4]), include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"PYTHONPATH": sys.argv[1]}})
from curation.config import parse_config
from curation.pipeline import Pipeline
cfg = parse_config({"inputs": [sys.argv[2]], "output": sys.argv[3], "seed": 0, "stages": [{"name": "pii"}]})
stats = Pipeline(cfg, overwrite=True).run().stats
print(json.dumps({"seconds": stats.stages[-1].seconds, "docs": stats.stages[-1].docs_in}))
'''

# The engine alone, CPU seconds of one process with one BLAS thread (set-up apart), on every
# `every`-th document: MB/s per core that a busy machine disturbs less than wall time.
CPU_RUN = '''
import glob, json, sys, time
sys.path.insert(0, sys.argv[1])
import pyarrow as pa, pyarrow.parquet as pq
from curation.stages.base import RunContext
from curation.stages.pii import PiiParams, PiiRedaction
table = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(sys.argv[2] + "/*.parquet"))])
table = table.take(list(range(0, table.num_rows, int(sys.argv[3]))))
c = time.process_time()
stage = PiiRedaction(PiiParams(), RunContext(seed=0, output="/tmp/unused"))
stage.setup()
stage.process_batch(table.slice(0, 1))  # lazy loads (phone metadata, ...) belong to set-up
setup, c = time.process_time() - c, time.process_time()
for i in range(0, table.num_rows, 256):
    stage.process_batch(table.slice(i, 256))
print(json.dumps({"cpu_s": time.process_time() - c, "setup_cpu_s": setup}))
'''
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def pre_pii_data() -> Path:
    """The demo pipeline's output just before `pii` (built once)."""
    data = PRE_PII / "data"
    if data.is_dir() and any(data.glob("*.parquet")):
        return data
    import yaml

    config = yaml.safe_load((ROOT / "curation" / "configs" / "demo.yaml").read_text())
    names = [s["name"] if isinstance(s, dict) else s for s in config["stages"]]
    config["stages"] = config["stages"][:names.index("pii")]
    config["inputs"] = [str(ROOT / p) for p in config["inputs"]]
    config["stages"] = [{**s, "models": {d: str(ROOT / m) for d, m in s["models"].items()}}
                        if isinstance(s, dict) and s.get("name") == "perplexity" else s for s in config["stages"]]
    config["output"] = str(PRE_PII)
    cfg = PRE_PII.parent / "pre-pii.json"
    PRE_PII.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps(config))
    subprocess.run([str(Path(sys.executable).parent / "flywheel"), "curate", str(cfg), "--overwrite"], check=True,
                   cwd=ROOT, capture_output=True)
    return data


def run_tree(tree: Path, data: Path, cpus: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "run.py"
        script.write_text(RUN)
        out = subprocess.run([sys.executable, str(script), str(tree), str(data), str(Path(tmp) / "out"), str(cpus)],
                             check=True, capture_output=True, text=True, cwd=tmp,
                             env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_tree(tree: Path, data: Path, every: int) -> dict:
    """{"cpu_s", "setup_cpu_s"} of the engine of `tree` on every `every`-th document."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "cpu.py"
        script.write_text(CPU_RUN)
        out = subprocess.run([sys.executable, str(script), str(tree), str(data), str(every)], check=True,
                             capture_output=True, text=True, cwd=tmp, env={**os.environ, **ONE_THREAD})
    return json.loads(out.stdout.strip().splitlines()[-1])


def export(commit: str, into: Path) -> None:
    """The files of `commit` in `into`: `git archive`, which reads the repository and registers
    nothing (a worktree would, beside whatever else runs git in this checkout)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def measure(trees: list[tuple[str, Path]], data: Path, cpus: int, rounds: int, every: int) -> list[dict]:
    """Per round, per tree: stage seconds on the whole input and, with `every`, engine CPU
    seconds on every `every`-th document; the order of the trees alternates by round."""
    out = []
    for r in range(rounds):
        order = trees if r % 2 == 0 else trees[::-1]
        times: dict[str, dict[str, float]] = {}
        for label, tree in order:
            print(f"[round {r + 1}/{rounds}] {label} ...", file=sys.stderr, flush=True)
            times[label] = {"stage_s": run_tree(tree, data, cpus)["seconds"]}
            if every:
                times[label]["cpu_s"] = cpu_tree(tree, data, every)["cpu_s"]
        print(f"[round {r + 1}/{rounds}] {json.dumps(times)}", file=sys.stderr, flush=True)
        out.append(times)
    return out


def _rounds_table(rounds: list[dict], labels: tuple[str, str], key: str, unit: str, mb_per_core: float) -> list[str]:
    """A markdown table of `key` seconds per round for both trees, their ratio and MB/s per core
    (`mb_per_core` MB over those seconds), then the medians."""
    new, old = labels
    med = statistics.median
    lines = [f"| round | {new} {unit} | {old} {unit} | ratio | {new} MB/s per core | {old} MB/s per core |",
             "|---|---|---|---|---|---|"]
    rows = [(str(k), r[new][key], r[old][key], r[old][key] / r[new][key]) for k, r in enumerate(rounds, 1)]
    rows.append(("median", med(r[1] for r in rows), med(r[2] for r in rows), med(r[3] for r in rows)))
    for name, a, b, ratio in rows:
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {ratio:.1f}x | {mb_per_core / a:.3f} | {mb_per_core / b:.3f} |")
    return lines


def report(rounds: list[dict], labels: list[str], docs: int, mb: float, cpus: int, every: int, sub_mb: float) -> str:
    new, old = labels
    med = statistics.median
    wall = [r[old]["stage_s"] / r[new]["stage_s"] for r in rounds]
    lines = ["# The `pii` stage in the pipeline: before and after", "",
             f"Generated by `benchmarks/pii_stage.py --rounds {len(rounds)}`: the demo corpus after the stages "
             f"before `pii` ({docs:,} documents, {mb:.1f} MB of text), the `pii` stage alone with its defaults, "
             f"{cpus} cores, actor start-up included. Both trees run on the whole input in every round, "
             "interleaved (the order alternates by round); a ratio is taken within its round, and the "
             "median of the rounds' ratios is the result.", "",
             "## Stage wall time (whole input)", "",
             *_rounds_table(rounds, labels, "stage_s", "s", mb / cpus)]
    lines += ["", f"Speed-up, median of the rounds' ratios: **{med(wall):.1f}x** "
              f"(range {min(wall):.1f}-{max(wall):.1f}x; target 10x).", "",
              "Stage seconds also hold what the engine does not set: Ray's actor pool start, the pass that "
              "writes and tallies the output, and whatever else runs on the machine, which weighs on the "
              "short run far more than on the long one."]
    if every:
        cpu = [r[old]["cpu_s"] / r[new]["cpu_s"] for r in rounds]
        lines += ["", "## Engine CPU time (a fixed subset)", "",
                  f"The stage's `process_batch` in one process, one BLAS thread, on every {every}th document "
                  f"({sub_mb:.2f} MB, the same documents for both trees in every round): CPU seconds after set-up "
                  "(model loading and a warm-up document apart). Ray, reading and writing are left out, so "
                  "this is the engine's MB/s per core, which other work on the machine disturbs less than "
                  "wall time.", "",
                  *_rounds_table(rounds, labels, "cpu_s", "CPU s", sub_mb)]
        lines += ["", f"Engine speed-up, median of the rounds' ratios: **{med(cpu):.1f}x** "
                  f"(range {min(cpu):.1f}-{max(cpu):.1f}x)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="bf0417d", help="the commit to compare with (today's main when issue 13 was filed)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleaved runs of both trees; the median ratio counts")
    ap.add_argument("--cpu-every", type=int, default=8,
                    help="engine CPU time on every N-th document as well (0: stage wall time only)")
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    data = pre_pii_data()
    texts = _texts(data)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    sub_mb = sum(len(t.encode()) for t in texts[::args.cpu_every]) / 1e6 if args.cpu_every else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        export(args.baseline, old)
        trees = [("this tree", ROOT), (f"baseline {args.baseline}", old)]
        rounds = measure(trees, data, args.cpus, args.rounds, args.cpu_every)
    text = report(rounds, [label for label, _ in trees], len(texts), mb, args.cpus, args.cpu_every, sub_mb)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


def _texts(data: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [t for p in sorted(data.glob("*.parquet")) for t in pq.read_table(p, columns=["text"])["text"].to_pylist()]


if __name__ == "__main__":
    main()
