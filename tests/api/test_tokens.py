"""Issue 16, item 6: tokens can be listed, revoked and made to expire, on the CLI and over the API.

A revoked or expired token is a 401 from its next request (no cache keeps it valid), and
`last_used_at` is written at most once a minute per token, so reads do not become writes.
Real uvicorn on loopback, the real `flywheel` commands (CliRunner), SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, select
from typer.testing import CliRunner

from api.auth import create_token, parse_duration
from api.models import ApiToken, utcnow
from flywheel.cli import app as flywheel_cli


@pytest.fixture
def cli_env(monkeypatch, service_home, database_url):
    """The CLI's environment: the same database (and pepper) as the test server."""
    monkeypatch.setenv("FLYWHEEL_HOME", str(service_home))
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", database_url)


def flywheel(*args: str):
    return CliRunner().invoke(flywheel_cli, list(args))


def cli_token(name: str, *options: str) -> tuple[str, str]:
    """(id, token) of a token made by `flywheel token create`."""
    result = flywheel("token", "create", name, *options)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    token_id = result.stderr.split()[1]
    assert token.startswith("fw_") and token_id.startswith("tok_"), result.output
    return token_id, token


def listed(token_id: str) -> dict:
    result = flywheel("token", "list", "--json")
    assert result.exit_code == 0, result.output
    return {t["id"]: t for t in json.loads(result.stdout)}[token_id]


def status(server, token: str, path: str = "/v1/jobs") -> int:
    with server.client(token) as c:
        return c.get(path).status_code


def test_cli_list_shows_id_name_scope_created_last_used_expiry_revoked(server, cli_env):
    token_id, token = cli_token("nightly-export", "--scope", "read", "--expires-in", "30d")
    before = listed(token_id)
    assert before["name"] == "nightly-export" and before["scope"] == "read" and before["state"] == "active"
    assert before["last_used_at"] is None and before["revoked_at"] is None
    lifetime = parse_duration("30d")
    created, expires = (datetime.fromisoformat(before[k]) for k in ("created_at", "expires_at"))
    assert abs((expires - created) - lifetime) < timedelta(seconds=1)
    assert status(server, token) == 200
    assert listed(token_id)["last_used_at"] is not None
    table = flywheel("token", "list")
    assert table.exit_code == 0
    header = table.stdout.splitlines()[0].split()
    assert header[:4] == ["ID", "SCOPE", "STATE", "CREATED"] and {"EXPIRES", "REVOKED", "NAME"} <= set(header)
    row = next(line for line in table.stdout.splitlines() if line.startswith(token_id))
    assert row.split()[1:3] == ["read", "active"] and row.endswith("nightly-export")


def test_cli_revoke_is_a_401_at_once(server, cli_env):
    token_id, token = cli_token("to-revoke", "--scope", "admin")
    with server.client(token) as c:  # one keep-alive connection before and after the revocation
        assert c.get("/v1/jobs").status_code == 200
        revoked = flywheel("token", "revoke", token_id)
        assert revoked.exit_code == 0, revoked.output
        r = c.get("/v1/jobs")
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        assert c.post("/v1/jobs/job_0123456789abcdef/cancel").status_code == 401
    assert listed(token_id)["state"] == "revoked" and listed(token_id)["revoked_at"] is not None
    missing = flywheel("token", "revoke", "tok_0123456789abcdef")
    assert missing.exit_code == 1 and "no token" in missing.output


def test_expired_token_is_a_401(server, cli_env):
    token_id, token = cli_token("short-lived", "--expires-in", "2s")
    assert status(server, token) == 200
    expires_at = datetime.fromisoformat(listed(token_id)["expires_at"])
    time.sleep(max(0.0, (expires_at - utcnow()).total_seconds()) + 0.1)
    assert status(server, token) == 401
    assert listed(token_id)["state"] == "expired"


@pytest.mark.parametrize("lifetime", ["soon", "0", "-5m", "10y", "999999999w"])
def test_cli_refuses_a_bad_lifetime(cli_env, lifetime):
    result = flywheel("token", "create", "x", "--expires-in", lifetime)
    assert result.exit_code == 2 and "--expires-in" in result.output


def test_admin_routes_list_and_revoke(server, admin, reader, tokens):
    with server.services.db.session() as s:
        row, victim = create_token(s, "api-victim", "read", server.settings.token_pepper,
                                   expires_in=timedelta(days=1))
        victim_id = row.id
    assert status(server, victim) == 200
    listing = admin.get("/v1/tokens").json()
    by_id = {t["id"]: t for t in listing["items"]}
    assert listing["total"] == len(listing["items"]) and victim_id in by_id
    assert set(by_id[victim_id]) == {"id", "name", "scope", "state", "created_at", "last_used_at", "expires_at",
                                     "revoked_at"}
    assert by_id[victim_id]["expires_at"] is not None and by_id[victim_id]["last_used_at"] is not None
    assert "token_hash" not in json.dumps(listing) and victim not in json.dumps(listing)
    assert reader.get("/v1/tokens").status_code == 403
    assert reader.post(f"/v1/tokens/{victim_id}/revoke").status_code == 403

    first = admin.post(f"/v1/tokens/{victim_id}/revoke")
    assert first.status_code == 200 and first.json()["state"] == "revoked"
    assert status(server, victim) == 401
    again = admin.post(f"/v1/tokens/{victim_id}/revoke")
    assert again.status_code == 200 and again.json()["revoked_at"] == first.json()["revoked_at"]
    assert admin.post("/v1/tokens/tok_0123456789abcdef/revoke").status_code == 404
    assert admin.post("/v1/tokens/tok_not-an-id/revoke").status_code == 422


def test_last_used_is_written_at_most_once_a_minute(server):
    """Reads stay reads: 40 requests of one token, 8 at a time, update its row once."""
    with server.services.db.session() as s:
        row, token = create_token(s, "busy-reader", "read", server.settings.token_pepper)
        token_id = row.id
    written = []

    def count_token_updates(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE API_TOKENS"):
            written.append(cursor.rowcount)

    engine = server.services.db.engine
    event.listen(engine, "after_cursor_execute", count_token_updates)
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: status(server, token, "/v1/corpora"), range(40)))
    finally:
        event.remove(engine, "after_cursor_execute", count_token_updates)
    assert codes == [200] * 40
    assert sum(written) == 1, written
    with server.services.db.session() as s:
        assert s.scalar(select(ApiToken.last_used_at).where(ApiToken.id == token_id)) is not None
