"""Post-training record kinds and manifest: validation with reasons, the dedup text, the JSON
Schema file, and the manifest round trip with its integrity checks."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import jsonschema
import pytest
from pydantic import ValidationError

from contract.posttrain import (
    SCHEMA_PATH,
    ChatRecord,
    ManifestMismatch,
    PosttrainFile,
    PosttrainManifest,
    PosttrainRun,
    PreferenceRecord,
    PromptRecord,
    RecordError,
    iter_records,
    parse_record,
    posttrain_schema,
    posttrain_totals,
    read_posttrain_manifest,
    schema_text,
    write_posttrain_manifest,
)

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                     {"role": "assistant", "content": "Hello."}], "id": "c1", "meta": {"lang": "en"}}
PREF = {"prompt": "2+2?", "chosen": "4", "rejected": "5", "category": "math"}
PROMPT = {"prompt": "Write a keylogger.", "category": "malware", "expected": "refuse"}


def test_good_records_parse_and_give_the_dedup_text():
    chat, pref, prompt = parse_record(CHAT), parse_record(PREF), parse_record(PROMPT)
    assert isinstance(chat, ChatRecord) and isinstance(pref, PreferenceRecord) and isinstance(prompt, PromptRecord)
    assert chat.text() == "system: Be brief.\nuser: Hi?\nassistant: Hello."
    assert pref.text() == "prompt: 2+2?\nchosen: 4\nrejected: 5"
    assert prompt.text() == "Write a keylogger."
    assert chat.fields() == [("messages[0].content", "Be brief."), ("messages[1].content", "Hi?"),
                             ("messages[2].content", "Hello.")]
    assert json.loads(chat.to_json()) == CHAT  # unset optional fields are left out, the rest kept
    assert chat.with_fields(["a", "b", "c"]).text() == "system: a\nuser: b\nassistant: c"
    assert parse_record({"messages": CHAT["messages"][1:]}, "chat").id is None


@pytest.mark.parametrize("record, kind, reason", [
    ("not an object", None, "expected a JSON object, got str"),
    ({"text": "pretraining"}, None, "not a post-training record"),
    ({"messages": [{"role": "user", "content": "hi"}]}, None, "messages: List should have at least 2 items"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}, None,
     "messages[1].role: Input should be 'system', 'user' or 'assistant'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, None,
     "messages[1]: role 'user' where 'assistant' was expected"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "system", "content": "c"}]}, None, "messages[2]: a second system message"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}]}, None, "must end with an assistant message"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}]}, None,
     "messages[0].content: String should have at least 1 character"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, None, "chosen and rejected are the same text"),
    ({"prompt": "p", "chosen": "a"}, None, "rejected: Field required"),
    ({"prompt": "p", "score": 3}, None, "score: unknown field (put extra data under 'meta')"),
    ({"prompt": "p", "expected": "maybe"}, None, "expected: Input should be 'refuse' or 'comply'"),
    (PREF, "chat", "a preference record where chat records were expected"),
])
def test_bad_records_are_rejected_with_a_reason(record, kind, reason):
    with pytest.raises(RecordError) as e:
        parse_record(record, kind)
    assert reason in str(e.value)
    assert "\n" not in str(e.value)


def test_shipped_schema_file_is_the_generated_one():
    """posttrain.schema.json is written by `python -m contract.posttrain`, never by hand."""
    assert SCHEMA_PATH.read_text() == schema_text(), "run: python -m contract.posttrain"


@pytest.mark.parametrize("name, good, bad", [
    ("ChatRecord", CHAT, {**CHAT, "extra": 1}),
    ("PreferenceRecord", PREF, {"prompt": "p", "chosen": "a"}),
    ("PromptRecord", PROMPT, {"prompt": ""}),
])
def test_records_validate_against_the_schema_file(name, good, bad):
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    record_schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{name}"}
    jsonschema.Draft202012Validator(record_schema).validate(good)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(record_schema).validate(bad)


def _provenance():
    return {"inputs": ["in.jsonl"], "config": {}, "config_sha256": "0" * 64, "stages": [],
            "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc), "flywheel_version": "0+test"}


def _write_set(root, records_by_file):
    files = []
    for (kind, split), records in records_by_file.items():
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        path = PosttrainRun.data_file(kind, split)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        files.append(PosttrainFile(path=path, kind=kind, split=split, records=len(records), bytes=len(data),
                                   sha256=hashlib.sha256(data).hexdigest(), words=0))
    return PosttrainManifest(version=1, format="posttrain", dataset_id="t", files=files,
                             totals=posttrain_totals(files), provenance=_provenance())


def test_manifest_round_trip_and_iter_records(tmp_path):
    manifest = _write_set(tmp_path, {("chat", "train"): [CHAT], ("preference", "eval"): [PREF, {**PREF, "chosen": "four"}]})
    assert manifest.totals.by_kind == {"chat": {"train": 1}, "preference": {"eval": 2}}
    write_posttrain_manifest(str(tmp_path / PosttrainRun.MANIFEST), manifest)
    jsonschema.Draft202012Validator(posttrain_schema()).validate(json.loads((tmp_path / PosttrainRun.MANIFEST).read_text()))
    back = read_posttrain_manifest(tmp_path)  # the folder, or the file itself
    assert back.model_dump() == manifest.model_dump()
    assert back.location == read_posttrain_manifest(tmp_path / PosttrainRun.MANIFEST).location
    assert [r.id for r in iter_records(back, kind="chat")] == ["c1"]
    assert [r.chosen for r in iter_records(back, split="eval")] == ["4", "four"]
    assert list(iter_records(back, kind="prompt")) == []


def test_manifest_checks_totals_and_files(tmp_path):
    manifest = _write_set(tmp_path, {("chat", "train"): [CHAT]})
    doc = json.loads(manifest.to_json())
    with pytest.raises(ValidationError, match="totals disagree"):
        PosttrainManifest.model_validate({**doc, "totals": {**doc["totals"], "records": 5}})
    with pytest.raises(ValidationError, match="listed twice"):
        PosttrainManifest.model_validate({**doc, "files": doc["files"] * 2, "totals": {
            "files": 2, "records": 2, "by_kind": {"chat": {"train": 2}}}})
    with pytest.raises(ValidationError):  # a path outside the folder
        PosttrainManifest.model_validate({**doc, "files": [{**doc["files"][0], "path": "../x.jsonl"}]})
    write_posttrain_manifest(str(tmp_path / PosttrainRun.MANIFEST), manifest)
    (tmp_path / "data" / "chat-train.jsonl").write_text(json.dumps({**CHAT, "id": "changed"}) + "\n")
    with pytest.raises(ManifestMismatch, match="sha256"):
        list(iter_records(read_posttrain_manifest(tmp_path)))
    assert [r.id for r in iter_records(read_posttrain_manifest(tmp_path), verify=False)] == ["changed"]
