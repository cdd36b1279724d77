"""Bounded memory at corpus scale (issue 15, item 6): object store, spill and RSS against input size.

    .venv/bin/python -m benchmarks.memory_scale --sizes-mb 250 500 1000 2000 --object-store-mb 300 \
        --out /tmp/memory-scale

For each size, in a fresh subprocess (so each run gets a fresh Ray of its own):
1. The corpus: plain JSONL, made by re-mixing the demo corpus (`curation.demo_corpus`, real text
   of this machine plus its seeded injections) with a seeded RNG into CHUNK_MB files with fresh
   ids. Per document (see MIX): a re-mix (paragraph runs of 2-4 documents of one domain: new
   text, its own URL), a demo document as it is, an exact copy or a case/whitespace copy of an
   earlier document (exact_dedup's normalisation), a light near-copy (1-3% of words edited with
   `curation.dedup.near_copies.edit_words`: MinHash at 0.8), or a new text under an earlier
   document's URL in a variant form (`url_dedup`). Chunk k of a seed is the same bytes for every
   size, so a size reuses the smaller sizes' chunks (generation is not part of any timing).
2. The run: `curation.config.parse_config` + `curation.pipeline.Pipeline` with url_dedup,
   exact_dedup, minhash_dedup and tokenize (vocab 4096 by default) on a local Ray started here
   with `object_store_memory` = --object-store-mb, `num_cpus` = --num-cpus, its own temp dir
   and spill directory, and the `num_workers_soft_limit` that `curation.runtime` sets.
3. While it runs, every --interval seconds: the raylet's store stats (the reply behind
   `ray memory --stats-only`: bytes used in plasma, primary copies, fallback (disk mmap)
   allocations, cumulative spilled/restored bytes), the spill directory's size on disk and the
   names of the spill files seen (a lower bound on spilled bytes that needs no Ray), the
   driver's RSS and the RSS and PSS summed over the driver and every process under it
   (raylet, GCS, workers). PSS counts the shared plasma pages once; RSS counts them once per
   process that touched them.

Writes OUT/results/<size>.json (summary + samples) and prints a Markdown table. Corpora, run
outputs and Ray temp/spill folders are deleted afterwards (`--keep` keeps them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHUNK_MB = 50
MB = 1_000_000  # corpus sizes are decimal MB (file bytes); memory figures are MiB
MIB = 1024 * 1024
MIX = (("remix", 0.65), ("demo_doc", 0.05), ("exact_copy", 0.10), ("normalised_copy", 0.03), ("near_copy", 0.10),
       ("url_repeat", 0.07))
POOL = 4000  # earlier documents of a chunk that copies are taken from


# ----------------------------------------------------------------------------- corpus

def base_docs(out: Path, seed: int) -> list[dict[str, Any]]:
    """The demo corpus's documents (built once under OUT/demo-base)."""
    import gzip

    from curation.demo_corpus import build_demo_corpus

    base = out / "demo-base"
    if not (base / "truth.json").is_file():
        build_demo_corpus(base, seed=seed)
    docs = []
    for path in sorted((base / "corpus").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs += [json.loads(line) for line in f]
    return docs


def _paragraphs(text: str) -> list[str]:
    paras = [p for p in text.split("\n\n") if p.strip()]
    if len(paras) >= 3:
        return paras
    lines = text.split("\n")  # one block of text: runs of ~8 lines instead
    return ["\n".join(lines[i:i + 8]) for i in range(0, len(lines), 8)] or [text]


def _remix(by_domain: dict[str, list[list[str]]], domains: list[str], weights: list[float],
           rng: random.Random) -> tuple[str, str]:
    domain = rng.choices(domains, weights)[0]
    pieces = []
    for paras in rng.sample(by_domain[domain], rng.randint(2, 4)):
        start, want, got, run = rng.randrange(len(paras)), rng.randint(800, 4000), 0, []
        for p in paras[start:]:
            run.append(p)
            got += len(p)
            if got >= want:
                break
        pieces.append("\n\n".join(run))
    return domain, "\n\n".join(pieces)


def write_chunk(path: Path, docs: list[dict[str, Any]], seed: int, chunk: int, nbytes: int) -> dict[str, int]:
    """One CHUNK_MB JSONL file of re-mixed demo documents; returns documents per kind."""
    from curation.dedup.near_copies import edit_words
    from curation.demo_corpus.injections import URL_VARIANT_KINDS, _url_variant

    rng = random.Random(f"memory-scale:{seed}:{chunk}")
    by_domain: dict[str, list[list[str]]] = {}
    for d in docs:
        by_domain.setdefault(d["domain"], []).append(_paragraphs(d["text"]))
    domains = sorted(by_domain)
    weights = [sum(len(p) for ps in by_domain[dom] for p in ps) for dom in domains]
    kinds, shares = zip(*MIX)
    pool: list[dict[str, Any]] = []
    counts = {k: 0 for k in kinds}
    size, i = 0, 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        while size < nbytes:
            doc_id = f"ms{seed}-{chunk:04d}-{i:07d}"
            kind = rng.choices(kinds, shares)[0] if pool else "remix"
            if kind == "remix":
                domain, text = _remix(by_domain, domains, weights, rng)
                rec = {"id": doc_id, "text": text, "url": f"https://{domain}.remix.example/{chunk}/{i}",
                       "domain": domain}
            elif kind == "demo_doc":  # a demo document as it is (its own injections come along)
                src = rng.choice(docs)
                rec = {"id": doc_id, "text": src["text"], "url": f"https://mirror.example/{chunk}/{i}",
                       "domain": src["domain"], "metadata": {"demo_id": src["id"]}}
            elif kind == "exact_copy":
                src = rng.choice(pool)
                rec = {"id": doc_id, "text": src["text"], "url": f"https://copy.example/{chunk}/{i}",
                       "domain": src["domain"], "metadata": {"copy_of": src["id"]}}
            elif kind == "normalised_copy":
                src = rng.choice(pool)
                text = src["text"].lower() if rng.random() < 0.5 else "  " + src["text"].replace("\n", " \n ") + "\n"
                rec = {"id": doc_id, "text": text, "url": f"https://norm.example/{chunk}/{i}", "domain": src["domain"],
                       "metadata": {"copy_of": src["id"]}}
            elif kind == "near_copy":
                src = rng.choice(pool)
                text, _ = edit_words(src["text"], rng.uniform(0.01, 0.03), rng, in_runs=False)
                rec = {"id": doc_id, "text": text, "url": f"https://near.example/{chunk}/{i}", "domain": src["domain"],
                       "metadata": {"copy_of": src["id"]}}
            else:  # url_repeat: a re-crawl of an earlier page: new text, the URL in a variant form
                src = rng.choice(pool)
                domain, text = _remix(by_domain, domains, weights, rng)
                variant = _url_variant(src["url"], rng.sample(URL_VARIANT_KINDS, rng.randint(1, 3)), rng)
                rec = {"id": doc_id, "text": text, "url": variant, "domain": domain, "metadata": {"url_of": src["id"]}}
            rec.setdefault("metadata", {})["kind"] = kind
            line = json.dumps(rec, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode())
            counts[kind] += 1
            if kind in ("remix", "demo_doc"):
                if len(pool) < POOL:
                    pool.append(rec)
                else:
                    pool[rng.randrange(POOL)] = rec
            i += 1
    tmp.rename(path)
    return counts


def corpus_files(out: Path, size_mb: int, seed: int, chunk_mb: int = CHUNK_MB) -> tuple[list[Path], dict[str, int]]:
    """The chunks that make `size_mb` (written when missing); returns them and docs per kind."""
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    n = max(1, math.ceil(size_mb / chunk_mb))
    files, kinds, docs = [], {}, None
    for k in range(n):
        path = corpus / f"chunk-s{seed}-{chunk_mb}mb-{k:04d}.jsonl"
        meta = path.with_suffix(".json")
        if not (path.is_file() and meta.is_file()):
            docs = docs or base_docs(out, seed)
            t0 = time.perf_counter()
            counts = write_chunk(path, docs, seed, k, chunk_mb * MB)
            meta.write_text(json.dumps(counts))
            print(f"  corpus chunk {k}: {path.stat().st_size / MB:.1f} MB in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        for kind, c in json.loads(meta.read_text()).items():
            kinds[kind] = kinds.get(kind, 0) + c
        files.append(path)
    return files, kinds


# ----------------------------------------------------------------------------- sampling

def dir_bytes(path: Path) -> tuple[int, dict[str, int]]:
    """(bytes on disk, {file: size}) under `path`."""
    total, files = 0, {}
    for dirpath, _, names in os.walk(path):
        for name in names:
            p = os.path.join(dirpath, name)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512
            files[p] = st.st_size
    return total, files


class Sampler(threading.Thread):
    """Every `interval` s: store stats from the raylet, spill dir on disk, RSS/PSS of the tree."""

    def __init__(self, gcs_address: str, spill_dir: Path, interval: float):
        super().__init__(daemon=True)
        self.gcs_address, self.spill_dir, self.interval = gcs_address, spill_dir, interval
        self.samples: list[dict[str, Any]] = []
        self.spill_files: dict[str, int] = {}  # every spill file seen, at its largest size
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.phase = "start"

    def sample(self) -> dict[str, Any]:
        import psutil
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        s: dict[str, Any] = {"t": time.time(), "phase": self.phase}
        try:
            st = get_memory_info_reply(get_state_from_address(self.gcs_address), timeout_seconds=10).store_stats
            s.update(plasma_used=st.object_store_bytes_used, plasma_avail=st.object_store_bytes_avail,
                     plasma_primary=st.object_store_bytes_primary_copy, fallback=st.object_store_bytes_fallback,
                     spilled_total=st.spilled_bytes_total, spilled_objects=st.spilled_objects_total,
                     restored_total=st.restored_bytes_total, restored_objects=st.restored_objects_total,
                     objects=st.num_local_objects)
        except Exception as e:  # noqa: BLE001 - a missed sample is recorded, not fatal
            self.errors.append(f"{type(e).__name__}: {e}"[:300])
        disk, files = dir_bytes(self.spill_dir)
        s["spill_dir_bytes"] = disk
        for name, size in files.items():
            self.spill_files[name] = max(size, self.spill_files.get(name, 0))
        me = psutil.Process()
        rss = pss = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        s.update(driver_rss=me.memory_info().rss, tree_rss=rss, tree_pss=pss, load1=os.getloadavg()[0])
        return s

    def run(self) -> None:
        while not self.stop_event.is_set():
            t0 = time.time()
            self.samples.append(self.sample())
            self.stop_event.wait(max(0.0, self.interval - (time.time() - t0)))

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        self.samples.append(self.sample())  # the final cumulative counters


def summarize(samples: list[dict[str, Any]], spill_files: dict[str, int]) -> dict[str, Any]:
    def peak(key: str, rows=samples) -> float:
        vals = [r[key] for r in rows if key in r]
        return round(max(vals) / MIB, 1) if vals else float("nan")

    last = [r for r in samples if "spilled_total" in r]
    for r in samples:  # plasma's fallback allocations are files in the spill folder, unlinked at once
        r["shm_used"] = r.get("plasma_used", 0) - r.get("fallback", 0)
        r["disk_used"] = r["spill_dir_bytes"] + r.get("fallback", 0)
    out = {"peak_plasma_mib": peak("plasma_used"), "peak_shm_mib": peak("shm_used"),
           "peak_disk_mib": peak("disk_used"), "peak_primary_mib": peak("plasma_primary"),
           "peak_fallback_mib": peak("fallback"),
           "spilled_mib": round(last[-1]["spilled_total"] / MIB, 1) if last else float("nan"),
           "spilled_objects": last[-1]["spilled_objects"] if last else None,
           "restored_mib": round(last[-1]["restored_total"] / MIB, 1) if last else float("nan"),
           "peak_spill_dir_mib": peak("spill_dir_bytes"),
           "spill_files_seen": len(spill_files), "spill_files_seen_mib": round(sum(spill_files.values()) / MIB, 1),
           "peak_driver_rss_mib": peak("driver_rss"), "peak_tree_rss_mib": peak("tree_rss"),
           "peak_tree_pss_mib": peak("tree_pss"), "samples": len(samples),
           "mean_load1": round(sum(r["load1"] for r in samples) / max(1, len(samples)), 2)}
    phases: dict[str, dict[str, Any]] = {}
    prev_spilled = 0
    for phase in dict.fromkeys(r["phase"] for r in samples):
        rows = [r for r in samples if r["phase"] == phase]
        spilled = max((r.get("spilled_total", 0) for r in rows), default=prev_spilled)
        phases[phase] = {"peak_plasma_mib": peak("plasma_used", rows),
                         "peak_spill_dir_mib": peak("spill_dir_bytes", rows),
                         "spilled_mib_in_phase": round((spilled - prev_spilled) / MIB, 1),
                         "peak_tree_pss_mib": peak("tree_pss", rows)}
        prev_spilled = max(prev_spilled, spilled)
    out["phases"] = phases
    return out


# ----------------------------------------------------------------------------- one run (child)

READ_SETTLE = 'ds, st = self._settle("read", READ_METHOD, unique, None, t0, None, last=not stages)'


def release_read_input() -> None:
    """Experiment, not the project's code: `Pipeline._run` as it is, plus `del records, unique`
    after the read step settles, so the raw input's blocks are not pinned for the whole run.
    Built from the current source (fails if that line moved) and installed in this process only."""
    import inspect
    import textwrap

    import curation.pipeline as pipeline

    src = textwrap.dedent(inspect.getsource(pipeline.Pipeline._run))
    line = next(ln for ln in src.splitlines() if ln.strip() == READ_SETTLE)
    indent = line[: len(line) - len(line.lstrip())]
    src = src.replace(line, f"{line}\n{indent}del records, unique", 1)
    scope: dict[str, Any] = {}
    exec(compile(src, "<release_read_input>", "exec"), vars(pipeline), scope)  # noqa: S102
    pipeline.Pipeline._run = scope["_run"]


def child(args: argparse.Namespace) -> int:
    out = Path(args.out)
    work = out / f"run-{args.size_mb}"
    ray_tmp, spill_dir, run_out = work / "ray", work / "spill", work / "output"
    for d in (ray_tmp, spill_dir):
        d.mkdir(parents=True, exist_ok=True)
    files, kinds = corpus_files(out, args.size_mb, args.seed, args.chunk_mb)
    result: dict[str, Any] = {"size_mb_requested": args.size_mb, "input_bytes": sum(p.stat().st_size for p in files),
                              "input_files": len(files), "corpus_kinds": kinds, "object_store_mb": args.object_store_mb,
                              "num_cpus": args.num_cpus, "stages": args.stages, "vocab_size": args.vocab_size,
                              "load_at_start": os.getloadavg(), "started_utc": time.strftime("%H:%M:%S", time.gmtime())}
    os.environ.pop("RAY_ADDRESS", None)  # never join another engineer's cluster
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from curation.config import parse_config
    from curation.pipeline import AccountingError, Pipeline

    if args.release_read_input:
        release_read_input()
        result["variant"] = "release_read_input"
    stages: list[Any] = []
    for name in args.stages:
        if name == "tokenize":
            stages.append({"name": "tokenize", "vocab_size": args.vocab_size, "train_sample_docs": 4000,
                           "train_sample_bytes": 16_000_000})
        elif name == "minhash_dedup":
            stages.append({"name": "minhash_dedup", "threshold": 0.8})
        else:
            stages.append({"name": name})
    config = parse_config({"inputs": [str(p) for p in files], "output": str(run_out), "seed": args.seed,
                           "default_domain": "web", "stages": stages})
    sampler = None
    stage_marks: list[tuple[str, float]] = []
    t_start = time.perf_counter()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        t0 = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, object_store_memory=args.object_store_mb * MIB, include_dashboard=False,
                 log_to_driver=False, configure_logging=False, _temp_dir=str(ray_tmp),
                 object_spilling_directory=str(spill_dir),
                 _system_config={"num_workers_soft_limit": 2 * args.num_cpus})  # as curation.runtime does
        result["ray_init_s"] = round(time.perf_counter() - t0, 2)
        gcs = ray._private.worker.global_worker.node.gcs_address
        sampler = Sampler(gcs, spill_dir, args.interval)
        sampler.start()

        def progress(event: str, info: dict[str, Any]) -> None:
            name = info.get("name") if event == "stage_start" else ("write" if event == "write_start" else None)
            if name:
                sampler.phase = name
                stage_marks.append((name, time.perf_counter() - t_start))

        t0 = time.perf_counter()
        try:
            Pipeline(config, progress=progress).run()
            result["accounting_held"] = True
        except AccountingError as e:
            result["accounting_held"] = False
            result["error"] = f"AccountingError: {e}"
            raise
        result["pipeline_s"] = round(time.perf_counter() - t0, 1)
        stats = json.loads((run_out / "stats.json").read_text())
        result["stage_stats"] = [{k: s[k] for k in ("name", "docs_in", "docs_out", "dropped", "seconds")}
                                 for s in stats["stages"]]
        manifest_path = run_out / "manifest.json"
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            result["shards"] = len(manifest["shards"])
            result["tokens"] = sum(int(s["tokens"]) for s in manifest["shards"])
        result["docs_in"] = stats["stages"][0]["docs_in"]
        result["docs_out"] = stats["stages"][-1]["docs_out"]
        result["output_dir_mib"] = round(dir_bytes(run_out)[0] / MIB, 1)
        result["ok"] = True
    except BaseException as e:  # noqa: BLE001 - recorded; the parent reports it
        result["ok"] = False
        result.setdefault("error", f"{type(e).__name__}: {e}"[:2000])
    finally:
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        if sampler is not None:
            sampler.phase = "end"
            sampler.finish()
            result.update(summarize(sampler.samples, sampler.spill_files))
            result["sampler_errors"] = sampler.errors[:5]
            result["sample_rows"] = sampler.samples
        result["stage_marks"] = stage_marks
        result["load_at_end"] = os.getloadavg()
        if ray.is_initialized():
            ray.shutdown()
        (out / "results").mkdir(parents=True, exist_ok=True)
        (out / "results" / f"{args.size_mb}{args.tag}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0 if result.get("ok") else 1


# ----------------------------------------------------------------------------- driver (parent)

def table(results: list[dict[str, Any]]) -> str:
    head = ("| input MB | docs in | docs out | wall s | pipeline s | peak plasma MiB (shm + fallback) | "
            "spilled MiB (total) | restored MiB | peak disk MiB (spill dir + fallback) | peak driver RSS MiB | "
            "peak tree RSS / PSS MiB | shards | tokens | load1 | ok |")
    rows = [head, "|" + "---:|" * 14 + "---|"]
    for r in results:
        if "sample_rows" in r and "peak_disk_mib" not in r:  # results of an earlier version
            r.update(summarize(r["sample_rows"], {}), **{k: r[k] for k in ("spill_files_seen", "spill_files_seen_mib")
                                                          if k in r})
        plasma = f"{r.get('peak_plasma_mib', '-')} ({r.get('peak_shm_mib', '-')} + {r.get('peak_fallback_mib', '-')})"
        rows.append(f"| {r['input_bytes'] / MB:.0f} | {r.get('docs_in', '-')} | {r.get('docs_out', '-')} | "
                    f"{r.get('wall_s', '-')} | {r.get('pipeline_s', '-')} | {plasma} | "
                    f"{r.get('spilled_mib', '-')} | {r.get('restored_mib', '-')} | {r.get('peak_disk_mib', '-')} | "
                    f"{r.get('peak_driver_rss_mib', '-')} | {r.get('peak_tree_rss_mib', '-')} / "
                    f"{r.get('peak_tree_pss_mib', '-')} | {r.get('shards', '-')} | {r.get('tokens', '-')} | "
                    f"{r.get('mean_load1', '-')} | {'yes' if r.get('ok') else 'NO: ' + str(r.get('error', ''))[:80]} |")
    return "\n".join(rows)


def parent(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes_mb:
        t0 = time.perf_counter()
        files, _ = corpus_files(out, size, args.seed, args.chunk_mb)  # generated here, outside the timed child
        print(f"[{time.strftime('%H:%M:%S', time.gmtime())}Z] {size} MB: corpus ready "
              f"({time.perf_counter() - t0:.0f} s); running, load {os.getloadavg()}", flush=True)
        cmd = [sys.executable, "-m", "benchmarks.memory_scale", "--child", "--size-mb", str(size), "--out", str(out),
               "--object-store-mb", str(args.object_store_mb), "--num-cpus", str(args.num_cpus), "--seed",
               str(args.seed), "--chunk-mb", str(args.chunk_mb), "--vocab-size", str(args.vocab_size),
               "--interval", str(args.interval),
               f"--tag={args.tag}", *(["--release-read-input"] if args.release_read_input else []),
               "--stages", *args.stages]
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        try:
            proc.wait(timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            print(f"  {size} MB: over {args.timeout_s} s, stopping it (SIGTERM, then its process group)", flush=True)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        path = out / "results" / f"{size}{args.tag}.json"
        r = json.loads(path.read_text()) if path.is_file() else {"input_bytes": sum(p.stat().st_size for p in files),
                                                                  "ok": False, "error": f"child exit {proc.returncode}"}
        results.append(r)
        print(table([r]).splitlines()[-1], flush=True)
        if not args.keep:
            shutil.rmtree(out / f"run-{size}", ignore_errors=True)
    if not args.keep:
        shutil.rmtree(out / "corpus", ignore_errors=True)
        shutil.rmtree(out / "demo-base", ignore_errors=True)
    print(table(results))
    summary = [{k: v for k, v in r.items() if k != "sample_rows"} for r in results]
    (out / f"summary{args.tag}.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0 if all(r.get("ok") for r in results) else 1


def phase_table(results: list[dict[str, Any]]) -> str:
    """Per step: its seconds (stats.json) and, per size, MiB spilled while it ran / peak disk."""
    names = [s["name"] for s in results[0].get("stage_stats", [])]
    head = "| step | " + " | ".join(f"{r['input_bytes'] / MB:.0f} MB: s / spilled MiB / peak disk MiB"
                                    for r in results) + " |"
    rows = [head, "|---|" + "---:|" * len(results)]
    for name in names:
        cells = []
        for r in results:
            secs = next((s["seconds"] for s in r.get("stage_stats", []) if s["name"] == name), "-")
            rows_in = [x for x in r.get("sample_rows", []) if x["phase"] == name]
            ph = r.get("phases", {}).get(name, {})
            disk = max((x["spill_dir_bytes"] + x.get("fallback", 0) for x in rows_in), default=0) / MIB
            cells.append(f"{secs} / {ph.get('spilled_mib_in_phase', '-')} / {disk:.0f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def report(out: Path, tag: str) -> int:
    """The table again, from OUT/results/*<tag>.json (sorted by size)."""
    paths = [p for p in (out / "results").glob(f"*{tag}.json") if p.stem[: len(p.stem) - len(tag)].isdigit()]
    results = [json.loads(p.read_text()) for p in sorted(paths, key=lambda p: int(p.stem[: len(p.stem) - len(tag)]))]
    if not results:
        print(f"no results under {out / 'results'}")
        return 1
    print(table(results))
    print()
    print(phase_table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--object-store-mb", type=int, default=300)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--out", default="/tmp/memory-scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", nargs="+", default=["url_dedup", "exact_dedup", "minhash_dedup", "tokenize"])
    ap.add_argument("--chunk-mb", type=int, default=CHUNK_MB, help="corpus file size (sizes reuse chunks)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout-s", type=int, default=3600, help="per size; the run is stopped after it")
    ap.add_argument("--release-read-input", action="store_true",
                    help="experiment: drop the pipeline's references to the raw input after the read step")
    ap.add_argument("--tag", default="", help="suffix of the result files (results/<size><tag>.json)")
    ap.add_argument("--keep", action="store_true", help="keep corpora, outputs and spill folders")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size-mb", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true", help="only print the table of OUT/results")
    args = ap.parse_args(argv)
    if args.report:
        return report(Path(args.out), args.tag)
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
