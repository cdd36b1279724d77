"""`decontaminate`: drop records that share word n-grams with an evaluation set.

An eval set is JSONL: objects with a "text" field, or records of any post-training kind (each
field a text). Words are `curation.dedup.similarity.words` (lower-cased \\w+ runs), the words
the project's other overlap checks use. Each field of a record is checked alone, so no n-gram
spans two messages or a role name. A record whose fields share `min_matches` or more distinct
n-grams with one set is dropped as `contaminated`, detail {eval_set, ngram (the first match, as
words), matches, field}. An eval text shorter than n words is one shorter n-gram: it matches
only a field made of exactly those words. Only train-split records are checked: the eval split
is held out already, and it may be the very text an eval set was made from.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass

from contract.posttrain import EvalSet, RecordError, parse_record
from contract.stores import filesystem_for, read_bytes
from curation.dedup.similarity import words
from curation.io.files import InputError
from curation.posttrain.config import DecontaminationParams
from curation.posttrain.rows import Verdict

NAME = "decontaminate"
METHOD = "Word n-gram overlap with eval sets"
REASON = "contaminated"

NGram = tuple[str, ...]


def ngrams(text: str, n: int) -> list[NGram]:
    """The word n-grams of `text` in order (one shorter tuple for a text under n words)."""
    w = words(text)
    if len(w) < n:
        return [tuple(w)] if w else []
    return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]


@dataclass
class EvalIndex:
    """Every n-gram of the eval sets -> the index of the first set that has it."""

    n: int
    sets: list[EvalSet]
    owner: dict[NGram, int]


def eval_texts(location: str) -> tuple[list[str], str]:
    """(the texts of an eval set, sha256 of its bytes); InputError naming file:line."""
    try:
        fs, path = filesystem_for(location)
        data = read_bytes(fs, path)
    except (FileNotFoundError, OSError) as e:
        raise InputError(f"eval set {location}: cannot read it ({e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if location.endswith(".gz"):
        data = gzip.decompress(data)
    texts = []
    for number, line in enumerate(data.decode(errors="replace").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                texts.append(obj["text"])
            else:
                texts += [t for _, t in parse_record(obj).fields()]
        except (json.JSONDecodeError, RecordError) as e:
            raise InputError(f"eval set {location}:{number}: neither {{\"text\": ...}} nor a post-training "
                             f"record ({e})") from None
    return texts, digest


def build_index(p: DecontaminationParams) -> EvalIndex:
    owner: dict[NGram, int] = {}
    sets = []
    for k, location in enumerate(p.eval_sets):
        texts, digest = eval_texts(location)
        grams = {g for t in texts for g in ngrams(t, p.ngram)}
        for g in grams:
            owner.setdefault(g, k)
        sets.append(EvalSet(location=location, sha256=digest, texts=len(texts), ngrams=len(grams)))
    return EvalIndex(p.ngram, sets, owner)


def contamination(fields: list[tuple[str, str]], index: EvalIndex, min_matches: int) -> dict | None:
    """The detail of a record's worst overlap when it reaches `min_matches`, else None."""
    matched: dict[int, dict[NGram, str]] = {}  # set -> distinct n-grams -> field of the first match
    for where, text in fields:
        for g in ngrams(text, index.n):
            k = index.owner.get(g)
            if k is not None:
                matched.setdefault(k, {}).setdefault(g, where)
    if not matched:
        return None
    k, grams = max(matched.items(), key=lambda kv: (len(kv[1]), -kv[0]))
    if len(grams) < min_matches:
        return None
    first, where = next(iter(grams.items()))
    return {"eval_set": index.sets[k].location, "ngram": " ".join(first), "matches": len(grams), "field": where}


def decontaminate(verdicts: list[Verdict], index: EvalIndex, p: DecontaminationParams) -> list[Verdict]:
    out = []
    for v in verdicts:
        if v.row.split != "train":
            out.append(v)
            continue
        detail = contamination(v.row.record.fields(), index, p.min_matches)
        out.append(v if detail is None else Verdict(v.row, REASON, detail))
    return out
