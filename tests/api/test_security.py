"""Issue 16, "Safe to expose": what the service refuses so that it can face a network.

- URIs: no query, fragment or userinfo (pyarrow reads filesystem options and credentials from
  them: SSRF with the service's signed requests); scheme, bucket and path compared separately;
  every path-valued stage parameter checked like a corpus URI; a bad URI is a 4xx, not a 500.
- Symlinks: a job, a registration and a scan refuse a file whose real path leaves the roots.
- Auth off only on loopback: the app factory refuses otherwise; a request that did not arrive
  on loopback is refused; `flywheel serve` exits.
- Tokens stay out of URLs and access logs: the dashboard signs in with a POST form.
- /openapi.json, /docs and /redoc need a read token; every route but /healthz and /static does.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import typing
from functools import partial
from pathlib import Path

import pytest
import uvicorn
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from sqlalchemy import select

from api.access_log import ACCESS_LOGGER
from api.app import create_app
from api.auth import InsecureSettings, create_token, is_loopback
from api.ids import new_id
from api.jobs import execute_job
from api.locations import LocationError, LocationForbidden, allowed_location
from api.models import Ablation, Job, JobStage
from api.settings import Settings
from api.stage_paths import PATH_PARAMS, TEXT_PARAMS, check_stage_paths
from curation.config import parse_config
from curation.io.files import InputError, plan_reads
from curation.stages import STAGES, stage_class
from tests.api.conftest import LiveServer, corpus_records, live_server, make_settings, write_jsonl
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
PUBLIC_PATHS = ("/healthz", "/static")  # the only routes without a token
# A value for each path parameter that passes its pattern (the dashboard checks ids before auth).
PATH_VALUES = {"job_id": "job_0123456789abcdef", "corpus_id": "cor_0123456789abcdef",
               "manifest_id": "man_0123456789abcdef", "ablation_id": "abl_0123456789abcdef",
               "tokenizer_id": "0" * 64, "name": "shard", "doc_id": "d1", "token_id": "tok_0123456789abcdef"}


class Canary:
    """A TCP listener on loopback that counts connections: where an SSRF would land."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> "Canary":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _upload(admin, tmp_path: Path) -> str:
    records, _ = corpus_records(40, seed=5)
    path = write_jsonl(tmp_path / "small.jsonl", records)
    with open(path, "rb") as f:
        r = admin.post("/v1/corpora", files={"file": ("small.jsonl", f)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


# --- 1. URIs: no options, parsed comparison, path-valued stage parameters ----------------------

@pytest.mark.parametrize("uri, error", [
    ("s3://lake/raw/x.jsonl?endpoint_override=127.0.0.1:9&scheme=http", LocationError),
    ("s3://lake/raw/x.jsonl#frag", LocationError),
    ("s3://AKIA:secret@lake/raw/x.jsonl", LocationError),
    ("s3://lake//raw/x.jsonl", LocationError),
    ("s3://lake/raw/./x.jsonl", LocationError),
    ("s3://lake/raw%2F..%2Fother/x.jsonl", LocationError),
    ("s3://lake/rawer/x.jsonl", LocationForbidden),
    ("s3://lake.evil/raw/x.jsonl", LocationForbidden),
    ("gs://lake/raw/x.jsonl", LocationForbidden),
    ("s3:lake/raw/x.jsonl", LocationError),
    ("s3://[lake/raw/x.jsonl", LocationError),
])
def test_remote_uris_are_parsed_not_prefix_matched(uri, error):
    with pytest.raises(error):
        allowed_location(uri, ("s3://lake/raw",))


def test_plain_remote_uris_inside_the_root_pass():
    for uri in ("s3://lake/raw", "s3://lake/raw/", "s3://lake/raw/a/b.jsonl", "S3://lake/raw/a.jsonl"):
        assert allowed_location(uri, ("s3://lake/raw/",)) == uri
    # A malformed root in the settings allows nothing, and breaks nothing.
    roots = ("s3://[bad", "file://host/x", "s3://lake/raw?x=1", "s3://lake/raw")
    assert allowed_location("s3://lake/raw/a.jsonl", roots) == "s3://lake/raw/a.jsonl"


def test_local_paths_with_a_query_or_a_host_are_refused(tmp_path):
    with pytest.raises(LocationError):
        allowed_location(f"{tmp_path}/x.jsonl?endpoint_override=h", (str(tmp_path),))
    with pytest.raises(LocationError):
        allowed_location(f"file://evil.example{tmp_path}/x.jsonl", (str(tmp_path),))


def test_s3_query_options_never_reach_the_chosen_host(service_home, database_url):
    """Before the fix the prefix matched, and the scan sent a signed request to the canary."""
    with Canary() as canary, live_server(service_home, database_url, allowed_roots=("s3://lake/raw",)) as srv:
        with srv.services.db.session() as s:
            _, token = create_token(s, "ssrf", "admin", srv.settings.token_pepper)
        with srv.client(token) as c:
            for uri in (f"s3://lake/raw/x.jsonl?endpoint_override=127.0.0.1:{canary.port}&scheme=http",
                        f"s3://lake/raw/?scheme=http&endpoint_override=localhost:{canary.port}"):
                r = c.post("/v1/corpora", json={"uri": uri})
                assert r.status_code == 422 and "query" in r.json()["detail"], r.text
        time.sleep(0.3)
    assert canary.connections == 0


def test_a_uri_pyarrow_cannot_open_is_422_not_500(service_home, database_url):
    # hdfs:// needs libhdfs and a JVM: FileSystem.from_uri raises OSError here.
    with live_server(service_home, database_url, allowed_roots=("hdfs://namenode/data",)) as srv:
        with srv.services.db.session() as s:
            _, token = create_token(s, "hdfs", "admin", srv.settings.token_pepper)
        with srv.client(token) as c:
            r = c.post("/v1/corpora", json={"uri": "hdfs://namenode/data/x.jsonl"})
    assert r.status_code == 422 and "cannot be read" in r.json()["detail"], r.text


def _text_bearing(annotation) -> bool:
    """Whether a field's type can hold text anywhere (str, containers of str, models with str)."""
    if annotation is str:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(_text_bearing(f.annotation) for f in annotation.model_fields.values())
    return any(_text_bearing(a) for a in typing.get_args(annotation))


def test_every_text_parameter_of_every_stage_is_classified():
    """A new stage parameter that can hold a path must be added to PATH_PARAMS (checked against
    the allowed roots) or, if it is never opened, to TEXT_PARAMS: this fails until it is."""
    for name in STAGES:
        fields = stage_class(name).Params.model_fields
        text = {f for f, info in fields.items() if _text_bearing(info.annotation)}
        paths, plain = set(PATH_PARAMS.get(name, ())), set(TEXT_PARAMS.get(name, ()))
        assert not paths & plain, name
        assert text == paths | plain, f"stage {name}: classify {sorted(text - paths - plain)} in api/stage_paths.py"
    assert set(PATH_PARAMS) | set(TEXT_PARAMS) <= set(STAGES)


def test_check_stage_paths_passes_files_inside_the_roots(tmp_path):
    model = write_jsonl(tmp_path / "allowed" / "lid.bin", ["x"])
    config = parse_config({"stages": [
        {"name": "language", "model": str(model)}, {"name": "perplexity", "models": {"web": "s3://lake/lm/web.arpa"}},
        {"name": "minhash_dedup", "dedup_against": [str(tmp_path / "allowed" / "run1")]}, "url_dedup",
    ]}, inputs=["x"], output="out")
    check_stage_paths(config.stages, (str(tmp_path / "allowed"), "s3://lake/lm"), "config.stages")


def _stage_cases(outside_file: Path, canary_port: int) -> list[tuple[dict, int, str]]:
    ssrf = f"s3://lake/lm/web.arpa?endpoint_override=127.0.0.1:{canary_port}&scheme=http"
    return [
        ({"name": "language", "model": str(outside_file)}, 403, "language.model"),
        ({"name": "language", "domain_model": str(outside_file)}, 403, "language.domain_model"),
        ({"name": "perplexity", "models": {"web": ssrf}}, 422, "perplexity.models"),
        ({"name": "perplexity", "models": {"web": str(outside_file)}}, 403, "perplexity.models"),
        ({"name": "tokenize", "tokenizer": str(outside_file)}, 403, "tokenize.tokenizer"),
        ({"name": "tokenize", "tokenizer": "s3://AKIA:x@lake/tok.json"}, 422, "tokenize.tokenizer"),
        ({"name": "minhash_dedup", "dedup_against": [str(outside_file.parent)]}, 403, "minhash_dedup.dedup_against"),
    ]


def test_job_stage_paths_outside_the_roots_are_refused(server, admin, tmp_path):
    corpus_id = _upload(admin, tmp_path)
    outside = write_jsonl(tmp_path / "outside" / "model.bin", ["not a model"])
    with server.services.db.session() as s:
        jobs_before = len(s.scalars(select(Job.id)).all())
    with Canary() as canary:
        for stage, status, param in _stage_cases(outside, canary.port):
            r = admin.post("/v1/jobs", json={"corpus_ids": [corpus_id], "config": {"stages": [stage]}})
            assert r.status_code == status and f"config.stages.{param}" in r.json()["detail"], (stage, r.text)
    assert canary.connections == 0
    with server.services.db.session() as s:
        assert len(s.scalars(select(Job.id)).all()) == jobs_before, "a refused config must queue nothing"


def test_ablation_stage_paths_outside_the_roots_are_refused(server, admin, tmp_path):
    corpus_id = _upload(admin, tmp_path)
    outside = write_jsonl(tmp_path / "outside" / "model.bin", ["not a model"])
    base = {"token_budget": 1000, "variants": [{"name": "raw"}]}
    variant = {**base, "variants": [{"name": "lm", "stages": [{"name": "tokenize", "tokenizer": str(outside)}]}]}
    clean = {**base, "holdout": {"clean_stages": [{"name": "language", "model": str(outside)}]}}
    source = {**base, "holdout": {"sources": {"web": str(outside)}}}  # read, and rejected lines echoed back
    for config, where in ((variant, "config.variants.lm.stages.tokenize.tokenizer"),
                          (clean, "config.holdout.clean_stages.language.model"),
                          (source, "config.holdout.sources.web")):
        r = admin.post("/v1/ablations", json={"corpus_id": corpus_id, "config": config})
        assert r.status_code == 403 and where in r.json()["detail"], r.text
    r = admin.post("/v1/ablations", json={"corpus_id": corpus_id, "config": {**base, "cache_dir": str(tmp_path)}})
    assert r.status_code == 422 and "cache_dir" in r.json()["detail"], r.text


# --- 2. symlinks out of the allowed roots -----------------------------------------------------

@pytest.fixture
def planted(tmp_path):
    """allowed/set/ with one real file, a symlink to a file outside and a symlinked folder outside."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    records = corpus_records(40, seed=1)[0][:10]
    write_jsonl(allowed / "set" / "good.jsonl", records)
    write_jsonl(allowed / "other.jsonl", records[:2])
    write_jsonl(outside / "secret.jsonl", [{"id": "s", "text": "SECRET=hunter2"}])
    write_jsonl(outside / "dir" / "more.jsonl", [{"id": "m", "text": "SECRET too"}])
    return allowed, outside


def test_plan_reads_refuses_files_whose_real_path_leaves_the_roots(planted):
    allowed, outside = planted
    (allowed / "set" / "leak.jsonl").symlink_to(outside / "secret.jsonl")
    with pytest.raises(InputError, match="leak.jsonl resolves outside the allowed roots"):
        plan_reads(str(allowed / "set"), "web", confine_to=(str(allowed),))
    (allowed / "set" / "leak.jsonl").unlink()
    (allowed / "set" / "linked").symlink_to(outside / "dir", target_is_directory=True)
    with pytest.raises(InputError, match="linked/more.jsonl"):
        plan_reads(str(allowed / "set"), "web", confine_to=(str(allowed),))
    # The CLI (no confine_to) reads what its owner points it at.
    assert len(plan_reads(str(allowed / "set"), "web")) == 2


def test_plan_reads_accepts_symlinks_that_stay_inside(planted):
    allowed, _ = planted
    (allowed / "set" / "alias.jsonl").symlink_to(allowed / "other.jsonl")
    tasks = plan_reads(str(allowed / "set"), "web", confine_to=("file://" + str(allowed),))
    assert sorted(t.source for t in tasks) == ["alias.jsonl", "good.jsonl"]


def test_registering_a_folder_with_a_symlink_out_is_refused(server, admin):
    allowed = server.settings.home / "allowed" / "planted"
    records = corpus_records(40, seed=1)[0][:10]
    write_jsonl(allowed / "good.jsonl", records)
    outside = write_jsonl(server.settings.home / "secret.jsonl", [{"id": "s", "text": "SECRET=hunter2"}])
    (allowed / "leak.jsonl").symlink_to(outside)
    r = admin.post("/v1/corpora", json={"uri": str(allowed)})
    assert r.status_code == 422 and "leak.jsonl resolves outside the allowed roots" in r.json()["detail"], r.text


def test_a_job_refuses_a_symlink_planted_after_registration(server, admin, database_url):
    allowed = server.settings.home / "allowed" / "later"
    records = corpus_records(40, seed=1)[0][:10]
    write_jsonl(allowed / "good.jsonl", records)
    r = admin.post("/v1/corpora", json={"uri": str(allowed)})
    assert r.status_code == 201, r.text
    (allowed / "leak.jsonl").symlink_to("/proc/self/environ")
    # A queued job as POST /v1/jobs leaves it, run in this process as its Ray actor would run it.
    job_id = new_id("job")
    output = server.services.storage.uri(f"jobs/{job_id}")
    config = parse_config({"stages": ["url_dedup"]}, inputs=[{"path": r.json()["uri"]}], output=output)
    with server.services.db.session() as s:
        s.add(Job(id=job_id, state="queued", corpus_ids=[r.json()["id"]], config=config.dump(), output_uri=output,
                  phase="queued", stages=[JobStage(position=i, name=n, state="pending")
                                          for i, n in enumerate(["read", "url_dedup"])]))
    runner = server.services.runner
    assert runner.job_function().keywords == {"read_roots": server.services.read_roots}
    assert isinstance(runner.job_function(), partial) and runner.job_function().func is execute_job
    assert runner.job_function()(database_url, job_id) == "failed"
    job = admin.get(f"/v1/jobs/{job_id}").json()
    assert "leak.jsonl resolves outside the allowed roots" in job["error"], job


def test_an_ablation_refuses_a_symlink_planted_after_registration(server, admin, database_url):
    allowed = server.settings.home / "allowed" / "abl-later"
    write_jsonl(allowed / "good.jsonl", corpus_records(40, seed=1)[0])
    r = admin.post("/v1/corpora", json={"uri": str(allowed)})
    assert r.status_code == 201, r.text
    (allowed / "leak.jsonl").symlink_to("/proc/self/environ")
    ablation_id = new_id("abl")
    with server.services.db.session() as s:
        s.add(Ablation(id=ablation_id, corpus_id=r.json()["id"], state="queued", phase="queued",
                       config={"token_budget": 1000, "variants": [{"name": "raw"}]},
                       out_uri=server.services.storage.uri(f"ablations/{ablation_id}")))
    run = server.services.ablation_runner.job_function()
    assert run.keywords == {"read_roots": server.services.read_roots}
    assert run(database_url, ablation_id) == "failed"
    ablation = admin.get(f"/v1/ablations/{ablation_id}").json()
    assert "leak.jsonl resolves outside the allowed roots" in ablation["error"], ablation


# --- 3. auth off only on loopback -------------------------------------------------------------

def test_the_app_factory_refuses_auth_off_on_a_public_interface(tmp_path):
    env = {"FLYWHEEL_HOME": str(tmp_path), "FLYWHEEL_AUTH": "0", "FLYWHEEL_HOST": "0.0.0.0"}
    with pytest.raises(InsecureSettings, match="auth is off on 0.0.0.0"):
        create_app(Settings.from_env(env))
    with pytest.raises(InsecureSettings):
        create_app(Settings.from_env({**env, "FLYWHEEL_HOST": "192.0.2.10"}))
    for ok in ({**env, "FLYWHEEL_HOST": "127.0.0.1"}, {**env, "FLYWHEEL_HOST": "::1"},
               {**env, "FLYWHEEL_AUTH": "1"}, {**env, "FLYWHEEL_INSECURE_NO_AUTH_ON_PUBLIC_INTERFACE": "1"}):
        create_app(Settings.from_env(ok))


def test_what_counts_as_loopback():
    for host in ("127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2", "example.org", "testserver", None):
        assert not is_loopback(host), host


def test_flywheel_serve_exits_without_auth_on_a_public_interface(tmp_path):
    env = {**os.environ, "FLYWHEEL_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "api.cli", "serve", "--no-auth", "--host", "0.0.0.0",
                             "--port", str(free_port())], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "--insecure-no-auth-on-public-interface" in result.stderr, result.stderr


def _own_public_address() -> str | None:
    """An address of this machine other than loopback (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_auth_off_answers_only_requests_that_arrived_on_loopback(service_home, database_url):
    """`uvicorn --factory --host 0.0.0.0` with FLYWHEEL_AUTH=0: the factory cannot see the
    interface, the request's own socket address can."""
    address = _own_public_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    server = LiveServer(make_settings(service_home, database_url, auth=False))
    server.sock.close()
    server.sock = socket.socket()
    server.sock.bind((address, 0))
    server.url = f"http://{address}:{server.sock.getsockname()[1]}"
    server.thread = threading.Thread(target=server.server.run, kwargs={"sockets": [server.sock]}, daemon=True)
    with server, server.client() as c:
        r = c.get("/v1/corpora")
        assert r.status_code == 403 and "loopback" in r.json()["detail"]
        assert c.post("/v1/jobs", json={"corpus_ids": ["cor_0123456789abcdef"], "config": {}}).status_code == 403
        assert c.get("/openapi.json").status_code == 403
        assert c.get("/healthz").status_code == 200


# --- 4. tokens out of URLs and logs -----------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_access_log_never_holds_a_token(server, tokens):
    logger = logging.getLogger(ACCESS_LOGGER)
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with server.client() as c:
            c.get(f"/?token={tokens['read']}")
            c.get(f"/v1/jobs?state=running&token={tokens['admin']}")
            c.get(f"/jobs/job_0123456789abcdef?x=1&access_token={tokens['read']}")
        time.sleep(0.2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(handler.lines) >= 3, handler.lines
    text = "\n".join(handler.lines)
    assert tokens["read"] not in text and tokens["admin"] not in text
    assert "token=[redacted]" in text and "state=running" in text


def test_sign_in_is_a_post_form_and_a_token_in_a_url_is_never_honoured(server, tokens):
    with server.client() as c:
        page = c.get("/jobs/job_0123456789abcdef?x=1")
        assert page.status_code == 401 and 'action="/sign-in"' in page.text and 'method="post"' in page.text
        assert 'value="/jobs/job_0123456789abcdef?x=1"' in page.text
        r = c.get(f"/?token={tokens['read']}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/" and "set-cookie" not in r.headers
        assert c.get("/").status_code == 401
        bad = c.post("/sign-in", data={"token": "fw_not-a-token", "next": "/jobs/job_0123456789abcdef"})
        assert bad.status_code == 401 and "invalid" in bad.text and "set-cookie" not in bad.headers
        assert 'value="/jobs/job_0123456789abcdef"' in bad.text  # a second try still goes back there
        assert c.post("/sign-in", data={"token": "x" * 20_000}).status_code == 401  # past the body limit
        cross = c.post("/sign-in", data={"token": tokens["read"]}, headers={"Origin": "https://evil.example"},
                       follow_redirects=False)
        assert cross.status_code == 403 and "set-cookie" not in cross.headers
        for target, expected in (("//evil.example/x", "/"), ("https://evil.example", "/"), ("/jobs/x?y=1", "/jobs/x?y=1")):
            r = c.post("/sign-in", data={"token": tokens["read"], "next": target}, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == expected, target
            cookie = r.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/").status_code == 200  # the cookie signs the browser in
        assert c.post("/v1/jobs/job_0123456789abcdef/cancel").status_code == 401  # and never writes


# --- 5 and 10. every route but /healthz and /static needs a token -------------------------------

def test_api_description_needs_a_read_token(server, tokens, service_home, database_url):
    for path in ("/openapi.json", "/docs", "/redoc"):
        with server.client() as c:
            assert c.get(path).status_code == 401, path
        with server.client(tokens["read"]) as c:
            assert c.get(path).status_code == 200, path
    with server.client(tokens["read"]) as c:
        assert "/v1/jobs" in c.get("/openapi.json").json()["paths"]
    with live_server(service_home, database_url, auth=False) as srv, srv.client() as c:
        assert c.get("/openapi.json").status_code == 200  # auth off, on loopback


def _routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route; iter_route_contexts also walks the included routers that
    FastAPI 0.165 keeps nested in app.routes."""
    found = []
    for route in iter_route_contexts(app.routes):
        methods = getattr(route, "methods", None) or {"GET"}
        found += [(method, route.path) for method in sorted(methods)]
    return found


def test_every_route_but_the_public_ones_needs_a_token(server):
    """A new route without auth fails here: walk them all and call each without a token."""
    routes = _routes(server.app)
    assert ("GET", "/v1/jobs") in routes and ("GET", "/openapi.json") in routes and ("POST", "/sign-in") in routes
    checked = []
    with server.client() as c:
        for method, path in routes:
            if path.startswith(PUBLIC_PATHS):
                continue
            url = _fill(path)
            kwargs = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
            r = c.request(method, url, **kwargs)
            assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
            checked.append((method, path))
    assert len(checked) >= 30


def _fill(path: str) -> str:
    """`path` with each `{param}` or `{param:converter}` replaced by a valid-looking value."""
    out = path
    while "{" in out:
        start, end = out.index("{"), out.index("}")
        name = out[start + 1:end].split(":")[0]
        assert name in PATH_VALUES, f"add a value for path parameter {name!r} to PATH_VALUES"
        out = out[:start] + PATH_VALUES[name] + out[end + 1:]
    return out


def test_uvicorn_factory_reads_the_exposure_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.setenv("FLYWHEEL_AUTH", "off")
    monkeypatch.setenv("FLYWHEEL_HOST", "0.0.0.0")
    with pytest.raises(InsecureSettings):
        uvicorn.Config("api.app:app_from_env", factory=True).load()
