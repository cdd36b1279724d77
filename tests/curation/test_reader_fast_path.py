"""The reader's msgspec fast path against its reference path (json.loads per line): identical
rows and rejects on the hostile lines, seeded random mutations of valid records, every
compression, split byte ranges and Parquet; and `count_words` equal to `len(text.split())`."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow as pa
import pytest

from curation.io.files import plan_reads
from curation.io.reader import read_task_tables
from curation.stages.base import count_words
from tests.reliability.hostile import HostileCorpus, _hostile_lines, _invalid_utf8_lines

# Everything `str.isspace` calls whitespace, and some look-alikes it does not (ZWSP, NUL, NBSP's
# neighbours), for texts that stress both the reader's and the tally's word counts.
_WHITESPACE = [c for c in map(chr, range(0x110000)) if c.isspace()]
_NOT_WHITESPACE = ["a", "é", "中", "\u200b", "\x00", "\u00a1", "\u3001", "\U0001f600"]


def _read(path, fast: bool, **kw) -> pa.Table:
    tables = [t for task in plan_reads(str(path), "web", **kw) for t in read_task_tables(task, fast=fast)]
    return pa.concat_tables(tables)


def _mutations(rng: random.Random, n: int) -> list[bytes]:
    """Valid records, then one seeded damage each: a flipped or dropped byte, a cut, an odd but
    legal JSON form (escapes, big numbers, duplicate keys, NaN), or nothing at all."""
    odd = [b'{"id": "big-int", "text": "x", "metadata": {"n": 123456789012345678901234567890}}',
           b'{"id": "neg-big", "text": "x", "metadata": {"n": -99999999999999999999}}',
           b'{"id": "huge-float", "text": "x", "metadata": {"f": 1e400}}',
           b'{"id": "inf", "text": "x", "metadata": {"f": Infinity}}',
           b'{"id": "neg-zero", "text": "x", "metadata": {"f": -0.0, "g": -0}}',
           b'{"id": "dup-key", "text": "first", "text": "second"}',
           b'{"id": "escapes", "text": "\\/\\b\\f\\n\\r\\t\\"\\\\ \\u00e9 \\ud83d\\ude00"}',
           b'{"id": "pair-bad", "text": "\\udc00\\ud800"}',
           b'  {"id": "padded", "text": "spaces around"}  \t',
           b'{"id": "trailing-comma", "text": "x",}',
           b'{"id": "single-quote", \'text\': "x"}',
           b'{"id": "two", "text": "a"} {"id": "three", "text": "b"}',
           b'{"id": 7, "text": "int id"}',
           b'{"id": "float-text", "text": 1.5}',
           b'{"id": "exp", "text": "x", "metadata": {"e": 1E5, "f": 2.5e-3}}',
           b'{"id": "ctrl", "text": "tab\there"}',
           b'{"text": "no id at all", "url": "https://x.org/a?b=c#d", "domain": "Books"}',
           b'{"id": "meta-null", "text": "x", "metadata": null}',
           b'{"id": "extra", "text": "x", "lang": "en", "score": 0.5, "tags": ["a", "b"]}']
    out = []
    for i in range(n):
        words = [rng.choice(_WHITESPACE + _NOT_WHITESPACE * 4) for _ in range(rng.randint(0, 40))]
        rec = {"id": f"m{i}", "text": "".join(words), "url": f"https://x.org/{i}",
               "metadata": {"k": rng.random(), "n": rng.randint(-10**20, 10**20)}}
        line = json.dumps(rec, ensure_ascii=rng.random() < 0.5).encode()
        kind = rng.randrange(6)
        if kind == 0 and line:
            at = rng.randrange(len(line))
            line = line[:at] + bytes([rng.randrange(256)]) + line[at + 1:]
        elif kind == 1:
            at = rng.randrange(len(line))
            line = line[:at] + line[at + 1:]
        elif kind == 2:
            line = line[: rng.randrange(len(line))]
        elif kind == 3:
            line = rng.choice(odd)
        out.append(line.replace(b"\n", b" ").replace(b"\r", b" "))
    return out


@pytest.fixture(scope="module")
def hostile_lines() -> list[bytes]:
    c = HostileCorpus(root=None)  # type: ignore[arg-type]
    lines = [line for line, _ in _hostile_lines(c)]
    return lines + [line for line, _, _ in _invalid_utf8_lines(random.Random(0))]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_fast_and_reference_paths_give_identical_rows_and_rejects(tmp_path, hostile_lines, suffix):
    lines = _mutations(random.Random(7), 3000) + hostile_lines
    random.Random(1).shuffle(lines)
    data = b"".join(line.rstrip(b"\n") + b"\n" for line in lines)
    path = tmp_path / f"mixed{suffix}"
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(data, mtime=0))
    elif suffix.endswith(".zst"):
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    fast, slow = _read(path, True), _read(path, False)
    assert fast.num_rows == slow.num_rows == sum(bool(line.strip()) for line in lines)  # blank: no record
    assert fast.equals(slow)
    reasons = set(fast["_reason"].to_pylist())
    assert reasons == {"", "malformed"}  # the mix exercises both outcomes
    assert fast.num_rows - sum(r == "" for r in fast["_reason"].to_pylist()) > 500


def test_fast_path_on_split_byte_ranges(tmp_path):
    lines = _mutations(random.Random(3), 800)
    path = tmp_path / "split.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    whole = _read(path, False)
    split = _read(path, True, chunk_bytes=997)
    assert len(plan_reads(str(path), "web", chunk_bytes=997)) > 20
    assert split.equals(whole)


def test_tables_are_bounded_by_rows_and_text(tmp_path, monkeypatch):
    import curation.io.reader as reader

    monkeypatch.setattr(reader, "TABLE_CHARS", 10_000)
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"id": f"l{i}", "text": "w " * 3000}) + "\n" for i in range(20)))
    tables = list(read_task_tables(plan_reads(str(path), "web")[0]))
    assert [t.num_rows for t in tables] == [2] * 10  # 6,000 chars each: a table passes 10,000 at 2


def test_count_words_is_str_split():
    rng = random.Random(0)
    texts = ["".join(rng.choice(_WHITESPACE + _NOT_WHITESPACE) for _ in range(rng.randint(0, 30)))
             for _ in range(20_000)] + ["", " ", "one", None]
    got = count_words(pa.array(texts, pa.string())).to_pylist()
    assert got[:-1] == [len(t.split()) for t in texts[:-1]]
    assert got[-1] is None


def test_non_finite_metadata_is_a_bad_value_on_every_path(tmp_path):
    lines = [b'{"id": "a", "text": "x", "metadata": {"v": NaN}}',
             b'{"id": "b", "text": "x", "metadata": "{\\"v\\": Infinity}"}',  # a JSON string holding one
             b'{"id": "c", "text": "x", "metadata": "{\\"v\\": 1.5}", "extra": -Infinity}',
             b'{"id": "d", "text": "x", "metadata": {"v": 1e400}}',
             b'{"id": "e", "text": "x", "metadata": {"v": 1e300, "w": [1, {"z": 2}]}}']
    path = tmp_path / "nan.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for fast in (True, False):
        rows = {r["id"]: r for r in _read(path, fast).to_pylist()}
        assert {k: r["_reason"] for k, r in rows.items()} == {"a": "malformed", "b": "malformed", "c": "malformed",
                                                              "d": "malformed", "e": ""}
        assert all("bad_value" in rows[k]["_detail"] for k in "abcd")
        assert json.loads(rows["e"]["metadata"]) == {"v": 1e300, "w": [1, {"z": 2}]}


def test_parquet_fast_and_reference_paths_agree(tmp_path):
    import pyarrow.parquet as pq

    metas = ['{"a": 1}', '{"v": NaN}', '{"v": Infinity}', "[1, 2]", "not json", '{"s": "\\ud800"}', None, "{}",
             '{"b": 2, "a": [1, {"z": 1e300}]}', '{"a": 1, "a": 2}']
    rows = [{"id": f"p{i}" if i % 7 else None, "text": f"words {i} " * (i % 5) if i % 11 else None,
             "url": None if i % 3 else f"https://x.org/{i}", "domain": ["", "books", "Web", "bad domain!", None][i % 5],
             "metadata": metas[i % len(metas)]} for i in range(500)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=128)
    extra = [{**r, "score": [0.5, float("nan"), None][i % 3]} for i, r in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(extra), tmp_path / "b.parquet", row_group_size=128)
    for name in ("a.parquet", "b.parquet"):
        fast, slow = _read(tmp_path / name, True), _read(tmp_path / name, False)
        assert fast.num_rows == 500 and fast.equals(slow)
        reasons = fast["_reason"].to_pylist()
        assert 100 < reasons.count("") < 500


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_a_corrupt_gzip_is_an_oserror_as_before(tmp_path, kind):
    # ISA-L raises its own error types; callers (the service's upload scan: a 422) rely on OSError.
    good = gzip.compress(b'{"text": "hello world"}\n' * 1000)
    data = b"\x1f\x8b\x08 not gzip at all" if kind == "garbage" else good[: len(good) // 2]
    (tmp_path / "bad.jsonl.gz").write_bytes(data)
    with pytest.raises(OSError, match="gzip"):
        _read(tmp_path / "bad.jsonl.gz", True)


# Values that a column-at-a-time read could get wrong: domains Python and Arrow lower-case
# differently (Kelvin sign, dotted I, a trailing newline `$` lets through), empty ids and urls,
# metadata msgspec refuses or reads as a non-object, and texts with odd whitespace.
_DOMAINS = ["Web", "BOOKS", "", None, "bad domain!", "\u212a", "\u0130", "books\n", "x" * 40, "code", "é"]
_IDS = [None, "", "a", "é", " ", "7"]
_URLS = [None, "", "https://x.org/a?b=c#d"]
_METAS = ['{"a": 1}', '{"v": NaN}', '{"v": -Infinity}', "[1, 2]", "not json", '{"s": "\\ud800"}', None, "{}",
          '{"b": 2, "a": [1, {"z": 1e300}]}', '{"a": 1, "a": 2}', '{"n": 123456789012345678901234567890}',
          '{"f": 1e400}', '"a string"', "null", '{"d": ' + "[" * 300 + "]" * 300 + "}", '{"x": "\\u0000é"}',
          '  {"padded": true}  ', '{"a": 1} {"b": 2}', "\ufeff{}"]


def _hostile_parquet_rows(rng: random.Random, n: int) -> list[dict]:
    texts = [None, "", "hello world", " \u3000 two\u00a0words\x1c", "中文 text", "\x00nul", "tab\there"]
    return [{"id": rng.choice(_IDS), "text": rng.choice(texts), "url": rng.choice(_URLS),
             "domain": rng.choice(_DOMAINS), "metadata": rng.choice(_METAS)} for _ in range(n)]


@pytest.mark.parametrize("columns", [("id", "text", "url", "domain", "metadata"), ("text",), ("metadata", "text"),
                                     ("text", "domain", "id")])
def test_parquet_column_path_agrees_with_reference_on_hostile_values(tmp_path, columns):
    import pyarrow.parquet as pq

    rows = _hostile_parquet_rows(random.Random(len(columns)), 2000)
    table = pa.Table.from_pylist([{k: r[k] for k in columns} for r in rows],
                                 schema=pa.schema([(k, pa.string()) for k in columns]))
    pq.write_table(table, tmp_path / "h.parquet", row_group_size=333)
    fast, slow = _read(tmp_path / "h.parquet", True), _read(tmp_path / "h.parquet", False)
    assert fast.num_rows == 2000 and fast.equals(slow)
    if "text" in columns and len(columns) > 1:
        reasons = fast["_reason"].to_pylist()
        assert 100 < reasons.count("") < 1900  # both documents and rejects, interleaved


@pytest.mark.parametrize("kind", ["int_id", "large_text", "extra_column", "struct_metadata"])
def test_parquet_batches_off_the_column_path_agree_too(tmp_path, kind):
    import pyarrow.parquet as pq

    rows = _hostile_parquet_rows(random.Random(5), 500)
    table = pa.Table.from_pylist(rows, schema=pa.schema([(k, pa.string()) for k in rows[0]]))
    if kind == "int_id":
        table = table.set_column(0, "id", pa.array([i if i % 5 else None for i in range(500)], pa.int64()))
    elif kind == "large_text":
        table = table.set_column(1, "text", table["text"].cast(pa.large_string()))
    elif kind == "extra_column":
        table = table.append_column("score", pa.array([0.5, float("nan"), None, 2.0, -1.0] * 100))
    else:
        table = table.set_column(4, "metadata", pa.array([{"k": i} if i % 3 else None for i in range(500)]))
    pq.write_table(table, tmp_path / "o.parquet", row_group_size=128)
    fast, slow = _read(tmp_path / "o.parquet", True), _read(tmp_path / "o.parquet", False)
    assert fast.num_rows == 500 and fast.equals(slow)


def test_parquet_invalid_utf8_fails_as_the_reference_does(tmp_path):
    import pyarrow.parquet as pq

    text = pa.array([b"fine", b"\xff\xfe broken"], pa.binary()).view(pa.string())  # Parquet does not check
    pq.write_table(pa.table({"text": text}), tmp_path / "u.parquet")
    for fast in (True, False):
        with pytest.raises(UnicodeDecodeError):
            _read(tmp_path / "u.parquet", fast)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_tables_are_cut_alike_on_every_path(tmp_path, monkeypatch, suffix):
    import pyarrow.parquet as pq

    import curation.io.reader as reader

    monkeypatch.setattr(reader, "ROWS_PER_TABLE", 7)
    monkeypatch.setattr(reader, "TABLE_CHARS", 60)
    rng = random.Random(2)
    rows = [{"id": f"c{i}", "text": "é" * rng.choice([0, 1, 5, 30, 59, 60, 61, 200])} for i in range(300)]
    rows[17]["text"] = None  # a reject (its raw JSON is its text) between documents
    path = tmp_path / f"cut{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = plan_reads(str(path), "web")[0]
    fast, slow = list(read_task_tables(task, fast=True)), list(read_task_tables(task, fast=False))
    assert [t.num_rows for t in fast] == [t.num_rows for t in slow]
    assert pa.concat_tables(fast).equals(pa.concat_tables(slow))


def test_cut_tables_regroups_any_split_like_the_row_rule():
    from curation.io.batches import cut_tables
    from curation.io.records import READ_SCHEMA

    rng = random.Random(4)
    for _ in range(200):
        texts = ["ü" * rng.choice([0, 1, 3, 9, 10, 25]) for _ in range(rng.randint(0, 60))]
        whole = pa.table({f.name: pa.array(texts if f.name == "text" else [None] * len(texts), f.type)
                          for f in READ_SCHEMA}, schema=READ_SCHEMA)  # fmt: skip
        bounds = sorted({0, len(texts), *(rng.randint(0, len(texts)) for _ in range(rng.randint(0, 6)))})
        pieces = [whole.slice(a, b - a) for a, b in zip(bounds, bounds[1:])]
        rows, chars = rng.randint(1, 12), rng.randint(1, 40)
        expected, n, size = [], 0, 0  # read_task_tables' rule, a row at a time
        for t in texts:
            n, size = n + 1, size + len(t)
            if n >= rows or size >= chars:
                expected.append(n)
                n = size = 0
        if n or not expected:
            expected.append(n)
        got = list(cut_tables(pieces, rows, chars))
        assert [t.num_rows for t in got] == expected
        assert pa.concat_tables(got).equals(whole)


def test_lines_longer_than_a_read(tmp_path):
    # Lines joined from several 1 MB reads, and one over the record limit, reported and skipped.
    lines = [json.dumps({"id": "a", "text": "w " * 700_000}), json.dumps({"id": "b", "text": "short"}),
             json.dumps({"id": "c", "text": "x" * 2_500_000}), '{"id": "d", "text": "' + "y" * 1_200_000,
             json.dumps({"id": "e", "text": "last"})]
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(lines))
    task = plan_reads(str(path), "web")[0]
    fast = pa.concat_tables(read_task_tables(task, max_record_bytes=2_000_000, fast=True))
    slow = pa.concat_tables(read_task_tables(task, max_record_bytes=2_000_000, fast=False))
    assert fast.equals(slow)
    got = {r["id"]: (r["_reason"], json.loads(r["_detail"]).get("error", "")[:16]) for r in fast.to_pylist()}
    at_c = len(lines[0]) + len(lines[1]) + 2
    at_d = at_c + len(lines[2]) + 1
    assert got == {"a": ("", ""), "b": ("", ""), f"long.jsonl@{at_c}": ("malformed", "record_too_large"),
                   f"long.jsonl@{at_d}": ("malformed", "bad_json: Unterm"), "e": ("", "")}
