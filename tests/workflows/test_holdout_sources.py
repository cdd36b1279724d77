"""Held-out sets from a separate source, and the "novel" measure (held-out text without the lines
the raw corpus repeats): split_holdout on a hand-made corpus, with the real read and clean runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from curation.config import PipelineConfig
from curation.dedup.similarity import normalise_line
from curation.pipeline import Pipeline
from tests.ablation_data import document
from tests.helpers import write_jsonl
from workflows.ablation.config import HoldoutSpec
from workflows.ablation.holdout import (
    HELD_OUT,
    NEAR_HELD_OUT,
    corpus_line_counts,
    draw_candidates,
    drop_frequent_lines,
    holdout_rank,
    line_key,
    source_doc_id,
    split_holdout,
)

SEED = 5
PER_DOMAIN = 8
BOILERPLATE = "Copyright 2020 ACME Inc. All rights reserved."
TWICE = "This line is shared by exactly two corpus documents."


def run(inputs: list, dst: Path | str, stages: list) -> str:
    config = PipelineConfig(inputs=inputs, output=str(dst), seed=SEED, default_domain="web", stages=stages)
    return Pipeline(config, overwrite=True).run().data_dir


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- no Ray

def test_normalised_lines_and_what_the_novel_set_drops():
    assert normalise_line("  Copyright\t2020   ACME  Inc. ") == "copyright 2020 acme inc."
    assert normalise_line("STRASSE") == normalise_line("straße")  # casefold, not lower
    counts = {line_key(normalise_line(BOILERPLATE)): 3, line_key(normalise_line(TWICE)): 2}
    text = f"Keep me.\n  {BOILERPLATE.upper()}  \n\n{TWICE}\nAnd me."
    left, lines, nbytes = drop_frequent_lines(text, counts, max_count=2)
    assert left == f"Keep me.\n\n{TWICE}\nAnd me."  # 3 > 2 goes, 2 stays, the blank separator stays
    assert (lines, nbytes) == (1, len(f"  {BOILERPLATE.upper()}  ".encode()) + 1)
    assert drop_frequent_lines(f"{BOILERPLATE}\n\n", counts, 2) == ("", 1, len(BOILERPLATE) + 2)  # nothing left
    assert drop_frequent_lines(f"Keep me.\n{BOILERPLATE}", counts, 2) == ("Keep me.", 1, len(BOILERPLATE) + 1)
    assert drop_frequent_lines(text, counts, max_count=3)[1:] == (0, 0)


def test_corpus_ids_with_the_source_prefix_are_refused(tmp_path):
    read = tmp_path / "read"
    read.mkdir()
    pq.write_table(pa.table({"id": [source_doc_id("web", "1")], "domain": ["web"]}), read / "part.parquet")
    with pytest.raises(ValueError, match="prefix of held-out source ids"):
        split_holdout(str(read), "", tmp_path, "", per_domain=1, oversample=1.0, threshold=0.5, seed=0,
                      skip_domains=set(), run_clean=None, sources={"web": "x.jsonl"}, run_read=lambda *a: "")


# ----------------------------------------------------------------------------- with Ray

# Four real pipeline runs (corpus read, two source reads, clean) behind one split: ~20 s alone on
# 2 CPUs, minutes on a shared box.
slow_split = pytest.mark.slow

@pytest.fixture(scope="module")
def split(ray_local, tmp_path_factory):
    """web: held out from the corpus (as before). books: from a separate source, with a corpus
    near-copy of one source document and boilerplate the corpus repeats. math: a source only."""
    tmp = tmp_path_factory.mktemp("holdout_sources")
    rng = random.Random(SEED)
    corpus = [{"id": f"web-{i:03}", "domain": "web", "text": document(rng, "web")} for i in range(30)]
    corpus += [{"id": f"books-{i:03}", "domain": "books", "text": document(rng, "books")} for i in range(30)]
    for k in range(3):  # the boilerplate 3 times (case and spacing vary), TWICE twice
        corpus[k]["text"] += "\n" + (BOILERPLATE if k else f"  {BOILERPLATE.lower()}   ")
    for k in (3, 31):
        corpus[k]["text"] += "\n" + TWICE
    source = [{"id": f"s-{i:03}", "text": document(rng, "books")} for i in range(PER_DOMAIN)]
    source[0]["text"] += f"\n{BOILERPLATE}\n\n{TWICE}"
    words = source[1]["text"].split(" ")
    words[3] = "lantern"  # one word changed: a near copy
    corpus.append({"id": "books-nearcopy", "domain": "books", "text": " ".join(words)})
    math = [{"id": f"m-{i:03}", "text": "Let x be a real number. " + document(rng, "books")} for i in range(4)]
    paths = {"corpus": write_jsonl(tmp / "corpus.jsonl", corpus),
             "books": write_jsonl(tmp / "books.jsonl", [*source, "{not json"]),
             "math": write_jsonl(tmp / "math.jsonl", math)}
    read_dir = run([str(paths["corpus"])], tmp / "read", [])
    out = tmp / "holdout"
    result = split_holdout(
        read_dir, str(out / "clean"), out, str(tmp / "pool"), per_domain=PER_DOMAIN, oversample=1.0, threshold=0.5,
        seed=SEED, skip_domains=set(), run_clean=lambda src, dst: run([src], dst, ["exact_dedup"]),
        sources={"books": str(paths["books"]), "math": str(paths["math"])},
        run_read=lambda src, domain, dst: run([{"path": src, "domain": domain}], dst, []))
    return {"result": result, "corpus": corpus, "source": source, "math": math, "out": out, "tmp": tmp}


@slow_split
def test_a_source_domain_is_held_out_from_the_source_only(split):
    r = split["result"]
    books = jsonl(Path(r.eval_files["books"]))
    # Every valid source line (the malformed one is rejected by the read stage), none of the corpus.
    assert sorted(d["id"] for d in books) == sorted(source_doc_id("books", d["id"]) for d in split["source"])
    assert {d["text"] for d in books} == {d["text"] for d in split["source"]}
    assert {d["domain"] for d in books} == {"books"}
    # The corpus lacks math: it is evaluated all the same, and said so.
    assert [d["id"] for d in jsonl(Path(r.eval_files["math"]))] == sorted(
        (source_doc_id("math", d["id"]) for d in split["math"]), key=lambda i: _rank(i))
    assert r.source_domains_not_in_corpus == ["math"]
    assert r.sources == {"books": str(split["tmp"] / "books.jsonl"), "math": str(split["tmp"] / "math.jsonl"),
                         "web": "corpus"}
    # web: unchanged behaviour, the first PER_DOMAIN of the seeded draw over the corpus.
    web_ids = [d["id"] for d in split["corpus"] if d["domain"] == "web"]
    drawn = draw_candidates(web_ids, ["web"] * len(web_ids), PER_DOMAIN, SEED, set())["web"]
    assert [d["id"] for d in jsonl(Path(r.eval_files["web"]))] == drawn
    assert r.held_out_docs == 2 * PER_DOMAIN + len(split["math"])


def _rank(doc_id: str) -> int:
    return holdout_rank(SEED, doc_id)


@slow_split
def test_the_corpus_keeps_a_source_domain_except_near_copies(split):
    r, tmp = split["result"], split["tmp"]
    pool = set(pq.read_table(tmp / "pool", columns=["id"])["id"].to_pylist())
    books = {d["id"] for d in split["corpus"] if d["domain"] == "books"}
    assert books - pool == {"books-nearcopy"}
    removed = pq.read_table(split["out"] / "removed").to_pylist()
    reasons = {row["id"]: row for row in removed}
    assert reasons["books-nearcopy"]["_pool"] == NEAR_HELD_OUT
    assert json.loads(reasons["books-nearcopy"]["_pool_detail"])["held_out_id"] == source_doc_id("books", "s-001")
    assert {i for i, row in reasons.items() if row["_pool"] == HELD_OUT} == {
        d["id"] for d in jsonl(Path(r.eval_files["web"]))}
    assert r.removed_near_duplicates == 1
    assert r.pool_docs == len(split["corpus"]) - PER_DOMAIN - 1


@slow_split
def test_every_domain_from_a_source_draws_nothing_from_the_corpus(split):
    """The demo's case: no corpus document is a candidate (an empty draw once broke the read)."""
    tmp = split["tmp"]
    web = write_jsonl(tmp / "web-source.jsonl", [{"id": f"w-{i}", "text": document(random.Random(i), "web")}
                                                 for i in range(4)])
    out = tmp / "all-sources"
    r = split_holdout(
        run([str(tmp / "corpus.jsonl")], tmp / "read-all", []), str(out / "clean"), out, str(tmp / "pool-all"),
        per_domain=PER_DOMAIN, oversample=1.0, threshold=0.5, seed=SEED, skip_domains=set(),
        run_clean=lambda src, dst: run([src], dst, ["exact_dedup"]),
        sources={"web": str(web), "books": str(tmp / "books.jsonl")},
        run_read=lambda src, domain, dst: run([{"path": src, "domain": domain}], dst, []))
    assert all(d["id"].startswith("holdout:") for f in r.eval_files.values() for d in jsonl(Path(f)))
    # The whole corpus stays in the pool but the books near-copy of a source document.
    assert r.pool_docs == len(split["corpus"]) - 1 and r.removed_near_duplicates == 1


@slow_split
def test_the_novel_set_drops_exactly_the_lines_the_corpus_repeats(split):
    r = split["result"]
    novel = {d["id"]: d["text"] for d in jsonl(Path(r.novel_eval_files["books"]))}
    original = {source_doc_id("books", d["id"]): d["text"] for d in split["source"]}
    first = source_doc_id("books", "s-000")
    # BOILERPLATE occurs 3 times in the corpus (> 2): gone; TWICE occurs twice: kept.
    assert novel[first] == original[first].replace(f"\n{BOILERPLATE}\n", "\n")
    assert {i: t for i, t in novel.items() if i != first} == {i: t for i, t in original.items() if i != first}
    assert r.novel_removed["books"]["lines_removed"] == 1
    assert r.novel_removed["books"]["bytes_removed"] == len(BOILERPLATE) + 1
    web_with_boilerplate = {"web-000", "web-001", "web-002"} & {d["id"] for d in jsonl(Path(r.eval_files["web"]))}
    assert r.novel_removed["web"]["lines_removed"] == len(web_with_boilerplate)
    assert set(r.novel_eval_files) == {"books", "math", "web"}


def test_line_counts_are_a_ray_data_pass(ray_local):
    import ray.data

    ds = ray.data.from_items([{"text": f"a\n  A \nb\n{BOILERPLATE}"}, {"text": "a\nc"}], override_num_blocks=2)
    keys = {line_key(x) for x in ("a", "b", "never")}
    assert corpus_line_counts(ds, keys) == {line_key("a"): 3, line_key("b"): 1, line_key("never"): 0}


def test_holdout_sources_are_validated():
    spec = HoldoutSpec.model_validate({"sources": {"books": "held/books.jsonl"}, "novel_max_line_count": 3})
    assert spec.sources == {"books": "held/books.jsonl"} and HoldoutSpec().novel_max_line_count == 2
    for bad, message in (({"sources": {"Books!": "x"}}, "not domain names"),
                         ({"sources": {"books": " "}}, "no source given"),
                         ({"sources": {"books": "x"}, "skip_domains": ["books"]}, "in both")):
        with pytest.raises(ValidationError, match=message):
            HoldoutSpec.model_validate(bad)
