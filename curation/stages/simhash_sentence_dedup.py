"""Repeated sentences: SimHash per sentence, permuted-block buckets, first occurrence kept.

    texts --map_batches--> sentence rows (block, value, doc, idx, hash)   k+1 rows a sentence, no text
      |--shuffle on (block, value)--> sentences with an earlier one within Hamming distance k
      |--shuffle on doc--> per document: removed sentence indices (+ the earlier sentence each repeats)
    full rows + removals (broadcast lookup, or a cogroup on id when there are many) -> rewritten rows

Rules:
- Sentences come from `curation.dedup.sentences.split_sentences` (abbreviations, decimals,
  code lines, CJK enders); each gets a 64-bit SimHash over its word n-grams (`ngram`, default
  bigrams; words normalised as for MinHash).
- Order is (document id, sentence index). A sentence is removed when an *earlier* sentence is
  within Hamming distance `k`, whether that earlier one was itself removed or not ("seen
  earlier in the corpus"). This pairwise rule needs no sequential pass, so every bucket is
  judged independently and the result does not depend on partitioning or block order.
- Sentences under `min_sentence_words` words are never indexed: never removed, never the
  reason for a removal ("Thanks.", list items, code punctuation).
- A document loses its repeated sentences (and the spaces after them; a line left empty goes
  too) and its `n_tokens` is recounted. Its `_detail` says what went: counts of sentences,
  words and UTF-8 bytes, and `removed: [[index, earlier doc, earlier index], ...]`.
- A document whose remaining text is under `min_chars` characters is dropped with reason
  `sentence_dedup_emptied` (its original text goes to rejects). Documents with nothing
  removed are never dropped, however short.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curation import runtime
from curation.dedup import report
from curation.dedup.sentences import split_sentences
from curation.dedup.shuffle import Broadcast, arrow_schema, cogroup, lookup, map_partitions, partition_count, runs
from curation.dedup.simhash_index import block_values, repeats_in_partition, sentence_simhashes
from curation.stages.base import DETAIL, KEPT, REASON, Stage, StageParams, count_words, set_column

EMPTIED = "sentence_dedup_emptied"


class SimHashSentenceDedupParams(StageParams):
    k: int = Field(3, ge=0, le=16)  # Hamming distance (bits of 64)
    ngram: int = Field(2, ge=1, le=8)  # word n-grams as SimHash features
    min_sentence_words: int = Field(5, ge=1)
    min_chars: int = Field(50, ge=0)
    seed: int = 1
    partitions: int | None = Field(None, ge=1)
    broadcast_mb: float = Field(64.0, ge=0)


_SENTENCE_SCHEMA = pa.schema([pa.field("block", pa.int8()), pa.field("value", pa.uint64()), pa.field("doc", pa.string()),
                              pa.field("idx", pa.int32()), pa.field("hash", pa.uint64())])
REMOVALS_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("removed", pa.list_(pa.int32())),
                             pa.field("by_doc", pa.list_(pa.string())), pa.field("by_idx", pa.list_(pa.int32()))])


def _sentence_rows(batch: pa.Table, k: int, ngram: int, seed: int, min_words: int) -> pa.Table:
    owners, indices, sentences = [], [], []
    for row, text in enumerate(batch["text"].to_pylist()):
        spans = split_sentences(text or "")
        owners.extend([row] * len(spans))
        indices.extend(range(len(spans)))
        sentences.extend(text[a:b] for a, b in spans)
    fp, n_words = sentence_simhashes(pa.array(sentences, pa.string()), ngram, seed)
    keep = np.flatnonzero(n_words >= min_words)
    fp = fp[keep]
    blocks = block_values(fp, k)  # [n, k+1]
    reps = k + 1
    doc = batch["id"].take(pa.array(np.repeat(np.asarray(owners, np.int64)[keep], reps)))
    return pa.Table.from_arrays([
        pa.array(np.tile(np.arange(reps, dtype=np.int8), len(keep))),
        pa.array(blocks.reshape(-1)),
        doc,
        pa.array(np.repeat(np.asarray(indices, np.int32)[keep], reps)),
        pa.array(np.repeat(fp, reps)),
    ], schema=_SENTENCE_SCHEMA)


def _per_document(part: pa.Table) -> pa.Table:
    """One row per document: its removed sentence indices, each with the smallest earlier
    sentence that repeats it (a sentence can be found in several buckets)."""
    if part.num_rows == 0:
        return REMOVALS_SCHEMA.empty_table()
    part = part.sort_by([("doc", "ascending"), ("idx", "ascending"), ("by_doc", "ascending"), ("by_idx", "ascending")])
    starts, _ = runs(np.asarray(part["doc"].to_pylist(), dtype=object), part["idx"].to_numpy())
    part = part.take(pa.array(starts))  # first (smallest) earlier sentence per removed sentence
    docs = part["doc"].to_pylist()
    d_starts, d_lengths = runs(np.asarray(docs, dtype=object))
    offsets = pa.array(np.r_[d_starts, part.num_rows].astype(np.int32))
    return pa.Table.from_arrays([
        pa.array([docs[s] for s in d_starts], pa.string()),
        pa.ListArray.from_arrays(offsets, part["idx"].combine_chunks()),
        pa.ListArray.from_arrays(offsets, part["by_doc"].combine_chunks()),
        pa.ListArray.from_arrays(offsets, part["by_idx"].combine_chunks()),
    ], schema=REMOVALS_SCHEMA)


def remove_sentences(text: str, removed: set[int]) -> tuple[str, list[str]]:
    """(text without the sentences whose index is in `removed`, the removed sentences).
    Sentences never cross lines; a line left with only spaces is dropped with its newline."""
    spans = split_sentences(text)
    cut: dict[int, list[tuple[int, int]]] = {}
    gone = []
    for i, (a, b) in enumerate(spans):
        if i in removed:
            gone.append(text[a:b])
            line_start = text.rfind("\n", 0, a) + 1
            cut.setdefault(line_start, []).append((a, b))
    if not cut:
        return text, gone
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        end = pos + len(line)
        spans_here = cut.get(pos)
        if spans_here:
            pieces, at = [], pos
            for a, b in spans_here:
                pieces.append(text[at:a])
                at = b
                while at < end and text[at] in " \t":  # the spaces that followed the sentence
                    at += 1
            pieces.append(text[at:end])
            new_line = "".join(pieces)
            body = new_line.rstrip("\r\n")
            if body.strip():
                out.append(body.rstrip(" \t") + new_line[len(body):])
        else:
            out.append(line)
        pos = end
    new = "".join(out)
    if not text.endswith("\n") and new.endswith("\n"):  # the last line went: drop its separator too
        new = new[:-2] if new.endswith("\r\n") else new[:-1]
    return new, gone


def apply_removals(batch: pa.Table, removals: pa.Table, min_chars: int) -> pa.Table:
    """Every row of `batch`, with repeated sentences cut out and its verdict set."""
    found = lookup(batch["id"], removals, "id")
    hit = np.flatnonzero(found["removed"].is_valid().to_numpy(zero_copy_only=False))
    n = batch.num_rows
    reasons = [KEPT] * n
    details = ["{}"] * n
    if len(hit) == 0:
        batch = set_column(batch, REASON, pa.array(reasons, pa.string()))
        return set_column(batch, DETAIL, pa.array(details, pa.string()))
    texts = batch["text"].take(pa.array(hit)).to_pylist()
    removed = found["removed"].take(pa.array(hit)).to_pylist()
    by_doc = found["by_doc"].take(pa.array(hit)).to_pylist()
    by_idx = found["by_idx"].take(pa.array(hit)).to_pylist()
    new_texts = []
    mask = np.zeros(n, bool)
    for j, row in enumerate(hit.tolist()):
        new_text, gone = remove_sentences(texts[j], set(removed[j]))
        detail = {"removed_sentences": len(gone), "removed_words": sum(len(s.split()) for s in gone),
                  "removed_bytes": sum(len(s.encode()) for s in gone),
                  "removed": [[i, d, x] for i, d, x in zip(removed[j], by_doc[j], by_idx[j])]}
        details[row] = json.dumps(detail, sort_keys=True)
        if len(new_text.strip()) < min_chars:
            reasons[row] = EMPTIED  # the original text stays, for the rejects
            continue
        mask[row] = True
        new_texts.append(new_text)
    if new_texts:
        text = pc.replace_with_mask(batch["text"].combine_chunks(), pa.array(mask), pa.array(new_texts, pa.string()))
        batch = set_column(batch, "text", text)
        batch = set_column(batch, "n_tokens", pc.if_else(pa.array(mask), count_words(text), batch["n_tokens"]))
    batch = set_column(batch, REASON, pa.array(reasons, pa.string()))
    return set_column(batch, DETAIL, pa.array(details, pa.string()))


def _apply_broadcast(batch: pa.Table, removals: Broadcast, min_chars: int) -> pa.Table:
    return apply_removals(batch, removals.table(), min_chars)


def _apply_cogroup(rows: pa.Table, removals: pa.Table, min_chars: int) -> pa.Table:
    return apply_removals(rows, removals, min_chars)


_PARTIALS = ["docs", "docs_changed", "docs_emptied", "sentences", "words", "bytes", "kept_words"]


def _removal_partials(batch: pa.Table) -> pa.Table:
    """Per block and (domain, source): documents, changed and emptied documents, removed
    sentences/words/bytes, and words kept. Only changed rows have their detail parsed."""
    n = batch.num_rows
    changed = pc.not_equal(batch[DETAIL], "{}").to_numpy(zero_copy_only=False)
    removed = np.zeros((3, n), np.int64)
    rows = np.flatnonzero(changed)
    for i, det in zip(rows.tolist(), batch[DETAIL].take(pa.array(rows)).to_pylist()):
        x = json.loads(det)
        removed[:, i] = (x["removed_sentences"], x["removed_words"], x["removed_bytes"])
    kept = pc.equal(batch[REASON], KEPT)
    per_row = pa.table({
        "domain": pc.fill_null(batch["domain"], ""), "source": pc.fill_null(batch["source"], ""),
        "docs": np.ones(n, np.int64), "docs_changed": changed.astype(np.int64),
        "docs_emptied": pc.equal(batch[REASON], EMPTIED).cast(pa.int64()),
        "sentences": removed[0], "words": removed[1], "bytes": removed[2],
        "kept_words": pc.if_else(kept, batch["n_tokens"], 0).cast(pa.int64()),
    })
    g = per_row.group_by(["domain", "source"]).aggregate([(c, "sum") for c in _PARTIALS])
    return g.rename_columns([c.removesuffix("_sum") for c in g.column_names])


def _sentence_cluster_rows(batch: pa.Table) -> pa.Table:
    """(cluster = the earlier sentence, its document, the repeating document) per removal."""
    changed = batch.filter(pc.not_equal(batch[DETAIL], "{}"))
    cluster, kept, ids = [], [], []
    for doc, det in zip(changed["id"].to_pylist(), changed[DETAIL].to_pylist()):
        for _, by_doc, by_idx in json.loads(det)["removed"]:
            cluster.append(f"{by_doc}#{by_idx}")
            kept.append(by_doc)
            ids.append(doc)
    return pa.table({"cluster": pa.array(cluster, pa.string()), "kept": pa.array(kept, pa.string()),
                     "id": pa.array(ids, pa.string())})


class SimHashSentenceDedup(Stage):
    name = "simhash_sentence_dedup"
    method = "SimHash (sentences)"
    Params = SimHashSentenceDedupParams
    reads = ("id", "text")
    writes = ("text", "n_tokens")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.report: dict[str, Any] = {}

    def run(self, ds):
        p, ctx = self.params, self.ctx
        phases: dict[str, float] = {}
        self.report = {"seconds": phases}

        t = time.perf_counter()
        sentence_rows = ds.select_columns(["id", "text"]).map_batches(
            _sentence_rows, batch_format="pyarrow", batch_size=512,
            fn_kwargs={"k": p.k, "ngram": p.ngram, "seed": p.seed, "min_words": p.min_sentence_words}).materialize()
        rows = sentence_rows.count()
        self.report["indexed_sentences"] = rows // (p.k + 1)
        n_parts = p.partitions or partition_count(ctx.num_cpus, rows)
        repeats = map_partitions(sentence_rows, ["block", "value"], n_parts, repeats_in_partition, k=p.k)
        removals = map_partitions(repeats, ["doc"], n_parts, _per_document).materialize()
        phases["sentences_and_buckets"] = round(time.perf_counter() - t, 3)
        self.report["docs_with_repeats"] = removals.count()

        if removals.size_bytes() / 2**20 <= p.broadcast_mb:
            self.report["removal_join"] = "broadcast"
            return ds.map_batches(_apply_broadcast, batch_format="pyarrow", zero_copy_batch=True,
                                  fn_kwargs={"removals": Broadcast(removals, REMOVALS_SCHEMA), "min_chars": p.min_chars})
        self.report["removal_join"] = "cogroup"
        # Many documents changed: one shuffle of the full rows (the texts move once) against them.
        full = ds.drop_columns([c for c in (REASON, DETAIL) if c in arrow_schema(ds).names])
        return cogroup(full, removals, "id", n_parts, _apply_cogroup, left_schema=arrow_schema(full),
                       right_schema=REMOVALS_SCHEMA, min_chars=p.min_chars)

    def summarize(self, out) -> dict[str, Any]:
        totals: dict[str, int] = {}
        by_domain: dict[str, list[int]] = {}
        by_source: dict[str, list[int]] = {}
        partials = runtime.per_block(out, lambda block, _: _removal_partials(block) if block.num_rows else pa.table({}))
        for r in (row for t in partials for row in t.to_pylist()):
            for name in ("docs", "docs_changed", "docs_emptied", "sentences", "words", "bytes"):
                totals[name] = totals.get(name, 0) + r[name]
            for table, key in ((by_domain, r["domain"]), (by_source, r["source"])):
                acc = table.setdefault(key, [0, 0, 0])
                acc[0] += r["docs"]
                acc[1] += r["words"]
                acc[2] += r["kept_words"]
        n_parts = self.params.partitions or partition_count(self.ctx.num_cpus, self.report.get("indexed_sentences", 0))
        clusters = report.cluster_summary(out, _sentence_cluster_rows, n_parts, rows=totals.get("sentences", 0))

        def rates(table: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
            # Duplicate rate here: the share of words removed as repeated sentences.
            return {k: {"docs": d, "removed_words": w,
                        "rate": round(w / (w + kept), 6) if (w + kept) else 0.0}
                    for k, (d, w, kept) in sorted(table.items())}

        return {**self.report,
                "docs_changed": totals.get("docs_changed", 0), "docs_emptied": totals.get("docs_emptied", 0),
                "removed_sentences": totals.get("sentences", 0), "removed_words": totals.get("words", 0),
                "removed_bytes": totals.get("bytes", 0),
                **clusters,
                "duplicate_rate_by_domain": rates(by_domain), "duplicate_rate_by_source": rates(by_source),
                "memory": report.peak_memory_mb()}
