"""/v1/ablations. Create (config validation, `config:` paths and unknown corpora refused with 422),
list, read (curves and result table from an output folder laid out as the runner writes it, a
torn last line, thinning, a malformed ablation.json), cancel, scopes, the reaper failing a running
ablation without an actor; and real runs through the job actor on Ray, on a server of their own:
a miniature ablation end to end, and one that fails for a reason the user can act on. Every
ablation a test server still has active at the end is cancelled and its actor killed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from api.ablations import execute_ablation_job
from api.ids import new_id
from api.models import ACTIVE_STATES, Ablation, utcnow
from tests.api.conftest import live_server, wait_for, write_jsonl

pytestmark = pytest.mark.slow

CONFIG = {"seed": 7, "token_budget": 163_840, "eval_every_steps": 10,
          "train": {"preset": "tiny", "seq_len": 64, "global_batch_tokens": 4096, "micro_batch": 8},
          "holdout": {"docs_per_domain": 5},
          "variants": [{"name": "raw"},
                       {"name": "dedup", "stages": ["url_dedup", "exact_dedup"]},
                       {"name": "full", "description": "dedup, then heuristics",
                        "stages": ["url_dedup", "exact_dedup", {"name": "heuristics"}]}]}
VARIANTS = ["raw", "dedup", "full"]


# --- the runner's output folder ----------------------------------------------------------------

def write_ablation_output(out: Path, *, variants: list[str] = VARIANTS, domains: tuple[str, ...] = ("code", "web"),
                          steps: int = 40, eval_every: int = 10, tokens_per_step: int = 4096, finished: bool = True,
                          torn_tail: bool = False) -> dict[str, Any]:
    """OUT as workflows/ablation/runner.py leaves it: config, held-out sets, tokenizer, each
    variant's curated/ and train/{metrics,eval}.jsonl, and ablation.json when `finished`.
    Variant i's losses are lower by 0.1 * i; domain j's held-out loss is higher by 0.05 * j.
    Returns ablation.json's content (also when it is not written)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation_config.json").write_text(json.dumps(CONFIG))
    for d in domains:
        write_jsonl(out / "holdout" / "eval" / f"{d}.jsonl", [{"id": f"{d}-held-{k}", "text": f"held out {d} {k}",
                                                                "domain": d} for k in range(5)])
    (out / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    summaries, table = [], []
    for i, name in enumerate(variants):
        vdir = out / "variants" / name
        (vdir / "curated").mkdir(parents=True, exist_ok=True)
        (vdir / "curated" / "stats.json").write_text(json.dumps({"stages": []}))
        (vdir / "curated" / "manifest.json").write_text(json.dumps({"shards": []}))
        metrics = [{"step": s, "loss": round(8.0 - 0.05 * s - 0.1 * i, 6), "tokens": s * tokens_per_step,
                    "tokens_per_s": 2000.0} for s in range(1, steps + 1)]
        evals = []
        for s in range(eval_every, steps + 1, eval_every):
            per_domain = {d: round(7.0 - 0.02 * s - 0.1 * i + 0.05 * j, 6) for j, d in enumerate(domains)}
            overall = round(sum(per_domain.values()) / len(per_domain), 6)
            metric = lambda loss: {"loss": loss, "perplexity": 2.0 ** loss, "bits_per_byte": loss / 3, "tokens": 500,
                                   "documents": 5}  # noqa: E731
            evals.append({"step": s, "tokens": s * tokens_per_step, "overall": metric(overall),
                          "domains": {d: metric(v) for d, v in per_domain.items()},
                          "files": {d: f"holdout/eval/{d}.jsonl" for d in domains}, "time": 1.5 * s})
        write_jsonl(vdir / "train" / "metrics.jsonl", metrics)
        if torn_tail:  # the trainer is writing the next line
            with open(vdir / "train" / "metrics.jsonl", "a") as f:
                f.write('{"step": %d, "lo' % (steps + 1))
        write_jsonl(vdir / "train" / "eval.jsonl", evals)
        last = evals[-1] if evals else {"overall": {"loss": None}, "domains": {}}
        docs_kept = 1000 - 100 * i
        summaries.append({"name": name, "description": "", "docs_in": 1000, "docs_kept": docs_kept,
                          "tokens": 150_000 - 20_000 * i, "steps": steps, "trained_tokens": steps * tokens_per_step,
                          "epochs": round(steps * tokens_per_step / (150_000 - 20_000 * i), 3), "seconds": 12.5,
                          "eval": {"overall": last["overall"], "domains": last["domains"]}, "dir": f"variants/{name}"})
        table.append({"variant": name, "tokens": 150_000 - 20_000 * i, "docs_kept": docs_kept,
                      "loss": {d: m["loss"] for d, m in last["domains"].items()}, "overall": last["overall"]["loss"]})
    result = {"seed": 7, "token_budget": steps * tokens_per_step, "preset": "tiny", "steps": steps,
              "domains": list(domains), "eval_files": {d: f"holdout/eval/{d}.jsonl" for d in domains},
              "leakage": {"near_duplicate_jaccard": 0.5, "held_out_docs": 5 * len(domains),
                          "removed_from_training_pool": 3, "pairs_found": 0},
              "variants": summaries, "table": table}
    if finished:
        (out / "ablation.json").write_text(json.dumps(result, indent=2))
    return result


def expected_curves(out: Path, variant: str) -> dict[str, list]:
    """What GET should answer for a variant, straight from its files."""
    vdir = out / "variants" / variant / "train"
    train = [json.loads(ln) for ln in (vdir / "metrics.jsonl").read_text().splitlines() if ln.endswith("}")]
    evals = [json.loads(ln) for ln in (vdir / "eval.jsonl").read_text().splitlines()]
    return {"train": [{"step": r["step"], "tokens": r["tokens"], "loss": r["loss"]} for r in train],
            "eval": [{"step": r["step"], "tokens": r["tokens"], "loss": r["overall"]["loss"],
                      "domains": {d: m["loss"] for d, m in r["domains"].items()}} for r in evals]}


# --- fixtures ------------------------------------------------------------------------------------

def stop_ablations(services) -> list[str]:
    """Cancel every active ablation of a test server and kill its actor, if it has one: a queued
    one left behind would be started for real by the reaper, and a detached actor outlives the
    test session. Returns the ids stopped."""
    with services.db.session() as s:
        active = s.scalars(select(Ablation.id).where(Ablation.state.in_(ACTIVE_STATES))).all()
    for ablation_id in active:
        services.ablation_runner.cancel(ablation_id)
    return list(active)


@pytest.fixture(scope="module")
def started(server, ray_local):
    """Ablation ids the service asked Ray to start: recorded, never run, for the whole module
    (real runs have their own server, `real_server`). Ray itself is up, small, for cancel and
    the reaper."""
    runner = server.services.ablation_runner
    calls: list[str] = []
    runner.start = calls.append
    yield calls
    stop_ablations(server.services)  # while `start` still records: the reaper can start nothing
    del runner.start


CORPUS_DOCS = [{"id": f"d{i}", "text": f"document number {i} " * 5, "domain": ("code", "web")[i % 2]}
               for i in range(40)]


@pytest.fixture(scope="module")
def corpus(admin, tmp_path_factory) -> dict:
    path = write_jsonl(tmp_path_factory.mktemp("abl-corpus") / "docs.jsonl", CORPUS_DOCS)
    with open(path, "rb") as f:
        r = admin.post("/v1/corpora", files={"file": ("docs.jsonl", f)})
    assert r.status_code == 201, r.text
    return r.json()


def create(admin, corpus_id: str, config: dict = CONFIG):
    return admin.post("/v1/ablations", json={"corpus_id": corpus_id, "config": config})


def out_dir(server, ablation_id: str) -> Path:
    with server.services.db.session() as s:
        return Path(s.get(Ablation, ablation_id).out_uri)


def set_state(server, ablation_id: str, state: str) -> None:
    with server.services.db.session() as s:
        s.execute(update(Ablation).where(Ablation.id == ablation_id).values(state=state))


# --- create --------------------------------------------------------------------------------------

def test_create_validates_queues_and_starts(server, admin, corpus, started):
    r = create(admin, corpus["id"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("abl_") and body["state"] == "queued" and body["phase"] == "queued"
    assert body["corpus_id"] == corpus["id"] and body["variants"] == VARIANTS
    assert body["config"] == CONFIG  # as submitted: no corpus/output, stage parameters intact
    assert body["curves"] == {v: {"train": [], "eval": []} for v in VARIANTS}
    assert body["table"] is None and body["leakage"] is None and body["domains"] is None
    assert started[-1] == body["id"]
    out = out_dir(server, body["id"])
    assert out == Path(server.services.storage.uri(f"ablations/{body['id']}"))


@pytest.mark.parametrize("config, message", [
    ({k: v for k, v in CONFIG.items() if k != "token_budget"}, "token_budget"),
    ({**CONFIG, "token_budget": 0}, "token_budget"),
    ({**CONFIG, "variants": []}, "variants"),
    ({**CONFIG, "variants": [{"name": "raw"}, {"name": "raw"}]}, "unique"),
    ({**CONFIG, "variants": [{"name": "Bad Name"}]}, "variants.0.name"),
    ({**CONFIG, "variants": [{"name": "x", "stages": ["minhsh"]}]}, "unknown stage"),
    ({**CONFIG, "variants": [{"name": "x", "stages": [{"name": "exact_dedup", "lowercse": True}]}]}, "lowercse"),
    ({**CONFIG, "variants": [{"name": "x", "stages": [{"name": []}]}]}, "config"),
    ({**CONFIG, "train": {"preset": "tiny", "steps": 5}}, "set by the ablation"),
    ({**CONFIG, "stepz": 3}, "stepz"),
    ({**CONFIG, "corpus": "/etc/passwd"}, "set by the service"),
    ({**CONFIG, "output": "/tmp/elsewhere"}, "set by the service"),
    ({**CONFIG, "variants": [{"name": "full", "config": "curation/configs/demo.yaml"}]}, "config files"),
    ({**CONFIG, "variants": [{"name": "raw"}, {"name": "full", "config": "/etc/hostname"}]}, "variant full"),
    ({**CONFIG, "tokenizer": {"path": "/srv/tokenizer.json"}}, "tokenizer.path"),
])
def test_a_bad_config_is_422_and_starts_nothing(admin, reader, corpus, started, config, message):
    before, calls = reader.get("/v1/ablations").json()["total"], len(started)
    r = create(admin, corpus["id"], config)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert reader.get("/v1/ablations").json()["total"] == before and len(started) == calls


def test_unknown_or_invalid_corpus_is_422(server, admin, started):
    r = create(admin, "cor_0000000000000000")
    assert r.status_code == 422 and "no corpus cor_0000000000000000" in r.json()["detail"]
    assert create(admin, "../../etc").status_code == 422
    r = admin.post("/v1/ablations", json={"corpus_id": "cor_0000000000000000"})
    assert r.status_code == 422 and "config" in r.json()["detail"]
    from api.models import Corpus

    bad = new_id("cor")
    with server.services.db.session() as s:
        s.add(Corpus(id=bad, name="empty", source="uri", uri="/nowhere", size_bytes=0, state="invalid",
                     error="no valid documents"))
    r = create(admin, bad)
    assert r.status_code == 422 and "invalid (no valid documents)" in r.json()["detail"]


def test_scopes(server, reader, corpus, started):
    assert reader.post("/v1/ablations", json={"corpus_id": corpus["id"], "config": CONFIG}).status_code == 403
    assert reader.post("/v1/ablations/abl_0000000000000000/cancel").status_code == 403
    with server.client() as anonymous:
        assert anonymous.get("/v1/ablations").status_code == 401
        assert anonymous.get("/v1/ablations/abl_0000000000000000").status_code == 401


# --- list and read -------------------------------------------------------------------------------

def test_list_is_newest_first_paged_and_filtered(admin, reader, corpus, started):
    ids = [create(admin, corpus["id"]).json()["id"] for _ in range(3)]
    page = reader.get("/v1/ablations", params={"limit": 2}).json()
    assert [i["id"] for i in page["items"]] == ids[::-1][:2] and page["total"] >= 3 and page["limit"] == 2
    assert "curves" not in page["items"][0] and page["items"][0]["variants"] == VARIANTS
    rest = reader.get("/v1/ablations", params={"limit": 1, "offset": 2}).json()
    assert rest["items"][0]["id"] == ids[0]
    queued = reader.get("/v1/ablations", params={"state": "queued"}).json()
    assert set(ids) <= {i["id"] for i in queued["items"]}
    assert reader.get("/v1/ablations", params={"state": "succeeded"}).json()["items"] == []
    assert reader.get("/v1/ablations", params={"state": "done"}).status_code == 422


def test_read_finished_ablation_has_curves_table_and_leakage(server, admin, reader, corpus, started):
    ablation_id = create(admin, corpus["id"]).json()["id"]
    out = out_dir(server, ablation_id)
    result = write_ablation_output(out)
    set_state(server, ablation_id, "succeeded")
    body = reader.get(f"/v1/ablations/{ablation_id}").json()
    assert body["state"] == "succeeded" and body["result_error"] is None
    assert body["table"] == result["table"] and body["leakage"] == result["leakage"]
    assert body["domains"] == ["code", "web"]
    assert list(body["curves"]) == VARIANTS
    for variant in VARIANTS:
        assert body["curves"][variant] == expected_curves(out, variant)
    assert len(body["curves"]["raw"]["train"]) == 40 and len(body["curves"]["raw"]["eval"]) == 4
    # The table's final losses are the last evaluation's.
    assert body["table"][1]["overall"] == body["curves"]["dedup"]["eval"][-1]["loss"]


def test_read_while_running_tolerates_partial_files(server, admin, reader, corpus, started):
    ablation_id = create(admin, corpus["id"]).json()["id"]
    out = out_dir(server, ablation_id)
    # Two variants have started training (one far along, its last line half written), one has not.
    write_ablation_output(out, variants=["raw"], steps=1200, eval_every=100, finished=False, torn_tail=True)
    write_ablation_output(out, variants=["dedup"], steps=3, eval_every=10, finished=False)
    set_state(server, ablation_id, "running")
    body = reader.get(f"/v1/ablations/{ablation_id}").json()
    assert body["table"] is None and body["leakage"] is None and body["result_error"] is None
    raw = body["curves"]["raw"]
    assert len(raw["train"]) <= 500 and raw["train"][0]["step"] == 1 and raw["train"][-1]["step"] == 1200
    assert [p["step"] for p in raw["eval"]] == list(range(100, 1201, 100))
    assert body["curves"]["dedup"] == {"train": expected_curves(out, "dedup")["train"], "eval": []}
    assert body["curves"]["full"] == {"train": [], "eval": []}
    thinned = reader.get(f"/v1/ablations/{ablation_id}", params={"max_points": 7}).json()["curves"]["raw"]
    assert len(thinned["train"]) <= 7 and thinned["train"][-1]["step"] == 1200 and len(thinned["eval"]) <= 7
    assert reader.get(f"/v1/ablations/{ablation_id}", params={"max_points": 501}).status_code == 422


def test_a_diverged_loss_and_a_malformed_result_do_not_break_reading(server, admin, reader, corpus, started):
    ablation_id = create(admin, corpus["id"]).json()["id"]
    out = out_dir(server, ablation_id)
    write_ablation_output(out, finished=False)
    with open(out / "variants" / "raw" / "train" / "metrics.jsonl", "a") as f:
        f.write('{"step": 41, "loss": NaN, "tokens": 167936}\n{"step": 42, "loss": Infinity, "tokens": 172032}\n')
    (out / "ablation.json").write_text(json.dumps({"domains": ["web"], "table": [{"variant": "raw"}], "leakage": {}}))
    body = reader.get(f"/v1/ablations/{ablation_id}").json()
    assert [p["loss"] for p in body["curves"]["raw"]["train"][-2:]] == [None, None]
    assert body["table"] is None and body["leakage"] is None
    assert body["result_error"].startswith("ablation.json: ") and "loss" in body["result_error"]
    (out / "ablation.json").write_text('{"table": [')  # half written: not there yet
    assert reader.get(f"/v1/ablations/{ablation_id}").json()["result_error"] is None


def test_unknown_and_malformed_ids(reader):
    assert reader.get("/v1/ablations/abl_0000000000000000").status_code == 404
    assert reader.get("/v1/ablations/trn_0000000000000000").status_code == 422
    assert reader.get("/v1/ablations/..%2f..%2fetc").status_code in (404, 422)


# --- cancel and the reaper ----------------------------------------------------------------------

def test_cancel_a_queued_ablation_then_not_again(admin, reader, corpus, started):
    ablation_id = create(admin, corpus["id"]).json()["id"]
    r = admin.post(f"/v1/ablations/{ablation_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled" and r.json()["finished_at"] and r.json()["phase"] is None
    r = admin.post(f"/v1/ablations/{ablation_id}/cancel")
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert admin.post("/v1/ablations/abl_0000000000000000/cancel").status_code == 404


def test_the_reaper_fails_a_running_ablation_without_an_actor(server, reader, corpus, started):
    ablation_id = new_id("abl")
    with server.services.db.session() as s:
        s.add(Ablation(id=ablation_id, corpus_id=corpus["id"], state="running", phase="train (1/3 done)",
                       config=CONFIG, out_uri=server.services.storage.uri(f"ablations/{ablation_id}"),
                       started_at=utcnow()))
    # The reaper runs every second in tests; this ablation never had an actor.
    body = wait_for(lambda: (b := reader.get(f"/v1/ablations/{ablation_id}").json())["state"] != "running" and b, 60)
    assert body["state"] == "failed" and "actor" in body["error"] and body["phase"] is None
    assert ablation_id not in started  # failed, not restarted


# --- the actor's work: real ablations on Ray ------------------------------------------------------

@pytest.fixture
def queued_ablation(server, corpus):
    ablation_id = new_id("abl")
    with server.services.db.session() as s:
        s.add(Ablation(id=ablation_id, corpus_id=corpus["id"], state="queued", phase="queued", config=CONFIG,
                       out_uri=server.services.storage.uri(f"ablations/{ablation_id}")))
    return ablation_id


MINI = {"seed": 3, "token_budget": 8192, "eval_every_steps": 2,
        "train": {"preset": "tiny", "seq_len": 64, "global_batch_tokens": 2048, "micro_batch": 8},
        "holdout": {"docs_per_domain": 6}, "tokenizer": {"vocab_size": 600},
        "variants": [{"name": "raw"}, {"name": "dedup", "stages": ["exact_dedup", {"name": "minhash_dedup"}]}]}


@pytest.fixture(scope="module")
def real_server(tmp_path_factory, ray_local):
    """A service of its own (SQLite, no auth on loopback) whose ablations really run on Ray: the
    module's `server` keeps recording starts, so its queued ablations never run. Stopped with
    every ablation it still has active cancelled and its actor killed."""
    home = tmp_path_factory.mktemp("abl-real")
    with live_server(home, f"sqlite:///{home / 'flywheel.db'}", auth=False) as srv:
        try:
            yield srv
        finally:
            stop_ablations(srv.services)


def upload(client, path: Path) -> dict:
    with open(path, "rb") as f:
        r = client.post("/v1/corpora", files={"file": (path.name, f)})
    assert r.status_code == 201, r.text
    return r.json()


def run_for_real(real_server, corpus_id: str, config: dict) -> dict:
    """POST an ablation that the job actor really runs on Ray; its final GET answer."""
    with real_server.client() as client:
        r = client.post("/v1/ablations", json={"corpus_id": corpus_id, "config": config})
        assert r.status_code == 201, r.text
        return wait_for(lambda: (a := client.get(f"/v1/ablations/{r.json()['id']}").json())["state"]
                        in ("succeeded", "failed", "cancelled") and a, timeout=600, interval=1.0)


def test_an_ablation_runs_end_to_end_through_the_service(real_server, tmp_path):
    """Upload, POST, the job actor runs the real runner on Ray, GET shows table and curves."""
    from tests.ablation_data import mini_corpus

    with real_server.client() as client:  # < the 256 KiB upload limit
        uploaded = upload(client, mini_corpus(tmp_path / "mini.jsonl", per_domain=70))
    done = run_for_real(real_server, uploaded["id"], MINI)
    assert done["state"] == "succeeded", done["error"]
    assert [row["variant"] for row in done["table"]] == ["raw", "dedup"]
    assert done["domains"] == ["books", "web"] and done["leakage"]["pairs_found"] == 0
    out = out_dir(real_server, done["id"])
    for name in ("raw", "dedup"):
        assert done["curves"][name] == expected_curves(out, name)
        assert [p["step"] for p in done["curves"][name]["eval"]] == [2, 4]
    result = json.loads((out / "ablation.json").read_text())
    assert done["table"] == result["table"]


def test_an_ablation_whose_held_out_sets_come_out_empty_fails_with_the_reason(real_server, tmp_path):
    """A clean bar no document of the corpus (40 fifteen-word documents) can pass."""
    strict = {**CONFIG, "holdout": {"docs_per_domain": 5,
                                    "clean_stages": [{"name": "heuristics", "min_words": 1000, "code_domains": []}]}}
    with real_server.client() as client:
        corpus = upload(client, write_jsonl(tmp_path / "docs.jsonl", CORPUS_DOCS))
    done = run_for_real(real_server, corpus["id"], strict)
    assert done["state"] == "failed" and done["finished_at"]
    assert "no held-out documents survived the clean stages" in done["error"]


def test_stopping_a_test_servers_ablations_kills_their_actors(real_server, tmp_path):
    """What both fixtures do at teardown: a started ablation is cancelled and its actor is gone."""
    with real_server.client() as client:
        corpus = upload(client, write_jsonl(tmp_path / "docs.jsonl", CORPUS_DOCS))
        ablation_id = client.post("/v1/ablations", json={"corpus_id": corpus["id"], "config": CONFIG}).json()["id"]
        runner = real_server.services.ablation_runner
        wait_for(lambda: runner.actor_alive(ablation_id), 60, 0.1)
        assert ablation_id in stop_ablations(real_server.services)
        wait_for(lambda: not runner.actor_alive(ablation_id), 60, 0.2)
        assert client.get(f"/v1/ablations/{ablation_id}").json()["state"] == "cancelled"


def test_execute_leaves_a_cancelled_ablation_alone(server, queued_ablation):
    set_state(server, queued_ablation, "cancelled")
    assert execute_ablation_job(server.services.db.url, queued_ablation) == "cancelled"
    assert not out_dir(server, queued_ablation).exists()  # nothing ran
