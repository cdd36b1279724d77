"""`export_hf`: a checkpoint saved the way the trainer saves it loads in transformers' built-in
Qwen2MoeForCausalLM or (DeepSeek-V3-style configs) DeepseekV3ForCausalLM and gives Flywheel's
logits; models the target cannot represent are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from contract.tokenizer import SpecialTokens, load_tokenizer  # noqa: E402
from curation.tokenizer import train_bpe  # noqa: E402
from tests.training.helpers import VOCAB as MANIFEST_VOCAB  # noqa: E402
from tests.training.helpers import write_tiny_manifest  # noqa: E402
from training.chat_format import TOKENIZER_CONFIG, chat_tokenizer_config, encode_prompt  # noqa: E402
from training.checkpoint import CheckpointManager, TrainingState  # noqa: E402
from training.cli import train_command  # noqa: E402
from training.config import ModelConfig, tiny  # noqa: E402
from training.export_hf import ExportError, export_hf, load_checkpoint_model  # noqa: E402
from training.model import causal_lm_loss  # noqa: E402
from training.moe import moe_layers, register_router_bias_hook  # noqa: E402
from training.optim import OptimizerConfig, RecipeScheduler, build_optimizer  # noqa: E402
from training.train_config import TrainConfig  # noqa: E402

VOCAB = 320  # room for a byte-level BPE: 256 bytes + 3 special tokens + a few merges


def with_overrides(cfg: ModelConfig, moe: dict | None = None, **fields) -> ModelConfig:
    data = cfg.model_dump()
    data["moe"].update(moe or {})
    return ModelConfig.model_validate({**data, **fields})


def save_checkpoint(
    cfg: ModelConfig, root: Path, step: int = 7, meta: dict | None = None, train_steps: int = 0
) -> torch.nn.Module:
    """A seeded model with weights moved off their init (so routing and norms are not trivial),
    then trained `train_steps` steps, saved with its optimizer and scheduler through
    CheckpointManager, as the trainer does."""
    torch.manual_seed(0)
    model = cfg.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    opt_cfg = OptimizerConfig(lr=1e-2, schedule={"total_steps": 10, "warmup_steps": 1})
    optimizer = build_optimizer(model, opt_cfg)
    if train_steps:
        train_a_few_steps(model, optimizer, train_steps)
    state = TrainingState(model, optimizer, RecipeScheduler(optimizer, opt_cfg), lambda: {"step": step}, lambda s: None)
    CheckpointManager(root / "checkpoints").save(step, state, meta)
    return model.eval()


def load_hf(out: Path, architecture: str = "Qwen2MoeForCausalLM") -> torch.nn.Module:
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert type(model).__name__ == architecture
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model.eval()


def max_logit_diff(flywheel: torch.nn.Module, hf: torch.nn.Module, vocab: int) -> float:
    tokens = torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (flywheel(tokens).logits_BSV - hf(tokens).logits).abs().max().item()


def test_export_gives_flywheel_logits_and_tokenizer(tmp_path: Path):
    # Every option the mapping has to carry: GQA, q/k/v bias, a dense first layer, renormalised
    # top-k, non-default RoPE base and norm eps.
    cfg = with_overrides(
        tiny(VOCAB), moe={"n_dense_layers": 1, "normalize_topk": True},
        n_kv_heads=2, qkv_bias=True, rope_theta=500_000.0, norm_eps=1e-5,
    )  # fmt: skip
    flywheel = save_checkpoint(cfg, tmp_path / "run", meta={"model_config": cfg.model_dump(mode="json")})
    texts = [["the quick brown fox jumps over the lazy dog"] * 20, ["pack my box with five dozen jugs"] * 20]
    tokenizer = tmp_path / "tokenizer.json"
    train_bpe(texts, vocab_size=VOCAB, special=SpecialTokens()).save(str(tokenizer))

    summary = export_hf(tmp_path / "run", tmp_path / "hf", tokenizer=tokenizer)

    assert summary["step"] == 7 and summary["tokenizer"] == {"bos": 0, "eos": 1, "pad": 2}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(summary["files"])
    hf = load_hf(tmp_path / "hf")
    assert hf.config.mlp_only_layers == [0] and hf.config.num_key_value_heads == 2
    assert max_logit_diff(flywheel, hf, VOCAB) < 1e-4
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.eos_token_id == 1 and tok.decode(tok("the lazy dog")["input_ids"]) == "the lazy dog"
    assert tok.chat_template is None  # a pretraining run has no chat template


def test_export_of_an_sft_run_carries_its_chat_template(tmp_path: Path):
    """An SFT run writes OUT/tokenizer_config.json; its export renders prompts as SFT encodes them."""
    cfg = tiny(VOCAB)
    save_checkpoint(cfg, tmp_path / "run", meta={"model_config": cfg.model_dump(mode="json")})
    (tmp_path / "run" / TOKENIZER_CONFIG).write_text(json.dumps(chat_tokenizer_config()))
    tokenizer = tmp_path / "tokenizer.json"
    train_bpe([["what is two plus two"] * 20], vocab_size=VOCAB, special=SpecialTokens()).save(str(tokenizer))

    export_hf(tmp_path / "run", tmp_path / "hf", tokenizer=tokenizer)

    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what is two plus two?"}]
    rendered = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    assert rendered["input_ids"] == encode_prompt(messages, load_tokenizer(str(tokenizer)))


def test_export_from_the_run_config_with_tied_embeddings(tmp_path: Path):
    # A checkpoint whose meta.json has no model config: the run's TrainConfig supplies it and the
    # vocabulary comes from the checkpoint's embedding.
    train_cfg = TrainConfig.model_validate({
        "preset": "tiny", "model": {"tie_embeddings": True, "moe": {"n_shared_experts": 2}},
        "optimizer": {},
    })  # fmt: skip
    cfg = train_cfg.build_model_config(VOCAB)
    flywheel = save_checkpoint(cfg, tmp_path / "run")

    with pytest.raises(ExportError, match="--config"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    export_hf(tmp_path / "run" / "checkpoints", tmp_path / "hf", config=train_cfg)

    hf = load_hf(tmp_path / "hf")
    assert hf.config.tie_word_embeddings and hf.config.shared_expert_intermediate_size == 2 * cfg.moe.expert_dim
    assert max_logit_diff(flywheel, hf, VOCAB) < 1e-4

    export_hf(tmp_path / "run", tmp_path / "hf16", config=train_cfg, dtype="bfloat16")
    with safe_open(tmp_path / "hf16" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert AutoConfig.from_pretrained(tmp_path / "hf16").dtype == torch.bfloat16


def test_refuses_models_their_target_cannot_represent(tmp_path: Path):
    scaled = with_overrides(tiny(VOCAB), moe={"route_scale": 2.0})  # softmax: a Qwen2-MoE target
    save_checkpoint(scaled, tmp_path / "run", meta={"model_config": scaled.model_dump(mode="json")})
    with pytest.raises(ExportError, match="onto Qwen2MoeForCausalLM: Qwen2-MoE has no route scale"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    # V3's router on plain multi-head attention: DeepseekV3 is the target, MLA is missing.
    sigmoid = with_overrides(tiny(VOCAB), moe={"score_func": "sigmoid", "shared_expert_gate": False})
    with pytest.raises(ExportError, match="onto DeepseekV3ForCausalLM: .*latent attention"):
        export_hf(tmp_path / "run", tmp_path / "hf", config=sigmoid)

    # A config that does not describe the checkpoint is named tensor by tensor.
    wider = with_overrides(tiny(VOCAB), moe={"expert_dim": 48})
    with pytest.raises(ExportError, match="experts.gate_proj"):
        export_hf(tmp_path / "run", tmp_path / "hf", config=wider)


# ---------------------------------------------------------------------------------------------
# DeepSeek-V3
# ---------------------------------------------------------------------------------------------


def train_a_few_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """Optimizer steps on random tokens with the trainer's router-bias hook, so the aux-loss-free
    routing bias (transformers' e_score_correction_bias) is no longer zero."""
    handle = register_router_bias_hook(optimizer, model)
    data = torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(2))
    model.train()
    for _ in range(steps):
        out = model(data[:, :-1])
        (causal_lm_loss(out.logits_BSV, data[:, 1:]) + out.aux_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    handle.remove()


V3_VARIANTS = {
    # tiny-v3 with V3's route scale and a bias rate that moves the bias enough to change routing.
    "tiny-v3": {"moe": {"route_scale": 2.5, "bias_update_rate": 0.02}},
    # No query latent, tied embeddings, no groups, a value head wider than the query-key nope part.
    "full-q-tied-ungrouped": {
        "q_lora_rank": None, "tie_embeddings": True, "v_head_dim": 24, "rope_theta": 500_000.0,
        "moe": {"topk_groups": None, "n_expert_groups": 1, "bias_update_rate": 0.02, "n_shared_experts": 2},
    },
}  # fmt: skip


@pytest.mark.parametrize("variant", list(V3_VARIANTS))
def test_deepseek_v3_export_of_a_trained_tiny_v3_gives_flywheel_logits(tmp_path: Path, variant: str):
    train_cfg = TrainConfig.model_validate({"preset": "tiny-v3", "model": V3_VARIANTS[variant], "optimizer": {}})
    cfg = train_cfg.build_model_config(VOCAB)
    flywheel = save_checkpoint(cfg, tmp_path / "run", step=3, train_steps=3)
    assert all(m.router_bias.abs().sum() > 0 for m in moe_layers(flywheel).values())

    summary = export_hf(tmp_path / "run", tmp_path / "hf", config=train_cfg)

    assert summary["architecture"] == "DeepseekV3ForCausalLM"
    hf = load_hf(tmp_path / "hf", "DeepseekV3ForCausalLM")
    moe = cfg.moe
    assert hf.config.first_k_dense_replace == moe.n_dense_layers == 1 and hf.config.rope_interleave
    assert (hf.config.n_group, hf.config.topk_group) == ((4, 2) if moe.topk_groups else (1, 1))
    assert hf.config.routed_scaling_factor == moe.route_scale and hf.config.norm_topk_prob
    assert max_logit_diff(flywheel, hf, VOCAB) < 1e-4
    # The routing bias reached transformers and matters: without it the logits move.
    for layer in hf.model.layers[1:]:
        layer.mlp.gate.e_score_correction_bias.zero_()
    assert max_logit_diff(flywheel, hf, VOCAB) > 1e-3


def test_a_tiny_v3_trainer_run_round_trips_through_transformers(tmp_path: Path):
    # `flywheel train --preset tiny-v3 --local` for 4 steps, then `export-hf` of its out folder.
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "seq_len": 32, "global_batch_tokens": 256, "micro_batch": 4, "peak_tflops_per_worker": 0.05,
        "model": {"attn_dropout": 0.0, "moe": {"bias_update_rate": 0.02}}, "optimizer": {"lr": 1e-2},
    }))  # fmt: skip
    out = tmp_path / "out"
    manifest = write_tiny_manifest(tmp_path / "data")
    train_command(config, manifest=manifest, preset="tiny-v3", steps=4, workers=1, out=out, local=True)
    flywheel, meta = load_checkpoint_model(out)
    assert meta["step"] == 4 and all(m.router_bias.abs().sum() > 0 for m in moe_layers(flywheel).values())

    assert export_hf(out, tmp_path / "hf")["architecture"] == "DeepseekV3ForCausalLM"
    assert max_logit_diff(flywheel, load_hf(tmp_path / "hf", "DeepseekV3ForCausalLM"), MANIFEST_VOCAB) < 1e-4
    # bfloat16: every tensor but the routing bias, which transformers keeps in fp32.
    export_hf(out, tmp_path / "hf16", dtype="bfloat16")
    with safe_open(tmp_path / "hf16" / "model.safetensors", "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert {d for k, d in dtypes.items() if not k.endswith("e_score_correction_bias")} == {"BF16"}
    assert {d for k, d in dtypes.items() if k.endswith("e_score_correction_bias")} == {"F32"}
