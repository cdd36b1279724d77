"""How `training.generate` picks each next token, as validated data. No torch here: the service
(api/posttrain_jobs.py) validates a redteam job's sampling in its web process."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SamplingConfig(BaseModel):
    """How to pick each next token. temperature 0 is greedy (argmax: deterministic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_k: int | None = Field(default=None, ge=1, description="keep the k most likely tokens; None: all")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus: the smallest set with this much mass")
    stop_token_ids: tuple[int, ...] = Field(default=(), description="stop tokens besides EOS")
    ignore_eos: bool = Field(default=False, description="do not stop at EOS (vLLM's option)")
    seed: int = Field(default=0, description="seeds the sampling generator when none is given")
