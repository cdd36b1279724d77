"""A curation run as validated data.

    inputs:            # paths or pyarrow.fs URIs: files or folders of JSONL(.gz|.zst) / Parquet
      - data/raw/
      - {path: s3://bucket/code/, domain: code}
    output: out/run1
    seed: 1234
    default_domain: web
    stages:
      - {name: url_dedup}
      - {name: exact_dedup, lowercase: true}

Every stage's parameters are checked against that stage's `Params` model here, so an unknown
stage or parameter fails before Ray starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.io.records import DOCUMENT_SCHEMA
from curation.stages import STAGES, StageUnavailable, UnknownStage, stage_class
from curation.stages.base import StageParams

DOMAIN_PATTERN = r"^[a-z][a-z0-9_\-]{0,31}$"


ConfigModel = TypeVar("ConfigModel", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot run: the message is one line for the user."""


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    # Domain for records of this input that carry none (overrides the run's default_domain).
    domain: str | None = Field(default=None, pattern=DOMAIN_PATTERN)


class StageSpec(BaseModel):
    """`{name: <stage>, <param>: <value>, ...}`, parsed into the stage's own Params model."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    params: StageParams

    @model_validator(mode="before")
    @classmethod
    def _split(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ValueError("a stage is a mapping with a 'name' key, e.g. {name: url_dedup}")
        if "params" in raw and isinstance(raw["params"], StageParams):
            return raw
        values = {k: v for k, v in raw.items() if k != "name"}
        try:
            params_model = stage_class(raw["name"]).Params
        except (UnknownStage, StageUnavailable) as e:
            raise ValueError(str(e)) from None
        return {"name": raw["name"], "params": params_model.model_validate(values)}

    def dump(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.model_dump(mode="json")}


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[InputSpec] = Field(min_length=1)
    output: str
    seed: int = 0
    default_domain: str = Field(default="web", pattern=DOMAIN_PATTERN)
    stages: list[StageSpec] = Field(default_factory=list)
    # Records repeating an earlier record's id: `reject` (kept first, later ones rejected with
    # reason duplicate_id) or `error` (the run stops). See curation/io/unique_ids.py.
    duplicate_ids: Literal["reject", "error"] = "reject"

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, v: Any) -> Any:
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"path": x} if isinstance(x, str) else x for x in (v or [])]

    @model_validator(mode="after")
    def _unique_stage_names(self) -> "PipelineConfig":
        seen: set[str] = set()
        for s in self.stages:
            if s.name in seen:
                raise ValueError(f"stage {s.name!r} appears twice; each stage runs once per run")
            seen.add(s.name)
        return self

    @model_validator(mode="after")
    def _columns_flow(self) -> "PipelineConfig":
        """Each stage's `reads` are there when it runs: the reader's columns plus what an earlier
        stage `writes`. Checked before any work starts (NeMo Curator's inputs()/outputs())."""
        available = set(DOCUMENT_SCHEMA.names)
        for spec in self.stages:
            stage = stage_class(spec.name)
            missing = [c for c in stage.reads if c not in available]
            if missing:
                writers = sorted({n for n in STAGES if set(missing) & set(stage_class(n).writes)})
                hint = f" (add {' or '.join(writers)} before it)" if writers else ""
                raise ValueError(f"stage {spec.name!r} reads {', '.join(missing)}, which neither the reader "
                                 f"nor an earlier stage writes{hint}")
            available.update(stage.writes)
        return self

    def dump(self) -> dict[str, Any]:
        return {
            "inputs": [i.model_dump(mode="json", exclude_none=True) for i in self.inputs],
            "output": self.output,
            "seed": self.seed,
            "default_domain": self.default_domain,
            "stages": [s.dump() for s in self.stages],
            "duplicate_ids": self.duplicate_ids,
        }

    def fingerprint(self) -> str:
        """sha256 of the config minus where it reads/writes: same recipe -> same hash."""
        d = self.dump()
        recipe = {k: d[k] for k in ("seed", "default_domain", "stages", "duplicate_ids")}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def format_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"] if p not in ("params",))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown parameter"
    return f"{where}: {msg}" if where else msg


def validate_config(model: type[ConfigModel], data: Any, what: str, **overrides: Any) -> ConfigModel:
    """`model` from a mapping; `overrides` replace keys when not None; errors are one ConfigError line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping at the top level")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{what}: {format_validation_error(e)}") from None


def read_yaml_config(path: str | Path, what: str) -> Any:
    """The parsed YAML of a config file (empty file: {}), or a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p}: not valid YAML ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None


def parse_config(data: dict[str, Any], **overrides: Any) -> PipelineConfig:
    """Validate a config mapping; `overrides` (inputs=, output=) replace keys when not None."""
    return validate_config(PipelineConfig, data, "config", **overrides)


def load_config(path: str | Path, **overrides: Any) -> PipelineConfig:
    return parse_config(read_yaml_config(path, "config"), **overrides)
