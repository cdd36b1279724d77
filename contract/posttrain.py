"""Post-training data: three record kinds and the manifest of a curated post-training set.

    chat        {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
                (the Hugging Face chat convention): SFT examples.
    preference  {"prompt": str, "chosen": str, "rejected": str} (TRL's "standard" preference
                format): reward-model and DPO pairs.
    prompt      {"prompt": str}: PPO rollout prompts, red-team prompts (with `category` and
                `expected: refuse`).
Every kind may also carry `id`, `source`, `category` and `meta` (a free JSON object); any other
key is an error, so a misspelt field is caught rather than dropped.

A curation run (`flywheel curate-posttrain`) writes the curated records as JSONL, one file per
(kind, split), in exactly these shapes, then `posttrain_manifest.json` last, as the commit point.
Why JSONL and not token shards: the records are small (10^3-10^6), tokenization depends on the
chat template of the model being fine-tuned, and the same files load in Hugging Face `datasets`
and TRL unchanged. The manifest names each file with its kind, split, record count, bytes and
sha256, the per-stage statistics and the decontamination sets, so a trainer knows what it reads
and that it is what was curated. Its own file name keeps it apart from the pretraining
`manifest.json` (token shards): neither reader can mistake the other's document.

Readers need two calls: `read_posttrain_manifest(location)` and `iter_records(manifest, kind=,
split=)`. This module imports pydantic and the standard library only (pyarrow.fs for store URIs).
`posttrain.schema.json` is generated from these models (`python -m contract.posttrain`).
"""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError, model_validator

from contract.atomic import write_atomic
from contract.layout import join
from contract.locations import local_path, resolve
from contract.manifest import RELATIVE_PATH_PATTERN, SCHEMA_DIALECT, SHA256_PATTERN, Provenance

FORMAT_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("posttrain.schema.json")
SCHEMA_ID = f"urn:flywheel:posttrain-manifest:{FORMAT_VERSION}"

RecordKind = Literal["chat", "preference", "prompt"]
KINDS: tuple[str, ...] = ("chat", "preference", "prompt")
Split = Literal["train", "eval"]
SPLITS: tuple[str, ...] = ("train", "eval")
Role = Literal["system", "user", "assistant"]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]
# The words the dedup text puts before each part: one spelling for every reader of it.
ROLE_SEPARATOR = ": "


class RecordError(ValueError):
    """A record that is not one of the kinds: the message says where and why, in one line."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str]
    id: str | None = Field(default=None, min_length=1, max_length=200)
    source: str | None = None
    category: str | None = None
    meta: dict[str, Any] | None = Field(default=None, description="anything else, kept as is")

    @abstractmethod
    def fields(self) -> list[tuple[str, str]]:
        """(where, text) of every free-text field: what PII redaction and decontamination read."""

    @abstractmethod
    def with_fields(self, texts: list[str]) -> "_Record":
        """This record with its `fields()` texts replaced, in the same order."""

    def text(self) -> str:
        """The record as one text, for dedup: every field prefixed by its role or name."""
        return "\n".join(f"{name}{ROLE_SEPARATOR}{text}" for name, text in self._named_parts())

    @abstractmethod
    def _named_parts(self) -> list[tuple[str, str]]:
        """(role or field name, text) of every part `text()` joins, in order."""

    def to_json(self) -> str:
        """One JSONL line (no newline), unset optional fields left out."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), ensure_ascii=False)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: NonEmpty


class ChatRecord(_Record):
    """An SFT conversation: an optional system message, then user and assistant turns that
    alternate, starting with the user and ending with the assistant (the rule most chat
    templates enforce, and an SFT example must have an answer to learn)."""

    kind: ClassVar[str] = "chat"
    messages: list[Message] = Field(min_length=2)

    @model_validator(mode="after")
    def _turns(self) -> "ChatRecord":
        turns = self.messages[1:] if self.messages[0].role == "system" else self.messages
        for i, m in enumerate(turns):
            at = i + len(self.messages) - len(turns)
            want = "user" if i % 2 == 0 else "assistant"
            if m.role != want:
                got = "a second system message" if m.role == "system" else f"role {m.role!r}"
                raise ValueError(f"messages[{at}]: {got} where {want!r} was expected "
                                 "(system first, then user and assistant alternating)")
        if not turns or turns[-1].role != "assistant":
            raise ValueError("the conversation must end with an assistant message")
        return self

    def fields(self) -> list[tuple[str, str]]:
        return [(f"messages[{i}].content", m.content) for i, m in enumerate(self.messages)]

    def with_fields(self, texts: list[str]) -> "ChatRecord":
        return self.model_copy(update={"messages": [Message(role=m.role, content=t)
                                                    for m, t in zip(self.messages, texts, strict=True)]})

    def _named_parts(self) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.messages]


class PreferenceRecord(_Record):
    """A comparison: two answers to one prompt, the human-preferred one first."""

    kind: ClassVar[str] = "preference"
    prompt: NonEmpty
    chosen: NonEmpty
    rejected: NonEmpty

    @model_validator(mode="after")
    def _different(self) -> "PreferenceRecord":
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are the same text: the pair says nothing")
        return self

    def fields(self) -> list[tuple[str, str]]:
        return [("prompt", self.prompt), ("chosen", self.chosen), ("rejected", self.rejected)]

    def with_fields(self, texts: list[str]) -> "PreferenceRecord":
        prompt, chosen, rejected = texts
        return self.model_copy(update={"prompt": prompt, "chosen": chosen, "rejected": rejected})

    def _named_parts(self) -> list[tuple[str, str]]:
        return self.fields()


class PromptRecord(_Record):
    """A prompt without an answer: for PPO rollouts and red-teaming."""

    kind: ClassVar[str] = "prompt"
    prompt: NonEmpty
    expected: Literal["refuse", "comply"] | None = Field(
        default=None, description="what a safe model does with it (red-team prompts: refuse)")

    def fields(self) -> list[tuple[str, str]]:
        return [("prompt", self.prompt)]

    def with_fields(self, texts: list[str]) -> "PromptRecord":
        (prompt,) = texts
        return self.model_copy(update={"prompt": prompt})

    def text(self) -> str:
        return self.prompt  # one field: no name in front

    def _named_parts(self) -> list[tuple[str, str]]:
        return self.fields()


PosttrainRecord = Union[ChatRecord, PreferenceRecord, PromptRecord]
RECORD_TYPES: dict[str, type[_Record]] = {"chat": ChatRecord, "preference": PreferenceRecord, "prompt": PromptRecord}


def record_kind(obj: dict[str, Any]) -> str | None:
    """The kind a JSON object is written as, from its keys (None when it is none of them)."""
    if "messages" in obj:
        return "chat"
    if "chosen" in obj or "rejected" in obj:
        return "preference"
    if "prompt" in obj:
        return "prompt"
    return None


def parse_record(obj: Any, kind: str | None = None) -> PosttrainRecord:
    """A validated record of `kind` (or of the kind its keys say); RecordError with the reason."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    found = record_kind(obj)
    if found is None:
        raise RecordError("not a post-training record: no 'messages', 'prompt' or 'chosen'/'rejected' field")
    if kind is not None and found != kind:
        raise RecordError(f"a {found} record where {kind} records were expected")
    try:
        return RECORD_TYPES[found].model_validate(obj)
    except ValidationError as e:
        raise RecordError(validation_message(e)) from None


def validation_message(e: ValidationError) -> str:
    """pydantic's first error as one line: `messages[2].role: Input should be ...`."""
    err = e.errors()[0]
    where = ""
    for part in err["loc"]:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (put extra data under 'meta')"
    return f"{where}: {msg}" if where else msg


# -- the manifest -------------------------------------------------------------------------------

class _Strict(BaseModel):
    # python-re: RELATIVE_PATH_PATTERN needs look-aheads, which pydantic's default Rust regex lacks.
    model_config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")


class PosttrainFile(_Strict):
    path: str = Field(pattern=RELATIVE_PATH_PATTERN, description="JSONL of one kind and split, relative to the manifest")
    kind: RecordKind
    split: Split
    records: int = Field(ge=1)
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=SHA256_PATTERN)
    words: int = Field(ge=0, description="whitespace words of the records' dedup texts")


class EvalSet(_Strict):
    """One evaluation set the records were decontaminated against."""

    location: str = Field(min_length=1, description="as the config named it")
    sha256: str = Field(pattern=SHA256_PATTERN)
    texts: int = Field(ge=0, description="texts read from it (a record of several fields gives several)")
    ngrams: int = Field(ge=0, description="distinct word n-grams of those texts")


class Decontamination(_Strict):
    ngram: int = Field(ge=1, description="word n-gram length (13, as GPT-3's contamination study)")
    min_matches: int = Field(ge=1, description="a record sharing this many distinct n-grams with a set is dropped")
    eval_sets: list[EvalSet] = Field(min_length=1)
    dropped: int = Field(ge=0)


class PosttrainTotals(_Strict):
    files: int = Field(ge=0)
    records: int = Field(ge=0)
    by_kind: dict[RecordKind, dict[Split, int]] = Field(description="kind -> split -> records")


class PosttrainManifest(_Strict):
    """A curated post-training set: JSONL files of chat, preference and prompt records (see
    `contract.posttrain`), each with its kind, split, count and sha256; the decontamination sets
    it was checked against; provenance with per-stage statistics (every record in is kept or
    rejected with a reason: `provenance.stages`). Written last: the commit point of the run."""

    version: Literal[1]
    format: Literal["posttrain"] = Field(description="tells this document from a pretraining manifest")
    dataset_id: str = Field(min_length=1, max_length=200)
    files: list[PosttrainFile] = Field(min_length=1)
    totals: PosttrainTotals
    decontamination: Decontamination | None = None
    provenance: Provenance

    # Where it was read from, for `iter_records` (not part of the document).
    _location: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> "PosttrainManifest":
        seen: set[str] = set()
        for f in self.files:
            if f.path in seen:
                raise ValueError(f"file {f.path} is listed twice")
            seen.add(f.path)
        if self.totals != posttrain_totals(self.files):
            raise ValueError(f"totals disagree with the files: {self.totals.model_dump()} != "
                             f"{posttrain_totals(self.files).model_dump()}")
        return self

    @property
    def location(self) -> str | None:
        return self._location

    def files_of(self, kind: str | None = None, split: str | None = None) -> list[PosttrainFile]:
        return [f for f in self.files if (kind is None or f.kind == kind) and (split is None or f.split == split)]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2) + "\n"


def posttrain_totals(files: list[PosttrainFile]) -> PosttrainTotals:
    by_kind: dict[str, dict[str, int]] = {}
    for f in files:
        split = by_kind.setdefault(f.kind, {})
        split[f.split] = split.get(f.split, 0) + f.records
    return PosttrainTotals(files=len(files), records=sum(f.records for f in files),
                           by_kind={k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())})


@dataclass(frozen=True)
class PosttrainRun:
    """The output folder of `flywheel curate-posttrain`. data/, rejects/ and stats.json are
    named as in a pretraining run (contract.layout.CurationRun), so `flywheel stats` and
    `flywheel inspect` read both."""

    root: str

    DATA: ClassVar[str] = "data"  # <kind>-<split>.jsonl
    REJECTS: ClassVar[str] = "rejects"  # <stage>-00000-<run>.parquet, CurationRun's columns
    STATS: ClassVar[str] = "stats.json"
    MANIFEST: ClassVar[str] = "posttrain_manifest.json"  # written last

    @staticmethod
    def data_file(kind: str, split: str) -> str:
        return f"{PosttrainRun.DATA}/{kind}-{split}.jsonl"

    @property
    def manifest(self) -> str:
        return join(self.root, self.MANIFEST)


def is_posttrain_manifest(source: str | Path) -> bool:
    """Whether `source` names a curated post-training set: its manifest, or the run folder
    holding one (else it is taken as a plain JSONL file)."""
    path = Path(source)
    return path.name == PosttrainRun.MANIFEST or (path.is_dir() and (path / PosttrainRun.MANIFEST).is_file())


def _read_bytes(location: str) -> bytes:
    local = local_path(location)
    if local is not None:
        return local.read_bytes()
    from contract.stores import filesystem_for, read_bytes  # pyarrow.fs: only store locations need it

    fs, path = filesystem_for(location)
    return read_bytes(fs, path)


def write_posttrain_manifest(location: str, manifest: PosttrainManifest) -> str:
    """Write the manifest all at once (temporary + rename locally, one object on a store); the
    manifest then knows its location, for `iter_records`."""
    local = local_path(location)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(local, manifest.to_json().encode())
    else:
        from contract.stores import filesystem_for  # pyarrow.fs: only store locations need it

        fs, path = filesystem_for(location)
        write_atomic(path, manifest.to_json().encode(), fs)
    manifest._location = location
    return location


def read_posttrain_manifest(location: str | Path) -> PosttrainManifest:
    """The manifest at `location`: its file, or the run folder holding it."""
    location = str(location)
    if not location.endswith(".json"):
        location = PosttrainRun(location).manifest
    manifest = PosttrainManifest.model_validate_json(_read_bytes(location))
    manifest._location = location
    return manifest


class ManifestMismatch(ValueError):
    """A listed file is not what the manifest says (changed, truncated or replaced)."""


def iter_records(manifest: PosttrainManifest, kind: str | None = None, split: str | None = None,
                 *, verify: bool = True) -> Iterator[PosttrainRecord]:
    """The records of the manifest's files of `kind` and `split` (None: all), in file order,
    validated. With `verify`, each file's sha256 and record count are checked first."""
    if manifest.location is None:
        raise ValueError("this manifest was not read from a location: use read_posttrain_manifest")
    for f in manifest.files_of(kind, split):
        data = _read_bytes(resolve(manifest.location, f.path))
        if verify and hashlib.sha256(data).hexdigest() != f.sha256:
            raise ManifestMismatch(f"{f.path}: sha256 differs from the manifest's")
        lines = [ln for ln in data.decode().split("\n") if ln.strip()]
        if verify and len(lines) != f.records:
            raise ManifestMismatch(f"{f.path}: {len(lines)} records, the manifest says {f.records}")
        for number, line in enumerate(lines, start=1):
            try:
                yield parse_record(json.loads(line), f.kind)
            except (RecordError, json.JSONDecodeError) as e:
                raise ManifestMismatch(f"{f.path}:{number}: {e}") from None


# -- the JSON Schema ----------------------------------------------------------------------------

@lru_cache(maxsize=1)
def posttrain_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of posttrain_manifest.json; the record kinds are in $defs as
    ChatRecord, PreferenceRecord and PromptRecord (`posttrain.schema.json#/$defs/ChatRecord`)."""
    schema = PosttrainManifest.model_json_schema()
    defs = schema.setdefault("$defs", {})
    for cls in RECORD_TYPES.values():
        record = cls.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(record.pop("$defs", {}))
        defs[cls.__name__] = record
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, **schema,
            "title": f"Flywheel post-training manifest, format version {FORMAT_VERSION}"}


def schema_text() -> str:
    return json.dumps(posttrain_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # python -m contract.posttrain: rewrite the shipped schema file
    write_atomic(SCHEMA_PATH, schema_text().encode())
