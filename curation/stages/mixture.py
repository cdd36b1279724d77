"""`mixture`: temperature sampling over domains, by whole documents.

1. Count: per-domain documents and tokens as per-block partial sums of the `domain` and
   `n_tokens` columns (the texts never leave the workers; the driver adds a few rows).
2. Plan: `curation.mixture_plan.plan_mixture` turns the counts into per-domain epochs e_d
   (target weights p_d ~ m_d * n_d^(1/T), scaled until the binding domain hits max_epochs or
   the budget is spent).
3. Sample: each document gets `repeats` = floor(e_d) + [u < e_d - floor(e_d)], with u uniform
   in [0, 1) from a hash of (seed, id). So E[repeats] = e_d, repeats lies in 0..ceil(e_d), and
   the draw depends on neither block order nor block count. repeats == 0 marks the document
   `mixture_downsampled`; the tokenize stage writes each kept one `repeats` times.

The accounting stays in documents: `n_tokens` is per copy, and `summarize()` reports the
realised tokens including repeats next to the plan.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curation.mixture_plan import MixturePlan, plan_mixture
from curation.stages.base import KEPT, RunContext, Stage, StageParams, set_column, with_verdicts

if TYPE_CHECKING:
    import ray.data

DOWNSAMPLED = "mixture_downsampled"
REPEATS = "repeats"


class MixtureParams(StageParams):
    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    multipliers: dict[str, float] = Field(default_factory=dict)  # domain -> m_d (code: 2, math: 2)
    max_epochs: float = Field(default=1.5, gt=0, allow_inf_nan=False)
    total_tokens: int | None = Field(default=None, ge=0)  # budget in `unit`; None: what the caps allow
    unit: Literal["tokens", "documents"] = "tokens"

    @field_validator("multipliers")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {d: m for d, m in v.items() if not (0 <= m < math.inf)}
        if bad:
            raise ValueError(f"multipliers must be finite and >= 0, got {bad}")
        return v


def document_uniforms(seed: int, ids: list[str]) -> np.ndarray:
    """u in [0, 1) per id: the top 53 bits of blake2b(seed, id), stable across processes."""
    out = np.empty(len(ids), dtype=np.float64)
    prefix = f"{seed}\x00".encode()
    for i, doc_id in enumerate(ids):
        digest = hashlib.blake2b(prefix + doc_id.encode(), digest_size=8, person=b"mixture").digest()
        h = int.from_bytes(digest, "little")
        out[i] = (h >> 11) * 2.0**-53
    return out


def draw_repeats(epochs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """floor(e) + [u < frac(e)]: integer repeats whose expectation is exactly e."""
    whole = np.floor(epochs)
    return (whole + (uniforms < epochs - whole)).astype(np.int64)


class _AssignRepeats:
    def __init__(self, epochs: dict[str, float], seed: int):
        self.epochs = epochs
        self.seed = seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        domains = batch["domain"].to_pylist()
        epochs = np.array([self.epochs[d] for d in domains], dtype=np.float64)
        repeats = draw_repeats(epochs, document_uniforms(self.seed, batch["id"].to_pylist()))
        reasons = [KEPT if r > 0 else DOWNSAMPLED for r in repeats]
        details = [None if r > 0 else {"domain": d, "epochs": round(float(e), 6)}
                   for r, d, e in zip(repeats, domains, epochs)]
        return with_verdicts(set_column(batch, REPEATS, pa.array(repeats, pa.int64())), reasons, details)


def _domain_partials(batch: pa.Table) -> pa.Table:
    """One row per domain of this block: docs, tokens, and (after sampling) kept/realised sums."""
    if REPEATS not in batch.column_names:
        batch = batch.append_column(REPEATS, pa.array(np.ones(batch.num_rows, dtype=np.int64)))
    n_tokens = batch["n_tokens"].to_numpy(zero_copy_only=False).astype(np.int64)
    repeats = batch["repeats"].to_numpy(zero_copy_only=False).astype(np.int64)
    table = pa.table({
        "domain": batch["domain"], "docs": np.ones(batch.num_rows, dtype=np.int64), "tokens": n_tokens,
        "docs_kept": (repeats > 0).astype(np.int64), "tokens_kept": n_tokens * (repeats > 0),
        "docs_out": repeats, "tokens_out": n_tokens * repeats,
    })
    sums = table.group_by("domain").aggregate([(c, "sum") for c in table.column_names[1:]])
    return sums.rename_columns([c.removesuffix("_sum") for c in sums.column_names])


def domain_sums(ds: "ray.data.Dataset", sampled: bool) -> dict[str, dict[str, int]]:
    """{domain: {docs, tokens, docs_kept, tokens_kept, docs_out, tokens_out}} over `ds`
    (`sampled`: it has `repeats`; asking a lazy dataset for its columns would run part of it)."""
    columns = ["domain", "n_tokens"] + ([REPEATS] if sampled else [])
    totals: dict[str, dict[str, int]] = {}
    rows = ds.select_columns(columns).map_batches(_domain_partials, batch_format="pyarrow", batch_size=None)
    for row in rows.take_all():
        acc = totals.setdefault(row["domain"], {})
        for k, v in row.items():
            if k != "domain":
                acc[k] = acc.get(k, 0) + int(v)
    return dict(sorted(totals.items()))


class MixtureSampler(Stage):
    name = "mixture"
    method = "Temperature sampling"
    Params = MixtureParams
    reads = ("id", "domain", "n_tokens")
    writes = (REPEATS,)

    def __init__(self, params: MixtureParams, ctx: RunContext):
        super().__init__(params, ctx)
        self.plan: MixturePlan | None = None

    def run(self, ds: "ray.data.Dataset") -> "ray.data.Dataset":
        p: MixtureParams = self.params
        sums = domain_sums(ds, sampled=False)
        amounts = {d: s["tokens"] if p.unit == "tokens" else s["docs"] for d, s in sums.items()}
        self.plan = plan_mixture(amounts, p.temperature, dict(p.multipliers), p.max_epochs, p.total_tokens,
                                 unit=p.unit)
        return ds.map_batches(_AssignRepeats(self.plan.epochs(), self.ctx.seed), batch_format="pyarrow",
                              batch_size=4096, zero_copy_batch=True)

    def summarize(self, out: "ray.data.Dataset") -> dict[str, Any]:
        """The plan and what the draw realised, per domain, for stats.json and the manifest."""
        if self.plan is None:
            return {}
        plan = self.plan
        sums = domain_sums(out, sampled=True)
        unit_in, unit_out = ("tokens", "tokens_out") if plan.unit == "tokens" else ("docs", "docs_out")
        realised_total = sum(s[unit_out] for s in sums.values())
        realised = {}
        for d, s in sums.items():
            realised[d] = {**s, "epochs": round(s[unit_out] / s[unit_in], 6) if s[unit_in] else 0.0,
                           "weight": round(s[unit_out] / realised_total, 6) if realised_total else 0.0}
        return {
            "temperature": plan.temperature,
            "unit": plan.unit,
            "max_epochs": plan.max_epochs,
            "weights": {s.domain: round(s.weight, 6) for s in plan.domains},
            "epochs": {s.domain: round(s.epochs, 6) for s in plan.domains},
            "binding_domain": plan.binding_domain,
            "tokens_before": {d: s["tokens"] for d, s in sums.items()},
            "tokens_after": {d: s["tokens_out"] for d, s in sums.items()},
            "tokens_out_with_repeats": sum(s["tokens_out"] for s in sums.values()),
            "plan": plan.to_json(),
            "realised": realised,
        }
