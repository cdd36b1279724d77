"""Held-out evaluation sets that no training set comes near.

    raw corpus --read--> every document (ids unique)
        per domain: candidates = the docs_per_domain x oversample smallest hash(seed, id)
        candidates --clean stages--> the first docs_per_domain kept, in hash order --> eval/<domain>.jsonl
        the rest --minus candidates, minus near-duplicates of any eval doc--> the training pool

A domain with a separate source (`sources={domain: FILE|URI}`) draws its candidates the same way
from that source's documents instead (read by the curation read stage: every input format,
malformed lines rejected with reasons; ids prefixed `holdout:<domain>:` so they never meet a
corpus id). The corpus's documents of that domain are then all training pool, except
near-duplicates of a held-out document, which leave it exactly as above.

"Near-duplicate" is a word-5-gram Jaccard at or above the threshold (0.5 by default, looser than
dedup's 0.8), computed exactly on candidate pairs that MinHash-LSH finds. Every variant trains on
a curated subset of the pool, so none can have seen its test answers; `count_leaks` re-checks a
variant's kept documents all the same (curation edits texts: PII placeholders, dropped sentences).
The LSH bands favour recall (false-negative weight 0.9): a missed pair is a leak, a false
candidate only costs one exact Jaccard.

The "novel" sets (novel/<domain>.jsonl) are the held-out documents without the lines that occur
more than `novel_max_line_count` times in the raw corpus (licence headers, banners, shared
boilerplate): a model that memorised those gains nothing there.
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
from curation.dedup.similarity import jaccard, normalise_line, word_ngrams

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


# ----------------------------------------------------------------------------- the novel measure

def line_key(normalised: str) -> bytes:
    """8 bytes of blake2b: stable across processes (Python's hash() is salted per process)."""
    return hashlib.blake2b(normalised.encode(), digest_size=8).digest()


class _CountLines:
    """Map step over the corpus texts: how often each of `keys` (held-out lines) occurs in the batch.
    Only held-out lines are counted, so a batch's answer is at most len(keys) rows."""

    def __init__(self, keys: set[bytes]):
        self.keys = keys

    def __call__(self, batch: pa.Table) -> pa.Table:
        counts: dict[bytes, int] = defaultdict(int)
        for text in batch["text"].to_pylist():
            for line in text.split("\n"):
                norm = normalise_line(line)
                if norm and (key := line_key(norm)) in self.keys:
                    counts[key] += 1
        return pa.table({"key": pa.array(list(counts), pa.binary(8)), "n": pa.array(list(counts.values()), pa.int64())})


def corpus_line_counts(ds: ray.data.Dataset, keys: set[bytes]) -> dict[bytes, int]:
    """Occurrences in `ds` of every line key in `keys` (one Ray Data pass; the driver sums the
    per-batch partial counts, which are bounded by len(keys) rows each)."""
    totals: dict[bytes, int] = dict.fromkeys(keys, 0)
    if not keys:
        return totals
    parts = ds.select_columns(["text"]).map_batches(_CountLines(keys), batch_format="pyarrow")
    for batch in parts.iter_batches(batch_format="pyarrow", batch_size=None):
        for key, n in zip(batch["key"].to_pylist(), batch["n"].to_pylist(), strict=True):
            totals[key] += n
    return totals


def drop_frequent_lines(text: str, counts: dict[bytes, int], max_count: int) -> tuple[str, int, int]:
    """(text without the lines seen more than `max_count` times, lines removed, bytes removed).
    Blank lines stay (paragraph separators) and are never counted; a text left with only blank
    lines comes back as "" (all its bytes removed)."""
    kept, removed = [], 0
    for line in text.split("\n"):
        norm = normalise_line(line)
        if norm and counts.get(line_key(norm), 0) > max_count:
            removed += 1
        else:
            kept.append(line)
    left = "\n".join(kept) if removed else text
    left = left if left.strip() else ""
    return left, removed, len(text.encode()) - len(left.encode())


def write_novel_sets(held: pa.Table, corpus: ray.data.Dataset, max_count: int,
                     out_dir: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """novel/<domain>.jsonl for every domain of `held` (in its row order) and, per domain, how
    much was removed: {domain: {docs, docs_omitted, lines, lines_removed, bytes, bytes_removed}}."""
    rows = held.select(["id", "text", "domain"]).to_pylist()
    keys = {line_key(n) for r in rows for line in r["text"].split("\n") if (n := normalise_line(line))}
    counts = corpus_line_counts(corpus, keys)
    by_domain: dict[str, list[dict]] = defaultdict(list)
    removed: dict[str, dict[str, int]] = {}
    for r in rows:
        text, n_lines, n_bytes = drop_frequent_lines(r["text"], counts, max_count)
        tally = removed.setdefault(r["domain"], dict.fromkeys(
            ("docs", "docs_omitted", "lines", "lines_removed", "bytes", "bytes_removed"), 0))
        tally["lines"] += sum(1 for line in r["text"].split("\n") if line.strip())
        tally["bytes"] += len(r["text"].encode())
        tally["lines_removed"] += n_lines
        tally["bytes_removed"] += n_bytes
        if text:
            tally["docs"] += 1
            by_domain[r["domain"]].append({**r, "text": text})
        else:
            tally["docs_omitted"] += 1
    files = {}
    for domain, docs in sorted(by_domain.items()):
        path = out_dir / "novel" / f"{domain}.jsonl"
        write_eval_jsonl(pa.Table.from_pylist(docs), path)
        files[domain] = str(path)
    return files, removed


# ----------------------------------------------------------------------------- the split

SOURCE_ID_PREFIX = "holdout:"


def source_doc_id(domain: str, doc_id: str) -> str:
    """A held-out source document's id: never a corpus id (split_holdout rejects corpora that use the prefix)."""
    return f"{SOURCE_ID_PREFIX}{domain}:{doc_id}"


@dataclass
class HoldoutSplit:
    eval_files: dict[str, str]  # domain -> held-out JSONL
    held_out_docs: int
    candidates: int
    removed_near_duplicates: int
    pool_docs: int
    index: HeldOutIndex
    novel_eval_files: dict[str, str]  # domain -> the held-out JSONL without frequent lines
    novel_removed: dict[str, dict[str, int]]  # domain -> docs/lines/bytes kept and removed (write_novel_sets)
    sources: dict[str, str]  # domain -> "corpus" or the separate source as given
    source_domains_not_in_corpus: list[str]  # evaluated all the same: the model never trains on them


def write_eval_jsonl(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in table.select(["id", "text", "domain"]).to_pylist():
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _source_candidates(sources: dict[str, str], run_read, read_root: Path, n: int, seed: int,
                       schema: pa.Schema) -> tuple[pa.Table, dict[str, list[str]]]:
    """Every source read (curation read stage), its ids prefixed and domain set; the first `n`
    of each in the seeded draw."""
    tables, drawn = [], {}
    for domain, source in sorted(sources.items()):
        data_dir = Path(run_read(source, domain, str(read_root / domain)))
        if not any(data_dir.glob("*.parquet")):
            raise ValueError(f"holdout.sources.{domain}: {source} has no readable documents")
        docs = pq.read_table(data_dir, columns=POOL_COLUMNS)
        ids = [source_doc_id(domain, i) for i in docs["id"].to_pylist()]
        docs = docs.set_column(0, "id", pa.array(ids, pa.string())).set_column(
            3, "domain", pa.array([domain] * docs.num_rows, pa.string()))
        drawn[domain] = sorted(ids, key=lambda i: holdout_rank(seed, i))[:n]
        tables.append(docs.filter(pc.is_in(docs["id"], pa.array(drawn[domain], pa.string()))).cast(schema))
    return pa.concat_tables(tables), drawn


def split_holdout(read_dir: str, clean_dir: str, out_dir: Path, pool_dir: str, *, per_domain: int,
                  oversample: float, threshold: float, seed: int, skip_domains: set[str], run_clean,
                  sources: dict[str, str] | None = None, run_read=None, novel_max_line_count: int = 2) -> HoldoutSplit:
    """Draw, clean and write the held-out sets (eval/ and novel/); write the training pool
    (Parquet) and the removed documents with their reasons (out_dir/removed/).
    `run_clean(candidates_parquet, clean_dir)` curates the candidates and returns the kept
    documents' folder; `run_read(source, domain, dst)` reads a held-out source with the curation
    read stage (no other stages) and returns its documents' folder (needed when `sources` is given)."""
    import ray.data  # Ray Data: held-out sets are configured without it

    sources = dict(sources or {})
    if sources and run_read is None:
        raise ValueError("split_holdout: held-out sources need run_read")
    docs = pq.read_table(read_dir, columns=["id", "domain"])
    corpus_ids = docs["id"].to_pylist()
    clash = next((i for i in corpus_ids if i.startswith(SOURCE_ID_PREFIX)), None) if sources else None
    if clash is not None:
        raise ValueError(f"corpus id {clash!r} starts with {SOURCE_ID_PREFIX!r}, the prefix of held-out source ids")
    n = math.ceil(per_domain * oversample)
    drawn = draw_candidates(corpus_ids, docs["domain"].to_pylist(), n, seed, skip_domains | set(sources))
    candidate_ids = [i for ids in drawn.values() for i in ids]  # corpus documents only
    # A typed array: with every domain held out from a source the list is empty, and an untyped
    # empty list is a null-typed filter that pyarrow refuses against the string column.
    candidates = pq.read_table(read_dir, columns=POOL_COLUMNS,
                               filters=pc.field("id").isin(pa.array(candidate_ids, pa.string())))
    if sources:
        from_sources, drawn_sources = _source_candidates(sources, run_read, out_dir / "sources", n, seed,
                                                         candidates.schema)
        candidates = pa.concat_tables([candidates, from_sources])
        drawn = dict(sorted({**drawn, **drawn_sources}.items()))
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
    corpus = ray.data.read_parquet(read_dir, columns=POOL_COLUMNS)
    marked = corpus.map_batches(_MarkPool(set(candidate_ids), index), batch_format="pyarrow").materialize()
    marked.filter(expr="_pool == ''").select_columns(POOL_COLUMNS).write_parquet(pool_dir)
    removed = marked.filter(expr="_pool != ''").select_columns(["id", "domain", "_pool", "_pool_detail"])
    removed.write_parquet(str(out_dir / "removed"))
    # Ray Data writes no file for no rows: with every domain from a source and no near-copy in
    # the corpus, nothing is removed and the folder is never made.
    removed_files = sorted((out_dir / "removed").glob("*.parquet"))
    reasons = pq.read_table(removed_files, columns=["_pool"])["_pool"].to_pylist() if removed_files else []
    novel_files, novel_removed = write_novel_sets(held, corpus, novel_max_line_count, out_dir)
    corpus_domains = set(docs["domain"].to_pylist())
    return HoldoutSplit(eval_files=eval_files, held_out_docs=held.num_rows, candidates=candidates.num_rows,
                        removed_near_duplicates=reasons.count(NEAR_HELD_OUT),
                        pool_docs=pq.ParquetDataset(pool_dir).read(columns=["id"]).num_rows, index=index,
                        novel_eval_files=novel_files, novel_removed=novel_removed,
                        sources={d: sources.get(d, "corpus") for d in eval_files},
                        source_domains_not_in_corpus=sorted(set(sources) - corpus_domains))
