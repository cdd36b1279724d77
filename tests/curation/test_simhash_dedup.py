"""simhash_sentence_dedup: the sentence splitter, SimHash equal to the `simhash` package, the
block bucketing guarantee, text surgery, and the stage end to end on Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from curation.dedup import evaluate
from curation.dedup.sentences import split_sentences
from curation.dedup.simhash_index import block_values, hamming, repeats_in_partition, sentence_simhashes
from curation.stages.base import DETAIL, REASON, RunContext
from curation.stages.simhash_sentence_dedup import (EMPTIED, SimHashSentenceDedup, SimHashSentenceDedupParams,
                                                    remove_sentences)
from tests.curation.test_minhash_dedup import as_blocks, given_texts, to_table


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


@pytest.mark.parametrize("text, expected", [
    ("Dr. Smith paid $3.50 for it, e.g. at the U.S. office. It rained.",
     ["Dr. Smith paid $3.50 for it, e.g. at the U.S. office.", "It rained."]),
    ("Version 2.0.1 is out. See https://example.com/a.b or mail a.b@c.org. Done!",
     ["Version 2.0.1 is out.", "See https://example.com/a.b or mail a.b@c.org.", "Done!"]),
    ("The value is approx. 5 km. J. R. R. Tolkien wrote it. Prices rose (see Fig. 3). Why? Because.",
     ["The value is approx. 5 km.", "J. R. R. Tolkien wrote it.", "Prices rose (see Fig. 3).", "Why?", "Because."]),
    ('He said "Stop." Then he left. Wait... What happened?',
     ['He said "Stop."', "Then he left.", "Wait...", "What happened?"]),
    ("今日は晴れです。明日は雨でしょう！本当？はい。", ["今日は晴れです。", "明日は雨でしょう！", "本当？", "はい。"]),
    ("def f(x):\n    return x + 1  # one. two. three.\n\nProse here. More prose.",
     ["def f(x):", "return x + 1  # one. two. three.", "Prose here.", "More prose."]),
])
def test_sentence_splitter(text, expected):
    assert sentences(text) == expected


def test_simhash_equals_the_simhash_package():
    from simhash import Simhash

    from curation.dedup import shingles

    texts = pa.array(["The quick brown fox jumps over the lazy dog by the river.", "one two", "", "日本語の文です。"])
    fingerprints, n_words = sentence_simhashes(texts, ngram=2, seed=3)
    feats, owner = shingles.ngrams(shingles.words(texts, 3), 2, 3)
    for i in range(len(texts)):
        f = feats[owner == i]
        if len(f) == 0:
            assert fingerprints[i] == 0 and n_words[i] == 0
            continue
        # The package hashes each feature with `hashfunc`; give it the same 64-bit feature hash.
        ref = Simhash([str(int(x)) for x in f], hashfunc=lambda b: int(b) if b.isdigit() else 0)
        assert ref.value == int(fingerprints[i])


def test_near_fingerprints_share_a_block():
    rng = np.random.default_rng(0)
    k = 3
    base = rng.integers(0, 2**63, 2000, dtype=np.uint64) * np.uint64(2)
    flips = np.zeros(2000, np.uint64)
    for row in range(2000):
        for bit in rng.choice(64, size=rng.integers(0, k + 1), replace=False):
            flips[row] |= np.uint64(1) << np.uint64(bit)
    near = base ^ flips
    assert (hamming(base, near) <= k).all()
    assert ((block_values(base, k) == block_values(near, k)).any(axis=1)).all()


def test_repeats_in_one_partition():
    rows = [  # (doc, idx, hash): b repeats a exactly, c is 2 bits from a, d is far away
        ("b", 0, 0b1111), ("a", 1, 0b1111), ("c", 5, 0b1111 ^ 0b11 << 40), ("d", 0, 0xFFFF << 32), ("a", 0, 0xFFFF << 32)]
    fps = np.array([h for _, _, h in rows], np.uint64)
    blocks = block_values(fps, 3)
    table = pa.table({
        "block": pa.array(np.tile(np.arange(4, dtype=np.int8), len(rows))),
        "value": pa.array(blocks.reshape(-1)),
        "doc": np.repeat([d for d, _, _ in rows], 4).tolist(),
        "idx": pa.array(np.repeat([i for _, i, _ in rows], 4).astype(np.int32)),
        "hash": pa.array(np.repeat(fps, 4)),
    })
    got = {(r["doc"], r["idx"], r["by_doc"], r["by_idx"]) for r in repeats_in_partition(table, 3).to_pylist()}
    assert got == {("b", 0, "a", 1), ("c", 5, "a", 1), ("d", 0, "a", 0)}


def test_remove_sentences_keeps_layout():
    text = "First one here. Second one here. Third.\nOnly this line goes.\n\ndef f():\n    pass\n"
    new, gone = remove_sentences(text, {1, 3})
    assert new == "First one here. Third.\n\ndef f():\n    pass\n"
    assert gone == ["Second one here.", "Only this line goes."]


# -- Ray -------------------------------------------------------------------------------------

def run_stage(ds, **params):
    stage = SimHashSentenceDedup(SimHashSentenceDedupParams(**params), RunContext(seed=0, output="unused", num_cpus=2))
    out = stage.run(ds).materialize()
    return stage, out, to_table(out)


@pytest.fixture(scope="module")
def sentence_run(ray_local):
    truth = evaluate.build_sentence_set(given_texts(), seed=5, n_docs=120)
    boiler = "All rights reserved by the example company and its many partners."
    extra = evaluate.documents_table(
        ["a-first", "t-emptied", "t-short", "u-short"],
        [boiler + "\nA closing remark that belongs to this document alone.", boiler.upper() + "\nOk.",
         "Thanks a lot.\n" + boiler, "Thanks a lot.\n" + boiler])
    table = pa.concat_tables([truth.table, extra])
    stage, out_ds, out = run_stage(as_blocks(table, 4), min_chars=10)
    return truth, table, stage, out_ds, out


def test_every_row_once_and_scores(sentence_run):
    truth, table, _, _, out = sentence_run
    assert sorted(out["id"].to_pylist()) == sorted(table["id"].to_pylist())
    mine = out.filter(pa.array([i.startswith("s-") for i in out["id"].to_pylist()]))
    scores = evaluate.score_sentences(mine, truth)
    assert scores["precision"] >= 0.95, scores
    assert scores["recall"] >= 0.95, scores
    assert scores["removed_by_level"]["heavy"] <= 0.05 and scores["removed_by_level"]["exact"] == 1.0


def test_rewritten_text_tokens_and_emptied(sentence_run):
    truth, table, _, _, out = sentence_run
    rows = {r["id"]: r for r in out.to_pylist()}
    originals = dict(zip(table["id"].to_pylist(), table["text"].to_pylist()))
    doc, idx = sorted(truth.repeated)[0]
    row = rows[doc]
    removed = {i for i, _, _ in json.loads(row[DETAIL])["removed"]}
    assert idx in removed
    kept_lines = [line for i, line in enumerate(originals[doc].split("\n")) if i not in removed]
    assert row["text"] == "\n".join(kept_lines) and row["n_tokens"] == len(row["text"].split())
    assert rows["a-first"][REASON] == "" and rows["a-first"]["text"] == originals["a-first"]
    # Only "Ok." (3 characters) would stay: dropped, with its original text for the rejects.
    assert rows["t-emptied"][REASON] == EMPTIED and rows["t-emptied"]["text"] == originals["t-emptied"]
    # "Thanks a lot." has 3 words: never removed, though u-short repeats t-short's.
    for doc in ("t-short", "u-short"):
        assert rows[doc][REASON] == "" and rows[doc]["text"] == "Thanks a lot." and rows[doc]["n_tokens"] == 3


def test_deterministic_across_blockings(sentence_run):
    _, table, _, _, out1 = sentence_run
    # The second run also applies its removals by the cogroup shuffle instead of the broadcast.
    stage, _, out2 = run_stage(as_blocks(table, 3), min_chars=10, broadcast_mb=0)
    assert stage.report["removal_join"] == "cogroup"
    key = lambda t: sorted(zip(t["id"].to_pylist(), t["text"].to_pylist(), t[REASON].to_pylist(),  # noqa: E731
                               t[DETAIL].to_pylist()))
    assert key(out1) == key(out2)


def test_summary_counts_words_and_bytes(sentence_run):
    _, _, stage, out_ds, out = sentence_run
    summary = stage.summarize(out_ds)
    details = [json.loads(d) for d in out[DETAIL].to_pylist() if d != "{}"]
    assert summary["removed_sentences"] == sum(d["removed_sentences"] for d in details) > 0
    assert summary["removed_words"] == sum(d["removed_words"] for d in details)
    assert summary["removed_bytes"] == sum(d["removed_bytes"] for d in details)
    assert summary["docs_emptied"] == 1
    assert summary["duplicate_clusters"] > 0 and summary["largest_clusters"][0]["size"] >= 2
    assert 0 < summary["duplicate_rate_by_domain"]["web"]["rate"] < 1
