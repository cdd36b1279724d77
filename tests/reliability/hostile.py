"""A hostile input corpus, written to disk, and what the reader must make of each record.

Every file is built streaming: the 50 MB and 70 MB lines are written in 1 MiB chunks and the
gzip bomb is compressed 1 MiB at a time, so making the corpus never holds a big string. The
expected outcomes below are the reader's behaviour as it is today (curation/io/reader.py,
curation/io/records.py): a change to it should show up here as a failing count.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from curation.io.reader import MAX_RECORD_BYTES
from curation.io.unique_ids import DUPLICATE_ID

MIB = 1024 * 1024
KEPT_BIG_BYTES = 50 * MIB  # under the reader's 64 MiB limit: must be kept
REJECTED_BIG_BYTES = 70 * MIB  # over it: one `record_too_large`
BOMB_BYTES = 1024 * MIB  # zeros, no newline: one line of 1 GiB once decompressed
_WORDS = ("river stone market window paper garden signal orange quiet number winter castle "
          "engine letter forest silver bridge animal planet school").split()


@dataclass
class HostileCorpus:
    root: Path  # the folder to give the pipeline as its input
    records: int = 0  # every record the reader sees (blank lines are not records)
    kept: int = 0  # records the read step keeps
    malformed: Counter = field(default_factory=Counter)  # error kind -> records rejected
    exact_duplicates: int = 0  # kept records `exact_dedup` drops (same text modulo case/space)
    duplicate_ids: int = 0  # records the read step rejects for repeating an earlier id
    kept_ids: Counter = field(default_factory=Counter)  # id -> times kept
    nul_text: dict[str, str] = field(default_factory=dict)  # id -> kept text holding a NUL

    def expect(self, kind: str | None) -> None:
        """Count one record: kind None = kept, "duplicate_id", else the `error` kind of its
        malformed row."""
        self.records += 1
        if kind is None:
            self.kept += 1
        elif kind == DUPLICATE_ID:
            self.duplicate_ids += 1
        else:
            self.malformed[kind] += 1


def _line(rec) -> bytes:
    return json.dumps(rec).encode() + b"\n"


def _text(rng: random.Random, i: int) -> str:
    return f"document {i}: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 40)))


def _blob_chunk(rng: random.Random) -> bytes:
    """1 MiB of lowercase letters with a space every 1000 bytes: ~1k whitespace words per MiB
    (a 50 MB text of short words would cost the worker ~0.5 GB in `n_tokens` alone)."""
    table = bytes(ord("a") + b % 26 for b in range(256))
    chunk = bytearray(rng.randbytes(MIB).translate(table))
    chunk[999::1000] = b" " * len(range(999, MIB, 1000))
    return bytes(chunk)


def _write_big_record(path: Path, doc_id: str, text_bytes: int, chunk: bytes) -> None:
    with open(path, "wb") as f:
        f.write(b'{"id": "' + doc_id.encode() + b'", "text": "')
        for _ in range(text_bytes // MIB):
            f.write(chunk)
        f.write(b'"}\n')


def _hostile_lines(c: HostileCorpus) -> list[tuple[bytes, str | None]]:
    """(line, expected kind) for every small hostile record of `mixed.jsonl`."""
    out: list[tuple[bytes, str | None]] = []

    def add(line: bytes, kind: str | None, kept_id: str | None = None) -> None:
        out.append((line, kind))
        if kept_id is not None:
            c.kept_ids[kept_id] += 1

    # Wrong types: each field the schema names, with a value of the wrong kind.
    for rec, kind in [
        ({"id": "wt-text-list", "text": ["a", "b"]}, "wrong_type"),
        ({"id": 1.5, "text": "float id"}, "wrong_type"),
        ({"id": True, "text": "bool id"}, "wrong_type"),
        ({"id": {"k": 1}, "text": "object id"}, "wrong_type"),
        ({"id": "", "text": "empty id"}, "wrong_type"),
        ({"id": "wt-url", "text": "x", "url": 7}, "wrong_type"),
        ({"id": "wt-meta", "text": "x", "metadata": [1, 2]}, "wrong_type"),
        ({"id": "wt-domain", "text": "x", "domain": 3}, "bad_domain"),
        ({"id": "wt-domain-str", "text": "x", "domain": "not a domain!"}, "bad_domain"),
        ({"id": "wt-null-text", "text": None}, "missing_text"),
        (42, "not_an_object"), ("a string", "not_an_object"), (None, "not_an_object"), ([], "not_an_object"),
    ]:
        add(_line(rec), kind)
    # NaN parses (Python's json accepts it) but cannot be stored as JSON metadata.
    add(b'{"id": "wt-nan", "text": "x", "metadata": {"v": NaN}}\n', "bad_value")

    # Deep nesting: past the decoder's recursion limit -> bad_json; a moderate depth is fine.
    deep = 50_000
    add(b'{"id": "deep-meta", "text": "x", "metadata": ' + b'{"a": ' * deep + b"1" + b"}" * deep + b"}\n",
        "bad_json")
    add(b'{"a": ' * deep + b"0" + b"}" * deep + b"\n", "bad_json")
    add(b'{"id": "deep-ok", "text": "fine", "metadata": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}\n",
        None, "deep-ok")

    # NUL: the JSON escape \u0000 is a valid character and is kept as such; a raw NUL byte is a
    # control character JSON forbids inside strings (and junk outside them) -> bad_json.
    c.nul_text["nul-escaped"] = "before\x00after"
    add(_line({"id": "nul-escaped", "text": "before\x00after"}), None, "nul-escaped")
    add(b'{"id": "nul-raw", "text": "a\x00b"}\n', "bad_json")
    add(b'{"id": "nul-trailing", "text": "ok"}\x00\n', "bad_json")
    add(b"\x00\x00\x00\n", "bad_json")  # NUL is not whitespace: a record, not a blank line
    # A UTF-8 byte-order mark is valid UTF-8, but Python's json refuses it -> bad_json.
    add(b'\xef\xbb\xbf{"id": "bom", "text": "x"}\n', "bad_json")

    # Duplicate ids: the first is kept, the later one is a `duplicate_id` reject of the read step.
    add(_line({"id": "dup-1", "text": "first text under a shared id"}), None, "dup-1")
    add(_line({"id": "dup-1", "text": "second, different text under the same id"}), DUPLICATE_ID)
    # Exact duplicates modulo case and whitespace: read keeps both, exact_dedup drops one.
    add(_line({"id": "exact-a", "text": "The Same Words, twice over."}), None, "exact-a")
    add(_line({"id": "exact-b", "text": "  the same words,   TWICE over.  "}), None, "exact-b")
    c.exact_duplicates += 1
    return out


def _invalid_utf8_lines(rng: random.Random) -> list[tuple[bytes, str | None, str | None]]:
    bad = [b"caf\xe9",  # Latin-1
           b"\xe2\x82",  # truncated 3-byte sequence
           b"\xc0\xaf",  # overlong encoding of '/'
           b"\xed\xa0\x80",  # an encoded surrogate
           b"\xf4\x90\x80\x80",  # above U+10FFFF
           b"\x80 lone continuation byte"]
    lines = [(b'{"id": "utf8-' + str(i).encode() + b'", "text": "' + s + b'"}\n', "invalid_utf8", None)
             for i, s in enumerate(bad)]
    lines.append((b'{"key\xff": 1, "id": "utf8-key", "text": "bad byte in a key"}\n', "invalid_utf8", None))
    for i in range(20):  # valid UTF-8 beyond ASCII, between the bad lines
        lines.append((_line({"id": f"utf8-ok-{i}", "text": f"ünïcödé {i} 日本語 ✓"}), None, f"utf8-ok-{i}"))
    rng.shuffle(lines)
    return lines


def make_hostile_corpus(root: Path, seed: int = 0, n_good: int = 300) -> HostileCorpus:
    """Write the corpus under `root` (a new folder) and return what reading it must give."""
    assert KEPT_BIG_BYTES < MAX_RECORD_BYTES < REJECTED_BIG_BYTES
    rng = random.Random(seed)
    root.mkdir(parents=True)
    c = HostileCorpus(root=root)

    # Ordinary records with the small hostile ones shuffled in.
    lines = [(_line({"id": f"good-{i}", "text": _text(rng, i)}), None) for i in range(n_good)]
    for i in range(n_good):
        c.kept_ids[f"good-{i}"] += 1
    lines += _hostile_lines(c)
    rng.shuffle(lines)
    with open(root / "mixed.jsonl", "wb") as f:
        for line, kind in lines:
            f.write(line)
            c.expect(kind)

    with open(root / "invalid_utf8.jsonl", "wb") as f:
        for line, kind, kept_id in _invalid_utf8_lines(rng):
            f.write(line)
            c.expect(kind)
            if kept_id is not None:
                c.kept_ids[kept_id] += 1

    chunk = _blob_chunk(rng)
    _write_big_record(root / "big_kept.jsonl", "big-kept", KEPT_BIG_BYTES, chunk)
    c.expect(None)
    c.kept_ids["big-kept"] += 1
    _write_big_record(root / "big_rejected.jsonl", "big-rejected", REJECTED_BIG_BYTES, chunk)
    c.expect("record_too_large")

    # Gzip bomb: ~1 MB on disk, 1 GiB of NUL bytes and no newline once decompressed. Its line is
    # too large past 64 MiB; past 200x its size on disk (~200 MiB) it stops inflating, and the
    # rest of the file is one more reject.
    zeros = bytes(MIB)
    with gzip.GzipFile(root / "bomb.jsonl.gz", "wb", compresslevel=9, mtime=0) as f:
        for _ in range(BOMB_BYTES // MIB):
            f.write(zeros)
    c.expect("record_too_large")
    c.expect("decompression_limit")

    # No records at all: an empty file, and one of whitespace-only lines.
    (root / "empty.jsonl").write_bytes(b"")
    (root / "blank.jsonl").write_bytes(b"\n\n   \n\t\n\r\n \x0b\x0c \n" * 50)
    return c
