"""Reading the files a run writes while others watch it: JSON Lines appended a line at a time
(metrics.jsonl, eval.jsonl), JSON documents written once at the end (ablation.json).

A run may be writing the very line or file being read: a torn last line is left out, and a
missing or half-written document reads as absent, so a poll never fails on a run in progress.
The trainer, the ablation runner and the service all read through here.

JSON Lines a user gives (reference text for an n-gram model, held-out evaluation sets) are read
the other way, strictly: `numbered_records` names the file and line of anything that is not JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from contract.locations import local_path


def parse_jsonl_lines(lines: list[str]) -> list[dict[str, Any]]:
    """JSON objects of `lines`, less a final one the writer is still writing (no newline yet)."""
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def read_text(location: str | Path) -> str:
    """The text at a local path or a store URI (FileNotFoundError when absent)."""
    local = local_path(str(location))
    if local is not None:
        return local.read_text(errors="replace")
    from contract.stores import filesystem_for, read_bytes  # pyarrow.fs: only store locations need it

    fs, path = filesystem_for(str(location))
    return read_bytes(fs, path).decode(errors="replace")


def read_jsonl(location: str | Path) -> list[dict[str, Any]]:
    """Every whole JSON object at `location`, a local path or a store URI ([] while it does not exist)."""
    try:
        text = read_text(location)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [r for r in parse_jsonl_lines([ln for ln in text.split("\n") if ln.strip()]) if isinstance(r, dict)]


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is absent or not (yet) a whole JSON object."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def numbered_records(lines: Iterable[str | bytes], where: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each non-blank line; a ValueError `where:N: not valid JSON`."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}:{number}: not valid JSON ({e.msg})") from None
