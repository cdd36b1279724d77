import io
import json
import random

import pytest

from curation.io.records import RecordError, iter_lines, parse_record


def lines_in_ranges(data: bytes, cuts: list[int], max_line: int = 1 << 20):
    out = []
    bounds = [0, *cuts, len(data)]
    for start, end in zip(bounds, bounds[1:]):
        stream = io.BytesIO(data)
        stream.seek(max(0, start - 1))
        out += list(iter_lines(stream, start=start, end=end, max_line_bytes=max_line, block_bytes=7))
    return out


def test_byte_ranges_yield_every_line_exactly_once():
    rng = random.Random(0)
    lines = [("x" * rng.randint(0, 30)).encode() for _ in range(200)]
    data = b"\n".join(lines) + b"\n"
    whole = lines_in_ranges(data, [])
    assert [l for _, l in whole] == [l for l in lines if l.strip()]
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), 5))
        assert lines_in_ranges(data, cuts) == whole


def test_last_line_without_newline_and_blank_lines():
    data = b'{"a":1}\n\n   \n{"b":2}'
    assert [l for _, l in lines_in_ranges(data, [])] == [b'{"a":1}', b'{"b":2}']
    assert [o for o, _ in lines_in_ranges(data, [])] == [0, 13]


def test_oversized_lines_are_reported_once_and_skipped():
    data = b"short\n" + b"y" * 100 + b"\nafter\n" + b"z" * 50
    got = lines_in_ranges(data, [], max_line=20)
    assert got == [(0, b"short"), (6, None), (107, b"after"), (113, None)]
    for cut in range(1, len(data)):  # any split of the ranges gives the same records
        assert lines_in_ranges(data, [cut], max_line=20) == got


def doc(**kw):
    return parse_record(kw, default_id="f@0", default_domain="web", source="f")


def test_parse_record_defaults_and_extra_fields_kept():
    d = doc(text="hello  big world", lang_hint="en")
    assert d["id"] == "f@0" and d["domain"] == "web" and d["url"] is None and d["n_tokens"] == 3
    assert json.loads(d["metadata"]) == {"lang_hint": "en"}
    d = doc(id=17, text="x", domain="Code", url="https://a", metadata={"k": 1})
    assert d["id"] == "17" and d["domain"] == "code" and json.loads(d["metadata"]) == {"k": 1}
    # A JSON-object string (this pipeline's own Parquet output read back as input) is the object.
    assert json.loads(doc(text="x", metadata='{"k": 2}')["metadata"]) == {"k": 2}


@pytest.mark.parametrize("rec,err", [
    ({"id": "a"}, "missing_text"),
    ({"text": 5}, "wrong_type: text"),
    ({"text": "t", "id": 1.5}, "wrong_type: id"),
    ({"text": "t", "id": True}, "wrong_type: id"),
    ({"text": "t", "url": 3}, "wrong_type: url"),
    ({"text": "t", "metadata": [1]}, "wrong_type: metadata"),
    ({"text": "t", "metadata": "[1]"}, "wrong_type: metadata"),
    ({"text": "t", "metadata": "{not json"}, "wrong_type: metadata"),
    ({"text": "t", "domain": "not a domain!"}, "bad_domain"),
    ({"text": "\ud800"}, "bad_value"),
])
def test_parse_record_rejects_with_reason(rec, err):
    with pytest.raises(RecordError, match=err):
        doc(**rec)


def test_non_object_record():
    with pytest.raises(RecordError, match="not_an_object"):
        parse_record([1, 2], default_id="x", default_domain="web", source="f")


def naive_lines(data: bytes, start: int, end: int, max_line: int) -> list:
    """What iter_lines means, spelled out: every line that starts in [start, end), blank lines
    (ASCII whitespace only) left out, a line over `max_line` bytes as None."""
    out, at = [], 0
    for line in data.split(b"\n"):
        if start <= at and (end < 0 or at < end):
            if len(line) > max_line:
                out.append((at, None))
            elif line.strip():
                out.append((at, line))
        at += len(line) + 1
    return out


def test_iter_lines_matches_a_naive_split_for_any_read_size():
    # Reads cut lines anywhere: lines joined across many reads, oversized lines reported once
    # and skipped, blank and whitespace-only lines, a last line without a newline, CRs.
    rng = random.Random(1)
    pieces = [b"", b" ", b"\t \x0b\x0c", b"\r", b"{}", b"x" * 3, b"y" * 40, b"z" * 200]
    for _ in range(1500):
        data = b"\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        data += rng.choice([b"", b"\n", b"\n\n", b"tail"])
        max_line = rng.choice([1, 5, 50, 1000])
        cuts = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1))) if len(data) > 1 else []
        bounds = [0, *cuts, len(data)]
        for start, end in zip(bounds, bounds[1:]):
            end = -1 if end == len(data) and rng.random() < 0.5 else end
            stream = io.BytesIO(data)
            stream.seek(max(0, start - 1))
            got = list(iter_lines(stream, start=start, end=end, max_line_bytes=max_line,
                                  block_bytes=rng.choice([1, 2, 7, 64, 1 << 20])))
            assert got == naive_lines(data, start, end, max_line), (data, start, end, max_line)
