"""Document perplexity under a KenLM model: cc_net's per-line formula, plus the digits.

    pp(doc) = 10 ** (-(sum_lines log10 p(line) + digits * log10(1/10)) / sum_lines (words(line) + 1))

- cc_net's part: each line is scored as a sentence (bos=True, eos=True); `+ 1` counts the </s>
  KenLM scores at its end. Lines are tokenised by `curation.lm.tokens` with the kind the model
  was trained with.
- The digits (score "cc_net_digits", the default): that tokenizer writes every digit as 0, so
  the model predicts "000 . 00 , 0000" very well and a table of random numbers scores like
  fluent prose. Each 0 the model sees stands for one of ten digits; charging log10(1/10) for
  it (a class model: the LM predicts the shape, a uniform choice the digit) gives back the
  information the normalisation threw away. Text with a few years and versions pays a little;
  a table, hex dump or list of IDs pays for every digit. The denominator stays cc_net's token
  count: a digit is part of its token, not a prediction of its own.
- score "cc_net" is cc_net's formula alone (for comparing with cc_net's numbers).
`benchmarks/filters_lm.py` compares both with plain KenLM on a labelled real-vs-garbage set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import kenlm
import pyarrow.fs as pafs

from curation.lm.tokens import TOKENIZER_KINDS, TokenizerKind, default_kind, tokenize_lines
from curation.lm.train import model_record_path

Score = Literal["cc_net_digits", "cc_net"]
_LOG10_DIGIT = -1.0  # log10(1/10): a uniform choice among ten digits


def log10_score(model, text: str, kind: TokenizerKind, score: Score = "cc_net_digits") -> tuple[float, int]:
    """(sum of log10 probabilities, number of scored tokens incl. one </s> per line) of `text`.

    A text without any token scores as one empty line, so every document gets a value.
    """
    total, length, digits = 0.0, 0, 0
    for tokens in tokenize_lines(text, kind):
        line = " ".join(tokens)
        total += model.score(line, bos=True, eos=True)
        length += len(tokens) + 1
        digits += line.count("0")  # after normalisation every 0 is a digit and every digit a 0
    if length == 0:
        return model.score("", bos=True, eos=True), 1
    if score == "cc_net_digits":
        total += digits * _LOG10_DIGIT
    return total, length


def perplexity(model, text: str, kind: TokenizerKind, score: Score = "cc_net_digits") -> float:
    total, length = log10_score(model, text, kind, score)
    return 10.0 ** (-total / length)


class DomainModel:
    """A KenLM model with the tokenizer kind it was trained with (from its record, if any)."""

    def __init__(self, path: str, domain: str, score: Score = "cc_net_digits"):
        local = fetch_local(path)
        self.path = path
        self.score = score
        self.kind: TokenizerKind = _recorded_kind(local) or default_kind(domain)
        config = kenlm.Config()
        config.show_progress = False  # one progress bar per worker is noise in a run's log
        self.model = kenlm.Model(local, config)

    def perplexity(self, text: str) -> float:
        return perplexity(self.model, text, self.kind, self.score)


def _recorded_kind(local_model: str) -> TokenizerKind | None:
    record = Path(model_record_path(local_model))
    if not record.is_file():
        return None
    kind = json.loads(record.read_text()).get("tokenizer")
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"{record}: unknown tokenizer {kind!r}")
    return kind


def fetch_local(path: str) -> str:
    """A local path for a model: the path itself, or a copy of a pyarrow.fs URI (and its record).

    KenLM memory-maps or parses a local file; a cluster's workers read models from object
    storage, so a URI is copied once per worker process into a temporary folder.
    """
    if "://" not in path:
        return path

    fs, remote = pafs.FileSystem.from_uri(path)
    folder = tempfile.mkdtemp(prefix="flywheel-lm-")
    local = os.path.join(folder, os.path.basename(remote))
    for src, dst in ((remote, local), (model_record_path(remote), model_record_path(local))):
        if fs.get_file_info(src).type == pafs.FileType.NotFound:
            continue
        with fs.open_input_stream(src) as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    return local
