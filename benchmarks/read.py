"""MB/s per core of the `read` step on clean input: JSONL, JSONL.gz and Parquet, old vs new path.

    .venv/bin/python benchmarks/read.py [--mb 100] [--seed 0] [--dir build/bench-read] [--ray]

Data is made here, seeded, once per (mb, seed): ~3 KB documents (log-normal lengths) cut from
real text on this machine (the Python reference `pydoc_data.topics`, standard-library sources,
and the demo corpus's non-English paragraphs, ~5% of docs), with id, url, domain and a small
metadata object, written as JSONL (`ensure_ascii=False`), JSONL.gz and Parquet (metadata as a
JSON string, as this pipeline writes it). Each row runs `read_task_tables` over every read task
of the file in this process, without Ray, and reports uncompressed input bytes (the JSONL size,
for all three) / CPU seconds of the process (`time.process_time`). `--ray` adds the read step
end to end (`read_documents(...).materialize()`) on a local Ray, wall-clock per core.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from curation.demo_corpus.injections import LANGUAGE_DOCS  # noqa: E402
from curation.io.files import plan_reads  # noqa: E402
from curation.io.reader import read_task_tables  # noqa: E402

MB = 1_000_000


def _sources() -> list[tuple[str, str, str]]:
    """(domain, url, text) of every source text, in a fixed order."""
    from pydoc_data import topics

    out = [("books", f"https://docs.python.org/3.11/topics/{k}.html", topics.topics[k]) for k in sorted(topics.topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" not in path.parts[-2] and path.stat().st_size < 200_000:
            rel = path.relative_to(root).as_posix()
            out.append(("code", f"https://github.com/python/cpython/blob/3.11/Lib/{rel}",
                        path.read_text("utf-8", errors="replace")))
    return out


def make_records(total_bytes: int, seed: int):
    rng = random.Random(seed)
    sources = _sources()
    lang = [("web", url, text) for _, url, text in LANGUAGE_DOCS]
    size = i = 0
    while size < total_bytes:
        if rng.random() < 0.05:  # non-English: a few paragraphs of one language
            domain, url, text = rng.choice(lang)
            text = "\n\n".join([text] * rng.randint(1, 6))
        else:
            domain, url, src = rng.choice(sources)
            n = min(len(src), max(200, int(rng.lognormvariate(math.log(2500), 0.7))))
            start = rng.randrange(0, len(src) - n + 1)
            text = src[start:start + n]
        rec = {"id": f"bench-{i:08d}", "text": text, "url": url, "domain": domain,
               "metadata": {"source": "bench", "seed": seed, "n": i, "license": "PSF-2.0"}}
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        size += len(line.encode())
        i += 1
        yield rec, line


def make_files(folder: Path, total_bytes: int, seed: int) -> dict[str, Path]:
    files = {"jsonl": folder / "docs.jsonl", "jsonl.gz": folder / "docs.jsonl.gz", "parquet": folder / "docs.parquet"}
    if all(p.exists() for p in files.values()):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(files["jsonl"], "w", encoding="utf-8") as f:
        for rec, line in make_records(total_bytes, seed):
            f.write(line)
            rows.append({**rec, "metadata": json.dumps(rec["metadata"])})
    with open(files["jsonl"], "rb") as src, gzip.open(files["jsonl.gz"], "wb", compresslevel=6) as dst:
        dst.write(src.read())
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"], row_group_size=16384)
    return files


def cpu_rate(path: Path, raw_bytes: int, fast: bool, repeat: int) -> tuple[float, int]:
    tasks = plan_reads(str(path), "web")
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time()
        rows = sum(t.num_rows for task in tasks for t in read_task_tables(task, fast=fast))
        best = min(best, time.process_time() - t0)
    return raw_bytes / MB / best, rows


def ray_rate(path: Path, raw_bytes: int) -> float:
    import ray

    from curation.io.reader import read_documents

    cpus = os.cpu_count() or 1
    tasks = plan_reads(str(path), "web")
    t0 = time.perf_counter()
    read_documents(tasks).materialize()
    return raw_bytes / MB / (time.perf_counter() - t0) / min(cpus, len(tasks)) if ray.is_initialized() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100, help="size of the JSONL file, MB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default="build/bench-read")
    ap.add_argument("--repeat", type=int, default=3, help="best of N (page cache warm after the first)")
    ap.add_argument("--ray", action="store_true", help="also time the read step through Ray")
    ap.add_argument("--markdown", type=Path, help="also write the table here (benchmarks/read.md)")
    args = ap.parse_args()
    files = make_files(Path(args.dir) / f"mb{args.mb:g}-seed{args.seed}", int(args.mb * MB), args.seed)
    raw = files["jsonl"].stat().st_size
    print(f"{raw / MB:.0f} MB JSONL ({files['jsonl.gz'].stat().st_size / MB:.0f} MB .gz, "
          f"{files['parquet'].stat().st_size / MB:.0f} MB Parquet)")
    print(f"{'format':<10} {'docs':>8} {'old MB/s/core':>14} {'new MB/s/core':>14} {'speedup':>8}")
    md = [f"# Read throughput (`benchmarks/read.py --mb {args.mb:g} --seed {args.seed}`)", "",
          f"{raw / MB:.0f} MB of JSONL ({files['jsonl.gz'].stat().st_size / MB:.0f} MB .gz, "
          f"{files['parquet'].stat().st_size / MB:.0f} MB Parquet), ~3 KB documents of real text; MB of JSONL per "
          f"CPU second of one process, best of {args.repeat}. `reference` is `fast=False` (json.loads per line, "
          "dict per Parquet row) on the same code; `fast` decodes JSONL lines with msgspec and reads Parquet "
          "batches of string fields a column at a time; both give identical tables "
          "(tests/test_reader_fast_path.py).",
          "", "| format | docs | reference MB/s/core | fast MB/s/core | speed-up |", "|---|---:|---:|---:|---:|"]
    for fmt, path in files.items():
        old, n_old = cpu_rate(path, raw, fast=False, repeat=args.repeat)
        new, n_new = cpu_rate(path, raw, fast=True, repeat=args.repeat)
        assert n_old == n_new, (n_old, n_new)
        print(f"{fmt:<10} {n_new:>8} {old:>14.1f} {new:>14.1f} {new / old:>7.1f}x")
        md.append(f"| {fmt} | {n_new:,} | {old:.1f} | {new:.1f} | {new / old:.1f}x |")
    if args.markdown:
        args.markdown.write_text("\n".join(md) + "\n")
    if args.ray:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            for fmt, path in files.items():
                print(f"ray read step {fmt:<10} {ray_rate(path, raw):8.1f} MB/s per core (wall clock)")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
