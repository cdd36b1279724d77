"""Held-out evaluation: loss, perplexity and bits per byte of a model on JSONL text files.

    sets = load_eval_sets(["val/web.jsonl", "val/code.jsonl"], tokenizer, eos_id=1)
    report = evaluate_model(model, sets, seq_len=256, batch_size=8, device=device)
    report.to_dict()     # {"overall": {...}, "domains": {domain: {...}}, "files": {name: {...}}}
    evaluate_checkpoint("runs/train", ["val/web.jsonl"])       # `flywheel evaluate`

A JSONL line is {"text": str, "domain"?: str, "id"?: ...}. Each (file, domain) is one EvalSet:
its documents (tokenised, EOS appended as the curation tokenize stage does) are packed into one
stream and cut into windows of seq_len + 1 tokens stepping by seq_len, as training cuts the
manifest's stream (`order.py`), with the same document-masked attention (`Batch.segment_ids`
through the trainer's `micro_batch_of`). Every token but the stream's first is predicted once;
the last window is padded and its padding left out of the loss.

Distributed: the forward passes of an FSDP/EP-sharded model are collectives, so every rank
evaluates every set, same batches in the same order, and ends with the same report.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contract.jsonl import numbered_records
from contract.layout import CurationRun
from contract.locations import resolve
from contract.manifest import Manifest, parse_manifest
from contract.tokenizer import SpecialTokens, load_tokenizer
from training.checkpoint import read_meta
from training.data.dataset import Batch
from training.data.fetch import Fetcher
from training.export_hf import load_checkpoint_model, resolve_checkpoint

IGNORE_INDEX = -100  # causal_lm_loss's: targets the loss skips (window padding)


# ---------------------------------------------------------------------------------------------
# Evaluation sets
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """The documents of one domain in one file, tokenised."""

    file: str  # the file's label in reports (its name, disambiguated)
    path: Path
    domain: str
    documents: list[np.ndarray]  # int64 token ids per document, EOS included
    bytes: int  # UTF-8 bytes of the texts

    @property
    def tokens(self) -> int:
        return sum(len(d) for d in self.documents)


def file_labels(paths: list[Path]) -> list[str]:
    """Each file's name; a name several files share gets parent folders until they differ."""
    absolute = [p.resolve() for p in paths]
    if len(set(absolute)) < len(absolute):
        raise ValueError("an evaluation file is given twice")
    labels = []
    for path in absolute:
        depth = 1
        while any(q != path and q.parts[-depth:] == path.parts[-depth:] for q in absolute):
            depth += 1
        labels.append(str(Path(*path.parts[-depth:])))
    return labels


def read_jsonl(path: Path) -> list[tuple[str, str | None]]:
    """(text, domain) per non-blank line; a ValueError naming file and line for anything else."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such evaluation file")
    docs = []
    with path.open(encoding="utf-8") as f:
        for number, record in numbered_records(f, str(path)):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{number}: an evaluation line is an object with a string `text`")
            domain = record.get("domain")
            if domain is not None and not isinstance(domain, str):
                raise ValueError(f"{path}:{number}: `domain` must be a string")
            docs.append((record["text"], domain or None))
    return docs


def load_eval_sets(
    paths: list[str | Path], tokenizer: Any, eos_id: int | None, default_domain: str = "unknown"
) -> list[EvalSet]:
    """One EvalSet per (file, domain), files in the order given, domains in order of appearance.

    tokenizer: a `tokenizers.Tokenizer` (no special tokens added: EOS is appended here when
    eos_id is not None, as the curation tokenize stage does)."""
    paths = [Path(p) for p in paths]
    sets = []
    for path, label in zip(paths, file_labels(paths)):
        by_domain: dict[str, list[str]] = {}
        for text, domain in read_jsonl(path):
            by_domain.setdefault(domain or default_domain, []).append(text)
        for domain, texts in by_domain.items():
            suffix = [eos_id] if eos_id is not None else []
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
            documents = [np.asarray(e.ids + suffix, dtype=np.int64) for e in encodings]
            nbytes = sum(len(t.encode("utf-8")) for t in texts)
            sets.append(EvalSet(file=label, path=path, domain=domain, documents=documents, bytes=nbytes))
    return sets


def check_vocab(eval_sets: list[EvalSet], vocab_size: int) -> None:
    """Refuse token ids the model has no embedding for (a tokenizer of another model)."""
    top = max((int(d.max()) for s in eval_sets for d in s.documents if len(d)), default=-1)
    if top >= vocab_size:
        raise ValueError(f"evaluation token id {top} is outside the model's vocabulary ({vocab_size}): "
                         "the tokenizer is not the one the model was trained with")


def load_tokenizer_file(source: str | Path) -> Any:
    """A tokenizer.json (or a folder holding one), as curation loads it."""
    path = Path(source)
    path = path / CurationRun.TOKENIZER if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no tokenizer.json")
    return _parse_tokenizer(path.read_text(), str(path))


def manifest_tokenizer(location: str, manifest: Manifest | None = None) -> tuple[Any, int | None]:
    """The tokenizer a manifest lists (checked against its sha256) and its EOS id."""
    with Fetcher() as fetcher:
        manifest = manifest or parse_manifest(fetcher.read_bytes(location))
        info = manifest.tokenizer
        where = info.url or resolve(location, info.path)
        raw = fetcher.read_bytes(where)
    if hashlib.sha256(raw).hexdigest() != info.sha256:
        raise ValueError(f"{where}: the tokenizer does not match the manifest's sha256")
    return _parse_tokenizer(raw.decode(), where), info.special_ids.eos


def _parse_tokenizer(text: str, where: str) -> Any:
    try:
        return load_tokenizer(text)
    except Exception as e:  # tokenizers raises a bare Exception for a file it cannot read
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{where}: not a tokenizers tokenizer.json ({reason})") from None


# ---------------------------------------------------------------------------------------------
# Packing: the training windows over one set's stream
# ---------------------------------------------------------------------------------------------


def pack_windows(documents: list[np.ndarray], seq_len: int) -> tuple[Batch, np.ndarray]:
    """The set's documents as one stream cut into training windows: window k holds stream
    tokens [k * seq_len, k * seq_len + seq_len + 1), the last one padded.

    Returns the windows as a Batch (positions: offset inside the document, as the dataset gives
    them; each padding token starts a segment of its own) and valid_WS, True where the target
    is a stream token (padding is not scored)."""
    stream = np.concatenate(documents) if documents else np.zeros(0, dtype=np.int64)
    lengths = np.asarray([len(d) for d in documents], dtype=np.int64)
    n = len(stream)
    starts = np.cumsum(lengths) - lengths
    windows = max(0, -(-(n - 1) // seq_len))  # ceil: every token after the first is a target once
    padded = windows * seq_len + 1
    tokens = np.zeros(padded, dtype=np.int64)
    tokens[:n] = stream
    positions = np.zeros(padded, dtype=np.int32)
    positions[:n] = np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)
    index_WS = np.arange(windows, dtype=np.int64)[:, None] * seq_len + np.arange(seq_len + 1)
    batch = Batch(tokens=tokens[index_WS], positions=positions[index_WS],
                  sequences=np.arange(windows, dtype=np.int64), epochs=np.zeros(windows, dtype=np.int64))  # fmt: skip
    return batch, index_WS[:, 1:] < n


def _rows(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(batch.tokens[start:stop], batch.positions[start:stop], batch.sequences[start:stop],
                 batch.epochs[start:stop])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalTotals:
    documents: int = 0
    tokens: int = 0  # predicted (scored) tokens
    nll: float = 0.0  # summed negative log-likelihood, nats
    bytes: int = 0  # UTF-8 bytes of the texts

    def __add__(self, other: EvalTotals) -> EvalTotals:
        return EvalTotals(self.documents + other.documents, self.tokens + other.tokens, self.nll + other.nll,
                          self.bytes + other.bytes)  # fmt: skip

    @property
    def loss(self) -> float | None:
        return self.nll / self.tokens if self.tokens else None

    @property
    def perplexity(self) -> float | None:
        loss = self.loss
        return None if loss is None else (math.exp(loss) if loss < 700 else math.inf)

    @property
    def bits_per_byte(self) -> float | None:
        return self.nll / math.log(2) / self.bytes if self.bytes else None

    def to_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "tokens": self.tokens, "loss": self.loss,
                "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}  # fmt: skip


@dataclass
class EvalReport:
    overall: EvalTotals
    domains: dict[str, EvalTotals]  # summed over files, sorted by name
    files: dict[str, EvalTotals]  # summed over domains, in the order given
    seq_len: int
    checkpoint: str | None = None  # set by evaluate_checkpoint
    step: int | None = None

    @classmethod
    def from_sets(cls, results: list[tuple[EvalSet, EvalTotals]], seq_len: int) -> EvalReport:
        domains: dict[str, EvalTotals] = {}
        files: dict[str, EvalTotals] = {}
        for s, totals in results:
            domains[s.domain] = domains.get(s.domain, EvalTotals()) + totals
            files[s.file] = files.get(s.file, EvalTotals()) + totals
        overall = sum((t for _, t in results), EvalTotals())
        return cls(overall, dict(sorted(domains.items())), files, seq_len)

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_dict(),
            "domains": {name: t.to_dict() for name, t in self.domains.items()},
            "files": {name: t.to_dict() for name, t in self.files.items()},
        }


# ---------------------------------------------------------------------------------------------
# Evaluating
# ---------------------------------------------------------------------------------------------


# (inputs_BS, doc_ids_BS, targets_BS) -> summed NLL (float64 scalar), the same on every rank that
# calls it: a forward other than model(...).logits_BSV (pipeline stages, training.pipeline).
ForwardNLL = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def summed_nll(logits_BSV: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
    """causal_lm_loss's cross-entropy, per token: summed in float64, not averaged."""
    nll = F.cross_entropy(logits_BSV.flatten(0, 1).float(), targets_BS.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="none")  # fmt: skip
    return nll.double().sum()


def _set_nll(model: nn.Module, batch: Batch, valid_WS: np.ndarray, batch_size: int, device: torch.device,
             document_mask: bool, forward_nll: ForwardNLL | None = None) -> float:  # fmt: skip
    """Summed NLL of the valid targets, float64, batch_size windows per forward."""
    from training.trainer import micro_batch_of  # here: the trainer imports this module

    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(batch.tokens), batch_size):
        mb = micro_batch_of(_rows(batch, start, start + batch_size), device, document_mask)
        valid = torch.from_numpy(valid_WS[start : start + batch_size]).to(device)
        targets_BS = mb.targets_BS.masked_fill(~valid, IGNORE_INDEX)
        if forward_nll is not None:
            total += forward_nll(mb.inputs_BS, mb.doc_ids_BS, targets_BS)
        else:
            total += summed_nll(model(mb.inputs_BS, mb.doc_ids_BS).logits_BSV, targets_BS)
    return float(total)  # one device sync per set


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    eval_sets: list[EvalSet],
    seq_len: int,
    batch_size: int,
    device: torch.device | str,
    document_mask: bool = True,
    forward_nll: ForwardNLL | None = None,
) -> EvalReport:
    """Loss per file, domain and overall, in eval mode (the model's mode is restored after).

    Deterministic, and collective-safe: the same forwards in the same order on every rank.
    forward_nll replaces `model(...)` (a pipeline stage alone has no logits)."""
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    device = torch.device(device)
    was_training = model.training
    model.eval()  # no dropout, and MoE routers do not count load for the bias update
    try:
        results = []
        for s in eval_sets:
            batch, valid_WS = pack_windows(s.documents, seq_len)
            nll = _set_nll(model, batch, valid_WS, batch_size, device, document_mask, forward_nll)
            results.append((s, EvalTotals(len(s.documents), int(valid_WS.sum()), nll, s.bytes)))
    finally:
        model.train(was_training)
    return EvalReport.from_sets(results, seq_len)


def evaluate_checkpoint(
    checkpoint: str | Path,
    eval_files: list[str | Path],
    tokenizer: str | Path | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
) -> EvalReport:
    """Evaluate a checkpoint (a step directory, or a run's out_dir / checkpoints folder: its
    latest complete step) in this process, on CPU.

    The tokenizer is `tokenizer` (a tokenizer.json) or that of the manifest the checkpoint was
    trained on (meta.json's `manifest`); seq_len defaults to the run's."""

    step_dir = resolve_checkpoint(checkpoint)
    meta = read_meta(step_dir)
    tok, eos_id = checkpoint_tokenizer(meta, tokenizer)
    seq_len = seq_len or meta.get("seq_len")
    if seq_len is None:
        raise ValueError(f"{step_dir}: meta.json does not record the run's seq_len; give --seq-len")
    eval_sets = load_eval_sets(eval_files, tok, eos_id)  # before reading the weights: fail fast
    model, _ = load_checkpoint_model(step_dir)
    check_vocab(eval_sets, model.cfg.vocab_size)
    if seq_len > model.cfg.max_seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_seq_len {model.cfg.max_seq_len}")
    report = evaluate_model(model, eval_sets, seq_len, batch_size, torch.device("cpu"),
                            document_mask=meta.get("document_mask", True))  # fmt: skip
    report.checkpoint, report.step = str(step_dir), meta.get("step")
    return report


def checkpoint_tokenizer(meta: dict[str, Any], tokenizer: str | Path | None) -> tuple[Any, int | None]:
    """(tokenizer, EOS id): the file given (EOS: its <|eos|> token, if any), else the manifest's."""
    if tokenizer is not None:
        tok = load_tokenizer_file(tokenizer)
        return tok, tok.token_to_id(SpecialTokens().eos)
    if not meta.get("manifest"):
        raise ValueError("the checkpoint does not record its manifest: give the tokenizer (--tokenizer tokenizer.json)")
    return manifest_tokenizer(meta["manifest"])
