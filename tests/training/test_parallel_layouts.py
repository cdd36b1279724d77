"""Tensor parallelism, HSDP, layout snapping and resuming across layouts compute what one process does.

Same seed, same sequences (the pattern of test_parity.py): each layout on N gloo ranks against one
process whose optimiser step sees every data rank's micro-batches (the data-parallel mean loss):
- TP=2 (2 ranks; with MHA, and with MLA), TP=2 x EP=2 (4 ranks, with explicit FSDP prefetch),
  HSDP 2 x 2 with EP=2 and HSDP 2 x 1 x TP=2 with EP=2 (4 ranks each), 20 steps each;
- a resume: 10 steps under EP=2 x FSDP=2 (4 ranks), a DCP checkpoint, then 10 more under TP=2
  (2 ranks) equal the uninterrupted single-process run (one sequence per micro-batch), and the
  data cursor continues exactly;
- plan_layout's snapping, the launcher's choice (5 workers: 4 ranks and a spare) and the ranks
  of each mesh (8 ranks: pp 2 x dp 2 x tp 2, HSDP x tp).

Tolerances (fp32 on CPU; the layouts sum in other orders, nothing else differs). Measured on this
machine, the largest deviations over all layouts were 4.5e-8 (logits), 5.6e-7 (losses: the metrics
log rounds to 6 decimals), 1.6e-6 relative (grad norms) and 3.6e-7 of a tensor's largest entry
(gradients); the bounds leave a factor of 20 or more:
- logits at init: rtol 1e-5, atol 1e-5;
- logged loss, balance loss and z loss of every step: atol 1e-5 (absolute, the loss is ~2.7);
- gradient norm of every step: rtol 1e-4;
- every parameter's full gradient after the first step's backward: rtol 1e-4, atol 1e-6. AdamW
  is nearly blind to a gradient's scale, so this, not the losses, is what checks the scale of
  each gradient (a wrong divide factor for the experts, a tp copy counted twice);
- the data digest and cursor columns: exact.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.training.helpers import spawn, tiny_config, write_tiny_manifest
from tests.training.test_parity import _reference
from training.data.dataset import ManifestDataset
from training.launch import build_worker, run_worker
from training.layout import Layout, accumulation, plan_layout
from training.metrics_log import read_metrics
from training.model import causal_lm_loss
from training.moe import moe_layers
from training.parallel import build_meshes, set_gradient_sync
from training.train_config import TrainConfig
from training.trainer import MicroBatch, Trainer, sequence_digest

LOGITS_TOL = {"rtol": 1e-5, "atol": 1e-5}
LOSS_ATOL = 1e-5
GRAD_NORM_RTOL = 1e-4
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_tiny_manifest(tmp_path_factory.mktemp("layouts-data"))


# ---------------------------------------------------------------------------------------------
# Snapping an elastic process count to a layout
# ---------------------------------------------------------------------------------------------


def test_plan_layout_snaps_to_tp_pp_replicas_batch_and_experts():
    # 5 workers, tp 2: 4 ranks (dp 2 x tp 2), ep borrowed from dp_shard x tp; one spare.
    layout = plan_layout(5, n_experts=8, max_ep=2, global_batch_seqs=8, tp=2)
    assert layout == Layout(world=4, ep=2, tp=2)
    assert (layout.dp_shard, layout.dp, layout.efsdp) == (2, 2, 2)
    assert layout.summary(5) == "5 workers -> 4 ranks: pp 1 x dp 2 x tp 2, ep 2; 1 spare"
    # HSDP: 2 replicas x 3 shards would make dp 6, which does not divide 8 sequences: dp_shard 2.
    hsdp = plan_layout(7, n_experts=8, max_ep=4, global_batch_seqs=8, dp_replicate=2)
    assert hsdp == Layout(world=4, ep=2, dp_replicate=2) and hsdp.dp == 4
    assert "dp 4 (2 x 2 HSDP)" in hsdp.summary(7)
    # pp x tp x dp: 16 ranks = pp 2 x dp 4 x tp 2; ep 8 divides dp_shard x tp = 8 and 64 experts.
    big = plan_layout(16, n_experts=64, max_ep=8, global_batch_seqs=64, tp=2, pp=2, n_layers=4)
    assert (big.world, big.dp, big.ep, big.efsdp) == (16, 4, 8, 1)
    assert big.describe() == ("world 16 = efsdp 1 x ep 8 x pp 2 (experts) = "
                              "dp_replicate 1 x dp_shard 4 x tp 2 x pp 2 (dense)")
    # The experts' count bounds ep: 6 experts over dp_shard x tp = 4 ranks gives ep 2.
    assert plan_layout(4, n_experts=6, max_ep=4, global_batch_seqs=4).ep == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"available": 3, "tp": 2, "pp": 2}, "needs 4 ranks"),
        ({"available": 8, "pp": 3, "n_layers": 2}, "exceeds the model's 2 layers"),
        ({"available": 8, "dp_replicate": 3, "global_batch_seqs": 8}, "divides the global batch"),
    ],
)
def test_plan_layout_says_why_nothing_fits(kwargs, message):
    args = {"n_experts": 8, "max_ep": 2, "global_batch_seqs": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        plan_layout(args.pop("available"), args.pop("n_experts"), args.pop("max_ep"), args.pop("global_batch_seqs"),
                    **args)  # fmt: skip


def test_layout_rejects_inconsistent_degrees():
    with pytest.raises(ValueError, match="multiple of"):
        Layout(world=6, tp=4)
    with pytest.raises(ValueError, match="must divide dp_shard x tp"):
        Layout(world=4, tp=2, ep=4, dp_replicate=2)


def _mesh_groups(rank: int, world: int, out: str) -> None:
    """Each rank: the ranks of each of its groups, for two layouts built one after the other."""
    found = {}
    for name, layout in {"pp_tp_ep": Layout(world=8, ep=2, tp=2, pp=2),
                         "hsdp_tp": Layout(world=8, tp=2, dp_replicate=2)}.items():  # fmt: skip
        meshes = build_meshes(layout, "cpu")
        groups = {key: getattr(meshes, key) for key in ("dp", "tp", "pp", "ep", "efsdp", "world")}
        found[name] = {key: mesh.mesh.flatten().tolist() if mesh is not None else None for key, mesh in groups.items()}
        found[name]["data"] = dist.get_process_group_ranks(meshes.data_group)
        pp_group = dist.get_process_group_ranks(meshes.pp.get_group()) if meshes.pp is not None else None
        found[name].update(data_rank=meshes.data_rank, pp_rank=meshes.pp_rank, dp_ndim=meshes.dp.ndim,
                           pp_group=pp_group)  # fmt: skip
    Path(out, f"groups_rank{rank}.json").write_text(json.dumps(found))


@pytest.mark.slow
def test_meshes_group_the_ranks_as_the_layout_says(tmp_path):
    """Ranks are laid out (pp, dp_replicate, dp_shard, tp), tp fastest, and (pp, efsdp, ep) for experts."""
    spawn(8, _mesh_groups, str(tmp_path))
    got = {r: json.loads((tmp_path / f"groups_rank{r}.json").read_text()) for r in range(8)}
    # pp 2 x dp_shard 2 x tp 2, ep 2 borrowed from dp_shard x tp: rank 5 = (pp 1, shard 0, tp 1).
    five = got[5]["pp_tp_ep"]
    assert five == {"dp": [5, 7], "tp": [4, 5], "pp": [1, 5], "ep": [4, 5], "efsdp": [5, 7], "data": [5, 7],
                    "world": list(range(8)), "data_rank": 0, "pp_rank": 1, "dp_ndim": 1, "pp_group": [1, 5]}
    assert [got[r]["pp_tp_ep"]["data_rank"] for r in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]
    # HSDP 2 x 2 x tp 2: the dense weights' FSDP mesh is 2-D (replicate, shard) over the same tp rank.
    six = got[6]["hsdp_tp"]
    assert six["dp"] == [0, 2, 4, 6] and six["dp_ndim"] == 2 and six["tp"] == [6, 7]
    assert six["pp"] is None and six["ep"] is None and six["data_rank"] == 3
    assert [got[r]["hsdp_tp"]["data_rank"] for r in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


def _launch(rank: int, world: int, cfg_json: str, out_dir: str) -> None:
    # Each rank's stdout to a file: the ranks fork from the test session's forkserver, whose
    # stdout is not the one this test captures.
    with open(Path(out_dir) / f"stdout-{rank}.txt", "w") as out, contextlib.redirect_stdout(out):
        run_worker(TrainConfig.model_validate_json(cfg_json))


@pytest.mark.slow
def test_launcher_snaps_five_workers_to_tp_and_dp_and_keeps_a_spare(manifest, tmp_path):
    cfg = tiny_config(manifest, tmp_path / "run", tp=2, ep=2, workers=5, steps=3)
    spawn(5, _launch, cfg.model_dump_json(), str(tmp_path))
    printed = "".join((tmp_path / f"stdout-{rank}.txt").read_text() for rank in range(5))
    assert "5 workers -> 4 ranks: pp 1 x dp 2 x tp 2, ep 2; 1 spare" in printed
    records = read_metrics(tmp_path / "run")
    assert [(r["step"], r["world"], r["dp"], r["tp"], r["ep"]) for r in records] == [(s, 4, 2, 2, 2) for s in (1, 2, 3)]


# ---------------------------------------------------------------------------------------------
# Parity of each layout with one process
# ---------------------------------------------------------------------------------------------


def _full_grads(trainer: Trainer, micro_batches: list[MicroBatch]) -> dict[str, torch.Tensor]:
    """Every parameter's whole gradient after one step's backward (no optimiser step), then
    zeroed, with the expert-load counters reset (the step is not counted)."""
    model, n = trainer.model, len(micro_batches)
    for i, mb in enumerate(micro_batches):
        set_gradient_sync(model, i == n - 1)
        out = model(mb.inputs_BS, mb.doc_ids_BS)
        ((causal_lm_loss(out.logits_BSV, mb.targets_BS) + out.aux_loss) / n).backward()
    grads = {name: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad.clone()
             for name, p in model.named_parameters()}  # fmt: skip
    trainer.optimizer.zero_grad(set_to_none=True)
    for moe in moe_layers(model).values():
        moe.tokens_per_expert.zero_()
    return grads


def _layout_run(rank: int, world: int, cfg_json: str, out: str) -> None:
    """Each rank: logits of its first micro-batch at init and (rank 0) the first step's full
    gradients, then cfg.steps steps (metrics.jsonl)."""
    cfg = TrainConfig.model_validate_json(cfg_json)
    trainer, control = build_worker(cfg)
    mb = trainer.to_micro_batch(trainer.dataset.read_batch(0, trainer.micro_batch))
    with torch.no_grad():
        logits = trainer.model(mb.inputs_BS, mb.doc_ids_BS).logits_BSV
    torch.save(logits, Path(out) / f"logits_rank{rank}.pt")
    stride = trainer.data_world * trainer.micro_batch
    first_step = [trainer.to_micro_batch(trainer.dataset.read_batch(m * stride, trainer.micro_batch))
                  for m in range(trainer.accum)]  # fmt: skip
    grads = _full_grads(trainer, first_step)
    if rank == 0:
        torch.save(grads, Path(out) / "grads.pt")
    layout = trainer.layout
    (Path(out) / f"layout_rank{rank}.json").write_text(json.dumps(
        {"data_rank": trainer.data_rank, "dp": layout.dp, "tp": layout.tp, "ep": layout.ep,
         "dp_replicate": layout.dp_replicate}))  # fmt: skip
    trainer.fit(control=control)


def _reference_grads(cfg: TrainConfig, dp: int) -> dict[str, torch.Tensor]:
    """One process's gradients for the first step, all dp ranks' micro-batches in one backward."""
    single = ManifestDataset(cfg.manifest, cfg.seq_len, cfg.seed)
    trainer = Trainer(cfg.model_copy(update={"out_dir": Path(cfg.out_dir) / "reference-grads"}), single, None,
                      torch.device("cpu"))  # fmt: skip
    micro, accum = accumulation(cfg.global_batch_seqs, dp, cfg.micro_batch)
    views = [ManifestDataset(cfg.manifest, cfg.seq_len, cfg.seed, rank=r, world_size=dp) for r in range(dp)]
    micro_batches = [trainer.to_micro_batch(view.read_batch(m * dp * micro, micro)) for view in views
                     for m in range(accum)]  # fmt: skip
    return _full_grads(trainer, micro_batches)


def _assert_matches_reference(cfg: TrainConfig, out: Path, world: int, dp: int) -> list[dict]:
    got_grads, ref_grads = torch.load(out / "grads.pt"), _reference_grads(cfg, dp)
    assert set(got_grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(got_grads[name], grad, **GRAD_TOL, msg=lambda m, name=name: f"{name}: {m}")
    ref_logits, ref_stats = _reference(cfg, dp)
    for rank in range(world):
        data_rank = json.loads((out / f"layout_rank{rank}.json").read_text())["data_rank"]
        got = torch.load(out / f"logits_rank{rank}.pt")
        torch.testing.assert_close(got, ref_logits[data_rank], **LOGITS_TOL)
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, cfg.steps + 1))
    losses = [r["loss"] for r in records]
    assert losses[-1] < losses[0] - 0.05, "the run must actually train for the comparison to mean much"
    torch.testing.assert_close(torch.tensor(losses), torch.tensor([r["loss"] for r in ref_stats]),
                               rtol=0, atol=LOSS_ATOL)  # fmt: skip
    torch.testing.assert_close(torch.tensor([r["grad_norm"] for r in records]),
                               torch.tensor([r["grad_norm"] for r in ref_stats]),
                               rtol=GRAD_NORM_RTOL, atol=0)  # fmt: skip
    for key in ("balance_loss", "z_loss"):
        torch.testing.assert_close(torch.tensor([r[key] for r in records]), torch.tensor([r[key] for r in ref_stats]),
                                   rtol=0, atol=LOSS_ATOL)  # fmt: skip
    assert [r["consumed"] for r in records] == [cfg.global_batch_seqs * s for s in range(1, cfg.steps + 1)]
    # Each step routes every token of the global batch to K=2 experts, counted once (not per tp copy).
    assert all(sum(v) == cfg.global_batch_tokens * 2 for v in records[-1]["expert_load"].values())
    return records


# The tiny model with DeepSeek-V2/V3's multi-head latent attention (a q latent too).
MLA = {"attn_dropout": 0.0, "moe": {"bias_update_rate": 1e-3}, "attention_type": "mla", "q_lora_rank": 16,
       "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 16}  # fmt: skip

LAYOUTS = {
    "tp2": (2, {"tp": 2, "ep": 1}, {"dp": 1, "tp": 2, "ep": 1, "dp_replicate": 1}),
    "tp2_mla": (2, {"tp": 2, "ep": 1, "model": MLA}, {"dp": 1, "tp": 2, "ep": 1, "dp_replicate": 1}),
    "tp2_ep2": (4, {"tp": 2, "ep": 2}, {"dp": 2, "tp": 2, "ep": 2, "dp_replicate": 1}),
    "hsdp2x2_ep2": (4, {"dp_replicate": 2, "ep": 2}, {"dp": 4, "tp": 1, "ep": 2, "dp_replicate": 2}),
    "hsdp2_tp2_ep2": (4, {"dp_replicate": 2, "tp": 2, "ep": 2}, {"dp": 2, "tp": 2, "ep": 2, "dp_replicate": 2}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_one_process(manifest, tmp_path, name):
    world, overrides, expected = LAYOUTS[name]
    cfg = tiny_config(manifest, tmp_path, fsdp_prefetch=name == "tp2_ep2", **overrides)
    spawn(world, _layout_run, cfg.model_dump_json(), str(tmp_path))
    got = json.loads((tmp_path / "layout_rank0.json").read_text())
    assert {k: got[k] for k in expected} == expected
    _assert_matches_reference(cfg, tmp_path, world, expected["dp"])


# ---------------------------------------------------------------------------------------------
# Resuming under another layout
# ---------------------------------------------------------------------------------------------


def _train_until(rank: int, world: int, cfg_json: str, stop_step: int) -> None:
    """Train to `stop_step` and stop there (its final step: a checkpoint): a run cut short."""
    cfg = TrainConfig.model_validate_json(cfg_json)
    trainer, control = build_worker(cfg)
    trainer.cfg = cfg.model_copy(update={"steps": stop_step})  # the schedule still spans cfg.steps
    trainer.fit(control=control)


def _resume_run(rank: int, world: int, cfg_json: str) -> None:
    cfg = TrainConfig.model_validate_json(cfg_json)
    trainer, control = build_worker(cfg)
    trainer.resume(trainer.checkpoints.latest())
    trainer.fit(control=control)


@pytest.mark.slow
def test_resume_under_another_layout_continues_exactly(manifest, tmp_path):
    """10 steps on EP=2 x FSDP=2 (4 ranks, dp 4), checkpoint, 10 steps on TP=2 (2 ranks, dp 1): the
    same losses, norms and data (digest, cursor) as 20 uninterrupted steps of one process.

    One sequence per micro-batch: the balance loss is a per-micro-batch statistic, so only then
    do layouts of another dp group the sequences alike and compute the same function.
    """
    cut, steps = 10, 20
    first = tiny_config(manifest, tmp_path, ep=2, micro_batch=1)
    spawn(4, _train_until, first.model_dump_json(), cut)
    second = tiny_config(manifest, tmp_path, tp=2, ep=1, micro_batch=1, resume=True)
    spawn(2, _resume_run, second.model_dump_json())

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert [(r["tp"], r["dp"], r["ep"]) for r in records] == [(1, 4, 2)] * cut + [(2, 1, 1)] * (steps - cut)
    # The cursor: each step starts where the last ended, none repeated or skipped...
    batch = first.global_batch_seqs
    assert [r["consumed_start"] for r in records] == [batch * s for s in range(steps)]
    # ...and holds exactly the sequences one process reads at that step.
    single = ManifestDataset(manifest, first.seq_len, first.seed)
    expected_digests = [sequence_digest(single.read_batch(batch * s, batch), single.sequences_per_epoch)
                        for s in range(steps)]  # fmt: skip
    assert [r["data_digest"] for r in records] == expected_digests
    meta = json.loads((Path(tmp_path) / "checkpoints" / "step_00000010" / "meta.json").read_text())
    assert (meta["world"], meta["ep"], meta["tp"], meta["pp"], meta["dp_replicate"]) == (4, 2, 1, 1, 1)

    _, expected = _reference(tiny_config(manifest, tmp_path / "reference", micro_batch=1), 1)
    torch.testing.assert_close(torch.tensor([r["loss"] for r in records]), torch.tensor([r["loss"] for r in expected]),
                               rtol=0, atol=LOSS_ATOL)  # fmt: skip
    torch.testing.assert_close(torch.tensor([r["grad_norm"] for r in records]),
                               torch.tensor([r["grad_norm"] for r in expected]),
                               rtol=GRAD_NORM_RTOL, atol=0)  # fmt: skip
