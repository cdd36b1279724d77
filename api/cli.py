"""Service commands for the `flywheel` CLI: the server, API tokens, and a small HTTP client.

`flywheel.cli` mounts `commands` on the main app:

    flywheel serve [--host 127.0.0.1] [--port 8000] [--no-auth [--insecure-no-auth-on-public-interface]]
    flywheel token create NAME [--scope read|admin]
    flywheel corpora upload FILE [--domain D] [--name N]      flywheel corpora list
    flywheel jobs submit CONFIG --corpus ID [--corpus ID ...] [--watch]
    flywheel jobs watch ID                                    flywheel jobs stats ID

Client commands read `--url`/`FLYWHEEL_URL` (default http://127.0.0.1:8000) and
`--token`/`FLYWHEEL_TOKEN`. Heavy imports (FastAPI, SQLAlchemy, Ray) happen inside commands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
import yaml
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from contract.console import console, err_console, fail
from curation.cli import print_stats_table
from curation.stats import RunStats

token_app = typer.Typer(help="API tokens of the service.", no_args_is_help=True, add_completion=False)
corpora_app = typer.Typer(help="Corpora on a Flywheel service.", no_args_is_help=True, add_completion=False)
jobs_app = typer.Typer(help="Curation jobs on a Flywheel service.", no_args_is_help=True, add_completion=False)

UrlOption = Annotated[str, typer.Option("--url", envvar="FLYWHEEL_URL", help="Service base URL.")]
TokenOption = Annotated[Optional[str], typer.Option("--token", envvar="FLYWHEEL_TOKEN", help="API token.",
                                                    show_default=False)]
DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")


# --- server side -----------------------------------------------------------------------------

def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Accept requests without a token (loopback only).")] = False,
    insecure_no_auth_on_public_interface: Annotated[bool, typer.Option(
        "--insecure-no-auth-on-public-interface",
        help="Allow --no-auth on an interface other than loopback: anyone who reaches it is admin.")] = False,
) -> None:
    """Run the curation service (uvicorn). Settings come from FLYWHEEL_* variables."""
    import uvicorn  # uvicorn and the app: flywheel[service], loaded by `serve` only

    from api.app import create_app  # FastAPI and SQLAlchemy: flywheel[service], loaded by `serve` only
    from api.auth import InsecureSettings, is_loopback  # flywheel[service], loaded by `serve` only
    from api.settings import Settings  # pydantic: loaded by `serve` only (fast --help)

    settings = Settings.from_env(auth=False if no_auth else None, host=host,
                                 insecure_no_auth_on_public_interface=insecure_no_auth_on_public_interface or None)
    try:
        app = create_app(settings)
    except InsecureSettings as e:
        fail(str(e))
    if not settings.auth and not is_loopback(host):  # allowed by --insecure-no-auth-on-public-interface
        err_console.print(f"[yellow]warning:[/] auth is off on {host}: anyone who reaches this port is admin")
    uvicorn.run(app, host=host, port=port, log_level="info")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what uses the token.")],
    scope: Annotated[str, typer.Option(help="read (GET only) or admin (also create and cancel).")] = "read",
) -> None:
    """Create an API token and print it once (only its hash is stored)."""
    from api.auth import create_token  # SQLAlchemy: flywheel[service], loaded by `token create` only
    from api.db import Database  # flywheel[service]
    from api.models import SCOPES  # flywheel[service]
    from api.settings import Settings  # pydantic: loaded by `token create` only (fast --help)

    if scope not in SCOPES:
        fail(f"--scope must be one of {', '.join(SCOPES)}")
    settings = Settings.from_env()
    settings.prepare()
    db = Database(settings.database_url)
    db.migrate()
    with db.session() as s:
        row, token = create_token(s, name, scope, settings.token_pepper)
    db.dispose()
    err_console.print(f"token {row.id} ({scope}) for {name!r}; it is shown only now:", highlight=False)
    print(token)


# --- client side -----------------------------------------------------------------------------

def client_for(url: str, token: str | None, timeout: float = 60.0):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)


def call(client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as e:
        fail(f"cannot reach {client.base_url}: {e}")
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        fail(f"{response.status_code} {detail}")
    return response.json()


class _CountingFile:
    """A file whose reads advance a progress bar (httpx streams multipart bodies by reading)."""

    def __init__(self, f, advance) -> None:
        self._f, self._advance = f, advance

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._advance(len(data))
        return data

    def seek(self, *args: Any) -> int:
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()


@corpora_app.command("upload")
def corpora_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, JSONL.gz/.zst or Parquet.")],
    domain: Annotated[Optional[str], typer.Option(help="Domain of records that carry none.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Display name (default: the file name).")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Upload a corpus file (streamed, with a progress bar); prints the corpus as JSON."""

    fields = {k: v for k, v in (("domain", domain), ("name", name)) if v}
    progress = Progress(TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), console=err_console, transient=True)
    with progress, open(file, "rb") as f, client_for(url, token, timeout=600) as client:
        task = progress.add_task(file.name, total=file.stat().st_size)
        body = _CountingFile(f, lambda n: progress.update(task, advance=n))
        corpus = call(client, "POST", "/v1/corpora", files={"file": (file.name, body, "application/octet-stream")},
                       data=fields)
    console.print_json(json.dumps(corpus))


@corpora_app.command("list")
def corpora_list(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """List corpora: id, state, documents, name."""
    with client_for(url, token) as client:
        page = call(client, "GET", "/v1/corpora", params={"limit": 1000})
    for c in page["items"]:
        console.print(f"{c['id']}  {c['state']:<9} {c['documents'] or 0:>12,} docs  {c['name']}", highlight=False)


@jobs_app.command("submit")
def jobs_submit(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Curation config (YAML).")],
    corpus: Annotated[list[str], typer.Option("--corpus", help="Corpus id to read. Repeatable.")],
    watch: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Submit a config over corpora; prints the job id. `inputs`/`output` of the file are ignored."""

    try:
        data = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as e:
        fail(f"{config}: not valid YAML ({str(e).splitlines()[0]})")
    if not isinstance(data, dict):
        fail(f"{config}: expected a mapping at the top level")
    dropped = [k for k in ("inputs", "output") if data.pop(k, None) is not None]
    if dropped:
        err_console.print(f"note: {' and '.join(dropped)} of {config.name} ignored: the service reads the corpora "
                          "and chooses the output", highlight=False)
    with client_for(url, token) as client:
        job = call(client, "POST", "/v1/jobs", json={"corpus_ids": corpus, "config": data})
    print(job["id"])
    if watch:
        jobs_watch(job["id"], url=url, token=token)


@jobs_app.command("watch")
def jobs_watch(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Follow a job with a progress bar; exit 0 if it succeeds, 1 if it fails or is cancelled."""

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True)
    with progress, client_for(url, token) as client:
        task = None
        while True:
            job = call(client, "GET", f"/v1/jobs/{job_id}")
            done = sum(s["state"] == "done" for s in job["stages"])
            if task is None:
                task = progress.add_task(job["state"], total=len(job["stages"]))
            progress.update(task, completed=done, description=f"{job['state']}: {job['phase'] or ''}")
            if job["state"] in TERMINAL:
                break
            time.sleep(interval)
    for s in job["stages"]:
        if s["state"] == "done":
            console.print(f"  {s['name']:<24} {s['docs_in']:>10,} -> {s['docs_out']:>10,} docs  {s['seconds']:8.1f}s",
                          highlight=False)
    if job["state"] != "succeeded":
        fail(f"job {job_id} {job['state']}" + (f": {job['error']}" if job.get("error") else ""), code=1)
    console.print(f"job {job_id} succeeded" + (f"; manifest {job['manifest_id']}" if job["manifest_id"] else ""),
                  highlight=False)


@jobs_app.command("stats")
def jobs_stats(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json as is.")] = False,
) -> None:
    """Print a finished job's per-stage table (its stats.json)."""
    with client_for(url, token) as client:
        stats = call(client, "GET", f"/v1/jobs/{job_id}/stats")
    if as_json:
        console.print_json(json.dumps(stats))
        return
    print_stats_table(RunStats.from_json(stats))


commands = typer.Typer(add_completion=False)
commands.command("serve")(serve)
commands.add_typer(token_app, name="token")
commands.add_typer(corpora_app, name="corpora")
commands.add_typer(jobs_app, name="jobs")

if __name__ == "__main__":  # python -m api.cli ...: the service commands alone
    commands()
