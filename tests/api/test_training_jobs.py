"""Training jobs end to end on a real embedded Ray: a tiny model trained on a synthetic manifest
registered the way a finished curation job leaves one; its states, loss curve and checkpoints;
config validation (422), unknown manifest (404), scopes (403); an actor killed mid-run is reaped
and a finished job cannot be cancelled; eval files only from the allowed roots, the eval curve."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from api.ids import new_id
from api.manifests import register_job_manifest
from api.models import Job
from api.run_files import thin
from api.training_jobs import eval_curve, read_progress
from tests.api.conftest import wait_for
from training.data.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow

STEPS = 12
# ~0.3 s a step on one core: 256 tokens per step, a vocabulary of 512.
CONFIG = {"preset": "tiny", "steps": STEPS, "seq_len": 32, "global_batch_tokens": 256, "micro_batch": 8,
          "peak_tflops_per_worker": 0.05, "checkpoint_every_steps": 5, "optimizer": {"lr": 3e-3}}
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def manifest_id(server, reader) -> str:
    """A succeeded curation job whose output holds a synthetic manifest, registered as the job's
    actor registers it (in the transaction that makes it succeeded); its id read by GET /jobs/{id}."""
    services = server.services
    job_id = new_id("job")
    write_synthetic_dataset(services.storage.path(f"jobs/{job_id}"), total_tokens=40_000, vocab_size=512,
                            mean_doc_tokens=100, seed=5, dataset_id="training-api-test")
    with services.db.session() as s:
        s.add(Job(id=job_id, state="succeeded", corpus_ids=[], config={"stages": [], "seed": 0},
                  output_uri=services.storage.uri(f"jobs/{job_id}"), phase="done"))
        s.flush()
        register_job_manifest(s, job_id, services.storage.uri(f"jobs/{job_id}"))
    manifest = reader.get(f"/v1/jobs/{job_id}").json()["manifest_id"]
    assert manifest
    return manifest


def follow(reader, job_id: str, timeout: float = 120.0) -> tuple[dict, list[str]]:
    """The job once it has ended, and every state seen on the way (polled every 0.1 s)."""
    seen: list[str] = []

    def ended():
        job = reader.get(f"/v1/training-jobs/{job_id}").json()
        if not seen or seen[-1] != job["state"]:
            seen.append(job["state"])
        return job if job["state"] in TERMINAL else None

    return wait_for(ended, timeout, 0.1), seen


@pytest.fixture(scope="module")
def trained(ray_local, admin, reader, manifest_id):
    r = admin.post("/v1/training-jobs", json={"manifest_id": manifest_id, "config": CONFIG})
    assert r.status_code == 201, r.text
    created = r.json()
    job, seen = follow(reader, created["id"])
    return {"created": created, "job": job, "seen": seen}


def test_a_training_job_runs_to_success_with_a_loss_curve(trained, manifest_id):
    created, job = trained["created"], trained["job"]
    assert created["id"].startswith("trn_") and created["state"] in ("queued", "running")
    assert created["manifest_id"] == manifest_id and created["steps"] == STEPS
    assert "out_dir" not in created["config"] and created["config"]["seq_len"] == 32
    assert job["state"] == "succeeded", job["error"]
    assert trained["seen"][-2:] == ["running", "succeeded"]
    assert set(trained["seen"]) <= {"queued", "running", "succeeded"}
    assert job["error"] is None and job["started_at"] <= job["finished_at"]

    curve = job["loss_curve"]
    assert [p["step"] for p in curve] == list(range(1, STEPS + 1))
    losses = [p["loss"] for p in curve]
    assert all(math.isfinite(x) for x in losses)
    # Uniform random ids in [3, 512): no model beats ln(509), and a sane one stays near it.
    assert all(abs(x - math.log(509)) < 0.3 for x in losses), losses
    assert job["step"] == STEPS and job["loss"] == losses[-1] and job["tokens_per_s"] > 0
    # checkpoint_every_steps 5 and the final save, keep_checkpoints 2
    assert job["checkpoints"] == ["step_00000010", "step_00000012"]
    assert job["eval_curve"] == []  # no eval_files


def test_the_curve_is_thinned_and_the_list_summarises(trained, reader):
    job_id = trained["job"]["id"]
    thinned = reader.get(f"/v1/training-jobs/{job_id}", params={"max_points": 4}).json()["loss_curve"]
    assert len(thinned) <= 4 and thinned[-1]["step"] == STEPS and thinned[0]["step"] == 1
    listed = reader.get("/v1/training-jobs", params={"state": "succeeded"}).json()
    item = next(i for i in listed["items"] if i["id"] == job_id)
    assert item["step"] == STEPS and item["loss"] == trained["job"]["loss"] and "loss_curve" not in item


@pytest.mark.parametrize("config, message", [
    ({"preset": "tiny", "steps": 0}, "steps"),
    ({"preset": "huge"}, "preset"),
    ({"seq_len": 48, "global_batch_tokens": 100}, "multiple of seq_len"),
    ({"stepz": 3}, "stepz"),
    ({"out_dir": "/tmp/elsewhere"}, "set by the service"),
    ({"workers": 4}, "set by the service"),
    ({"preset": "moe-67b"}, "planning only"),
    ({"model": {"n_layers": 0}}, "config.model"),
    ({"model": 5}, "model"),
    ({"steps": [1]}, "config"),
    ({"optimizer": 5}, "config"),
    ({"preset": ["tiny"]}, "config"),
])
def test_a_bad_config_is_422_and_starts_nothing(admin, reader, manifest_id, config, message):
    before = reader.get("/v1/training-jobs").json()["total"]
    r = admin.post("/v1/training-jobs", json={"manifest_id": manifest_id, "config": config})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert reader.get("/v1/training-jobs").json()["total"] == before


def test_unknown_manifest_and_job_are_404(admin, reader):
    r = admin.post("/v1/training-jobs", json={"manifest_id": "man_0000000000000000", "config": CONFIG})
    assert r.status_code == 404 and "no manifest" in r.json()["detail"]
    assert admin.post("/v1/training-jobs", json={"manifest_id": "../etc", "config": CONFIG}).status_code == 422
    assert reader.get("/v1/training-jobs/trn_0000000000000000").status_code == 404
    assert reader.get("/v1/training-jobs/job_0000000000000000").status_code == 422


def test_a_read_token_may_look_but_not_train(server, reader, manifest_id):
    r = reader.post("/v1/training-jobs", json={"manifest_id": manifest_id, "config": CONFIG})
    assert r.status_code == 403
    assert reader.get("/v1/training-jobs").status_code == 200
    with server.client() as anonymous:
        assert anonymous.get("/v1/training-jobs").status_code == 401


def test_a_killed_actor_is_reaped_and_an_ended_job_not_cancelled(ray_local, server, admin, reader, manifest_id):
    from api.jobs import ACTOR_NAMESPACE

    runner = server.services.training_runner
    r = admin.post("/v1/training-jobs", json={"manifest_id": manifest_id, "config": {**CONFIG, "steps": 10_000}})
    job_id = r.json()["id"]
    wait_for(lambda: (reader.get(f"/v1/training-jobs/{job_id}").json()["step"] or 0) >= 1, 120, 0.2)
    ray_local.kill(ray_local.get_actor(runner.actor_name(job_id), namespace=ACTOR_NAMESPACE), no_restart=True)
    job, _ = follow(reader, job_id, 30)  # the reaper runs every second in tests
    assert job["state"] == "failed" and "actor" in job["error"]
    r = admin.post(f"/v1/training-jobs/{job_id}/cancel")
    assert r.status_code == 409 and "already failed" in r.json()["detail"]


def test_progress_ignores_a_line_still_being_written(tmp_path):
    lines = [json.dumps({"step": i, "loss": 5.0 - i / 10, "tokens_per_s": 100.0}) for i in range(1, 2001)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 2001, "lo')
    (tmp_path / "checkpoints" / "step_00002000").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00002000" / "meta.json").write_text("{}")
    (tmp_path / "checkpoints" / "step_00002001").mkdir()  # being written: no meta.json yet
    progress = read_progress(tmp_path)
    assert len(progress.records) == 2000 and progress.last["step"] == 2000
    assert progress.checkpoints == ["step_00002000"]
    assert read_progress(tmp_path, with_curve=False).records == [progress.last]  # from the file's tail
    assert read_progress(tmp_path / "not-yet").records == []
    points = thin(progress.records, 7)
    assert len(points) <= 7 and points[0]["step"] == 1 and points[-1]["step"] == 2000


def test_eval_files_must_be_files_under_the_allowed_roots(server, admin, reader, manifest_id, tmp_path):
    from fastapi import HTTPException

    from api.routes.training_jobs import validated_eval_files

    allowed = server.services.settings.allowed_roots[0]
    inside = Path(allowed) / "eval" / "val.jsonl"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text('{"text": "held out"}\n')
    (tmp_path / "outside.jsonl").write_text('{"text": "x"}\n')
    (Path(allowed) / "escape.jsonl").symlink_to(tmp_path / "outside.jsonl")
    assert validated_eval_files([f"file://{inside}"], (allowed,)) == [str(inside.resolve())]

    before = reader.get("/v1/training-jobs").json()["total"]
    for files, status, message in [
        ([str(tmp_path / "outside.jsonl")], 403, "outside the allowed roots"),
        ([str(Path(allowed) / "escape.jsonl")], 403, "outside the allowed roots"),  # a symlink out
        (["eval/val.jsonl"], 422, "absolute"),
        ([f"{allowed}/../x.jsonl"], 422, ".."),
        ([str(Path(allowed) / "eval")], 422, "not a local file"),
    ]:
        r = admin.post("/v1/training-jobs", json={"manifest_id": manifest_id, "config": {**CONFIG, "eval_files": files}})
        assert r.status_code == status and message in r.json()["detail"], r.text
        assert r.json()["detail"].startswith("config.eval_files: ")
    r = admin.post("/v1/training-jobs", json={"manifest_id": manifest_id, "config": {**CONFIG, "eval_every_steps": 2}})
    assert r.status_code == 422 and "eval_every_steps needs eval_files" in r.json()["detail"]
    assert reader.get("/v1/training-jobs").json()["total"] == before
    with pytest.raises(HTTPException):
        validated_eval_files(["s3://bucket/val.jsonl"], ("s3://bucket",))  # the trainer reads local files


def test_progress_reads_the_eval_curve(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 5.0}) + "\n" for i in (1, 2, 3, 4)))
    assert read_progress(tmp_path).evals == []  # no evaluation configured
    evals = [{"step": s, "tokens": 256 * s, "overall": {"loss": 5.0 - s / 10, "perplexity": 100.0},
              "domains": {"web": {"loss": 4.0}, "code": {"loss": None}}, "files": {}, "time": 0.0} for s in (2, 4)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals) + '{"step": 6, "ov')
    curve = eval_curve(read_progress(tmp_path).evals)
    assert curve == [{"step": s, "tokens": 256 * s, "loss": 5.0 - s / 10, "perplexity": 100.0,
                      "domains": {"web": 4.0, "code": None}} for s in (2, 4)]
    assert read_progress(tmp_path, with_curve=False).evals == []
