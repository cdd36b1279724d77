"""Near-duplicate documents: MinHash signatures, LSH banding, connected components.

    texts --map_batches--> signatures (id, sig, n_shingles[, quality])        materialised, small
      |  + signatures of earlier corpora (`dedup_against`: their OUTPUT/index/minhash)
      |--map_batches--> band rows (bucket, node)        b rows per document, no text
      |--shuffle on bucket--> members of buckets with >= 2 documents (LSH candidates)
      |--cogroup on node--> members + signature --shuffle on bucket--> verified edges
      |--large-star/small-star--> (node, root)          curation/dedup/components.py
      |--cogroup on node, shuffle on root--> one verdict per duplicate (id, reason, detail)
    full rows + verdicts (broadcast lookup, or a cogroup on id when there are many) -> output

Every step on a block is a function of curation/dedup/minhash_blocks.py (the post-training near
dedup runs the same ones); this module plans them and joins the verdicts back.

Rules:
- Candidates: two documents sharing one band key. With `verify` (default), a candidate pair
  joins a cluster only when its estimated Jaccard (share of equal signature values) reaches
  `threshold`; buckets of more than 32 documents are verified against their 8 smallest ids and
  along the id order, so a bucket of a million boilerplate pages costs linear work.
- Keeper: the document with the highest `quality_column` value when the column exists (ties:
  smallest id), else the smallest id. Others are dropped as `near_duplicate` with detail
  {cluster, kept, similarity (estimated Jaccard to the kept one), cluster_size}.
- Guard: a cluster larger than `max_cluster_size` (a chain of pairwise-similar documents can
  link unrelated ones) keeps only members whose similarity to the kept document reaches the
  threshold as duplicates; the rest are released (kept, with `released_from` in their detail)
  and the cluster is reported in stats.
- Incremental: each run writes its signatures to OUTPUT/index/minhash/ (+ minhash.json with the
  hashing parameters). Listing earlier outputs in `dedup_against` adds their signatures to the
  banding; a new document in a cluster with an earlier one is dropped as
  `duplicate_of_previous_corpus` (detail: the earlier id and corpus). Earlier corpora are never
  re-read or re-hashed. The index covers every document that reached this stage.
- Empty documents (no words) have no signature to compare and are always kept.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from contract.atomic import write_json_atomic
from contract.layout import CurationRun
from contract.stores import filesystem_for
from curation import runtime
from curation.dedup import report
from curation.dedup.components import LABEL_SCHEMA, connected_components, connected_components_local
from curation.dedup.minhash import MinHasher, Scheme, lsh_errors, optimal_bands_rows, scheme_id, signature_type
from curation.dedup.minhash_blocks import (
    MEMBER_SCHEMA,
    NEAR_DUPLICATE,
    PREV_PREFIX,
    PREVIOUS_CORPUS,
    VERDICT_SCHEMA,
    attach_members,
    attach_signatures,
    band_rows,
    candidate_members,
    decide,
    signature_rows,
    signature_schema,
    star_edges,
    verified_edges,
)
from curation.dedup.shuffle import Broadcast, arrow_schema, cogroup, lookup, map_partitions, partition_count
from curation.io.files import write_parquet
from curation.stages.base import DETAIL, KEPT, REASON, RunContext, Stage, StageParams, set_column

log = logging.getLogger(__name__)

REASONS = [NEAR_DUPLICATE, PREVIOUS_CORPUS]
# 2: the signature scheme is a parameter (rensa R-MinHash by default; 1 was datasketch only).
INDEX_VERSION = 2
# Documents per signature batch: ~3 MB of web text, so the byte passes over it stay in cache.
SIGNATURE_BATCH = 1024


class MinHashDedupParams(StageParams):
    threshold: float = Field(0.8, gt=0.0, lt=1.0)  # estimated Jaccard similarity
    num_perm: int = Field(128, ge=8, le=1024)
    ngram: int = Field(5, ge=1, le=32)  # word n-grams
    bands: int | None = Field(None, ge=1)  # with rows; default: minimise FP+FN mass (logged)
    rows: int | None = Field(None, ge=1)
    seed: int = 1  # hash seed (datasketch's default); indexes compare only under the same seed
    # rensa: R-MinHash in Rust, O(shingles) per document; datasketch: its affine32 permutations
    # (numpy), for comparing with indexes written before rensa. See curation/dedup/minhash.py.
    scheme: Scheme = "rensa"
    verify: bool = True
    max_cluster_size: int = Field(10_000, ge=2)
    quality_column: str = "quality_score"  # keeper = highest value, when the column exists
    dedup_against: list[str] = Field(default_factory=list)  # earlier run outputs
    write_index: bool = True
    partitions: int | None = Field(None, ge=1)
    broadcast_mb: float = Field(64.0, ge=0)  # verdicts up to this size join by broadcast
    # Banding, verification, components and keepers run on the driver, in one process, when
    # every signature fits in this much memory (~2M documents at 128 perms per GB); beyond it,
    # as Ray shuffles. Same verdicts either way (tested); 0 = always distributed.
    local_mb: float = Field(1024.0, ge=0)

    @model_validator(mode="after")
    def _bands_rows(self) -> "MinHashDedupParams":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


# -- the verdicts joined back to the rows (module level: Ray pickles them by reference) -------

def apply_verdicts(batch: pa.Table, verdicts: pa.Table) -> pa.Table:
    """Every row of `batch` with `_reason`/`_detail` from `verdicts` (no row there: kept)."""
    found = lookup(batch["id"], verdicts, "id")
    batch = set_column(batch, REASON, pc.fill_null(found[REASON], KEPT))
    return set_column(batch, DETAIL, pc.fill_null(found[DETAIL], "{}"))


def _apply_broadcast(batch: pa.Table, verdicts: Broadcast) -> pa.Table:
    return apply_verdicts(batch, verdicts.table())


def _apply_cogroup(rows: pa.Table, verdicts: pa.Table) -> pa.Table:
    return apply_verdicts(rows, verdicts)


# -- the index of a run's signatures ------------------------------------------------------

def index_meta(p: MinHashDedupParams, docs: int) -> dict[str, Any]:
    return {"version": INDEX_VERSION, "scheme": scheme_id(p.scheme), "num_perm": p.num_perm,
            "ngram": p.ngram, "seed": p.seed, "shingles": "words-v1", "docs": docs}


def _meta_compatible(meta: dict[str, Any], p: MinHashDedupParams) -> list[str]:
    want = index_meta(p, 0)
    if meta.get("version") == 1:  # version 1 did not name a parameter for its only scheme
        meta = {**meta, "version": INDEX_VERSION}
    return [f"{k}={meta.get(k)!r} (this run: {want[k]!r})" for k in ("version", "scheme", "num_perm", "ngram", "seed", "shingles")
            if meta.get(k) != want[k]]


def _incompatible_index(corpus: str, meta: dict[str, Any], bad: list[str]) -> str:
    hint = ""
    if str(meta.get("scheme", "")).startswith("datasketch"):
        hint = "; set `scheme: datasketch` on this stage to compare with it, or re-curate that corpus"
    elif meta.get("scheme") != scheme_id("rensa") and str(meta.get("scheme", "")).startswith("rensa"):
        hint = "; it was written by another rensa algorithm version: re-curate that corpus"
    return (f"dedup_against {corpus!r}: its MinHash index (version {meta.get('version')!r}) was made with other "
            f"hashing parameters: {', '.join(bad)}{hint}")


def _earlier_signatures(corpus: str, origin: int, p: MinHashDedupParams):
    import ray.data  # Ray Data: stages are configured without it

    fs, root = filesystem_for(corpus)
    meta_path = CurationRun(root).minhash_index_meta
    try:
        with fs.open_input_stream(meta_path) as f:
            meta = json.loads(f.read())
    except (FileNotFoundError, OSError) as e:
        raise ValueError(f"dedup_against {corpus!r}: no MinHash index ({CurationRun.MINHASH_INDEX_META}): {e}") from None
    bad = _meta_compatible(meta, p)
    if bad:
        raise ValueError(_incompatible_index(corpus, meta, bad))
    if meta["docs"] == 0:
        return None, 0
    ds = ray.data.read_parquet(CurationRun(corpus).minhash_index, columns=["id", "sig", "n_shingles"])
    prefix = f"{PREV_PREFIX}{origin}{PREV_PREFIX}"

    def as_earlier(batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        return pa.Table.from_arrays([
            pc.binary_join_element_wise(prefix, batch["id"], ""), batch["sig"].cast(signature_type(p.num_perm)),
            batch["n_shingles"].cast(pa.int32()), pa.nulls(n, pa.float64()), pa.array(np.full(n, origin, np.int16)),
        ], schema=signature_schema(p.num_perm))

    return ds.map_batches(as_earlier, batch_format="pyarrow"), meta["docs"]


def _write_index_block(batch: pa.Table, index: int, folder: str) -> None:
    if batch.num_rows:
        write_parquet(pa.table({"id": batch["node"], "sig": batch["sig"], "n_shingles": batch["n_shingles"]}),
                      f"{folder}/part-{index:05}.parquet")


# -- the stage --------------------------------------------------------------------------------

class MinHashDedup(Stage):
    name = "minhash_dedup"
    method = "MinHash + LSH"
    Params = MinHashDedupParams
    reads = ("id", "text")

    def __init__(self, params: MinHashDedupParams, ctx: RunContext):
        super().__init__(params, ctx)
        self.report: dict[str, Any] = {}

    def bands_rows(self) -> tuple[int, int]:
        p = self.params
        if p.bands is not None:
            return p.bands, p.rows
        return optimal_bands_rows(p.threshold, p.num_perm)

    def _quality_required(self) -> bool:
        # Only a column the user named must exist (a config read back from stats.json or the
        # service names every default explicitly, so compare with the default, not fields_set).
        return self.params.quality_column != type(self.params).model_fields["quality_column"].default

    def run(self, ds):
        p, ctx = self.params, self.ctx
        bands, rows = self.bands_rows()
        fp, fn = lsh_errors(p.threshold, bands, rows)
        log.info("minhash_dedup: %d bands x %d rows (threshold %.2f: FP mass %.4f, FN mass %.4f)",
                 bands, rows, p.threshold, fp, fn)
        phases: dict[str, float] = {}
        self.report = {"bands": bands, "rows": rows, "lsh_threshold": round((1 / bands) ** (1 / rows), 4),
                       "false_positive_mass": round(fp, 5), "false_negative_mass": round(fn, 5),
                       "seconds": phases}
        hasher = MinHasher(p.num_perm, p.ngram, p.seed, p.scheme)

        t = time.perf_counter()
        # The quality column is looked up per batch: asking a lazy dataset for its schema runs it.
        sigs = ds.map_batches(signature_rows, batch_format="pyarrow", batch_size=SIGNATURE_BATCH, zero_copy_batch=True,
                              fn_kwargs={"hasher": hasher, "quality": p.quality_column,
                                         "quality_required": self._quality_required()}).materialize()
        n_docs = sigs.count()
        phases["signatures"] = round(time.perf_counter() - t, 3)
        if p.write_index:
            self._write_index(sigs, n_docs)

        all_sigs, earlier_docs = sigs, 0
        for origin, corpus in enumerate(p.dedup_against):
            earlier, n = _earlier_signatures(corpus, origin, p)
            if earlier is not None:
                all_sigs, earlier_docs = all_sigs.union(earlier), earlier_docs + n
        if p.dedup_against:
            all_sigs = all_sigs.materialize()
        self.report["earlier_corpus_docs"] = earlier_docs
        n_parts = p.partitions or partition_count(ctx.num_cpus, (n_docs + earlier_docs) * bands)
        signature_mb = (n_docs + earlier_docs) * (4 * p.num_perm + 64) / 2**20
        self.report["global_step"] = "local" if signature_mb <= p.local_mb else "distributed"
        if self.report["global_step"] == "local":
            verdicts = self._global_step_local(all_sigs, bands, rows, phases)
        else:
            verdicts = self._global_step_distributed(all_sigs, bands, rows, n_parts, phases)
        self.report["guard_releases"] = _guard_report(verdicts)
        self.report["duplicates"] = int(pc.sum(pc.not_equal(verdicts[REASON], KEPT)).as_py() or 0)
        return self._join_verdicts(ds, verdicts, n_parts)

    def _global_step_local(self, all_sigs, bands: int, rows: int, phases: dict[str, float]) -> pa.Table:
        """NOTE: the distributed global step is ~7 hash shuffles, each ~1 s to start on a small
        cluster whatever the input size. In one process the same per-partition functions run
        once over everything, with an in-memory union-find for the components."""
        p = self.params
        t = time.perf_counter()
        sigs = _table_of(all_sigs, signature_schema(p.num_perm))
        members = candidate_members(band_rows(sigs, p.num_perm, bands, rows, p.seed))
        if p.verify:
            edges = verified_edges(attach_signatures(members, sigs), p.num_perm, p.threshold)
        else:
            edges = star_edges(members)
        self.report["edges"] = edges.num_rows
        phases["banding"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        labels = connected_components_local(edges)
        self.report["components_rounds"] = 0
        phases["components"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        verdicts = decide(attach_members(labels, sigs), p.num_perm, p.threshold, p.max_cluster_size,
                           list(p.dedup_against))
        phases["clusters"] = round(time.perf_counter() - t, 3)
        return verdicts

    def _global_step_distributed(self, all_sigs, bands: int, rows: int, n_parts: int,
                                 phases: dict[str, float]) -> pa.Table:
        p = self.params
        sig_schema = signature_schema(p.num_perm)
        t = time.perf_counter()
        keyed = all_sigs.map_batches(band_rows, batch_format="pyarrow",
                                     fn_kwargs={"num_perm": p.num_perm, "bands": bands, "rows": rows, "seed": p.seed})
        members = map_partitions(keyed, ["bucket"], n_parts, candidate_members)
        if p.verify:
            with_sig = cogroup(members, all_sigs, "node", n_parts, attach_signatures,
                               left_schema=MEMBER_SCHEMA, right_schema=sig_schema)
            edges = map_partitions(with_sig, ["bucket"], n_parts, verified_edges,
                                   num_perm=p.num_perm, threshold=p.threshold)
        else:
            edges = map_partitions(members, ["bucket"], n_parts, star_edges)
        edges = edges.materialize()
        self.report["edges"] = edges.count()
        phases["banding"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        labels, rounds = connected_components(edges, n_parts)
        self.report["components_rounds"] = rounds
        phases["components"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        members_full = cogroup(labels, all_sigs, "node", n_parts, attach_members,
                               left_schema=LABEL_SCHEMA, right_schema=sig_schema)
        verdicts = map_partitions(members_full, ["root"], n_parts, decide, num_perm=p.num_perm,
                                  threshold=p.threshold, max_cluster_size=p.max_cluster_size,
                                  corpora=list(p.dedup_against)).materialize()
        phases["clusters"] = round(time.perf_counter() - t, 3)
        return _table_of(verdicts, VERDICT_SCHEMA)

    def _join_verdicts(self, ds, verdicts: pa.Table, n_parts: int):
        if verdicts.nbytes / 2**20 <= self.params.broadcast_mb:
            self.report["verdict_join"] = "broadcast"
            return ds.map_batches(_apply_broadcast, batch_format="pyarrow", zero_copy_batch=True,
                                  fn_kwargs={"verdicts": Broadcast.of_table(verdicts)})
        # Many verdicts: one shuffle of the full rows (the texts move once) against them.
        import ray.data

        self.report["verdict_join"] = "cogroup"
        rows = ds.drop_columns([c for c in (REASON, DETAIL) if c in arrow_schema(ds).names])
        return cogroup(rows, ray.data.from_arrow(verdicts), "id", n_parts, _apply_cogroup,
                       left_schema=arrow_schema(rows), right_schema=VERDICT_SCHEMA)

    def _write_index(self, sigs, n_docs: int) -> None:
        fs, root = filesystem_for(self.ctx.output)
        files, index = CurationRun(root), CurationRun(self.ctx.output).minhash_index
        fs.create_dir(files.minhash_index, recursive=True)
        runtime.per_block(sigs, _write_index_block, index)
        write_json_atomic(files.minhash_index_meta, index_meta(self.params, n_docs), fs=fs)
        self.report["index"] = index

    def summarize(self, out) -> dict[str, Any]:
        clusters = report.cluster_summary(out, _cluster_rows, self.params.partitions or partition_count(self.ctx.num_cpus),
                                          rows=self.report.get("duplicates", 0))
        return {**self.report, **clusters,
                "duplicate_rate_by_domain": report.duplicate_rates(out, "domain", REASONS),
                "duplicate_rate_by_source": report.duplicate_rates(out, "source", REASONS),
                "memory": report.peak_memory_mb()}


def _guard_report(verdicts: pa.Table) -> list[dict[str, Any]]:
    per_cluster: dict[str, dict[str, Any]] = {}
    for detail in verdicts.filter(pc.equal(verdicts[REASON], KEPT))[DETAIL].to_pylist():
        d = json.loads(detail)
        c = per_cluster.setdefault(d["released_from"], {"cluster": d["released_from"], "size": d["cluster_size"],
                                                        "released": 0})
        c["released"] += 1
    return sorted(per_cluster.values(), key=lambda c: (-c["size"], c["cluster"]))


def _table_of(ds, schema: pa.Schema) -> pa.Table:
    """A materialized dataset as one table on the driver (small ones only)."""
    import ray  # Ray: stages are configured without it

    tables = [t for t in ray.get(runtime.block_refs(ds)) if t.num_rows]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="permissive").cast(schema).combine_chunks()


def _cluster_rows(batch: pa.Table) -> pa.Table:
    batch = report.dropped_rows(batch, REASONS)
    details = [json.loads(d) for d in batch[DETAIL].to_pylist()]
    return pa.table({"cluster": [d["cluster"] for d in details], "kept": [d["kept"] for d in details],
                     "id": batch["id"]})
