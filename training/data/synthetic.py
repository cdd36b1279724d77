"""A small, seeded, random-token dataset in the real format, for tests and benchmarks.

The tokenizer file it lists is a JSON placeholder (no real tokenizer): the token ids are
uniform random in [3, vocab_size) with ids 0/1/2 as bos/eos/pad, and every document ends in eos.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from contract.layout import CurationRun
from contract.manifest import build_manifest, installed_flywheel_version, write_manifest
from contract.shards import ShardWriter, dtype_for_vocab, sha256_file

BOS, EOS, PAD = 0, 1, 2


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    total_tokens: int,
    vocab_size: int = 32000,
    mean_doc_tokens: int = 300,
    target_tokens: int = 2**24,
    domains: tuple[str, ...] = ("web", "code"),
    seed: int = 0,
    dataset_id: str = "synthetic",
) -> Path:
    """Write shards under `out_dir/shards/` and `out_dir/manifest.json`; return the manifest path.

    Stops at the first document boundary at or after `total_tokens`.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    dtype = dtype_for_vocab(vocab_size)
    written = 0
    with ShardWriter(out / "shards", dtype, target_tokens=target_tokens) as writer:
        while written < total_tokens:
            length = int(rng.geometric(1.0 / mean_doc_tokens))
            doc = rng.integers(3, vocab_size, size=length + 1, dtype=np.int64)
            doc[-1] = EOS
            writer.add(doc, domains[int(rng.integers(len(domains)))])
            written += len(doc)
    tokenizer = out / CurationRun.TOKENIZER
    tokenizer.write_text(json.dumps({"synthetic": True, "vocab_size": vocab_size}) + "\n")
    config = {"synthetic": True, "total_tokens": total_tokens, "vocab_size": vocab_size, "seed": seed}
    manifest_path = out / CurationRun.MANIFEST
    manifest = build_manifest(
        manifest_path=manifest_path,
        dataset_id=dataset_id,
        dtype=dtype,
        tokenizer={
            "path": tokenizer.name,
            "sha256": sha256_file(tokenizer),
            "vocab_size": vocab_size,
            "special_ids": {"bos": BOS, "eos": EOS, "pad": PAD},
        },
        records=writer.records,
        mixture={"weights": {d: 1.0 / len(domains) for d in domains}, "temperature": 1.0, "epochs": 1},
        provenance={
            "inputs": ["synthetic"],
            "config": config,
            "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
            "stages": [],
            "created_at": datetime.now(timezone.utc),
            "flywheel_version": installed_flywheel_version(),
        },
    )
    return write_manifest(manifest_path, manifest)
