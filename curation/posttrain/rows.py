"""One record in flight through the steps, and the read step that makes them.

Every input line becomes a row: a valid record is kept, anything else is rejected with a reason
and the line itself, so nothing read is lost:
    malformed       not JSON, or not UTF-8                        detail: {error, line}
    invalid_record  JSON, but not a valid record of the kind      detail: {error, line}
    duplicate_id    an explicit id seen earlier in the run         detail: {kept_id: the first row}
A record without an id gets `<input path>:<line number>`, unique and easy to find.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, replace
from typing import Any, Iterator

from contract.posttrain import PosttrainRecord, RecordError, parse_record
from contract.stores import filesystem_for, read_bytes
from curation.io.files import InputError
from curation.posttrain.config import PosttrainInput

MALFORMED = "malformed"
INVALID_RECORD = "invalid_record"
DUPLICATE_ID = "duplicate_id"
SPLIT_RANK = {"eval": 0, "train": 1}  # keepers: an eval record before its train copy


@dataclass(frozen=True)
class Row:
    id: str
    kind: str  # the record kind, or "" for a line that is not a record
    split: str
    source: str  # the input file
    record: PosttrainRecord | None
    raw: str = ""  # the line, for rows without a record

    @property
    def text(self) -> str:
        """The dedup text (roles and field names included), or the raw line."""
        return self.record.text() if self.record is not None else self.raw

    @property
    def words(self) -> int:
        return len(self.text.split())

    def payload(self) -> str:
        """What rejects/ keeps of the row: the record as JSON, or the line as read."""
        return self.record.to_json() if self.record is not None else self.raw

    def with_record(self, record: PosttrainRecord) -> "Row":
        return replace(self, record=record)


@dataclass(frozen=True)
class Verdict:
    row: Row
    reason: str = ""  # "" kept
    detail: dict[str, Any] | None = None


def input_files(spec: PosttrainInput) -> list[str]:
    """The JSONL files of an input: the file, or the folder's *.jsonl(.gz), sorted."""
    from pyarrow import fs as pafs  # pyarrow.fs, as the pretraining reader

    fs, path = filesystem_for(spec.path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input {spec.path} does not exist")
    if info.type == pafs.FileType.File:
        return [spec.path]
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    names = sorted(i.path for i in found if i.type == pafs.FileType.File and i.path.endswith((".jsonl", ".jsonl.gz")))
    if not names:
        raise InputError(f"input {spec.path}: no .jsonl or .jsonl.gz files in the folder")
    prefix = spec.path.rstrip("/") + "/"
    return [prefix + n[len(path.rstrip("/")) + 1:] for n in names]


def _lines(location: str) -> Iterator[tuple[int, bytes]]:
    fs, path = filesystem_for(location)
    data = read_bytes(fs, path)
    if location.endswith(".gz"):
        data = gzip.decompress(data)
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def read_rows(inputs: list[PosttrainInput]) -> list[Verdict]:
    """Every line of every input as a row with its verdict, in input and line order."""
    verdicts: list[Verdict] = []
    first_of: dict[str, str] = {}
    for spec in inputs:
        for location in input_files(spec):
            for number, line in _lines(location):
                default_id = f"{location}:{number}"
                verdicts.append(_read_line(line, number, default_id, spec, location, first_of))
    return verdicts


def _read_line(line: bytes, number: int, default_id: str, spec: PosttrainInput, location: str,
               first_of: dict[str, str]) -> Verdict:
    def rejected(reason: str, error: str, raw: str) -> Verdict:
        return Verdict(Row(default_id, "", spec.split, location, None, raw), reason, {"error": error, "line": number})

    try:
        text = line.decode()
        obj = json.loads(text)
    except UnicodeDecodeError as e:
        return rejected(MALFORMED, f"not UTF-8 ({e.reason})", line.decode(errors="replace"))
    except json.JSONDecodeError as e:
        return rejected(MALFORMED, f"not valid JSON ({e.msg})", text)
    try:
        record = parse_record(obj, spec.kind)
    except RecordError as e:
        return rejected(INVALID_RECORD, str(e), text)
    row = Row(record.id or default_id, record.kind, spec.split, location, record)
    if row.id in first_of:
        return Verdict(row, DUPLICATE_ID, {"kept_id": row.id, "kept_source": first_of[row.id], "line": number})
    first_of[row.id] = location
    return Verdict(row)
