"""Latency and throughput of the service's read path: manifests and shard files over HTTP.

    .venv/bin/python benchmarks/api_load.py [--requests 500] [--concurrency 8] [--shards 8] [--shard-mb 2]

Everything is made here and stays on loopback: a seeded synthetic dataset (training.data's
ShardWriter + build_manifest + write_manifest) registered as a finished job's output in a fresh
SQLite database, an admin token, and `uvicorn api.app:app_from_env` (1 worker) in a subprocess.
A fixed, seeded list of requests is then sent with `--concurrency` in flight (httpx, async),
every request authenticated:
- manifest:   GET /v1/manifests/{id}        (database lookup + resolved JSON)
- shard:      GET a whole .bin              (streamed in 1 MiB chunks)
- range:      GET 1 MiB at a random offset  (206)
- index:      GET a whole .idx
- not-modified: GET with If-None-Match      (304)
Latency is time to the last byte. MB/s is body bytes of that kind / the whole run's wall time
(all kinds share the run), "total" is all bytes / wall time. Client and server share the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

MIX = {"manifest": 0.2, "shard": 0.3, "range": 0.3, "index": 0.1, "not-modified": 0.1}


def prepare(home: Path, shards: int, shard_mb: float) -> tuple[dict[str, str], str, object]:
    """A database with one finished job whose output is a dataset; returns (env, token, manifest)."""
    from api.auth import create_token
    from api.db import Database
    from api.ids import new_id
    from api.manifests import register_job_manifest
    from api.models import Job
    from api.settings import Settings
    from api.storage import Storage
    from contract.manifest import parse_manifest
    from training.data.synthetic import write_synthetic_dataset

    env = {"FLYWHEEL_HOME": str(home)}
    settings = Settings.from_env(env)
    settings.prepare()
    db = Database(settings.database_url)
    db.migrate()
    storage = Storage(settings.storage)
    job_id = new_id("job")
    shard_tokens = int(shard_mb * 2**20 / 2)  # uint16
    path = write_synthetic_dataset(storage.path(f"jobs/{job_id}"), total_tokens=shards * shard_tokens,
                                   target_tokens=shard_tokens, vocab_size=32000, seed=0, dataset_id="bench")
    with db.session() as s:
        s.add(Job(id=job_id, state="succeeded", corpus_ids=[], config={}, output_uri=storage.uri(f"jobs/{job_id}")))
    with db.session() as s:
        manifest_id = register_job_manifest(s, job_id, storage.uri(f"jobs/{job_id}"))
        _, token = create_token(s, "bench", "read", settings.token_pepper)
    db.dispose()
    return env, token, (manifest_id, parse_manifest(Path(path).read_bytes()))


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app_from_env", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def plan(n: int, manifest_id: str, manifest, seed: int) -> list[tuple[str, str, dict]]:
    rng = random.Random(seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=n)
    out = []
    for kind in kinds:
        shard = rng.choice(manifest.shards)
        base = f"/v1/manifests/{manifest_id}/shards/"
        if kind == "manifest":
            out.append((kind, f"/v1/manifests/{manifest_id}", {}))
        elif kind == "shard":
            out.append((kind, base + Path(shard.path).name, {"sha256": shard.sha256}))
        elif kind == "index":
            out.append((kind, base + Path(shard.index_path).name, {}))
        elif kind == "range":
            start = rng.randrange(0, max(1, shard.bytes - 2**20))
            out.append((kind, base + Path(shard.path).name, {"Range": f"bytes={start}-{start + 2**20 - 1}"}))
        else:
            out.append((kind, base + Path(shard.path).name, {"If-None-Match": f'"{shard.sha256}"'}))
    return out


async def run(url: str, token: str, requests: list, concurrency: int) -> tuple[dict, float]:
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in MIX}
    expected = {200: ("manifest", "shard", "index"), 206: ("range",), 304: ("not-modified",)}
    verified: set[str] = set()
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=120) as client:
        async def worker() -> None:
            while not queue.empty():
                kind, path, extra = queue.get_nowait()
                sha = extra.pop("sha256", None)
                t0 = time.perf_counter()
                r = await client.get(path, headers=extra)
                body = r.content
                results[kind].append((time.perf_counter() - t0, len(body)))
                if kind not in expected.get(r.status_code, ()):
                    raise RuntimeError(f"{kind} {path}: HTTP {r.status_code} {body[:200]!r}")
                if sha and path not in verified:  # each shard's bytes checked once
                    assert hashlib.sha256(body).hexdigest() == sha, path
                    verified.add(path)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        env, token, (manifest_id, manifest) = prepare(Path(tmp), args.shards, args.shard_mb)
        proc, url = start_server(env)
        try:
            requests = plan(args.requests, manifest_id, manifest, args.seed)
            asyncio.run(run(url, token, requests[: args.concurrency * 2], args.concurrency))  # warm-up
            results, wall = asyncio.run(run(url, token, requests, args.concurrency))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    load = os.getloadavg()[0]
    print(f"{args.requests} requests, {args.concurrency} in flight, {args.shards} shards of {args.shard_mb} MiB, "
          f"wall {wall:.2f} s, {args.requests / wall:.0f} req/s, load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"{'kind':<14}{'n':>5}{'p50 ms':>10}{'p99 ms':>10}{'MB/s':>10}")
    total_bytes = 0
    for kind, rows in results.items():
        if not rows:
            continue
        lat = np.array([r[0] for r in rows]) * 1000
        nbytes = sum(r[1] for r in rows)
        total_bytes += nbytes
        print(f"{kind:<14}{len(rows):>5}{np.percentile(lat, 50):>10.1f}{np.percentile(lat, 99):>10.1f}"
              f"{nbytes / 2**20 / wall:>10.1f}")
    print(f"{'total':<14}{args.requests:>5}{'':>20}{total_bytes / 2**20 / wall:>10.1f}")


if __name__ == "__main__":
    main()
