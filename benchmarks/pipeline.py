"""Time the curation pipeline per stage on the demo corpus: docs/s and MB/s (text bytes).

    .venv/bin/python benchmarks/pipeline.py [--corpus build/demo-corpus] [--stages url_dedup,exact_dedup]
                                            [--cpus N] [--repeat 1]

Builds the demo corpus if it is missing. Throughput is each stage's input over its wall time
(materialise + accounting + rejects write included), as the pipeline reports it in stats.json.
Per-core figures divide by the Ray CPUs used.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq


def text_mb(path: Path) -> float:
    """MB of document text in a parquet folder (only the text column is read)."""
    total = 0
    for f in sorted(path.glob("*.parquet")):
        total += pc.sum(pc.binary_length(pq.read_table(f, columns=["text"])["text"])).as_py() or 0
    return total / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="build/demo-corpus")
    ap.add_argument("--stages", default="url_dedup,exact_dedup")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    stages = [s for s in args.stages.split(",") if s]
    run(Path(args.corpus), stages, args.cpus, args.repeat)


def run(corpus: Path, stages: list, cpus: int, repeat: int = 1) -> None:
    """Run `stages` (names or {name: ..., params}) on the corpus and print per-stage rates."""
    import gzip

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from curation import runtime
    from curation.config import parse_config
    from curation.demo_corpus import build_demo_corpus
    from curation.pipeline import run_pipeline

    if not (corpus / "truth.json").exists():
        build_demo_corpus(corpus, seed=0)
    runtime.init_ray(num_cpus=cpus, object_store_mb=1024)
    input_mb = sum(len(line) for f in sorted((corpus / "corpus").glob("*.jsonl.gz"))
                   for line in gzip.open(f, "rt")) / 1e6
    names = [s if isinstance(s, str) else s["name"] for s in stages]
    print(f"corpus: {corpus} ({input_mb:.1f} MB of JSONL), stages: {names}, Ray CPUs: {cpus}")
    print(f"{'run':>3} {'stage':<24} {'docs in':>9} {'seconds':>8} {'docs/s':>9} {'docs/s/core':>11} {'MB/s':>7} {'MB/s/core':>9}")
    for rep in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            cfg = parse_config({"inputs": [str(corpus / "corpus")], "output": out, "seed": 0, "stages": stages})
            t0 = time.perf_counter()
            result = run_pipeline(cfg)
            wall = time.perf_counter() - t0
            mb = input_mb  # the read step sees the raw JSONL; later stages see the kept texts
            for st in result.stats.stages:
                rate = st.docs_in / st.seconds if st.seconds else float("inf")
                mbs = mb / st.seconds if st.seconds else float("inf")
                print(f"{rep:>3} {st.name:<24} {st.docs_in:>9,} {st.seconds:>8.2f} {rate:>9.0f} {rate / cpus:>11.0f} "
                      f"{mbs:>7.2f} {mbs / cpus:>9.2f}")
                mb = mb * (st.tokens_out / st.tokens_in) if st.tokens_in else mb
            kept_mb = text_mb(Path(out) / "data")
            first = result.stats.stages[0].docs_in
            print(f"{rep:>3} {'total (wall)':<24} {first:>9,} {wall:>8.2f} {first / wall:>9.0f} {first / wall / cpus:>11.0f} "
                  f"{input_mb / wall:>7.2f} {input_mb / wall / cpus:>9.2f}   kept {kept_mb:.1f} MB of text")


if __name__ == "__main__":
    main()
