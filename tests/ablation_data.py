"""A small two-domain corpus for ablation tests: clean prose per domain, exact and near copies
under new ids, and junk the heuristics drop. Seeded: same arguments, same bytes."""

from __future__ import annotations

import random
from pathlib import Path

from tests.helpers import write_jsonl

STOP = "the of and to in is was for on that with as by at from this be are it not or have an they which".split()
VOCAB = {
    "web": "price shop order delivery account login cookie page site click offer free discount cart email".split(),
    "books": "river morning garden window letter forest silver bridge mother village winter candle whisper".split(),
}


def sentence(rng: random.Random, domain: str) -> str:
    words = [rng.choice(STOP if rng.random() < 0.45 else VOCAB[domain]) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + "."


def document(rng: random.Random, domain: str) -> str:
    return "\n".join(" ".join(sentence(rng, domain) for _ in range(rng.randint(2, 4)))
                     for _ in range(rng.randint(3, 6)))


def mini_corpus(path: Path, seed: int = 0, per_domain: int = 280) -> Path:
    """~2.5 x per_domain docs in two domains: clean text, exact and near copies, and junk the
    filters drop."""
    rng = random.Random(seed)
    docs = [{"id": f"{d}-{i:04}", "domain": d, "text": document(rng, d)} for d in VOCAB for i in range(per_domain)]
    copies = []
    for i, doc in enumerate(docs[::4]):  # near copies: a few words changed, under new ids
        words = doc["text"].split(" ")
        for k in rng.sample(range(len(words)), max(1, len(words) // 30)):
            words[k] = rng.choice(VOCAB[doc["domain"]])
        copies.append({"id": f"near-{i:04}", "domain": doc["domain"], "text": " ".join(words)})
    copies += [{"id": f"exact-{i:04}", "domain": d["domain"], "text": d["text"]} for i, d in enumerate(docs[1::9])]
    junk = [{"id": f"junk-{i:04}", "domain": "web", "text": "\n".join(["BUY NOW $$$ >>> click!!!"] * 30)}
            for i in range(per_domain * 3 // 14)]
    return write_jsonl(path, docs + copies + junk)
