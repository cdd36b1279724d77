"""Corpora of any size with the statistics of real text, for throughput benchmarks.

    from benchmarks.realtext import write_corpus
    write_corpus("build/bench/realtext-30k", docs=30_000, seed=0)   # JSONL, ~3.3 KB a document

This machine has tens of MB of real prose, not the hundreds a 100k-document run needs, and
repeating real paragraphs would make every document a near-duplicate of others. So documents
are sampled from a word-bigram chain fitted on real text (the demo corpus's reference prose:
the Python reference, info manuals, package READMEs and licences), which keeps the vocabulary,
word lengths, punctuation and line structure of real text and makes new word 5-grams, as
different real documents do. 10% of the documents are near-copies of another (0.5-2% of words
edited: word-5-gram Jaccard ~0.8-0.95, what MinHash at 0.8 must find), so dedup has real work.

Deterministic: the same seed and sizes give the same bytes. Files are cached by name.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from curation.dedup.near_copies import edit_words

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "build" / "demo-corpus" / "reference"
MEAN_DOC_BYTES = 3_300  # the corpus: 30,000 documents in 100 MB
DUPLICATE_SHARE = 0.10


def source_text() -> list[str]:
    """Real prose this machine has (the demo corpus's reference text; `make demo` builds it)."""
    paths = [REFERENCE / f"{d}.jsonl" for d in ("books", "web")]
    if not all(p.is_file() for p in paths):
        from curation.demo_corpus import build_reference_texts

        build_reference_texts(REFERENCE.parent)
    return [json.loads(line)["text"] for p in paths for line in p.open(encoding="utf-8")]


class BigramChain:
    """Word bigrams of `texts`, with line breaks kept as the token "\\n"."""

    def __init__(self, texts: list[str]):
        follow: dict[str, list[str]] = defaultdict(list)
        for text in texts:
            tokens = [t for line in text.splitlines() for t in (*line.split(), "\n")]
            for a, b in zip(tokens, tokens[1:]):
                follow[a].append(b)
        self.follow = {k: v for k, v in follow.items()}
        self.starts = sorted(k for k in follow if k != "\n")

    def document(self, rng: random.Random, size: int) -> str:
        word, parts, n = rng.choice(self.starts), [], 0
        while n < size:
            word = rng.choice(self.follow.get(word) or self.starts)
            parts.append(word)
            n += len(word) + 1
        return " ".join(parts).replace(" \n ", "\n").replace("\n ", "\n").strip()


def documents(n: int, seed: int, chain: BigramChain | None = None):
    """(id, text) for n documents: lognormal sizes around MEAN_DOC_BYTES, 10% near-copies."""
    chain = chain or BigramChain(source_text())
    rng = random.Random(seed)
    kept: list[str] = []
    for i in range(n):
        if kept and rng.random() < DUPLICATE_SHARE:
            text, _ = edit_words(rng.choice(kept), rng.uniform(0.005, 0.02), rng, in_runs=False)
        else:
            text = chain.document(rng, int(rng.lognormvariate(7.9, 0.6)))  # median ~2.7 KB, mean ~3.3 KB
            if len(kept) < 5_000 or rng.random() < 0.05:
                kept.append(text)  # bounded pool of originals to copy from
        yield f"doc-{seed}-{i:07d}", text


def write_corpus(out_dir: str | Path, docs: int, seed: int = 0, files: int = 4) -> Path:
    """`out_dir/part-K.jsonl` (one domain, `web`) unless already written; returns out_dir."""
    out = Path(out_dir)
    done = out / "_SUCCESS"
    if done.is_file() and json.loads(done.read_text()) == {"docs": docs, "seed": seed, "files": files}:
        return out
    out.mkdir(parents=True, exist_ok=True)
    handles = [(out / f"part-{k}.jsonl").open("w", encoding="utf-8") for k in range(files)]
    try:
        for i, (doc_id, text) in enumerate(documents(docs, seed)):
            handles[i % files].write(json.dumps({"id": doc_id, "text": text, "domain": "web"}, ensure_ascii=False) + "\n")
    finally:
        for h in handles:
            h.close()
    done.write_text(json.dumps({"docs": docs, "seed": seed, "files": files}))
    return out
