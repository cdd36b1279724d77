"""Service commands for the `flywheel` CLI: the server, API tokens, and a small HTTP client.

`flywheel.cli` mounts `commands` on the main app:

    flywheel serve [--host 127.0.0.1] [--port 8000] [--no-auth [--insecure-no-auth-on-public-interface]]
    flywheel token create NAME [--scope read|admin] [--expires-in 30d]
    flywheel token list [--json]                              flywheel token revoke ID
    flywheel corpora upload FILE [--domain D] [--name N]      flywheel corpora list
    flywheel jobs submit CONFIG --corpus ID [--corpus ID ...] [--watch]
    flywheel jobs watch ID                                    flywheel jobs stats ID

Client commands read `--url`/`FLYWHEEL_URL` (default http://127.0.0.1:8000) and
`--token`/`FLYWHEEL_TOKEN`. Heavy imports (FastAPI, SQLAlchemy, Ray) happen inside commands.
"""

from __future__ import annotations

import json
import os
import signal
import sys
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
# The request line and headers uvicorn reads before a request starts: far above what a browser
# or client sends (~1-8 KiB), and the most one connection makes the server hold.
MAX_REQUEST_HEAD_BYTES = 64 * 1024
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
    # uvicorn stops gracefully on SIGTERM, then re-raises it with the handler it found: the default
    # one would end the process there, before Ray's shutdown (its agents were left as orphans).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    _no_ray_failure_handler_here()
    try:
        # h11, not httptools: httptools holds a request's head whole however large it is (an 8 MB
        # header was read); h11 refuses one past MAX_REQUEST_HEAD_BYTES.
        uvicorn.run(app, host=host, port=port, log_level="info", http="h11",
                    h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
    finally:
        stop_own_processes()


def _no_ray_failure_handler_here() -> None:
    """Keep the embedded Ray's driver from installing its C++ failure-signal handler in this
    process: it takes SIGTERM too, and after it has run once `ray.shutdown()` aborts (SIGABRT),
    leaving Ray's agents behind. Read once, at import: Ray's own processes keep theirs."""
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
    try:
        import ray._private.ray_constants  # noqa: F401  (Ray: reads the variable now, for this process)
    finally:
        del os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"]


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def stop_own_processes(timeout_s: float = 15.0) -> None:
    """Shut down the embedded Ray this process started, then end whatever else it started and
    left running (a Ray agent whose raylet went first, a scan process): nothing of the service
    outlives it. Children are listed before Ray goes, since an orphan is no longer a child."""
    import psutil  # a Ray dependency: loaded by `serve` at exit only

    children = psutil.Process().children(recursive=True)
    ray = sys.modules.get("ray")  # imported only if a job started (or joined) Ray
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    alive = [p for p in children if p.is_running()]
    for p in alive:
        _signal_quietly(p.terminate)
    _, alive = psutil.wait_procs(alive, timeout=timeout_s)
    for p in alive:
        _signal_quietly(p.kill)


def _signal_quietly(send: Any) -> None:
    import psutil  # as above

    try:
        send()
    except psutil.NoSuchProcess:  # it ended on its own meanwhile
        pass


def _token_database():
    """(settings, the service's database migrated to head): the token commands work on the
    database directly, like the server, so they need no running service and no token."""
    from api.db import Database  # SQLAlchemy: flywheel[service], loaded by the token commands only
    from api.settings import Settings  # pydantic: loaded by the token commands only (fast --help)

    settings = Settings.from_env()
    settings.prepare()
    db = Database(settings.database_url)
    db.migrate()
    return settings, db


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what uses the token.")],
    scope: Annotated[str, typer.Option(help="read (GET only) or admin (also create and cancel).")] = "read",
    expires_in: Annotated[Optional[str], typer.Option(
        "--expires-in", help="Lifetime: 90m, 12h, 30d, 2w (a bare number is seconds). Default: never expires.",
        show_default=False)] = None,
) -> None:
    """Create an API token and print it once (only its hash is stored)."""
    from api.auth import create_token, parse_duration  # SQLAlchemy: flywheel[service], loaded by `token create` only
    from api.models import SCOPES  # flywheel[service]

    if scope not in SCOPES:
        fail(f"--scope must be one of {', '.join(SCOPES)}")
    try:
        lifetime = parse_duration(expires_in) if expires_in is not None else None
    except ValueError as e:
        fail(f"--expires-in: {e}")
    settings, db = _token_database()
    with db.session() as s:
        row, token = create_token(s, name, scope, settings.token_pepper, expires_in=lifetime)
    db.dispose()
    until = f", expires {row.expires_at:%Y-%m-%d %H:%M:%S} UTC" if row.expires_at else ""
    err_console.print(f"token {row.id} ({scope}{until}) for {name!r}; it is shown only now:", highlight=False)
    print(token)


def _when(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment is not None else "-"


@token_app.command("list")
def token_list(as_json: Annotated[bool, typer.Option("--json", help="One JSON array, times in ISO 8601.")] = False,
               ) -> None:
    """List tokens: id, name, scope, created, last used, expiry, revoked (times in UTC)."""
    from api.auth import list_tokens  # SQLAlchemy: flywheel[service], loaded by `token list` only
    from api.models import utcnow  # flywheel[service]

    _, db = _token_database()
    with db.session() as s:
        rows = list_tokens(s)
    db.dispose()
    now = utcnow()
    if as_json:
        fields = ("id", "name", "scope", "created_at", "last_used_at", "expires_at", "revoked_at")
        print(json.dumps([{**{k: getattr(r, k) for k in fields}, "state": r.state_at(now)} for r in rows],
                         default=lambda moment: moment.isoformat()))
        return
    print(f"{'ID':<20}  {'SCOPE':<5}  {'STATE':<7}  {'CREATED':<16}  {'LAST USED':<16}  {'EXPIRES':<16}  "
          f"{'REVOKED':<16}  NAME")
    for r in rows:
        print(f"{r.id:<20}  {r.scope:<5}  {r.state_at(now):<7}  {_when(r.created_at):<16}  "
              f"{_when(r.last_used_at):<16}  {_when(r.expires_at):<16}  {_when(r.revoked_at):<16}  {r.name}")


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="Token id (tok_..., from `flywheel token list`).")],
                 ) -> None:
    """Revoke a token: the service refuses it (401) from its next request on."""
    from api.auth import revoke_token  # SQLAlchemy: flywheel[service], loaded by `token revoke` only

    _, db = _token_database()
    with db.session() as s:
        row = revoke_token(s, token_id)
    db.dispose()
    if row is None:
        fail(f"no token {token_id}", code=1)
    err_console.print(f"token {row.id} ({row.scope}) for {row.name!r} revoked at {_when(row.revoked_at)} UTC",
                      highlight=False)


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
