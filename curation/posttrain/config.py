"""A post-training curation run as validated data.

    inputs:
      - {path: demo/chat-train.jsonl, split: train}     # kind from each record's keys ...
      - {path: demo/chat-eval.jsonl, split: eval}
      - {path: demo/preferences.jsonl, kind: preference}  # ... or required of every record
    output: out/posttrain
    seed: 0
    exact_dedup: {}                       # defaults; null turns a step off
    near_dedup: {threshold: 0.8}        # operators: true (the default) keeps signs in the shingles
    decontamination: {eval_sets: [demo/eval-texts.jsonl], ngram: 13}
    pii: {entities: [EMAIL, PHONE, PERSON]}

The step parameters are the pretraining stages' own fields (same names, defaults and bounds),
so `threshold: 0.8` means one thing in both pipelines; near_dedup adds `operators`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.posttrain import RecordKind, Split
from curation.config import read_yaml_config, validate_config
from curation.dedup.minhash import Scheme
from curation.stages.exact_dedup import ExactDedupParams
from curation.stages.minhash_dedup import MinHashDedupParams
from curation.stages.pii import PiiParams

_EXACT = ExactDedupParams.model_fields
_NEAR = MinHashDedupParams.model_fields


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PosttrainInput(_Strict):
    path: str = Field(min_length=1, description="a JSONL(.gz) file, or a folder of them (sorted)")
    kind: RecordKind | None = Field(None, description="required of every record; None: each record's keys say")
    split: Split = "train"


class ExactParams(_Strict):
    """Normalisation of the dedup text before hashing (exact_dedup's fields)."""

    lowercase: bool = _EXACT["lowercase"]
    collapse_whitespace: bool = _EXACT["collapse_whitespace"]
    strip_punctuation: bool = _EXACT["strip_punctuation"]


class NearParams(_Strict):
    """MinHash + LSH on the dedup text (minhash_dedup's hashing fields). Records of the eval
    split are preferred as keepers, so a train copy never costs the held-out set a record."""

    threshold: float = _NEAR["threshold"]
    num_perm: int = _NEAR["num_perm"]
    ngram: int = _NEAR["ngram"]
    bands: int | None = _NEAR["bands"]
    rows: int | None = _NEAR["rows"]
    seed: int = _NEAR["seed"]
    scheme: Scheme = _NEAR["scheme"]
    # Post-training only (the stage shingles words): sympy identities and code that differ by a
    # sign are different records, not near copies (curation/posttrain/near.py).
    operators: bool = Field(True, description="each operator/sign character (+ - * / = < > ^ ...) is a word of "
                                              "its own in the shingles; false: words only, as minhash_dedup")

    def minhash(self) -> MinHashDedupParams:
        """The stage's parameters (its validators check bands x rows), for its functions."""
        return MinHashDedupParams(**self.model_dump(exclude={"operators"}))


class DecontaminationParams(_Strict):
    """Drop records that share word n-grams with an evaluation set (GPT-3, Brown et al. 2020,
    appendix C: 13-grams). Eval sets are JSONL of {"text"} or of any post-training kind."""

    eval_sets: list[str] = Field(min_length=1)
    ngram: int = Field(13, ge=1, le=64)
    min_matches: int = Field(1, ge=1, description="distinct shared n-grams that make a record contaminated")


class PosttrainConfig(_Strict):
    inputs: list[PosttrainInput] = Field(min_length=1)
    output: str
    dataset_id: str | None = Field(None, min_length=1, max_length=200, description="default: the output's name")
    seed: int = 0
    exact_dedup: ExactParams | None = ExactParams()
    near_dedup: NearParams | None = NearParams()
    decontamination: DecontaminationParams | None = None
    pii: PiiParams | None = PiiParams()

    @field_validator("inputs", mode="before")
    @classmethod
    def _paths(cls, raw: Any) -> Any:
        return [{"path": r} if isinstance(r, str) else r for r in raw] if isinstance(raw, list) else raw

    @field_validator("near_dedup")
    @classmethod
    def _near(cls, v: NearParams | None) -> NearParams | None:
        if v is not None:
            v.minhash()  # bands/rows rules, scheme name
        return v

    def name(self) -> str:
        return self.dataset_id or Path(self.output.rstrip("/")).name or "posttrain"

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """sha256 of the recipe (the config less where it reads and writes)."""
        recipe = {k: v for k, v in self.dump().items() if k not in ("inputs", "output", "dataset_id")}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def parse_posttrain_config(data: Any, **overrides: Any) -> PosttrainConfig:
    return validate_config(PosttrainConfig, data, "config", **overrides)


def load_posttrain_config(path: str | Path, **overrides: Any) -> PosttrainConfig:
    return parse_posttrain_config(read_yaml_config(path, "config"), **overrides)
