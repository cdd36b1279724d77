"""The ablation's curation prefix cache: the plan, the keys, the input fingerprint, and a real
mini run whose second pass reuses every segment and gives the same curated data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract.jsonl import read_jsonl
from curation.config import PipelineConfig, StageSpec
from curation.pipeline import Pipeline
from workflows.ablation.prefix_cache import (
    SEGMENTS,
    PrefixCache,
    input_fingerprint,
    plan_segments,
    prefix_key,
)


def specs(*raw) -> list[StageSpec]:
    return [StageSpec.model_validate(s) for s in raw]


DEDUP = ["url_dedup", "exact_dedup", {"name": "minhash_dedup", "threshold": 0.8}, "simhash_sentence_dedup"]
FILTERED = [*DEDUP, {"name": "heuristics", "skip_domains": ["math"]}]
MIX = [*FILTERED, {"name": "mixture", "temperature": 2.0}]


def test_plan_reuses_shared_prefixes():
    plan = plan_segments({"raw": [], "dedup": specs(*DEDUP), "filtered": specs(*FILTERED),
                          "filtered-mix": specs(*MIX)})
    # dedup's four stages are one segment the other two start from; no point inside it (every
    # variant sharing stages 1-3 goes on with the same 4th stage).
    assert plan == {"raw": [], "dedup": [(0, 4)], "filtered": [(0, 4), (4, 5)],
                    "filtered-mix": [(0, 4), (4, 5), (5, 6)]}


def test_plan_cuts_where_variants_part_and_shares_nothing_after_a_first_stage_change():
    a = specs("exact_dedup", "heuristics", "mixture")
    b = specs("exact_dedup", "heuristics", {"name": "mixture", "temperature": 2.0})
    other = specs({"name": "exact_dedup", "lowercase": False}, "heuristics", "mixture")
    plan = plan_segments({"a": a, "b": b, "other": other})
    assert plan == {"a": [(0, 2), (2, 3)], "b": [(0, 2), (2, 3)], "other": [(0, 3)]}
    keys = {name: prefix_key("fp", stages[:2], 1, "web") for name, stages in (("a", a), ("b", b), ("other", other))}
    assert keys["a"] == keys["b"] != keys["other"]


def test_key_follows_params_seed_input_and_model_bytes(tmp_path):
    model = tmp_path / "web.arpa"
    model.write_text("\\data\\\nngram 1=1\n")
    stages = specs("exact_dedup", {"name": "perplexity", "models": {"web": str(model)}, "max_perplexity": {"web": 9}})
    key = prefix_key("fp", stages, 1, "web")
    assert key == prefix_key("fp", specs(*[s.dump() for s in stages]), 1, "web")  # canonical, not by identity
    assert len({key, prefix_key("fp2", stages, 1, "web"), prefix_key("fp", stages, 2, "web"),
                prefix_key("fp", stages, 1, "books"), prefix_key("fp", stages[:1], 1, "web")}) == 5
    model.write_text("\\data\\\nngram 1=2\n")  # same path, same size, new content: a new key
    assert prefix_key("fp", stages, 1, "web") != key

    earlier = tmp_path / "earlier-run"  # a folder parameter: keyed by its file listing
    (earlier / "index").mkdir(parents=True)
    dedup = specs({"name": "minhash_dedup", "dedup_against": [str(earlier)]})
    key = prefix_key("fp", dedup, 1, "web")
    (earlier / "index" / "part-0.parquet").write_bytes(b"x")
    assert prefix_key("fp", dedup, 1, "web") != key


def test_fingerprint_ignores_file_names_and_row_order(tmp_path):
    rows = [{"id": f"d{i}", "text": f"text {i}", "url": None, "domain": "web", "metadata": "{}"} for i in range(10)]
    table = pa.Table.from_pylist(rows)
    (tmp_path / "a").mkdir()
    pq.write_table(table, tmp_path / "a" / "part-0.parquet")
    (tmp_path / "b").mkdir()  # other names, other split, rows reversed
    pq.write_table(table.slice(4).take(list(range(5, -1, -1))), tmp_path / "b" / "3f2a.parquet")
    pq.write_table(table.slice(0, 4), tmp_path / "b" / "0c1d.parquet")
    assert input_fingerprint(tmp_path / "a") == input_fingerprint(tmp_path / "b")
    rows[3]["text"] = "text 3 edited"
    (tmp_path / "c").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c" / "part-0.parquet")
    assert input_fingerprint(tmp_path / "c") != input_fingerprint(tmp_path / "a")


# --- a real mini run (Ray) ---------------------------------------------------------------------

MINI_DEDUP = ["exact_dedup", {"name": "minhash_dedup", "threshold": 0.7}]
MINI_FILTERED = [*MINI_DEDUP, {"name": "heuristics", "min_words": 20}]
MINI = {"dedup": MINI_DEDUP, "filtered": MINI_FILTERED,
        "filtered-mix": [*MINI_FILTERED, {"name": "mixture", "temperature": 2.0, "max_epochs": 3.0}]}
SEED = 3


def mini_pool(tmp_path: Path) -> Path:
    from tests.ablation_data import mini_corpus

    docs = read_jsonl(mini_corpus(tmp_path / "corpus.jsonl", per_domain=60))
    pool = tmp_path / "pool"
    pool.mkdir()
    rows = [{"id": d["id"], "text": d["text"], "url": None, "domain": d["domain"], "metadata": "{}"} for d in docs]
    pq.write_table(pa.Table.from_pylist(rows), pool / "part-0.parquet")
    return pool


def tokenize_stage(tmp_path: Path, pool: Path) -> StageSpec:
    import ray.data

    from curation.stages.tokenize import TokenizeParams, train_tokenizer_on

    path = tmp_path / "tokenizer.json"
    trained, _ = train_tokenizer_on(ray.data.read_parquet(str(pool)), 1000, TokenizeParams(vocab_size=400), SEED)
    path.write_text(trained)
    return StageSpec.model_validate({"name": "tokenize", "tokenizer": str(path)})


def curate_all(cache: PrefixCache, tokenize: StageSpec, out: Path) -> dict[str, tuple]:
    return {name: cache.curate(name, tokenize, out / name) for name in MINI}


def rows(run) -> set[tuple[str, str]]:
    return {(r["id"], r["text"]) for r in pq.read_table(run.data_dir, columns=["id", "text"]).to_pylist()}


def manifest_tokens(run) -> int:
    return json.loads(Path(run.extra["tokenize"]).read_text())["totals"]["tokens"]


@pytest.mark.slow  # ~16 pipeline runs on Ray (~1-2 min on 2 busy cores)
def test_second_run_reuses_every_segment_and_gives_identical_outputs(ray_local, tmp_path):
    pool = mini_pool(tmp_path)
    tokenize = tokenize_stage(tmp_path, pool)
    stages_of = {name: specs(*raw) for name, raw in MINI.items()}

    def new_cache(stages=stages_of) -> PrefixCache:
        return PrefixCache(tmp_path / "cache", pool, seed=SEED, default_domain="web", stages_of=stages)

    first = curate_all(new_cache(), tokenize, tmp_path / "first")
    reused = {name: [s.reused for s in segments] for name, (_, segments) in first.items()}
    assert reused == {"dedup": [False], "filtered": [True, False], "filtered-mix": [True, True, False]}
    assert len(list((tmp_path / "cache").iterdir())) == 3  # one folder per distinct prefix

    # The variant's stats account for every document through every stage, pool read to tokenize.
    run, segments = first["filtered-mix"]
    names = [s.name for s in run.stats.stages]
    assert names == ["read", "exact_dedup", "minhash_dedup", "heuristics", "mixture", "tokenize"]
    assert run.stats.stages[0].docs_in == pq.read_table(pool).num_rows
    assert run.stats.stages[-1].docs_out == pq.read_table(run.data_dir).num_rows
    for before, after in zip(run.stats.stages, run.stats.stages[1:]):
        assert after.docs_in == before.docs_out
    listed = json.loads((tmp_path / "first" / "filtered-mix" / SEGMENTS).read_text())
    assert [s["stages"] for s in listed["segments"]] == [["exact_dedup", "minhash_dedup"], ["heuristics"],
                                                         ["mixture"]]
    assert pq.read_table(listed["segments"][0]["rejects"]).num_rows == sum(
        sum(s.dropped.values()) for s in run.stats.stages[1:3])

    # Chained segments = one pipeline over all the stages (the mixture's `repeats` reach tokenize).
    whole = Pipeline(PipelineConfig(inputs=[str(pool)], output=str(tmp_path / "whole"), seed=SEED,
                                    stages=[*stages_of["filtered-mix"], tokenize])).run()
    assert rows(whole) == rows(run) and manifest_tokens(whole) == manifest_tokens(run)
    assert manifest_tokens(run) > manifest_tokens(first["filtered"][0])  # the mixture repeats documents

    second = curate_all(new_cache(), tokenize, tmp_path / "second")
    for name in MINI:
        (a, a_segments), (b, b_segments) = first[name], second[name]
        assert all(s.reused for s in b_segments) and [s.key for s in a_segments] == [s.key for s in b_segments]
        assert rows(a) == rows(b) and manifest_tokens(a) == manifest_tokens(b)
        assert [s.to_json() | {"seconds": 0} for s in a.stats.stages[:-1]] == [
            s.to_json() | {"seconds": 0} for s in b.stats.stages[:-1]]

    # A changed parameter of the first stage misses the cache from there on.
    changed = {**stages_of, "dedup": specs("exact_dedup", {"name": "minhash_dedup", "threshold": 0.75})}
    segment, _ = new_cache(changed).segment("dedup", (0, 2), str(pool))
    assert not segment.reused and segment.key not in {s.key for s in first["dedup"][1]}
