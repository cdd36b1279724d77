"""Fixtures for the service tests: a real uvicorn on a loopback socket (in a thread), a real
SQLite file (and PostgreSQL with FLYWHEEL_TEST_POSTGRES=1), tokens, and small corpora.

PostgreSQL: `database_url` is parametrised over sqlite and postgresql; the postgresql case runs
only when FLYWHEEL_TEST_POSTGRES=1, against a throwaway server made by the Debian binaries
(`/usr/lib/postgresql/*/bin/initdb` + `pg_ctl`, as user `postgres` when running as root).
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

POSTGRES_FLAG = "FLYWHEEL_TEST_POSTGRES"


# --- databases -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    """`postgresql://postgres@127.0.0.1:PORT` of a throwaway cluster; stopped and deleted after the session."""
    if os.environ.get(POSTGRES_FLAG) != "1":
        pytest.skip(f"PostgreSQL tests run with {POSTGRES_FLAG}=1")
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        pytest.fail("FLYWHEEL_TEST_POSTGRES=1 but no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
    bindir = Path(initdbs[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    # initdb refuses to run as root: run the server as the `postgres` system user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                              "--no-sync"], check=True, capture_output=True)
    for _ in range(5):  # a free port can be taken by someone else before the server binds it
        port = free_port()
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        started = subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-o", options,
                                            "-l", str(root / "log"), "-w", "start"], capture_output=True)
        if started.returncode == 0:
            break
    else:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {started.stdout.decode()[-500:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'flywheel.db'}"
    server = request.getfixturevalue("postgres_server")
    import psycopg

    name = f"flywheel_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


# --- the service -----------------------------------------------------------------------------

class LiveServer:
    """uvicorn serving `create_app(settings)` on a loopback socket, in a thread of this process."""

    def __init__(self, settings) -> None:
        import uvicorn

        from api.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def services(self):
        return self.app.state.services

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


def make_settings(home: Path, database_url: str, **overrides):
    from api.settings import Settings

    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_DATABASE_URL": database_url}
    defaults = dict(allowed_roots=(str(home / "allowed"),), max_upload_bytes=256 * 1024, reap_interval_s=1.0)
    return Settings.from_env(env, **{**defaults, **overrides})


@contextmanager
def live_server(home: Path, database_url: str, **overrides):
    with LiveServer(make_settings(home, database_url, **overrides)) as server:
        yield server


@pytest.fixture(scope="module")
def service_home(tmp_path_factory, database_url) -> Path:
    """One home (storage root) per database: a database's rows and its files belong together."""
    return tmp_path_factory.mktemp("flywheel-home")


@pytest.fixture(scope="module")
def server(service_home, database_url):
    with live_server(service_home, database_url) as s:
        yield s


@pytest.fixture(scope="module")
def tokens(server) -> dict[str, str]:
    from api.auth import create_token

    out = {}
    with server.services.db.session() as s:
        for scope in ("read", "admin"):
            _, out[scope] = create_token(s, f"test-{scope}", scope, server.settings.token_pepper)
    return out


@pytest.fixture(scope="module")
def admin(server, tokens):
    with server.client(tokens["admin"]) as c:
        yield c


@pytest.fixture(scope="module")
def reader(server, tokens):
    with server.client(tokens["read"]) as c:
        yield c


# --- data ------------------------------------------------------------------------------------

def corpus_records(n: int = 200, seed: int = 0) -> tuple[list[dict], dict[str, set[str]]]:
    """`n` documents in which some share a URL (up to case, tracking params, fragments) and some
    share a text (up to case and whitespace) with an earlier one. Returns (records, planted ids)."""
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()
    base = []
    for i in range(n - 20):
        text = " ".join(rng.choice(words) for _ in range(12 + i % 7)) + f" doc{i}."
        base.append({"id": f"d{i:03}", "text": text, "url": f"https://site.org/p/{i}",
                     "domain": "web" if i % 4 else "wiki"})
    url_dups = [{"id": f"u{i:03}", "text": f"fresh words number {i}",
                 "url": f"HTTP://SITE.org:80/p/{i}/?utm_source=x#frag"} for i in range(10)]
    text_dups = [{"id": f"x{i:03}", "text": "  " + base[i + 10]["text"].upper() + " ",
                  "url": f"https://elsewhere.net/{i}"} for i in range(10)]
    return base + url_dups + text_dups, {"url": {r["id"] for r in url_dups}, "exact": {r["id"] for r in text_dups}}


def write_jsonl(path: Path, records: list, extra_lines: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(x + "\n" for x in extra_lines))
    return path


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def sibling_database(database_url: str, tmp_path: Path) -> str:
    """A new, empty database on the same backend as `database_url`."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / f'other-{uuid.uuid4().hex[:8]}.db'}"
    import psycopg

    server = database_url.rsplit("/", 1)[0]
    name = f"flywheel_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"
