"""A data ablation as validated data: one raw corpus, several curation recipes, one model recipe.

    corpus: build/demo-corpus/corpus      # paths/URIs, as a pipeline config's `inputs`
    output: build/ablation
    seed: 1234                            # the held-out draw and the corpus sample
    seeds: [1, 2, 3]                      # every (variant, budget) trains once per seed
    budgets: ["1x", "4x", 2_000_000]      # tokens, or multiples of the smallest curated variant
    baseline: raw                         # paired differences are taken against it
    corpus_sample: 1.0                    # a seeded fraction of the corpus's documents
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
optimiser recipe, the training seeds, and the number of tokens trained on. A variant whose curated
data holds fewer tokens than the budget repeats it (more epochs): that is the trade the article
makes. Several seeds give each difference its noise (a paired interval, workflows.ablation.stats);
several budgets show what repetition does.

`token_budget: N` is the older spelling of `budgets: [N]`.

Every variant's `tokenize` stage is replaced by one that uses the shared tokenizer; a `tokenize`
stage in a variant's list only contributes its other parameters (shard size, add_bos).
"""

from __future__ import annotations

import math
import re
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
# A budget given as a multiple of the smallest curated variant's tokens: "1x", "0.5x", "4x".
BUDGET_MULTIPLE_PATTERN = re.compile(r"^(\d+(\.\d*)?|\.\d+)x$")
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
    # domain -> FILE or URI the curation read stage reads (JSONL with `text`, Parquet, ...): that
    # domain's held-out documents come from there, and all its corpus documents stay trainable
    # (bar near-duplicates of a held-out one). A clean source the corpus never saw.
    sources: dict[str, str] = Field(default_factory=dict)
    # The "novel" measure drops held-out lines that occur more than this many times in the raw
    # corpus (boilerplate a model can score well on by memorising it).
    novel_max_line_count: int = Field(default=2, ge=0)

    @field_validator("sources")
    @classmethod
    def _source_domains(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(d for d in v if not re.match(DOMAIN_PATTERN, d))
        if bad:
            raise ValueError(f"not domain names: {', '.join(map(repr, bad))}")
        empty = sorted(d for d, path in v.items() if not path.strip())
        if empty:
            raise ValueError(f"no source given for {', '.join(empty)}")
        return v

    @model_validator(mode="after")
    def _sources_not_skipped(self) -> HoldoutSpec:
        both = sorted(set(self.sources) & set(self.skip_domains))
        if both:
            raise ValueError(f"{', '.join(both)}: in both holdout.sources and holdout.skip_domains")
        return self


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
    seed: int = Field(default=0, description="the held-out draw and the corpus sample")
    seeds: list[int] = Field(min_length=1, description="training seeds (init, data order); default [seed]")
    default_domain: str = Field(default="web", pattern=DOMAIN_PATTERN)
    budgets: list[int | str] = Field(min_length=1, description='tokens (int) or multiples of the smallest '
                                                               'curated variant ("4x"); `token_budget: N` = [N]')
    baseline: str | None = Field(default=None, description="the variant differences are taken against; "
                                                           "None: the first")
    corpus_sample: float = Field(default=1.0, gt=0.0, le=1.0, description="seeded fraction of documents kept")
    cache_dir: str | None = Field(default=None, description="curation prefix cache; None: OUT/cache")
    train: dict[str, Any] = Field(default_factory=lambda: {"preset": "tiny"}, description="TrainConfig fields")
    eval_every_steps: int | None = Field(default=None, ge=1, description="None: evaluate at the end only")
    holdout: HoldoutSpec = Field(default_factory=HoldoutSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    variants: list[VariantSpec] = Field(min_length=1)
    # Variants trained at once (Ray tasks of `cpus_per_variant` CPUs each); None: as the cluster allows.
    parallel: int | None = Field(default=None, ge=1)
    cpus_per_variant: float = Field(default=1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        """`token_budget: N` -> `budgets: [N]`; `seeds` defaults to `[seed]`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "token_budget" in data:
            if data.get("budgets") is not None:
                raise ValueError("give `budgets` or `token_budget`, not both")
            data["budgets"] = [data.pop("token_budget")]
        if data.get("seeds") is None:
            data["seeds"] = [data.get("seed", 0)]
        return data

    @field_validator("budgets", mode="before")
    @classmethod
    def _budgets(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        # digits in a string (a query string, a CLI value) are tokens, as an int is
        return [int(b) if isinstance(b, str) and b.strip().isdigit() else b for b in v]

    @field_validator("budgets")
    @classmethod
    def _budgets_valid(cls, v: list[int | str]) -> list[int | str]:
        for b in v:
            if isinstance(b, int) and b < 1:
                raise ValueError(f"budget {b}: a token budget is at least 1")
            if isinstance(b, str) and (not BUDGET_MULTIPLE_PATTERN.match(b) or float(b[:-1]) <= 0):
                raise ValueError(f"budget {b!r}: give tokens as an integer or a multiple of the smallest "
                                 'curated variant as "<number>x" (e.g. "4x")')
        labels = [budget_label(b) for b in v]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"budgets must be unique: {', '.join(dupes)}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        dupes = sorted({s for s in v if v.count(s) > 1})
        if dupes:
            raise ValueError(f"seeds must be unique: {', '.join(map(str, dupes))}")
        return v

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
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not a variant ({', '.join(names)})")
        return self

    @property
    def baseline_variant(self) -> str:
        return self.baseline or self.variants[0].name

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


def budget_label(budget: int | str) -> str:
    """A budget's name in reports and run folders: the entry as written ("4x", "3000000")."""
    return str(budget)


def budget_tokens(budget: int | str, smallest_variant_tokens: int) -> int:
    """The tokens a budget asks for: an int as given, "<f>x" as f x the smallest curated variant
    (rounded up: a budget is never cut short)."""
    if isinstance(budget, int):
        return budget
    return max(1, math.ceil(float(budget[:-1]) * smallest_variant_tokens))


def parse_ablation_config(data: Any, **overrides: Any) -> AblationConfig:
    """Validate a mapping; `overrides` (output=, token_budget=, ...) replace keys when not None
    (`token_budget=N` replaces the config's budgets)."""
    if isinstance(data, dict) and overrides.get("token_budget") is not None:
        data = {k: v for k, v in data.items() if k not in ("budgets", "token_budget")}
    return validate_config(AblationConfig, data, "ablation config", **overrides)


def load_ablation_config(path: str | Path, **overrides: Any) -> AblationConfig:
    return parse_ablation_config(read_yaml_config(path, "ablation config"), **overrides)
