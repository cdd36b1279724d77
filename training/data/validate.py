"""`flywheel validate-manifest`: is this manifest, and every file it names, what it claims?

Checks, in order (a later check runs only when the earlier ones pass for that object):
1. the manifest can be read and is JSON;
2. it matches `manifest.schema.json` (with `jsonschema`, when installed) and the pydantic model
   (which adds totals = sums, bytes = tokens x width, uint16 only for small vocabularies, ...);
3. the tokenizer file and every shard's .bin and .idx exist, have the expected size and sha256;
4. token ids are below vocab_size; the .idx starts at 0, increases strictly, ends at `tokens`.
Remote files (http, s3) are streamed and hashed, not stored.
"""

from __future__ import annotations

import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import numpy as np
from pydantic import ValidationError

from contract.locations import resolve
from contract.manifest import Manifest, ShardEntry, manifest_schema
from contract.shards import INDEX_DTYPE, index_problem, token_dtype
from training.data.fetch import Fetcher, FetchError

_PARALLEL_FILES = 4  # hashlib releases the GIL: a few threads overlap hashing with I/O


def validate_manifest(target: str) -> list[str]:
    """Problems with the manifest at `target` (path or URL) and its files; empty when valid."""
    return _validate(target)[0]


def validate_manifest_cli(target: str) -> int:
    """Print the verdict; return the process exit code (0 valid, 1 invalid)."""
    problems, manifest = _validate(target)
    if problems:
        print(f"invalid manifest {target}: {problems[0]}", file=sys.stderr)
        for problem in problems[1:]:
            print(f"  also: {problem}", file=sys.stderr)
        return 1
    assert manifest is not None
    t = manifest.totals
    print(f"ok: {target}: {t.shards} shards, {t.tokens} tokens, {t.documents} documents ({manifest.dataset_id})")
    return 0


def _validate(target: str) -> tuple[list[str], Manifest | None]:
    with Fetcher() as fetcher:
        try:
            raw = fetcher.read_bytes(target)
        except FetchError as e:
            return [f"cannot read the manifest: {e}"], None
        try:
            document = json.loads(raw)
        except ValueError as e:
            return [f"not JSON: {e}"], None
        problems = schema_problems(document)
        if problems:
            return problems, None
        try:
            manifest = Manifest.model_validate(document)
        except ValidationError as e:
            return [_pydantic_problem(err) for err in e.errors()], None
        return file_problems(manifest, target, fetcher), manifest


def schema_problems(document: Any) -> list[str]:
    """JSON Schema violations, first the shallowest (jsonschema is a base dependency)."""
    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(
        validator.iter_errors(document), key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path])
    )
    return [f"{_json_path(e.absolute_path)}: {e.message}" for e in errors]


def file_problems(manifest: Manifest, target: str, fetcher: Fetcher) -> list[str]:
    checks = [lambda: [p] if (p := _tokenizer_problem(manifest, target, fetcher)) else []]
    for i in range(len(manifest.shards)):
        checks.append(lambda i=i: _shard_problems(manifest, i, target, fetcher))
    with ThreadPoolExecutor(_PARALLEL_FILES) as pool:
        return [p for found in pool.map(lambda check: check(), checks) for p in found]


def _tokenizer_problem(manifest: Manifest, target: str, fetcher: Fetcher) -> str | None:
    tok = manifest.tokenizer
    location = tok.url or resolve(target, tok.path)
    try:
        digest, _ = _scan(fetcher, location, None, None)
    except FetchError as e:
        return f"tokenizer {tok.path}: {e}"
    if digest != tok.sha256:
        return f"tokenizer {tok.path}: sha256 {digest} does not match the manifest's {tok.sha256}"
    return None


def _shard_problems(manifest: Manifest, i: int, target: str, fetcher: Fetcher) -> list[str]:
    """At most one problem for the .bin and one for the .idx (each names the file)."""
    shard = manifest.shards[i]
    problems = [
        _token_file_problem(manifest, shard, fetcher, target, f"shards[{i}] {shard.path}"),
        _index_file_problem(shard, fetcher, target, f"shards[{i}] {shard.index_path}"),
    ]
    return [p for p in problems if p is not None]


def _token_file_problem(manifest: Manifest, shard: ShardEntry, fetcher: Fetcher, target: str, where: str) -> str | None:
    vocab = manifest.tokenizer.vocab_size
    try:
        location = shard.url or resolve(target, shard.path)
        digest, (size, max_id) = _scan(fetcher, location, token_dtype(manifest.dtype), shard.bytes)
    except FetchError as e:
        return f"{where}: {e}"
    if size != shard.bytes:
        verdict = "truncated" if size < shard.bytes else "too long"
        return f"{where}: {size} bytes, the manifest says {shard.bytes} ({verdict})"
    if digest != shard.sha256:
        return f"{where}: sha256 {digest} does not match the manifest's {shard.sha256} (corrupted)"
    if max_id is not None and max_id >= vocab:
        return f"{where}: token id {max_id} is outside the vocabulary (vocab_size {vocab})"
    return None


def _index_file_problem(shard: ShardEntry, fetcher: Fetcher, target: str, where: str) -> str | None:
    expected_size = (shard.documents + 1) * INDEX_DTYPE.itemsize
    try:  # an index is 8 bytes per document: small enough to hold
        raw = fetcher.read_bytes(shard.index_url or resolve(target, shard.index_path))
    except FetchError as e:
        return f"{where}: {e}"
    if len(raw) != expected_size:
        return f"{where}: {len(raw)} bytes, expected (documents + 1) x 8 = {expected_size}"
    if (digest := hashlib.sha256(raw).hexdigest()) != shard.index_sha256:
        return f"{where}: sha256 {digest} does not match the manifest's {shard.index_sha256} (corrupted)"
    problem = index_problem(np.frombuffer(raw, dtype=INDEX_DTYPE), shard.tokens, shard.documents)
    return f"{where}: {problem}" if problem else None


def _scan(
    fetcher: Fetcher, location: str, dtype: np.dtype | None, expected: int | None
) -> tuple[str, tuple[int, int | None]]:
    """sha256, size and (for token files) the largest id, streaming; stops reading past `expected`."""
    digest, size, max_id, carry = hashlib.sha256(), 0, None, b""
    for chunk in fetcher.iter_chunks(location):
        digest.update(chunk)
        size += len(chunk)
        if dtype is not None:
            data = carry + chunk  # a chunk may end inside a token
            usable = len(data) - len(data) % dtype.itemsize
            carry = data[usable:]
            if usable:
                m = int(np.frombuffer(data[:usable], dtype=dtype).max())
                max_id = m if max_id is None else max(max_id, m)
        if expected is not None and size > expected:
            break  # too long: the size check will say so
    return digest.hexdigest(), (size, max_id)


def _json_path(path: Any) -> str:
    out = "manifest"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _pydantic_problem(err: dict[str, Any]) -> str:
    location = _json_path(err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    return f"{location}: {message}" if err["loc"] else message
