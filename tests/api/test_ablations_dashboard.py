"""The ablation page in a real browser (headless Chromium, as tests/api/test_dashboard_browser.py):
its Chart.js charts hold one dataset per variant with the numbers of the variants' eval.jsonl and
metrics.jsonl, the result table matches ablation.json, and a running ablation's curves grow in
place until it finishes and the page shows its result. No Ray and no runner: rows and output
folders are written by the test (tests/api/test_ablations.py's write_ablation_output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import update

from api.ids import new_id
from api.models import Ablation, Corpus, utcnow
from tests.api.conftest import live_server
from tests.api.test_ablations import CONFIG, VARIANTS, write_ablation_output
from tests.api.test_dashboard_browser import browser, sign_in  # noqa: F401 (browser: the fixture)

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api")

DOMAINS = ("code", "web")
CHARTS_JS = """() => Object.fromEntries([...document.querySelectorAll('canvas[data-series]')].map(c => {
    const chart = Chart.getChart(c);
    return [c.id, {series: c.dataset.series, x_type: chart.scales.x.type, x_max: chart.scales.x.max,
                   labels: chart.data.labels,
                   datasets: chart.data.datasets.map(d => ({label: d.label, data: d.data, dashed: !!d.borderDash}))}];
}))"""
TABLE_JS = """() => [...document.querySelectorAll('#ablation-table tbody tr')].map(
    tr => [...tr.cells].map(td => td.textContent.trim()))"""


@pytest.fixture(scope="module")
def server(service_home, database_url):
    """The service with a reaper that stays idle during this module: the `running` ablation here
    has no actor, and this module needs no Ray."""
    with live_server(service_home, database_url, reap_interval_s=3600) as s:
        yield s


def add_ablation(server, state: str) -> tuple[str, Path]:
    corpus_id, ablation_id = new_id("cor"), new_id("abl")
    out_uri = server.services.storage.uri(f"ablations/{ablation_id}")
    with server.services.db.session() as s:
        s.add(Corpus(id=corpus_id, name="docs.jsonl", source="uri", uri="/data/docs.jsonl", size_bytes=1,
                     state="ready"))
        s.flush()
        s.add(Ablation(id=ablation_id, corpus_id=corpus_id, state=state, phase="train (1/3 done)", config=CONFIG,
                       out_uri=out_uri, started_at=utcnow()))
    return ablation_id, Path(out_uri)


def expected_series(out: Path, series: str) -> tuple[list[int], list[list[float]]]:
    """(tokens, one loss list per variant) of a chart, straight from the variants' files."""
    source, _, domain = series.partition(":")
    name = "metrics.jsonl" if source == "train" else "eval.jsonl"
    per_variant = []
    for v in VARIANTS:
        records = [json.loads(ln) for ln in (out / "variants" / v / "train" / name).read_text().splitlines()]
        loss = (lambda r: r["loss"]) if source == "train" else \
            (lambda r: r["domains"][domain]["loss"]) if domain else (lambda r: r["overall"]["loss"])
        per_variant.append({r["tokens"]: loss(r) for r in records})
    tokens = sorted(set().union(*per_variant))
    return tokens, [[p.get(t) for t in tokens] for p in per_variant]


def open_page(browser, server, tokens, path: str):  # noqa: F811 (browser: the imported fixture)
    context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    assert sign_in(page, f"{server.url}{path}", tokens["read"]).status == 200
    page.wait_for_function("() => [...document.querySelectorAll('canvas[data-series]')].every(c => Chart.getChart(c))")
    return context, page


def test_ablation_page_shows_the_variants_curves_and_the_result(server, tokens, browser, tmp_path):  # noqa: F811
    ablation_id, out = add_ablation(server, "succeeded")
    result = write_ablation_output(out, domains=DOMAINS, steps=60, eval_every=15)
    context, page = open_page(browser, server, tokens, f"/ablations/{ablation_id}")

    charts = page.evaluate(CHARTS_JS)
    assert set(charts) == {"chart-eval-loss", "chart-train-loss", "chart-domain-loss-0", "chart-domain-loss-1"}
    for chart in charts.values():
        tokens_trained, values = expected_series(out, chart["series"])
        assert [d["label"] for d in chart["datasets"]] == VARIANTS  # one dataset per variant
        assert chart["labels"] == tokens_trained and [d["data"] for d in chart["datasets"]] == values
        assert chart["x_type"] == "linear" and chart["x_max"] == tokens_trained[-1]  # x = tokens, not an index
        assert all(d["dashed"] == (chart["series"] == "train") for d in chart["datasets"])
    assert [charts[f"chart-domain-loss-{i}"]["series"] for i in range(2)] == ["eval:code", "eval:web"]

    rows = page.evaluate(TABLE_JS)
    assert rows == [[r["variant"], f"{r['tokens']:,}", f"{r['docs_kept']:,}",
                     *(f"{r['loss'][d]:.4f}" for d in DOMAINS), f"{r['overall']:.4f}"] for r in result["table"]]
    # The lowest loss of each column is marked: the last variant's (lower by 0.1 per variant).
    best = page.eval_on_selector_all("#ablation-table td.best", "tds => tds.map(td => td.closest('tr').dataset.variant)")
    assert best == ["full"] * 3
    leak = result["leakage"]
    assert " ".join(page.text_content("#leakage").split()).startswith(
        f"Held-out docs {leak['held_out_docs']}, removed from training pool {leak['removed_from_training_pool']}, "
        "near-duplicate pairs found 0")
    page.screenshot(path=str(tmp_path / "ablation.png"), full_page=True)
    context.close()


def test_running_ablation_curves_grow_then_the_result_appears(server, tokens, browser):  # noqa: F811
    ablation_id, out = add_ablation(server, "running")
    write_ablation_output(out, domains=DOMAINS, steps=20, eval_every=10, finished=False)
    context, page = open_page(browser, server, tokens, f"/ablations/{ablation_id}")
    train_points = "() => Chart.getChart(document.getElementById('chart-train-loss')).data.labels.length"
    assert page.evaluate(train_points) == 20 and page.query_selector("#ablation-table") is None

    # More steps and evaluations land on disk: the page picks them up without a reload.
    page.evaluate("window.firstLoad = true")
    write_ablation_output(out, domains=DOMAINS, steps=40, eval_every=10, finished=False)
    page.wait_for_function(f"() => ({train_points})() === 40", timeout=30_000)
    eval_chart = page.evaluate(CHARTS_JS)["chart-eval-loss"]
    assert eval_chart["labels"] == expected_series(out, "eval")[0] and len(eval_chart["labels"]) == 4
    assert page.evaluate("window.firstLoad === true")

    # It finishes: the page reloads itself into the result.
    result = write_ablation_output(out, domains=DOMAINS, steps=40, eval_every=10)
    with server.services.db.session() as s:
        s.execute(update(Ablation).where(Ablation.id == ablation_id)
                  .values(state="succeeded", phase="done", finished_at=utcnow()))
    page.wait_for_selector("#ablation-table", timeout=30_000)
    assert page.text_content("#ablation-head [data-field=state]") == "succeeded"
    assert [r[0] for r in page.evaluate(TABLE_JS)] == [r["variant"] for r in result["table"]]
    context.close()


def test_index_links_ablations(server, tokens, browser):  # noqa: F811
    ablation_id, _ = add_ablation(server, "failed")
    context = browser.new_context()
    page = context.new_page()
    assert sign_in(page, f"{server.url}/", tokens["read"]).status == 200
    row = page.locator(f"#ablations tr[data-ablation-id='{ablation_id}']")
    assert row.locator("[data-field=state]").text_content() == "failed"
    assert row.locator(".tag").all_text_contents() == VARIANTS
    row.locator("a").click()
    page.wait_for_url(f"{server.url}/ablations/{ablation_id}")
    assert page.goto(f"{server.url}/ablations/abl_0123456789abcdef").status == 404
    context.close()
