"""A miniature data ablation end to end: curate 3 variants, train the same tiny model on each,
evaluate on held-out sets that share no near-duplicate with any training set."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.dedup.similarity import jaccard, word_ngrams
from flywheel.cli import app
from tests.ablation_data import document, mini_corpus
from workflows.ablation.config import parse_ablation_config
from workflows.ablation.holdout import HeldOutIndex, draw_candidates

pytestmark = pytest.mark.slow


def ablation_yaml(tmp_path: Path, corpus: Path) -> Path:
    config = {
        "corpus": [str(corpus)], "output": str(tmp_path / "ablation"), "seed": 3, "token_budget": 24_576,
        "train": {"preset": "tiny", "seq_len": 64, "global_batch_tokens": 2048, "micro_batch": 8},
        "eval_every_steps": 4,
        "holdout": {"docs_per_domain": 12, "near_duplicate_jaccard": 0.5},
        "tokenizer": {"vocab_size": 600},
        "variants": [
            {"name": "raw"},
            {"name": "dedup", "stages": ["exact_dedup", {"name": "minhash_dedup", "threshold": 0.7}]},
            {"name": "filtered", "stages": ["exact_dedup", {"name": "minhash_dedup", "threshold": 0.7},
                                           {"name": "heuristics", "min_words": 20}]},
        ],
    }
    path = tmp_path / "ablation.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_draw_is_seeded_per_domain_and_skips():
    ids = [f"d{i}" for i in range(50)]
    domains = ["web" if i % 2 else "code" for i in range(50)]
    a = draw_candidates(ids, domains, 5, seed=1, skip_domains={"code"})
    assert list(a) == ["web"] and len(a["web"]) == 5 and a == draw_candidates(ids, domains, 5, 1, {"code"})
    assert a != draw_candidates(ids, domains, 5, seed=2, skip_domains={"code"})


def test_held_out_index_finds_near_copies_exactly():
    rng = random.Random(1)
    texts = [document(rng, "books") for _ in range(20)]
    index = HeldOutIndex([f"h{i}" for i in range(20)], texts, threshold=0.5, seed=1)
    words = texts[3].split(" ")
    words[5] = "zebra"
    import pyarrow as pa

    found = index.matches(pa.array([" ".join(words), document(rng, "books")]))
    assert [(row, i) for row, i, _ in found] == [(0, 3)]
    assert found[0][2] == pytest.approx(jaccard(word_ngrams(" ".join(words)), word_ngrams(texts[3])))


def test_miniature_ablation_end_to_end(ray_local, tmp_path):
    corpus = mini_corpus(tmp_path / "corpus.jsonl")
    result = CliRunner().invoke(app, ["ablate", str(ablation_yaml(tmp_path, corpus)), "--parallel", "2"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "ablation"
    data = json.loads((out / "ablation.json").read_text())

    # The table: one row per variant, a loss per held-out domain and overall, same token budget.
    assert [r["variant"] for r in data["table"]] == ["raw", "dedup", "filtered"]
    assert data["domains"] == ["books", "web"]
    for row, v in zip(data["table"], data["variants"], strict=True):
        assert set(row["loss"]) == {"books", "web"} and all(x > 0 for x in row["loss"].values())
        assert row["overall"] > 0 and v["trained_tokens"] == data["steps"] * 2048 >= 24_576
        evals = [json.loads(line) for line in (out / v["dir"] / "train" / "eval.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [4, 8, 12]
        assert evals[-1]["overall"]["loss"] == pytest.approx(row["overall"])
    kept = [v["docs_kept"] for v in data["variants"]]
    assert kept[0] > kept[1] > kept[2]  # dedup drops copies, heuristics the junk
    assert "raw" in result.output and "near-duplicate pairs left in any training set: 0" in result.output

    # No leakage, checked independently: exact word-5-gram Jaccard of every held-out document
    # against every document each variant trained on.
    held = [json.loads(line) for f in data["eval_files"].values() for line in (out / f).read_text().splitlines()]
    assert len(held) == 24 and {h["domain"] for h in held} == {"books", "web"}
    assert data["leakage"]["removed_from_training_pool"] > 0 and data["leakage"]["pairs_found"] == 0
    held_grams = [word_ngrams(h["text"]) for h in held]
    held_ids = {h["id"] for h in held}
    for v in data["variants"]:
        train = pq.read_table(out / v["dir"] / "curated" / "data", columns=["id", "text"]).to_pylist()
        assert not held_ids & {t["id"] for t in train}
        worst = max(jaccard(word_ngrams(t["text"]), g) for t in train for g in held_grams)
        assert worst < data["leakage"]["near_duplicate_jaccard"], (v["name"], worst)

    # Every read document is accounted for: held out, removed as a near-duplicate, or in the pool.
    removed = pq.read_table(out / "holdout" / "removed").num_rows
    read_kept = json.loads((out / "read" / "stats.json").read_text())["stages"][0]["docs_out"]
    assert removed + data["pool_docs"] == read_kept


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: x\noutput: y\ntoken_budget: 10\ntrain: {steps: 5}\nvariants: [{name: raw}]\n")
    result = CliRunner().invoke(app, ["ablate", str(bad)])
    assert result.exit_code == 2
    assert "train: steps are set by the ablation for every variant" in " ".join(result.output.split())
    with pytest.raises(ValueError, match="variant names must be unique"):
        parse_ablation_config({"corpus": "x", "output": "y", "token_budget": 1,
                               "variants": [{"name": "a"}, {"name": "a"}]})
