"""The ablation page in a real browser (headless Chromium, as tests/api/test_dashboard_browser.py):
its Chart.js charts hold one dataset per training run (variant, budget, seed) with the numbers of
the runs' eval.jsonl and metrics.jsonl; the loss-vs-budget SVG has one error bar per (variant,
budget) spanning mean ± sd of ablation.json's summary on the chart's own axis, for the domain
picked; the paired-difference table shows each interval and whether it exceeds the noise; the
result table matches ablation.json; a running ablation's curves grow in place until it finishes
and the page shows its result; an ablation from before seeds and budgets still renders. No Ray and no
runner: rows and output folders are written by the test (tests/api/test_ablations.py's writers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import update

from api.ids import new_id
from api.models import Ablation, Corpus, utcnow
from tests.api.conftest import live_server
from tests.api.test_ablations import (
    CONFIG,
    CONFIG19,
    VARIANTS,
    run_keys,
    write_ablation_output,
    write_legacy_output,
)
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
# One budget chart: its domain, y-axis ticks (value, pixel) and error bars (summary numbers, pixels).
BUDGET_JS = """(measure) => {
    const svg = document.getElementById(`budget-chart-${measure}`);
    const num = (el, a) => Number(el.getAttribute(a));
    return {domain: svg.dataset.domain,
            ticks: [...svg.querySelectorAll('text.tick[data-value]')].map(t => [Number(t.dataset.value), num(t, 'y') - 4]),
            bars: [...svg.querySelectorAll('g.errorbar')].map(g => {
                const bar = g.querySelector('line.bar'), dot = g.querySelector('circle');
                return {variant: g.dataset.variant, budget: g.dataset.budget, mean: Number(g.dataset.mean),
                        sd: g.dataset.sd === '' ? null : Number(g.dataset.sd), x: num(bar, 'x1'), x2: num(bar, 'x2'),
                        lo: num(bar, 'y1'), hi: num(bar, 'y2'), dot: num(dot, 'cy'), dot_x: num(dot, 'cx')};
            })};
}"""
DIFFERENCES_JS = """() => [...document.querySelectorAll('#ablation-differences tbody tr')].filter(tr => !tr.hidden).map(
    tr => [...tr.cells].map(td => td.textContent.trim()))"""


@pytest.fixture(scope="module")
def server(service_home, database_url):
    """The service with a reaper that stays idle during this module: the `running` ablation here
    has no actor, and this module needs no Ray."""
    with live_server(service_home, database_url, reap_interval_s=3600) as s:
        yield s


def add_ablation(server, state: str, config: dict = CONFIG19) -> tuple[str, Path]:
    corpus_id, ablation_id = new_id("cor"), new_id("abl")
    out_uri = server.services.storage.uri(f"ablations/{ablation_id}")
    with server.services.db.session() as s:
        s.add(Corpus(id=corpus_id, name="docs.jsonl", source="uri", uri="/data/docs.jsonl", size_bytes=1,
                     state="ready"))
        s.flush()
        s.add(Ablation(id=ablation_id, corpus_id=corpus_id, state=state, phase="train (1/3 done)", config=config,
                       out_uri=out_uri, started_at=utcnow()))
    return ablation_id, Path(out_uri)


def expected_series(out: Path, series: str, keys=None) -> tuple[list[int], list[list[float]]]:
    """(tokens, one loss list per training run) of a chart, straight from the runs' files (an
    empty list for a run that has not started)."""
    source, _, domain = series.partition(":")
    name = "metrics.jsonl" if source == "train" else "eval.jsonl"
    per_run = []
    for _, variant, budget, seed in keys or run_keys():
        path = out / "variants" / variant / "runs" / f"{budget}-seed{seed}" / name
        records = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
        loss = (lambda r: r["loss"]) if source == "train" else \
            (lambda r: r["domains"][domain]["loss"]) if domain else (lambda r: r["overall"]["loss"])
        per_run.append({r["tokens"]: loss(r) for r in records})
    tokens = sorted(set().union(*per_run))
    return tokens, [[p.get(t) for t in tokens] for p in per_run]


def check_error_bars(chart: dict, summary: list[dict], measure: str, domain: str) -> None:
    """One error bar per (variant, budget) of the summary, in its order, each spanning mean ± sd
    on the y axis the chart's ticks define (pixel = a + b * value; b < 0: a higher loss is drawn
    higher up), to a thousandth of a pixel."""
    rows = [r for r in summary if r["measure"] == measure and r["domain"] == domain]
    assert chart["domain"] == domain
    assert [(b["variant"], b["budget"]) for b in chart["bars"]] == [(r["variant"], r["budget"]) for r in rows]
    (v0, y0), (v1, y1) = chart["ticks"][0], chart["ticks"][-1]
    scale = (y1 - y0) / (v1 - v0)
    assert scale < 0 and len(chart["ticks"]) >= 3
    pixel = lambda v: y0 + scale * (v - v0)  # noqa: E731
    for (value, y) in chart["ticks"]:
        assert y == pytest.approx(pixel(value), abs=1e-3)
    for bar, row in zip(chart["bars"], rows):
        assert (bar["mean"], bar["sd"]) == (pytest.approx(row["mean"]), pytest.approx(row["sd"]))
        assert bar["lo"] == pytest.approx(pixel(row["mean"] - row["sd"]), abs=1e-3)
        assert bar["hi"] == pytest.approx(pixel(row["mean"] + row["sd"]), abs=1e-3)
        assert bar["dot"] == pytest.approx(pixel(row["mean"]), abs=1e-3)
        assert bar["x"] == bar["x2"] == bar["dot_x"]  # a vertical bar through its point
    # Budgets left to right in order of tokens (log scale), variants side by side at each.
    xs = {(b["variant"], b["budget"]): b["x"] for b in chart["bars"]}
    for variant in VARIANTS:
        assert xs[variant, "1x"] < xs[variant, "327680"] - 100
    assert xs["raw", "1x"] < xs["dedup", "1x"] < xs["full", "1x"] < xs["raw", "1x"] + 20


def difference_rows(summary: list[dict], domain: str) -> list[list[str]]:
    return [[r["variant"], r["budget"], r["measure"], r["domain"], str(d["n"]), f"{d['mean']:+.4f}",
             f"[{d['lo']:+.4f}, {d['hi']:+.4f}]", "yes" if d["exceeds_noise"] else "no"]
            for r in summary if r["domain"] == domain and (d := r["vs_baseline"])]


def open_page(browser, server, tokens, path: str):  # noqa: F811 (browser: the imported fixture)
    context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    assert sign_in(page, f"{server.url}{path}", tokens["read"]).status == 200
    page.wait_for_function("() => [...document.querySelectorAll('canvas[data-series]')].every(c => Chart.getChart(c))")
    return context, page


def test_ablation_page_shows_the_runs_curves_budget_chart_and_result(server, tokens, browser, tmp_path):  # noqa: F811
    ablation_id, out = add_ablation(server, "succeeded")
    result = write_ablation_output(out, domains=DOMAINS, eval_every=10)
    context, page = open_page(browser, server, tokens, f"/ablations/{ablation_id}")

    charts = page.evaluate(CHARTS_JS)
    assert set(charts) == {"chart-eval-loss", "chart-train-loss", "chart-domain-loss-0", "chart-domain-loss-1"}
    for chart in charts.values():
        tokens_trained, values = expected_series(out, chart["series"])
        assert [d["label"] for d in chart["datasets"]] == [k for k, *_ in run_keys()]  # one dataset per run
        assert chart["labels"] == tokens_trained and [d["data"] for d in chart["datasets"]] == values
        assert chart["x_type"] == "linear" and chart["x_max"] == tokens_trained[-1]  # x = tokens, not an index
        assert all(d["dashed"] == (chart["series"] == "train") for d in chart["datasets"])
    assert [charts[f"chart-domain-loss-{i}"]["series"] for i in range(2)] == ["eval:code", "eval:web"]

    # Loss vs budget: one error bar per (variant, budget), mean ± sd on the chart's axis; the
    # differences table: dedup's interval excludes 0 (-0.1 ± 0.025), full's (noisy seeds) does not.
    summary = result["summary"]
    for measure in ("loss", "novel_loss"):
        check_error_bars(page.evaluate(BUDGET_JS, measure), summary, measure, "overall")
    differences = page.evaluate(DIFFERENCES_JS)
    assert differences == difference_rows(summary, "overall") and len(differences) == 2 * 2 * 2
    assert {(r[0], r[7]) for r in differences} == {("dedup", "yes"), ("full", "no")}
    assert differences[0][:7] == ["dedup", "1x", "loss", "overall", "3", "-0.1000", "[-0.1248, -0.0752]"]
    # Another domain: both charts and the table follow the selector.
    page.select_option("#ablation-domain", "code")
    for measure in ("loss", "novel_loss"):
        check_error_bars(page.evaluate(BUDGET_JS, measure), summary, measure, "code")
    assert page.evaluate(DIFFERENCES_JS) == difference_rows(summary, "code")

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


def test_an_ablation_from_before_issue_19_still_renders(server, tokens, browser):  # noqa: F811
    """One budget, one seed: a point per variant without a bar's extent, no intervals, the table."""
    ablation_id, out = add_ablation(server, "succeeded", CONFIG)
    result = write_legacy_output(out, domains=DOMAINS)
    context, page = open_page(browser, server, tokens, f"/ablations/{ablation_id}")
    bars = page.evaluate(BUDGET_JS, "loss")["bars"]
    assert [(b["variant"], b["budget"], b["sd"]) for b in bars] == [(v, "163840", None) for v in VARIANTS]
    assert [b["mean"] for b in bars] == [pytest.approx(r["overall"]) for r in result["table"]]
    assert all(b["lo"] == b["hi"] == b["dot"] for b in bars)
    assert page.query_selector("#ablation-differences") is None and page.query_selector("#budget-chart-novel_loss") is None
    assert [r[0] for r in page.evaluate(TABLE_JS)] == VARIANTS
    keys = run_keys(budgets=("163840",), seeds=(7,))
    labels = page.evaluate(CHARTS_JS)["chart-eval-loss"]["datasets"]
    assert [d["label"] for d in labels] == [k for k, *_ in keys] and all(d["data"] for d in labels)
    context.close()


def test_running_ablation_curves_grow_then_the_result_appears(server, tokens, browser):  # noqa: F811
    ablation_id, out = add_ablation(server, "running")
    write_ablation_output(out, domains=DOMAINS, budget_steps={"1x": 20}, seeds=(1,), eval_every=10, finished=False)
    context, page = open_page(browser, server, tokens, f"/ablations/{ablation_id}")
    train_points = "() => Chart.getChart(document.getElementById('chart-train-loss')).data.labels.length"
    assert page.evaluate(train_points) == 20 and page.query_selector("#ablation-table") is None
    assert page.query_selector("#ablation-budgets") is None

    # More steps and evaluations land on disk: the page picks them up without a reload.
    page.evaluate("window.firstLoad = true")
    write_ablation_output(out, domains=DOMAINS, budget_steps={"1x": 40}, seeds=(1,), eval_every=10, finished=False)
    page.wait_for_function(f"() => ({train_points})() === 40", timeout=30_000)
    eval_chart = page.evaluate(CHARTS_JS)["chart-eval-loss"]
    assert eval_chart["labels"] == expected_series(out, "eval")[0] and len(eval_chart["labels"]) == 4
    assert page.evaluate("window.firstLoad === true")

    # It finishes: the page reloads itself into the result.
    result = write_ablation_output(out, domains=DOMAINS)
    with server.services.db.session() as s:
        s.execute(update(Ablation).where(Ablation.id == ablation_id)
                  .values(state="succeeded", phase="done", finished_at=utcnow()))
    page.wait_for_selector("#ablation-table", timeout=30_000)
    assert page.text_content("#ablation-head [data-field=state]") == "succeeded"
    assert [r[0] for r in page.evaluate(TABLE_JS)] == [r["variant"] for r in result["table"]]
    check_error_bars(page.evaluate(BUDGET_JS, "loss"), result["summary"], "loss", "overall")
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
