"""Seed statistics for the ablation: mean ± sd per cell and the paired difference against the baseline.

Runs with the same seed share the model initialisation and the data-order seed, so a variant's
run and the baseline's run of one seed form a pair; the difference of a pair removes the part of
the noise both share. Over n pairs with differences d_i:

    mean = sum(d_i) / n,   sd = sqrt(sum((d_i - mean)^2) / (n - 1))
    95% interval = mean ± t_{0.975, n-1} * sd / sqrt(n)          (Student's t, paired)

A difference "exceeds the noise" when its interval excludes 0. Negative = the variant's loss is
lower than the baseline's (better). With one seed there is no sd and no interval (null).
"""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import t as student_t

CONFIDENCE = 0.95
OVERALL = "overall"
# summary measure -> the run's evaluation it reads (both report nats per token as `loss`)
MEASURES = {"loss": "eval", "novel_loss": "novel"}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def sample_sd(xs: list[float]) -> float | None:
    """The sample standard deviation (n - 1 in the denominator); None below two values."""
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def paired_interval(diffs: list[float], confidence: float = CONFIDENCE) -> dict[str, Any] | None:
    """{n, mean, sd, lo, hi, exceeds_noise} of paired differences; None below two pairs."""
    sd = sample_sd(diffs)
    if sd is None:
        return None
    n, m = len(diffs), mean(diffs)
    half = student_t.ppf(1 - (1 - confidence) / 2, n - 1) * sd / math.sqrt(n)
    lo, hi = m - half, m + half
    return {"n": n, "mean": m, "sd": sd, "lo": lo, "hi": hi, "exceeds_noise": bool(lo > 0 or hi < 0)}


def run_value(run: dict[str, Any], measure: str, domain: str) -> float | None:
    """A run's `measure` on `domain` ("overall" or a domain), or None where it was not measured."""
    report = run.get(MEASURES[measure]) or {}
    cell = report.get(OVERALL) if domain == OVERALL else (report.get("domains") or {}).get(domain)
    value = (cell or {}).get("loss")
    return None if value is None else float(value)


def summarize(runs: list[dict[str, Any]], baseline: str, domains: list[str],
              measures: list[str] | tuple[str, ...] = tuple(MEASURES)) -> list[dict[str, Any]]:
    """One row per (variant, budget, measure, domain) that has a value: its n, mean and sd over
    seeds, and `vs_baseline` (the paired interval over the seeds both have; None for the
    baseline itself or fewer than two pairs). Rows follow the runs' order of variants and
    budgets, then `measures`, then overall before the domains."""
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    budgets = list(dict.fromkeys(r["budget"] for r in runs))
    by_seed: dict[tuple[str, str, str, str], dict[int, float]] = {}
    for r in runs:
        for measure in measures:
            for domain in (OVERALL, *domains):
                value = run_value(r, measure, domain)
                if value is not None:
                    by_seed.setdefault((r["variant"], r["budget"], measure, domain), {})[r["seed"]] = value
    rows = []
    for variant in variants:
        for budget in budgets:
            for measure in measures:
                for domain in (OVERALL, *domains):
                    values = by_seed.get((variant, budget, measure, domain))
                    if not values:
                        continue
                    base = by_seed.get((baseline, budget, measure, domain), {})
                    pairs = [values[s] - base[s] for s in sorted(values) if s in base]
                    xs = list(values.values())
                    rows.append({"variant": variant, "budget": budget, "measure": measure, "domain": domain,
                                 "n": len(xs), "mean": mean(xs), "sd": sample_sd(xs),
                                 "vs_baseline": None if variant == baseline else paired_interval(pairs)})
    return rows
