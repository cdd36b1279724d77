"""Dedup throughput: docs/s and MB/s per core, and peak RSS, per phase of both dedup stages.

    .venv/bin/python benchmarks/dedup.py                 # 10k and 100k synthetic documents
    .venv/bin/python benchmarks/dedup.py --sizes 10000 --with-1m
    .venv/bin/python benchmarks/dedup.py --write-corpus /tmp/dedup_corpus --sizes 100000

Synthetic documents: ~2 KB of Zipf-distributed words (a 50k-word vocabulary), 10% of them
near-copies of another (1% of words substituted). Phases of `minhash_dedup` come from its own
timings (signatures, banding = band keys + bucket shuffle + verified edges, components,
clusters); "join" is materialising the output (verdicts joined to the full rows), measured
with the broadcast lookup and with the cogroup shuffle. Peak RSS: the driver plus every local
Ray worker, sampled every 0.1 s during the phase.

datatrove comparison (not a dependency of this project; its own venv):
    python -m venv /tmp/dt && /tmp/dt/bin/pip install "datatrove[processing]" orjson spacy
    .venv/bin/python benchmarks/dedup.py --write-corpus /tmp/dedup_corpus --sizes 100000
    /tmp/dt/bin/python benchmarks/dedup.py --datatrove /tmp/dedup_corpus
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = 50_000
WORDS_PER_DOC = 330  # ~2 KB
DUP_SHARE = 0.10


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(VOCAB)], dtype=object)
    ids = (rng.zipf(1.2, size=n * WORDS_PER_DOC) - 1) % VOCAB
    words = vocab[ids]
    words[rng.random(len(words)) < 1 / 14] += "."  # sentences of ~14 words, for the sentence stage
    texts = [" ".join(words[i * WORDS_PER_DOC:(i + 1) * WORDS_PER_DOC]) for i in range(n)]
    for i in rng.choice(n, int(n * DUP_SHARE), replace=False):
        words = texts[int(rng.integers(n))].split()
        for j in rng.choice(len(words), len(words) // 100, replace=False):
            words[j] = "edited"
        texts[i] = " ".join(words)
    return texts


class PeakRss:
    """Samples the RSS of the driver and this Ray node's workers in a thread (every 0.1 s)."""

    def __init__(self):
        from curation.dedup import report

        self._report = report
        self.raylet = report.raylet_pid()
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now_mb(self) -> float:
        return self._report.rss_mb([os.getpid()] + self._report.ray_worker_pids(self.raylet))

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.now_mb()))
            time.sleep(0.1)

    def peak(self, start: float, end: float) -> float:
        inside = [mb for t, mb in self.samples if start <= t <= end]
        return max(inside) if inside else self.now_mb()

    def stop(self):
        self._stop.set()
        self._thread.join()


def _documents(texts: list[str]):
    import ray.data

    from curation.dedup.evaluate import documents_table

    table = documents_table([f"doc-{i:08d}" for i in range(len(texts))], texts)
    step = 5_000
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)]).materialize()


def _count_dropped(batch):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa.table({"n": [pc.sum(pc.not_equal(batch["_reason"], "")).as_py() or 0]})


def bench_minhash(ds, n: int, mb: float, cpus: int, rss: PeakRss, out_dir: str, join: str) -> list[tuple]:
    from curation.stages.base import RunContext
    from curation.stages.minhash_dedup import MinHashDedup, MinHashDedupParams

    params = MinHashDedupParams(broadcast_mb=0.0 if join == "cogroup" else 64.0)
    stage = MinHashDedup(params, RunContext(seed=0, output=out_dir, num_cpus=cpus))
    t0 = time.perf_counter()
    out = stage.run(ds)
    t1 = time.perf_counter()
    out = out.materialize()
    t2 = time.perf_counter()
    dropped = sum(r["n"] for r in out.map_batches(_count_dropped, batch_format="pyarrow", batch_size=None).take_all())
    rows, at = [], t0
    for phase, secs in stage.report["seconds"].items():
        rows.append((n, f"minhash {phase}", secs, cpus, mb, rss.peak(at, at + secs)))
        at += secs
    rows.append((n, f"minhash join ({stage.report['verdict_join']})", t2 - t1, cpus, mb, rss.peak(t1, t2)))
    rows.append((n, "minhash total", t2 - t0, cpus, mb, rss.peak(t0, t2)))
    print(f"  n={n} join={join}: {dropped} dropped, {stage.report['edges']} edges, "
          f"{stage.report['components_rounds']} rounds, bands x rows = {stage.report['bands']} x {stage.report['rows']}",
          flush=True)
    return rows


def bench_simhash(ds, n: int, mb: float, cpus: int, rss: PeakRss) -> list[tuple]:
    from curation.stages.base import RunContext
    from curation.stages.simhash_sentence_dedup import SimHashSentenceDedup, SimHashSentenceDedupParams

    stage = SimHashSentenceDedup(SimHashSentenceDedupParams(), RunContext(seed=0, output="unused", num_cpus=cpus))
    t0 = time.perf_counter()
    stage.run(ds).materialize()
    t1 = time.perf_counter()
    return [(n, "simhash sentences total", t1 - t0, cpus, mb, rss.peak(t0, t1))]


def bench_datasketch_bulk(texts: list[str]) -> tuple:
    """The reference: datasketch's own `MinHash.bulk` over the same word 5-grams, one core."""
    from datasketch import MinHash

    sample = texts[:2000]
    t0 = time.perf_counter()
    shingles = []
    for t in sample:  # the usual way: split, join 5 words, encode; then bulk
        w = t.lower().split()
        shingles.append([" ".join(w[i:i + 5]).encode() for i in range(len(w) - 4)])
    MinHash.bulk(shingles, num_perm=128)
    secs = time.perf_counter() - t0
    return (len(sample), "datasketch shingles+bulk, 1 core", secs, 1, sum(map(len, sample)) / 2**20, 0.0)


def print_table(rows: list[tuple]) -> None:
    print(f"\n{'docs':>9}  {'phase':<34} {'seconds':>8} {'docs/s/core':>12} {'MB/s/core':>10} {'peak RSS MB':>12}")
    for n, phase, secs, cores, mb, peak in rows:
        print(f"{n:>9}  {phase:<34} {secs:>8.2f} {n / secs / cores:>12,.0f} {mb / secs / cores:>10.2f} {peak:>12,.0f}")


def run_datatrove(corpus: str) -> None:
    """datatrove's MinHash pipeline (signatures, buckets, cluster, filter) on --write-corpus files."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    work = tempfile.mkdtemp(prefix="datatrove-")
    config = MinhashConfig(num_buckets=9, hashes_per_bucket=13)  # as minhash_dedup's default choice
    tasks = len(list(Path(corpus).glob("*.jsonl")))
    steps = [
        ("signatures", [JsonlReader(corpus), MinhashDedupSignature(output_folder=f"{work}/sigs", config=config)], tasks),
        ("buckets", [MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=config)], 9),
        ("cluster", [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove", config=config)], 1),
        ("filter", [JsonlReader(corpus), MinhashDedupFilter(input_folder=f"{work}/remove"),
                    JsonlWriter(f"{work}/out")], tasks),
    ]
    for name, pipeline, n_tasks in steps:
        t0 = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=os.cpu_count(),
                              logging_dir=f"{work}/logs/{name}").run()
        print(f"datatrove {name:<10} {time.perf_counter() - t0:8.2f} s")
    docs = sum(1 for p in Path(corpus).glob("*.jsonl") for _ in open(p, "rb"))
    kept = sum(1 for p in Path(f"{work}/out").glob("*.jsonl.gz") for _ in gzip.open(p, "rb"))
    print(f"datatrove dropped {docs - kept} of {docs}")


def write_corpus(texts: list[str], out: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    per_file = 10_000
    for f in range(0, len(texts), per_file):
        with open(Path(out) / f"part-{f // per_file:05d}.jsonl", "w") as fh:
            for i in range(f, min(f + per_file, len(texts))):
                fh.write(json.dumps({"id": f"doc-{i:08d}", "text": texts[i]}) + "\n")
    print(f"wrote {len(texts)} documents to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--with-1m", action="store_true", help="also 1,000,000 documents")
    ap.add_argument("--cpus", type=int, default=None)
    ap.add_argument("--write-corpus", metavar="DIR", help="write the synthetic corpus as JSONL and stop")
    ap.add_argument("--datatrove", metavar="DIR", help="run datatrove's MinHash on a written corpus")
    args = ap.parse_args()
    if args.datatrove:
        try:
            run_datatrove(args.datatrove)
        except ImportError as e:  # datatrove itself, or one of its optional readers' dependencies
            print(f"datatrove cannot run here: {e}\n" + __doc__[__doc__.index("datatrove comparison"):])
            sys.exit(2)
        return
    sizes = args.sizes + ([1_000_000] if args.with_1m else [])
    if args.write_corpus:
        write_corpus(synthetic_texts(max(sizes)), args.write_corpus)
        return

    from curation import runtime

    # NOTE: Ray keeps only num_cpus idle workers by default; shuffle map tasks run in workers of
    # their own runtime env, so alternating maps and shuffles restarts workers every step
    # (1-5 s each on 2 CPUs). A few spare idle workers remove that churn.
    os.environ.setdefault("RAY_num_workers_soft_limit", str(2 * (args.cpus or os.cpu_count())))
    runtime.init_ray(num_cpus=args.cpus)
    cpus = runtime.cluster_cpus()
    rss = PeakRss()
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        texts = synthetic_texts(n)
        mb = sum(len(t.encode()) for t in texts) / 2**20
        ds = _documents(texts)
        print(f"{n} documents, {mb:.0f} MB, made in {time.perf_counter() - t0:.1f} s", flush=True)
        if n == sizes[0]:
            rows.append(bench_datasketch_bulk(texts))
        with tempfile.TemporaryDirectory() as out_dir:
            for join in ("broadcast", "cogroup"):
                rows += bench_minhash(ds, n, mb, cpus, rss, f"{out_dir}/{join}", join)
        rows += bench_simhash(ds, n, mb, cpus, rss)
        del ds, texts
    rss.stop()
    print_table(rows)
    try:
        import datatrove  # noqa: F401
    except ImportError:
        print("\n" + __doc__[__doc__.index("datatrove comparison"):])


if __name__ == "__main__":
    main()
