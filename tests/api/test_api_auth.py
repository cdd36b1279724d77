"""Bearer tokens: hashed at rest, 401 without/with a wrong token, 403 for a read token on an admin
route, /healthz open, --no-auth open; and `flywheel token create` printing a working token once."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from api.auth import hash_token
from api.cli import commands as service_commands
from api.models import ApiToken
from tests.api.conftest import live_server

ADMIN_ROUTES = [("POST", "/v1/jobs", {"json": {"corpus_ids": ["cor_0123456789abcdef"], "config": {}}}),
                ("POST", "/v1/corpora", {"json": {"uri": "/nowhere"}}),
                ("POST", "/v1/jobs/job_0123456789abcdef/cancel", {})]
READ_ROUTES = ["/v1/corpora", "/v1/jobs", "/v1/manifests", "/metrics", "/v1/jobs/job_0123456789abcdef"]


def test_healthz_needs_no_token(server):
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok", "database": "ok"}


@pytest.mark.parametrize("path", READ_ROUTES)
def test_missing_or_wrong_token_is_401(server, path):
    with server.client() as c:
        r = c.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "token" in r.json()["detail"]
    with server.client("fw_not-a-real-token") as c:
        assert c.get(path).status_code == 401
    with server.client() as c:
        assert c.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401


@pytest.mark.parametrize("method, path, kwargs", ADMIN_ROUTES)
def test_read_scope_cannot_write(reader, method, path, kwargs):
    r = reader.request(method, path, **kwargs)
    assert r.status_code == 403 and "admin" in r.json()["detail"]


def test_read_scope_reads_and_admin_writes(reader, admin):
    for path in READ_ROUTES[:4]:
        assert reader.get(path).status_code == 200, path
    # Past auth, the admin request fails on its content (422/404), not on its scope.
    assert admin.post("/v1/jobs", json={"corpus_ids": ["cor_0123456789abcdef"], "config": {}}).status_code == 422
    assert admin.post("/v1/jobs/job_0123456789abcdef/cancel").status_code == 404


def test_tokens_are_stored_hashed(server, tokens):
    with server.services.db.session() as s:
        stored = s.scalars(select(ApiToken.token_hash)).all()
    for token in tokens.values():
        assert token not in stored
        assert hash_token(token, server.settings.token_pepper) in stored


def test_no_auth_mode(service_home, database_url):
    with live_server(service_home, database_url, auth=False) as srv, srv.client() as c:
        assert c.get("/v1/corpora").status_code == 200
        assert c.post("/v1/jobs", json={"corpus_ids": ["cor_0123456789abcdef"], "config": {}}).status_code == 422


def test_cli_token_create_prints_a_working_token(server, database_url, service_home, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(service_home))
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", database_url)
    cli = service_commands
    result = CliRunner().invoke(cli, ["token", "create", "ci-bot", "--scope", "admin"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("fw_")
    with server.client(token) as c:
        assert c.get("/v1/jobs").status_code == 200
    bad = CliRunner().invoke(cli, ["token", "create", "x", "--scope", "root"])
    assert bad.exit_code == 2
