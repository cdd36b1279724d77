"""minhash_dedup: datasketch-equal signatures, LSH parameters, distributed components, and the
stage end to end on Ray (cross-block pairs, the cluster guard, incremental dedup, determinism,
precision/recall on a labelled set built from real text)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.dedup import evaluate
from curation.dedup.minhash import MinHasher, band_keys, jaccard, optimal_bands_rows
from curation.stages.base import DETAIL, REASON, RunContext
from curation.stages.minhash_dedup import (NEAR_DUPLICATE, PREVIOUS_CORPUS, MinHashDedup,
                                           MinHashDedupParams)


def given_texts(min_words: int = 80, max_words: int = 250) -> list[str]:
    """Real prose available offline: the Python reference topics, cut at blank lines into
    documents of `min_words`..`max_words` words."""
    import pydoc_data.topics as topics

    docs = []
    for name in sorted(topics.topics):
        chunk: list[str] = []
        for para in topics.topics[name].split("\n\n"):
            chunk.append(para)
            words = sum(len(p.split()) for p in chunk)
            if words >= max_words or (words >= min_words and len(chunk) >= 3):
                docs.append("\n\n".join(chunk))
                chunk = []
    return docs


def as_blocks(table: pa.Table, n_blocks: int):
    import ray.data

    step = -(-table.num_rows // n_blocks)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])


def run_stage(ds, out_dir: Path, **params):
    stage = MinHashDedup(MinHashDedupParams(**params), RunContext(seed=0, output=str(out_dir), num_cpus=2))
    out = stage.run(ds).materialize()
    return stage, out, to_table(out)


def to_table(ds) -> pa.Table:
    import ray

    return pa.concat_tables([t for t in ray.get(ds.to_arrow_refs()) if t.num_rows])


# -- no Ray ----------------------------------------------------------------------------------

def test_signatures_equal_datasketch():
    from datasketch import LeanMinHash, MinHash

    texts = pa.array(["the quick brown fox jumps over the lazy dog " * 3, "a b c", "", "日本語のテキストです。"])
    hasher = MinHasher(num_perm=64, ngram=3, seed=7, scheme="datasketch")
    sig, n_shingles = hasher.signatures(texts)
    h, owner = hasher.shingle_hashes(texts)
    for i in range(len(texts)):
        m = MinHash(num_perm=64, seed=7, hashfunc=int)
        m.update_batch(h[owner == i].tolist())
        assert np.array_equal(m.hashvalues, sig[i])
    assert n_shingles.tolist()[2] == 0 and n_shingles[3] > 1  # CJK characters are words
    a = LeanMinHash(seed=7, hashvalues=sig[0], scheme="affine32")
    b = LeanMinHash(seed=7, hashvalues=sig[1], scheme="affine32")
    assert a.jaccard(b) == pytest.approx(float(jaccard(sig[0], sig[1])))


def test_band_choice_matches_datasketch_and_keys_separate_bands():
    from datasketch.lsh import _optimal_param

    for t in (0.5, 0.7, 0.8, 0.9):
        assert optimal_bands_rows(t, 128) == _optimal_param(t, 128, 0.5, 0.5)
    sig = np.zeros((2, 12), np.uint32)  # all bands equal in value, but keys differ per band
    keys = band_keys(sig, 3, 4, seed=1)
    assert len(set(keys[0].tolist())) == 3 and np.array_equal(keys[0], keys[1])


def test_params_are_checked():
    with pytest.raises(ValueError):
        MinHashDedupParams(bands=4)
    with pytest.raises(ValueError):
        MinHashDedupParams(bands=20, rows=10, num_perm=128)
    with pytest.raises(ValueError):
        MinHashDedupParams(thresh=0.5)


# -- Ray -------------------------------------------------------------------------------------

def test_connected_components_match_networkx(ray_local):
    import networkx as nx

    from curation.dedup.components import connected_components, connected_components_local

    rng = random.Random(3)
    edges = [(f"n{rng.randrange(600):04d}", f"n{rng.randrange(600):04d}") for _ in range(300)]
    edges += [(f"p{i:03d}", f"p{i + 1:03d}") for i in range(20)]  # a path
    table = pa.table({"u": [a for a, _ in edges], "v": [b for _, b in edges]})
    labels, rounds = connected_components(as_blocks(table, 4), num_partitions=3)
    got = {r["node"]: r["root"] for r in labels.take_all()}
    graph = nx.Graph(edges)
    want = {n: min(c) for c in nx.connected_components(graph) for n in c}
    assert got == want and rounds > 1
    local = connected_components_local(table)
    assert dict(zip(local["node"].to_pylist(), local["root"].to_pylist())) == want


def chain_documents(n: int, length: int = 100, step: int = 3, seed: int = 5,
                    prefix: str = "chain") -> tuple[list[str], list[str]]:
    """Windows over one long sequence of distinct words: neighbours are near-duplicates
    (5-gram Jaccard ~0.94) but the ends are not, so they chain into one large cluster."""
    words = [f"{prefix}word{i}" for i in range(length + step * n)]
    random.Random(seed).shuffle(words)
    return [f"{prefix}-{i:03d}" for i in range(n)], [" ".join(words[i * step:i * step + length]) for i in range(n)]


@pytest.fixture(scope="module")
def labelled(ray_local):
    truth = evaluate.build_document_set(given_texts(), seed=11, per_level=30, topic_pairs=20)
    chain_ids, chain_texts = chain_documents(12)
    chain = evaluate.documents_table(chain_ids, chain_texts)
    # One exact pair planted in the first and the last block of the input.
    _, pair_text = chain_documents(1, prefix="pair")
    pair = evaluate.documents_table(["pair-a", "pair-b"], pair_text * 2)
    table = pa.concat_tables([pair.slice(0, 1), truth.table, chain, pair.slice(1, 1)])
    return truth, table


@pytest.fixture(scope="module")
def first_run(labelled, tmp_path_factory):
    truth, table = labelled
    out_dir = tmp_path_factory.mktemp("run1")
    stage, _, out = run_stage(as_blocks(table, 5), out_dir, max_cluster_size=5)
    return stage, out, out_dir


def test_every_row_once_and_pair_across_blocks(labelled, first_run):
    _, table = labelled
    _, out, _ = first_run
    assert sorted(out["id"].to_pylist()) == sorted(table["id"].to_pylist())
    verdicts = dict(zip(out["id"].to_pylist(), zip(out[REASON].to_pylist(), out[DETAIL].to_pylist())))
    assert verdicts["pair-a"][0] == ""
    assert verdicts["pair-b"][0] == NEAR_DUPLICATE
    assert json.loads(verdicts["pair-b"][1])["kept"] == "pair-a"
    assert json.loads(verdicts["pair-b"][1])["similarity"] == 1.0


def test_precision_recall_on_labelled_set(labelled, first_run):
    truth, _ = labelled
    _, out, _ = first_run
    ids = set(truth.group)
    mine = out.filter(pa.array([i in ids for i in out["id"].to_pylist()]))
    scores = evaluate.score_documents(mine, truth)
    assert scores["precision"] >= 0.95, scores
    assert scores["recall"] >= 0.85, scores
    assert scores["found_by_level"]["exact"] == 1.0
    assert scores["found_by_level"]["heavy"] <= 0.05 and scores["found_by_level"]["topic"] == 0.0


def test_giant_cluster_guard_splits_and_reports(first_run):
    stage, out, _ = first_run
    rows = [(i, r, json.loads(d)) for i, r, d in zip(out["id"].to_pylist(), out[REASON].to_pylist(),
                                                    out[DETAIL].to_pylist()) if i.startswith("chain-")]
    dropped = [d for _, r, d in rows if r == NEAR_DUPLICATE]
    released = [d for _, r, d in rows if r == "" and "released_from" in d]
    assert all(d["kept"] == "chain-000" and d["similarity"] >= 0.8 for d in dropped)
    assert all(d["similarity"] < 0.8 and d["cluster_size"] == 12 for d in released)
    assert len(released) >= 6 and len(dropped) + len(released) == 11
    report = stage.report["guard_releases"]
    assert report == [{"cluster": "chain-000", "size": 12, "released": len(released)}]


def test_summary(first_run, ray_local):
    stage, _, _ = first_run
    import ray.data

    _, out, _ = first_run
    summary = stage.summarize(ray.data.from_arrow(out))
    assert summary["duplicate_clusters"] >= 30
    assert sum(summary["cluster_size_histogram"].values()) == summary["duplicate_clusters"]
    top = summary["largest_clusters"]
    assert len(top) == 20 and top[0]["size"] >= top[-1]["size"] and len(top[0]["sample_ids"]) == 2
    assert summary["duplicate_rate_by_domain"]["web"]["duplicates"] == int(np.sum(np.array(out[REASON].to_pylist()) != ""))
    assert set(summary["duplicate_rate_by_source"]) == {f"eval-{i}.jsonl" for i in range(4)}
    assert summary["bands"] * summary["rows"] <= 128 and summary["memory"]["driver_peak_rss_mb"] > 0


def test_deterministic_across_runs_and_blockings(labelled, first_run, tmp_path):
    _, table = labelled
    _, out1, _ = first_run
    # The second run also joins its verdicts by the cogroup shuffle instead of the broadcast.
    stage, _, out2 = run_stage(as_blocks(table, 3), tmp_path, max_cluster_size=5, broadcast_mb=0)
    assert stage.report["verdict_join"] == "cogroup"
    key = lambda t: sorted(zip(t["id"].to_pylist(), t[REASON].to_pylist(), t[DETAIL].to_pylist()))  # noqa: E731
    assert key(out1) == key(out2)


def test_the_global_step_on_the_driver_and_as_ray_shuffles_agree(labelled, first_run, tmp_path):
    _, table = labelled
    local, out1, _ = first_run
    shuffled, _, out2 = run_stage(as_blocks(table, 4), tmp_path, max_cluster_size=5, local_mb=0)
    assert (local.report["global_step"], shuffled.report["global_step"]) == ("local", "distributed")
    key = lambda t: sorted(zip(t["id"].to_pylist(), t[REASON].to_pylist(), t[DETAIL].to_pylist()))  # noqa: E731
    assert key(out1) == key(out2)
    for k in ("edges", "guard_releases", "duplicates"):
        assert local.report[k] == shuffled.report[k], k


def test_incremental_dedup_against_earlier_run(labelled, first_run, tmp_path):
    truth, _ = labelled
    _, _, run1_dir = first_run
    assert (run1_dir / "index" / "minhash.json").is_file() and list((run1_dir / "index" / "minhash").glob("*.parquet"))
    copied = {orig for _, orig, _, _ in truth.copies}
    texts_by_id = dict(zip(truth.table["id"].to_pylist(), truth.table["text"].to_pylist()))
    singles = sorted(i for i in texts_by_id if i.startswith("orig-") and i not in copied)[:3]
    earlier = [texts_by_id[i] for i in singles]
    _, fresh = chain_documents(1, prefix="fresh")
    ids = ["new-0", "new-1", "new-2", "new-3", "new-4"]
    texts = [earlier[0], earlier[1] + " and one more line", " ".join(reversed(earlier[2].split())), fresh[0], fresh[0] + " again"]
    table = evaluate.documents_table(ids, texts).append_column("quality_score", pa.array([0.1, 0.2, 0.3, 0.1, 0.9]))
    _, _, out = run_stage(as_blocks(table, 2), tmp_path, dedup_against=[str(run1_dir)])
    got = {i: (r, json.loads(d)) for i, r, d in zip(out["id"].to_pylist(), out[REASON].to_pylist(), out[DETAIL].to_pylist())}
    assert got["new-0"][0] == PREVIOUS_CORPUS and got["new-0"][1]["corpus"] == str(run1_dir)
    assert got["new-0"][1]["kept"] == singles[0] and got["new-0"][1]["similarity"] == 1.0
    assert got["new-1"][0] == PREVIOUS_CORPUS
    assert got["new-2"][0] == ""  # reversed text: same words, no shared 5-gram
    # Inside the new corpus the higher quality_score wins over the smaller id.
    assert got["new-3"][0] == NEAR_DUPLICATE and got["new-3"][1]["kept"] == "new-4" and got["new-4"][0] == ""
    with pytest.raises(ValueError, match="other hashing parameters"):
        run_stage(as_blocks(table, 1), tmp_path / "x", dedup_against=[str(run1_dir)], num_perm=64)


def test_dedup_against_refuses_another_scheme_and_reads_a_version_1_index(labelled, first_run, tmp_path):
    _, table = labelled
    _, _, run1_dir = first_run  # written with the default scheme (rensa)
    sample = table.slice(0, 20)
    with pytest.raises(ValueError, match=r"scheme='rensa-rminhash-v\d+' \(this run: 'datasketch-affine32'\)"):
        run_stage(as_blocks(sample, 1), tmp_path / "a", dedup_against=[str(run1_dir)], scheme="datasketch")
    # An index written before schemes were a parameter (version 1, datasketch signatures) is
    # read by the datasketch scheme and refused by rensa with a hint.
    old = tmp_path / "old"
    stage, _, _ = run_stage(as_blocks(sample, 1), old, scheme="datasketch")
    meta = json.loads((old / "index" / "minhash.json").read_text())
    (old / "index" / "minhash.json").write_text(json.dumps({**meta, "version": 1}))
    _, _, out = run_stage(as_blocks(sample, 1), tmp_path / "b", dedup_against=[str(old)], scheme="datasketch")
    assert set(out[REASON].to_pylist()) == {PREVIOUS_CORPUS}
    with pytest.raises(ValueError, match="set `scheme: datasketch` on this stage"):
        run_stage(as_blocks(sample, 1), tmp_path / "c", dedup_against=[str(old)])


def test_normalize_equals_its_two_pass_definition():
    from curation.dedup import shingles

    rng = random.Random(5)
    alphabet = "aZ9 \t\n.,-_'\"éÉßİK\u0301\u00a0\u2003\u200b漢字かなカナ“”—€١٢ğÅ\U0001F600"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))) for _ in range(2000)]
    texts += given_texts()[:200] + ["", None, "   ", "ASCII only, Mixed CASE 123."]
    for chunked in (pa.array(texts), pa.chunked_array([pa.array(texts[:700]), pa.array(texts[700:])])):
        fast = pc_split(shingles.normalize(chunked))
        ref = pc_split(shingles.normalize_reference(chunked))
        assert fast == ref


def test_word_split_and_ngram_hashes_equal_a_per_text_reference():
    """The vectorised split and n-gram kernel give the hashes of their definition, text by text:
    RE2 normalisation, whitespace split, xxh3 per word, fmix64(sum of word hash x position
    multiplier) per window; texts shorter than n give one shingle, empty texts none."""
    import xxhash

    from curation.dedup import shingles

    rng = random.Random(9)
    alphabet = "ab c  d\té.,“”—漢字\U0001F600"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(600)]
    texts += ["", "x", "   ", "end", "start here", "one two three four five six"] + given_texts()[:50]
    rng.shuffle(texts)
    normalized = shingles.normalize(pa.array(texts))
    items, counts = shingles.split_words(normalized)
    ref_words, ref_counts = shingles.split_words_reference(normalized)
    assert [w.rstrip(" ") for w in items.to_pylist()] == ref_words.to_pylist()
    assert counts.tolist() == ref_counts.tolist()

    mask = (1 << 64) - 1
    fmix = lambda h: (lambda h: (lambda h: h ^ (h >> 33))((h ^ (h >> 33)) * 0xC4CEB9FE1A85EC53 & mask))(
        (h ^ (h >> 33)) * 0xFF51AFD7ED558CCD & mask)
    seed, n = 7, 3
    mult = [int(m) for m in shingles.ngram_multipliers(n, seed)]
    hashes, per_text = shingles.ngram_hashes(shingles.words(pa.array(texts), seed), n, seed)
    expected = []
    for text in shingles.normalize_reference(pa.array(texts)).to_pylist():
        h = [xxhash.xxh3_64_intdigest(w.encode(), seed) for w in text.split(" ") if w]
        windows = [h[p:p + n] for p in range(len(h) - n + 1)] if len(h) >= n else [h] if h else []
        expected += [fmix(sum(x * m for x, m in zip(win, mult)) & mask) for win in windows]
    assert hashes.tolist() == expected and int(per_text.sum()) == len(expected)


def pc_split(normalized) -> list[list[str]]:
    import pyarrow.compute as pc

    return [[w for w in ws if w] for ws in pc.utf8_split_whitespace(normalized).to_pylist()]


def test_rensa_signatures_estimate_jaccard_like_datasketch_and_do_not_depend_on_the_batch():
    """Both schemes estimate word-5-gram Jaccard without bias on real text edited to known
    similarities; rensa's error is no larger, and a document's signature is the same in any batch."""
    rng = random.Random(11)
    docs = given_texts(150, 400)[:120]
    a_texts, b_texts, truth = [], [], []
    for d in docs:
        words = d.split()
        edited = [w if rng.random() > rng.choice([0.02, 0.05, 0.1, 0.2]) else "x" + w for w in words]
        a_texts.append(d)
        b_texts.append(" ".join(edited))
        truth.append(evaluate.jaccard(evaluate.word_ngrams(d), evaluate.word_ngrams(" ".join(edited))))
    truth = np.array(truth)
    errors = {}
    for scheme in ("rensa", "datasketch"):
        hasher = MinHasher(num_perm=128, ngram=5, seed=3, scheme=scheme)
        sa, _ = hasher.signatures(pa.array(a_texts))
        sb, _ = hasher.signatures(pa.array(b_texts))
        est = jaccard(sa, sb)
        errors[scheme] = est - truth
    for scheme, err in errors.items():
        assert abs(err.mean()) < 0.02, scheme  # unbiased
        assert np.sqrt((err**2).mean()) < 0.06, scheme  # ~sqrt(J(1-J)/128) per pair
    assert np.sqrt((errors["rensa"] ** 2).mean()) < 1.25 * np.sqrt((errors["datasketch"] ** 2).mean())
    hasher = MinHasher(num_perm=128, ngram=5, seed=3)
    whole, _ = hasher.signatures(pa.array(a_texts))
    parts = np.concatenate([hasher.signatures(pa.array(a_texts[i:i + 7]))[0] for i in range(0, len(a_texts), 7)])
    assert np.array_equal(whole, parts)
    again, _ = MinHasher(num_perm=128, ngram=5, seed=3).signatures(pa.array(a_texts))
    assert np.array_equal(whole, again)
