"""Shard writer, manifest model + JSON Schema, and validate-manifest on local files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from contract.manifest import (
    SCHEMA_PATH,
    Manifest,
    Provenance,
    ShardEntry,
    SpecialIds,
    TokenizerInfo,
    Totals,
    build_manifest,
    manifest_schema,
    parse_manifest,
    schema_text,
    write_manifest,
)
from contract.shards import ShardWriter, dtype_for_vocab, open_index, open_tokens, sha256_file
from training.data.synthetic import write_synthetic_dataset
from training.data.validate import validate_manifest, validate_manifest_cli

REPO = Path(__file__).resolve().parents[2]


def random_docs(n: int, seed: int, vocab: int = 1000, mean: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.geometric(1 / mean)), dtype=np.int64) for _ in range(n)]


def read_documents(records) -> list[np.ndarray]:
    """Documents back from shards, joining pieces of continued documents."""
    docs: list[np.ndarray] = []
    for r in records:
        tokens, index = open_tokens(r.path, "uint16"), open_index(r.index_path)
        pieces = [np.asarray(tokens[index[d] : index[d + 1]]) for d in range(len(index) - 1)]
        if r.continues_previous:
            docs[-1] = np.concatenate([docs[-1], pieces.pop(0)])
        docs.extend(pieces)
    return docs


# -- shards ------------------------------------------------------------------------------------


def test_writer_rolls_at_target_without_splitting_documents(tmp_path):
    docs = random_docs(300, seed=1)
    with ShardWriter(tmp_path, "uint16", target_tokens=500) as writer:
        for i, doc in enumerate(docs):
            writer.add(doc, "web" if i % 3 else "code")
    records = writer.records
    assert len(records) > 5
    assert [r.path.name for r in records] == [f"shard-{i:05d}.bin" for i in range(len(records))]
    for r in records:
        assert r.tokens <= 500 and not r.continues_previous
        assert r.path.stat().st_size == r.bytes == 2 * r.tokens
        assert r.index_path.stat().st_size == 8 * (r.documents + 1)
        assert sha256_file(r.path) == r.sha256 and sha256_file(r.index_path) == r.index_sha256
        assert sum(r.domains.values()) == r.tokens
    assert all(np.array_equal(a, b) for a, b in zip(read_documents(records), docs, strict=True))
    expected_code = sum(len(d) for i, d in enumerate(docs) if i % 3 == 0)
    assert sum(r.domains.get("code", 0) for r in records) == expected_code
    # A shard closes only when the next document would not fit.
    for r, nxt in zip(records, records[1:]):
        first_doc_of_next = int(open_index(nxt.index_path)[1])
        assert r.tokens + first_doc_of_next > 500
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_files_are_flat_little_endian_arrays(tmp_path):
    with ShardWriter(tmp_path / "a", "uint16") as w16:
        w16.add(np.array([1, 258]), "web")
    with ShardWriter(tmp_path / "b", "uint32") as w32:
        w32.add(np.array([1, 70000]), "web")
        w32.add(np.array([5]), "web")
    assert w16.records[0].path.read_bytes() == b"\x01\x00\x02\x01"
    assert w32.records[0].path.read_bytes() == b"".join(v.to_bytes(4, "little") for v in (1, 70000, 5))
    assert w32.records[0].index_path.read_bytes() == b"".join(v.to_bytes(8, "little") for v in (0, 2, 3))


def test_document_longer_than_a_shard_is_cut_and_marked(tmp_path):
    docs = [np.arange(30), np.arange(250) % 1000, np.arange(20), np.arange(100)]
    with ShardWriter(tmp_path, "uint16", target_tokens=100) as writer:
        for doc in docs:
            writer.add(doc, "web")
    r = writer.records
    assert [x.tokens for x in r] == [30, 100, 100, 70, 100]
    assert [x.continues_previous for x in r] == [False, False, True, True, False]
    assert [x.documents for x in r] == [1, 1, 1, 2, 1]
    assert all(np.array_equal(a, b) for a, b in zip(read_documents(r), docs, strict=True))


def test_unfinished_shard_is_never_visible(tmp_path):
    writer = ShardWriter(tmp_path, "uint16", target_tokens=100)
    writer.add(np.arange(60), "web")
    assert list(tmp_path.glob("shard-*")) == []  # only the hidden temporary exists
    writer.add(np.arange(60), "web")  # rolls the first shard
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-00000.bin", "shard-00000.idx"]
    with pytest.raises(RuntimeError):
        with writer:
            raise RuntimeError("tokenizer crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.bin", "shard-00000.idx"]


@pytest.mark.parametrize(
    "doc, message",
    [(np.array([], dtype=np.int64), "empty document"), (np.array([70000]), r"\[0, 65535\]"),
     (np.array([-1]), r"\[0, 65535\]"), (np.zeros((2, 2), dtype=np.int64), "1-D integer"),
     (np.array([1.5]), "1-D integer")],
)
def test_writer_rejects_bad_documents(tmp_path, doc, message):
    with pytest.raises(ValueError, match=message):
        ShardWriter(tmp_path, "uint16").add(doc, "web")


def test_dtype_for_vocab():
    assert dtype_for_vocab(32000) == "uint16"
    assert dtype_for_vocab(65536) == "uint16"  # ids 0..65535
    assert dtype_for_vocab(65537) == "uint32"
    assert dtype_for_vocab(129280) == "uint32"  # DeepSeek-V3's vocabulary


# -- manifest model and schema ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("ds"), total_tokens=40_000, target_tokens=9_000, seed=3)


def fresh_copy(dataset: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(dataset.parent, tmp_path / "copy")
    return tmp_path / "copy" / dataset.name


def test_manifest_round_trip_and_totals(dataset):
    manifest = parse_manifest(dataset.read_bytes())
    assert manifest.version == 1 and manifest.dtype == "uint16"
    assert manifest.totals.shards == len(manifest.shards) >= 4
    assert manifest.totals.tokens == sum(s.tokens for s in manifest.shards) >= 40_000
    assert manifest.shards[0].path == "shards/shard-00000.bin"
    assert parse_manifest(manifest.to_json()) == manifest
    assert "url" not in json.loads(dataset.read_text())["shards"][0]  # unset optional fields are omitted
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_pydantic_output_validates_against_schema_file(dataset):
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    document = json.loads(parse_manifest(dataset.read_bytes()).to_json())
    jsonschema.Draft202012Validator(schema).validate(document)
    with_urls = json.loads(dataset.read_text())
    with_urls["shards"][0]["url"] = "https://example.org/d/shard-00000.bin"
    jsonschema.Draft202012Validator(schema).validate(json.loads(Manifest.model_validate(with_urls).to_json()))


MODEL_FOR_DEF = {
    "#": Manifest, "TokenizerInfo": TokenizerInfo, "SpecialIds": SpecialIds, "ShardEntry": ShardEntry,
    "Totals": Totals, "Provenance": Provenance,
}


def test_shipped_schema_file_is_the_generated_one():
    """manifest.schema.json is written by `python -m contract.manifest`, never by hand."""
    assert SCHEMA_PATH.read_text() == schema_text(), "run: python -m contract.manifest"


@pytest.mark.parametrize("definition", sorted(MODEL_FOR_DEF))
def test_schema_and_model_have_the_same_keys(definition):
    schema = manifest_schema()
    part = schema if definition == "#" else schema["$defs"][definition]
    model: type[BaseModel] = MODEL_FOR_DEF[definition]
    assert set(part["properties"]) == set(model.model_fields)
    assert set(part["required"]) == {n for n, f in model.model_fields.items() if f.is_required()}
    assert part["additionalProperties"] is False and model.model_config["extra"] == "forbid"


def _broken(base: dict[str, Any], edit) -> dict[str, Any]:
    document = json.loads(json.dumps(base))
    edit(document)
    return document


BREAKAGES = {
    "missing dtype": lambda d: d.pop("dtype"),
    "unknown key": lambda d: d.update(extra=1),
    "version 2": lambda d: d.update(version=2),
    "dtype int8": lambda d: d.update(dtype="int8"),
    "short sha256": lambda d: d["shards"][0].update(sha256="abc"),
    "upper-case sha256": lambda d: d["shards"][0].update(sha256="A" * 64),
    "absolute path": lambda d: d["shards"][0].update(path="/etc/passwd"),
    "dot-dot path": lambda d: d["shards"][0].update(index_path="shards/../../x.idx"),
    "scheme in path": lambda d: d["shards"][0].update(path="s3://b/x.bin"),
    "zero tokens": lambda d: d["shards"][0].update(tokens=0),
    "negative bytes": lambda d: d["totals"].update(bytes=-1),
    "domain with a space": lambda d: d["shards"][0].update(domains={"web site": 1}),
    "no shards": lambda d: d.update(shards=[]),
    "missing pad": lambda d: d["tokenizer"]["special_ids"].pop("pad"),
    "bad url": lambda d: d["shards"][0].update(url="not a url"),
    "created_at missing": lambda d: d["provenance"].pop("created_at"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_schema_and_model_reject_the_same_documents(dataset, breakage):
    document = _broken(json.loads(dataset.read_text()), BREAKAGES[breakage])
    assert list(jsonschema.Draft202012Validator(manifest_schema()).iter_errors(document)), breakage
    with pytest.raises(ValidationError):
        Manifest.model_validate(document)


MODEL_ONLY_RULES = {
    "totals": (lambda d: d["totals"].update(tokens=d["totals"]["tokens"] + 1),
               "totals disagree with the shards: tokens"),
    "bytes": (lambda d: d["shards"][1].update(bytes=d["shards"][1]["bytes"] + 2),
              "shards[1] (shards/shard-00001.bin): bytes"),
    "dtype": (lambda d: d["tokenizer"].update(vocab_size=70000), "uint16 cannot hold ids of a 70000-token vocabulary"),
    "special id": (lambda d: d["tokenizer"]["special_ids"].update(eos=40000), "tokenizer.special_ids.eos = 40000"),
    "duplicate": (lambda d: d["shards"][1].update(path=d["shards"][0]["path"]), "is listed twice"),
    "domains": (lambda d: d["shards"][0]["domains"].update(web=1), "domain tokens sum to"),
}


@pytest.mark.parametrize("rule", sorted(MODEL_ONLY_RULES))
def test_model_checks_what_the_schema_cannot(dataset, tmp_path, rule):
    edit, message = MODEL_ONLY_RULES[rule]
    document = _broken(json.loads(dataset.read_text()), edit)
    with pytest.raises(ValidationError, match=re.escape(message)):
        Manifest.model_validate(document)
    (tmp_path / "manifest.json").write_text(json.dumps(document))
    problems = validate_manifest(str(tmp_path / "manifest.json"))
    assert message in problems[0]


def test_build_and_write_manifest_atomically(tmp_path):
    with ShardWriter(tmp_path / "out" / "shards", "uint32", target_tokens=10) as writer:
        writer.add(np.array([70000, 1, 2]), "code")
    tok = tmp_path / "out" / "tok.json"
    tok.write_text("{}")
    manifest = build_manifest(
        manifest_path=tmp_path / "out" / "manifest.json", dataset_id="t", dtype="uint32",
        tokenizer={"path": "tok.json", "sha256": sha256_file(tok), "vocab_size": 100000,
                   "special_ids": {"bos": None, "eos": 1, "pad": None}},
        records=writer.records, mixture={}, provenance={
            "inputs": ["corpus-1", {"path": "s3://b/x", "domain": "code"}], "config": {}, "config_sha256": "0" * 64,
            "stages": [{"name": "exact_dedup", "docs_in": 3}], "created_at": "2026-01-01T00:00:00Z",
            "flywheel_version": "0.1.0"})
    write_manifest(tmp_path / "out" / "manifest.json", manifest)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "shards", "tok.json"]
    assert validate_manifest(str(tmp_path / "out" / "manifest.json")) == []
    assert manifest.totals.domains == {"code": 3}


# -- validate-manifest on files ------------------------------------------------------------------


def test_valid_dataset_validates(dataset, capsys):
    assert validate_manifest(str(dataset)) == []
    assert validate_manifest(dataset.as_uri()) == []
    assert validate_manifest_cli(str(dataset)) == 0
    assert "ok:" in capsys.readouterr().out


def test_corrupted_shard_byte_is_named(dataset, tmp_path, capsys):
    copy = fresh_copy(dataset, tmp_path)
    shard = copy.parent / "shards" / "shard-00002.bin"
    raw = bytearray(shard.read_bytes())
    raw[1001] ^= 0x01
    shard.write_bytes(bytes(raw))
    problems = validate_manifest(str(copy))
    assert len(problems) == 1
    assert "shards[2] shards/shard-00002.bin" in problems[0] and "sha256" in problems[0] and "corrupted" in problems[0]
    assert validate_manifest_cli(str(copy)) == 1
    assert "shards/shard-00002.bin" in capsys.readouterr().err


def test_truncated_and_missing_shards_are_named(dataset, tmp_path):
    copy = fresh_copy(dataset, tmp_path)
    shard = copy.parent / "shards" / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    (copy.parent / "shards" / "shard-00003.idx").unlink()
    problems = validate_manifest(str(copy))
    assert problems[0].startswith("shards[1] shards/shard-00001.bin") and "truncated" in problems[0]
    assert problems[1].startswith("shards[3] shards/shard-00003.idx") and "No such file" in problems[1]


def test_bad_index_and_out_of_vocab_ids_are_named(dataset, tmp_path):
    copy = fresh_copy(dataset, tmp_path)
    document = json.loads(copy.read_text())
    idx = copy.parent / "shards" / "shard-00000.idx"
    offsets = np.fromfile(idx, dtype="<u8")
    offsets[[3, 4]] = offsets[[4, 3]]  # out of order, sha256 updated: only the content check can tell
    offsets.tofile(idx)
    document["shards"][0]["index_sha256"] = sha256_file(idx)
    document["tokenizer"]["vocab_size"] = 20000  # synthetic ids go up to 31999
    copy.write_text(json.dumps(document))
    problems = validate_manifest(str(copy))
    assert any("shards[0] shards/shard-00000.idx: index is not strictly increasing" in p for p in problems)
    assert any("outside the vocabulary (vocab_size 20000)" in p for p in problems)


def test_unreadable_or_broken_manifest(tmp_path):
    assert validate_manifest(str(tmp_path / "nope.json"))[0].startswith("cannot read the manifest")
    (tmp_path / "m.json").write_text("{not json")
    assert validate_manifest(str(tmp_path / "m.json"))[0].startswith("not JSON")
    (tmp_path / "m.json").write_text(json.dumps({"version": 1}))
    assert validate_manifest(str(tmp_path / "m.json"))[0] == "manifest: 'dataset_id' is a required property"


def test_reading_side_imports_nothing_heavy():
    code = (
        "import sys, training.data, training.data.synthetic;"
        "heavy = [m for m in ('torch', 'ray', 'pyarrow.fs', 'fastapi', 'presidio_analyzer') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
