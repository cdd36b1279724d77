"""End-to-end throughput: Flywheel's MinHash dedup against the plain libraries, and the demo
pipeline's per-stage share, in one run; writes benchmarks/throughput.md.

    .venv/bin/python benchmarks/throughput.py [--sizes 10000 30000 100000] [--skip-demo]
        [--datatrove-python /tmp/dt/bin/python] [--markdown benchmarks/throughput.md]

1. Corpora: `benchmarks/realtext.py` writes the same real-text JSONL files once per size (one
   domain, ~3.3 KB a document, 10% near-copies), cached under build/bench/.
2. For each size, each contender dedups the same files at Jaccard 0.8 with 128 permutations,
   timed as a user would time it: the whole command, process start to exit.
   - flywheel: `flywheel curate` with `minhash_dedup` alone (embedded Ray on every core; its
     start-up is in the time). Per-stage MB/s per core come from its stats.json.
   - datasketch: the 20-line loop a user writes with the library (one process: json.loads,
     word 5-grams, `MinHash.update_batch`, `MinHashLSH` query-then-insert).
   - datatrove: its MinHash pipeline (signatures, buckets, cluster, filter) through
     `benchmarks/dedup.py --datatrove`, in a side venv (not a dependency of this project):
         python3 -m venv /tmp/dt && /tmp/dt/bin/pip install "datatrove[processing]" orjson spacy
     skipped, with this recipe printed, when that interpreter is absent.
3. The demo pipeline (`curation/configs/demo.yaml` on the demo corpus; `make demo` builds the
   corpus and its LMs) is run once: each stage's seconds, share of the run and MB/s per core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from benchmarks.realtext import write_corpus  # noqa: E402

BENCH = ROOT / "build" / "bench"
VENV_BIN = Path(sys.executable).parent
DATATROVE_RECIPE = 'python3 -m venv /tmp/dt && /tmp/dt/bin/pip install "datatrove[processing]" orjson spacy'
TARGETS = {30_000: 2.0, 100_000: 4.0}  # flywheel's speed-up over the datasketch loop (issue 13)

DATASKETCH_LOOP = '''
import glob, json, re, sys
from datasketch import MinHash, MinHashLSH

lsh = MinHashLSH(threshold=0.8, num_perm=128)
word = re.compile(r"\\w+")
kept = dropped = 0
for path in sorted(glob.glob(sys.argv[1] + "/*.jsonl")):
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            w = word.findall(doc["text"].lower())
            shingles = {" ".join(w[i:i + 5]).encode() for i in range(max(len(w) - 4, 1))}
            m = MinHash(num_perm=128)
            m.update_batch(shingles)
            if lsh.query(m):
                dropped += 1
            else:
                lsh.insert(doc["id"], m)
                kept += 1
print(json.dumps({"kept": kept, "dropped": dropped}))
'''


def timed(cmd: list[str], **kwargs) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)
    return time.perf_counter() - t0, out.stdout


def corpus_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.jsonl")) / 1e6


def run_flywheel(corpus: Path, out: Path, stages: list, cpus: int) -> dict:
    config = {"inputs": [str(corpus)], "output": str(out), "seed": 0, "stages": stages}
    cfg = out.parent / f"{out.name}.json"
    cfg.write_text(json.dumps(config))
    env = {**os.environ, "FLYWHEEL_NUM_CPUS": str(cpus), "RAY_AUTH_MODE": "disabled"}
    seconds, _ = timed([str(VENV_BIN / "flywheel"), "curate", str(cfg), "--overwrite"], env=env)
    stats = json.loads((out / "stats.json").read_text())
    return {"seconds": seconds, "stats": stats}


def stage_rows(stats: dict, cpus: int, run_seconds: float) -> list[dict]:
    rows = []
    for st in stats["stages"]:
        mb_in = st.get("bytes_in", 0) / 1e6
        rows.append({"stage": st["name"], "seconds": st["seconds"], "share": st["seconds"] / run_seconds,
                     "mb_in": mb_in, "mb_per_s_core": mb_in / st["seconds"] / cpus if st["seconds"] else None,
                     "docs_in": st["docs_in"], "docs_out": st["docs_out"]})
    return rows


def compare(sizes: list[int], cpus: int, datatrove_python: str | None, datatrove_max: int) -> list[dict]:
    results = []
    for n in sizes:
        corpus = write_corpus(BENCH / f"realtext-{n}", docs=n, seed=0)
        mb = corpus_mb(corpus)
        row: dict = {"docs": n, "mb": mb}
        print(f"[{n:,} docs, {mb:.0f} MB] flywheel ...", file=sys.stderr, flush=True)
        fw = run_flywheel(corpus, BENCH / f"out-minhash-{n}", [{"name": "minhash_dedup", "threshold": 0.8}], cpus)
        dedup = next(s for s in fw["stats"]["stages"] if s["name"] == "minhash_dedup")
        row["flywheel"] = {"seconds": fw["seconds"], "kept": dedup["docs_out"],
                           "dropped": dedup["docs_in"] - dedup["docs_out"],
                           "stages": stage_rows(fw["stats"], cpus, fw["stats"]["totals"]["seconds"]),
                           "phases": dedup.get("extra", {}).get("seconds", {})}
        print(f"[{n:,} docs] datasketch loop ...", file=sys.stderr, flush=True)
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(DATASKETCH_LOOP)
        seconds, out = timed([sys.executable, f.name, str(corpus)])
        os.unlink(f.name)
        row["datasketch"] = {"seconds": seconds, **json.loads(out.strip().splitlines()[-1])}
        if datatrove_python and n <= datatrove_max:
            print(f"[{n:,} docs] datatrove ...", file=sys.stderr, flush=True)
            try:
                seconds, out = timed([datatrove_python, str(ROOT / "benchmarks" / "dedup.py"), "--datatrove", str(corpus)])
            except subprocess.CalledProcessError as e:  # a broken side venv is reported, never timed
                print(f"datatrove failed:\n{e.stdout}{e.stderr}", file=sys.stderr)
            else:
                log = out.strip().splitlines()
                dropped = [int(line.split()[2]) for line in log if line.startswith("datatrove dropped ")]
                row["datatrove"] = {"seconds": seconds, "log": log[-5:], "dropped": dropped[0] if dropped else None}
        results.append(row)
    return results


def demo_pipeline(cpus: int) -> dict | None:
    corpus = ROOT / "build" / "demo-corpus"
    if not (corpus / "truth.json").is_file() or not (corpus / "lm" / "code.arpa").is_file():
        print("demo corpus or its LMs missing: `make demo` (or the Makefile's demo-corpus targets) builds them",
              file=sys.stderr)
        return None
    import yaml

    config = yaml.safe_load((ROOT / "curation" / "configs" / "demo.yaml").read_text())
    out = BENCH / "demo-run"
    print("[demo pipeline] ...", file=sys.stderr, flush=True)
    fw = run_flywheel(ROOT / config["inputs"][0], out, config["stages"], cpus)
    total = fw["stats"]["totals"]["seconds"]
    return {"seconds": fw["seconds"], "run_seconds": total, "stages": stage_rows(fw["stats"], cpus, total)}


def markdown(results: list[dict], demo: dict | None, cpus: int, datatrove_python: str | None) -> str:
    lines = ["# Throughput", "",
             f"Generated by `benchmarks/throughput.py` on {platform.machine()}, {cpus} cores "
             f"({cpu_name()}). Times are whole commands, process start to exit, as a user times them.", "",
             "## MinHash dedup: Flywheel vs the plain libraries", "",
             "Same real-text files (`benchmarks/realtext.py`: one domain, ~3.3 KB a document, 10% near-copies), "
             "Jaccard 0.8, 128 permutations.", "",
             "| docs | MB | flywheel s | datasketch loop s | datatrove s | flywheel vs datasketch | target | "
             "dropped (flywheel / datasketch / datatrove) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        speedup = r["datasketch"]["seconds"] / r["flywheel"]["seconds"]
        target = TARGETS.get(r["docs"])
        dt = f"{r['datatrove']['seconds']:.1f}" if "datatrove" in r else "—"
        lines.append(f"| {r['docs']:,} | {r['mb']:.0f} | {r['flywheel']['seconds']:.1f} | {r['datasketch']['seconds']:.1f} "
                     f"| {dt} | {speedup:.2f}x | {f'{target:.0f}x ' + ('met' if speedup >= target else 'NOT met') if target else '—'} "
                     f"| {r['flywheel']['dropped']:,} / {r['datasketch']['dropped']:,} / {_dropped(r.get('datatrove'))} |")
    skipped = [r["docs"] for r in results if datatrove_python and "datatrove" not in r]
    if skipped:
        lines += ["", f"datatrove was not run at {', '.join(f'{n:,}' for n in skipped)} documents "
                  "(`--datatrove-max-docs`: at 100,000 it alone takes ~15 minutes on 2 cores here)."]
    if not datatrove_python:
        lines += ["", f"datatrove was not run (no side venv). Recipe: `{DATATROVE_RECIPE}`, then "
                  "`--datatrove-python /tmp/dt/bin/python`."]
    lines += ["", "Inside the flywheel runs (its stats.json; MB/s per core = stage input MB / seconds / cores):", "",
              "| docs | stage | seconds | MB in | MB/s per core | minhash phases (s) |", "|---|---|---|---|---|---|"]
    for r in results:
        for st in r["flywheel"]["stages"]:
            phases = ", ".join(f"{k} {v:.2f}" for k, v in r["flywheel"]["phases"].items()) if st["stage"] == "minhash_dedup" else ""
            lines.append(f"| {r['docs']:,} | {st['stage']} | {st['seconds']:.2f} | {st['mb_in']:.0f} | "
                         f"{_f(st['mb_per_s_core'])} | {phases} |")
    if demo:
        worst = max(demo["stages"], key=lambda s: s["share"])
        lines += ["", "## The demo pipeline, per stage", "",
                  f"`curation/configs/demo.yaml` on the demo corpus: {demo['run_seconds']:.1f} s inside the run, "
                  f"{demo['seconds']:.1f} s for the whole command. Largest share: {worst['stage']} "
                  f"{worst['share']:.0%} (target: no stage over a third: {'met' if worst['share'] <= 1 / 3 else 'NOT met'}).", "",
                  "| stage | seconds | share of run | MB in | MB/s per core | docs in | docs out |", "|---|---|---|---|---|---|---|"]
        for st in demo["stages"]:
            lines.append(f"| {st['stage']} | {st['seconds']:.2f} | {st['share']:.1%} | {st['mb_in']:.1f} | "
                         f"{_f(st['mb_per_s_core'])} | {st['docs_in']:,} | {st['docs_out']:,} |")
    return "\n".join(lines) + "\n"


def _dropped(datatrove: dict | None) -> str:
    return "—" if not datatrove or datatrove.get("dropped") is None else f"{datatrove['dropped']:,}"


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--datatrove-python", default="/tmp/dt/bin/python")
    ap.add_argument("--datatrove-max-docs", type=int, default=10**9,
                    help="run datatrove only up to this size (it takes ~15 min for 100k docs on 2 cores here)")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "throughput.md")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    dt = args.datatrove_python if args.datatrove_python and Path(args.datatrove_python).is_file() else None
    if dt is None:
        print(f"datatrove skipped: no interpreter at {args.datatrove_python}. Recipe: {DATATROVE_RECIPE}", file=sys.stderr)
    BENCH.mkdir(parents=True, exist_ok=True)
    results = compare(args.sizes, args.cpus, dt, args.datatrove_max_docs)
    demo = None if args.skip_demo else demo_pipeline(args.cpus)
    text = markdown(results, demo, args.cpus, dt)
    args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"minhash": results, "demo": demo}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
