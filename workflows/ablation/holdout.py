"""Held-out evaluation sets that no training set comes near.

    raw corpus --read--> every document (ids unique)
        per domain: candidates = the docs_per_domain x oversample smallest hash(seed, id)
        candidates --clean stages--> the first docs_per_domain kept, in hash order --> eval/<domain>.jsonl
        the rest --minus candidates, minus near-duplicates of any eval doc--> the training pool

"Near-duplicate" is a word-5-gram Jaccard at or above the threshold (0.5 by default, looser than
dedup's 0.8), computed exactly on candidate pairs that MinHash-LSH finds. Every variant trains on
a curated subset of the pool, so none can have seen its test answers; `count_leaks` re-checks a
variant's kept documents all the same (curation edits texts: PII placeholders, dropped sentences).
The LSH bands favour recall (false-negative weight 0.9): a missed pair is a leak, a false
candidate only costs one exact Jaccard.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.dedup.minhash import MinHasher, band_keys, optimal_bands_rows
from curation.dedup.similarity import jaccard, word_ngrams

if TYPE_CHECKING:
    import ray.data

HELD_OUT = "held_out"
NEAR_HELD_OUT = "near_duplicate_of_held_out"
POOL_COLUMNS = ["id", "text", "url", "domain", "metadata"]


def holdout_rank(seed: int, doc_id: str) -> int:
    """A document's place in the seeded draw (smaller is drawn first)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest(), "big")


def draw_candidates(ids: list[str], domains: list[str], per_domain: int, seed: int,
                    skip_domains: set[str]) -> dict[str, list[str]]:
    """domain -> candidate ids in draw order (at most `per_domain`)."""
    by_domain: dict[str, list[str]] = defaultdict(list)
    for doc_id, domain in zip(ids, domains, strict=True):
        if domain not in skip_domains:
            by_domain[domain].append(doc_id)
    return {d: sorted(v, key=lambda i: holdout_rank(seed, i))[:per_domain] for d, v in sorted(by_domain.items())}


class HeldOutIndex:
    """The held-out documents as an LSH index: which texts of a batch are near one of them.

    Small (hundreds of documents), so it travels to every task with the function that uses it.
    """

    def __init__(self, ids: list[str], texts: list[str], threshold: float, seed: int, num_perm: int = 128):
        self.ids, self.threshold, self.seed = list(ids), threshold, seed
        self.hasher = MinHasher(num_perm=num_perm, ngram=5, seed=seed)
        self.bands, self.rows = optimal_bands_rows(threshold, num_perm, fp_weight=0.1, fn_weight=0.9)
        self.ngrams = [word_ngrams(t) for t in texts]
        self.buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        if texts:
            sig, _ = self.hasher.signatures(pa.array(texts, pa.string()))
            for i, row in enumerate(band_keys(sig, self.bands, self.rows, seed)):
                for band, key in enumerate(row.tolist()):
                    self.buckets[(band, key)].append(i)
        self.buckets = dict(self.buckets)

    def matches(self, texts: pa.Array | pa.ChunkedArray) -> list[tuple[int, int, float]]:
        """(row in `texts`, held-out index, Jaccard) for every pair at or above the threshold."""
        if not self.ids or len(texts) == 0:
            return []
        sig, _ = self.hasher.signatures(texts)
        keys = band_keys(sig, self.bands, self.rows, self.seed)
        found = []
        for row in range(len(texts)):
            candidates = {i for band, key in enumerate(keys[row].tolist()) for i in self.buckets.get((band, key), ())}
            if not candidates:
                continue
            grams = word_ngrams(texts[row].as_py())
            for i in sorted(candidates):
                similarity = jaccard(grams, self.ngrams[i]) if grams and self.ngrams[i] else 0.0
                if similarity >= self.threshold:
                    found.append((row, i, similarity))
        return found


class _MarkPool:
    """Map step over the read documents: `_pool` is "" (training pool), held_out, or
    near_duplicate_of_held_out, with `_pool_detail` naming the held-out document."""

    def __init__(self, held_out: set[str], index: HeldOutIndex):
        self.held_out, self.index = held_out, index

    def __call__(self, batch: pa.Table) -> pa.Table:
        reasons = [HELD_OUT if i in self.held_out else "" for i in batch["id"].to_pylist()]
        details: list[str | None] = [None] * batch.num_rows
        for row, i, similarity in self.index.matches(batch["text"]):
            if not reasons[row]:
                reasons[row] = NEAR_HELD_OUT
                details[row] = json.dumps({"held_out_id": self.index.ids[i], "jaccard": round(similarity, 4)})
        return batch.append_column("_pool", pa.array(reasons, pa.string())).append_column(
            "_pool_detail", pa.array(details, pa.string()))


class _LeakRows:
    def __init__(self, index: HeldOutIndex):
        self.index = index

    def __call__(self, batch: pa.Table) -> pa.Table:
        found = self.index.matches(batch["text"])
        ids = batch["id"].to_pylist()
        return pa.table({"id": pa.array([ids[r] for r, _, _ in found], pa.string()),
                         "held_out_id": pa.array([self.index.ids[i] for _, i, _ in found], pa.string()),
                         "jaccard": pa.array([s for _, _, s in found], pa.float64())})


def count_leaks(ds: ray.data.Dataset, index: HeldOutIndex) -> list[dict[str, Any]]:
    """Pairs (training id, held-out id, Jaccard) at or above the index's threshold."""
    return ds.select_columns(["id", "text"]).map_batches(_LeakRows(index), batch_format="pyarrow").take_all()


@dataclass
class HoldoutSplit:
    eval_files: dict[str, str]  # domain -> held-out JSONL
    held_out_docs: int
    candidates: int
    removed_near_duplicates: int
    pool_docs: int
    index: HeldOutIndex


def write_eval_jsonl(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in table.select(["id", "text", "domain"]).to_pylist():
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def split_holdout(read_dir: str, clean_dir: str, out_dir: Path, pool_dir: str, *, per_domain: int,
                  oversample: float, threshold: float, seed: int, skip_domains: set[str], run_clean) -> HoldoutSplit:
    """Draw, clean and write the held-out sets; write the training pool (Parquet) and the removed
    documents with their reasons (out_dir/removed/). `run_clean(candidates_parquet, clean_dir)`
    curates the candidates and returns the kept documents' folder."""
    import ray.data  # Ray Data: held-out sets are configured without it

    docs = pq.read_table(read_dir, columns=["id", "domain"])
    drawn = draw_candidates(docs["id"].to_pylist(), docs["domain"].to_pylist(),
                            math.ceil(per_domain * oversample), seed, skip_domains)
    candidate_ids = [i for ids in drawn.values() for i in ids]
    candidates = pq.read_table(read_dir, columns=POOL_COLUMNS, filters=[("id", "in", candidate_ids)])
    candidates_path = out_dir / "candidates.parquet"
    candidates_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(candidates, candidates_path)

    kept_dir = Path(run_clean(str(candidates_path), clean_dir))
    if not any(kept_dir.glob("*.parquet")):  # the clean stages kept nothing: no files to read
        raise ValueError("no held-out documents survived the clean stages: lower holdout.clean_stages' bar")
    clean = pq.read_table(kept_dir, columns=["id", "text", "domain"])
    clean_ids = set(clean["id"].to_pylist())
    eval_files, chosen = {}, []
    for domain, ids in drawn.items():
        picked = [i for i in ids if i in clean_ids][:per_domain]
        if not picked:
            continue
        order = {doc_id: k for k, doc_id in enumerate(picked)}
        table = clean.filter(pc.is_in(clean["id"], pa.array(picked)))
        table = table.take(np.argsort([order[i] for i in table["id"].to_pylist()]))
        path = out_dir / "eval" / f"{domain}.jsonl"
        write_eval_jsonl(table, path)
        eval_files[domain] = str(path)
        chosen.append(table)
    held = pa.concat_tables(chosen) if chosen else clean.slice(0, 0)
    index = HeldOutIndex(held["id"].to_pylist(), held["text"].to_pylist(), threshold, seed)

    # Every candidate leaves the pool (chosen or not: an unchosen one failed the clean filter or
    # was surplus, and the draw must not depend on what training sees).
    marked = ray.data.read_parquet(read_dir, columns=POOL_COLUMNS).map_batches(
        _MarkPool(set(candidate_ids), index), batch_format="pyarrow").materialize()
    marked.filter(expr="_pool == ''").select_columns(POOL_COLUMNS).write_parquet(pool_dir)
    removed = marked.filter(expr="_pool != ''").select_columns(["id", "domain", "_pool", "_pool_detail"])
    removed.write_parquet(str(out_dir / "removed"))
    reasons = pq.read_table(out_dir / "removed", columns=["_pool"])["_pool"].to_pylist()
    return HoldoutSplit(eval_files=eval_files, held_out_docs=held.num_rows, candidates=len(candidate_ids),
                        removed_near_duplicates=reasons.count(NEAR_HELD_OUT),
                        pool_docs=pq.ParquetDataset(pool_dir).read(columns=["id"]).num_rows, index=index)
