"""Expert parallelism and FSDP2 compute what one process computes.

Same seed, same sequences: EP=2 on 2 gloo ranks and EP=2 x FSDP=2 on 4 ranks against one
process whose optimiser step sees every rank's micro-batches (the data-parallel mean loss).
Logits at initialisation and the logged loss of each of 20 optimiser steps must agree: routing
through the all-to-all, the expert-gradient scale (1/W on the efsdp mesh), gradient
accumulation without sync, clipping over two meshes and the router-bias update all enter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.helpers import spawn, tiny_config, write_tiny_manifest
from training.data.dataset import ManifestDataset
from training.launch import build_worker
from training.layout import Layout, accumulation, plan_layout
from training.metrics_log import read_metrics
from training.train_config import TrainConfig
from training.trainer import Trainer


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_tiny_manifest(tmp_path_factory.mktemp("parity-data"))


def test_layout_snaps_to_the_batch_and_the_experts():
    assert plan_layout(available=3, n_experts=8, max_ep=2, global_batch_seqs=8) == Layout(world=2, ep=2)
    assert plan_layout(available=3, n_experts=8, max_ep=2, global_batch_seqs=12) == Layout(world=3, ep=1)
    assert plan_layout(available=1, n_experts=8, max_ep=4, global_batch_seqs=8) == Layout(world=1, ep=1)
    assert plan_layout(available=256, n_experts=64, max_ep=8, global_batch_seqs=1024) == Layout(world=256, ep=8)
    assert plan_layout(available=6, n_experts=16, max_ep=8, global_batch_seqs=24) == Layout(world=6, ep=2)
    # Tokens per step stay fixed: accumulation makes up for fewer ranks.
    assert accumulation(global_batch_seqs=8, world=2, max_micro_batch=2) == (2, 2)
    assert accumulation(global_batch_seqs=8, world=1, max_micro_batch=2) == (2, 4)
    assert accumulation(global_batch_seqs=12, world=1, max_micro_batch=5) == (4, 3)
    with pytest.raises(ValueError):
        accumulation(global_batch_seqs=8, world=3, max_micro_batch=2)


def _distributed_run(rank: int, world: int, cfg_json: str, out: str) -> None:
    """Each rank: logits of its first micro-batch at init, then cfg.steps steps (metrics.jsonl)."""
    cfg = TrainConfig.model_validate_json(cfg_json)
    trainer, control = build_worker(cfg)
    batch = trainer.dataset.read_batch(0, trainer.micro_batch)
    mb = trainer.to_micro_batch(batch)
    with torch.no_grad():
        logits = trainer.model(mb.inputs_BS, mb.doc_ids_BS).logits_BSV
    torch.save(logits, Path(out) / f"logits_rank{rank}.pt")
    trainer.fit(control=control)
    (Path(out) / f"layout_rank{rank}.json").write_text(json.dumps({"world": trainer.world, "ep": trainer.ep}))


def _reference(cfg: TrainConfig, world: int) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
    """One process, world ranks' data: initial logits per rank, and the stats of each step when
    one optimiser step takes all ranks' micro-batches (rank-major, as the ranks read them)."""
    single = ManifestDataset(cfg.manifest, cfg.seq_len, cfg.seed)
    trainer = Trainer(cfg.model_copy(update={"out_dir": Path(cfg.out_dir) / "reference"}), single, None, torch.device("cpu"))
    views = [ManifestDataset(cfg.manifest, cfg.seq_len, cfg.seed, rank=r, world_size=world) for r in range(world)]
    micro, accum = accumulation(cfg.global_batch_seqs, world, cfg.micro_batch)
    with torch.no_grad():
        logits = []
        for view in views:
            mb = trainer.to_micro_batch(view.read_batch(0, micro))
            logits.append(trainer.model(mb.inputs_BS, mb.doc_ids_BS).logits_BSV)
    stats = []
    for step in range(cfg.steps):
        start = step * cfg.global_batch_seqs
        micro_batches = [
            trainer.to_micro_batch(view.read_batch(start + m * world * micro, micro))
            for view in views
            for m in range(accum)
        ]
        trainer.step = step
        stats.append(trainer.train_step(micro_batches))
    return logits, stats


@pytest.mark.slow
@pytest.mark.parametrize("world, expected", [(2, {"world": 2, "ep": 2}), (4, {"world": 4, "ep": 2})])
def test_expert_and_fsdp_parallel_match_one_process(manifest, tmp_path, world, expected):
    cfg = tiny_config(manifest, tmp_path, ep=2)
    spawn(world, _distributed_run, cfg.model_dump_json(), str(tmp_path))
    assert json.loads((tmp_path / "layout_rank0.json").read_text()) == expected

    ref_logits, ref_stats = _reference(cfg, world)
    for rank in range(world):
        got = torch.load(tmp_path / f"logits_rank{rank}.pt")
        torch.testing.assert_close(got, ref_logits[rank], rtol=1e-5, atol=1e-5)

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, cfg.steps + 1))
    losses = [r["loss"] for r in records]
    assert losses[-1] < losses[0] - 0.05, "the run must actually train for the comparison to mean much"
    torch.testing.assert_close(torch.tensor(losses), torch.tensor([r["loss"] for r in ref_stats]), rtol=0, atol=2e-4)
    # The clipping norm combines the dense (dp) and expert (efsdp x ep) meshes' norms.
    torch.testing.assert_close(
        torch.tensor([r["grad_norm"] for r in records]), torch.tensor([r["grad_norm"] for r in ref_stats]),
        rtol=2e-3, atol=0,
    )
    # Every rank saw its own data; together, the same global batches as one process would.
    assert [r["consumed"] for r in records] == [cfg.global_batch_seqs * s for s in range(1, cfg.steps + 1)]
    loads = records[-1]["expert_load"]
    assert set(loads) == {"layers.0.ffn", "layers.1.ffn"}
    # Each step routes every token of the global batch to K=2 experts, counted once globally.
    assert all(sum(v) == cfg.global_batch_tokens * 2 for v in loads.values())
