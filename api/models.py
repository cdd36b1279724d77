"""The service's tables (SQLAlchemy 2 typed ORM). Portable: SQLite and PostgreSQL.

    api_tokens   bearer tokens, stored as HMAC-SHA256 hashes; revocable, optionally expiring
    corpora      uploaded or registered input files and their counts
    jobs         curation runs: state machine queued -> running -> succeeded|failed|cancelled
    job_stages   per-stage progress of a job, written by the job's Ray actor
    manifests    token-shard manifests produced by finished jobs
    training_jobs  training runs (pretraining on a manifest, or a post-training `kind`): same state
                 machine as jobs, metrics in out_uri
    ablations    data ablations on a corpus: same state machine, curves and results in out_uri

Migrations (`api/migrations/versions/`) create these tables; keep the two in step.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
STAGE_STATES = ("pending", "running", "done")
CORPUS_STATES = ("scanning", "ready", "invalid")
SCOPES = ("read", "admin")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores naive text, PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use api.models.utcnow()")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]  # refreshed at most once a minute (api/auth.py)
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # None: never expires

    def state_at(self, now: datetime) -> str:
        """`revoked`, `expired` or `active` (the only state a request is let through in)."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at is not None and now >= self.expires_at else "active"


class Corpus(Base):
    __tablename__ = "corpora"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(16))  # "upload" | "uri"
    uri: Mapped[str] = mapped_column(Text)  # what jobs read: local absolute path or pyarrow.fs URI
    domain: Mapped[str | None] = mapped_column(String(32))  # for records that carry none
    sha256: Mapped[str | None] = mapped_column(String(64))  # uploads only (a folder has none)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    documents: Mapped[int | None] = mapped_column(BigInteger)
    malformed: Mapped[int | None] = mapped_column(BigInteger)
    text_bytes: Mapped[int | None] = mapped_column(BigInteger)
    domains: Mapped[dict[str, Any] | None]
    files: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    scanned_at: Mapped[datetime | None]

    def pipeline_input(self) -> dict[str, str]:
        """This corpus as one entry of a pipeline's `inputs` (its domain only when it has one)."""
        return {"path": self.uri, **({"domain": self.domain} if self.domain else {})}


class JobLifecycle:
    """The columns every kind of job shares: api/jobs.py moves any table with them through
    JOB_STATES (conditional transitions, cancel, reaper)."""

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    phase: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Times the service started the job's actor: the reaper gives up on a queued job after
    # JobRunner.max_start_attempts (api/jobs.py), with the reason.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Job(JobLifecycle, Base):
    __tablename__ = "jobs"

    corpus_ids: Mapped[list[str]]
    config: Mapped[dict[str, Any]]  # the validated PipelineConfig, inputs and output filled in
    output_uri: Mapped[str] = mapped_column(Text)
    docs_in: Mapped[int | None] = mapped_column(BigInteger)
    docs_out: Mapped[int | None] = mapped_column(BigInteger)
    manifest_id: Mapped[str | None] = mapped_column(String(32))

    stages: Mapped[list["JobStage"]] = relationship(
        order_by="JobStage.position", cascade="all, delete-orphan", lazy="selectin"
    )


class JobStage(Base):
    __tablename__ = "job_stages"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    docs_in: Mapped[int | None] = mapped_column(BigInteger)
    docs_out: Mapped[int | None] = mapped_column(BigInteger)
    tokens_in: Mapped[int | None] = mapped_column(BigInteger)
    tokens_out: Mapped[int | None] = mapped_column(BigInteger)
    dropped: Mapped[dict[str, Any] | None]
    seconds: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Manifest(Base):
    __tablename__ = "manifests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), unique=True)
    uri: Mapped[str] = mapped_column(Text)  # manifest.json: local absolute path or pyarrow.fs URI
    dataset_id: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))  # of manifest.json as registered
    tokenizer_sha256: Mapped[str] = mapped_column(String(64), index=True)
    shards: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingJob(JobLifecycle, Base):
    """A training run on a registered manifest. Its step, loss and checkpoints live in files under
    `out_uri` (metrics.jsonl, checkpoints/), written by the trainer; the row holds the state."""

    __tablename__ = "training_jobs"

    # The pretraining manifest: a pretrain job's data; None for post-training kinds (api/posttrain_jobs.py)
    manifest_id: Mapped[str | None] = mapped_column(ForeignKey("manifests.id"), index=True)
    config: Mapped[dict[str, Any]]  # the validated config of the kind's command, service fields filled in
    out_uri: Mapped[str] = mapped_column(Text)  # local folder: metrics.jsonl, checkpoints/, train_config.json
    # pretrain | sft | reward_model | ppo | dpo | redteam: which training command the actor runs
    kind: Mapped[str] = mapped_column(String(16), default="pretrain", server_default="pretrain")


class Ablation(JobLifecycle, Base):
    """A data ablation on one corpus (workflows.ablation): its curves and results live in files
    under `out_uri` (variants/*/train/, ablation.json), written by the runner; the row holds the state."""

    __tablename__ = "ablations"

    corpus_id: Mapped[str] = mapped_column(ForeignKey("corpora.id"), index=True)
    # The validated AblationConfig less `corpus` and `output`: the runner gets those from
    # `corpus_id` and `out_uri` when it starts.
    config: Mapped[dict[str, Any]]
    out_uri: Mapped[str] = mapped_column(Text)  # local folder: the runner's OUT
