"""Near-copies of a text, for evaluation sets and demo corpora whose duplicates are known.

One generator for every labelled near-duplicate in the project (the demo corpus's injected
copies, the dedup evaluation sets, the benchmark corpora), so "a light copy" means one thing.
"""

from __future__ import annotations

import random
import re

_WORDS_AND_GAPS = re.compile(r"(\s+)")


def edit_words(text: str, fraction: float, rng: random.Random, *, in_runs: bool) -> tuple[str, float]:
    """`text` with `fraction` of its words edited; returns (new text, edited fraction).

    Light edits are scattered single words and may be pure casing/whitespace changes; heavy
    edits come in runs of 2-8 words (a rewritten clause), which keeps more 5-grams intact than
    the same number of scattered edits would.
    """
    parts = _WORDS_AND_GAPS.split(text)  # words at even indices, separators at odd ones
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    vocab = [parts[i] for i in words]
    n_edits = max(1, round(fraction * len(words)))
    if in_runs:
        targets: set[int] = set()
        while len(targets) < n_edits:
            start = rng.randrange(len(words))
            for t in range(start, min(len(words), start + rng.randint(2, 8))):
                if len(targets) < n_edits:
                    targets.add(t)
        chosen = sorted(targets)
    else:
        chosen = sorted(rng.sample(range(len(words)), n_edits))
    ops = ("substitute", "delete", "insert", "case") + (() if in_runs else ("whitespace",))
    for t in chosen:
        i = words[t]
        word = parts[i]
        op = rng.choice(ops)
        if op == "case":
            changed = next((w for w in (word.capitalize(), word.lower(), word.upper()) if w != word), None)
            if changed is None:  # no letters to re-case: insert instead
                op = "insert"
            else:
                parts[i] = changed
        if op == "substitute":
            parts[i] = next((w for w in (rng.choice(vocab) for _ in range(5)) if w != word), word + "s")
        elif op == "delete":
            parts[i] = ""
            if i + 1 < len(parts):
                parts[i + 1] = ""
        elif op == "insert":
            parts[i] = f"{word} {rng.choice(vocab)}"
        elif op == "whitespace":
            sep = parts[i + 1] if i + 1 < len(parts) else ""
            if i + 1 < len(parts):
                parts[i + 1] = "\n" if sep == " " else sep + " "
            else:
                parts[i] = word + " "
    return "".join(parts), n_edits / len(words)
