"""The offline demo corpus: deterministic, well-formed, and its truth.json tells the truth."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from curation.dedup.similarity import text_jaccard
from curation.demo_corpus import SHARED_LINE_CHARS, build_demo_corpus, build_heldout_texts, build_reference_texts
from curation.demo_corpus.injections import BOILERPLATE, LANGUAGE_DOCS
from curation.demo_corpus.sources import MAX_FILE_TEXT_BYTES, is_heldout
from curation.urls import canonicalize_url

SMALL = {"seed": 7, "min_bytes": 0, "max_docs_per_source": 15}
RECORD_KEYS = {"id", "text", "url", "domain", "metadata"}
FILE_NAME = re.compile(r"^(web|code|books|wiki|math)-\d{5}\.jsonl\.gz$")


def load(out: Path) -> tuple[dict[str, dict], dict[str, list[dict]], dict]:
    """(docs by id, records by file name, truth)."""
    by_file = {}
    for path in sorted((out / "corpus").iterdir()):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            by_file[path.name] = [json.loads(line) for line in f]
    docs = {r["id"]: r for records in by_file.values() for r in records}
    return docs, by_file, json.loads((out / "truth.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    summary = build_demo_corpus(out, **SMALL)
    docs, by_file, truth = load(out)
    return {"out": out, "summary": summary, "docs": docs, "by_file": by_file, "truth": truth}


def test_two_builds_are_byte_identical(small, tmp_path):
    again = build_demo_corpus(tmp_path / "again", **SMALL)
    first = sorted(p.relative_to(small["out"]) for p in small["out"].rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (small["out"] / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in small["summary"].items() if k != "seconds"}
    other = build_demo_corpus(tmp_path / "other", **{**SMALL, "seed": 8})
    assert (tmp_path / "other" / "truth.json").read_bytes() != (small["out"] / "truth.json").read_bytes()
    assert other["sources"] == small["summary"]["sources"]  # the seed moves injections, not sources


def test_every_line_has_the_schema(small):
    assert small["by_file"], "no corpus files written"
    for name, records in small["by_file"].items():
        match = FILE_NAME.match(name)
        assert match, name
        assert sum(len(r["text"].encode()) for r in records) <= MAX_FILE_TEXT_BYTES
        for r in records:
            assert set(r) == RECORD_KEYS
            assert r["domain"] == match.group(1)
            assert isinstance(r["id"], str) and r["id"].startswith(r["domain"] + "-")
            assert isinstance(r["text"], str) and r["text"].strip()
            assert r["url"] is None or r["url"].lower().startswith(("http://", "https://"))
            meta = r["metadata"]
            assert {"source", "path", "license", "topic"} <= set(meta)
            assert all(isinstance(meta[k], str) for k in ("source", "path", "license", "topic"))


def test_ids_are_unique_and_the_summary_counts_them(small):
    n_records = sum(len(r) for r in small["by_file"].values())
    assert len(small["docs"]) == n_records
    summary = small["summary"]
    assert summary["total_documents"] == n_records
    for domain, files in summary["files"].items():
        assert sum(len(small["by_file"][f]) for f in files) == summary["documents"][domain]
        assert sum(len(r["text"].encode()) for f in files for r in small["by_file"][f]) == summary["bytes"][domain]
    assert {"web", "code", "books"} <= set(summary["documents"])


def test_planted_spans_occur_in_the_texts(small):
    docs, truth = small["docs"], small["truth"]
    assert {s["sentence"] for s in truth["repeated_sentences"]} == set(BOILERPLATE)
    for entry in truth["repeated_sentences"]:
        assert len({occ["doc_id"] for occ in entry["occurrences"]}) >= 2
        for occ in entry["occurrences"]:
            assert docs[occ["doc_id"]]["text"][occ["start"]:occ["end"]] == entry["sentence"]
            assert docs[occ["doc_id"]]["domain"] in ("web", "books")
    for item in truth["pii"]:
        assert docs[item["doc_id"]]["text"][item["start"]:item["end"]] == item["value"]
        assert docs[item["doc_id"]]["metadata"]["injection"]["kind"] == "planted"


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    compact = iban.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def test_pii_values_are_well_formed(small):
    items = small["truth"]["pii"]
    assert {i["type"] for i in items} == {"EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "IP_ADDRESS",
                                          "IBAN_CODE", "PERSON"}
    for item in items:
        v = item["value"]
        if item["type"] == "CREDIT_CARD":
            assert luhn_ok(v) and len(re.sub(r"\D", "", v)) in (15, 16), v
        elif item["type"] == "IBAN_CODE":
            assert iban_ok(v), v
        elif item["type"] == "US_SSN":
            area, group, serial = v.split("-")
            assert len(area) == 3 and area not in ("000", "666") and area < "900"
            assert group != "00" and serial != "0000" and len(group) == 2 and len(serial) == 4
        elif item["type"] == "IP_ADDRESS":
            octets = [int(o) for o in v.split(".")]
            assert len(octets) == 4 and all(0 <= o <= 255 for o in octets)
        elif item["type"] == "EMAIL_ADDRESS":
            assert re.fullmatch(r"[a-z0-9._]+@[a-z0-9.-]+\.[a-z]{2,}", v), v
        elif item["type"] == "PHONE_NUMBER":
            assert len(re.sub(r"\D", "", v)) >= 10, v
        else:
            assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", v), v


def test_phone_numbers_are_valid_numbers(small):
    phonenumbers = pytest.importorskip("phonenumbers")
    phones = [i["value"] for i in small["truth"]["pii"] if i["type"] == "PHONE_NUMBER"]
    assert phones
    for v in phones:
        assert phonenumbers.is_valid_number(phonenumbers.parse(v, "US")), v


def test_near_duplicates_are_copies_at_their_edit_level(small):
    docs, groups = small["docs"], small["truth"]["near_duplicates"]
    levels = {c["level"] for g in groups for c in g["copies"]}
    assert levels == {"exact", "light", "heavy"}
    for g in groups:
        original = docs[g["original"]]
        for c in g["copies"]:
            copy = docs[c["id"]]
            assert copy["domain"] == original["domain"] and copy["id"] != original["id"]
            assert copy["metadata"]["injection"] == {"kind": "near_duplicate", "of": original["id"], "level": c["level"]}
            sim = text_jaccard(original["text"], copy["text"])
            assert sim == pytest.approx(c["word_5gram_jaccard"], abs=1e-3)
            if c["level"] == "exact":
                assert copy["text"] == original["text"]
            elif c["level"] == "light":
                assert copy["text"] != original["text"] and 0.01 <= c["edit_fraction"] <= 0.06
            else:
                assert 0.19 <= c["edit_fraction"] <= 0.31 and sim < 0.9
    light = [c["word_5gram_jaccard"] for g in groups for c in g["copies"] if c["level"] == "light"]
    heavy = [c["word_5gram_jaccard"] for g in groups for c in g["copies"] if c["level"] == "heavy"]
    assert sum(light) / len(light) > sum(heavy) / len(heavy)


def test_not_duplicate_pairs_share_a_topic_but_not_text(small):
    docs, pairs = small["docs"], small["truth"]["not_duplicates"]
    assert pairs
    for p in pairs:
        a, b = docs[p["a"]], docs[p["b"]]
        assert a["domain"] == b["domain"] == p["domain"]
        assert a["metadata"]["topic"] == b["metadata"]["topic"] == p["topic"]
        assert text_jaccard(a["text"], b["text"]) < 0.1


TRACKING = re.compile(r"^(utm_[a-z]+|fbclid|gclid)$")
DEFAULT_PORT = {"http": "80", "https": "443"}


def split_netloc(netloc: str) -> tuple[str, str]:
    host, _, port = netloc.partition(":")
    return host, port


def test_url_variants_differ_only_in_the_documented_ways(small):
    docs, groups = small["docs"], small["truth"]["url_variants"]
    assert groups
    seen_kinds = set()
    for g in groups:
        original = docs[g["original_id"]]
        assert original["url"] == g["original_url"] and g["canonical_url"] == canonicalize_url(g["original_url"])
        o = urlsplit(g["original_url"])
        for v in g["variants"]:
            doc = docs[v["id"]]
            assert doc["url"] == v["url"] != g["original_url"]
            assert doc["text"] == original["text"]
            kinds = set(v["kinds"])
            seen_kinds |= kinds
            u = urlsplit(v["url"])
            o_host, _ = split_netloc(o.netloc)
            u_host, u_port = split_netloc(u.netloc)
            assert ("scheme" in kinds) == (u.scheme != o.scheme) and u.scheme in DEFAULT_PORT
            assert u_host.lower() == o_host and ("host_case" in kinds) == (u_host != o_host)
            assert u_port == (DEFAULT_PORT[u.scheme] if "default_port" in kinds else "")
            assert u.path.rstrip("/") == o.path.rstrip("/") and ("trailing_slash" in kinds) == (u.path != o.path)
            assert bool(u.fragment) == ("fragment" in kinds)
            params = parse_qsl(u.query, keep_blank_values=True)
            assert [p for p in params if not TRACKING.match(p[0])] == parse_qsl(o.query, keep_blank_values=True)
            assert ("tracking" in kinds) == any(TRACKING.match(k) for k, _ in params)
            assert canonicalize_url(v["url"]) == g["canonical_url"]
    assert seen_kinds  # every group carries at least one documented kind
    # Outside these groups no two documents share a canonical URL.
    grouped = {i for g in groups for i in [g["original_id"]] + [v["id"] for v in g["variants"]]}
    canon = [canonicalize_url(d["url"]) for i, d in docs.items() if d["url"] and i not in grouped]
    assert len(canon) == len(set(canon))


def test_foreign_language_docs(small):
    langs = small["truth"]["languages"]
    assert len(langs) == len(LANGUAGE_DOCS) >= 30
    assert {x["lang"] for x in langs} == {"de", "fr", "es", "it", "pt", "nl", "ru", "zh", "ja"}
    for x in langs:
        assert small["docs"][x["id"]]["domain"] == "web"


def test_exact_duplicate_groups_are_identical_texts(small):
    docs = small["docs"]
    for group in small["truth"]["exact_duplicate_groups"]:
        assert len({docs[i]["text"] for i in group}) == 1
    grouped = {i for group in small["truth"]["exact_duplicate_groups"] for i in group}
    exact_copies = [c["id"] for g in small["truth"]["near_duplicates"] for c in g["copies"] if c["level"] == "exact"]
    assert set(exact_copies) <= grouped


def test_top_up_reads_more_real_text_when_short(tmp_path):
    first = build_demo_corpus(tmp_path / "a", seed=1, min_bytes=0, max_docs_per_source=3)
    primary = sum(s["bytes"] for s in first["sources"].values())
    assert not any(s["topup"] for s in first["sources"].values())
    topped = build_demo_corpus(tmp_path / "b", seed=1, min_bytes=primary + 1, max_docs_per_source=3)
    extra = {name: s for name, s in topped["sources"].items() if s["topup"]}
    assert extra and sum(s["documents"] for s in extra.values()) > 0
    assert sum(s["bytes"] for s in topped["sources"].values()) >= primary + 1


@pytest.mark.slow
def test_full_build_reaches_20_mb_in_under_a_minute(tmp_path):
    summary = build_demo_corpus(tmp_path, seed=0)
    assert summary["total_bytes"] >= 20_000_000
    assert summary["seconds"] < 60
    assert {"web", "code", "books"} <= set(summary["documents"])
    n = summary["total_documents"]
    new_docs = summary["injections"]["near_duplicate_copies"] + summary["injections"]["url_variant_copies"] \
        + summary["injections"]["language_docs"]
    assert 0.02 <= new_docs / n <= 0.06
    # Several files per domain (at most ~4 MB of text each): Ray reads them in parallel.
    assert sum(len(files) for files in summary["files"].values()) > len(summary["files"])


def _long_lines(text: str) -> set[str]:
    return {n for line in text.split("\n") if len(n := " ".join(line.split()).casefold()) >= SHARED_LINE_CHARS}


def test_held_out_text_is_disjoint_from_the_reference_and_the_corpus(small, tmp_path):
    shutil.copytree(small["out"] / "corpus", tmp_path / "corpus")
    reference = build_reference_texts(tmp_path, max_bytes_per_domain=300_000, seed=SMALL["seed"])
    held = build_heldout_texts(tmp_path, seed=SMALL["seed"], max_docs_per_domain=20)
    sha = lambda text: hashlib.sha256(text.encode()).digest()  # noqa: E731
    corpus_texts = {sha(d["text"]) for d in small["docs"].values()}
    corpus_lines = set().union(*(_long_lines(d["text"]) for d in small["docs"].values()))
    reference_texts = {sha(json.loads(line)["text"]) for domain in reference
                       for line in (tmp_path / "reference" / f"{domain}.jsonl").read_text().splitlines()}
    assert {"web", "code", "books"} <= {d for d, s in held.items() if s["documents"] > 0}
    ids = []
    for domain, summary in held.items():
        records = [json.loads(line) for line in (tmp_path / "holdout" / f"{domain}.jsonl").read_text().splitlines()]
        assert len(records) == summary["documents"] <= 20
        assert summary["in_reference"] == 0 and not summary["corpus_reads_source"]
        for r in records:
            assert set(r) == RECORD_KEYS and r["domain"] == domain
            assert sha(r["text"]) not in reference_texts and sha(r["text"]) not in corpus_texts
            assert _long_lines(r["text"]).isdisjoint(corpus_lines), r["id"]
            if domain in ("web", "code"):  # shared with the reference: only the held-out side of the split
                assert is_heldout(SMALL["seed"], r["text"])
            ids.append(r["id"])
    assert len(ids) == len(set(ids))
    for domain in ("web", "code"):  # and the reference keeps only the other side
        for line in (tmp_path / "reference" / f"{domain}.jsonl").read_text().splitlines():
            assert not is_heldout(SMALL["seed"], json.loads(line)["text"])
