"""Export a Flywheel checkpoint as a Hugging Face `Qwen2MoeForCausalLM` or `DeepseekV3ForCausalLM` folder.

    flywheel export-hf CHECKPOINT OUT [--config RUN.yaml] [--tokenizer tokenizer.json] [--dtype float32]
    AutoModelForCausalLM.from_pretrained(OUT)        # built-in architecture, no remote code

CHECKPOINT is a step directory written by `CheckpointManager` (DCP shards + meta.json), a
checkpoints folder, or a run's out_dir (the latest complete step is taken). The DCP shards are
read into plain tensors in this one process (no process group), whatever layout saved them.

The model's architecture comes from meta.json's `model_config` when the trainer stored it,
otherwise from the run's training config (`config`) with the vocabulary read off the
checkpoint; every tensor shape is checked against the checkpoint either way.

The architecture is `ModelConfig.hf_architecture()`: DeepSeek-V3-style configs (sigmoid router,
routing bias, ungated shared expert, MLA) become `DeepseekV3ForCausalLM`, the others
`Qwen2MoeForCausalLM`; `ModelConfig.hf_export_problems` names what the target cannot express.

Layout written (the Hub's layouts, which vLLM and transformers 4.x read directly and
transformers 5.x fuses on load through its conversion mapping):
  - routed experts one Linear each, `mlp.experts.{e}.{gate,up,down}_proj.weight`;
  - Qwen2-MoE: q/k/v biases always present (zeros when the model has none), `qkv_bias=True`:
    older readers build them unconditionally, and a zero bias is the same function;
  - DeepSeek-V3: MLA weights under their own names, the RoPE rows of q and of the shared key
    permuted to DeepSeek's interleaved-pair layout (`rope_interleave=True`, what DeepSeek's
    checkpoints and vLLM use); `mlp.gate.e_score_correction_bias` = the routing bias (fp32,
    zeros without one); no multi-token-prediction layers.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from tokenizers import Tokenizer
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from contract.layout import CurationRun, TrainingRun
from contract.tokenizer import SpecialTokens
from training.chat_format import TOKENIZER_CONFIG
from training.checkpoint import CheckpointManager, read_meta
from training.config import HF_DEEPSEEK_V3, ModelConfig
from training.train_config import TrainConfig, load_train_config

MODEL_PREFIX = "app.model."  # CheckpointManager saves {"app": TrainingState}, whose "model" is this
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPECIAL_TOKEN_NAMES = SpecialTokens().model_dump()  # the names curation trains the tokenizer with


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked (a message the user can act on)."""


# ---------------------------------------------------------------------------------------------
# Reading the checkpoint
# ---------------------------------------------------------------------------------------------


def resolve_checkpoint(path: str | Path) -> Path:
    """The step directory for a step directory, a checkpoints folder or a run's out_dir."""
    path = Path(path)
    if (path / TrainingRun.CHECKPOINT_META).is_file():
        return path
    for root in (path, path / TrainingRun.CHECKPOINTS):
        latest = CheckpointManager(root).latest()
        if latest is not None:
            return Path(latest)
    raise ExportError(f"{path}: no complete checkpoint (a step_* directory with {TrainingRun.CHECKPOINT_META})")


def checkpoint_tensor_shapes(step_dir: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Model tensor name -> (global shape, dtype), read from DCP's .metadata alone."""

    metadata = FileSystemReader(str(step_dir)).read_metadata().state_dict_metadata
    return {
        key[len(MODEL_PREFIX) :]: (tuple(md.size), md.properties.dtype)
        for key, md in metadata.items()
        if key.startswith(MODEL_PREFIX) and isinstance(md, TensorStorageMetadata)
    }


def resolve_model_config(
    step_dir: Path, config: str | Path | TrainConfig | ModelConfig | None = None
) -> ModelConfig:
    """The checkpoint's ModelConfig: `config` when given (a ModelConfig, a TrainConfig or its
    file, with the vocabulary taken from the checkpoint), else meta.json's `model_config`."""
    if isinstance(config, ModelConfig):
        return config
    if config is not None:
        train_cfg = config if isinstance(config, TrainConfig) else load_train_config(config)
        shapes = checkpoint_tensor_shapes(step_dir)
        if "tok_embeddings.weight" not in shapes:
            raise ExportError(f"{step_dir}: the checkpoint holds no model embedding")
        return train_cfg.build_model_config(shapes["tok_embeddings.weight"][0][0])
    meta = read_meta(step_dir)
    if "model_config" not in meta:
        raise ExportError(
            f"{step_dir}/{TrainingRun.CHECKPOINT_META} does not record the model config; pass the run's training "
            "config (--config RUN.yaml)"
        )
    return ModelConfig.model_validate(meta["model_config"])


def load_model_state(step_dir: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The model's tensors (Flywheel names) from a DCP checkpoint, in the dtype saved.

    Shapes are checked against `cfg` first (built on the meta device: nothing allocated), so a
    config that does not describe this checkpoint fails with the offending tensor named.
    """

    with torch.device("meta"):
        expected = cfg.build().state_dict()
    saved = checkpoint_tensor_shapes(step_dir)
    if cfg.tie_embeddings:
        expected.pop("output.weight")  # the same tensor as tok_embeddings.weight
    problems = []
    for name, tensor in expected.items():
        if name not in saved:
            problems.append(f"{name}: missing from the checkpoint")
        elif saved[name][0] != tuple(tensor.shape):
            problems.append(f"{name}: checkpoint {saved[name][0]}, config {tuple(tensor.shape)}")
    if problems:
        raise ExportError(f"{step_dir} does not match the model config: " + "; ".join(problems[:5]))

    state = {name: torch.empty(tuple(t.shape), dtype=saved[name][1]) for name, t in expected.items()}
    # DCP flattens {"app": {"model": {...}}} to the same "app.model.<name>" keys it saved; keys
    # not asked for (optimizer moments, trainer state) are simply not read.
    with warnings.catch_warnings():  # DCP warns that it "assumes" one process even with no_dist
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"app": {"model": state}}, checkpoint_id=str(step_dir), no_dist=True)
    return state


def load_checkpoint_model(
    path: str | Path, config: str | Path | TrainConfig | ModelConfig | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model, meta.json) of a checkpoint (any layout; see `resolve_checkpoint`): a plain
    single-process float32 model on CPU in eval mode, whatever layout and dtype saved it."""
    step_dir = resolve_checkpoint(path)
    cfg = resolve_model_config(step_dir, config)
    state = load_model_state(step_dir, cfg)
    if cfg.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model = cfg.build()
    model.load_state_dict(state, strict=True)
    return model.eval(), read_meta(step_dir)


# ---------------------------------------------------------------------------------------------
# The Hugging Face side
# ---------------------------------------------------------------------------------------------


def check_exportable(cfg: ModelConfig) -> str:
    """The architecture `cfg` exports to; ExportError when it does not map exactly onto it."""
    architecture = cfg.hf_architecture()
    problems = cfg.hf_export_problems(architecture)
    if problems:
        raise ExportError(f"this model does not map exactly onto {architecture}: " + "; ".join(problems))
    return architecture


def qwen2_moe_config(cfg: ModelConfig, **extra: Any):
    from transformers import Qwen2MoeConfig  # transformers (~2 s): export only

    moe = cfg.moe
    return Qwen2MoeConfig(
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.attn_head_dim,
        use_sliding_window=False,
        max_window_layers=cfg.n_layers,
        qkv_bias=True,  # see the module docstring: zeros when Flywheel has no bias
        shared_expert_intermediate_size=moe.shared_dim,
        num_experts=moe.n_routed_experts,
        decoder_sparse_step=1,
        mlp_only_layers=list(range(moe.n_dense_layers)),
        router_aux_loss_coef=moe.balance_loss_coef,
        **extra,
    )


def deepseek_v3_config(cfg: ModelConfig, **extra: Any):
    from transformers import DeepseekV3Config  # transformers (~2 s): export only

    moe = cfg.moe
    grouped = moe.topk_groups is not None
    return DeepseekV3Config(
        num_key_value_heads=cfg.n_heads,
        q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim,
        rope_interleave=True,  # hf_state_dict permutes the RoPE rows to match
        attention_bias=False,
        n_shared_experts=moe.n_shared_experts,
        n_routed_experts=moe.n_routed_experts,
        routed_scaling_factor=moe.route_scale,
        # One group of all experts is the same routing as none: its top-2 sum is always kept.
        n_group=moe.n_expert_groups if grouped else 1,
        topk_group=moe.topk_groups if grouped else 1,
        first_k_dense_replace=moe.n_dense_layers,
        num_mtp_layers=0,
        **extra,
    )


def hf_config(cfg: ModelConfig, dtype: str = "float32", special_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """config.json for the config's architecture (validated by transformers' config class)."""
    moe = cfg.moe
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.init_std,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=cfg.attn_dropout,
        intermediate_size=cfg.dense_dim,
        moe_intermediate_size=moe.expert_dim,
        num_experts_per_tok=moe.n_activated_experts,
        norm_topk_prob=moe.normalize_topk,
        **{f"{name}_token_id": i for name, i in (special_ids or {}).items()},
    )
    architecture = cfg.hf_architecture()
    build = deepseek_v3_config if architecture == HF_DEEPSEEK_V3 else qwen2_moe_config
    out = build(cfg, **common).to_dict()
    out["architectures"] = [architecture]
    out["dtype"] = dtype
    out["rope_theta"] = cfg.rope_theta  # where transformers 4.x and vLLM read it
    return out


def interleave_rope_rows(weight: torch.Tensor, start: int, rope_dim: int, period: int) -> torch.Tensor:
    """Rows [start, start + rope_dim) of every `period` rows reordered from rotate-half to DeepSeek's
    interleaved pairs: row 2i <- i, row 2i+1 <- i + R/2.

    Rotate-half turns (x_i, x_{i+R/2}) by frequency i; transformers' interleaved RoPE turns
    (x_{2i}, x_{2i+1}) by frequency i and writes the result back in rotate-half order, so with
    these rows it computes exactly Flywheel's rotated vector.
    """
    half = rope_dim // 2
    perm_R = torch.stack((torch.arange(half), torch.arange(half) + half), dim=1).reshape(-1)
    rows = torch.arange(weight.shape[0]).view(-1, period)
    rows[:, start : start + rope_dim] = rows[:, start + perm_R]
    return weight[rows.reshape(-1)]


def mha_tensors(src: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen2-MoE self_attn tensors (q/k/v biases zeros when the model has none)."""
    out = {}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        weight = out[f"{proj}.weight"] = state[src + f"attn.{proj}.weight"]
        if proj != "o_proj":
            bias = state.get(src + f"attn.{proj}.bias")
            out[f"{proj}.bias"] = bias if bias is not None else weight.new_zeros(weight.shape[0])
    return out


def mla_tensors(cfg: ModelConfig, src: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DeepseekV3Attention tensors: same names, RoPE rows interleaved (see interleave_rope_rows)."""
    names = ["kv_a_layernorm", "kv_b_proj", "o_proj"] + (["q_a_proj", "q_a_layernorm"] if cfg.q_lora_rank else [])
    out = {f"{n}.weight": state[src + f"attn.{n}.weight"] for n in names}
    q_name = "q_proj" if cfg.q_lora_rank is None else "q_b_proj"
    out[f"{q_name}.weight"] = interleave_rope_rows(
        state[src + f"attn.{q_name}.weight"], cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.attn_head_dim
    )
    kv_a = state[src + "attn.kv_a_proj_with_mqa.weight"]
    out["kv_a_proj_with_mqa.weight"] = interleave_rope_rows(kv_a, cfg.kv_lora_rank, cfg.qk_rope_head_dim, kv_a.shape[0])
    return out


def moe_tensors(cfg: ModelConfig, src: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `mlp.` tensors of one MoE layer: router, shared expert(s), routed experts one by one."""
    v3 = cfg.hf_architecture() == HF_DEEPSEEK_V3
    shared = "shared_experts" if v3 else "shared_expert"
    out = {"gate.weight": state[src + "ffn.router.gate.weight"]}
    if v3:
        bias = state.get(src + "ffn.router_bias")
        out["gate.e_score_correction_bias"] = bias if bias is not None else torch.zeros(cfg.moe.n_routed_experts)
    else:
        out["shared_expert_gate.weight"] = state[src + "ffn.shared_gate.weight"]
    for proj in ("gate_proj", "up_proj", "down_proj"):
        out[f"{shared}.{proj}.weight"] = state[src + f"ffn.shared_experts.{proj}.weight"]
        # GroupedExperts stores expert e's nn.Linear weight at [e] (see training.moe).
        for e, weight in enumerate(state[src + f"ffn.experts.{proj}"].unbind(0)):
            out[f"experts.{e}.{proj}.weight"] = weight
    return out


# transformers keeps these in fp32 whatever the model dtype (DeepseekV3's router bias).
FP32_TENSOR_SUFFIXES = ("e_score_correction_bias",)


def hf_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Flywheel tensor names -> the target architecture's names, each a contiguous tensor of its own."""
    out: dict[str, torch.Tensor] = {}

    def put(name: str, tensor: torch.Tensor) -> None:
        to = torch.float32 if name.endswith(FP32_TENSOR_SUFFIXES) else dtype
        out[name] = tensor.detach().to(to).contiguous().clone()

    put("model.embed_tokens.weight", state["tok_embeddings.weight"])
    put("model.norm.weight", state["norm.weight"])
    if not cfg.tie_embeddings:
        put("lm_head.weight", state["output.weight"])
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        put(dst + "input_layernorm.weight", state[src + "attn_norm.weight"])
        put(dst + "post_attention_layernorm.weight", state[src + "ffn_norm.weight"])
        attn = mla_tensors(cfg, src, state) if cfg.attention_type == "mla" else mha_tensors(src, state)
        for name, tensor in attn.items():
            put(dst + "self_attn." + name, tensor)
        if not cfg.is_moe_layer(i):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                put(dst + f"mlp.{proj}.weight", state[src + f"ffn.{proj}.weight"])
            continue
        for name, tensor in moe_tensors(cfg, src, state).items():
            put(dst + "mlp." + name, tensor)
    return out


def write_tokenizer(source: str | Path, out: Path, cfg: ModelConfig) -> dict[str, int]:
    """Copy a `tokenizers` tokenizer.json (a file, or a folder holding one) and describe it for
    AutoTokenizer; returns the ids of the special tokens it has (curation's names)."""

    source = Path(source)
    path = source / CurationRun.TOKENIZER if source.is_dir() else source
    if not path.is_file():
        raise ExportError(f"{source}: no tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ExportError(f"tokenizer has {tok.get_vocab_size()} tokens, the model only {cfg.vocab_size}")
    shutil.copyfile(path, out / CurationRun.TOKENIZER)
    ids = {name: tok.token_to_id(token) for name, token in SPECIAL_TOKEN_NAMES.items()}
    ids = {name: i for name, i in ids.items() if i is not None}
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    tokenizer_config.update({f"{name}_token": SPECIAL_TOKEN_NAMES[name] for name in ids})
    (out / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return ids


def run_chat_template(step_dir: Path) -> str | None:
    """The chat template of the run that wrote `step_dir` (an SFT run writes it beside its
    checkpoints: OUT/tokenizer_config.json), None for a run without one (pretraining)."""
    config = step_dir.parent.parent / TOKENIZER_CONFIG
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("chat_template")


def export_hf(
    checkpoint: str | Path,
    out: str | Path,
    tokenizer: str | Path | None = None,
    config: str | Path | TrainConfig | ModelConfig | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write OUT/config.json, model.safetensors (sharded past 5 GB) and, given `tokenizer`,
    tokenizer.json + tokenizer_config.json. Returns a summary (paths, step, parameter count).

    Raises ExportError when the model does not map exactly onto its architecture
    (`hf_export_problems`), when the config does not match the checkpoint, or when no config can
    be found.
    """
    from huggingface_hub import save_torch_state_dict  # huggingface_hub, with transformers: export only

    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    step_dir = resolve_checkpoint(checkpoint)
    cfg = resolve_model_config(step_dir, config)
    architecture = check_exportable(cfg)  # before reading gigabytes of shards
    state = load_model_state(step_dir, cfg)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    special_ids = write_tokenizer(tokenizer, out, cfg) if tokenizer is not None else {}
    chat_template = run_chat_template(step_dir)
    if tokenizer is not None and chat_template is not None:  # so AutoTokenizer.apply_chat_template works
        tokenizer_config = json.loads((out / TOKENIZER_CONFIG).read_text())
        (out / TOKENIZER_CONFIG).write_text(json.dumps({**tokenizer_config, "chat_template": chat_template}, indent=2) + "\n")
    tensors = hf_state_dict(cfg, state, DTYPES[dtype])
    del state
    (out / "config.json").write_text(json.dumps(hf_config(cfg, dtype, special_ids), indent=2, sort_keys=True) + "\n")
    save_torch_state_dict(tensors, out, metadata={"format": "pt"})
    return {
        "checkpoint": str(step_dir),
        "step": read_meta(step_dir).get("step"),
        "out": str(out),
        "architecture": architecture,
        "dtype": dtype,
        "parameters": sum(t.numel() for t in tensors.values()),
        "tokenizer": special_ids if tokenizer is not None else None,
        "files": sorted(p.name for p in out.iterdir()),
    }
