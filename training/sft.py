"""Supervised fine-tuning (`flywheel sft`): a pretrained checkpoint trained on chat data, with the
loss on assistant tokens only, through the pretraining Trainer (FSDP/EP/TP/PP, checkpoints,
resume, metrics) and launcher (local processes or Ray Train).

    cfg = load_sft_config("sft.yaml", init_checkpoint="runs/pretrain", data=["chat.jsonl"],
                          eval_files=["chat_val.jsonl"], out_dir="runs/sft")   # resolved: see below
    launch_local(cfg, make_trainer=sft_trainer)           # or launch_ray(cfg, make_trainer=sft_trainer)
    sft_command(...)                                      # both, and a summary

What differs from pretraining, and where:
- the config (`SFTConfig`) is a TrainConfig plus the chat sources and the checkpoint to start
  from; `load_sft_config` takes the architecture (meta.json's `model_config`), the preset and the
  manifest (the tokenizer source) from that checkpoint, so the model is the pretrained one;
- the data (`training.data.sft_dataset.SFTDataset`) packs whole conversations with a loss mask,
  and the trainer's `micro_batch_of` turns masked targets into ignore_index;
- the trainer (`SFTTrainer`) starts from the checkpoint's model weights only (a new optimiser
  and schedule, step 0, the data cursor at 0) unless OUT holds its own checkpoint to resume, and
  evaluates held-out chat files as assistant-token loss, before the first step too: OUT/eval.jsonl.

Sources (`data`, `eval_files`): chat JSONL files ({"messages": [...]}) or a post-training
manifest (`contract.posttrain`: posttrain_manifest.json or its run folder), whose chat files of
the `train` split are read for `data` and of the `eval` split for `eval_files`, sha256-checked.

The step's loss is the mean over every assistant token of the global batch (all micro-batches,
all dp ranks: `training.token_mean`, the trainer's rule for pretraining too), so a window of 3
assistant tokens weighs 3/N of the step, not as much as a window of 300; the held-out loss is a
token mean as well (summed NLL / assistant tokens, over every window of every set).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from pydantic import Field, model_validator
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from contract.atomic import write_atomic
from contract.jsonl import read_text
from contract.layout import TrainingRun, join
from contract.locations import local_path
from contract.posttrain import is_posttrain_manifest, iter_records, read_posttrain_manifest
from contract.stores import filesystem_for
from training.chat_format import TOKENIZER_CONFIG, chat_tokenizer_config
from training.checkpoint import read_meta
from training.checkpoint_storage import storage_reader
from training.data.sft_dataset import (
    Conversation,
    PackedChats,
    PackingStats,
    SFTDataset,
    encode_conversations,
    read_chat_jsonl,
)
from training.evaluate import EvalReport, EvalTotals, ForwardNLL, file_labels, manifest_tokenizer, summed_nll
from training.export_hf import resolve_checkpoint
from training.launch import launch_local, launch_ray, read_manifest
from training.layout import Layout
from training.metrics_log import read_metrics
from training.parallel import Meshes
from training.train_config import TrainConfig
from training.trainer import Trainer, manifest_location, micro_batch_of

SFT_DATA = "sft_data.json"  # OUT/: every conversation accounted for (kept, truncated, dropped), train and eval
DEFAULT_DOMAIN = "chat"  # an eval conversation's domain unless its record has a `category`


class SFTConfig(TrainConfig):
    """A TrainConfig (batch, layout, optimiser, checkpoints, eval cadence) plus what SFT adds.

    `eval_files` are chat sources here, scored on assistant tokens. `manifest`, `preset` and
    `model` are filled from the init checkpoint by `load_sft_config`."""

    init_checkpoint: str = Field(description="pretraining checkpoint: a step_* folder, checkpoints/ or a run's out_dir")
    data: list[str] = Field(min_length=1, description="chat JSONL files or post-training manifests (train split)")
    out_dir: str = "runs/sft"

    @model_validator(mode="after")
    def _packed_apart(self) -> SFTConfig:
        if not self.document_mask:  # packed conversations would attend to the ones before them
            raise ValueError("SFT packs conversations together: document_mask must stay on")
        return self


def load_sft_config(path: str | Path | None = None, **overrides: Any) -> SFTConfig:
    """An SFTConfig from a YAML/JSON file and overrides (None ignored), resolved against its init
    checkpoint: the architecture is the checkpoint's (a `model` given too overrides single fields,
    e.g. dropout), the preset and manifest the checkpoint's unless given; local paths absolute
    (Ray workers run elsewhere)."""
    data = read_config_file(path) if path is not None else {}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}  # e.g. --lr into the file's optimizer settings
        elif value is not None:
            data[key] = value
    if not data.get("init_checkpoint"):
        raise ValueError("SFT starts from a pretraining checkpoint: give --init (or init_checkpoint)")
    step_dir = resolve_checkpoint(data["init_checkpoint"])
    meta = read_meta(step_dir)
    if "model_config" not in meta or not meta.get("manifest"):
        raise ValueError(f"{step_dir}: meta.json lacks model_config or manifest (a checkpoint of an older trainer)")
    data["init_checkpoint"] = str(step_dir.resolve())
    data["model"] = {**meta["model_config"], **data.get("model", {})}
    data.setdefault("preset", meta.get("preset") or "tiny")
    data.setdefault("manifest", meta["manifest"])
    for key in ("data", "eval_files"):
        data[key] = [str(local_path(s).resolve()) if local_path(s) is not None else s for s in data.get(key, [])]
    return SFTConfig.model_validate(data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON config file (a local path or a store URI). Not through
    load_train_config: a TrainConfig refuses SFT's own keys."""
    text = read_text(path)
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an SFT config is a mapping")
    return data


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def read_chat_sources(sources: list[str], split: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, records) per source: a chat JSONL file, or a post-training manifest's chat files of
    `split` (sha256-checked against the manifest)."""
    out = []
    for source in sources:
        if is_posttrain_manifest(source):
            manifest = read_posttrain_manifest(source)
            records = [r.model_dump(mode="json", exclude_none=True) for r in iter_records(manifest, "chat", split)]
            if not records:
                raise ValueError(f"{source}: no chat records in its {split} split")
            out.append((f"{manifest.dataset_id}:{split}", records))
        else:
            out.append((source, read_chat_jsonl(source)))
    return out


def open_sft_dataset(cfg: SFTConfig, data_rank: int, data_world: int) -> SFTDataset:
    """The chat training data of cfg.data, tokenised with the manifest's tokenizer."""
    manifest = read_manifest(cfg.manifest)
    tokenizer, eos_id = manifest_tokenizer(cfg.manifest, manifest)
    conversations: list[Conversation] = []
    labels = []
    for label, records in read_chat_sources(cfg.data, "train"):
        conversations += encode_conversations(records, tokenizer, eos_id, where=label)
        labels.append(Path(label).name)
    dataset_id = ("chat:" + ",".join(labels))[:200]
    return SFTDataset(conversations, cfg.seq_len, cfg.seed, rank=data_rank, world_size=data_world,
                      tokenizer=manifest.tokenizer, location=manifest_location(cfg.manifest),
                      dataset_id=dataset_id)  # fmt: skip


@dataclass
class ChatEvalSet:
    """One domain of one held-out chat source, encoded (evaluate.EvalSet's role for chat)."""

    file: str
    domain: str
    conversations: list[Conversation]
    bytes: int  # UTF-8 bytes of the assistant contents (bits per byte's denominator)


def load_chat_eval_sets(sources: list[str], tokenizer: Any, eos_id: int | None) -> list[ChatEvalSet]:
    """One ChatEvalSet per (source, domain); the domain is a record's `category`, else "chat"."""
    read = read_chat_sources(sources, "eval")
    local = [Path(label) for label, _ in read]
    names = file_labels(local) if all(p.suffix == ".jsonl" for p in local) else [label for label, _ in read]
    sets = []
    for name, (label, records) in zip(names, read):
        by_domain: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_domain.setdefault(record.get("category") or DEFAULT_DOMAIN, []).append(record)
        for domain, group in by_domain.items():
            nbytes = sum(len(m["content"].encode()) for r in group for m in r["messages"] if m["role"] == "assistant")
            sets.append(ChatEvalSet(name, domain, encode_conversations(group, tokenizer, eos_id, where=label), nbytes))
    return sets


# ---------------------------------------------------------------------------------------------
# Evaluation: assistant-token loss
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_chat(
    model: nn.Module,
    eval_sets: list[ChatEvalSet],
    seq_len: int,
    batch_size: int,
    device: torch.device | str,
    document_mask: bool = True,
    forward_nll: ForwardNLL | None = None,
    pad_id: int = 0,  # any id: padding is never a target and no real token attends to it
) -> EvalReport:
    """Mean NLL of the assistant tokens (content and each turn's EOS) of every set, the windows
    packed as training packs them (whole conversations, document-masked); `evaluate_model`'s
    signature and report (documents = conversations kept, tokens = assistant tokens scored).
    Collective-safe: the same forwards in the same order on every rank."""
    device = torch.device(device)
    was_training = model.training
    model.eval()  # no dropout, and MoE routers do not count load for the bias update
    try:
        results = []
        for s in eval_sets:
            packed = PackedChats(s.conversations, seq_len, seed=0, pad_id=pad_id)
            total = torch.zeros((), dtype=torch.float64, device=device)
            for start in range(0, packed.windows, batch_size):
                windows = torch.arange(start, min(start + batch_size, packed.windows)).numpy()
                mb = micro_batch_of(packed.batch(windows), device, document_mask)
                if forward_nll is not None:
                    total += forward_nll(mb.inputs_BS, mb.doc_ids_BS, mb.targets_BS)
                else:
                    total += summed_nll(model(mb.inputs_BS, mb.doc_ids_BS).logits_BSV, mb.targets_BS)
            stats = packed.stats
            results.append((s, EvalTotals(stats.kept, stats.loss_tokens, float(total), s.bytes)))
    finally:
        model.train(was_training)
    return EvalReport.from_sets(results, seq_len)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


def load_model_weights(model: nn.Module, checkpoint: str | Path, group: dist.ProcessGroup | None) -> None:
    """Collective: the model's weights (and MoE routing-bias buffers) from a checkpoint saved at
    any layout, resharded to this one; its optimiser state, step and data cursor are not read.
    DCP loads only the keys asked for: {"app": {"model": ...}} is how CheckpointManager saved them."""
    state = get_model_state_dict(model)
    with warnings.catch_warnings():  # DCP warns that it "assumes" one process even when told so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"app": {"model": state}}, storage_reader=storage_reader(str(checkpoint)), process_group=group,
                 no_dist=not dist.is_initialized())  # fmt: skip
    set_model_state_dict(model, state)


class SFTTrainer(Trainer):
    """The Trainer with chat evaluation (assistant-token loss), also before the first step."""

    eval_at_start = True
    evaluate_sets = staticmethod(evaluate_chat)

    def _load_eval_sets(self) -> list[ChatEvalSet]:
        tokenizer, eos_id = manifest_tokenizer(self.dataset.location)
        return load_chat_eval_sets(self.cfg.eval_files, tokenizer, eos_id)


def sft_trainer(cfg: SFTConfig, meshes: Meshes | None, layout: Layout, device: torch.device) -> SFTTrainer:
    """launch.MakeTrainer for SFT: the chat dataset, the trainer, and (unless OUT holds a
    checkpoint to resume) the pretrained weights. Rank 0 writes OUT/tokenizer_config.json and
    OUT/sft_data.json."""
    data_rank = meshes.data_rank if meshes is not None else 0
    dataset = open_sft_dataset(cfg, data_rank, layout.dp)
    trainer = SFTTrainer(cfg, dataset, meshes, device)
    init = resolve_checkpoint(cfg.init_checkpoint)
    if trainer.checkpoints.latest() is None:
        load_model_weights(trainer.model, init, trainer.group)
    if trainer.rank == 0:
        write_run_files(cfg, dataset.stats, trainer)
        print(f"[flywheel sft] from {init}: {dataset.stats.kept} conversations in {dataset.stats.windows} windows "
              f"({dataset.stats.truncated} truncated, {dataset.stats.dropped_no_assistant_tokens} dropped without "
              f"assistant tokens)", flush=True)  # fmt: skip
    return trainer


def write_run_files(cfg: SFTConfig, train_stats: PackingStats, trainer: SFTTrainer) -> None:
    """OUT/tokenizer_config.json (the chat template) and OUT/sft_data.json (packing accounting)."""
    fs, base = filesystem_for(cfg.out_dir)
    fs.create_dir(base, recursive=True)
    config = json.dumps(chat_tokenizer_config(), indent=2) + "\n"
    write_atomic(join(base, TOKENIZER_CONFIG), config.encode(), fs)
    eval_stats = {}
    for s in trainer.eval_sets:
        packed = PackedChats(s.conversations, cfg.seq_len, seed=0, pad_id=0)
        eval_stats[f"{s.file}/{s.domain}"] = packed.stats.to_dict()
    record = {"init_checkpoint": cfg.init_checkpoint, "seq_len": cfg.seq_len, "train": train_stats.to_dict(),
              "eval": eval_stats, "time": round(time.time(), 3)}  # fmt: skip
    write_atomic(join(base, SFT_DATA), (json.dumps(record, indent=2) + "\n").encode(), fs)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def sft_command(config: Path | None = None, local: bool = False, **overrides: Any) -> dict[str, Any]:
    """`flywheel sft`: resolve the config, train (local processes or Ray Train), summarise.
    ValueError for problems the user can fix."""
    cfg = load_sft_config(config, **overrides)
    if local:
        launch_local(cfg, make_trainer=sft_trainer)
    else:
        result = launch_ray(cfg, make_trainer=sft_trainer)
        if result.error is not None:
            raise RuntimeError(f"SFT failed: {result.error}")
    return sft_summary(cfg)


def sft_summary(cfg: SFTConfig) -> dict[str, Any]:
    records = read_metrics(cfg.out_dir)
    evals = read_metrics(cfg.out_dir, TrainingRun.EVAL)
    run = TrainingRun(cfg.out_dir)
    summary = {
        "init_checkpoint": cfg.init_checkpoint,
        "steps": records[-1]["step"] if records else 0,
        "loss_first": records[0]["loss"] if records else None,
        "loss_last": records[-1]["loss"] if records else None,
        "eval_assistant_loss_before": evals[0]["overall"]["loss"] if evals else None,
        "eval_assistant_loss_after": evals[-1]["overall"]["loss"] if len(evals) > 1 else None,
        "metrics": run.metrics,
        "eval": run.eval,
        "checkpoints": run.checkpoints,
        "data": join(cfg.out_dir, SFT_DATA),
    }
    print(f"[flywheel sft] {summary['steps']} steps, loss {summary['loss_first']} -> {summary['loss_last']}; "
          f"held-out assistant loss {summary['eval_assistant_loss_before']} -> "
          f"{summary['eval_assistant_loss_after']}")  # fmt: skip
    return summary
