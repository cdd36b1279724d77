"""A data ablation as validated data: one raw corpus, several curation recipes, one model recipe.

    corpus: build/demo-corpus/corpus      # paths/URIs, as a pipeline config's `inputs`
    output: build/ablation
    seed: 1234
    token_budget: 2_000_000               # every variant trains on exactly this many tokens
    train: {preset: tiny, seq_len: 128, global_batch_tokens: 4096, micro_batch: 8}
    eval_every_steps: 50
    holdout: {docs_per_domain: 40, near_duplicate_jaccard: 0.5}
    tokenizer: {vocab_size: 8192}
    variants:
      - {name: raw}                                        # read + tokenize only
      - {name: dedup, stages: [url_dedup, exact_dedup, {name: minhash_dedup, threshold: 0.8}]}
      - {name: full, config: curation/configs/demo.yaml}   # that file's stages

What is held equal across variants (so the only difference is the data): the held-out sets, the
tokenizer (trained once, on the training pool), the model preset and overrides, batch geometry,
optimiser recipe, seed, and the number of tokens trained on. A variant whose curated data holds
fewer tokens than the budget repeats it (more epochs): that is the trade the article makes.

Every variant's `tokenize` stage is replaced by one that uses the shared tokenizer; a `tokenize`
stage in a variant's list only contributes its other parameters (shard size, add_bos).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.config import (
    DOMAIN_PATTERN,
    ConfigError,
    InputSpec,
    StageSpec,
    format_validation_error,
    read_yaml_config,
    validate_config,
)

VARIANT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,39}$"
# TrainConfig fields the ablation owns: one value for every variant, set by the runner.
RUNNER_TRAIN_KEYS = ("manifest", "out_dir", "cache_dir", "steps", "seed", "workers", "min_workers", "resume",
                     "eval_files", "eval_every_steps")  # fmt: skip


class HoldoutSpec(BaseModel):
    """The held-out evaluation sets: a clean slice per domain no training set may come near."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    docs_per_domain: int = Field(default=40, ge=1)
    # Candidates drawn per domain (x docs_per_domain) before the clean filter keeps the first ones.
    oversample: float = Field(default=3.0, ge=1.0)
    # Training documents with an estimated word-5-gram Jaccard at or above this to any held-out
    # document leave the training pool: stricter than dedup's 0.8, so paraphrase-level copies
    # (boilerplate-heavy licences, mirrored READMEs) cannot leak the answers either.
    near_duplicate_jaccard: float = Field(default=0.5, gt=0.0, le=1.0)
    # What "clean" means: a held-out candidate must pass these stages (run on the candidates).
    clean_stages: list[StageSpec] = Field(
        default_factory=lambda: [StageSpec.model_validate(s) for s in ("exact_dedup", "heuristics")]
    )
    # Domains without an evaluation set (e.g. ones too small to spare documents).
    skip_domains: list[str] = Field(default_factory=list)


class TokenizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(default=None, description="an existing tokenizer.json; else one is trained")
    vocab_size: int = Field(default=8192, ge=512)
    train_sample_docs: int = Field(default=20_000, ge=100)


class VariantSpec(BaseModel):
    """One curation recipe: inline `stages`, or the stages of a pipeline config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=VARIANT_NAME_PATTERN)
    stages: list[StageSpec] = Field(default_factory=list)
    config: str | None = Field(default=None, description="a pipeline config whose stages this variant runs")
    description: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> VariantSpec:
        if self.config is not None and self.stages:
            raise ValueError(f"variant {self.name!r}: give `stages` or `config`, not both")
        return self


class AblationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: list[InputSpec] = Field(min_length=1)
    output: str
    seed: int = 0
    default_domain: str = Field(default="web", pattern=DOMAIN_PATTERN)
    token_budget: int = Field(ge=1, description="tokens every variant trains on")
    train: dict[str, Any] = Field(default_factory=lambda: {"preset": "tiny"}, description="TrainConfig fields")
    eval_every_steps: int | None = Field(default=None, ge=1, description="None: evaluate at the end only")
    holdout: HoldoutSpec = Field(default_factory=HoldoutSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    variants: list[VariantSpec] = Field(min_length=1)
    # Variants trained at once (Ray tasks of `cpus_per_variant` CPUs each); None: as the cluster allows.
    parallel: int | None = Field(default=None, ge=1)
    cpus_per_variant: float = Field(default=1.0, gt=0)

    @field_validator("corpus", mode="before")
    @classmethod
    def _corpus(cls, v: Any) -> Any:
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"path": x} if isinstance(x, str) else x for x in (v or [])]

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = [k for k in RUNNER_TRAIN_KEYS if k in v]
        if owned:
            raise ValueError(f"{', '.join(owned)} are set by the ablation for every variant")
        return v

    @model_validator(mode="after")
    def _unique_variants(self) -> AblationConfig:
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique: {', '.join(dupes)}")
        return self

    def dump(self) -> dict[str, Any]:
        """The config as JSON data that parses back to itself (stage parameters included:
        pydantic's own dump knows only the StageParams base class)."""
        data = self.model_dump(mode="json", exclude={"variants", "holdout"})
        data["corpus"] = [c.model_dump(mode="json", exclude_none=True) for c in self.corpus]
        data["holdout"] = {**self.holdout.model_dump(mode="json", exclude={"clean_stages"}),
                           "clean_stages": [s.dump() for s in self.holdout.clean_stages]}
        data["variants"] = [{**v.model_dump(mode="json", exclude={"stages"}), "stages": [s.dump() for s in v.stages]}
                            for v in self.variants]
        return data

    def resolve_stages(self, variant: VariantSpec, base_dir: Path | None = None) -> list[StageSpec]:
        """The variant's stages; a `config:` path is read relative to `base_dir` when not found as given."""
        if variant.config is None:
            return list(variant.stages)
        path = Path(variant.config)
        if not path.is_file() and base_dir is not None and (base_dir / path).is_file():
            path = base_dir / path
        data = read_yaml_config(path, f"variant {variant.name}: config")
        if not isinstance(data, dict):
            raise ConfigError(f"variant {variant.name}: {path}: expected a mapping at the top level")
        try:
            return [StageSpec.model_validate(s) for s in data.get("stages") or []]
        except ValidationError as e:
            raise ConfigError(f"variant {variant.name}: {path}: {format_validation_error(e)}") from None


def parse_ablation_config(data: Any, **overrides: Any) -> AblationConfig:
    """Validate a mapping; `overrides` (output=, token_budget=, ...) replace keys when not None."""
    return validate_config(AblationConfig, data, "ablation config", **overrides)


def load_ablation_config(path: str | Path, **overrides: Any) -> AblationConfig:
    return parse_ablation_config(read_yaml_config(path, "ablation config"), **overrides)
