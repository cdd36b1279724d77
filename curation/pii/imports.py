"""Importing Presidio without the parts this project never uses."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

# Optional imports of presidio_analyzer that Flywheel never needs.
_UNUSED = ("transformers", "torch")


@contextlib.contextmanager
def presidio_without_torch() -> Iterator[None]:
    """Import Presidio as if `transformers` and `torch` were not installed.

    NOTE: presidio_analyzer imports its optional Hugging Face NER engine (`transformers.pipeline`)
    and a torch-based device detector at import time whenever they are installed (the training
    extra installs both): ~7 s of every PII actor's start, for NER Flywheel runs with spaCy on
    the CPU. A None in sys.modules makes those optional imports fail as if the packages were
    absent; the entries are removed at once, so later imports work as usual. A package already
    imported is left alone.
    """
    blocked = [name for name in _UNUSED if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
