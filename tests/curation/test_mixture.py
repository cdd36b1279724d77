"""Temperature mixture: the plan's math, and the sampling stage on an embedded Ray."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from curation.config import parse_config
from curation.mixture_plan import MixturePlanError, domain_totals_from_parquet, mixture_plan_cli, plan_mixture
from curation.stages.base import RunContext
from curation.stages.mixture import DOWNSAMPLED, MixtureParams, MixtureSampler, draw_repeats

COUNTS = {"web": 8_000_000, "code": 1_000_000, "math": 250_000}


def weights(plan):
    return {s.domain: s.weight for s in plan.domains}


def epochs(plan):
    return plan.epochs()


# -- the plan ----------------------------------------------------------------------------------


def test_temperature_one_is_natural_and_every_domain_reaches_the_cap():
    plan = plan_mixture(COUNTS, temperature=1.0)
    total = sum(COUNTS.values())
    for d, w in weights(plan).items():
        assert w == pytest.approx(COUNTS[d] / total)
    # natural proportions: every domain is equally scarce, so all are at max_epochs together
    assert all(e == pytest.approx(1.5) for e in epochs(plan).values())
    assert plan.total == pytest.approx(1.5 * total)


def test_large_temperature_is_flat_and_the_smallest_domain_binds():
    plan = plan_mixture(COUNTS, temperature=1e6)
    assert all(w == pytest.approx(1 / 3, rel=1e-4) for w in weights(plan).values())
    assert plan.binding_domain == "math"
    assert epochs(plan)["math"] == 1.5
    # flat weights: each domain gets math's 1.5 * 250k, so web is downsampled hard
    assert epochs(plan)["web"] == pytest.approx(1.5 * 250_000 / 8_000_000, rel=1e-4)


def test_temperature_two_matches_the_formula():
    plan = plan_mixture(COUNTS, temperature=2.0)
    roots = {d: math.sqrt(n) for d, n in COUNTS.items()}
    z = sum(roots.values())
    for d, w in weights(plan).items():
        assert w == pytest.approx(roots[d] / z)
    # p_d / n_d is largest for the smallest domain: it binds
    assert plan.binding_domain == "math"
    caps = {d: 1.5 * COUNTS[d] / (roots[d] / z) for d in COUNTS}
    assert plan.total == pytest.approx(min(caps.values()))


def test_multipliers_upweight_and_renormalise():
    plan = plan_mixture(COUNTS, temperature=1.0, multipliers={"code": 2.0, "math": 3.0, "absent": 9.0})
    q = {"web": 8_000_000, "code": 2_000_000, "math": 750_000}
    for d, w in weights(plan).items():
        assert w == pytest.approx(q[d] / sum(q.values()))
    assert sum(weights(plan).values()) == pytest.approx(1.0)
    # math has the largest multiplier: it runs out first; the others stay below the cap
    assert plan.binding_domain == "math"
    e = epochs(plan)
    assert e["math"] == 1.5 and e["code"] == pytest.approx(1.0) and e["web"] == pytest.approx(0.5)


def test_max_epochs_is_never_exceeded_and_the_binding_domain_attains_it():
    rng = np.random.default_rng(3)
    for _ in range(50):
        counts = {f"d{i}": int(rng.integers(1, 10**7)) for i in range(int(rng.integers(1, 6)))}
        mult = {d: float(rng.uniform(0, 4)) for d in counts if rng.random() < 0.5}
        cap = float(rng.uniform(0.5, 4))
        plan = plan_mixture(counts, float(rng.uniform(0.3, 8)), mult, cap)
        e = epochs(plan)
        assert max(e.values()) <= cap
        if plan.binding_domain is not None:
            assert e[plan.binding_domain] == cap
        # the plan keeps the target proportions
        planned = {s.domain: s.epochs * s.available for s in plan.domains}
        for s in plan.domains:
            assert planned[s.domain] == pytest.approx(s.weight * plan.total, rel=1e-9, abs=1e-6)


def test_total_tokens_budget_scales_down_and_caps_report():
    natural_cap = plan_mixture(COUNTS, temperature=2.0).total
    plan = plan_mixture(COUNTS, temperature=2.0, total_tokens=1_000_000)
    assert plan.total == pytest.approx(1_000_000)
    assert plan.binding_domain is None and not plan.budget_capped
    assert all(e < 1.5 for e in epochs(plan).values())
    assert sum(s.planned for s in plan.domains) == pytest.approx(1_000_000)
    # a budget the caps cannot fill is an upper limit: the plan stays within max_epochs
    big = plan_mixture(COUNTS, temperature=2.0, total_tokens=10**12)
    assert big.budget_capped and big.total == pytest.approx(natural_cap)
    assert big.binding_domain == "math"


def test_zero_multiplier_and_empty_domain_get_nothing():
    plan = plan_mixture({"web": 100, "spam": 50, "empty": 0}, multipliers={"spam": 0})
    assert epochs(plan) == {"empty": 0.0, "spam": 0.0, "web": 1.5}
    assert plan_mixture({}).total == 0 and plan_mixture({}).binding_domain is None


@pytest.mark.parametrize("kw", [{"temperature": 0}, {"temperature": -1}, {"max_epochs": 0},
                                {"multipliers": {"web": -1}}, {"total_tokens": -5}])
def test_impossible_parameters_are_refused(kw):
    with pytest.raises(MixturePlanError):
        plan_mixture({"web": 10}, **kw)


def test_params_are_validated_in_the_config():
    cfg = parse_config({"inputs": ["x"], "output": "o", "stages": [
        {"name": "mixture", "temperature": 2, "multipliers": {"code": 2, "math": 2}}]})
    assert cfg.stages[0].params.multipliers == {"code": 2.0, "math": 2.0}
    for bad in ({"temperature": 0}, {"multipliers": {"code": -1}}, {"unit": "bytes"}, {"epochs": 2}):
        with pytest.raises(ValueError):
            MixtureParams.model_validate(bad)


def test_draw_repeats_expectation():
    u = (np.arange(100_000) + 0.5) / 100_000  # an exact grid of uniforms
    for e in (0.0, 0.3, 1.0, 1.5, 2.75):
        r = draw_repeats(np.full(len(u), e), u)
        assert r.mean() == pytest.approx(e, abs=1e-4)
        assert r.min() >= math.floor(e) and r.max() <= math.ceil(e)


# -- the stage on Ray --------------------------------------------------------------------------


def corpus(seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for domain, n, mean in (("web", 3000, 60), ("code", 800, 120), ("math", 500, 40)):
        for i in range(n):
            rows.append({"id": f"{domain}-{i:05}", "domain": domain, "text": "w " * 3,
                         "n_tokens": int(rng.geometric(1 / mean))})
    order = rng.permutation(len(rows))
    return pa.Table.from_pylist([rows[i] for i in order])


def run_stage(ray, table: pa.Table, blocks: int, seed: int = 7, **params):
    import ray.data

    bounds = np.linspace(0, table.num_rows, blocks + 1).astype(int)
    ds = ray.data.from_arrow([table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])])
    stage = MixtureSampler(MixtureParams(**params), RunContext(seed=seed, output="unused", num_cpus=2))
    out = stage.run(ds).materialize()
    return stage, out, pa.concat_tables(ray.get(out.to_arrow_refs())).sort_by("id")


@pytest.mark.slow
def test_stage_realises_the_plan_reproducibly_and_independently_of_blocks(ray_local, tmp_path):
    table = corpus()
    params = dict(temperature=2.0, multipliers={"code": 3.0})
    stage, out, one = run_stage(ray_local, table, blocks=1, **params)
    _, _, many = run_stage(ray_local, table, blocks=7, **params)
    assert one.num_rows == many.num_rows == table.num_rows  # nothing dropped by the stage itself
    columns = ["id", "repeats", "_reason", "_detail"]
    assert one.select(columns).equals(many.select(columns))

    plan = stage.plan
    assert plan.binding_domain == "code"  # the up-weighted domain runs out first
    repeats = np.asarray(one["repeats"])
    assert repeats.min() == 0 and repeats.max() <= math.ceil(1.5)
    dropped = np.asarray(one["_reason"]) == DOWNSAMPLED
    assert np.array_equal(dropped, repeats == 0)
    detail = json.loads(one.filter(pa.array(dropped))["_detail"][0].as_py())
    assert set(detail) == {"domain", "epochs"}

    summary = stage.summarize(out)
    assert summary["temperature"] == 2.0 and set(summary["weights"]) == {"web", "code", "math"}
    for domain, realised in summary["realised"].items():
        planned = summary["epochs"][domain]
        n = realised["docs"]
        # binomial noise on the fractional part, weighted by document length: a few sd of slack
        assert abs(realised["epochs"] - planned) < 4 * math.sqrt(0.25 / n) * 1.5 + 1e-9, (domain, realised, planned)
        assert realised["tokens_out"] == summary["tokens_after"][domain]
    assert summary["tokens_out_with_repeats"] == int((np.asarray(one["n_tokens"]) * repeats).sum())
    for d, w in summary["weights"].items():
        assert summary["realised"][d]["weight"] == pytest.approx(w, abs=0.03)

    # another seed draws other documents
    _, _, other = run_stage(ray_local, table, blocks=3, seed=8, **params)
    assert not np.array_equal(np.asarray(other["repeats"]), repeats)


@pytest.mark.slow
def test_document_unit_and_budget(ray_local):
    table = corpus(1)
    stage, _, out = run_stage(ray_local, table, blocks=2, unit="documents", total_tokens=2000, temperature=1e6)
    assert stage.plan.unit == "documents"
    kept_copies = {d: 0 for d in ("web", "code", "math")}
    for d, r in zip(out["domain"].to_pylist(), out["repeats"].to_pylist()):
        kept_copies[d] += r
    # flat over three domains: ~667 copies each
    for d, c in kept_copies.items():
        assert abs(c - 2000 / 3) < 80, kept_copies


def test_plan_cli_reads_only_the_counts(tmp_path, capsys):
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    table = corpus(2)
    pq.write_table(table.slice(0, 2000), tmp_path / "data" / "part-0.parquet")
    pq.write_table(table.slice(2000), tmp_path / "data" / "part-1.parquet")
    totals, has_repeats = domain_totals_from_parquet(str(tmp_path / "data"))
    by_domain = table.group_by("domain").aggregate([("n_tokens", "sum")])
    assert totals == dict(zip(by_domain["domain"].to_pylist(), by_domain["n_tokens_sum"].to_pylist()))
    assert not has_repeats
    mixture_plan_cli(str(tmp_path), 2.0, {"code": 3.0}, 1.5, None)
    printed = capsys.readouterr().out
    assert "code" in printed and "binding domain: code" in printed
