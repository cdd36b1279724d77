"""Perplexity by domain (cc_net): score with KenLM, calibrate per domain, mark.

1. Score: `map_batches` on an actor pool (each actor loads the models once) adds
   `perplexity` (null for a domain without a model) and the run materialises it. `score`
   picks the formula (`curation.lm.perplexity`): cc_net's per-line perplexity with the
   information of the digits the tokenizer writes as 0 added back (default: tables of numbers
   otherwise score like fluent prose), or cc_net's alone.
2. Calibrate: per domain, exact percentiles of the perplexity column alone (a group-by over
   two columns; the texts never reach the driver): the head/middle/tail cut-offs (cc_net cuts
   at the 30th and 60th percentile) and the `drop_above_percentile` threshold.
3. Mark: `pp_bucket` for each scored document and a verdict, first rule that applies:
   `perplexity_max` (absolute, per domain), `perplexity_percentile`, `perplexity_bucket`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from curation.lm.perplexity import DomainModel, Score
from curation.stages.base import KEPT, RunContext, Stage, StageParams, set_column, with_verdicts

if TYPE_CHECKING:
    import ray.data

Bucket = Literal["head", "middle", "tail"]
BUCKETS: tuple[Bucket, ...] = ("head", "middle", "tail")


class PerplexityParams(StageParams):
    models: dict[str, str] = Field(min_length=1)  # domain -> ARPA/KenLM binary path or URI
    drop_above_percentile: float | None = Field(default=None, gt=0, lt=100)
    max_perplexity: dict[str, float] | None = None  # domain -> absolute threshold
    buckets: tuple[float, float] = (30.0, 60.0)  # percentiles ending head and middle
    drop_buckets: list[Bucket] = Field(default_factory=list)
    score: Score = "cc_net_digits"  # the formula: see curation.lm.perplexity

    @field_validator("buckets")
    @classmethod
    def _ascending(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1] < 100:
            raise ValueError("buckets must be two ascending percentiles between 0 and 100")
        return v

    @field_validator("max_perplexity")
    @classmethod
    def _positive(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v and any(x <= 0 for x in v.values()):
            raise ValueError("max_perplexity values must be positive")
        return v

    @model_validator(mode="after")
    def _not_everything(self) -> "PerplexityParams":
        if set(self.drop_buckets) == set(BUCKETS):
            raise ValueError("drop_buckets names every bucket: nothing scored would be kept")
        return self


class PerplexityFilter(Stage):
    name = "perplexity"
    method = "Perplexity threshold by domain (KenLM)"
    Params = PerplexityParams
    reads = ("id", "text", "domain")
    writes = ("perplexity", "pp_bucket")
    batch_size = 256

    def __init__(self, params: PerplexityParams, ctx: RunContext):
        super().__init__(params, ctx)
        self.calibration: dict[str, dict[str, Any]] | None = None

    def run(self, ds: "ray.data.Dataset") -> "ray.data.Dataset":
        p: PerplexityParams = self.params
        for domain, path in p.models.items():
            if "://" not in path and not Path(path).is_file():
                raise FileNotFoundError(f"perplexity: model for domain {domain!r} not found: {path}")
        scored = ds.map_batches(
            _Scorer,
            fn_constructor_args=(dict(p.models), p.score),
            concurrency=max(1, self.ctx.num_cpus),
            batch_format="pyarrow",
            batch_size=self.batch_size,
            zero_copy_batch=True,
        ).materialize()
        self.calibration = calibrate(scored, p, num_partitions=max(1, self.ctx.num_cpus))
        return scored.map_batches(
            Marker(self.calibration, p),
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=True,
        )

    def summarize(self, out: "ray.data.Dataset") -> dict[str, Any]:
        if self.calibration is None:
            return {}
        return {
            "unscored": sum(c["unscored"] for c in self.calibration.values()),
            "domains": self.calibration,
        }


class _Scorer:
    """Actor: loads every domain's model once, then adds `perplexity` to each batch."""

    def __init__(self, models: dict[str, str], score: Score):
        self.models = {domain: DomainModel(path, domain, score) for domain, path in models.items()}

    def __call__(self, batch: pa.Table) -> pa.Table:
        values: list[float | None] = []
        for text, domain in zip(batch["text"].to_pylist(), batch["domain"].to_pylist()):
            model = self.models.get(domain)
            values.append(None if model is None or text is None else model.perplexity(text))
        return set_column(batch, "perplexity", pa.array(values, pa.float64()))


def calibrate(scored: "ray.data.Dataset", p: PerplexityParams, num_partitions: int = 1) -> dict[str, dict[str, Any]]:
    """Per-domain cut-offs and counts, from the `domain` and `perplexity` columns only.

    NOTE: a run has a handful of domains and each group is one domain, so the shuffle needs
    few partitions: Ray's default (one aggregator per partition, up to 200) costs more to start
    than the work it does.
    """
    rows = (
        scored.select_columns(["domain", "perplexity"])
        .groupby("domain", num_partitions=num_partitions)
        .map_groups(calibrate_domain, fn_kwargs={"p": p}, batch_format="pyarrow")
        .take_all()
    )
    return {r["domain"]: json.loads(r["calibration"]) for r in rows}


def calibrate_domain(group: pa.Table, p: PerplexityParams) -> pa.Table:
    """One domain's group -> one row: its percentiles, bucket counts and thresholds."""
    domain = group["domain"][0].as_py()
    values = group["perplexity"].drop_null().to_numpy()
    entry: dict[str, Any] = {"docs": group.num_rows, "scored": len(values), "unscored": group.num_rows - len(values)}
    if len(values):
        head_cut, middle_cut = np.percentile(values, p.buckets)
        entry["percentiles"] = {
            str(q): round(float(v), 3)
            for q, v in zip((10, 25, 50, 75, 90), np.percentile(values, (10, 25, 50, 75, 90)))
        }
        entry["bucket_cutoffs"] = {"head": float(head_cut), "middle": float(middle_cut)}
        entry["bucket_counts"] = {
            "head": int((values <= head_cut).sum()),
            "middle": int(((values > head_cut) & (values <= middle_cut)).sum()),
            "tail": int((values > middle_cut).sum()),
        }
        if p.drop_above_percentile is not None:
            entry["percentile_threshold"] = float(np.percentile(values, p.drop_above_percentile))
        if p.max_perplexity and domain in p.max_perplexity:
            entry["max_perplexity"] = p.max_perplexity[domain]
    return pa.table({"domain": [domain], "calibration": [json.dumps(entry)]})


class Marker:
    """Task: `pp_bucket` and the verdict of each document, given the calibration table."""

    def __init__(self, calibration: dict[str, dict[str, Any]], p: PerplexityParams):
        self.calibration = calibration
        self.p = p

    def __call__(self, batch: pa.Table) -> pa.Table:
        p = self.p
        n = batch.num_rows
        pp = batch["perplexity"].to_numpy(zero_copy_only=False)  # nulls -> NaN
        domains = np.asarray(batch["domain"].to_pylist(), dtype=object)
        buckets = np.full(n, None, dtype=object)
        reasons = [KEPT] * n
        details: list[dict | None] = [None] * n
        for domain in set(domains.tolist()):
            entry = self.calibration.get(domain, {})
            cut = entry.get("bucket_cutoffs")
            if cut is None:
                continue  # no model, or nothing scored
            rows = np.flatnonzero((domains == domain) & ~np.isnan(pp))
            vals = pp[rows]
            buckets[rows] = np.where(vals <= cut["head"], "head", np.where(vals <= cut["middle"], "middle", "tail"))
            rules = []  # (reason, rule, threshold, mask over rows), in order of precedence
            if "max_perplexity" in entry:
                rules.append(("perplexity_max", "max_perplexity", entry["max_perplexity"],
                              vals > entry["max_perplexity"]))
            if "percentile_threshold" in entry:
                t = entry["percentile_threshold"]
                rules.append(("perplexity_percentile", f"above_p{p.drop_above_percentile:g}", t, vals > t))
            for b in p.drop_buckets:
                bounds = {"head": (-np.inf, cut["head"]), "middle": (cut["head"], cut["middle"]),
                          "tail": (cut["middle"], np.inf)}[b]
                t = cut["middle"] if b == "tail" else cut["head"]
                rules.append(("perplexity_bucket", f"bucket_{b}", t, (vals > bounds[0]) & (vals <= bounds[1])))
            for reason, rule, threshold, mask in rules:
                for i in np.flatnonzero(mask):
                    row = rows[i]
                    if reasons[row] == KEPT:
                        reasons[row] = reason
                        details[row] = {"perplexity": round(float(pp[row]), 3), "domain": domain,
                                        "threshold": round(float(threshold), 3), "rule": rule}
        out = set_column(batch, "pp_bucket", pa.array(buckets.tolist(), pa.string()))
        return with_verdicts(out, reasons, details)
