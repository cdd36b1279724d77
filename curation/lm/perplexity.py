"""cc_net's perplexity: score each line with KenLM, aggregate over the document.

    pp(doc) = 10 ** (-sum_lines log10 p(line) / sum_lines (words(line) + 1))

`+ 1` counts the </s> that KenLM scores at the end of each line (bos=True, eos=True). Lines are
tokenised by `curation.lm.tokens` with the kind the model was trained with.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from curation.lm.tokens import TOKENIZER_KINDS, TokenizerKind, default_kind, tokenize_lines
from curation.lm.train import model_record_path


def log10_score(model, text: str, kind: TokenizerKind) -> tuple[float, int]:
    """(sum of log10 probabilities, number of scored tokens incl. one </s> per line) of `text`.

    A text without any token scores as one empty line, so every document gets a value.
    """
    total, length = 0.0, 0
    for tokens in tokenize_lines(text, kind):
        total += model.score(" ".join(tokens), bos=True, eos=True)
        length += len(tokens) + 1
    if length == 0:
        return model.score("", bos=True, eos=True), 1
    return total, length


def perplexity(model, text: str, kind: TokenizerKind) -> float:
    total, length = log10_score(model, text, kind)
    return 10.0 ** (-total / length)


class DomainModel:
    """A KenLM model with the tokenizer kind it was trained with (from its record, if any)."""

    def __init__(self, path: str, domain: str):
        import kenlm

        local = fetch_local(path)
        self.path = path
        self.kind: TokenizerKind = _recorded_kind(local) or default_kind(domain)
        config = kenlm.Config()
        config.show_progress = False  # one progress bar per worker is noise in a run's log
        self.model = kenlm.Model(local, config)

    def perplexity(self, text: str) -> float:
        return perplexity(self.model, text, self.kind)


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
    import pyarrow.fs as pafs

    fs, remote = pafs.FileSystem.from_uri(path)
    folder = tempfile.mkdtemp(prefix="flywheel-lm-")
    local = os.path.join(folder, os.path.basename(remote))
    for src, dst in ((remote, local), (model_record_path(remote), model_record_path(local))):
        if fs.get_file_info(src).type == pafs.FileType.NotFound:
            continue
        with fs.open_input_stream(src) as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    return local
