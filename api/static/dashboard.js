// Flywheel dashboard: draws the charts whose specs the server put into the page as JSON, and
// follows running jobs and ablations by polling the JSON API (the session cookie authenticates)
// every 2 s, stopping once nothing is queued or running.
"use strict";

(function () {
  const POLL_MS = 2000;
  const PALETTE = ["#3b6fd4", "#e0873a", "#3aa37a", "#b2509e", "#8a8f2f", "#d4493b", "#5a9fb8"];
  const LINE_COLORS = ["#2f9e6e", "#d08a00", "#c23b3b", "#7b2d8e"];

  const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US", {maximumFractionDigits: 2}));
  const compact = (v) => Number(v).toLocaleString("en-US", {notation: "compact", maximumFractionDigits: 1});
  const readJson = (id) => {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  };

  // --- charts ----------------------------------------------------------------------------------
  function chartConfig(spec) {
    let bars = 0, lines = 0;
    const datasets = spec.datasets.map((d) => {
      if (d.line) {
        const color = LINE_COLORS[lines++ % LINE_COLORS.length];
        return {type: "line", label: d.label, data: d.data, borderColor: color, backgroundColor: color,
                borderDash: [6, 4], borderWidth: 2, pointRadius: 0, pointStyle: "line", fill: false, order: 0};
      }
      const color = PALETTE[bars++ % PALETTE.length];
      // An ablation's curve with few points (its evaluations) shows them; a per-step one does not.
      const sparse = spec.x_scale === "linear" && d.data.filter((v) => v !== null).length <= 50;
      return {label: d.label, data: d.data, backgroundColor: spec.type === "line" ? color : color + "cc",
              borderColor: color, borderWidth: spec.type === "line" ? 2 : 1,
              pointRadius: spec.type === "line" && !sparse ? 0 : 3,
              pointStyle: spec.type === "line" ? (sparse ? "circle" : "line") : "rect", order: 1,
              borderDash: d.dashed ? [6, 4] : undefined, spanGaps: true};
    });
    // Counts (documents, clusters, entities) get whole-number ticks.
    const counts = spec.datasets.every((d) => d.data.every((v) => v === null || Number.isInteger(v)));
    const title = (text) => ({display: Boolean(text), text});
    return {
      type: spec.type,
      data: {labels: spec.labels, datasets},
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        plugins: {legend: {display: datasets.length > 1, position: "bottom",
                           labels: {usePointStyle: true, boxWidth: 10, boxHeight: 10}},
                  tooltip: {callbacks: {label: (c) => `${c.dataset.label}: ${fmt(c.parsed.y)}`}}},
        scales: {
          // Ablation loss curves: numeric labels (tokens trained) on a linear axis that ends at the
          // data, so that variants whose points fall at different token counts still line up.
          // Otherwise every category of a bar chart is named; a loss curve's steps may be skipped.
          x: spec.x_scale === "linear"
            ? {type: "linear", bounds: "data", min: 0, title: title(spec.x_title), grid: {display: false},
               ticks: {callback: (v) => compact(v)}}
            : {title: title(spec.x_title), grid: {display: false}, ticks: {autoSkip: spec.type === "line"}},
          y: {title: title(spec.y_title), grid: {color: "#eef0f4"}, beginAtZero: spec.y_zero !== false,
              ticks: {precision: counts ? 0 : undefined, callback: (v) => fmt(v)}},
        },
      },
    };
  }

  function drawCharts() {
    if (typeof Chart === "undefined") return;
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.color = "#4a5160";
    document.querySelectorAll('script[type="application/json"][data-chart-for]').forEach((el) => {
      const spec = JSON.parse(el.textContent);
      const canvas = document.getElementById(spec.id);
      if (canvas && !Chart.getChart(canvas)) new Chart(canvas, chartConfig(spec));
    });
  }

  // --- live progress ---------------------------------------------------------------------------
  function setField(scope, name, text) {
    const el = scope.querySelector(`[data-field="${name}"]`);
    if (el && el.textContent !== text) el.textContent = text;
    return el;
  }

  function setState(scope, state, prefix) {
    const el = setField(scope, "state", state);
    if (el) el.className = `badge ${prefix}-${state}`;
  }

  function setProgress(scope, progress) {
    const el = scope.querySelector('[data-field="progress"]');
    if (!el) return;
    el.style.width = `${(100 * progress).toFixed(1)}%`;
    el.parentElement.setAttribute("aria-valuenow", (100 * progress).toFixed(1));
  }

  function tags(obj) {
    const frag = document.createDocumentFragment();
    Object.entries(obj || {}).forEach(([k, v]) => {
      const s = document.createElement("span");
      s.className = "tag";
      s.textContent = `${k} ${fmt(v)}`;
      frag.appendChild(s);
    });
    return frag;
  }

  function poll(url, apply, isActive) {
    let timer = null;
    const tick = async () => {
      try {
        const r = await fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
        if (!r.ok) return;  // signed out or gone: stop following
        const body = await r.json();
        apply(body);
        if (isActive(body)) timer = setTimeout(tick, POLL_MS);
      } catch (e) {
        timer = setTimeout(tick, POLL_MS);  // a transient network error: try again
      }
    };
    timer = setTimeout(tick, POLL_MS);
    return () => clearTimeout(timer);
  }

  function followJob(page) {
    const head = document.getElementById("job-head");
    const active = (job) => page.active.includes(job.state);
    if (!active(page)) return;
    poll(`/v1/jobs/${page.job_id}`, (job) => {
      setState(head, job.state, "state");
      setField(head, "phase", job.phase || "");
      setProgress(head, job.progress);
      setField(head, "finished_at", (job.finished_at || "").slice(0, 19).replace("T", " "));
      const err = setField(head, "error", job.error || "");
      if (err) err.hidden = !job.error;
      job.stages.forEach((s) => {
        const row = document.querySelector(`#stages tr[data-position="${s.position}"]`);
        if (!row) return;
        setState(row, s.state, "stage");
        setField(row, "docs_in", fmt(s.docs_in));
        setField(row, "docs_out", fmt(s.docs_out));
        setField(row, "seconds", fmt(s.seconds));
        row.querySelector('[data-field="dropped"]').replaceChildren(tags(s.dropped));
      });
      // The funnel and charts come from stats.json, rendered by the server: fetch them once.
      if (job.state === "succeeded") window.location.reload();
    }, active);
  }

  function followJobs(page) {
    const rows = new Map([...document.querySelectorAll("#jobs tr[data-job-id]")].map((r) => [r.dataset.jobId, r]));
    const anyActive = (list) => list.items.some((j) => page.active.includes(j.state));
    const initiallyActive = [...rows.values()].some((r) => page.active.includes(r.querySelector('[data-field="state"]').textContent));
    if (!initiallyActive) return;
    poll("/v1/jobs?limit=100", (list) => {
      if (list.items.some((j) => !rows.has(j.id))) { window.location.reload(); return; }
      list.items.forEach((j) => {
        const row = rows.get(j.id);
        setState(row, j.state, "state");
        setField(row, "phase", j.phase || "");
        setProgress(row, j.progress);
        setField(row, "docs_in", fmt(j.docs_in));
        setField(row, "docs_out", fmt(j.docs_out));
        const pips = row.querySelector('[data-field="stages"]');
        pips.replaceChildren(...j.stages.map((s) => {
          const p = document.createElement("span");
          p.className = `pip pip-${s.state}`;
          p.title = `${s.name}: ${s.state}`;
          return p;
        }));
      });
    }, anyActive);
  }

  // One loss series of every variant against tokens trained, from `GET /v1/ablations/{id}`'s
  // curves: what api/routes/dashboard.py's curve_chart computes for the first render.
  function curveSeries(curves, series) {
    const [source, domain] = series.split(":");
    const lines = Object.entries(curves).map(([variant, c]) => {
      const points = new Map();
      c[source].forEach((p) => {
        if (p.tokens !== null) points.set(p.tokens, domain ? (p.domains[domain] ?? null) : p.loss);
      });
      return [variant, points];
    });
    const labels = [...new Set(lines.flatMap(([, points]) => [...points.keys()]))].sort((a, b) => a - b);
    return {labels, data: lines.map(([, points]) => labels.map((t) => (points.has(t) ? points.get(t) : null)))};
  }

  function followAblation(page) {
    const head = document.getElementById("ablation-head");
    const active = (a) => page.active.includes(a.state);
    if (!active(page)) return;
    poll(`/v1/ablations/${page.ablation_id}`, (a) => {
      setState(head, a.state, "state");
      setField(head, "phase", a.phase || "");
      const err = setField(head, "error", a.error || "");
      if (err) err.hidden = !a.error;
      // The result table and new domains' charts are rendered by the server: reload for them.
      const domains = Object.values(a.curves).flatMap((c) => c.eval.flatMap((p) => Object.keys(p.domains)));
      if (!active(a) || domains.some((d) => !page.domains.includes(d))) { window.location.reload(); return; }
      document.querySelectorAll("canvas[data-series]").forEach((canvas) => {
        const chart = Chart.getChart(canvas);
        if (!chart) return;
        const {labels, data} = curveSeries(a.curves, canvas.dataset.series);
        chart.data.labels = labels;
        chart.data.datasets.forEach((d, i) => { d.data = data[i] || []; });
        chart.update("none");
      });
    }, active);
  }

  // --- an ablation's loss vs budget, with error bars (inline SVG) ----------------------------
  // Chart.js has no error bars; this draws the summary of ablation.json (mean ± sd over seeds per
  // variant and budget) for one measure and domain: x = tokens trained on a log scale (budgets
  // are multiples), each variant's points nudged sideways so that their bars do not overlap.
  const SVG_NS = "http://www.w3.org/2000/svg";
  const BUDGET_BOX = {width: 560, height: 300, left: 60, right: 16, top: 30, bottom: 44, pad: 28};

  function svgEl(parent, tag, attrs, text) {
    const el = document.createElementNS(SVG_NS, tag);
    Object.entries(attrs).forEach(([k, v]) => el.setAttribute(k, v));
    if (text !== undefined) el.textContent = text;
    parent.appendChild(el);
    return el;
  }

  // About `count` round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi].
  function niceTicks(lo, hi, count) {
    const raw = (hi - lo) / count || Math.abs(hi) || 1;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw);
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toFixed(10)));
    return {ticks, digits: Math.max(0, -Math.floor(Math.log10(step)))};
  }

  function drawBudgetChart(svg, data, domain) {
    const B = BUDGET_BOX, measure = svg.dataset.measure;
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${B.width} ${B.height}`);
    svg.dataset.domain = domain;
    const rows = data.summary.filter((r) => r.measure === measure && r.domain === domain && r.mean !== null);
    if (!rows.length) {
      svgEl(svg, "text", {x: B.width / 2, y: B.height / 2, "text-anchor": "middle", class: "muted"}, "no values");
      return;
    }
    const variants = data.variants.filter((v) => rows.some((r) => r.variant === v));
    const budgets = data.budgets.filter((b) => rows.some((r) => r.budget === b.label));
    const logs = budgets.map((b) => Math.log(b.tokens));
    const [xmin, xmax] = [Math.min(...logs), Math.max(...logs)];
    const inner = B.width - B.left - B.right - 2 * B.pad;
    const dodge = (i) => (i - (variants.length - 1) / 2) * 7;
    const xOf = (b) => B.left + B.pad + (xmax > xmin ? (Math.log(b.tokens) - xmin) / (xmax - xmin) * inner : inner / 2);
    const ends = rows.flatMap((r) => [r.mean - (r.sd || 0), r.mean + (r.sd || 0)]);
    let [lo, hi] = [Math.min(...ends), Math.max(...ends)];
    const margin = (hi - lo) * 0.08 || Math.abs(hi) * 0.01 || 0.01;
    [lo, hi] = [lo - margin, hi + margin];
    const yOf = (v) => B.top + (hi - v) / (hi - lo) * (B.height - B.top - B.bottom);
    const bottom = B.height - B.bottom;

    const axes = svgEl(svg, "g", {class: "axes"});
    const {ticks, digits} = niceTicks(lo, hi, 5);
    ticks.forEach((v) => {
      const y = yOf(v);
      svgEl(axes, "line", {x1: B.left, x2: B.width - B.right, y1: y, y2: y, class: "grid-line"});
      svgEl(axes, "text", {x: B.left - 6, y: y + 4, "text-anchor": "end", class: "tick", "data-value": v},
            v.toFixed(digits));
    });
    svgEl(axes, "line", {x1: B.left, x2: B.width - B.right, y1: bottom, y2: bottom, class: "axis"});
    svgEl(axes, "line", {x1: B.left, x2: B.left, y1: B.top, y2: bottom, class: "axis"});
    budgets.forEach((b) => {
      const x = xOf(b);
      svgEl(axes, "line", {x1: x, x2: x, y1: bottom, y2: bottom + 4, class: "axis"});
      svgEl(axes, "text", {x, y: bottom + 17, "text-anchor": "middle", class: "tick"}, b.label);
      svgEl(axes, "text", {x, y: bottom + 30, "text-anchor": "middle", class: "tick muted"}, compact(b.tokens));
    });
    svgEl(axes, "text", {x: 14, y: (B.top + bottom) / 2, "text-anchor": "middle", class: "axis-title",
                         transform: `rotate(-90 14 ${(B.top + bottom) / 2})`}, "loss");

    variants.forEach((variant, i) => {
      const color = PALETTE[data.variants.indexOf(variant) % PALETTE.length];
      const g = svgEl(svg, "g", {class: "variant", "data-variant": variant, stroke: color, fill: color});
      const points = budgets.map((b) => [b, rows.find((r) => r.variant === variant && r.budget === b.label)])
        .filter(([, r]) => r);
      svgEl(g, "polyline", {points: points.map(([b, r]) => `${xOf(b) + dodge(i)},${yOf(r.mean)}`).join(" "),
                            fill: "none", "stroke-width": 2});
      points.forEach(([b, r]) => {
        const x = xOf(b) + dodge(i), sd = r.sd || 0;
        const bar = svgEl(g, "g", {class: "errorbar", "data-variant": variant, "data-budget": b.label,
                                   "data-mean": r.mean, "data-sd": r.sd === null ? "" : r.sd, "data-n": r.n});
        svgEl(bar, "title", {}, `${variant} at ${b.label}: ${r.mean.toFixed(4)}` +
                                (r.sd === null ? "" : ` ± ${r.sd.toFixed(4)}`) + ` (${r.n} seed${r.n === 1 ? "" : "s"})`);
        svgEl(bar, "line", {class: "bar", x1: x, x2: x, y1: yOf(r.mean - sd), y2: yOf(r.mean + sd), "stroke-width": 1.5});
        [r.mean - sd, r.mean + sd].forEach((v) => {
          svgEl(bar, "line", {class: "cap", x1: x - 4, x2: x + 4, y1: yOf(v), y2: yOf(v), "stroke-width": 1.5});
        });
        svgEl(bar, "circle", {cx: x, cy: yOf(r.mean), r: 3.5});
      });
    });
    const legend = svgEl(svg, "g", {class: "legend"});
    let lx = B.left;
    variants.forEach((variant) => {
      const color = PALETTE[data.variants.indexOf(variant) % PALETTE.length];
      svgEl(legend, "rect", {x: lx, y: 8, width: 10, height: 10, rx: 2, fill: color});
      svgEl(legend, "text", {x: lx + 14, y: 17, class: "tick"}, variant);
      lx += 24 + 7 * variant.length;
    });
  }

  // The budget charts and the summary/difference tables of one domain ("overall" or a domain).
  function showBudgetDomain(data, domain) {
    document.querySelectorAll("svg[data-measure]").forEach((svg) => drawBudgetChart(svg, data, domain));
    document.querySelectorAll("#ablation-summary tr[data-domain], #ablation-differences tr[data-domain]")
      .forEach((tr) => { tr.hidden = tr.dataset.domain !== domain; });
  }

  function budgetCharts() {
    const data = readJson("budget-data");
    const select = document.getElementById("ablation-domain");
    if (!data || !select) return;
    select.addEventListener("change", () => showBudgetDomain(data, select.value));
    showBudgetDomain(data, select.value);
  }

  document.addEventListener("DOMContentLoaded", () => {
    drawCharts();
    budgetCharts();
    const page = readJson("page-data");
    if (page && page.page === "job") followJob(page);
    if (page && page.page === "index") followJobs(page);
    if (page && page.page === "ablation") followAblation(page);
  });
})();
