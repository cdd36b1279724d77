"""`flywheel train-lm`: a per-domain KenLM model from reference text (JSONL).

The ARPA file is written next to a small JSON record (`<model>.json`) holding the tokenizer
kind, so the perplexity stage tokenises documents exactly as the training text was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from contract.jsonl import numbered_records
from curation.lm.kneser_ney import estimate_arpa
from curation.lm.tokens import TokenizerKind, default_kind, tokenize_lines


def model_record_path(model_path: str | Path) -> str:
    """Where the record of a model (tokenizer, order, training stats) lives."""
    return f"{model_path}.json"


def read_texts(input_path: str, text_field: str = "text") -> Iterator[str]:
    """The `text_field` of each record of a JSONL file (local path or pyarrow.fs URI; .gz/.zst ok)."""

    if "://" in input_path:
        fs, path = pafs.FileSystem.from_uri(input_path)
        stream = fs.open_input_stream(path, compression="detect")
    else:
        stream = pa.input_stream(input_path, compression="detect")
    with stream:
        buffered = pa.BufferedInputStream(stream, 1 << 20)
        for _, record in numbered_records(_lines(buffered), input_path):
            text = record.get(text_field) if isinstance(record, dict) else None
            if isinstance(text, str):
                yield text


def _lines(stream) -> Iterator[bytes]:
    tail = b""
    while chunk := stream.read(1 << 20):
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


def train_lm(
    domain: str,
    input_path: str,
    out_path: str | Path,
    order: int = 5,
    text_field: str = "text",
    kind: TokenizerKind | None = None,
) -> dict[str, Any]:
    """Estimate a modified Kneser-Ney model of `order` on the texts of `input_path`, as ARPA.

    `kind` picks the tokenizer ("prose" or "code"); by default "code" for the code domain.
    Returns the training statistics (also stored in the model's record).
    """
    kind = kind or default_kind(domain)
    start = time.perf_counter()
    documents = 0

    def sentences() -> Iterator[list[str]]:
        nonlocal documents
        for text in read_texts(input_path, text_field):
            documents += 1
            yield from tokenize_lines(text, kind)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    arpa = estimate_arpa(sentences(), out_path, order=order)
    stats = {
        "domain": domain,
        "tokenizer": kind,
        "documents": documents,
        **asdict(arpa),
        "seconds": round(time.perf_counter() - start, 3),
        "arpa_bytes": out_path.stat().st_size,
    }
    Path(model_record_path(out_path)).write_text(json.dumps(stats, indent=2) + "\n")
    return stats
