"""`flywheel demo`: the main job, run the way a user runs it.

Starts the service (embedded defaults: SQLite + local storage under FLYWHEEL_HOME, local Ray),
uploads the demo corpus through the REST API, submits the demo pipeline as a job, follows it,
prints the stats table, trains a tiny MoE model on the job's manifest as a training job (its loss
from first to last step), prints the dashboard URL, then keeps serving until interrupted
(`--exit-after` or FLYWHEEL_DEMO_EXIT=1 stop once the jobs have ended, for scripts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api.cli import TERMINAL, call, client_for, jobs_stats, jobs_watch
from contract.console import console, err_console, fail


def _wait_healthy(client, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"the service exited with code {proc.returncode} before it was ready")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    fail(f"the service did not answer /healthz within {timeout_s:.0f} s")


def _job_config(config_path: Path) -> dict[str, Any]:
    """The demo config without inputs/output (the service fills them), model paths absolute
    (the job runs in a Ray actor whose working directory is not ours)."""
    data = yaml.safe_load(config_path.read_text()) or {}
    data.pop("inputs", None)
    data.pop("output", None)
    for stage in data.get("stages", []):
        if isinstance(stage, dict) and isinstance(stage.get("models"), dict):
            stage["models"] = {d: str(Path(p).resolve()) for d, p in stage["models"].items()}
    return data


# ~1-2 minutes on 2 CPUs: the tiny preset (2 layers, dim 64, 8 experts top-2 + 1 shared) on
# 30 steps of 16 x 128-token sequences, a checkpoint at the end.
DEMO_TRAINING = {"preset": "tiny", "steps": 30, "seq_len": 128, "global_batch_tokens": 2048, "micro_batch": 16,
                 "seed": 0}  # the preset's own LR and warmup (training.train_config.PRESET_OPTIMIZER)


def train_on_manifest(client, manifest_id: str, interval: float = 2.0) -> int:
    """Submit DEMO_TRAINING on the manifest as a training job, follow it, print its loss curve's
    ends; 0 if it succeeded."""

    job = call(client, "POST", "/v1/training-jobs", json={"manifest_id": manifest_id, "config": DEMO_TRAINING})
    console.print(f"training job {job['id']} submitted on manifest {manifest_id} "
                  f"(preset tiny, {job['steps']} steps)", highlight=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True)
    with progress:
        task = progress.add_task(job["state"], total=job["steps"])
        while job["state"] not in TERMINAL:
            time.sleep(interval)
            job = call(client, "GET", f"/v1/training-jobs/{job['id']}")
            loss = f" loss {job['loss']:.3f}" if job["loss"] is not None else ""
            progress.update(task, completed=job["step"] or 0, description=f"training {job['state']}{loss}")
    if job["state"] != "succeeded":
        err_console.print(f"training job {job['id']} {job['state']}: {job['error']}", highlight=False)
        return 1
    curve = job["loss_curve"]
    first, last = curve[0], curve[-1]
    console.print(f"trained {last['step']} steps: loss {first['loss']:.3f} (step {first['step']}) -> "
                  f"{last['loss']:.3f} (step {last['step']}), {job['tokens_per_s']:,.0f} tokens/s; "
                  f"checkpoints {', '.join(job['checkpoints'])}", highlight=False)
    return 0


def model_roots(job_config: dict[str, Any]) -> list[str]:
    """The folders of the model files a job config names: the service reads files named in a config
    only inside FLYWHEEL_ALLOWED_ROOTS, so the demo allows exactly these."""
    return sorted({str(Path(p).parent) for stage in job_config.get("stages", [])
                   if isinstance(stage, dict) and isinstance(stage.get("models"), dict)
                   for p in stage["models"].values()})


def run_demo(corpus_dir: Path, config_path: Path, host: str, port: int, home: Path, exit_after: bool) -> int:
    files = sorted(corpus_dir.glob("*.jsonl*"))
    if not files:
        fail(f"no corpus files in {corpus_dir} (run `flywheel demo-corpus`)")
    job_config = _job_config(config_path)
    roots = [r for r in os.environ.get("FLYWHEEL_ALLOWED_ROOTS", "").split(",") if r] + model_roots(job_config)
    env = {**os.environ, "FLYWHEEL_HOME": str(home.resolve()), "FLYWHEEL_ALLOWED_ROOTS": ",".join(roots)}
    url = f"http://{host}:{port}"
    err_console.print(f"starting the service on {url} (data under {home})", highlight=False)
    server = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "serve", "--host", host, "--port", str(port),
                               "--no-auth"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with client_for(url, None, timeout=600) as client:
            _wait_healthy(client, server)
            corpus_ids = []
            for f in files:
                with open(f, "rb") as fh:
                    corpus = call(client, "POST", "/v1/corpora", files={"file": (f.name, fh, "application/gzip")})
                corpus_ids.append(corpus["id"])
                err_console.print(f"uploaded {f.name}: corpus {corpus['id']}", highlight=False)
            job = call(client, "POST", "/v1/jobs", json={"corpus_ids": corpus_ids, "config": job_config})
        console.print(f"job {job['id']} submitted; dashboard: {url}/jobs/{job['id']}", highlight=False)
        code = 0
        try:
            jobs_watch(job["id"], interval=2.0, url=url, token=None)
        except SystemExit as e:  # typer.Exit from a failed job
            code = int(e.code or 1)
        except Exception as e:  # click's Exit is not a SystemExit
            code = int(getattr(e, "exit_code", 1))
        if code == 0:
            jobs_stats(job["id"], url=url, token=None, as_json=False)
            with client_for(url, None, timeout=600) as client:
                manifest_id = call(client, "GET", f"/v1/jobs/{job['id']}")["manifest_id"]
                if manifest_id is None:
                    err_console.print("the job wrote no manifest (no tokenize stage): nothing to train on")
                else:
                    code = train_on_manifest(client, manifest_id)
        console.print(f"dashboard: {url}/jobs/{job['id']}\nAPI docs:  {url}/docs", highlight=False)
        if exit_after or code:
            return code
        console.print("serving until interrupted (Ctrl-C)")
        while server.poll() is None:
            time.sleep(1.0)
        return server.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
