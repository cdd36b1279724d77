"""Resource ids: `<kind>_<16 hex>`, random, and their patterns for path validation.

A strict pattern on every id path parameter means no id can carry `..`, `/` or `%2e`: such
requests are answered 422 before any lookup or storage access.
"""

from __future__ import annotations

import secrets

KINDS = ("abl", "cor", "job", "man", "tok", "trn")


def new_id(kind: str) -> str:
    assert kind in KINDS, kind
    return f"{kind}_{secrets.token_hex(8)}"


def id_pattern(kind: str) -> str:
    return rf"^{kind}_[0-9a-f]{{16}}$"


CORPUS_ID = id_pattern("cor")
JOB_ID = id_pattern("job")
MANIFEST_ID = id_pattern("man")
TRAINING_JOB_ID = id_pattern("trn")
ABLATION_ID = id_pattern("abl")
SHA256 = r"^[0-9a-f]{64}$"
