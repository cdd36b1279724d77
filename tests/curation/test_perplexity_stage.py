"""The perplexity stage on a small Ray dataset: per-domain percentile calibration, buckets,
absolute thresholds, and pass-through for domains without a model."""

from __future__ import annotations

import json
import os
import random

import pytest

pytest.importorskip("kenlm")
ray = pytest.importorskip("ray")

from curation.lm.perplexity import DomainModel  # noqa: E402
from curation.lm.train import train_lm  # noqa: E402
from curation.stages.base import RunContext  # noqa: E402
from curation.stages.perplexity import PerplexityFilter, PerplexityParams  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def prose_documents() -> list[str]:
    import pydoc_data.topics

    docs = []
    for _, text in sorted(pydoc_data.topics.topics.items()):
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) > 12]
        docs += ["\n".join(paragraphs[i:i + 3]) for i in range(0, len(paragraphs), 3)]
    return docs


def shuffle_words(doc: str, rng: random.Random) -> str:
    words = doc.split()
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A web model trained on real English; documents like its training text, shuffled ones.

    ("good" documents come from the training text so that every one of them scores far below
    every shuffled one: this test is about marking, test_kneser_ney about generalisation.)"""
    tmp = tmp_path_factory.mktemp("lm")
    docs = prose_documents()
    train, held_out = [d for i, d in enumerate(docs) if i % 5], [d for i, d in enumerate(docs) if i % 5 == 0]
    (tmp / "web.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in train))
    train_lm("web", str(tmp / "web.jsonl"), tmp / "web.arpa", order=3)
    rng = random.Random(0)
    good = train[:20]
    bad = [shuffle_words(d, rng) for d in held_out[20:40]]
    rows = [{"id": f"good{i}", "text": d, "domain": "web"} for i, d in enumerate(good)]
    rows += [{"id": f"bad{i}", "text": d, "domain": "web"} for i, d in enumerate(bad)]
    # "news" is scored by the same model but is all shuffled text: its own percentiles apply.
    rows += [{"id": f"news{i}", "text": shuffle_words(d, rng), "domain": "news"} for i, d in enumerate(held_out[40:60])]
    rows += [{"id": f"book{i}", "text": d, "domain": "books"} for i, d in enumerate(held_out[60:70])]
    for r in rows:
        r.update(url="", metadata="{}", source="test", n_tokens=len(r["text"].split()))
    return str(tmp / "web.arpa"), rows


def run_stage(rows, **params):
    stage = PerplexityFilter(PerplexityParams(**params), RunContext(seed=0, output="unused", num_cpus=1))
    ds = ray.data.from_items(rows, override_num_blocks=4)
    out = {r["id"]: r for r in stage.run(ds).take_all()}
    assert len(out) == len(rows)  # every row comes back, marked
    return stage, out


def test_percentile_per_domain_and_pass_through(ray_local, corpus):
    model, rows = corpus
    stage, out = run_stage(rows, models={"web": model, "news": model}, drop_above_percentile=50)

    web_dropped = {i for i, r in out.items() if r["domain"] == "web" and r["_reason"]}
    assert web_dropped == {f"bad{i}" for i in range(20)}  # the shuffled half is the worse half
    news_dropped = [r for r in out.values() if r["domain"] == "news" and r["_reason"]]
    assert len(news_dropped) == 10  # calibrated on its own documents, not on web's
    detail = json.loads(news_dropped[0]["_detail"])
    assert news_dropped[0]["_reason"] == "perplexity_percentile"
    assert detail["domain"] == "news" and detail["rule"] == "above_p50"
    assert detail["perplexity"] > detail["threshold"]

    books = [r for r in out.values() if r["domain"] == "books"]
    assert all(r["_reason"] == "" and r["perplexity"] is None and r["pp_bucket"] is None for r in books)
    assert all(r["perplexity"] > 1 and r["pp_bucket"] in ("head", "middle", "tail")
               for r in out.values() if r["domain"] != "books")

    summary = stage.summarize(None)
    assert summary["unscored"] == 10
    web = summary["domains"]["web"]
    assert web["docs"] == web["scored"] == 40
    assert web["bucket_counts"] == {"head": 12, "middle": 12, "tail": 16}  # cut at p30 and p60
    assert web["bucket_cutoffs"]["head"] < web["percentile_threshold"] < web["bucket_cutoffs"]["middle"]
    assert summary["domains"]["books"] == {"docs": 10, "scored": 0, "unscored": 10}


def test_absolute_threshold_and_bucket_drops(ray_local, corpus):
    model, rows = corpus
    web_rows = [r for r in rows if r["domain"] == "web"]
    scorer = DomainModel(model, "web")  # the stage's own scoring, outside Ray
    pps = sorted(scorer.perplexity(r["text"]) for r in web_rows)
    limit = (pps[-1] + pps[-2]) / 2  # exactly one document above it

    _, out = run_stage(web_rows, models={"web": model}, max_perplexity={"web": limit}, drop_buckets=["tail"])
    assert sorted(r["perplexity"] for r in out.values()) == pytest.approx(pps)
    reasons = sorted(r["_reason"] for r in out.values() if r["_reason"])
    assert reasons == ["perplexity_bucket"] * 15 + ["perplexity_max"]  # max wins over the bucket
    for r in out.values():
        assert (r["_reason"] != "") == (r["pp_bucket"] == "tail")
        if r["_reason"] == "perplexity_max":
            assert json.loads(r["_detail"])["threshold"] == pytest.approx(limit, abs=1e-3)


def test_params_are_validated(tmp_path):
    with pytest.raises(ValueError):
        PerplexityParams(models={})
    with pytest.raises(ValueError):
        PerplexityParams(models={"web": "m.arpa"}, buckets=[60, 30])
    with pytest.raises(ValueError):
        PerplexityParams(models={"web": "m.arpa"}, drop_buckets=["head", "middle", "tail"])
    stage = PerplexityFilter(PerplexityParams(models={"web": str(tmp_path / "missing.arpa")}),
                             RunContext(seed=0, output="unused"))
    with pytest.raises(FileNotFoundError, match="missing.arpa"):
        stage.run(None)


# ----------------------------------------------------------------------------- the score

def number_tables(rng: random.Random, n: int) -> list[str]:
    """Tables of random numbers: digit normalisation makes them look fluent ("000 . 00 , 00 . 0")."""
    def row(dated: bool, sep: str) -> str:
        if dated:
            date = f"20{rng.randint(0, 24):02d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            return sep.join((date, str(rng.randint(0, 99999)), f"{rng.uniform(0, 100):.1f}%"))
        return sep.join(f"{rng.uniform(0, 1000):.2f}" for _ in range(rng.randint(3, 7)))

    def table() -> str:
        dated, sep = rng.random() < 0.5, rng.choice((", ", "  ", " | "))
        return "\n".join(row(dated, sep) for _ in range(rng.randint(10, 40)))
    return [table() for _ in range(n)]


def auc(real: list[float], garbage: list[float]) -> float:
    """P(garbage scores above real), ties half."""
    return sum((g > r) + 0.5 * (g == r) for g in garbage for r in real) / (len(real) * len(garbage))


def test_digits_formula(corpus):
    from curation.lm.perplexity import log10_score, perplexity

    model = DomainModel(corpus[0], "web")
    text = "the value 42 is returned\nin 3.14 seconds"  # 5 digits
    total, length = log10_score(model.model, text, "prose", "cc_net")
    assert length == 5 + 1 + 5 + 1
    assert log10_score(model.model, text, "prose") == pytest.approx((total - 5, length))  # log10(1/10) a digit
    assert perplexity(model.model, text, "prose") == pytest.approx(10 ** (-(total - 5) / length))
    plain = "the value is returned"
    assert model.perplexity(plain) == pytest.approx(DomainModel(corpus[0], "web", "cc_net").perplexity(plain))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_score_separates_tables_and_keeps_the_rest(corpus, seed):
    """Held-out prose vs tables of numbers and shuffled prose: the default score ranks tables
    above real text where cc_net's per-line score ranks some among it, and loses little on
    shuffled words (whose digits are those of real text). (Each bound holds with a wide margin
    on every seed: tables score 6x the worst real document under the default; 5-12 of the 30
    fall below cc_net's p90 of real text.)"""
    model = corpus[0]
    docs = prose_documents()
    real = [d for i, d in enumerate(docs) if i % 5 == 0][:40]  # held out from the model's training text
    rng = random.Random(seed)
    tables = number_tables(rng, 30)
    shuffled_docs = [shuffle_words(d, rng) for d in rng.sample(real, 20)]
    scores = {}
    for score in ("cc_net_digits", "cc_net"):
        m = DomainModel(model, "web", score)
        scores[score] = {name: [m.perplexity(d) for d in ds]
                         for name, ds in (("real", real), ("tables", tables), ("shuffled", shuffled_docs))}
    new, old = scores["cc_net_digits"], scores["cc_net"]
    assert min(new["tables"]) > max(new["real"])  # every table above every real document
    cut = sorted(old["real"])[int(0.9 * len(real))]  # cc_net: tables hide below a p90 cut of real text
    assert any(t <= cut for t in old["tables"])
    assert auc(new["real"], new["shuffled"]) >= auc(old["real"], old["shuffled"]) - 0.05


def test_stage_score_parameter(ray_local, corpus):
    model, rows = corpus
    rng = random.Random(0)
    web = [r for r in rows if r["domain"] == "web"][:10]
    web += [{**web[0], "id": f"table{i}", "text": t} for i, t in enumerate(number_tables(rng, 5))]
    for score in ("cc_net_digits", "cc_net"):
        _, out = run_stage(web, models={"web": model}, score=score)
        scorer = DomainModel(model, "web", score)
        assert all(r["perplexity"] == pytest.approx(scorer.perplexity(r["text"])) for r in out.values())
    with pytest.raises(ValueError):
        PerplexityParams(models={"web": "m.arpa"}, score="document")
