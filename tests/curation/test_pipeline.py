"""End to end on an embedded Ray: output layout, accounting, dedup across blocks, determinism."""

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.config import parse_config
from curation.pipeline import AccountingError, OutputExists, run_pipeline
from curation.stages.base import Stage
from curation.stats import RunStats, StageStats
from flywheel.cli import app
from tests.helpers import read_parquet_dir, write_jsonl

pytestmark = pytest.mark.slow


def corpus(root):
    """Two files (so two read tasks / blocks) with duplicates planted across them."""
    a = [{"id": f"a{i:03}", "text": f"Page {i} says hello to the world. " * 3,
          "url": f"https://site.org/page/{i}"} for i in range(60)]
    b = [{"id": f"b{i:03}", "text": f"Other text {i}, fine.", "url": None} for i in range(40)]
    # url duplicates of a-docs, written differently and living in the other file
    b += [{"id": "b900", "text": "fresh words", "url": "HTTP://SITE.org:80/page/3/?utm_source=news#top"},
          {"id": "b901", "text": "more fresh words", "url": "https://site.org/page/4/"}]
    # exact duplicates (modulo case and whitespace) of a-docs, in the other file
    b += [{"id": "b950", "text": "  PAGE 7 says hello to the world. " * 3, "url": "https://elsewhere.net/x"},
          {"id": "a000-copy", "text": a[0]["text"], "url": None}]
    write_jsonl(root / "in" / "a.jsonl", a)
    write_jsonl(root / "in" / "b.jsonl.gz", b + ["{broken"], "gzip")
    return len(a) + len(b) + 1


def config(root, out="out", **kw):
    return parse_config({"inputs": [str(root / "in")], "output": str(root / out), "seed": 7,
                         "stages": ["url_dedup", {"name": "exact_dedup"}], **kw})


@pytest.fixture(scope="module")
def first_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    n = corpus(root)
    return root, n, run_pipeline(config(root))


def test_end_to_end_layout_accounting_and_dedup(first_run):
    tmp_path, n, result = first_run
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["token_unit"] == "whitespace_words"
    names = [s["name"] for s in stats["stages"]]
    assert names == ["read", "url_dedup", "exact_dedup"]
    for s in stats["stages"]:
        assert s["docs_in"] == s["docs_out"] + sum(s["dropped"].values())
        assert set(s) >= {"name", "method", "docs_in", "docs_out", "tokens_in", "tokens_out", "dropped", "seconds"}
    read, url, exact = stats["stages"]
    assert read["docs_in"] == n and read["dropped"] == {"malformed": 1}
    assert url["dropped"] == {"duplicate_url": 2}
    assert exact["dropped"] == {"exact_duplicate": 2}
    assert url["docs_in"] == read["docs_out"] and exact["docs_in"] == url["docs_out"]
    assert stats["totals"]["docs_out"] == n - 5

    kept = read_parquet_dir(tmp_path / "out" / "data")
    rejects = read_parquet_dir(tmp_path / "out" / "rejects")
    assert kept.num_rows == exact["docs_out"]
    # every input document is kept or rejected, exactly once
    all_ids = kept["id"].to_pylist() + rejects["id"].to_pylist()
    assert len(all_ids) == len(set(all_ids)) == n
    why = {r["id"]: r for r in rejects.to_pylist()}
    assert why["b900"]["stage"] == "url_dedup" and json.loads(why["b900"]["detail"])["kept_id"] == "a003"
    assert json.loads(why["b901"]["detail"])["canonical_url"] == "https://site.org/page/4"
    assert why["b950"]["reason"] == "exact_duplicate" and json.loads(why["b950"]["detail"])["kept_id"] == "a007"
    assert json.loads(why["a000-copy"]["detail"])["kept_id"] == "a000"
    assert {r["stage"] for r in why.values()} == {"read", "url_dedup", "exact_dedup"}
    assert RunStats.from_json(stats).stages[-1].docs_out == result.stats.stages[-1].docs_out


def test_same_config_same_input_same_output(first_run):
    tmp_path, _, _ = first_run
    run_pipeline(config(tmp_path, out="r2"))
    for sub in ("data", "rejects"):
        t1 = read_parquet_dir(tmp_path / "out" / sub).sort_by("id")
        t2 = read_parquet_dir(tmp_path / "r2" / sub).sort_by("id")
        assert t1.equals(t2)
    s1 = json.loads((tmp_path / "out" / "stats.json").read_text())
    s2 = json.loads((tmp_path / "r2" / "stats.json").read_text())
    for a, b in zip(s1["stages"], s2["stages"]):
        a.pop("seconds"), b.pop("seconds")
        assert a == b


def test_existing_output_needs_overwrite(ray_local, tmp_path):
    corpus(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    with pytest.raises(OutputExists):
        run_pipeline(config(tmp_path, stages=[]))
    run_pipeline(config(tmp_path, stages=[]), overwrite=True)
    assert not (tmp_path / "out" / "old.txt").exists()
    assert pq.read_metadata(next((tmp_path / "out" / "data").glob("*.parquet"))).num_rows > 0


def test_cli_curate_prints_the_seed_table_and_exits_2_on_bad_input(ray_local, tmp_path):
    corpus(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"inputs: [{tmp_path / 'in'}]\noutput: {tmp_path / 'cli-out'}\nstages: [url_dedup]\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["curate", str(cfg), "--quiet"])
    assert ok.exit_code == 0, ok.output
    for word in ("Stage", "Method", "Docs removed", "Tokens removed", "% of input", "url_dedup", "stats.json"):
        assert word in ok.output
    again = runner.invoke(app, ["curate", str(cfg), "--quiet"])
    assert again.exit_code == 2 and "not empty" in again.output
    missing = runner.invoke(app, ["curate", str(cfg), "--input", str(tmp_path / "nope"), "-o", str(tmp_path / "o2")])
    assert missing.exit_code == 2 and "input not found" in missing.output
    table = runner.invoke(app, ["stats", str(tmp_path / "cli-out")])
    assert table.exit_code == 0 and "url_dedup" in table.output


class LossyStage(Stage):
    """A buggy stage that filters rows itself instead of marking them."""

    name = "lossy"
    method = "drops rows silently"

    def run(self, ds):
        from curation.stages.base import with_verdicts

        return ds.filter(lambda row: not row["id"].startswith("a0")).map_batches(
            lambda b: with_verdicts(b, [""] * b.num_rows, None), batch_format="pyarrow")


def test_a_stage_that_loses_documents_fails_the_run(ray_local, tmp_path, monkeypatch):
    from curation import stages

    monkeypatch.setitem(stages.STAGES, "lossy", "tests.curation.test_pipeline:LossyStage")
    corpus(tmp_path)
    with pytest.raises(AccountingError, match="stage 'lossy'"):
        run_pipeline(config(tmp_path, stages=["lossy"]))
    assert not (tmp_path / "out" / "stats.json").exists()


def test_stats_refuse_broken_accounting():
    st = StageStats(name="x", method="m", docs_in=10, docs_out=7, tokens_in=0, tokens_out=0, dropped={"r": 2})
    with pytest.raises(ValueError, match="docs_in 10"):
        RunStats(run_id="r", config_sha256="c", config={}, stages=[st]).to_json()


def test_map_stage_must_return_every_row():
    import pyarrow as pa

    from curation.stages.base import MapStage, RunContext, _checked

    class Shrinks(MapStage):
        name, method = "shrinks", "bug"

        def process_batch(self, batch):
            return batch.slice(1)

    stage = Shrinks(Shrinks.Params(), RunContext(seed=0, output="/tmp/x"))
    with pytest.raises(RuntimeError, match="never drop"):
        _checked(stage, pa.table({"id": ["a", "b"], "text": ["x", "y"]}))


def test_explain_answers_why_a_document_is_gone(first_run):
    from curation.explain import explain

    root, _, _ = first_run
    out = str(root / "out")
    gone = explain(out, "b950")
    assert gone["status"] == "rejected" and gone["stage"] == "exact_dedup"
    assert gone["kept"]["id"] == "a007" and gone["kept"]["status"] == "kept"
    assert gone["kept"]["text"].lower().split() == gone["text"].lower().split()
    assert explain(out, "a007")["status"] == "kept"
    assert explain(out, "no-such-doc")["status"] == "unknown"
    runner = CliRunner()
    shown = runner.invoke(app, ["inspect", out, "b900", "--json"])
    assert shown.exit_code == 0 and '"kept_id": "a003"' in shown.output
    assert runner.invoke(app, ["inspect", out, "no-such-doc"]).exit_code == 1
