"""Tokenize stage: BPE training, shards + manifest that validate, decoding, determinism."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from contract.manifest import parse_manifest
from contract.shards import open_index, open_tokens
from contract.tokenizer import SpecialTokens, load_tokenizer
from curation.config import parse_config
from curation.stages.base import DETAIL, KEPT, REASON, RunContext, count_words
from curation.stages.mixture import MixtureSampler
from curation.stages.tokenize import N_BPE, ORDER, TOKENS, Tokenize, TokenizeParams, _Encoder, _PartWriter
from curation.stats import RunStats, StageStats
from curation.tokenizer import train_bpe
from training.data.validate import validate_manifest

WORDS = ["the", "model", "reads", "data", "def", "return", "x", "=", "(", ")", "12345", "3.14", "naïve", "café",
         "日本語", "😀", "\n", "\t", "  ", "foo_bar", "if", "else", "{", "}", ";"]


def corpus(n: int = 400, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))) for _ in range(n)]
    texts[3] = "a document that mentions <|eos|> and <|bos|> literally"
    texts[5] = ""
    domains = ["code" if i % 3 == 0 else "web" for i in range(n)]
    text_col = pa.array(texts, pa.string())
    return pa.table({"id": [f"doc-{i:04}" for i in range(n)], "text": text_col, "domain": domains,
                     "n_tokens": count_words(text_col)})


def blocks_of(table: pa.Table, k: int):
    import ray.data

    bounds = np.linspace(0, table.num_rows, k + 1).astype(int)
    return ray.data.from_arrow([table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])])


def kept(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch[REASON], KEPT)).drop_columns([REASON, DETAIL])


def settle(stage, ds):
    """What the pipeline does with a stage: materialise, summarise, account, keep the kept."""
    import ray

    out = stage.run(ds).materialize()
    table = pa.concat_tables(ray.get(out.to_arrow_refs()))
    dropped = Counter(r for r in table[REASON].to_pylist() if r != KEPT)
    kept_rows = table.filter(pc.equal(table[REASON], KEPT))
    stats = StageStats(name=stage.name, method=stage.method, docs_in=table.num_rows, docs_out=kept_rows.num_rows,
                       tokens_in=pc.sum(table["n_tokens"]).as_py(),
                       tokens_out=pc.sum(kept_rows["n_tokens"]).as_py() or 0,
                       dropped=dict(dropped), extra=stage.summarize(out))
    return out.map_batches(kept, batch_format="pyarrow", batch_size=None), table, stats


def run_stages(table, out_dir: Path, blocks: int, stages: list[dict], seed: int = 11):
    """The stages on `table` split in `blocks` blocks, then the pipeline's finalize hook."""
    config = parse_config({"inputs": ["memory://corpus"], "output": str(out_dir), "seed": seed, "stages": stages})
    ctx = RunContext(seed=seed, output=str(out_dir), num_cpus=2)
    run_stats = RunStats(run_id="test", config_sha256=config.fingerprint(), config=config.dump())
    ds, results = blocks_of(table, blocks), {}
    for spec in config.stages:
        stage = {"mixture": MixtureSampler, "tokenize": Tokenize}[spec.name](spec.params, ctx)
        ds, results[spec.name], st = settle(stage, ds)
        run_stats.stages.append(st)
    manifest_path = stage.finalize(run_stats.to_json())
    return stage, results, manifest_path


def decoded_documents(manifest_path: Path):
    """(ids, text without EOS) for every document of every shard, in stream order."""
    manifest = parse_manifest(manifest_path.read_text())
    tok = load_tokenizer(str(manifest_path.parent / manifest.tokenizer.path))
    docs = []
    for shard in manifest.shards:
        tokens = open_tokens(manifest_path.parent / shard.path, manifest.dtype)
        index = open_index(manifest_path.parent / shard.index_path)
        for d in range(len(index) - 1):
            ids = np.asarray(tokens[index[d]:index[d + 1]])
            docs.append((ids, tok.decode(ids[:-1].tolist(), skip_special_tokens=False)))
    return manifest, docs


SHARD_TOKENS = 4000


@pytest.fixture(scope="module")
def sampled_run(ray_local, tmp_path_factory):
    table = corpus()
    out = tmp_path_factory.mktemp("tok") / "run"
    stages = [{"name": "mixture", "temperature": 2.0, "multipliers": {"code": 2.0}},
              {"name": "tokenize", "vocab_size": 400, "shard_tokens": SHARD_TOKENS}]
    stage, results, manifest_path = run_stages(table, out, blocks=3, stages=stages)
    return table, stage, results, manifest_path


@pytest.mark.slow
def test_shards_and_manifest_validate_and_decode_to_the_texts(sampled_run):
    table, stage, results, manifest_path = sampled_run
    assert validate_manifest(str(manifest_path)) == []
    manifest, docs = decoded_documents(manifest_path)
    assert manifest.dtype == "uint16" and manifest.tokenizer.vocab_size <= 400
    assert manifest.tokenizer.special_ids.model_dump() == {"bos": 0, "eos": 1, "pad": 2}
    assert len(manifest.shards) > 1 and all(s.tokens <= SHARD_TOKENS for s in manifest.shards)

    sampled = results["mixture"]
    expected = Counter()
    for text, repeats in zip(sampled["text"].to_pylist(), sampled["repeats"].to_pylist()):
        expected[text] += repeats
    assert Counter(text for _, text in docs) == expected  # every copy, nothing else
    for ids, _ in docs:
        assert ids[-1] == 1 and 1 not in ids[:-1].tolist() and ids[0] != 0  # EOS ends, no BOS, no forged EOS

    # the stage keeps every row, adds n_bpe_tokens; its totals match the manifest
    tokenized = results["tokenize"]
    assert set(tokenized[REASON].to_pylist()) == {KEPT} and TOKENS not in tokenized.column_names
    per_copy = dict(zip(tokenized["id"].to_pylist(), tokenized[N_BPE].to_pylist()))
    repeats = dict(zip(sampled["id"].to_pylist(), sampled["repeats"].to_pylist()))
    assert manifest.totals.tokens == sum(per_copy[i] * repeats[i] for i in per_copy) == stage.summary["tokens_written"]
    assert manifest.totals.documents == sum(repeats[i] for i in per_copy)

    assert manifest.mixture["sampled"] and manifest.mixture["temperature"] == 2.0
    assert [s["name"] for s in manifest.provenance.stages] == ["mixture", "tokenize"]
    assert manifest.provenance.inputs == [{"path": "memory://corpus"}]
    assert manifest.tokenizer.path == "tokenizer.json"


@pytest.mark.slow
def test_repeats_are_spread_not_adjacent(sampled_run):
    _, _, _, manifest_path = sampled_run
    _, docs = decoded_documents(manifest_path)
    texts = [t for _, t in docs if t]
    positions: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        positions.setdefault(t, []).append(i)
    gaps = [p[1] - p[0] for p in positions.values() if len(p) == 2]
    assert gaps and np.median(gaps) > 10  # a random order, not copy after copy


@pytest.mark.slow
def test_a_corrupted_shard_is_detected(sampled_run, tmp_path):
    _, _, _, manifest_path = sampled_run
    copy = tmp_path / "copy"
    shutil.copytree(manifest_path.parent, copy)
    second = parse_manifest((copy / "manifest.json").read_bytes()).shards[1].path
    victim = copy / second
    raw = bytearray(victim.read_bytes())
    raw[10] ^= 0xFF
    victim.write_bytes(bytes(raw))
    problems = validate_manifest(str(copy / "manifest.json"))
    assert len(problems) == 1 and second in problems[0] and "corrupted" in problems[0]


@pytest.mark.slow
def test_same_shards_for_another_block_count_and_a_given_tokenizer(sampled_run, tmp_path):
    _, _, results, manifest_path = sampled_run
    first = parse_manifest(manifest_path.read_text())
    sampled = kept(results["mixture"])  # what the fixture's tokenize stage got, in 3 blocks
    stages = [{"name": "tokenize", "tokenizer": str(manifest_path.parent / "tokenizer.json"),
               "shard_tokens": SHARD_TOKENS}]
    _, _, path = run_stages(sampled, tmp_path / "again", blocks=1, stages=stages)
    again = parse_manifest(path.read_text())
    assert again.mixture["sampled"] is False and again.tokenizer.sha256 == first.tokenizer.sha256
    assert [(s.sha256, s.index_sha256) for s in again.shards] == [(s.sha256, s.index_sha256) for s in first.shards]


# -- without Ray --------------------------------------------------------------------------------


def small_tokenizer():
    texts = corpus(200)["text"].to_pylist()
    return train_bpe([texts], 300, SpecialTokens())


def test_encoder_adds_eos_and_optional_bos_and_never_forges_specials():
    tok = small_tokenizer()
    batch = pa.table({"id": ["a", "b"], "text": ["hello <|eos|> world", ""]})
    for bos in (None, 0):
        out = _Encoder(tok.to_str(), eos=1, bos=bos)(batch)
        docs = out[TOKENS].to_pylist()
        assert out[N_BPE].to_pylist() == [len(d) for d in docs]
        assert all(d[-1] == 1 and 1 not in d[:-1] for d in docs)
        assert [d[0] == 0 for d in docs] == [bos == 0, bos == 0]
        start = 0 if bos is None else 1
        assert tok.decode(docs[0][start:-1]) == "hello <|eos|> world"
        assert docs[1] == ([] if bos is None else [0]) + [1]


def test_training_is_deterministic_and_specials_come_first():
    a, b = small_tokenizer(), small_tokenizer()
    assert a.to_str() == b.to_str()
    assert [a.token_to_id(s) for s in SpecialTokens().names()] == [0, 1, 2]


def test_part_writer_cuts_a_fused_batch_at_the_sort_boundaries(tmp_path):
    keys = [5, 7, 12, 30, 31]  # ranges [0, 10), [10, 20), [20, 40): three writers
    docs = [[3, 1], [4, 4, 1], [5, 1], [6, 6, 6, 1], [7, 1]]
    batch = pa.table({ORDER: pa.array(keys, pa.int64()), "domain": ["web"] * 5,
                      TOKENS: pa.array(docs, pa.large_list(pa.uint32()))})
    rows = _PartWriter(str(tmp_path), "uint16", shard_tokens=100, boundaries=[10, 20, 40])(batch).to_pylist()
    assert [(r["part"], r["documents"], r["tokens"]) for r in rows] == [(5, 2, 5), (12, 1, 2), (30, 2, 6)]
    assert open_tokens(tmp_path / rows[2]["path"], "uint16").tolist() == [6, 6, 6, 1, 7, 1]
    # Published under their key range and content; the scratch folder is gone.
    assert rows[0]["path"].startswith("shard-0000000000000005-0000-") and rows[0]["path"].endswith(".bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for r in rows for n in (r["path"], r["index_path"]))
    with pytest.raises(RuntimeError, match="key order"):
        _PartWriter(str(tmp_path), "uint16", 100, [40])(batch.take([1, 0, 2, 3, 4]))


def test_params():
    assert TokenizeParams().vocab_size == 128_000 and TokenizeParams().shard_tokens == 2**24
    with pytest.raises(ValueError, match="not both"):
        TokenizeParams(tokenizer="t.json", vocab_size=1000)
    with pytest.raises(ValueError):
        TokenizeParams(vocab_size=100)
    with pytest.raises(ValueError):
        TokenizeParams(shard_size=5)
