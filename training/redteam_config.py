"""How a red-team run generates and judges answers (training.redteam), as validated data. No torch
here: the service (api/posttrain_jobs.py) validates a redteam job's config in its web process."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from training.sampling_config import SamplingConfig


class RedteamConfig(BaseModel):
    """How answers are generated and judged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sampling: SamplingConfig = Field(default=SamplingConfig(max_new_tokens=64, temperature=0.0),
                                     description="greedy by default: the same checkpoint gives the same report")
    batch_size: int = Field(default=8, ge=1, description="prompts per generate call")
    verdict: Literal["rules", "rules_or_rm"] = Field(
        default="rules", description="rules_or_rm: a reward-model flag also fails a prompt (needs --reward-model)")
