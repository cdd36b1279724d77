"""The dashboard: server-rendered HTML over the same database and stats.json as the JSON API.

    GET /                corpora and jobs, with live state and per-stage progress
    GET /jobs/{id}       one job: the removal table and charts from its stats.json
    GET /ablations/{id}  one ablation: the variants' loss curves, the result table, the leakage check
    GET /training-jobs/{id}  one training job of any kind: loss, reward, KL, accuracy, margin and eval
                         curves from its metrics.jsonl/eval.jsonl; a red-team job's report

Sign-in: a page opened without a token shows a form that POSTs the token (a `read` token is
enough) to `/sign-in`, which checks it, puts it into an HttpOnly SameSite=Strict cookie and
sends the browser back to the page. The token never travels in a URL, so it stays out of access
logs, proxies' logs and history; a `?token=` left over from an old link is dropped by a redirect
and never honoured. The page's JavaScript then polls the JSON API with that cookie (see
api/auth.py). A bearer header works too.

Every chart's numbers reach the page twice: as JSON in `<script type="application/json"
id="chart-data-...">` (what dashboard.js draws) and as a table next to the canvas, so the
numbers can be read without JavaScript and checked by a browser test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from anyio import to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from api.auth import TOKEN_COOKIE, require_read, verify_token
from api.deps import SessionDep
from api.ids import TRAINING_JOB_ID
from api.models import ACTIVE_STATES, Ablation, Corpus, Job, TrainingJob
from api.posttrain_jobs import failure_rates, read_redteam_report, read_redteam_responses
from api.results import read_stats
from api.routes.ablations import AblationIdPath, ablation_out, ablation_summary
from api.routes.jobs import JobIdPath, job_out
from api.routes.training_jobs import training_job_out, training_job_summary
from curation.stats import REMOVAL_TABLE_HEADER, RunStats, removal_table_rows

router = APIRouter(include_in_schema=False)
TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
TEMPLATES.env.filters["num"] = lambda v: "–" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.2f}"
# Losses of ablation variants differ in the second or third decimal.
TEMPLATES.env.filters["loss"] = lambda v: "–" if v is None else f"{v:.4f}"
LIST_LIMIT = 100
PERCENTILES = ("10", "25", "50", "75", "90")
SIGN_IN_BODY_LIMIT = 16 * 1024  # a token and a path
REDTEAM_PAGE = 50  # red-team prompts shown per page


# --- sign-in ---------------------------------------------------------------------------------

def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)


def _sign_in_page(request: Request, status_code: int, message: str, next_path: str | None = None) -> HTMLResponse:
    """The sign-in form; it sends the browser back to `next_path` (default: this page)."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _page(request, "denied.html", status_code, message=message, sign_in=True,
                 next=_local_path(next_path or here))


def _without_token(request: Request) -> RedirectResponse:
    """The same page without `?token=`: a token in a URL is never honoured, only removed."""
    clean = request.url.remove_query_params("token")
    return RedirectResponse(clean.path + (f"?{clean.query}" if clean.query else ""), status_code=303)


def _sign_in(request: Request) -> Response | None:
    """A response that ends the request (redirect, or 401/403 page), or None to go on."""
    if "token" in request.query_params:
        return _without_token(request)
    scheme, value = get_authorization_scheme_param(request.headers.get("authorization"))
    credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=value) if scheme.lower() == "bearer" else None
    try:
        require_read(request, credentials)
    except HTTPException as e:
        if e.status_code == 401:
            return _sign_in_page(request, 401, "Sign in with an API token (a read token is enough).")
        return _denied(request, e)
    return None


def _denied(request: Request, e: HTTPException) -> HTMLResponse:
    """The error page for a 403 or 429, with the exception's headers (a 429's Retry-After)."""
    response = _page(request, "denied.html", e.status_code, message=e.detail)
    response.headers.update(e.headers or {})
    return response


def _local_path(target: str | None) -> str:
    """`target` if it is a path on this site, else "/" (no open redirect to another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _same_origin(request: Request) -> bool:
    """A browser's form POST from this site (or a client that sends no Origin at all)."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form, read up to SIGN_IN_BODY_LIMIT bytes ({} past it)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > SIGN_IN_BODY_LIMIT:
            return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _valid_token(request: Request, token: str) -> bool:
    """Checked like a bearer token: a wrong one counts against this client's failure limit."""
    return verify_token(request, token) is not None


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request) -> Response:
    """The sign-in form's target: a valid token becomes the HttpOnly cookie, then back to `next`."""
    services = request.app.state.services
    form = await _form(request)
    target = _local_path(form.get("next"))
    if not _same_origin(request):
        return _page(request, "denied.html", 403, message="Sign in from this site's own form.")
    response = RedirectResponse(target, status_code=303)
    if not services.settings.auth:  # nothing to remember: every request on loopback is admin
        return response
    token = form.get("token", "").strip()
    if not token:
        return _sign_in_page(request, 401, "Sign in with an API token (a read token is enough).", target)
    try:
        valid = await to_thread.run_sync(_valid_token, request, token)
    except HTTPException as e:  # 429: too many invalid tokens from this client
        return _denied(request, e)
    if not valid:
        return _sign_in_page(request, 401, "That token is invalid, expired or revoked.", target)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


# --- chart specs from stats.json -------------------------------------------------------------
# A spec is what dashboard.js turns into a Chart.js config: {id, kind, title, note, type,
# labels, datasets: [{label, data, line?, dashed?}], y_title, x_title}. `line` datasets are drawn
# as dashed lines over the bars (thresholds). Loss curves add `x_scale: "linear"` (the labels are
# numbers: tokens trained), `y_zero: false` and `series` (what dashboard.js recomputes it from).

def _spec(kind: str, title: str, labels: list, datasets: list[dict], *, suffix: str = "", note: str = "",
          x_title: str = "", y_title: str = "", chart_type: str = "bar") -> dict[str, Any]:
    return {"id": f"chart-{kind}{suffix}", "kind": kind, "title": title, "note": note, "type": chart_type,
            "labels": labels, "datasets": datasets, "x_title": x_title, "y_title": y_title}


def _bin_start(label: str) -> int:
    return int(label.split("-")[0])


def funnel_chart(stages: list[dict]) -> dict[str, Any]:
    labels = ["input"] + [s["name"] for s in stages]
    data = [stages[0]["docs_in"]] + [s["docs_out"] for s in stages]
    return _spec("funnel", "Documents remaining after each stage", labels,
                 [{"label": "documents", "data": data}], y_title="documents")


def cluster_size_chart(stages: list[dict]) -> dict[str, Any] | None:
    hists = {s["name"]: s["extra"]["cluster_size_histogram"] for s in stages
             if s.get("extra", {}).get("cluster_size_histogram")}
    if not hists:
        return None
    labels = sorted({b for h in hists.values() for b in h}, key=_bin_start)
    datasets = [{"label": name, "data": [h.get(b, 0) for b in labels]} for name, h in hists.items()]
    clusters = ", ".join(f"{s['name']}: {s['extra'].get('duplicate_clusters', 0):,} clusters"
                         for s in stages if s["name"] in hists)
    return _spec("clusters", "Duplicate cluster sizes", labels, datasets, note=clusters,
                 x_title="documents (or sentences) per cluster", y_title="clusters")


def duplicate_rate_chart(stages: list[dict]) -> dict[str, Any] | None:
    rates = {s["name"]: s["extra"]["duplicate_rate_by_domain"] for s in stages
             if s.get("extra", {}).get("duplicate_rate_by_domain")}
    if not rates:
        return None
    labels = sorted({d for r in rates.values() for d in r})
    datasets = []
    for name, by_domain in rates.items():
        # Document dedup counts duplicate documents; sentence dedup counts removed words.
        unit = "words" if any("removed_words" in v for v in by_domain.values()) else "documents"
        datasets.append({"label": f"{name} ({unit})",
                         "data": [round(100 * by_domain[d]["rate"], 4) if d in by_domain else None for d in labels]})
    return _spec("dup-rate", "Duplicate rate per domain", labels, datasets, y_title="% duplicate")


def perplexity_charts(stages: list[dict]) -> list[dict[str, Any]]:
    """One chart per domain: its percentiles as bars, the cut-offs and thresholds as lines."""
    charts = []
    for s in stages:
        domains = s.get("extra", {}).get("domains")
        if not isinstance(domains, dict):
            continue
        for domain, c in sorted(domains.items()):
            if not c.get("percentiles"):
                continue
            labels = [f"p{q}" for q in PERCENTILES]
            datasets = [{"label": "perplexity", "data": [c["percentiles"][q] for q in PERCENTILES]}]
            lines = {"head cut-off": c.get("bucket_cutoffs", {}).get("head"),
                     "middle cut-off": c.get("bucket_cutoffs", {}).get("middle"),
                     "drop above (percentile)": c.get("percentile_threshold"),
                     "drop above (absolute)": c.get("max_perplexity")}
            datasets += [{"label": k, "data": [round(v, 3)] * len(labels), "line": True}
                         for k, v in lines.items() if v is not None]
            counts = c.get("bucket_counts", {})
            note = (f"{c['scored']:,} of {c['docs']:,} documents scored; head {counts.get('head', 0):,}, "
                    f"middle {counts.get('middle', 0):,}, tail {counts.get('tail', 0):,}")
            charts.append(_spec("perplexity", f"Perplexity: {domain}", labels, datasets,
                                suffix=f"-{len(charts)}", note=note, y_title="perplexity"))
    return charts


def pii_chart(stages: list[dict]) -> dict[str, Any] | None:
    for s in stages:
        extra = s.get("extra", {})
        if "entities" in extra:
            entities = extra["entities"]
            note = (f"{extra.get('docs_with_pii', 0):,} documents with PII, "
                    f"{extra.get('bytes_redacted', 0):,} bytes redacted")
            return _spec("pii", "PII entities by type", list(entities),
                         [{"label": "entities", "data": list(entities.values())}], note=note, y_title="entities")
    return None


def mixture_chart(stages: list[dict]) -> dict[str, Any] | None:
    for s in stages:
        extra = s.get("extra", {})
        if "tokens_before" in extra and "tokens_after" in extra:
            before, after = extra["tokens_before"], extra["tokens_after"]
            labels = sorted(set(before) | set(after))
            note = f"temperature {extra.get('temperature')}, max epochs {extra.get('max_epochs')}"
            return _spec("mixture", "Mixture: tokens per domain before and after sampling", labels,
                         [{"label": "before sampling", "data": [before.get(d, 0) for d in labels]},
                          {"label": "after sampling", "data": [after.get(d, 0) for d in labels]}],
                         note=note, y_title="tokens")
    return None


def loss_chart(curve: Any) -> dict[str, Any] | None:
    """A training job's `loss_curve`: [{step, loss}, ...] or a plain list of losses."""
    if not curve:
        return None
    points = [(p["step"], p["loss"]) if isinstance(p, dict) else (i, p) for i, p in enumerate(curve)]
    return _spec("loss", "Training loss", [s for s, _ in points], [{"label": "loss", "data": [v for _, v in points]}],
                 x_title="step", y_title="loss", chart_type="line")


def curve_chart(curves: dict[str, dict], series: str, kind: str, title: str, *, suffix: str = "",
                dashed: bool = False) -> dict[str, Any]:
    """One line per variant of an ablation's loss against tokens trained. `series`: "train"
    (training loss), "eval" (held-out loss over all domains) or "eval:<domain>". dashboard.js
    computes the same from `GET /v1/ablations/{id}` while the ablation runs (curveSeries)."""
    source, _, domain = series.partition(":")
    lines = {variant: {p["tokens"]: p["domains"].get(domain) if domain else p["loss"]
                       for p in c[source] if p["tokens"] is not None}
             for variant, c in curves.items()}
    labels = sorted({t for points in lines.values() for t in points})
    datasets = [{"label": v, "data": [points.get(t) for t in labels], "dashed": dashed} for v, points in lines.items()]
    spec = _spec(kind, title, labels, datasets, suffix=suffix, x_title="tokens trained", y_title="loss",
                 chart_type="line")
    return {**spec, "x_scale": "linear", "y_zero": False, "series": series}


def eval_domains(curves: dict[str, dict]) -> list[str]:
    """The domains evaluated so far (before ablation.json names them)."""
    return sorted({d for c in curves.values() for p in c["eval"] for d in p["domains"]})


def ablation_charts(curves: dict[str, dict], domains: list[str]) -> list[dict[str, Any]]:
    return [curve_chart(curves, "eval", "eval-loss", "Held-out loss (all domains) vs tokens trained"),
            curve_chart(curves, "train", "train-loss", "Training loss vs tokens trained", dashed=True),
            *(curve_chart(curves, f"eval:{d}", "domain-loss", f"Held-out loss: {d}", suffix=f"-{i}")
              for i, d in enumerate(domains))]


def best_losses(table: list[dict[str, Any]], domains: list[str]) -> dict[str, float]:
    """The lowest loss of each table column (domains and "overall"), to mark the winning variant."""
    columns = {d: [r["loss"].get(d) for r in table] for d in domains}
    columns["overall"] = [r["overall"] for r in table]
    return {k: min(v for v in values if v is not None) for k, values in columns.items()
            if any(v is not None for v in values)}


# A training job's series (api.posttrain_jobs.metric_curves names) drawn together, in this order:
# (kind, title, y axis, the series names it takes). A series goes to the first chart that takes it;
# bookkeeping series (grad_norm, aux_loss, ...) stay in the JSON API only.
TRAINING_CHARTS = (
    ("train-loss", "Loss: training and held-out", "loss (nats/token)", r"^(eval_)?(overall_)?loss$"),
    ("reward", "Reward (reward-model score, DPO's implicit reward)", "reward", r"reward|score"),
    ("kl", "KL to the reference (and DPO's per-token drift)", "nats", r"^(eval_)?(kl|drift)"),
    ("accuracy", "Preference accuracy (chosen ranked above rejected)", "accuracy", r"accuracy"),
    ("margin", "Reward margin (chosen - rejected)", "margin", r"^(eval_)?margin(_mean|_p05|_p50|_p95)?$"),
    ("clip", "PPO clip fraction", "fraction", r"clip_frac"),
    ("value-loss", "PPO value loss", "loss", r"value_loss"),
    ("entropy", "Policy entropy", "nats", r"entropy"),
    ("length", "Response length", "tokens", r"response_len|length_mean"),
    ("diversity", "Diversity (distinct n-grams)", "fraction", r"distinct"),
)


def training_charts(curves: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One line chart per TRAINING_CHARTS entry with series present, against the step; eval series
    (evaluated every few steps) share the step axis with the per-step ones."""
    taken: set[str] = set()
    charts = []
    for kind, title, y_title, pattern in TRAINING_CHARTS:
        names = [n for n in curves if n not in taken and re.search(pattern, n)]
        if not names:
            continue
        taken.update(names)
        series = {n: {p["step"]: p["value"] for p in curves[n]} for n in names}
        labels = sorted({step for points in series.values() for step in points})
        datasets = [{"label": n, "data": [points.get(step) for step in labels], "dashed": n.startswith("eval_")}
                    for n, points in series.items()]
        spec = _spec(kind, title, labels, datasets, x_title="step", y_title=y_title, chart_type="line")
        charts.append({**spec, "x_scale": "linear", "y_zero": False})
    return charts


def failure_rate_chart(report: dict[str, Any]) -> dict[str, Any] | None:
    """A red-team report's failure rate per category, as bars (percent)."""
    rates = failure_rates(report)
    if not rates:
        return None
    overall = report.get("overall") or {}
    note = f"{overall.get('failed', '?')} of {overall.get('prompts', '?')} prompts failed"
    return _spec("redteam", "Red-team failure rate by category", list(rates),
                 [{"label": "% failed", "data": [None if v is None else round(100 * v, 2) for v in rates.values()]}],
                 note=note, y_title="% of prompts failed")


def stats_charts(stats: dict[str, Any]) -> list[dict[str, Any]]:
    stages = stats.get("stages") or []
    if not stages:
        return []
    charts = [funnel_chart(stages), cluster_size_chart(stages), duplicate_rate_chart(stages),
              *perplexity_charts(stages), pii_chart(stages), mixture_chart(stages)]
    return [c for c in charts if c is not None]


# --- pages -----------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep) -> Response:
    if (stop := _sign_in(request)) is not None:
        return stop
    jobs = [job_out(j).model_dump(mode="json")
            for j in session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id).limit(LIST_LIMIT))]
    corpora = session.scalars(select(Corpus).order_by(Corpus.created_at.desc(), Corpus.id).limit(LIST_LIMIT)).all()
    ablations = [ablation_summary(a).model_dump(mode="json") for a in
                 session.scalars(select(Ablation).order_by(Ablation.created_at.desc(), Ablation.id).limit(LIST_LIMIT))]
    training_jobs = [training_job_summary(t).model_dump(mode="json") for t in session.scalars(
        select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id).limit(LIST_LIMIT))]
    return _page(request, "index.html", jobs=jobs, corpora=corpora, ablations=ablations, training_jobs=training_jobs,
                 active=list(ACTIVE_STATES))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: JobIdPath, request: Request, session: SessionDep) -> Response:
    if (stop := _sign_in(request)) is not None:
        return stop
    row = session.get(Job, job_id)
    if row is None:
        return _page(request, "denied.html", 404, message=f"No job {job_id}.")
    job = job_out(row).model_dump(mode="json")
    stats = read_stats(row.output_uri) if row.state == "succeeded" else None
    funnel: list[tuple[str, ...]] = []
    charts: list[dict[str, Any]] = []
    problem = None
    if stats is not None:
        try:
            funnel = removal_table_rows(RunStats.from_json(stats))
        except (KeyError, TypeError, ValueError) as e:
            problem = f"stats.json does not add up: {e}"
        charts = stats_charts(stats)
    curve = loss_chart(job.get("loss_curve") or (stats or {}).get("loss_curve"))
    if curve is not None:
        charts.append(curve)
    return _page(request, "job.html", job=job, stats=stats, funnel=funnel, funnel_header=REMOVAL_TABLE_HEADER,
                 charts=charts, problem=problem, active=list(ACTIVE_STATES))


@router.get("/ablations/{ablation_id}", response_class=HTMLResponse)
def ablation_page(ablation_id: AblationIdPath, request: Request, session: SessionDep) -> Response:
    if (stop := _sign_in(request)) is not None:
        return stop
    row = session.get(Ablation, ablation_id)
    if row is None:
        return _page(request, "denied.html", 404, message=f"No ablation {ablation_id}.")
    ablation = ablation_out(row).model_dump(mode="json")
    domains = ablation["domains"] or eval_domains(ablation["curves"])
    return _page(request, "ablation.html", ablation=ablation, domains=domains,
                 charts=ablation_charts(ablation["curves"], domains),
                 best=best_losses(ablation["table"] or [], domains), active=list(ACTIVE_STATES))


@router.get("/training-jobs/{job_id}", response_class=HTMLResponse)
def training_job_page(job_id: str, request: Request, session: SessionDep) -> Response:
    """A training job of any kind: its curves; for a red-team job the report and a page of its
    prompts (`?offset=`). The id is checked after sign-in: a caller without a token learns nothing."""
    if (stop := _sign_in(request)) is not None:
        return stop
    row = session.get(TrainingJob, job_id) if re.match(TRAINING_JOB_ID, job_id) else None
    if row is None:
        return _page(request, "denied.html", 404, message=f"No training job {job_id}.")
    job = training_job_out(row).model_dump(mode="json")
    charts = training_charts(job["curves"])
    report, responses = None, None
    if row.kind == "redteam":
        report = read_redteam_report(row.out_uri)
        if report is not None:
            chart = failure_rate_chart(report)
            charts = ([chart] if chart else []) + charts
            offset = request.query_params.get("offset", "0")
            offset = int(offset) if offset.isdigit() else 0
            responses = read_redteam_responses(row.out_uri, REDTEAM_PAGE, offset)
    return _page(request, "training_job.html", job=job, charts=charts, report=report, responses=responses,
                 rates=failure_rates(report) if report else {}, page_size=REDTEAM_PAGE, active=list(ACTIVE_STATES))
