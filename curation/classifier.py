"""Train a fastText domain classifier for the `language` stage's `domain_model` option.

    flywheel train-classifier labelled.jsonl models/domain.bin --label-field domain

Input: JSONL (optionally .gz) records with a text and a label field; records without either are
skipped and counted. A seeded shuffle holds out `valid_fraction` of them to report accuracy.
fastText trains with one thread and a fixed seed: its hogwild SGD is only reproducible that way,
and a few thousand lines train in well under a second anyway.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import random
import re
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import fasttext

from curation.config import DOMAIN_PATTERN
from curation.langid import LABEL_PREFIX, one_line, predict

_DOMAIN = re.compile(DOMAIN_PATTERN)


def _train_and_save(train_file: str, out_model: str, options: dict[str, Any], quantize: bool) -> None:
    model = fasttext.train_supervised(input=train_file, **options)
    if quantize:  # .ftz: ~10x smaller, slightly less accurate
        model.quantize(input=train_file, retrain=True, qnorm=True, thread=1, verbose=0)
    model.save_model(out_model)


def _read_labelled(path: Path, text_field: str, label_field: str) -> tuple[list[tuple[str, str]], int]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows, skipped = [], 0
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            text, label = one_line(record.get(text_field)), record.get(label_field)
            if not text or not label:
                skipped += 1
                continue
            if not isinstance(label, str) or not _DOMAIN.match(label):
                raise ValueError(f"{path}:{lineno}: label {label!r} is not a domain name ({DOMAIN_PATTERN})")
            rows.append((label, text))
    return rows, skipped


def _write_fasttext(rows: list[tuple[str, str]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for label, text in rows:
            f.write(f"{LABEL_PREFIX}{label} {text}\n")


def train_classifier(
    input_jsonl: str | Path,
    out_model: str | Path,
    label_field: str = "domain",
    text_field: str = "text",
    valid_fraction: float = 0.1,
    seed: int = 0,
    epoch: int = 25,
    lr: float = 0.5,
    word_ngrams: int = 2,
    dim: int = 50,
    min_count: int = 1,
    bucket: int = 200_000,
    quantize: bool = False,
) -> dict[str, Any]:
    """Train, evaluate on the held-out split, save to `out_model`; return a report.

    NOTE: word n-grams are hashed into `bucket` rows of `dim` floats: fastText's default of 2M
    buckets makes a 400 MB model at dim 50, where 200k (40 MB) serves a few domains well.
    """

    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError("valid_fraction must be in [0, 1)")
    rows, skipped = _read_labelled(Path(input_jsonl), text_field, label_field)
    if len({label for label, _ in rows}) < 2:
        raise ValueError(f"{input_jsonl}: need at least two distinct labels in {label_field!r}")
    random.Random(seed).shuffle(rows)
    n_valid = int(len(rows) * valid_fraction)
    valid, train = rows[:n_valid], rows[n_valid:]

    out_model = Path(out_model)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flywheel-clf-") as tmp:
        train_file = Path(tmp) / "train.txt"
        _write_fasttext(train, train_file)
        options = dict(epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim, minCount=min_count, bucket=bucket,
                       seed=seed, thread=1, verbose=0)
        # NOTE: in a process that had just trained a large BPE tokenizer (a curation run with a
        # tokenize stage), this same seeded, single-thread training diverged to "Encountered NaN"
        # every time; in a fresh process, never. Training in one keeps the result a function of
        # the data and seed alone (it costs ~1 s of start-up).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            pool.submit(_train_and_save, str(train_file), str(out_model), options, quantize).result()
    model = fasttext.load_model(str(out_model))

    report: dict[str, Any] = {
        "model": str(out_model),
        "labels": dict(sorted(Counter(label for label, _ in train).items())),
        "train_docs": len(train),
        "valid_docs": len(valid),
        "skipped": skipped,
    }
    if valid:
        predicted, _ = predict(model, [text for _, text in valid])
        gold = [label for label, _ in valid]
        report["valid_accuracy"] = round(sum(p == g for p, g in zip(predicted, gold)) / len(gold), 4)
    return report
