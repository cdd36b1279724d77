"""Shared by the training tests: a small synthetic manifest, a tiny-model config, and a way to
run a function on N local gloo ranks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from contract.manifest import parse_manifest, write_manifest
from contract.shards import sha256_file
from contract.tokenizer import SpecialTokens
from curation.tokenizer import train_bpe
from training.cli import train_command
from training.data.synthetic import write_synthetic_dataset
from training.launch import free_port
from training.train_config import TrainConfig

VOCAB = 16  # small enough that 20 steps visibly learn the unigram distribution


def write_tiny_manifest(root: Path, total_tokens: int = 40_000) -> str:
    """Seeded random-token shards (3 shards, documents of ~100 tokens) and their manifest."""
    path = write_synthetic_dataset(
        root, total_tokens=total_tokens, vocab_size=VOCAB, mean_doc_tokens=100, target_tokens=15_000, seed=0
    )
    return str(path)


def tiny_config(manifest: str, out: Path, **overrides: Any) -> TrainConfig:
    """The tiny preset without dropout and with the aux-free router bias on (so its update is
    exercised), 32-token sequences, 8 sequences per step, LR high enough to move in 20 steps."""
    data: dict[str, Any] = {
        "preset": "tiny",
        "manifest": manifest,
        "out_dir": str(out),
        "model": {"attn_dropout": 0.0, "moe": {"bias_update_rate": 1e-3}},
        "seq_len": 32,
        "global_batch_tokens": 32 * 8,
        "micro_batch": 2,
        "steps": 20,
        "optimizer": {"lr": 3e-3, "router_lr": 3e-3, "schedule": {"total_steps": 20, "warmup_steps": 2}},
        "peak_tflops_per_worker": 0.05,
        "checkpoint_interval_s": 3600,
        "resume": False,
        "gc_every_steps": 5,
    }
    data.update(overrides)
    return TrainConfig.model_validate(data)


def _entry(rank: int, world: int, port: int, fn, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(world: int, fn, *args: Any) -> None:
    """Run fn(rank, world, *args) on `world` processes in one gloo group (loopback); `fn`
    communicates through files.

    NOTE: forked from a forkserver that has torch imported, not from this process and not
    spawned. A spawned child spends seconds re-importing torch (8 s each on a loaded 2-core box,
    four at once). Forking the test process itself crashed a child once in a full run (glibc
    "malloc(): unaligned fastbin chunk", SIGABRT): by then the process holds threads of earlier
    tests (Ray's driver, torch's intra-op pool) whose state a fork copies mid-flight. The
    forkserver is a fresh single-threaded interpreter, started once per test session.
    """
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload(["torch", "torch.distributed", __name__])
    mp.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True,
                       start_method="forkserver")


BPE_VOCAB = 320  # a byte-level BPE: 256 bytes + 3 special tokens + a few merges
BPE_WORDS = "the quick brown fox jumps over a lazy dog".split()


def write_bpe_manifest(root: Path, texts: list[str], vocab_size: int, mean_doc_tokens: int) -> Path:
    """Synthetic shards (8,000 tokens, seed 0) whose manifest names a real byte-level BPE trained
    on `texts` (tokenizer.json beside it, its sha256 in the manifest); returns manifest.json."""
    manifest_path = write_synthetic_dataset(root, total_tokens=8_000, vocab_size=vocab_size,
                                            mean_doc_tokens=mean_doc_tokens, seed=0)
    tokenizer_path = manifest_path.parent / "tokenizer.json"
    train_bpe([texts], vocab_size=vocab_size, special=SpecialTokens()).save(str(tokenizer_path))
    manifest = parse_manifest(manifest_path.read_bytes())
    info = manifest.tokenizer.model_copy(update={"sha256": sha256_file(tokenizer_path)})
    write_manifest(manifest_path, manifest.model_copy(update={"tokenizer": info}))
    return manifest_path


def train_bpe_checkpoint(root: Path) -> Path:
    """2 steps of `flywheel train --local` (tiny, no dropout) on a synthetic manifest whose
    tokenizer is a real byte-level BPE; returns the run folder (its checkpoint decodes to text)."""
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(BPE_WORDS, size=8)) for _ in range(50)]
    manifest_path = write_bpe_manifest(root / "data", sentences, BPE_VOCAB, mean_doc_tokens=60)
    config = root / "run.json"
    config.write_text(json.dumps({
        "seq_len": 32, "global_batch_tokens": 128, "micro_batch": 4, "peak_tflops_per_worker": 0.05,
        "model": {"attn_dropout": 0.0}, "optimizer": {"lr": 3e-3},
    }))  # fmt: skip
    out = root / "out"
    train_command(config, manifest=str(manifest_path), preset="tiny", steps=2, workers=1, out=out, local=True)
    return out
