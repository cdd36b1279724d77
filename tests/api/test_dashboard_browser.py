"""The dashboard in a real browser: the service (uvicorn + embedded Ray) runs one job with a
dedup, perplexity, PII and mixture stage to the end; headless Chromium (Debian's, driven by
Playwright) signs in with the sign-in form (a POST: no token in any URL), loads the job's page, and checks that the funnel table
and every Chart.js chart show the numbers of the job's stats.json. A screenshot is kept in the
test's tmp folder (and copied to build/dashboard.png for the README when build/ exists)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from curation.lm.train import train_lm
from tests.api.conftest import live_server, wait_for, write_jsonl

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
README_SHOT = Path(__file__).resolve().parents[2] / "build" / "dashboard.png"
TERMINAL = ("succeeded", "failed", "cancelled")
WORDS = {
    "web": "price shop deal online free click offer today best new buy cart order sale ship fast".split(),
    "wiki": "river city history century empire language species born known region war north king early".split(),
}


def documents(seed: int = 3) -> list[dict]:
    """Two domains; near-duplicate clusters (one word changed) of sizes 2 and 4; some e-mails,
    phone numbers and IPs."""
    rng = random.Random(seed)
    docs = []
    for i in range(120):
        domain = "wiki" if i % 3 == 0 else "web"
        text = " ".join(rng.choice(WORDS[domain]) for _ in range(40 + i % 11))
        if i % 7 == 0:
            text += f" Write to user{i}@example.com or call (212) 555-{1000 + i:04d}."
        if i % 10 == 0:
            text += f" Host 10.0.{i}.7 answered."
        docs.append({"id": f"d{i:03}", "text": text, "domain": domain})
    for i in range(12):
        source = docs[i * 5 + i % 2]  # both domains
        for copy in range(1 if i % 2 else 3):
            words = source["text"].split()
            words[5 + copy] = "changed"
            docs.append({"id": f"n{i:02}{copy}", "text": " ".join(words), "domain": source["domain"]})
    return docs


@pytest.fixture(scope="module")
def rich_job(ray_local, server, admin) -> str:
    """The id of a job just submitted, whose stats.json will have every chart's data."""
    # Inside the allowed roots: a job's model files are checked against them like any URI.
    folder = server.settings.home / "allowed" / "dash"
    folder.mkdir(parents=True, exist_ok=True)
    records = documents()
    path = write_jsonl(folder / "mixed.jsonl", records)
    models = {}
    for domain in WORDS:
        write_jsonl(folder / f"{domain}-lm.jsonl", [r for r in records if r["domain"] == domain])
        train_lm(domain, str(folder / f"{domain}-lm.jsonl"), folder / f"{domain}.arpa", order=3)
        models[domain] = str(folder / f"{domain}.arpa")
    with open(path, "rb") as f:
        corpus = admin.post("/v1/corpora", files={"file": ("mixed.jsonl", f)}).json()
    config = {"seed": 11, "stages": [
        # Keeper: the longest copy. (A job's config comes back with every default set, so the
        # default `quality_score` would be required as a column.)
        {"name": "minhash_dedup", "threshold": 0.7, "num_perm": 64, "partitions": 1, "write_index": False,
         "quality_column": "n_tokens"},
        {"name": "perplexity", "models": models, "drop_above_percentile": 95},
        {"name": "pii", "entities": ["EMAIL", "PHONE", "IP"]},
        {"name": "mixture", "temperature": 2.0, "max_epochs": 1.0},
    ]}
    r = admin.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "config": config})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def finished_job(rich_job, reader) -> tuple[dict, dict]:
    job = wait_for(lambda: (j := reader.get(f"/v1/jobs/{rich_job}").json())["state"] in TERMINAL and j, 240)
    assert job["state"] == "succeeded", job["error"]
    return job, reader.get(f"/v1/jobs/{rich_job}/stats").json()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def expected_funnel(stats: dict) -> list[list[str]]:
    stages = stats["stages"]
    tokens_in = stages[0]["tokens_in"]
    rows = [[s["name"], s["method"], f"{s['docs_in'] - s['docs_out']:,}", f"{s['tokens_in'] - s['tokens_out']:,}",
             f"{100 * (s['tokens_in'] - s['tokens_out']) / tokens_in:.2f}%"] for s in stages]
    last = stages[-1]
    rows.append(["total", "", f"{stages[0]['docs_in'] - last['docs_out']:,}",
                 f"{tokens_in - last['tokens_out']:,}", f"{100 * (tokens_in - last['tokens_out']) / tokens_in:.2f}%"])
    return rows


def expected_charts(stats: dict) -> dict[str, tuple[list, list[list]]]:
    """chart kind (+ index) -> (labels, one value list per dataset), straight from stats.json."""
    by_name = {s["name"]: s for s in stats["stages"]}
    remaining = [stats["stages"][0]["docs_in"]] + [s["docs_out"] for s in by_name.values()]
    out = {"funnel": (["input"] + list(by_name), [remaining])}
    minhash = by_name["minhash_dedup"]["extra"]
    hist = minhash["cluster_size_histogram"]
    out["clusters"] = (list(hist), [list(hist.values())])
    rates = minhash["duplicate_rate_by_domain"]
    out["dup-rate"] = (sorted(rates), [[round(100 * rates[d]["rate"], 4) for d in sorted(rates)]])
    for i, (domain, c) in enumerate(sorted(by_name["perplexity"]["extra"]["domains"].items())):
        thresholds = [c["bucket_cutoffs"]["head"], c["bucket_cutoffs"]["middle"], c["percentile_threshold"]]
        out[f"perplexity-{i}"] = (["p10", "p25", "p50", "p75", "p90"],
                                  [[c["percentiles"][q] for q in ("10", "25", "50", "75", "90")]]
                                  + [[round(t, 3)] * 5 for t in thresholds])
    entities = by_name["pii"]["extra"]["entities"]
    out["pii"] = (list(entities), [list(entities.values())])
    mix = by_name["mixture"]["extra"]
    domains = sorted(mix["tokens_before"])
    out["mixture"] = (domains, [[mix["tokens_before"][d] for d in domains], [mix["tokens_after"][d] for d in domains]])
    return out


def sign_in(page, url: str, token: str):
    """Open `url`, meet the sign-in form (401), submit `token`; returns the page's response."""
    assert page.goto(url).status == 401
    page.fill("#sign-in input[name=token]", token)
    with page.expect_navigation() as navigation:
        page.click("#sign-in button[type=submit]")
    return navigation.value


CHART_VALUES_JS = """() => [...document.querySelectorAll('canvas[data-chart]')].map(c => {
    const chart = Chart.getChart(c);
    return {id: c.id, drawn: !!chart, labels: chart ? chart.data.labels : null,
            data: chart ? chart.data.datasets.map(d => d.data) : null,
            table: [...document.querySelectorAll(`table[data-chart-table="${c.id}"] tbody tr`)].map(
                tr => [...tr.querySelectorAll('td')].map(
                    td => td.dataset.value === '' ? null : Number(td.dataset.value))),
            json: JSON.parse(document.getElementById('chart-data-' + c.id.slice(6)).textContent)};
})"""


def test_job_page_follows_the_job_then_shows_its_stats(server, tokens, rich_job, reader, browser, tmp_path):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    assert sign_in(page, f"{server.url}/jobs/{rich_job}", tokens["read"]).status == 200
    assert page.url == f"{server.url}/jobs/{rich_job}"  # back on the page, no token in any URL
    cookie = next(c for c in context.cookies() if c["name"] == "flywheel_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.text_content("#job-head [data-field=state]") in ("queued", "running")

    # The page polls the API (with the cookie): a stage's row turns done in this same document...
    page.evaluate("window.firstLoad = true")
    page.wait_for_function("() => document.querySelector('#stages tr[data-position=\"1\"] [data-field=state]')"
                           ".textContent === 'done'", timeout=240_000)
    assert page.evaluate("window.firstLoad === true && !document.getElementById('funnel-table')")
    # ...and it reloads itself once the job has succeeded, now with the funnel and the charts.
    page.wait_for_selector("#funnel-table", timeout=240_000)
    job = reader.get(f"/v1/jobs/{rich_job}").json()
    assert job["state"] == "succeeded", job["error"]
    stats = reader.get(f"/v1/jobs/{rich_job}/stats").json()
    assert page.locator("#stages [data-field=state]").all_text_contents() == ["done"] * 5

    rows = page.eval_on_selector_all("#funnel-table tbody tr",
                                     "trs => trs.map(tr => [...tr.cells].map(td => td.textContent.trim()))")
    assert rows == expected_funnel(stats)
    assert page.text_content("#job-head [data-field=state]") == "succeeded"

    page.wait_for_function("() => document.querySelectorAll('canvas[data-chart]').length > 0 && "
                           "[...document.querySelectorAll('canvas[data-chart]')].every(c => Chart.getChart(c))")
    charts = {c["id"].removeprefix("chart-"): c for c in page.evaluate(CHART_VALUES_JS)}
    expected = expected_charts(stats)
    assert set(charts) == set(expected)
    for kind, (labels, values) in expected.items():
        c = charts[kind]
        assert c["drawn"] and c["labels"] == labels, kind
        assert c["data"] == values and c["json"]["labels"] == labels, kind
        assert c["table"] == [list(row) for row in zip(*values)], kind

    # The cookie lets the page's JavaScript read the API, and never write.
    status = page.evaluate("""async (id) => [(await fetch('/v1/jobs/' + id)).status,
                                            (await fetch('/v1/jobs/' + id + '/cancel', {method: 'POST'})).status]""",
                           rich_job)
    assert status == [200, 401]

    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    if README_SHOT.parent.is_dir():
        shutil.copyfile(tmp_path / "dashboard.png", README_SHOT)
    context.close()


def test_index_lists_jobs_and_corpora_and_needs_a_token(server, tokens, finished_job, browser, tmp_path):
    job, _ = finished_job
    context = browser.new_context(viewport={"width": 1360, "height": 800})
    page = context.new_page()
    assert sign_in(page, f"{server.url}/", "fw_not-a-token").status == 401
    assert "invalid" in page.text_content("main")
    # A token in the URL is dropped by a redirect and never signs in.
    assert page.goto(f"{server.url}/?token={tokens['read']}").status == 401 and page.url == f"{server.url}/"
    assert sign_in(page, f"{server.url}/", tokens["read"]).status == 200 and page.url == f"{server.url}/"
    row = page.locator(f"#jobs tr[data-job-id='{job['id']}']")
    assert row.locator("[data-field=state]").text_content() == "succeeded"
    assert row.locator("[data-field=docs_out]").text_content() == f"{job['docs_out']:,}"
    assert page.locator("#corpora tr[data-corpus-id]").count() >= 1
    assert page.goto(f"{server.url}/jobs/job_0123456789abcdef").status == 404
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    context.close()


def test_no_auth_mode_drops_the_token_and_sets_no_cookie(service_home, database_url):
    with live_server(service_home, database_url, auth=False) as srv, srv.client() as c:
        r = c.get("/jobs/job_0123456789abcdef?token=anything&x=1", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/jobs/job_0123456789abcdef?x=1"
        assert "set-cookie" not in r.headers
        assert c.get("/").status_code == 200
