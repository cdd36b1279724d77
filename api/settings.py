"""Service settings, read from `FLYWHEEL_*` environment variables.

Embedded default (nothing set): everything lives under `./flywheel-data/` (`FLYWHEEL_HOME`):
a SQLite file `flywheel.db` and a storage root `storage/`; Ray starts locally on first use.
Production: `FLYWHEEL_DATABASE_URL=postgresql://...`, `FLYWHEEL_STORAGE=s3://bucket/prefix`,
`RAY_ADDRESS=ray://...` (read by `curation.runtime`).

Paths are made absolute here: Ray workers that run jobs do not share the server's cwd.
Job actors write their progress into the database themselves, so SQLite (a local file) suits
the embedded Ray only; with `RAY_ADDRESS` use PostgreSQL and storage every worker can reach.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

GiB = 1024**3
MiB = 1024**2

# env var -> field. Lists are comma-separated (s3:// URIs contain ':').
ENV_FIELDS = {
    "FLYWHEEL_HOME": "home",
    "FLYWHEEL_DATABASE_URL": "database_url",
    "FLYWHEEL_STORAGE": "storage",
    "FLYWHEEL_ALLOWED_ROOTS": "allowed_roots",
    "FLYWHEEL_MAX_UPLOAD_BYTES": "max_upload_bytes",
    "FLYWHEEL_SCAN_INLINE_BYTES": "scan_inline_bytes",
    "FLYWHEEL_SCAN_MEMORY_BYTES": "scan_memory_bytes",
    "FLYWHEEL_AUTH": "auth",
    "FLYWHEEL_HOST": "host",
    "FLYWHEEL_INSECURE_NO_AUTH_ON_PUBLIC_INTERFACE": "insecure_no_auth_on_public_interface",
    "FLYWHEEL_TOKEN_PEPPER": "token_pepper",
    "FLYWHEEL_PUBLIC_URL": "public_url",
    "FLYWHEEL_REAP_INTERVAL_S": "reap_interval_s",
    "FLYWHEEL_WRITE_LIMIT_PER_MINUTE": "write_limit_per_minute",
    "FLYWHEEL_TOKEN_FAILURE_LIMIT_PER_MINUTE": "token_failure_limit_per_minute",
}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(description="folder for the embedded SQLite file and storage root")
    database_url: str = Field(description="SQLAlchemy URL; postgresql:// uses psycopg 3")
    storage: str = Field(description="storage root: a local folder or a pyarrow.fs URI (s3://bucket/prefix)")
    allowed_roots: tuple[str, ...] = Field(
        default=(), description="folders/URI prefixes whose files may be registered as corpora by URI"
    )
    max_upload_bytes: int = Field(default=16 * GiB, ge=1, description="largest corpus file accepted by upload")
    scan_inline_bytes: int = Field(
        default=32 * MiB, ge=0, description="corpora up to this size are counted before the upload answers"
    )
    scan_memory_bytes: int = Field(
        default=8 * GiB, ge=64 * MiB,
        description="address space of the child process that counts a corpus (pyarrow alone maps ~1.5 GiB)")
    auth: bool = Field(default=True, description="require bearer tokens (off: `flywheel serve --no-auth`)")
    host: str = Field(default="127.0.0.1", description="interface the service listens on (`flywheel serve --host`)")
    insecure_no_auth_on_public_interface: bool = Field(
        default=False, description="allow auth off on a non-loopback interface: anyone who reaches it is admin")
    token_pepper: str = Field(default="", repr=False, description="HMAC key mixed into stored token hashes")
    public_url: str | None = Field(default=None, description="base URL put into manifests (default: the request's)")
    reap_interval_s: float = Field(default=15.0, gt=0, description="how often running jobs are checked for a live actor")
    job_start_grace_s: float = Field(default=60.0, ge=0, description="a queued job gets this long to start its actor")
    # Token buckets (api/rate_limit.py): a burst of up to the whole minute's allowance, then the
    # steady rate; 0 turns a limit off. Writes start Ray actors and store files, so a few hundred
    # a minute is far above what a person or a CI pipeline submits, and far below a runaway loop.
    write_limit_per_minute: int = Field(default=300, ge=0, description="writes (POST) per token and minute")
    token_failure_limit_per_minute: int = Field(
        default=20, ge=0, description="unknown, revoked or expired tokens per client address and minute")

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Settings from `env` (default os.environ); keyword overrides win over the environment."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {field: env[name] for name, field in ENV_FIELDS.items() if env.get(name)}
        for flag in ("auth", "insecure_no_auth_on_public_interface"):
            if flag in values:
                values[flag] = values[flag].strip().lower() not in ("0", "false", "no", "off")
        values.update({k: v for k, v in overrides.items() if v is not None})
        home = Path(values.get("home") or "flywheel-data").expanduser().absolute()
        values["home"] = home
        values.setdefault("database_url", f"sqlite:///{home / 'flywheel.db'}")
        storage = str(values.get("storage") or home / "storage")
        values["storage"] = storage if "://" in storage else str(Path(storage).expanduser().absolute())
        return cls.model_validate(values)

    def prepare(self) -> None:
        """Create the home folder when the embedded SQLite file lives there."""
        if self.database_url.startswith("sqlite:///"):
            Path(self.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
