"""The perplexity filter against plain KenLM on real text vs garbage; throughput of the LM
and heuristic filters, one process (= docs/s per core).

    .venv/bin/python benchmarks/filters_lm.py [--lm web=build/demo-corpus/lm/web.arpa ...]
        [--markdown benchmarks/filters_lm.md] [--mb 10] [--order 5] [--docs 5000]

Separation (`benchmarks/lm_garbage.py` builds the labelled set, offline and seeded): real
chunks of five sources the LMs were not trained on, and six kinds of garbage. For each LM
(default: the demo's web and books models, trained from `build_reference_texts` first if
missing) and each scorer on the same documents:
- stage: `DomainModel(...).perplexity`, the stage's default score, and with score="cc_net";
- kenlm plain: what a user would write, `kenlm.Model(path).perplexity(" ".join(doc.split()))`;
- kenlm doc: the same on the stage's tokens (whole document as one sentence), to tell the
  tokenizer's effect from the formula's.
ROC AUC (higher score = garbage) overall and per kind, and the share of garbage and of real
text the stage's own drop rule removes (its `calibrate_domain` and `Marker`, fed each
scorer's values: drop above the 75th/90th/95th percentile of the mixed set's scores).

Throughput, on synthetic data made here: prose is ~2 KB documents sampled from a word bigram
Markov chain fitted on the English that ships with the interpreter (`pydoc_data.topics` and
stdlib docstrings, ~1.8 MB); code is the standard library's `.py` files. Measured in CPU
seconds of this process (wall time on a shared machine measures the neighbours too):
`train_lm` on `--mb` MB of prose (MB/s, n-grams, peak RSS), perplexity scoring of held-out
prose, shuffled-word prose and code, and the heuristics stage.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import resource
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lm_garbage  # noqa: E402  (benchmarks/lm_garbage.py: the labelled set)

from curation.lm import train_lm  # noqa: E402
from curation.lm.perplexity import DomainModel, perplexity  # noqa: E402
from curation.lm.tokens import tokenize_lines  # noqa: E402
from curation.stages.base import RunContext  # noqa: E402
from curation.stages.heuristics import HeuristicFilter, HeuristicParams  # noqa: E402
from curation.stages.perplexity import Marker, PerplexityParams, calibrate_domain  # noqa: E402


def stdlib_prose() -> str:
    """English shipped with the interpreter: the reference topics and stdlib docstrings (~1.8 MB)."""
    import ast
    import pydoc_data.topics

    parts = [" ".join(t.split()) for _, t in sorted(pydoc_data.topics.topics.items())]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("**/*.py")):
        if {"test", "tests", "site-packages", "idle_test"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(" ".join(doc.split()))
    return " ".join(parts)


def markov_prose(source: str, n_docs: int, seed: int, doc_chars: int = 2000) -> list[str]:
    """~2 KB documents sampled from a word bigram chain over `source`, one sentence per line.

    A bigram chain keeps the vocabulary and word statistics of the source but makes new
    higher-order n-grams, so the n-gram counts grow with the corpus as with real text.
    """
    words = source.split()
    chain: dict[str, list[str]] = defaultdict(list)
    for a, b in zip(words, words[1:]):
        chain[a].append(b)
    keys = sorted(chain)
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        word = rng.choice(keys)
        lines, line, size = [], [], 0
        while size < doc_chars:
            word = rng.choice(chain.get(word) or keys)
            line.append(word)
            size += len(word) + 1
            if word.endswith(".") and len(line) > 8:
                lines.append(" ".join(line))
                line = []
        lines.append(" ".join(line))
        docs.append("\n".join(lines))
    return docs


def stdlib_code(n_docs: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.append(text[:8000])
        if len(docs) == n_docs:
            break
    return docs


def shuffled(docs: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for d in docs:
        words = d.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


# ----------------------------------------------------------------------------- separation

PERCENTILES = (75, 90, 95)


def auc(real: np.ndarray, garbage: np.ndarray) -> float:
    """P(a garbage document scores above a real one), ties counted half (Mann-Whitney U)."""
    values = np.concatenate([real, garbage])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties averaged
    n = len(garbage)
    return float((ranks[len(real):].sum() - n * (n + 1) / 2) / (len(real) * n))


def stage_drops(values: np.ndarray, calibrate_on: np.ndarray, percentile: float) -> np.ndarray:
    """Which documents the stage's own calibration and marking drop, given their scores: the
    threshold is calibrated on the documents of `calibrate_on` (a mix of real and garbage at a
    chosen ratio: the "corpus") and applied to all, so every garbage document counts."""
    params = PerplexityParams(models={"eval": "unused"}, drop_above_percentile=percentile)

    def table(v: np.ndarray) -> pa.Table:
        return pa.table({"domain": ["eval"] * len(v), "perplexity": pa.array(v, pa.float64())})
    entry = json.loads(calibrate_domain(table(values[calibrate_on]), params)["calibration"][0].as_py())
    return np.asarray(Marker({"eval": entry}, params)(table(values))["_reason"].to_pylist()) != ""


def scorers(model: DomainModel) -> dict[str, Callable[[str], float]]:
    """Each scorer as a function of a document, all on the same loaded model."""
    def kenlm_doc(text: str) -> float:
        return model.model.perplexity(" ".join(w for line in tokenize_lines(text, model.kind) for w in line))
    return {
        "stage (default: cc_net_digits)": lambda t: perplexity(model.model, t, model.kind, "cc_net_digits"),
        "stage, score=cc_net (before)": lambda t: perplexity(model.model, t, model.kind, "cc_net"),
        "kenlm plain": lambda t: model.model.perplexity(" ".join(t.split())),
        "kenlm doc, stage tokens": kenlm_doc,
    }


@dataclass(frozen=True)
class LM:
    name: str
    path: str
    reference: str | None = None  # its training text (JSONL), to measure the overlap
    exclude: tuple[str, ...] = ()  # real sources it was trained on: left out of its set
    domain: str = "web"  # picks the tokenizer when the model has no record (prose)
    about: str = ""  # where it comes from, if not the path


def judge(lm: LM, seed: int, per_source: int, per_kind: int) -> dict:
    """Every scorer of `lm` on its labelled set: AUCs, drop shares, docs/s."""
    real, garbage = lm_garbage.build(seed, per_source, per_kind, lm.exclude)
    docs = real + garbage
    kinds = np.array([e.kind for e in docs])
    is_garbage = np.array([e.garbage for e in docs])
    # The drop rule needs a corpus: all real documents and garbage as 25% (or 10%) of it.
    in_mix = {}
    for share in (0.25, 0.10):
        ids = {id(e) for e in lm_garbage.mix(real, garbage, share, seed)}
        in_mix[share] = np.array([id(e) in ids for e in docs])
    out = {"real": len(real), "garbage": len(garbage), "sources": sorted({e.kind for e in real}),
           "fingerprint": hashlib.sha1("\0".join(e.text for e in docs).encode()).hexdigest()[:10],
           "mix_sizes": {share: int(m.sum()) for share, m in in_mix.items()}, "overlap": None, "rows": {}}
    if lm.reference:
        from curation.lm.train import read_texts
        out["overlap"] = lm_garbage.overlap(real, list(read_texts(lm.reference)))
    model = DomainModel(lm.path, lm.domain)
    for name, score in scorers(model).items():
        values, cpu = None, float("inf")
        for _ in range(3):  # the fastest of three: the first pays page faults, neighbours steal caches
            t0 = time.process_time()
            values = np.array([score(e.text) for e in docs])
            cpu = min(cpu, time.process_time() - t0)
        row = {"docs/s": len(docs) / cpu, "auc": {"overall": auc(values[~is_garbage], values[is_garbage])}, "drops": {}}
        for kind in lm_garbage.GARBAGE_KINDS:
            row["auc"][kind] = auc(values[~is_garbage], values[kinds == kind])
        for share, mask in in_mix.items():
            for q in PERCENTILES:
                dropped = stage_drops(values, mask, q)
                cell = {"real": dropped[~is_garbage].mean(), "garbage": dropped[is_garbage].mean()}
                for k in (*lm_garbage.GARBAGE_KINDS, *out["sources"]):
                    cell[k] = dropped[kinds == k].mean()
                row["drops"][(share, q)] = cell
        out["rows"][name] = row
    return out


def separation_tables(results: dict[str, dict]) -> list[str]:
    """Markdown tables of the `judge` results of each LM (printed as they are, too)."""
    kinds = lm_garbage.GARBAGE_KINDS
    sources = list(lm_garbage.REAL_SOURCES)

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{x:.1%}"
    lines = ["ROC AUC, higher score = garbage (1.0: every garbage document above every real one; docs/s: "
             "scoring the set, per CPU second):", "",
             "| LM | scorer | overall | " + " | ".join(kinds) + " | docs/s |",
             "|---|---|---:|" + "---:|" * len(kinds) + "---:|"]
    for lm, res in results.items():
        for name, row in res["rows"].items():
            cells = " | ".join(f"{row['auc'][k]:.3f}" for k in ("overall", *kinds))
            lines.append(f"| {lm} | {name} | {cells} | {row['docs/s']:,.0f} |")
    lines += ["", "Share of real text and of garbage the stage's rule drops: above the p-th percentile of a corpus "
              "of all real chunks and garbage as 25% of it (threshold from that corpus, shares over every real "
              "and garbage document of the set); per garbage kind at p75:", "",
              "| LM | scorer | p75 real | p75 garbage | " + " | ".join(kinds) + " | p90 real | p90 garbage "
              "| p95 real | p95 garbage |", "|---|---|" + "---:|" * (len(kinds) + 6)]
    for lm, res in results.items():
        for name, row in res["rows"].items():
            d = row["drops"]
            cells = [d[(0.25, 75)]["real"], d[(0.25, 75)]["garbage"], *(d[(0.25, 75)][k] for k in kinds),
                     d[(0.25, 90)]["real"], d[(0.25, 90)]["garbage"], d[(0.25, 95)]["real"], d[(0.25, 95)]["garbage"]]
            lines.append(f"| {lm} | {name} | " + " | ".join(map(pct, cells)) + " |")
    lines += ["", "The same with garbage as 10% of the corpus; and the real text the p75 cut of the 25% corpus "
              "drops, per source:", "",
              "| LM | scorer | " + " | ".join(f"p{q} real | p{q} garbage" for q in PERCENTILES) + " | "
              + " | ".join(f"p75 {s}" for s in sources) + " |",
              "|---|---|" + "---:|" * (2 * len(PERCENTILES) + len(sources))]
    for lm, res in results.items():
        for name, row in res["rows"].items():
            d = row["drops"]
            cells = [d[(0.10, q)][w] for q in PERCENTILES for w in ("real", "garbage")]
            cells += [d[(0.25, 75)].get(s) for s in sources]
            lines.append(f"| {lm} | {name} | " + " | ".join(map(pct, cells)) + " |")
    return lines


def default_lms(corpus: Path, tmp: Path) -> list[LM]:
    """The demo's web and books LMs (trained from the corpus builder's reference text first if
    missing), and one trained here on 3 MB of GNU info manuals (so its set has no info chunks)."""
    from curation.demo_corpus import build_reference_texts
    from curation.demo_corpus.sources import info_nodes

    lms = []
    for domain in ("web", "books"):
        model, reference = corpus / "lm" / f"{domain}.arpa", corpus / "reference" / f"{domain}.jsonl"
        if not model.exists():
            if not reference.exists():
                build_reference_texts(corpus)
            train_lm(domain, str(reference), model, order=5)
        lms.append(LM(f"{domain} (demo)", str(model), str(reference), domain=domain))
    reference, size = tmp / "info.jsonl", 0
    with reference.open("w") as f:
        for raw in info_nodes():
            f.write(json.dumps({"text": raw.text}) + "\n")
            size += len(raw.text)
            if size > 3_000_000:
                break
    train_lm("web", str(reference), tmp / "info.arpa", order=5)
    lms.append(LM("info manuals", str(tmp / "info.arpa"), str(reference), exclude=("info",),
                  about=f"trained here (order 5) on the first {size / 1e6:.1f} MB of `/usr/share/info` nodes"))
    return lms


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm", action="append", metavar="DOMAIN=PATH",
                    help="an ARPA model to judge on every source (repeatable); default: the demo's web "
                    "and books LMs and one trained here on info manuals")
    ap.add_argument("--per-source", type=int, default=120, help="real chunks per source")
    ap.add_argument("--per-kind", type=int, default=100, help="garbage documents per kind")
    ap.add_argument("--markdown", metavar="OUT", help="also write the tables to OUT (benchmarks/filters_lm.md)")
    ap.add_argument("--mb", type=float, default=10.0, help="MB of prose to train the throughput LM on")
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--docs", type=int, default=5000, help="documents to score / filter for throughput")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        if args.lm:
            lms = [LM(name, path) for name, path in (x.split("=", 1) for x in args.lm)]
        else:
            lms = default_lms(Path("build/demo-corpus"), Path(tmp))
        results = {lm.name: judge(lm, args.seed, args.per_source, args.per_kind) for lm in lms}
    intro = [f"Labelled set (`benchmarks/lm_garbage.py`, seed {args.seed}): up to {args.per_source} real chunks "
             f"from each of {', '.join(lm_garbage.REAL_SOURCES)} and {args.per_kind} garbage documents of each "
             f"kind ({', '.join(lm_garbage.GARBAGE_KINDS)}). Each LM is judged on the sources it was not "
             "trained on (the PyPI descriptions are those of the packages installed here, so the set "
             "changes with the environment: its fingerprint tells):", ""]
    for lm in lms:
        res = results[lm.name]
        overlap = ("" if res["overlap"] is None
                   else f"; real lines (40+ chars) in its training text {res['overlap']:.1%}")
        intro.append(f"- {lm.name}: {lm.about or f'`{lm.path}`'}; {res['real']} real ({', '.join(res['sources'])}), "
                     f"{res['garbage']} garbage (set {res['fingerprint']}){overlap}")
    intro.append("")
    quality = separation_tables(results)
    print("\n".join(intro + quality))
    print()

    source = stdlib_prose()
    train_docs = markov_prose(source, int(args.mb * 1e6 / 2000), seed=args.seed)
    held_out = markov_prose(source, args.docs, seed=args.seed + 1)
    code = stdlib_code(min(args.docs, 400))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp, "prose.jsonl")
        with corpus.open("w") as f:
            for d in train_docs:
                f.write(json.dumps({"text": d}) + "\n")
        mb = corpus.stat().st_size / 1e6
        t0 = time.process_time()
        stats = train_lm("web", str(corpus), Path(tmp, "web.arpa"), order=args.order)
        cpu = time.process_time() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(("train-lm (prose)", len(train_docs), cpu,
                     f"{mb:.1f} MB, {mb / cpu:.2f} MB/s, wall {stats['seconds']:.0f} s, {stats['tokens']:,} tokens, "
                     f"n-grams {stats['ngrams']}, ARPA {stats['arpa_bytes'] / 1e6:.0f} MB, peak RSS {peak_mb:,.0f} MB"))

        t0 = time.process_time()
        model = DomainModel(str(Path(tmp, "web.arpa")), "web")
        load_s = time.process_time() - t0
        for label, docs in (("perplexity: held-out prose", held_out),
                            ("perplexity: shuffled prose", shuffled(held_out, args.seed)),
                            ("perplexity: stdlib code (prose LM)", code)):
            t0 = time.process_time()
            pps = sorted(model.perplexity(d) for d in docs)
            s = time.process_time() - t0
            rows.append((label, len(docs), s, f"median pp {pps[len(pps) // 2]:,.1f}"))
        for label, score in (
                ("  held-out prose, score=cc_net", lambda d: perplexity(model.model, d, "prose", "cc_net")),
                ("  held-out prose, kenlm plain", lambda d: model.model.perplexity(" ".join(d.split())))):
            t0 = time.process_time()
            pps = sorted(score(d) for d in held_out)
            rows.append((label, len(held_out), time.process_time() - t0, f"median pp {pps[len(pps) // 2]:,.1f}"))
        rows.append(("  (ARPA load, once per actor)", 1, load_s, ""))

    stage = HeuristicFilter(HeuristicParams(), RunContext(seed=args.seed, output="."))
    for label, docs, domain in (("heuristics: prose", held_out, "web"), ("heuristics: code", code, "code")):
        table = pa.table({"id": [str(i) for i in range(len(docs))], "text": docs, "domain": [domain] * len(docs)})
        t0 = time.process_time()
        reasons = []
        for start in range(0, table.num_rows, 1024):
            reasons += stage.process_batch(table.slice(start, 1024))["_reason"].to_pylist()
        s = time.process_time() - t0
        dropped = sum(r != "" for r in reasons)
        rows.append((label, len(docs), s, f"dropped {dropped} ({dropped / len(docs):.1%})"))

    # CPU seconds of this process: on a shared machine wall time measures the neighbours.
    print(f"{'step':36} {'docs':>7} {'cpu s':>8} {'docs/s':>9}  notes")
    for label, n, s, note in rows:
        print(f"{label:36} {n:7d} {s:8.2f} {rate(n, s):>9}  {note}")
    if args.markdown:
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        md = ["# Perplexity filter vs plain KenLM; LM and heuristic filter throughput", "",
              f"Measured by `benchmarks/filters_lm.py` on {when}, {os.cpu_count()} CPUs (shared), "
              f"{time.perf_counter() - started:.0f} s wall. Throughput is docs per CPU second of one process.", "",
              *intro, *quality, "", "Throughput (synthetic ~2 KB prose from a bigram chain, stdlib code; "
              f"`--mb {args.mb:g} --order {args.order} --docs {args.docs}`):", "",
              "| step | docs | cpu s | docs/s | notes |", "|---|---:|---:|---:|---|",
              *(f"| {label.strip()} | {n} | {s:.2f} | {rate(n, s)} | {note} |" for label, n, s, note in rows)]
        Path(args.markdown).write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
