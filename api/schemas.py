"""Request and response bodies of the /v1 API (OpenAPI is generated from these)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.ids import CORPUS_ID, MANIFEST_ID, TRAINING_JOB_ID
from curation.config import DOMAIN_PATTERN


class Problem(BaseModel):
    detail: str = Field(examples=["config: stages.1.name: unknown stage 'minhsh'; known stages: url_dedup, ..."])


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- corpora ---------------------------------------------------------------------------------

class CorpusRegistration(BaseModel):
    """Register files that already exist (inside FLYWHEEL_ALLOWED_ROOTS) instead of uploading them."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"uri": "s3://datalake/raw/2026-11/", "name": "crawl-2026-11", "domain": "web"}]})

    uri: str = Field(min_length=1, max_length=4096, description="file or folder: local path, file://, s3://, ...")
    name: str | None = Field(default=None, max_length=255)
    domain: str | None = Field(default=None, pattern=DOMAIN_PATTERN, description="for records that carry none")


class CorpusOut(_Out):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "cor_3f2a9c0d1e4b5a69", "name": "docs.jsonl.gz", "source": "upload", "domain": None,
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "size_bytes": 48213,
        "state": "ready", "documents": 200, "malformed": 0, "text_bytes": 151342, "domains": {"web": 200},
        "files": 1, "error": None, "created_at": "2026-11-29T10:00:00Z", "scanned_at": "2026-11-29T10:00:00Z"}]})

    id: str
    name: str
    source: Literal["upload", "uri"]
    uri: str
    domain: str | None
    sha256: str | None = Field(description="of the uploaded file, computed while it streamed in")
    size_bytes: int
    state: Literal["scanning", "ready", "invalid"] = Field(
        description="scanning: counts not known yet (large corpora are counted in the background)")
    documents: int | None = Field(description="records a job's read step will keep")
    malformed: int | None = Field(description="records the read step will reject as malformed")
    text_bytes: int | None
    domains: dict[str, int] | None = Field(description="documents per domain")
    files: int | None
    error: str | None
    created_at: datetime
    scanned_at: datetime | None


class CorpusList(BaseModel):
    items: list[CorpusOut]
    total: int
    limit: int
    offset: int


# --- jobs ------------------------------------------------------------------------------------

class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "corpus_ids": ["cor_3f2a9c0d1e4b5a69"],
        "config": {"seed": 1234, "stages": [{"name": "url_dedup"}, {"name": "exact_dedup", "lowercase": True}]}}]})

    corpus_ids: list[str] = Field(min_length=1, max_length=1000)
    config: dict[str, Any] = Field(description="a curation config without `inputs`/`output` (the service sets them)")

    def validated_ids(self) -> list[str]:
        """The ids, de-duplicated in order; ValueError names the first that is not a corpus id."""
        bad = [c for c in self.corpus_ids if not re.match(CORPUS_ID, c)]
        if bad:
            raise ValueError(f"corpus_ids: {bad[0]!r} is not a corpus id")
        return list(dict.fromkeys(self.corpus_ids))


class StageProgress(_Out):
    position: int
    name: str
    state: Literal["pending", "running", "done"]
    docs_in: int | None
    docs_out: int | None
    tokens_in: int | None
    tokens_out: int | None
    dropped: dict[str, int] | None
    seconds: float | None
    started_at: datetime | None
    finished_at: datetime | None


class JobOut(_Out):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "job_a1b2c3d4e5f60718", "state": "running", "corpus_ids": ["cor_3f2a9c0d1e4b5a69"],
        "config": {"seed": 1234, "stages": [{"name": "url_dedup"}]}, "phase": "url_dedup (2/2)",
        "progress": 0.5, "error": None, "docs_in": 200, "docs_out": None, "manifest_id": None,
        "stages": [], "created_at": "2026-11-29T10:00:00Z", "started_at": "2026-11-29T10:00:01Z",
        "finished_at": None}]})

    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    corpus_ids: list[str]
    config: dict[str, Any]
    phase: str | None
    progress: float = Field(ge=0, le=1, description="finished steps / all steps")
    error: str | None
    docs_in: int | None
    docs_out: int | None
    manifest_id: str | None = Field(description="set once OUTPUT/manifest.json exists (a tokenize stage ran)")
    stages: list[StageProgress]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class RejectsPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "job_a1b2c3d4e5f60718", "total": 1, "limit": 50, "offset": 0,
        "items": [{"id": "b900", "stage": "url_dedup", "reason": "duplicate_url",
                   "detail": {"kept_id": "a003", "canonical_url": "https://site.org/page/3"},
                   "domain": "web", "source": "b.jsonl.gz", "n_tokens": 2}]}]})

    job_id: str
    total: int
    limit: int
    offset: int
    items: list[dict[str, Any]]


class Why(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "job_a1b2c3d4e5f60718", "doc_id": "b950", "status": "rejected", "stage": "exact_dedup",
        "reason": "exact_duplicate", "detail": {"kept_id": "a007"}, "domain": "web", "source": "b.jsonl.gz",
        "n_tokens": 21, "text": "PAGE 7 says hello ..."}]})

    job_id: str
    doc_id: str
    status: Literal["rejected", "kept"]
    stage: str | None = None
    reason: str | None = None
    detail: Any = None
    domain: str | None = None
    source: str | None = None
    n_tokens: int | None = None
    text: str | None = Field(default=None, description="first 4096 characters of a rejected document")


# --- manifests -------------------------------------------------------------------------------

class ManifestSummary(_Out):
    id: str
    job_id: str | None
    dataset_id: str
    shards: int
    tokens: int
    bytes: int
    tokenizer_sha256: str
    created_at: datetime
    url: str = Field(description="GET this for the manifest with absolute shard URLs")


class ManifestList(BaseModel):
    items: list[ManifestSummary]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


# --- training jobs ---------------------------------------------------------------------------

# Which training command a job runs (api/posttrain_jobs.py maps each to its command).
TrainingKind = Literal["pretrain", "sft", "reward_model", "ppo", "dpo", "redteam"]


class TrainingJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "manifest_id": "man_0c1d2e3f4a5b6c7d",
        "config": {"preset": "tiny", "steps": 30, "seq_len": 64, "global_batch_tokens": 1024, "micro_batch": 8}}]})

    kind: TrainingKind = Field(default="pretrain", description=(
        "pretrain: `flywheel train` on `manifest_id`. The others start from `init_from_job`'s latest checkpoint "
        "and read `config.data` (see api/posttrain_jobs.py): sft chat, reward_model and dpo preference pairs, "
        "ppo prompts (with `reward_from_job` or `config.reward`), redteam adversarial prompts"))
    manifest_id: str | None = Field(default=None, pattern=MANIFEST_ID, description="pretrain: the manifest to train on")
    init_from_job: str | None = Field(default=None, pattern=TRAINING_JOB_ID, description=(
        "post-training: a succeeded training job whose latest complete checkpoint the run starts from"))
    reward_from_job: str | None = Field(default=None, pattern=TRAINING_JOB_ID, description=(
        "ppo (and optionally redteam): a succeeded reward_model job, the scorer"))
    config: dict[str, Any] = Field(default_factory=dict, description=(
        "pretrain: training.train_config.TrainConfig fields without `manifest`, `out_dir`, `cache_dir`, `workers`, "
        "`min_workers` (the service sets them: one process in a Ray actor). Post-training: the kind's config "
        "(training.sft.SFTConfig, training.preference_config.RewardModelConfig and DPOConfig, ...) without "
        "`init_checkpoint`, `out_dir`, `workers`. `data` and `eval_files` are absolute paths under the service's "
        "allowed roots or its storage: JSONL files, or a curated post-training set (posttrain_manifest.json)"))


class LossPoint(BaseModel):
    step: int
    loss: float


class EvalPoint(BaseModel):
    step: int
    tokens: int = Field(description="training tokens seen at this step")
    loss: float | None = Field(description="mean nats per token over every eval file (None: no tokens)")
    perplexity: float | None
    domains: dict[str, float | None] = Field(description="domain -> loss, summed over the eval files")


class CurvePoint(BaseModel):
    step: int
    value: float | None = Field(description="None where not finite")


class TrainingJobSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "trn_5e6f7a8b9c0d1e2f", "manifest_id": "man_0c1d2e3f4a5b6c7d", "state": "running",
        "phase": "training", "error": None, "config": {"preset": "tiny", "steps": 30}, "steps": 30, "step": 12,
        "loss": 7.91, "tokens_per_s": 2350.4, "created_at": "2026-11-29T10:00:00Z",
        "started_at": "2026-11-29T10:00:02Z", "finished_at": None}]})

    id: str
    kind: TrainingKind = "pretrain"
    manifest_id: str | None = Field(description="pretrain: its manifest; post-training: its starting job's, if any")
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    phase: str | None
    error: str | None
    config: dict[str, Any] = Field(description="the validated config, less the fields the service sets")
    steps: int | None = Field(description="optimiser steps the run will take (None: the command's default)")
    step: int | None = Field(description="latest step in metrics.jsonl (None before the first)")
    loss: float | None
    tokens_per_s: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrainingJobOut(TrainingJobSummary):
    loss_curve: list[LossPoint] = Field(description="one point per step, evenly thinned to at most `max_points`")
    checkpoints: list[str] = Field(description="complete checkpoint folders under checkpoints/, oldest first")
    eval_curve: list[EvalPoint] = Field(default_factory=list, description=(
        "one point per evaluation (config `eval_files`, every `eval_every_steps` and at the end), thinned "
        "like loss_curve; empty without evaluation"))
    curves: dict[str, list[CurvePoint]] = Field(default_factory=dict, description=(
        "every numeric series the kind logs: metrics.jsonl keys as named (loss, accuracy, margin, reward_mean, "
        "kl, clip_frac, ...) and eval.jsonl keys as `eval_<key>`, nested ones joined by `_` (eval_overall_loss, "
        "eval_margin_p05); thinned like loss_curve"))


class RedTeamCategory(BaseModel):
    name: str
    failure_rate: float | None


class RedTeamReport(BaseModel):
    job_id: str
    report: dict[str, Any] = Field(description="OUT/redteam.json as the red-team command wrote it")
    failure_rates: list[RedTeamCategory] = Field(description="failure rate per category, from the report")


class RedTeamResponses(BaseModel):
    job_id: str
    total: int
    limit: int
    offset: int
    items: list[dict[str, Any]] = Field(description="OUT/responses.jsonl lines (contract.layout.RedteamRun): one per prompt with its verdict")


class TrainingJobList(BaseModel):
    items: list[TrainingJobSummary]
    total: int
    limit: int
    offset: int


# --- ablations -------------------------------------------------------------------------------

class AblationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "corpus_id": "cor_3f2a9c0d1e4b5a69",
        "config": {"seed": 1234, "token_budget": 200_000, "eval_every_steps": 10,
                   "train": {"preset": "tiny", "seq_len": 128, "global_batch_tokens": 4096, "micro_batch": 8},
                   "holdout": {"docs_per_domain": 40}, "tokenizer": {"vocab_size": 4096},
                   "variants": [{"name": "raw"},
                                {"name": "dedup", "stages": ["url_dedup", "exact_dedup",
                                                             {"name": "minhash_dedup", "threshold": 0.8}]}]}}]})

    corpus_id: str = Field(pattern=CORPUS_ID)
    config: dict[str, Any] = Field(description=(
        "workflows.ablation.config.AblationConfig fields without `corpus`/`output` (the service sets them); "
        "variants give inline `stages` (the service reads no `config:` file from its own disk)"))


class AblationTrainPoint(BaseModel):
    step: int
    tokens: int | None = Field(description="tokens trained on so far")
    loss: float | None = Field(description="training loss of the step (None if not finite)")


class AblationEvalPoint(BaseModel):
    step: int
    tokens: int | None = Field(description="tokens trained on so far")
    loss: float | None = Field(description="held-out loss over every domain's evaluation set")
    domains: dict[str, float | None] = Field(description="held-out loss per domain")


class AblationCurves(BaseModel):
    """One training run of an ablation: a variant at a budget with a seed."""

    variant: str
    budget: str = Field(description="the budget's label, as the config gives it (\"4x\", \"2000000\")")
    seed: int
    train: list[AblationTrainPoint]
    eval: list[AblationEvalPoint]


class AblationBudget(BaseModel):
    label: str = Field(description="as the config gives it: tokens (\"2000000\") or a multiple of the smallest "
                                   "curated variant (\"4x\")")
    tokens: int = Field(description="tokens every variant trained on at this budget")
    steps: int


class AblationScores(BaseModel):
    """A run's held-out measures (loss, perplexity, bits_per_byte, ...) overall and per domain."""

    overall: dict[str, float | None]
    domains: dict[str, dict[str, float | None]]


class AblationRunResult(BaseModel):
    variant: str
    budget: str = Field(description="the budget's label")
    seed: int
    steps: int
    trained_tokens: int
    epochs: float | None = Field(description="passes over the variant's curated tokens")
    seconds: float | None
    dir: str = Field(description="the run's folder, relative to the ablation's output")
    eval: AblationScores = Field(description="final held-out measures")
    novel: AblationScores | None = Field(default=None, description=(
        "the same on the held-out text without lines frequent in the raw corpus (None: not measured)"))


class AblationDifference(BaseModel):
    """Variant minus baseline, paired by seed: mean ± t(0.975, n-1) * sd / sqrt(n)."""

    n: int
    mean: float | None
    sd: float | None
    lo: float | None = Field(description="the 95% interval's lower end")
    hi: float | None
    exceeds_noise: bool = Field(description="the interval excludes 0")


class AblationSummaryRow(BaseModel):
    variant: str
    budget: str = Field(description="the budget's label")
    measure: str = Field(description="one of the result's `measures` (\"loss\", \"novel_loss\")")
    domain: str = Field(description="\"overall\" or a held-out domain")
    n: int = Field(description="seeds")
    mean: float | None
    sd: float | None = Field(description="sample standard deviation over the seeds (None for one seed)")
    vs_baseline: AblationDifference | None = Field(description="None for the baseline itself or fewer than 2 seeds")


class AblationTableRow(BaseModel):
    variant: str
    tokens: int | None = Field(default=None, description="tokens in the variant's curated shards")
    docs_kept: int | None = None
    loss: dict[str, float | None] = Field(description="final held-out loss per domain")
    overall: float | None = Field(description="final held-out loss over every domain")


class AblationLeakage(BaseModel):
    near_duplicate_jaccard: float
    held_out_docs: int
    removed_from_training_pool: int
    pairs_found: int = Field(description="near-duplicate (held-out, training) pairs left: 0 = no leakage")


class AblationSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "abl_9a8b7c6d5e4f3a2b", "corpus_id": "cor_3f2a9c0d1e4b5a69", "state": "running",
        "phase": "train (1/2 done)", "error": None, "variants": ["raw", "dedup"],
        "config": {"token_budget": 200_000, "variants": [{"name": "raw"}, {"name": "dedup", "stages": ["url_dedup"]}]},
        "created_at": "2026-11-29T10:00:00Z", "started_at": "2026-11-29T10:00:02Z", "finished_at": None}]})

    id: str
    corpus_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    phase: str | None
    error: str | None
    config: dict[str, Any] = Field(description="the config as submitted (validated), without `corpus`/`output`")
    variants: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AblationOut(AblationSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        **AblationSummary.model_config["json_schema_extra"]["examples"][0],
        "state": "succeeded", "phase": "done", "finished_at": "2026-11-29T10:20:00Z", "domains": ["code", "web"],
        "table": [{"variant": "raw", "tokens": 180_311, "docs_kept": 1200, "loss": {"code": 5.91, "web": 6.02},
                   "overall": 5.97},
                  {"variant": "dedup", "tokens": 150_022, "docs_kept": 1011, "loss": {"code": 5.84, "web": 5.95},
                   "overall": 5.90}],
        "leakage": {"near_duplicate_jaccard": 0.5, "held_out_docs": 80, "removed_from_training_pool": 3,
                    "pairs_found": 0},
        "budgets": [{"label": "200000", "tokens": 200_704, "steps": 49}], "seeds": [1, 2], "baseline": "raw",
        "measures": ["loss"],
        "runs": [{"variant": v, "budget": "200000", "seed": seed, "steps": 49, "trained_tokens": 200_704,
                  "epochs": 1.1, "seconds": 61.0, "dir": f"variants/{v}/runs/200000-seed{seed}",
                  "eval": {"overall": {"loss": loss}, "domains": {"web": {"loss": loss}}}, "novel": None}
                 for v, seed, loss in (("raw", 1, 5.96), ("raw", 2, 5.98), ("dedup", 1, 5.89), ("dedup", 2, 5.91))],
        "summary": [{"variant": "raw", "budget": "200000", "measure": "loss", "domain": "overall", "n": 2,
                     "mean": 5.97, "sd": 0.0141, "vs_baseline": None},
                    {"variant": "dedup", "budget": "200000", "measure": "loss", "domain": "overall", "n": 2,
                     "mean": 5.90, "sd": 0.0141, "vs_baseline": {"n": 2, "mean": -0.07, "sd": 0.0, "lo": -0.07,
                                                                 "hi": -0.07, "exceeds_noise": True}}],
        "result_error": None,
        "curves": {f"{v}/200000-seed1": {"variant": v, "budget": "200000", "seed": 1,
                                         "train": [{"step": 1, "tokens": 4096, "loss": 8.3}],
                                         "eval": [{"step": 49, "tokens": 200_704, "loss": loss,
                                                   "domains": {"code": loss - 0.06, "web": loss + 0.05}}]}
                   for v, loss in (("raw", 5.97), ("dedup", 5.90))}}]})

    domains: list[str] | None = Field(description="held-out domains (from ablation.json; None before it exists)")
    budgets: list[AblationBudget] | None = Field(description="ascending by tokens, once ablation.json exists")
    seeds: list[int] | None = Field(description="training seeds, once ablation.json exists")
    baseline: str | None = Field(description="the variant paired differences are taken against")
    measures: list[str] | None = Field(description="the summary's measures: loss, novel_loss")
    runs: list[AblationRunResult] | None = Field(description="one per (variant, budget, seed), once ablation.json "
                                                            "exists")
    summary: list[AblationSummaryRow] | None = Field(description=(
        "per (variant, budget, measure, domain): mean ± sd over the seeds and the paired difference against the "
        "baseline with its 95% interval, once ablation.json exists"))
    table: list[AblationTableRow] | None = Field(description="one row per variant at the largest budget (mean over "
                                                             "seeds), once ablation.json exists")
    leakage: AblationLeakage | None = Field(description="the held-out sets' leakage check, once ablation.json exists")
    result_error: str | None = Field(description="why ablation.json could not be read, if it exists but does not fit")
    curves: dict[str, AblationCurves] = Field(description=(
        "per training run (key `<variant>/<budget>-seed<seed>`, every run the config asks for): training loss per "
        "step and held-out loss per evaluation, each evenly thinned to at most `max_points`; partial while it trains"))


class AblationList(BaseModel):
    items: list[AblationSummary]
    total: int
    limit: int
    offset: int


# --- tokens ----------------------------------------------------------------------------------

class TokenOut(_Out):
    """An API token as stored: its hash never leaves the database."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "tok_0f1e2d3c4b5a6978", "name": "ci-bot", "scope": "admin", "state": "active",
        "created_at": "2026-12-01T10:00:00Z", "last_used_at": "2026-12-06T09:12:00Z",
        "expires_at": "2027-01-01T10:00:00Z", "revoked_at": None}]})

    id: str
    name: str
    scope: Literal["read", "admin"]
    state: Literal["active", "expired", "revoked"]
    created_at: datetime
    last_used_at: datetime | None = Field(description="refreshed at most once a minute")
    expires_at: datetime | None = Field(description="null: never expires")
    revoked_at: datetime | None


class TokenList(BaseModel):
    items: list[TokenOut]
    total: int
