"""Docs/s per core of each filter stage on the demo corpus.

    .venv/bin/python benchmarks/filters.py [--corpus build/demo-corpus] [--cpus N]

Runs read -> language -> heuristics -> perplexity -> pii on the demo corpus (KenLM models are
trained from the corpus builder's reference text first, if missing) through the real pipeline,
and prints each stage's throughput as the pipeline measured it. `benchmarks/filters_lm.py` and
`benchmarks/filters_pii.py` time the stages' inner loops on synthetic text without Ray.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline  # noqa: E402  (benchmarks/pipeline.py: the shared timing harness)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="build/demo-corpus")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    args = ap.parse_args()
    from curation.demo_corpus import build_demo_corpus, build_reference_texts
    from curation.lm import train_lm

    corpus = Path(args.corpus)
    if not (corpus / "truth.json").exists():
        build_demo_corpus(corpus, seed=0)
    if not (corpus / "reference").exists():
        build_reference_texts(corpus)
    models = {}
    for domain in ("web", "books", "code"):
        model = corpus / "lm" / f"{domain}.arpa"
        if not model.exists():
            model.parent.mkdir(parents=True, exist_ok=True)
            train_lm(domain, str(corpus / "reference" / f"{domain}.jsonl"), str(model), order=5)
        models[domain] = str(model.resolve())
    stages = [
        {"name": "language", "keep": ["en"], "min_score": 0.3, "skip_domains": ["code", "math"]},
        {"name": "heuristics", "skip_domains": ["math"]},
        {"name": "perplexity", "models": models, "drop_above_percentile": 95},
        {"name": "pii"},
    ]
    pipeline.run(corpus, stages, args.cpus, repeat=1)


if __name__ == "__main__":
    main()
