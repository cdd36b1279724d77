"""The reward model: the policy's transformer with a scalar head, trained on preference pairs.

    flywheel reward-model --init CKPT --data pairs.jsonl --eval heldout.jsonl --out DIR
    rm = RewardModel.load("DIR")                     # latest checkpoint, CPU, eval mode
    rm.score([("What is 2+2?", "4"), ("What is 2+2?", "5")])      # [r1, r2]
    rm.score_tokens([[...ids...]])                   # sequences already tokenised (PPO rollouts)

r(x, y) = w . h_last + b, h_last the final hidden state (after the last RMSNorm) at the last token
of prompt + answer, the EOS that closes the answer: the only position that has seen the whole
answer under causal attention. Trained with the Bradley-Terry loss on pairs (Ouyang et al. 2022,
arXiv 2203.02155, eq. 1; Stiennon et al. 2020): loss = -log sigmoid(r(x, y_w) - r(x, y_l)), both
answers of a pair in one batch. Rewards are defined up to a constant, which the loss ignores.

The backbone starts from a pretraining or SFT checkpoint; the language-model output projection
is dropped (V x D weights a reward never uses). The checkpoint holds `backbone.*` and `head.*`,
and its meta.json the model config and the tokenizer, so `RewardModel.load` needs nothing else.
`values` returns the head on every position: the same module serves as PPO's critic.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn

from training.checkpoint import read_meta
from training.config import ModelConfig
from training.export_hf import resolve_checkpoint
from training.model import Transformer
from training.parallel import Meshes
from training.preference_config import RewardModelConfig
from training.preference_data import PairBatch, PairEncoder, Prompt
from training.preference_trainer import (
    PairScores,
    preference_command,
    shard,
    tokenizer_for,
)
from training.trainer import resolve_param_dtype

KIND = "reward_model"


def bradley_terry_loss(chosen_P: torch.Tensor, rejected_P: torch.Tensor) -> torch.Tensor:
    """Per-pair -log sigmoid(r_chosen - r_rejected) (Ouyang et al. 2022 eq. 1, one pair per
    comparison); logsigmoid keeps it finite for any margin."""
    return -F.logsigmoid(chosen_P.float() - rejected_P.float())


def last_token_hidden(hidden_BSD: torch.Tensor, lengths_B: torch.Tensor) -> torch.Tensor:
    """hidden_BD at each row's last real token (position length - 1; rows right-padded)."""
    index_B11 = (lengths_B - 1).view(-1, 1, 1).expand(-1, 1, hidden_BSD.shape[-1])
    return hidden_BSD.gather(1, index_B11).squeeze(1)


class RewardModel(nn.Module):
    """Transformer backbone + Linear(D, 1) head. `encoder` is set by `load` (for `score`)."""

    def __init__(self, backbone: Transformer, head_std: float | None = None):
        super().__init__()
        self.cfg: ModelConfig = backbone.cfg
        backbone.output = nn.Identity()  # NOTE: the V x D LM head: unused here, not trained or saved
        self.backbone = backbone
        self.head = nn.Linear(self.cfg.dim, 1)
        # Small: rewards start near 0 (the loss near log 2), the backbone's features in charge.
        nn.init.normal_(self.head.weight, std=self.cfg.init_std if head_std is None else head_std)
        nn.init.zeros_(self.head.bias)
        self.encoder: PairEncoder | None = None
        self.pad_id = 0  # what `score_tokens` pads with (set from the tokenizer by `load`)

    def values(self, tokens_BS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values_BS, aux_loss): the head on every position (a critic's values), fp32."""
        out = self.backbone(tokens_BS, return_hidden=True)
        return self._head(out.hidden_BSD).float(), out.aux_loss

    def forward(self, tokens_BS: torch.Tensor, lengths_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards_B, aux_loss): the head at each row's last real token, fp32."""
        out = self.backbone(tokens_BS, return_hidden=True)
        return self._head(last_token_hidden(out.hidden_BSD, lengths_B)).float(), out.aux_loss

    def _head(self, h_xD: torch.Tensor) -> torch.Tensor:
        """w . h + b over the last dim. NOTE: not head(h).squeeze(-1): FSDP2 warns when a wrapped
        module returns a view (an in-place op on it would skip its backward hook)."""
        return h_xD @ self.head.weight[0] + self.head.bias[0]

    # -- export -------------------------------------------------------------------------------

    @classmethod
    def load(cls, checkpoint: str | Path, tokenizer: str | None = None) -> RewardModel:
        """A reward-model checkpoint (a step folder, or a run's latest) as a float32 CPU model in
        eval mode, with its tokenizer and pair encoding (`score`)."""
        step_dir = resolve_checkpoint(checkpoint)
        meta = read_meta(step_dir)
        if meta.get("kind") != KIND:
            raise ValueError(f"{step_dir} is not a reward-model checkpoint (kind {meta.get('kind')!r})")
        model = cls(ModelConfig.model_validate(meta["model_config"]).build())
        state = {k: torch.empty_like(v) for k, v in model.state_dict().items()}
        with warnings.catch_warnings():  # DCP warns that it "assumes" one process even with no_dist
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            # Keys not asked for (optimizer moments, trainer state) are not read.
            dcp.load({"app": {"model": state}}, checkpoint_id=str(step_dir), no_dist=True)
        model.load_state_dict(state, strict=True)
        tok, eos_id, model.pad_id, _ = tokenizer_for(meta, tokenizer)
        model.encoder = PairEncoder(tok, eos_id, meta["max_len"], meta.get("prompt_format", "plain"))
        return model.eval()

    @torch.no_grad()
    def score_tokens(self, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> torch.Tensor:
        """Rewards (float32, CPU) of token sequences (prompt + answer ids), each read at its last token:
        the EOS of a finished answer, or wherever a cut-off one stops."""
        device = next(self.parameters()).device
        pad = self.pad_id
        rewards = []
        for start in range(0, len(sequences), batch_size):
            rows = [list(s) for s in sequences[start : start + batch_size]]
            tokens_BS = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.int64)
            for i, row in enumerate(rows):
                tokens_BS[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
            lengths_B = torch.tensor([len(r) for r in rows], dtype=torch.int64)
            rewards.append(self(tokens_BS.to(device), lengths_B.to(device))[0].cpu())
        return torch.cat(rewards) if rewards else torch.zeros(0)

    def score(self, texts: Sequence[str | tuple[Prompt, str]], batch_size: int = 16) -> list[float]:
        """Rewards of (prompt, answer) pairs encoded as in training (prompt, answer, EOS); a plain
        string is an answer to an empty prompt."""
        if self.encoder is None:
            raise ValueError("no tokenizer: build the model with RewardModel.load")
        sequences = []
        for item in texts:
            prompt, answer = ("", item) if isinstance(item, str) else item
            sequences.append(self.encoder.sequence(prompt, answer))
        return self.score_tokens(sequences, batch_size).tolist()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


class RewardObjective:
    """Bradley-Terry on the pairs; margin = r(chosen) - r(rejected)."""

    kind = KIND

    def __init__(self, model: RewardModel):
        self.model = model

    def score(self, batch: PairBatch) -> PairScores:
        rewards_B, aux = self.model(batch.tokens_BS, batch.lengths_B)
        chosen_P, rejected_P = rewards_B[: batch.pairs], rewards_B[batch.pairs :]
        return PairScores(bradley_terry_loss(chosen_P, rejected_P), chosen_P - rejected_P, aux,
                          {"reward_chosen": chosen_P.detach(), "reward_rejected": rejected_P.detach()},
                          tokens=int(batch.lengths_B.sum()))  # fmt: skip


def build_reward_objective(cfg: RewardModelConfig, init: Transformer, meshes: Meshes | None,
                           device: torch.device) -> RewardObjective:  # fmt: skip
    """The init transformer with a new head, sharded like the pretraining model."""
    model = RewardModel(init, head_std=cfg.head_std)
    shard(model, meshes, device, resolve_param_dtype(cfg.param_dtype, device), backbone=model.backbone)
    return RewardObjective(model)


def reward_model_command(config: str | Path | None = None, local: bool = False, **options: Any) -> dict[str, Any]:
    """`flywheel reward-model`: the config file, then the options given (None: unset)."""
    return preference_command(RewardModelConfig, build_reward_objective, config, local, **options)
