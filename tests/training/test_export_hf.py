"""`export_hf`: a checkpoint saved the way the trainer saves it loads in transformers'
built-in Qwen2MoeForCausalLM and gives Flywheel's logits; non-Qwen2-MoE models are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from contract.tokenizer import SpecialTokens  # noqa: E402
from curation.tokenizer import train_bpe  # noqa: E402
from training.checkpoint import CheckpointManager, TrainingState  # noqa: E402
from training.config import ModelConfig, tiny  # noqa: E402
from training.export_hf import ExportError, export_hf  # noqa: E402
from training.optim import OptimizerConfig, RecipeScheduler, build_optimizer  # noqa: E402
from training.train_config import TrainConfig  # noqa: E402

VOCAB = 320  # room for a byte-level BPE: 256 bytes + 3 special tokens + a few merges


def with_overrides(cfg: ModelConfig, moe: dict | None = None, **fields) -> ModelConfig:
    data = cfg.model_dump()
    data["moe"].update(moe or {})
    return ModelConfig.model_validate({**data, **fields})


def save_checkpoint(cfg: ModelConfig, root: Path, step: int = 7, meta: dict | None = None) -> torch.nn.Module:
    """A seeded model with weights moved off their init (so routing and norms are not trivial),
    saved with its optimizer and scheduler through CheckpointManager, as the trainer does."""
    torch.manual_seed(0)
    model = cfg.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    opt_cfg = OptimizerConfig(schedule={"total_steps": 10, "warmup_steps": 1})
    optimizer = build_optimizer(model, opt_cfg)
    state = TrainingState(model, optimizer, RecipeScheduler(optimizer, opt_cfg), lambda: {"step": step}, lambda s: None)
    CheckpointManager(root / "checkpoints").save(step, state, meta)
    return model.eval()


def load_hf(out: Path) -> torch.nn.Module:
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert type(model).__name__ == "Qwen2MoeForCausalLM"
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


def test_refuses_models_qwen2_moe_cannot_represent(tmp_path: Path):
    sigmoid = with_overrides(tiny(VOCAB), moe={"score_func": "sigmoid", "normalize_topk": True})
    save_checkpoint(sigmoid, tmp_path / "run", meta={"model_config": sigmoid.model_dump(mode="json")})
    with pytest.raises(ExportError, match="softmax"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()

    # A config that does not describe the checkpoint is named tensor by tensor.
    wider = with_overrides(tiny(VOCAB), moe={"expert_dim": 48})
    with pytest.raises(ExportError, match="experts.gate_proj"):
        export_hf(tmp_path / "run", tmp_path / "hf", config=wider)
