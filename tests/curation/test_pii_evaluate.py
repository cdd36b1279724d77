"""`curation.pii.evaluate`: coverage recall, overlap precision, ignore regions, words kept.

Hand-made spans with exact expected numbers; no Presidio, no spaCy.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from curation.pii.evaluate import ALL, Span, Tally, as_span, from_presidio, score_document

ROOT = Path(__file__).resolve().parents[2]
TEXT = "Call Jane Doe at +1 415 555 0132 today."
#       0    5    10   15   20   25   30   35
JANE = Span("PERSON", 5, 13)
PHONE = Span("PHONE", 17, 32)


def test_imports_stay_light():
    """Scoring must not pull in Presidio or spaCy (seconds of import, hundreds of MB)."""
    code = ("import sys, curation.pii.evaluate; "
            "sys.exit(any(m in sys.modules for m in ('presidio_analyzer', 'spacy', 'faker')))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_recall_by_coverage_of_any_type():
    # "Jane Doe": 7 non-space chars; "Jane" covers 4/7 < 0.8 -> missed; "Jane Do" covers 6/7 -> found.
    r = score_document(TEXT, [JANE], [Span("PERSON", 5, 9)])
    assert r.entities[0].coverage == pytest.approx(4 / 7) and not r.entities[0].found
    r = score_document(TEXT, [JANE], [Span("LOCATION", 5, 12)])
    assert r.entities[0].found and not r.entities[0].found_strict
    # The phone without "+1": 10 of its 12 non-space characters = 0.83 -> found; the gap inside is spaces only.
    r = score_document(TEXT, [PHONE], [Span("PHONE", 20, 32)])
    assert r.entities[0].coverage == pytest.approx(10 / 12) and r.entities[0].found_strict
    # Two predictions of different types together cover it.
    r = score_document(TEXT, [PHONE], [Span("PHONE", 17, 23), Span("CREDIT_CARD", 23, 32)])
    assert r.entities[0].found and not r.entities[0].found_strict


def test_precision_ignore_regions_and_nesting():
    ignore = [(33, 38)]  # "today"
    preds = [Span("PERSON", 0, 4),  # "Call": false positive
             Span("PHONE", 17, 32),  # correct
             Span("EMAIL", 20, 26),  # nested in the phone: not counted
             Span("LOCATION", 33, 38)]  # in the ignore region: not counted
    r = score_document(TEXT, [JANE, PHONE], preds, ignore)
    assert [p.type for p in r.correct] == ["PHONE"]
    assert [p.type for p in r.false_positives] == ["PERSON"]
    assert [p.type for p in r.ignored] == ["LOCATION"]
    # Words outside gold and ignore: Call, at, (today. is in the ignore region) -> 2; "Call" lost.
    assert r.other_words == 2 and [(s, e) for s, e, _ in r.other_words_lost] == [(0, 4)]


def test_equal_spans_count_once():
    r = score_document(TEXT, [JANE], [Span("PERSON", 5, 13), Span("LOCATION", 5, 13)])
    assert [p.type for p in r.correct] == ["PERSON"] and not r.false_positives


def test_words_kept_counts_words_touched_by_any_prediction():
    text = "alpha beta gamma delta"
    # gold "beta"; a prediction spilling from beta into "gam" touches gamma; nested spans also touch.
    r = score_document(text, [Span("PERSON", 6, 10)], [Span("PERSON", 6, 13), Span("IP", 19, 20)])
    assert r.other_words == 3
    assert [(s, e, t) for s, e, t in r.other_words_lost] == [(11, 16, ("PERSON",)), (17, 22, ("IP",))]


def test_tally_metrics_exact():
    t = Tally()
    t.add_document(TEXT, [JANE, PHONE], [Span("PERSON", 5, 13), Span("PERSON", 0, 4)])
    t.add_document("Mail bob@example.com now", [Span("EMAIL", 5, 20)], [Span("EMAIL", 5, 20)])
    t.add_document("nothing to see here", [], [Span("PHONE", 0, 7)])
    m = t.metrics()
    assert m["PERSON"] == {"gold": 1, "recall": 1.0, "recall_strict": 1.0, "predicted": 2, "precision": 0.5,
                           "false_positives": 1, "words_lost": 1}
    assert m["PHONE"]["gold"] == 1 and m["PHONE"]["recall"] == 0.0
    assert m["PHONE"]["predicted"] == 1 and m["PHONE"]["precision"] == 0.0
    assert m["EMAIL"]["recall"] == 1.0 and m["EMAIL"]["precision"] == 1.0
    assert m[ALL]["gold"] == 3 and m[ALL]["recall"] == pytest.approx(2 / 3)
    assert m[ALL]["predicted"] == 4 and m[ALL]["precision"] == pytest.approx(2 / 4)
    # other words: doc1 Call, at, today. (3; Call lost); doc2 Mail, now (2); doc3 4 words ("nothing" lost).
    assert t.other_words == 9 and t.other_words_lost == 2
    assert t.words_kept == pytest.approx(7 / 9)
    assert t.documents == 3


def test_rates_are_none_without_denominator():
    t = Tally()
    t.add_document("plain words only", [], [])
    assert t.metrics()[ALL] == {"gold": 0, "recall": None, "recall_strict": None, "predicted": 0,
                                "precision": None, "false_positives": 0, "words_lost": 0}
    assert t.words_kept == 1.0 and Tally().words_kept is None


def test_as_span_and_from_presidio():
    @dataclass
    class Found:  # the engine's result type, by shape
        type: str
        start: int
        end: int
        score: float

    @dataclass
    class Result:  # Presidio's RecognizerResult, by shape
        entity_type: str
        start: int
        end: int
        score: float

    assert as_span(Found("EMAIL", 1, 4, 1.0)) == Span("EMAIL", 1, 4)
    assert as_span({"type": "IP", "start": 2, "end": 9, "detail": "v6"}) == Span("IP", 2, 9, "v6")
    assert as_span(("SSN", 0, 11)) == Span("SSN", 0, 11)
    got = from_presidio([Result("EMAIL_ADDRESS", 0, 5, 1.0), Result("DATE_TIME", 6, 9, 0.8),
                         Result("US_SSN", 10, 21, 0.5), Result("LOCATION", 22, 30, 0.85)])
    assert got == [Span("EMAIL", 0, 5), Span("SSN", 10, 21), Span("LOCATION", 22, 30)]


def test_whitespace_only_gold_needs_overlap():
    r = score_document("a   b", [Span("PERSON", 1, 4)], [])
    assert not r.entities[0].found
    r = score_document("a   b", [Span("PERSON", 1, 4)], [Span("PERSON", 2, 3)])
    assert r.entities[0].found


# -- the evaluation sets (benchmarks/pii_eval_set.py): formats the scorer relies on --------------

sys.path.insert(0, str(ROOT / "benchmarks"))
import pii_eval_set  # noqa: E402


def test_parse_tagged_nests_a_city_in_an_ignored_address():
    text, ents, ignore = pii_eval_set.parse_tagged(
        "At <address>30 Memorial Drive, <city>Avon</city> MA 2322</address>, ask <name>Ron</name>.",
        pii_eval_set.NEMO_TAGS)
    assert text == "At 30 Memorial Drive, Avon MA 2322, ask Ron."
    assert [(e["type"], text[e["start"]:e["end"]]) for e in ents] == [("LOCATION", "Avon"), ("PERSON", "Ron")]
    assert [text[s:e] for s, e in ignore] == ["30 Memorial Drive, Avon MA 2322"]


def test_nemo_lines_parse_and_validate():
    docs = pii_eval_set.build_nemo()
    assert len(docs) >= 70
    for d in docs:
        pii_eval_set.validate(d)
    types = {e["type"] for d in docs for e in d["entities"]}
    assert types == {"PERSON", "EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IP", "LOCATION"}


def test_person_name_heuristic_of_the_real_set():
    assert pii_eval_set.is_person_name("Jörg Hoh") and pii_eval_set.is_person_name("Ian A. Murdock")
    assert pii_eval_set.is_person_name("Guido van Rossum")
    for org in ("Free Software Foundation", "IPython Development Team", "Debian Janitor", "Google LLC",
                "DrivenData", "Laszlo Boszormenyi (GCS)"):
        assert not pii_eval_set.is_person_name(org), org


def test_checksums_and_case_folding_keep_offsets():
    assert pii_eval_set.luhn_ok("4111111111111111") and not pii_eval_set.luhn_ok("4111111111111112")
    assert pii_eval_set.iban_ok("GB82 WEST 1234 5698 7654 32") and not pii_eval_set.iban_ok("GB82WEST12345698765433")
    assert pii_eval_set.lower_keep_offsets("İzmir ÖZ") == "İzmir öz"  # 'İ'.lower() is two code points


def test_faker_set_is_valid_and_deterministic():
    pytest.importorskip("faker")
    a, b = pii_eval_set.build_faker(40, seed=3), pii_eval_set.build_faker(40, seed=3)
    assert a == b and a != pii_eval_set.build_faker(40, seed=4)
    for d in a:
        pii_eval_set.validate(d)
        for e in d["entities"]:
            if e["type"] == "CREDIT_CARD":
                assert pii_eval_set.luhn_ok(re.sub(r"\D", "", d["text"][e["start"]:e["end"]]))
