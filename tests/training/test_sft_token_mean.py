"""The step's LM loss is the mean over every loss-bearing token of the global batch
(`training.token_mean`), not the mean of the micro-batches' own token means.

Micro-batches of the tiny pretraining data with most targets masked (IGNORE_INDEX, as SFT masks
non-assistant tokens), very unequal counts (2 and 30):
- one process: the step loss is sum(CE) / 32 computed by hand from a plain forward (float64
  log-softmax), and the accumulated gradient is that of the plain global mean (atol 1e-6);
- 2 gloo ranks with unequal counts per rank (dp=2 under FSDP; EP=2 with the experts' own divide
  factor; PP=2, the last stage's loss_fn weighting each micro-batch) give the single process's
  loss (1e-6) and gradients (1e-5);
- the held-out chat loss (`evaluate_chat`) is summed NLL / assistant tokens over windows with
  unequal counts.
The MoE balance and z losses are off (coefficient 0): the gradient is the LM loss's alone.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from tests.training.helpers import VOCAB, spawn, tiny_config, write_tiny_manifest
from training.config import tiny
from training.data.dataset import ManifestDataset
from training.evaluate import IGNORE_INDEX
from training.launch import build_worker
from training.sft import ChatEvalSet, evaluate_chat
from training.train_config import TrainConfig
from training.trainer import MicroBatch, Trainer

COUNTS = (2, 30)  # loss tokens of the two micro-batches of the one-process check
RANK_COUNTS = ((2, 7), (30, 1))  # per rank: unequal within and across ranks (40 in all)
GRAD_ATOL, LOSS_ATOL, DIST_GRAD_ATOL = 1e-6, 1e-6, 1e-5


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_tiny_manifest(tmp_path_factory.mktemp("token-mean-data"), total_tokens=10_000)


def config(manifest: str, out: Path, **overrides) -> TrainConfig:
    model = {"attn_dropout": 0.0, "moe": {"bias_update_rate": 1e-3, "balance_loss_coef": 0.0, "z_loss_coef": 0.0}}
    return tiny_config(manifest, out, model=model, **overrides)


def masked_micro_batches(cfg: TrainConfig, counts: list[int]) -> list[MicroBatch]:
    """One micro-batch (cfg.micro_batch windows) per count, keeping that many targets at seeded
    random positions (the rest IGNORE_INDEX). The same in every process."""
    data = ManifestDataset(cfg.manifest, cfg.seq_len, cfg.seed)
    rng = np.random.default_rng(0)
    out = []
    for i, count in enumerate(counts):
        batch = data.read_batch(i * cfg.micro_batch, cfg.micro_batch)
        tokens = torch.from_numpy(batch.tokens)
        keep = torch.zeros(cfg.micro_batch * cfg.seq_len, dtype=torch.bool)
        keep[torch.from_numpy(rng.choice(keep.numel(), size=count, replace=False))] = True
        targets = tokens[:, 1:].masked_fill(~keep.view(cfg.micro_batch, cfg.seq_len), IGNORE_INDEX)
        out.append(MicroBatch(tokens[:, :-1], targets, None))
    return out


def hand_nll(model: torch.nn.Module, micro_batches: list[MicroBatch]) -> tuple[float, list[float], int]:
    """(summed NLL, per-micro-batch token means, count) of the kept targets, float64 log-softmax."""
    total, means, count = 0.0, [], 0
    with torch.no_grad():
        for mb in micro_batches:
            logp = F.log_softmax(model(mb.inputs_BS, mb.doc_ids_BS).logits_BSV.double(), dim=-1)
            b, s = torch.nonzero(mb.targets_BS != IGNORE_INDEX, as_tuple=True)
            nll = -float(logp[b, s, mb.targets_BS[b, s]].sum())
            total, count = total + nll, count + len(b)
            means.append(nll / len(b))
    return total, means, count


def plain_mean_grads(model: torch.nn.Module, micro_batches: list[MicroBatch]) -> dict[str, torch.Tensor]:
    """Gradients of sum(CE over every kept target) / their count, one plain backward."""
    model.zero_grad(set_to_none=True)
    nll = sum(F.cross_entropy(model(mb.inputs_BS, mb.doc_ids_BS).logits_BSV.flatten(0, 1).float(),
                              mb.targets_BS.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
              for mb in micro_batches)  # fmt: skip
    count = sum(int((mb.targets_BS != IGNORE_INDEX).sum()) for mb in micro_batches)
    (nll / count).backward()
    return grads_of(model)


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) gradients by parameter name; collective under FSDP/EP (full_tensor)."""
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            out[name] = g.detach().clone()
    return out


def single_process(cfg: TrainConfig, micro_batches: list[MicroBatch]) -> tuple[Trainer, torch.nn.Module, float]:
    """A one-process Trainer, a copy of its initial model, and its forward_backward LM loss."""
    trainer = Trainer(cfg, ManifestDataset(cfg.manifest, cfg.seq_len, cfg.seed), None, torch.device("cpu"))
    initial = copy.deepcopy(trainer.model)
    lm = float(trainer.forward_backward(micro_batches)[0])
    return trainer, initial, lm


def test_step_loss_and_gradient_are_those_of_the_global_token_mean(manifest, tmp_path):
    cfg = config(manifest, tmp_path)
    micro_batches = masked_micro_batches(cfg, list(COUNTS))
    trainer, initial, lm = single_process(cfg, micro_batches)

    total, means, count = hand_nll(initial, micro_batches)
    assert count == sum(COUNTS) == 32
    assert lm == pytest.approx(total / 32, abs=LOSS_ATOL)
    # The old rule (mean of the micro-batches' means) weighs the 2 tokens as much as the 30: near
    # uniform at init, still 1000x the tolerance away (measured 0.025).
    assert abs(sum(means) / 2 - total / 32) > 1000 * LOSS_ATOL, means

    expected = plain_mean_grads(initial, micro_batches)
    got = grads_of(trainer.model)
    assert set(got) == set(expected) and len(got) > 10
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=GRAD_ATOL, msg=name)

    # train_step logs the same value (its backward sees the model before the optimiser step).
    trainer.optimizer.zero_grad(set_to_none=True)
    assert trainer.train_step(micro_batches)["loss"] == pytest.approx(total / 32, abs=LOSS_ATOL)


def _rank_run(rank: int, world: int, cfg_json: str, out: str) -> None:
    """This rank's forward_backward on its share (pp: every micro-batch, one per schedule slot)."""
    cfg = TrainConfig.model_validate_json(cfg_json)
    trainer, _ = build_worker(cfg)
    everything = masked_micro_batches(cfg, [c for counts in RANK_COUNTS for c in counts])
    mine = everything if trainer.pipeline is not None else everything[2 * rank : 2 * rank + 2]
    lm, balance, z = trainer.forward_backward(mine).tolist()
    stats, _ = trainer._reduce({"loss": lm, "balance_loss": balance, "z_loss": z}, 0)
    torch.save({"loss": stats["loss"], "grads": grads_of(trainer.model), "dp": trainer.data_world},
               Path(out) / f"rank{rank}.pt")  # fmt: skip




# ep2 also pins training.parallel's one-rank expert mesh case (its gradients were once halved).
@pytest.mark.parametrize("name, layout, dp", [("dp2", {}, 2), ("ep2", {"ep": 2}, 2), ("pp2", {"pp": 2}, 1)])
def test_two_ranks_with_unequal_counts_match_one_process(manifest, tmp_path, name, layout, dp):
    cfg = config(manifest, tmp_path / name, workers=2, **layout)
    spawn(2, _rank_run, cfg.model_dump_json(), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["dp"] for r in ranks] == [dp, dp]

    everything = masked_micro_batches(cfg, [c for counts in RANK_COUNTS for c in counts])
    reference = config(manifest, tmp_path / "reference")
    trainer, initial, lm = single_process(reference, everything)
    total, _, count = hand_nll(initial, everything)
    assert count == 40 and lm == pytest.approx(total / count, abs=LOSS_ATOL)
    for r in ranks:
        assert r["loss"] == pytest.approx(lm, abs=LOSS_ATOL), name

    expected = grads_of(trainer.model)
    # dp: every rank holds every gradient; pp: each stage its own parameters.
    got = ranks[0]["grads"] if dp == 2 else {**ranks[0]["grads"], **ranks[1]["grads"]}
    assert set(got) == set(expected), name
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, rtol=0, atol=DIST_GRAD_ATOL, msg=f"{name}: {key}")


def test_held_out_chat_loss_is_a_token_mean_over_every_window_and_set():
    rng = np.random.default_rng(5)

    def conversations(answers: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for answer in answers:  # a prompt of 4-12 tokens, then `answer` target tokens
            ids = rng.integers(3, VOCAB, size=int(rng.integers(4, 13)) + answer)
            mask = np.zeros(len(ids), dtype=bool)
            mask[-answer:] = True
            out.append((ids.astype(np.int64), mask))
        return out

    sets = [ChatEvalSet("a.jsonl", "chat", conversations([1, 2, 20, 1, 3]), bytes=1),
            ChatEvalSet("b.jsonl", "code", conversations([25, 1]), bytes=1)]  # fmt: skip
    torch.manual_seed(0)
    model = tiny(VOCAB).build().eval()
    report = evaluate_chat(model, sets, seq_len=32, batch_size=2, device="cpu")

    def alone(ids: np.ndarray, mask: np.ndarray) -> float:  # each conversation by itself
        with torch.no_grad():
            logp = F.log_softmax(model(torch.from_numpy(ids[None, :-1])).logits_BSV[0].double(), dim=-1)
        return -sum(float(logp[t - 1, ids[t]]) for t in np.flatnonzero(mask))

    nll = [sum(alone(*c) for c in s.conversations) for s in sets]
    tokens = [sum(int(m.sum()) for _, m in s.conversations) for s in sets]
    assert [report.files[f].tokens for f in ("a.jsonl", "b.jsonl")] == tokens == [27, 26]
    for f, n, t in zip(("a.jsonl", "b.jsonl"), nll, tokens):
        assert report.files[f].loss == pytest.approx(n / t, rel=1e-5)
    assert report.overall.loss == pytest.approx(sum(nll) / sum(tokens), rel=1e-5)
