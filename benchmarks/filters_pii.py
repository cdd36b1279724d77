"""Throughput of the `language` and `pii` stages, in documents per second on one core.

    .venv/bin/python benchmarks/filters_pii.py [--docs 1000] [--repeat 3] [--seed 0]

Runs each stage's `process_batch` in this process (no Ray: the pipeline runs one such loop per
actor and core) on synthetic ~300-character English documents: 40% mention people and places,
40% are plain prose, 20% carry emails/phones/IPs but no names. Set-up (model loading) is timed
apart, once per actor in a real run.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # per-core numbers: no BLAS thread pools

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import pyarrow as pa  # noqa: E402

from curation.stages.base import RunContext  # noqa: E402
from curation.stages.language import LanguageFilter, LanguageParams  # noqa: E402
from curation.stages.pii import PiiParams, PiiRedaction  # noqa: E402

FIRST = "Jane Marcus Priya Tom Ingrid Robert Emma Lukas Olivia Kenji Ana Miguel".split()
LAST = "Doe Whitfield Raman Becker Solberg Chen Schmidt Novak Hart Watanabe Silva Alvarez".split()
CITIES = "Chicago Toronto Oslo Berlin Paris Lisbon Dublin Vienna Seattle Mumbai".split()
PROSE = [
    "The committee met again this week to review the budget for the coming year.",
    "Most of the changes were small, but a few of them will need more testing.",
    "the results were better than expected, and the team plans to publish them soon.",
    "Prices went up slightly in the third quarter, mostly because of energy costs.",
    "We moved the meeting to the afternoon so that everyone could attend it.",
    "the new version fixes several crashes and makes the start-up a little faster.",
    "It rained for most of the day, so the outdoor events were cancelled.",
    "Please read the instructions carefully before you install the update.",
]


def _fill(rng: random.Random, head: str, size: int = 300) -> str:
    text = head
    while len(text) < size:
        text += " " + rng.choice(PROSE)
    return text[:size].rsplit(" ", 1)[0]


def make_docs(n: int, seed: int) -> pa.Table:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            head = (f"{rng.choice(FIRST)} {rng.choice(LAST)} met {rng.choice(FIRST)} in {rng.choice(CITIES)} "
                    "to talk about the plan.")
        elif kind < 0.8:
            head = rng.choice(PROSE)
        else:
            ip = f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"
            head = (f"for access write to user{rng.randrange(1000)}@example.com or call "
                    f"(415) 555-01{rng.randrange(10, 100)}; the server is {ip}.")
        texts.append(_fill(rng, head))
    return pa.table({
        "id": [f"d{i}" for i in range(n)],
        "text": texts,
        "domain": ["web"] * n,
        "n_tokens": pa.array([len(t.split()) for t in texts], pa.int64()),
    })


def measure(stage, docs: pa.Table, repeat: int, batch_size: int = 256) -> tuple[float, float]:
    """(docs/s, set-up s); the best of `repeat` passes, as other processes share the cores."""
    t0 = time.perf_counter()
    stage.setup()
    setup_s = time.perf_counter() - t0
    stage.process_batch(docs.slice(0, 32))  # warm-up: lazy loads (phone metadata, recognizers)
    engine = getattr(stage, "engine", None)
    best = float("inf")
    for _ in range(repeat):
        if engine is not None:
            engine.ner_docs = 0
        t0 = time.perf_counter()
        for start in range(0, docs.num_rows, batch_size):
            stage.process_batch(docs.slice(start, batch_size))
        best = min(best, time.perf_counter() - t0)
    return docs.num_rows / best, setup_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    docs = make_docs(args.docs, args.seed)
    ctx = RunContext(seed=args.seed, output="/tmp/unused")
    regex_only = ["EMAIL", "PHONE", "CREDIT_CARD", "IP", "IBAN", "SSN", "CREDENTIAL", "API_KEY", "CRYPTO"]
    runs = [
        ("language", "lid.176.ftz", LanguageFilter(LanguageParams(), ctx)),
        ("pii", "NER on, pre-check on", PiiRedaction(PiiParams(), ctx)),
        ("pii", "NER on, pre-check off", PiiRedaction(PiiParams(ner_precheck=False), ctx)),
        ("pii", "NER off (patterns only)", PiiRedaction(PiiParams(entities=regex_only), ctx)),
        ("pii", "NER off, 8 phone regions", PiiRedaction(PiiParams(
            entities=regex_only, phone_regions=["US", "GB", "DE", "FR", "IL", "IN", "CA", "BR"]), ctx)),
    ]
    print(f"{docs.num_rows} docs, mean {sum(map(len, docs.column('text').to_pylist())) / docs.num_rows:.0f} chars, "
          "one core\n")
    print(f"{'stage':9s} {'variant':27s} {'docs/s':>8s} {'setup s':>8s} {'NER docs':>9s}")
    for stage_name, variant, stage in runs:
        rate, setup_s = measure(stage, docs, args.repeat)
        engine = getattr(stage, "engine", None)
        ner = f"{engine.ner_docs / docs.num_rows:8.0%}" if engine is not None else f"{'-':>8s}"
        print(f"{stage_name:9s} {variant:27s} {rate:8.0f} {setup_s:8.2f} {ner:>9s}")


if __name__ == "__main__":
    main()
