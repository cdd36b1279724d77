"""Every memory and speed switch gives the results of the plain run (CPU, tiny preset).

Tolerances, switch on vs off:
- activation checkpointing, full and selective: losses, gradients, gradient norms and expert
  loads exactly equal, one process or FSDP + EP on 2 ranks (the recompute repeats the same fp32
  ops); parameter names unchanged;
- chunked cross-entropy: loss and gradients within 1e-6 absolute, gradient norms within 1e-5
  relative (only the summation order differs);
- FlexAttention vs the dense document mask: logits within 1e-5 (another kernel, fp32), with
  MHA, GQA and MLA; gradients within 1e-5 on CUDA only (torch 2.13 has no CPU backward for
  flex_attention);
- bf16 autocast: per-step losses within 5e-3 of fp32 over 3 steps (the tiny model's loss is
  ~2.77; measured 4e-5);
- torch.compile of the blocks: traced with aot_eager, loss and gradients within 1e-6 in fp32
  and 1e-2 in bf16 (rounding points move), expert loads equal; with inductor (slow), per-step
  losses within 1e-4 and gradient norms within 1e-3 relative;
- async checkpoints: a run that saves asynchronously and resumes has exactly the losses and
  data of a run that never stopped (local and S3); on 2 ranks resumed on 1, losses within 1e-3
  as in test_checkpoint_resume (other micro-batch groupings of the balance loss).
"""

from __future__ import annotations

import pytest
import torch

from tests.training.helpers import VOCAB, spawn, tiny_config, write_tiny_manifest
from training.checkpoint import CheckpointManager, TrainingState, read_meta
from training.config import ModelConfig, preset
from training.launch import run_worker
from training.memory import apply_activation_checkpointing, apply_compile, autocast
from training.metrics_log import read_metrics
from training.model import Transformer, causal_lm_loss, chunked_lm_loss, doc_ids_from_starts
from training.moe import GroupedExperts, experts_grouped_mm, moe_layers
from training.train_config import TrainConfig

STEPS = 3


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.model_validate({**preset("tiny", VOCAB).model_dump(), "attn_dropout": 0.0, **overrides})
    return cfg.build()


def packed_batch(seed: int = 1, bsz: int = 2, seq: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens_BS (seq + 1 wide: inputs and shifted targets) and doc_ids_BS of ~4 documents a row."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (bsz, seq + 1), generator=gen)
    starts = torch.rand(bsz, seq, generator=gen) < 0.12
    return tokens, doc_ids_from_starts(starts)


def forward_backward(model: Transformer, tokens: torch.Tensor, doc_ids: torch.Tensor):
    """(loss, gradients by name, expert loads by layer) of one training step's backward."""
    model.train()
    out = model(tokens[:, :-1], doc_ids)
    loss = causal_lm_loss(out.logits_BSV, tokens[:, 1:]) + out.aux_loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    loads = {name: m.tokens_per_expert.clone() for name, m in moe_layers(model).items()}
    return loss.detach(), grads, loads


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_tiny_manifest(tmp_path_factory.mktemp("data"))


def train(manifest: str, out, **overrides) -> list[dict]:
    run_worker(tiny_config(manifest, out, steps=STEPS, device="cpu", **overrides))
    return read_metrics(out)


@pytest.fixture(scope="module")
def plain_run(manifest, tmp_path_factory) -> list[dict]:
    return train(manifest, tmp_path_factory.mktemp("plain"))


def column(records: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([r[key] for r in records], dtype=torch.float64)


# -- activation checkpointing -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_keeps_loss_gradients_loads_and_names(mode):
    tokens, doc_ids = packed_batch()
    plain = tiny_model()
    checkpointed = apply_activation_checkpointing(tiny_model(), mode)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # DCP checkpoints load across

    loss, grads, loads = forward_backward(plain, tokens, doc_ids)
    ac_loss, ac_grads, ac_loads = forward_backward(checkpointed, tokens, doc_ids)
    torch.testing.assert_close(ac_loss, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(ac_grads[name], grad, rtol=0, atol=0, msg=name)
    # Counted once: the recompute in backward does not add to the loads.
    routed = tokens[:, :-1].numel() * plain.cfg.moe.n_activated_experts
    for name, load in loads.items():
        assert load.sum() == routed
        torch.testing.assert_close(ac_loads[name], load, rtol=0, atol=0)


def test_activation_checkpointing_in_training_gives_the_same_steps(manifest, plain_run, tmp_path):
    got = train(manifest, tmp_path, activation_checkpointing="selective")
    for key in ("loss", "balance_loss", "z_loss", "grad_norm"):
        torch.testing.assert_close(column(got, key), column(plain_run, key), rtol=0, atol=0)
    assert [r["expert_load"] for r in got] == [r["expert_load"] for r in plain_run]


def test_switches_under_fsdp_and_ep_give_the_same_steps(manifest, tmp_path):
    """2 ranks, experts split 4 + 4. AC: the recompute reruns the EP hooks (or reuses the saved
    all-to-all under selective) and FSDP2 gathers the block again for backward. Chunked loss:
    the output projection runs outside the root's forward, on its still-gathered weight."""
    switches = {
        "none": {},
        "selective": {"activation_checkpointing": "selective"},
        "full": {"activation_checkpointing": "full"},
        "chunked": {"loss_chunk_tokens": 24},
    }
    runs = {}
    for name, overrides in switches.items():
        cfg = tiny_config(manifest, tmp_path / name, steps=STEPS, device="cpu", ep=2, **overrides)
        spawn(2, _run, cfg.model_dump_json())
        runs[name] = read_metrics(tmp_path / name)
    for name in ("selective", "full", "chunked"):
        loss_atol, norm_rtol = (1e-6, 1e-5) if name == "chunked" else (0, 0)  # AC: bit-identical
        torch.testing.assert_close(column(runs[name], "loss"), column(runs["none"], "loss"), rtol=0, atol=loss_atol)
        torch.testing.assert_close(column(runs[name], "grad_norm"), column(runs["none"], "grad_norm"),
                                   rtol=norm_rtol, atol=0)  # fmt: skip
        assert [r["expert_load"] for r in runs[name]] == [r["expert_load"] for r in runs["none"]]


# -- chunked cross-entropy --------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_chunked_loss_matches_the_full_loss_and_gradients(tie):
    tokens, doc_ids = packed_batch()
    targets = tokens[:, 1:].clone()
    targets[0, :5] = -100  # ignored positions count in neither the sum nor the mean
    grads = []
    for chunk in (0, 7):  # 7 does not divide the 64 tokens: a short last chunk
        model = tiny_model(tie_embeddings=tie)
        out = model(tokens[:, :-1], doc_ids, return_hidden=chunk > 0)
        if chunk:
            assert out.logits_BSV is None
            loss = chunked_lm_loss(out.hidden_BSD, model.output, targets, chunk)
        else:
            loss = causal_lm_loss(out.logits_BSV, targets)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full_loss, full_grads), (chunked_loss, chunked_grads) = grads
    torch.testing.assert_close(chunked_loss, full_loss, rtol=0, atol=1e-6)
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=0, atol=1e-6, msg=name)


def test_chunked_loss_in_training_gives_the_same_steps(manifest, plain_run, tmp_path):
    got = train(manifest, tmp_path, loss_chunk_tokens=24)
    torch.testing.assert_close(column(got, "loss"), column(plain_run, "loss"), rtol=0, atol=1e-6)
    torch.testing.assert_close(column(got, "grad_norm"), column(plain_run, "grad_norm"), rtol=1e-5, atol=0)


# -- FlexAttention ----------------------------------------------------------------------------

ATTENTION_VARIANTS = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "mla": {"attention_type": "mla", "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
            "v_head_dim": 16},
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
def test_flex_attention_matches_the_dense_document_mask(variant):
    tokens, doc_ids = packed_batch()
    model = tiny_model(**ATTENTION_VARIANTS[variant]).eval()
    with torch.no_grad():
        dense = model(tokens[:, :-1], doc_ids).logits_BSV
        model.attention_kernel = "flex"
        flex = model(tokens[:, :-1], doc_ids).logits_BSV
        causal = model(tokens[:, :-1]).logits_BSV  # no document ids: SDPA's causal path either way
    torch.testing.assert_close(flex, dense, rtol=0, atol=1e-5)
    assert not torch.allclose(causal, dense, atol=1e-5)  # the documents did matter


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no CPU backward for flex_attention")
@pytest.mark.parametrize("variant", ["mha", "gqa"])
def test_flex_attention_gradients_match_the_dense_document_mask(variant):
    tokens, doc_ids = (t.cuda() for t in packed_batch())
    grads = []
    for kernel in ("sdpa", "flex"):
        model = tiny_model(**ATTENTION_VARIANTS[variant]).cuda()
        model.attention_kernel = kernel
        out = model(tokens[:, :-1], doc_ids)
        causal_lm_loss(out.logits_BSV, tokens[:, 1:]).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=1e-5, msg=name)


# -- bf16 autocast ------------------------------------------------------------------------------


def test_autocast_runs_the_experts_in_bf16_on_the_grouped_path():
    experts = tiny_model().layers["0"].ffn.experts
    assert isinstance(experts, GroupedExperts)
    x_ND, counts_E = torch.randn(10, 64), torch.tensor([3, 0, 2, 0, 1, 4, 0, 0])
    with autocast(torch.device("cpu"), torch.bfloat16):
        y_ND = experts(x_ND, counts_E)
    assert y_ND.dtype == torch.bfloat16
    assert experts.kernel(x_ND.bfloat16()) is experts_grouped_mm
    torch.testing.assert_close(y_ND.float(), experts(x_ND, counts_E), rtol=0.05, atol=2e-3)


def test_bf16_autocast_tracks_the_fp32_losses(manifest, plain_run, tmp_path):
    got = train(manifest, tmp_path, param_dtype="bfloat16")
    torch.testing.assert_close(column(got, "loss"), column(plain_run, "loss"), rtol=0, atol=5e-3)


# -- torch.compile --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ac, dtype",
    [("none", None), ("full", None), ("full", torch.bfloat16), ("selective", torch.bfloat16)],
)
def test_compiled_blocks_trace_to_the_same_loss_gradients_and_loads(ac, dtype):
    """Dynamo and AOT autograd without inductor's code generation (seconds, not a minute).
    In fp32 a checkpointed block breaks on the padded-bmm experts and runs eagerly; in bf16
    (grouped_mm) dynamo captures it whole, the load counter's add included: counted once."""
    tokens, doc_ids = packed_batch()
    results = []
    for compiled in (False, True):
        model = apply_activation_checkpointing(tiny_model(), ac)
        if compiled:
            apply_compile(model, backend="aot_eager")
        with autocast(torch.device("cpu"), dtype):
            results.append(forward_backward(model, tokens, doc_ids))
    (loss, grads, loads), (c_loss, c_grads, c_loads) = results
    atol = 1e-6 if dtype is None else 1e-2  # bf16: the compiled graph rounds at other points
    torch.testing.assert_close(c_loss, loss, rtol=0, atol=atol)
    for name, grad in grads.items():
        torch.testing.assert_close(c_grads[name], grad, rtol=0, atol=atol, msg=name)
    assert {name: load.tolist() for name, load in c_loads.items()} == {n: v.tolist() for n, v in loads.items()}


@pytest.mark.slow
def test_compiled_blocks_give_the_same_steps(manifest, plain_run, tmp_path):
    """Inductor: about 60 s of compilation on 2 busy cores."""
    got = train(manifest, tmp_path, compile=True)
    torch.testing.assert_close(column(got, "loss"), column(plain_run, "loss"), rtol=0, atol=1e-4)
    torch.testing.assert_close(column(got, "grad_norm"), column(plain_run, "grad_norm"), rtol=1e-3, atol=0)


@pytest.mark.slow
def test_compiled_checkpointed_blocks_count_expert_loads_once():
    """bf16 autocast puts the experts on grouped_mm, so dynamo captures each checkpointed block
    whole, with the load counter's in-place add inside (about 100 s of inductor on 2 cores)."""
    tokens, doc_ids = packed_batch()
    results = []
    for model in (tiny_model(), apply_compile(apply_activation_checkpointing(tiny_model(), "full"))):
        with autocast(torch.device("cpu"), torch.bfloat16):
            results.append(forward_backward(model, tokens, doc_ids))
    (loss, grads, loads), (c_loss, c_grads, c_loads) = results
    torch.testing.assert_close(c_loss, loss, rtol=0, atol=1e-3)
    assert {name: load.tolist() for name, load in c_loads.items()} == {n: v.tolist() for n, v in loads.items()}


# -- async checkpoints ------------------------------------------------------------------------------


def test_async_save_is_a_copy_taken_when_save_returns(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state = TrainingState(model, optimizer, scheduler, lambda: {"step": 1}, lambda _: None)
    manager = CheckpointManager(tmp_path / "checkpoints", async_save=True)
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    location = manager.save(1, state, {"note": "async"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # training goes on while the background thread writes
    manager.wait()
    assert read_meta(location)["note"] == "async" and manager.latest() == location

    restored = tiny_model()
    restored_opt = torch.optim.AdamW(restored.parameters())
    restored_state = TrainingState(restored, restored_opt, torch.optim.lr_scheduler.LambdaLR(restored_opt, lambda _: 1.0),
                                   lambda: {"step": 0}, lambda _: None)  # fmt: skip
    with torch.no_grad():
        for p in restored.parameters():
            p.zero_()
    manager.load(location, restored_state)
    for name, p in restored.named_parameters():
        torch.testing.assert_close(p, saved[name], rtol=0, atol=0, msg=name)


@pytest.fixture(params=["local", "s3"])
def out_location(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "run")
        return
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    from tests.s3 import local_s3

    with local_s3() as s3, pytest.MonkeyPatch.context() as mp:
        for key, value in s3.env.items():
            mp.setenv(key, value)
        yield f"s3://{s3.bucket}/runs/async"


def test_async_checkpoints_resume_like_sync_ones(manifest, plain_run, out_location):
    # Two steps saving after each, asynchronously; then a restart from step 2 to the end.
    run_worker(tiny_config(manifest, out_location, steps=2, device="cpu", async_checkpoint=True,
                           checkpoint_every_steps=1, metrics_flush_s=0))  # fmt: skip
    checkpoints = CheckpointManager(f"{out_location}/checkpoints")
    assert read_meta(checkpoints.latest())["step"] == 2  # fit waited for the last write
    run_worker(tiny_config(manifest, out_location, steps=STEPS, device="cpu", async_checkpoint=True,
                           resume=True, metrics_flush_s=0))  # fmt: skip
    got = read_metrics(out_location)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["data_digest"] for r in got] == [r["data_digest"] for r in plain_run]
    torch.testing.assert_close(column(got, "loss"), column(plain_run, "loss"), rtol=0, atol=0)
    assert read_meta(checkpoints.latest())["step"] == STEPS


def _run(rank: int, world: int, cfg_json: str) -> None:
    run_worker(TrainConfig.model_validate_json(cfg_json))


def test_async_checkpoints_of_two_ranks_resume_on_one(manifest, plain_run, tmp_path):
    """Under FSDP the background save has its own gloo group: its collectives never interleave
    with the training's. Saved after every step on 2 ranks, resumed on 1 process."""
    out = tmp_path / "run"
    cfg = tiny_config(manifest, out, steps=2, device="cpu", async_checkpoint=True, checkpoint_every_steps=1)
    spawn(2, _run, cfg.model_dump_json())
    assert read_meta(CheckpointManager(out / "checkpoints").latest())["world"] == 2
    run_worker(tiny_config(manifest, out, steps=STEPS, device="cpu", async_checkpoint=True, resume=True))
    got = read_metrics(out)
    assert [r["world"] for r in got] == [2, 2, 1]
    assert [r["data_digest"] for r in got] == [r["data_digest"] for r in plain_run]
    # As in test_checkpoint_resume: 2 ranks group the micro-batches' balance loss differently.
    torch.testing.assert_close(column(got, "loss"), column(plain_run, "loss"), rtol=0, atol=1e-3)
