"""A miniature data ablation end to end: curate 3 variants, train the same tiny model on each
with 2 seeds at 2 budgets, evaluate on held-out sets that share no near-duplicate with any
training set, and summarise the seeds (means, sds, paired intervals against raw)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from contract.layout import AblationRun
from curation.dedup.similarity import jaccard, word_ngrams
from flywheel.cli import app
from tests.ablation_data import document, mini_corpus
from workflows.ablation.config import parse_ablation_config
from workflows.ablation.holdout import HeldOutIndex, draw_candidates

pytestmark = pytest.mark.slow


def ablation_yaml(tmp_path: Path, corpus: Path) -> Path:
    config = {
        "corpus": [str(corpus)], "output": str(tmp_path / "ablation"), "seed": 3,
        # 2 seeds x 2 budgets x 3 variants = 12 runs of 2-5 steps: the smallest variant holds ~90k
        # tokens, so "0.1x" is ~9k tokens (5 steps) and 4096 is 2 steps
        "seeds": [3, 4], "budgets": ["0.1x", 4096], "corpus_sample": 0.95,
        "train": {"preset": "tiny", "seq_len": 64, "global_batch_tokens": 2048, "micro_batch": 8},
        "eval_every_steps": None,
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

    # Budgets: resolved after curation ("0.1x" of the smallest variant), whole global batches, ascending.
    assert data["seeds"] == [3, 4] and data["baseline"] == "raw" and data["domains"] == ["books", "web"]
    smallest = min(v["tokens"] for v in data["variants"])
    by_label = {b["label"]: b for b in data["budgets"]}
    assert set(by_label) == {"0.1x", "4096"} and by_label["4096"]["steps"] == 2
    assert by_label["0.1x"]["steps"] == math.ceil(math.ceil(0.1 * smallest) / 2048)
    assert [b["tokens"] for b in data["budgets"]] == sorted(b["steps"] * 2048 for b in data["budgets"])

    # Runs: every (variant, budget, seed) once, in its own folder, evaluated at its end only.
    runs = {(r["variant"], r["budget"], r["seed"]): r for r in data["runs"]}
    assert len(data["runs"]) == 12 and set(runs) == {(v, b, s) for v in ("raw", "dedup", "filtered")
                                                      for b in by_label for s in (3, 4)}
    for (variant, label, seed), r in runs.items():
        assert r["dir"] == str(Path(AblationRun(str(out)).run(variant, label, seed).root).relative_to(out))
        evals = [json.loads(line) for line in (out / r["dir"] / "eval.jsonl").read_text().splitlines()]
        assert r["steps"] == by_label[label]["steps"] and [e["step"] for e in evals] == [r["steps"]]
        assert evals[-1]["overall"]["loss"] == pytest.approx(r["eval"]["overall"]["loss"])
        tokens = next(v["tokens"] for v in data["variants"] if v["name"] == variant)
        assert r["trained_tokens"] == r["steps"] * 2048 and r["epochs"] == pytest.approx(r["trained_tokens"] / tokens,
                                                                                          abs=1e-3)
        if data["novel_eval_files"]:  # the novel measure: the same model on the novel-line sets
            assert r["novel"]["overall"]["loss"] > 0 and set(r["novel"]["domains"]) <= {"books", "web"}
    # a seed changes the init and the data order
    assert runs[("raw", "4096", 3)]["eval"]["overall"] != runs[("raw", "4096", 4)]["eval"]["overall"]

    # Summary: n = 2 per cell, the paired interval against raw for every other variant.
    rows = {(r["variant"], r["budget"], r["measure"], r["domain"]): r for r in data["summary"]}
    assert {m for _, _, m, _ in rows} == set(data["measures"]) and "loss" in data["measures"]
    for variant in ("raw", "dedup", "filtered"):
        for label in by_label:
            row = rows[(variant, label, "loss", "overall")]
            losses = [runs[(variant, label, s)]["eval"]["overall"]["loss"] for s in (3, 4)]
            assert row["n"] == 2 and row["mean"] == pytest.approx(sum(losses) / 2)
            assert row["sd"] == pytest.approx(abs(losses[0] - losses[1]) / 2 ** 0.5)
            vs = row["vs_baseline"]
            if variant == "raw":
                assert vs is None
                continue
            base = [runs[("raw", label, s)]["eval"]["overall"]["loss"] for s in (3, 4)]
            assert vs["n"] == 2 and vs["mean"] == pytest.approx((losses[0] - base[0] + losses[1] - base[1]) / 2)
            assert vs["lo"] <= vs["mean"] <= vs["hi"] and vs["exceeds_noise"] == (vs["lo"] > 0 or vs["hi"] < 0)

    # The old table: mean losses at the largest budget.
    largest = data["budgets"][-1]["label"]
    assert [r["variant"] for r in data["table"]] == ["raw", "dedup", "filtered"]
    for row in data["table"]:
        assert set(row["loss"]) == {"books", "web"} and all(x > 0 for x in row["loss"].values())
        assert row["overall"] == pytest.approx(rows[(row["variant"], largest, "loss", "overall")]["mean"])
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
        curated = Path(AblationRun(str(out)).variant(v["name"])) / AblationRun.CURATED / "data"
        train = pq.read_table(curated, columns=["id", "text"]).to_pylist()
        assert not held_ids & {t["id"] for t in train}
        worst = max(jaccard(word_ngrams(t["text"]), g) for t in train for g in held_grams)
        assert worst < data["leakage"]["near_duplicate_jaccard"], (v["name"], worst)

    # Every read document is accounted for: not sampled, held out, removed as a near-duplicate, or in the pool.
    not_sampled = pq.read_table(out / "sample" / "rejects")
    assert set(not_sampled["reason"].to_pylist()) == {"not_sampled"}
    assert data["not_sampled_docs"] == not_sampled.num_rows
    removed = pq.read_table(out / "holdout" / "removed").num_rows
    read_kept = json.loads((out / "read" / "stats.json").read_text())["stages"][0]["docs_out"]
    assert not_sampled.num_rows + removed + data["pool_docs"] == read_kept


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: x\noutput: y\ntoken_budget: 10\ntrain: {steps: 5}\nvariants: [{name: raw}]\n")
    result = CliRunner().invoke(app, ["ablate", str(bad)])
    assert result.exit_code == 2
    assert "train: steps are set by the ablation for every variant" in " ".join(result.output.split())
    with pytest.raises(ValueError, match="variant names must be unique"):
        parse_ablation_config({"corpus": "x", "output": "y", "token_budget": 1,
                               "variants": [{"name": "a"}, {"name": "a"}]})
