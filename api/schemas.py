"""Request and response bodies of the /v1 API (OpenAPI is generated from these)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.ids import CORPUS_ID, MANIFEST_ID
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

class TrainingJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "manifest_id": "man_0c1d2e3f4a5b6c7d",
        "config": {"preset": "tiny", "steps": 30, "seq_len": 64, "global_batch_tokens": 1024, "micro_batch": 8}}]})

    manifest_id: str = Field(pattern=MANIFEST_ID)
    config: dict[str, Any] = Field(default_factory=dict, description=(
        "training.train_config.TrainConfig fields without `manifest`, `out_dir`, `cache_dir`, `workers`, "
        "`min_workers` (the service sets them: one process in a Ray actor)"))


class LossPoint(BaseModel):
    step: int
    loss: float


class TrainingJobSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "trn_5e6f7a8b9c0d1e2f", "manifest_id": "man_0c1d2e3f4a5b6c7d", "state": "running",
        "phase": "training", "error": None, "config": {"preset": "tiny", "steps": 30}, "steps": 30, "step": 12,
        "loss": 7.91, "tokens_per_s": 2350.4, "created_at": "2026-11-29T10:00:00Z",
        "started_at": "2026-11-29T10:00:02Z", "finished_at": None}]})

    id: str
    manifest_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    phase: str | None
    error: str | None
    config: dict[str, Any] = Field(description="the validated TrainConfig, less the fields the service sets")
    steps: int = Field(description="optimiser steps the run will take")
    step: int | None = Field(description="latest step in metrics.jsonl (None before the first)")
    loss: float | None
    tokens_per_s: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrainingJobOut(TrainingJobSummary):
    loss_curve: list[LossPoint] = Field(description="one point per step, evenly thinned to at most `max_points`")
    checkpoints: list[str] = Field(description="complete checkpoint folders under checkpoints/, oldest first")


class TrainingJobList(BaseModel):
    items: list[TrainingJobSummary]
    total: int
    limit: int
    offset: int
