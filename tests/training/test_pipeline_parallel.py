"""Pipeline parallelism computes what one process computes.

Same seed, same sequences: PP=2 (1F1B) on 2 gloo ranks, PP=2 x FSDP=2 on 4 ranks (with the
chunked LM loss), PP=2 interleaved 1F1B (two virtual stages per rank, a 4-layer tiny model) and
PP=2 x TP=2 on 4 ranks, against one process whose optimiser step sees every data rank's
micro-batches, with the router-bias update on (its sign(mean - load) step turns any difference in
the expert counts into a visible one). Compared over 20 optimiser steps:
- logits at initialisation on the last stage: rtol = atol = 1e-5;
- the logged LM, balance and z losses of every step: atol 1e-5 (metrics.jsonl rounds them to
  1e-6; the runs agree to that rounding: measured |diff| <= 6.1e-7);
- the gradient norm of every step (squares summed over stages): rtol 1e-4 (measured <= 1.4e-6);
- held-out evaluation after the last step, through the stages, batches of another shape than
  the schedule's: atol 1e-5 (measured <= 4.1e-8; logits at init: <= 4.5e-8).
A checkpoint written under PP=2 resumes under PP=1, and one written by one process resumes under
PP=2: steps 11-20 equal the uninterrupted run's (same bounds) and the data cursor is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.helpers import VOCAB, spawn, tiny_config, write_tiny_manifest
from training.config import tiny
from training.data.dataset import ManifestDataset
from training.evaluate import EvalSet
from training.launch import build_worker, run_worker
from training.layout import accumulation
from training.metrics_log import read_metrics
from training.pipeline import check_pipeline, split_model, stage_layer_ids, stages_of_rank
from training.train_config import TrainConfig
from training.trainer import Trainer

LOSS_ATOL, NORM_RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_tiny_manifest(tmp_path_factory.mktemp("pp-data"))


# ---------------------------------------------------------------------------------------------
# Splitting (no processes)
# ---------------------------------------------------------------------------------------------


def test_stages_are_balanced_by_layer_count_and_keep_the_layer_names():
    assert stage_layer_ids(2, 2) == [["0"], ["1"]]
    # Left-over layers go to the middle stages, then the first; the last runs the output head.
    assert stage_layer_ids(7, 3) == [["0", "1"], ["2", "3", "4"], ["5", "6"]]
    assert stage_layer_ids(5, 2) == [["0", "1", "2"], ["3", "4"]]
    assert stages_of_rank(1, 2, "interleaved-1f1b") == [1, 3]
    with pytest.raises(ValueError, match="cannot fill"):
        stage_layer_ids(2, 4)

    cfg = tiny(16).model_copy(update={"n_layers": 4})
    torch.manual_seed(0)
    full = cfg.build()
    names = dict(full.named_parameters())
    parts = []
    for rank in range(2):
        torch.manual_seed(0)
        stage = split_model(cfg.build(), stages_of_rank(rank, 2, "interleaved-1f1b"), n_stages=4)
        parts.append(dict(stage.named_parameters()))
        for name, param in parts[-1].items():  # the unsplit model's names and values
            torch.testing.assert_close(param, names[name], rtol=0, atol=0)
    assert set(parts[0]) | set(parts[1]) == set(names) and not set(parts[0]) & set(parts[1])
    assert {n.split(".")[1] for n in parts[0] if n.startswith("layers.")} == {"0", "2"}
    assert "tok_embeddings.weight" in parts[0] and "output.weight" in parts[1]


def test_too_little_accumulation_for_1f1b_says_what_to_change():
    with pytest.raises(ValueError, match="needs >= 4 micro-batches per step.*lower micro_batch"):
        check_pipeline(4, "1f1b", n_layers=8, n_microbatches=2, tied=False)
    check_pipeline(4, "gpipe", n_layers=8, n_microbatches=2, tied=False)
    with pytest.raises(ValueError, match="needs 8 stages"):
        check_pipeline(4, "interleaved-1f1b", n_layers=6, n_microbatches=8, tied=False)
    with pytest.raises(ValueError, match="tie_embeddings"):
        check_pipeline(2, "1f1b", n_layers=8, n_microbatches=8, tied=True)


# ---------------------------------------------------------------------------------------------
# Parity with one process (gloo ranks)
# ---------------------------------------------------------------------------------------------


def _eval_sets() -> list[EvalSet]:
    """Two sets of random documents: windows of 4 and 3 rows, not the schedule's micro-batch."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, VOCAB, size=n).astype(np.int64) for n in (40, 65, 23, 57, 31)]
    return [EvalSet("a", Path("a"), "web", docs[:3], 500), EvalSet("b", Path("b"), "code", docs[3:], 300)]


def _eval_losses(report: dict) -> list[float]:
    return [report["overall"]["loss"]] + [f["loss"] for _, f in sorted(report["files"].items())]


def _reference(cfg: TrainConfig, data_world: int) -> tuple[list[torch.Tensor], list[dict[str, float]], list[float]]:
    """One process, data_world ranks' data: each data rank's first micro-batch's logits at init
    (eval mode: no expert load counted), the stats of each step when one
    optimiser step takes all data ranks' micro-batches (rank-major, as they read them), and the
    evaluation losses after the last step."""
    single = ManifestDataset(cfg.manifest, cfg.seq_len, cfg.seed)
    reference = cfg.model_copy(update={"out_dir": str(Path(cfg.out_dir) / "reference"), "pp": 1})
    trainer = Trainer(reference, single, None, torch.device("cpu"))
    views = [
        ManifestDataset(cfg.manifest, cfg.seq_len, cfg.seed, rank=r, world_size=data_world) for r in range(data_world)
    ]
    micro, accum = accumulation(cfg.global_batch_seqs, data_world, cfg.micro_batch)
    trainer.model.eval()
    with torch.no_grad():
        logits = [trainer.model(*_inputs(trainer, view.read_batch(0, micro))).logits_BSV for view in views]
    stats = []
    for step in range(cfg.steps):
        start = step * cfg.global_batch_seqs
        micro_batches = [
            trainer.to_micro_batch(view.read_batch(start + m * data_world * micro, micro))
            for view in views
            for m in range(accum)
        ]
        trainer.step = step
        stats.append(trainer.train_step(micro_batches))
    trainer.eval_sets = _eval_sets()
    return logits, stats, _eval_losses(trainer.evaluate())


def _inputs(trainer: Trainer, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    mb = trainer.to_micro_batch(batch)
    return mb.inputs_BS, mb.doc_ids_BS


def _distributed_run(rank: int, world: int, cfg_json: str, out: str) -> None:
    """Each rank: the last stage's logits of the first micro-batch at init, cfg.steps steps, then
    an evaluation through the stages."""
    cfg = TrainConfig.model_validate_json(cfg_json)
    trainer, control = build_worker(cfg)
    mb = trainer.to_micro_batch(trainer.dataset.read_batch(0, trainer.micro_batch))
    trainer.model.eval()  # no expert load counted: the first bias update sees training's only
    logits = trainer.pipeline.forward(mb.inputs_BS, mb.doc_ids_BS)
    trainer.model.train()
    if logits is not None:
        torch.save({"data_rank": trainer.data_rank, "logits": logits}, Path(out) / f"logits_rank{rank}.pt")
    trainer.fit(control=control)
    trainer.eval_sets = _eval_sets()
    (Path(out) / f"eval_rank{rank}.json").write_text(json.dumps(_eval_losses(trainer.evaluate())))
    layout = trainer.layout
    (Path(out) / f"layout_rank{rank}.json").write_text(json.dumps({"pp": layout.pp, "dp": layout.dp}))


def _resume_run(rank: int, world: int, cfg_json: str, checkpoint: str) -> None:
    run_worker(TrainConfig.model_validate_json(cfg_json), resume_from=checkpoint)


def _assert_matches(records: list[dict], ref_stats: list[dict], first_step: int = 1) -> None:
    ref = ref_stats[first_step - 1 :]
    assert [r["step"] for r in records] == list(range(first_step, first_step + len(ref)))
    for key in ("loss", "balance_loss", "z_loss"):
        got, want = torch.tensor([r[key] for r in records]), torch.tensor([r[key] for r in ref])
        torch.testing.assert_close(got, want, rtol=0, atol=LOSS_ATOL, msg=lambda m, key=key: f"{key}: {m}")
    torch.testing.assert_close(
        torch.tensor([r["grad_norm"] for r in records]), torch.tensor([r["grad_norm"] for r in ref]),
        rtol=NORM_RTOL, atol=0,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "world, overrides, data_world",
    [
        (2, {"pp": 2, "checkpoint_every_steps": 10}, 1),
        (4, {"pp": 2, "loss_chunk_tokens": 24}, 2),
        (2, {"pp": 2, "pp_schedule": "interleaved-1f1b", "model": {"attn_dropout": 0.0, "n_layers": 4,
             "moe": {"bias_update_rate": 1e-3}}}, 1),
        (4, {"pp": 2, "tp": 2}, 1),
    ],
    ids=["pp2-1f1b", "pp2xfsdp2-chunked-loss", "pp2-interleaved", "pp2xtp2"],
)  # fmt: skip
def test_pipeline_parallel_matches_one_process(manifest, tmp_path, world, overrides, data_world):
    cfg = tiny_config(manifest, tmp_path, **overrides)
    spawn(world, _distributed_run, cfg.model_dump_json(), str(tmp_path))
    assert json.loads((tmp_path / "layout_rank0.json").read_text()) == {"pp": 2, "dp": data_world}

    ref_logits, ref_stats, ref_eval = _reference(cfg, data_world)
    last_stage = [torch.load(path) for path in sorted(tmp_path.glob("logits_rank*.pt"))]  # tp copies too
    assert {saved["data_rank"] for saved in last_stage} == set(range(data_world))
    for saved in last_stage:
        torch.testing.assert_close(saved["logits"], ref_logits[saved["data_rank"]], rtol=1e-5, atol=1e-5)

    for rank in range(world):  # every rank reports the last stage's evaluation
        got = json.loads((tmp_path / f"eval_rank{rank}.json").read_text())
        torch.testing.assert_close(torch.tensor(got), torch.tensor(ref_eval), rtol=0, atol=LOSS_ATOL)

    records = read_metrics(tmp_path)
    assert records[-1]["loss"] < records[0]["loss"] - 0.05, "the run must train for the comparison to mean much"
    _assert_matches(records, ref_stats)
    assert [r["consumed"] for r in records] == [cfg.global_batch_seqs * s for s in range(1, cfg.steps + 1)]
    # Each stage's router-bias update saw its own layers' global load (K=2 experts per token);
    # the metrics line gathers every stage's.
    loads = records[-1]["expert_load"]
    n_layers = cfg.build_model_config(VOCAB).n_layers
    assert set(loads) == {f"layers.{i}.ffn" for i in range(n_layers)}
    assert all(sum(v) == cfg.global_batch_tokens * 2 for v in loads.values())

    if "checkpoint_every_steps" in overrides:
        # Resume the PP=2 checkpoint of step 10 in one process: steps 11-20 as uninterrupted.
        resumed = tmp_path / "resumed-pp1"
        checkpoint = tmp_path / "checkpoints" / "step_00000010"
        run_worker(cfg.model_copy(update={"out_dir": str(resumed), "pp": 1}), resume_from=checkpoint)
        records = read_metrics(resumed)
        assert records[0]["consumed_start"] == 10 * cfg.global_batch_seqs
        _assert_matches(records, ref_stats, first_step=11)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_under_pp2(manifest, tmp_path):
    """pp=1 -> pp=2: a single process trains 10 of 20 steps and saves; two stages continue."""
    cfg = tiny_config(manifest, tmp_path)
    run_worker(cfg.model_copy(update={"steps": 10}))  # the schedule stays that of 20 steps
    resumed = tmp_path / "resumed-pp2"
    pp2 = cfg.model_copy(update={"out_dir": str(resumed), "pp": 2})
    spawn(2, _resume_run, pp2.model_dump_json(), str(tmp_path / "checkpoints" / "step_00000010"))
    records = read_metrics(resumed)
    assert records[0]["consumed_start"] == 10 * cfg.global_batch_seqs
    assert records[-1]["consumed"] == 20 * cfg.global_batch_seqs
    _, ref_stats, _ = _reference(cfg, 1)
    _assert_matches(records, ref_stats, first_step=11)
