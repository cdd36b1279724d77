"""Temperature mixture planning: how much of each domain a dataset should hold. Pure math.

Given n_d (tokens, or documents, available in domain d), a temperature T, per-domain
multipliers m_d (default 1), an epoch cap E and an optional budget B:

    target weight   p_d = m_d * n_d^(1/T) / sum_k m_k * n_k^(1/T)
                    (T = 1: natural proportions; T -> inf: uniform over domains; computed
                     as a softmax of log m_d + log(n_d) / T, so no power overflows)
    planned amount  N_d = p_d * N            epochs  e_d = N_d / n_d = p_d * N / n_d

The cap e_d <= E for every d bounds the total:  N <= N_cap = min_d E * n_d / p_d.
The domain that attains the minimum is the *binding* domain: the one whose target share is
largest relative to its size (the most up-weighted), so it runs out of fresh data first and
is repeated exactly E times. The total is N = N_cap, or min(B, N_cap) with a budget: a budget
is an upper limit, and one the caps cannot fill is reported (`budget_capped`), never met by
repeating a domain more than E times. Either way the target proportions hold exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as pads
from rich.console import Console
from rich.table import Table

from contract.stores import filesystem_for

Unit = Literal["tokens", "documents"]


class MixturePlanError(ValueError):
    """Parameters no plan can satisfy (non-positive temperature, negative counts, ...)."""


@dataclass(frozen=True)
class DomainShare:
    domain: str
    available: int  # n_d, in the plan's unit
    natural_weight: float  # n_d / sum n
    multiplier: float  # m_d
    weight: float  # p_d, the target weight
    epochs: float  # e_d: expected times each of its documents is used
    planned: float  # N_d = e_d * n_d


@dataclass(frozen=True)
class MixturePlan:
    unit: Unit
    temperature: float
    max_epochs: float
    total_requested: int | None  # the budget B, if any
    total: float  # N: what the plan samples, in `unit`
    binding_domain: str | None  # the domain at max_epochs; None when the budget binds first
    budget_capped: bool  # a budget was asked for that the epoch caps cannot fill
    domains: list[DomainShare] = field(default_factory=list)

    def epochs(self) -> dict[str, float]:
        return {d.domain: d.epochs for d in self.domains}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["domains"] = {s["domain"]: {k: v for k, v in s.items() if k != "domain"} for s in d["domains"]}
        return d


def plan_mixture(
    tokens_per_domain: dict[str, int],
    temperature: float = 1.0,
    multipliers: dict[str, float] | None = None,
    max_epochs: float = 1.5,
    total_tokens: int | None = None,
    *,
    unit: Unit = "tokens",
) -> MixturePlan:
    """The plan for these per-domain amounts (`tokens_per_domain` holds documents when
    `unit="documents"`; `total_tokens` is then a document budget). Multipliers of domains that
    are not in the data are ignored; a domain with nothing available, or multiplier 0, gets
    weight 0 and epochs 0."""
    multipliers = dict(multipliers or {})
    if not temperature > 0 or math.isinf(temperature) or math.isnan(temperature):
        raise MixturePlanError(f"temperature must be a positive number, got {temperature}")
    if not max_epochs > 0:
        raise MixturePlanError(f"max_epochs must be positive, got {max_epochs}")
    if total_tokens is not None and total_tokens < 0:
        raise MixturePlanError(f"total_tokens must be >= 0, got {total_tokens}")
    for name, m in multipliers.items():
        if not m >= 0 or math.isinf(m):
            raise MixturePlanError(f"multiplier for {name!r} must be a finite number >= 0, got {m}")
    for name, n in tokens_per_domain.items():
        if n < 0:
            raise MixturePlanError(f"domain {name!r} has a negative amount ({n})")

    names = sorted(tokens_per_domain)
    available = {d: int(tokens_per_domain[d]) for d in names}
    natural_total = sum(available.values())
    # log q_d = log m_d + log(n_d) / T; domains with q_d = 0 take no part in the softmax.
    logq = {d: math.log(multipliers.get(d, 1.0)) + math.log(available[d]) / temperature
            for d in names if available[d] > 0 and multipliers.get(d, 1.0) > 0}
    weights = dict.fromkeys(names, 0.0)
    if logq:
        top = max(logq.values())
        z = sum(math.exp(v - top) for v in logq.values())
        weights.update({d: math.exp(v - top) / z for d, v in logq.items()})

    # N_cap = min_d E * n_d / p_d over domains that get any weight.
    caps = {d: max_epochs * available[d] / weights[d] for d in logq}
    binding = min(caps, key=lambda d: (caps[d], d)) if caps else None
    n_cap = caps[binding] if binding is not None else 0.0
    total = n_cap if total_tokens is None else min(float(total_tokens), n_cap)
    budget_capped = total_tokens is not None and total_tokens > n_cap
    if total_tokens is not None and total_tokens < n_cap:
        binding = None

    shares = []
    for d in names:
        planned = weights[d] * total
        epochs = planned / available[d] if available[d] else 0.0
        if binding == d:
            epochs = float(max_epochs)  # exact, not max_epochs * (1 +- 1 ulp)
        shares.append(DomainShare(
            domain=d, available=available[d],
            natural_weight=available[d] / natural_total if natural_total else 0.0,
            multiplier=float(multipliers.get(d, 1.0)), weight=weights[d],
            epochs=min(epochs, float(max_epochs)), planned=planned))
    return MixturePlan(unit=unit, temperature=float(temperature), max_epochs=float(max_epochs),
                       total_requested=total_tokens, total=total, binding_domain=binding,
                       budget_capped=budget_capped, domains=shares)


def domain_totals_from_parquet(data_dir: str, unit: Unit = "tokens") -> tuple[dict[str, int], bool]:
    """Per-domain amounts of a finished run's `data/*.parquet`, reading only `domain` and
    `n_tokens`, batch by batch. Also says whether the data already carries `repeats`."""

    fs, path = filesystem_for(data_dir)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    totals: dict[str, int] = {}
    for batch in dataset.to_batches(columns=["domain", "n_tokens"]):
        grouped = pa.Table.from_batches([batch]).group_by("domain").aggregate(
            [("n_tokens", "sum"), ("n_tokens", "count")])
        column = "n_tokens_sum" if unit == "tokens" else "n_tokens_count"
        for d, n in zip(grouped["domain"].to_pylist(), grouped[column].to_pylist()):
            totals[d] = totals.get(d, 0) + int(n or 0)
    return totals, "repeats" in dataset.schema.names


def mixture_plan_cli(
    output: str,
    temperature: float,
    multipliers: dict[str, float] | None,
    max_epochs: float = 1.5,
    total_tokens: int | None = None,
    unit: Unit = "tokens",
) -> None:
    """Print the plan a `mixture` stage would make on OUTPUT/data/*.parquet (a finished run)."""

    totals, has_repeats = domain_totals_from_parquet(output.rstrip("/") + "/data", unit)
    plan = plan_mixture(totals, temperature, multipliers, max_epochs, total_tokens, unit=unit)
    table = Table("Domain", f"Available ({unit})", "Natural", "Multiplier", "Target", "Epochs",
                  f"Planned ({unit})", title=f"Mixture plan for {output}")
    for col in table.columns[1:]:
        col.justify = "right"
    for i, s in enumerate(plan.domains):
        mark = " *" if s.domain == plan.binding_domain else ""
        table.add_row(s.domain, f"{s.available:,}", f"{100 * s.natural_weight:.2f}%", f"{s.multiplier:g}",
                      f"{100 * s.weight:.2f}%", f"{s.epochs:.3f}{mark}", f"{round(s.planned):,}",
                      end_section=i == len(plan.domains) - 1)
    table.add_row("total", f"{sum(s.available for s in plan.domains):,}", "100.00%", "", "100.00%", "",
                  f"{round(plan.total):,}")
    console = Console()
    console.print(table)
    limit = (f"binding domain: {plan.binding_domain} (* at max_epochs {plan.max_epochs:g})"
             if plan.binding_domain else f"budget {plan.total_requested:,} {unit} binds before any epoch cap")
    console.print(f"temperature {plan.temperature:g}; {limit}", highlight=False)
    if plan.budget_capped:
        console.print(f"[yellow]note:[/] the budget of {plan.total_requested:,} {unit} exceeds what "
                      f"max_epochs {plan.max_epochs:g} allows; the plan samples {round(plan.total):,}", highlight=False)
    if has_repeats:
        console.print("[yellow]note:[/] this run already sampled a mixture: amounts count its distinct "
                      "kept documents once, not their repeats", highlight=False)
