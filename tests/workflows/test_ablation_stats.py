"""The ablation's seed statistics (a hand-checked paired interval), its budgets, seeds and corpus
sample as config, and the run layout."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from contract.layout import AblationRun
from curation.config import ConfigError
from workflows.ablation.config import budget_label, budget_tokens, parse_ablation_config
from workflows.ablation.sample import NOT_SAMPLED, _MarkSampled, sample_score
from workflows.ablation.stats import paired_interval, sample_sd, summarize

T_975_2 = 4.302653  # Student's t, 97.5th percentile, 2 degrees of freedom (printed tables)


def test_paired_interval_by_hand():
    # diffs 0.1, 0.3, 0.2: mean 0.2; squared deviations 0.01 + 0.01 + 0 -> sd = sqrt(0.02 / 2) = 0.1;
    # half-width = 4.302653 * 0.1 / sqrt(3) = 0.248414
    got = paired_interval([0.1, 0.3, 0.2])
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.2, abs=1e-12) and got["sd"] == pytest.approx(0.1)
    assert T_975_2 * 0.1 / math.sqrt(3) == pytest.approx(0.248414, abs=1e-6)
    assert got["lo"] == pytest.approx(0.2 - 0.248414, abs=1e-6) and got["hi"] == pytest.approx(0.2 + 0.248414, abs=1e-6)
    assert got["exceeds_noise"] is False  # -0.048 < 0 < 0.448


def test_exceeds_noise_both_ways_and_one_seed():
    assert paired_interval([-0.5, -0.6, -0.55])["exceeds_noise"] is True  # all below 0, tight
    assert paired_interval([0.5, 0.6, 0.55])["exceeds_noise"] is True
    assert paired_interval([-0.5, 0.6, 0.05])["exceeds_noise"] is False
    assert paired_interval([0.3]) is None and sample_sd([0.3]) is None
    assert sample_sd([1.0, 3.0]) == pytest.approx(math.sqrt(2.0))


def run(variant: str, budget: str, seed: int, loss: float, web: float, novel: float | None = None) -> dict:
    report = {"overall": {"loss": loss}, "domains": {"web": {"loss": web}}}
    return {"variant": variant, "budget": budget, "seed": seed, "eval": report,
            "novel": None if novel is None else {"overall": {"loss": novel}, "domains": {}}}


def test_summarize_pairs_by_seed():
    runs = [run("raw", "1x", 1, 5.0, 4.0, 6.0), run("raw", "1x", 2, 5.2, 4.2, 6.2), run("raw", "1x", 3, 5.1, 4.1, 6.1),
            run("dedup", "1x", 1, 4.9, 4.5), run("dedup", "1x", 2, 5.1, 4.7), run("dedup", "1x", 3, 5.1, 4.6),
            run("dedup", "1x", 4, 9.9, 9.9)]  # seed 4: no baseline run to pair with
    rows = {(r["variant"], r["measure"], r["domain"]): r for r in summarize(runs, "raw", ["web"])}
    assert set(rows) == {("raw", "loss", "overall"), ("raw", "loss", "web"), ("raw", "novel_loss", "overall"),
                         ("dedup", "loss", "overall"), ("dedup", "loss", "web")}
    raw = rows[("raw", "loss", "overall")]
    assert raw["n"] == 3 and raw["mean"] == pytest.approx(5.1) and raw["sd"] == pytest.approx(0.1)
    assert raw["vs_baseline"] is None
    dedup = rows[("dedup", "loss", "overall")]
    assert dedup["n"] == 4 and dedup["mean"] == pytest.approx((4.9 + 5.1 + 5.1 + 9.9) / 4)
    # pairs over seeds 1-3: -0.1, -0.1, 0.0 -> mean -1/15, sd sqrt(1/300)
    vs = dedup["vs_baseline"]
    assert vs["n"] == 3 and vs["mean"] == pytest.approx(-1 / 15) and vs["sd"] == pytest.approx(math.sqrt(1 / 300))
    assert vs["hi"] - vs["mean"] == pytest.approx(T_975_2 * math.sqrt(1 / 300) / math.sqrt(3), abs=1e-6)
    web = rows[("dedup", "loss", "web")]["vs_baseline"]  # +0.5 every seed: sd 0, the interval is the point
    assert web["mean"] == pytest.approx(0.5) and web["exceeds_noise"] is True


def config(**extra) -> dict:
    return {"corpus": "c", "output": "o", "variants": [{"name": "raw"}, {"name": "dedup"}], **extra}


def test_budgets_seeds_baseline_config():
    cfg = parse_ablation_config(config(seed=7, token_budget=5000))  # the old spelling
    assert cfg.budgets == [5000] and cfg.seeds == [7] and cfg.baseline_variant == "raw"
    assert parse_ablation_config(cfg.dump()) == cfg
    cfg = parse_ablation_config(config(budgets=["1x", "0.5x", 3000], seeds=[1, 2], baseline="dedup"))
    assert [budget_label(b) for b in cfg.budgets] == ["1x", "0.5x", "3000"] and cfg.baseline_variant == "dedup"
    assert budget_tokens("0.5x", 1001) == 501 and budget_tokens("4x", 1000) == 4000 and budget_tokens(3000, 1) == 3000
    assert parse_ablation_config(config(budgets=["1x"]), token_budget=9).budgets == [9]  # the CLI's --token-budget
    for bad, message in [({"budgets": [1], "token_budget": 1}, "not both"), ({"budgets": ["4"]}, None),
                         ({"budgets": ["x4"]}, '"<number>x"'), ({"budgets": ["0x"]}, '"<number>x"'),
                         ({"budgets": ["1x", "1x"]}, "budgets must be unique: 1x"),
                         ({"budgets": [1], "seeds": [3, 3]}, "seeds must be unique: 3"),
                         ({"budgets": [1], "baseline": "nope"}, "baseline 'nope' is not a variant"),
                         ({"budgets": [1], "corpus_sample": 0}, "corpus_sample")]:
        if message is None:  # digits in a string are tokens
            assert parse_ablation_config(config(**bad)).budgets == [4]
            continue
        with pytest.raises(ConfigError, match=message):
            parse_ablation_config(config(**bad))


def test_corpus_sample_is_seeded_near_the_fraction_and_keeps_copies_together():
    texts = [f"document number {i}" for i in range(4000)]
    copies = [" Document  NUMBER 7 ", "document number 8"]  # exact copies as exact_dedup normalises them
    table = pa.table({"id": [f"d{i}" for i in range(4002)], "text": texts + copies})
    reasons = _MarkSampled(0.25, seed=5)(table)["reason"].to_pylist()
    kept = [t for t, r in zip(texts, reasons) if r == ""]
    assert set(reasons) == {"", NOT_SAMPLED}
    assert abs(len(kept) - 1000) < 4 * math.sqrt(4000 * 0.25 * 0.75)  # binomial, 4 sd
    assert kept == [t for t in texts if sample_score(5, t) < 0.25]  # by text alone: the same docs every run
    assert kept != [t for t in texts if sample_score(6, t) < 0.25]
    assert reasons[4000] == reasons[7] and reasons[4001] == reasons[8]


def test_run_layout():
    run_dir = AblationRun("/out").run("dedup", "4x", 3)
    assert run_dir.root == "/out/variants/dedup/runs/4x-seed3"
    assert run_dir.eval == "/out/variants/dedup/runs/4x-seed3/eval.jsonl"
