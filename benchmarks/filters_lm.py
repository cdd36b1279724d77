"""Throughput of the LM and heuristic filters, one process (= docs/s per core).

    .venv/bin/python benchmarks/filters_lm.py [--mb 10] [--order 5] [--docs 5000]

Data is made here, offline and seeded:
- prose: ~2 KB documents sampled from a word bigram Markov chain fitted on the English that
  ships with the interpreter (`pydoc_data.topics` and stdlib docstrings, ~1.8 MB). It has the
  vocabulary of real text and new higher-order n-grams, which is what drives n-gram counts.
- code: the interpreter's own standard library `.py` files.
Measured in CPU seconds of this process (docs/s per core; wall time on a shared machine
measures the neighbours too): `train_lm` on `--mb` MB of prose (MB/s, n-grams, peak RSS),
perplexity scoring of held-out prose, shuffled-word prose and code, and the heuristics stage.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.lm import train_lm  # noqa: E402
from curation.lm.perplexity import DomainModel  # noqa: E402
from curation.stages.base import RunContext  # noqa: E402
from curation.stages.heuristics import HeuristicFilter, HeuristicParams  # noqa: E402


def stdlib_prose() -> str:
    """English shipped with the interpreter: the reference topics and stdlib docstrings (~1.8 MB)."""
    import ast

    import pydoc_data.topics

    parts = [" ".join(t.split()) for _, t in sorted(pydoc_data.topics.topics.items())]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("**/*.py")):
        if {"test", "tests", "site-packages", "idle_test"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(" ".join(doc.split()))
    return " ".join(parts)


def markov_prose(source: str, n_docs: int, seed: int, doc_chars: int = 2000) -> list[str]:
    """~2 KB documents sampled from a word bigram chain over `source`, one sentence per line.

    A bigram chain keeps the vocabulary and word statistics of the source but makes new
    higher-order n-grams, so the n-gram counts grow with the corpus as with real text.
    """
    words = source.split()
    chain: dict[str, list[str]] = defaultdict(list)
    for a, b in zip(words, words[1:]):
        chain[a].append(b)
    keys = sorted(chain)
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        word = rng.choice(keys)
        lines, line, size = [], [], 0
        while size < doc_chars:
            word = rng.choice(chain.get(word) or keys)
            line.append(word)
            size += len(word) + 1
            if word.endswith(".") and len(line) > 8:
                lines.append(" ".join(line))
                line = []
        lines.append(" ".join(line))
        docs.append("\n".join(lines))
    return docs


def stdlib_code(n_docs: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.append(text[:8000])
        if len(docs) == n_docs:
            break
    return docs


def shuffled(docs: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for d in docs:
        words = d.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=10.0, help="MB of prose to train the LM on")
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--docs", type=int, default=5000, help="documents to score / filter")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    source = stdlib_prose()
    train_docs = markov_prose(source, int(args.mb * 1e6 / 2000), seed=args.seed)
    held_out = markov_prose(source, args.docs, seed=args.seed + 1)
    code = stdlib_code(min(args.docs, 400))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp, "prose.jsonl")
        with corpus.open("w") as f:
            for d in train_docs:
                f.write(json.dumps({"text": d}) + "\n")
        mb = corpus.stat().st_size / 1e6
        t0 = time.process_time()
        stats = train_lm("web", str(corpus), Path(tmp, "web.arpa"), order=args.order)
        cpu = time.process_time() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(("train-lm (prose)", len(train_docs), cpu,
                     f"{mb:.1f} MB, {mb / cpu:.2f} MB/s, wall {stats['seconds']:.0f} s, {stats['tokens']:,} tokens, "
                     f"n-grams {stats['ngrams']}, ARPA {stats['arpa_bytes'] / 1e6:.0f} MB, peak RSS {peak_mb:,.0f} MB"))

        t0 = time.process_time()
        model = DomainModel(str(Path(tmp, "web.arpa")), "web")
        load_s = time.process_time() - t0
        for label, docs in (("perplexity: held-out prose", held_out),
                            ("perplexity: shuffled prose", shuffled(held_out, args.seed)),
                            ("perplexity: stdlib code (prose LM)", code)):
            t0 = time.process_time()
            pps = sorted(model.perplexity(d) for d in docs)
            s = time.process_time() - t0
            rows.append((label, len(docs), s, f"median pp {pps[len(pps) // 2]:,.1f}"))
        rows.append(("  (ARPA load, once per actor)", 1, load_s, ""))

    stage = HeuristicFilter(HeuristicParams(), RunContext(seed=args.seed, output="."))
    for label, docs, domain in (("heuristics: prose", held_out, "web"), ("heuristics: code", code, "code")):
        table = pa.table({"id": [str(i) for i in range(len(docs))], "text": docs, "domain": [domain] * len(docs)})
        t0 = time.process_time()
        reasons = []
        for start in range(0, table.num_rows, 1024):
            reasons += stage.process_batch(table.slice(start, 1024))["_reason"].to_pylist()
        s = time.process_time() - t0
        dropped = sum(r != "" for r in reasons)
        rows.append((label, len(docs), s, f"dropped {dropped} ({dropped / len(docs):.1%})"))

    # CPU seconds of this process: on a shared machine wall time measures the neighbours.
    print(f"{'step':32} {'docs':>7} {'cpu s':>8} {'docs/s':>9}  notes")
    for label, n, s, note in rows:
        print(f"{label:32} {n:7d} {s:8.2f} {rate(n, s):>9}  {note}")


if __name__ == "__main__":
    main()
