"""Curation jobs: rows in the database, work on Ray.

    POST /jobs --> row `queued` + one `job_stages` row per step --> detached named actor
                   `flywheel-job-<id>` (namespace "flywheel") runs `Pipeline(config).run()`
    actor      --> writes `running`, per-stage progress, then `succeeded` | `failed` itself
    cancel     --> row `cancelled`, then `ray.kill(actor)`

The actor opens the database from its URL and writes every state change: nothing about a job
lives only in the web process, and a detached actor on a Ray cluster outlives a web restart.
Every transition is a conditional UPDATE (`WHERE state IN (...)`), so a cancel, the actor's last
write and the reaper below never overwrite each other's verdict.

The reaper (at start-up, then every `reap_interval_s`) looks for queued/running jobs without a
live actor: a `running` one is marked failed ("lost on restart" at start-up); a `queued` one whose
actor never started is started again (nothing of it ran, the output is overwritten), up to
`max_start_attempts` starts in all (the row's `attempts`), then failed with the reason.

Other kinds of job (training jobs, ablations) share all of this: their table has the
`JobLifecycle` columns, their runner subclasses `JobRunner`, and their actor body is `run_job`.
"""

from __future__ import annotations

import logging
import signal
import threading
import traceback
from datetime import timedelta
from functools import cache, partial
from typing import Any, Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.db import Database
from api.manifests import ManifestInvalid, register_job_manifest
from api.models import ACTIVE_STATES, Job, JobLifecycle, JobStage, utcnow
from curation import runtime
from curation.config import parse_config
from curation.io.files import check_confined

log = logging.getLogger(__name__)

ACTOR_NAMESPACE = "flywheel"
# Any table with the JobLifecycle columns: jobs, training_jobs, ablations.
JobTable = type[JobLifecycle]
LOST_ON_RESTART = "lost on restart: the job's Ray actor no longer exists"
ACTOR_DIED = "the job's Ray actor exited without reporting a result (worker crashed or was killed)"
NEVER_REPORTED = "its Ray actor ended each time before the job started (a worker crashing at start?)"


def actor_name(job_id: str) -> str:
    return f"flywheel-job-{job_id}"


def transition(session: Session, job_id: str, from_states: tuple[str, ...], to_state: str, *,
               table: JobTable = Job, **values: Any) -> bool:
    """Move a job (of `table`) to `to_state` only if it is in `from_states`; True when this call did it."""
    result = session.execute(
        update(table)
        .where(table.id == job_id, table.state.in_(from_states))
        .values(state=to_state, updated_at=utcnow(), **values)
    )
    return result.rowcount == 1


def describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:2000]


def current_state(session: Session, job_id: str, table: JobTable = Job) -> str:
    return session.scalar(select(table.state).where(table.id == job_id)) or "missing"


def record_phase(session: Session, job_id: str, phase: str, table: JobTable = Job) -> None:
    """Set a running job's phase (a cancelled or reaped job keeps its verdict and no phase)."""
    session.execute(update(table).where(table.id == job_id, table.state == "running")
                    .values(phase=phase[:128], updated_at=utcnow()))  # phase is a VARCHAR(128)


class PhaseRecorder:
    """`progress(phase)` callback for work that reports phases as short strings."""

    def __init__(self, db: Database, job_id: str, table: JobTable) -> None:
        self.db, self.job_id, self.table = db, job_id, table

    def __call__(self, phase: str) -> None:
        with self.db.session() as s:
            record_phase(s, self.job_id, str(phase), self.table)


def run_job(database_url: str, job_id: str, table: JobTable, work: Callable[[Database, Any], None], *,
            phase: str, publish: Callable[[Session, Any], dict[str, Any]] | None = None) -> str:
    """The lifecycle of one queued job of `table`, inside its actor: `running` (with `phase`),
    then `work(db, row)`, then `succeeded`, or `failed` with the error described if `work` raised.

    `publish(session, row)` runs in the transaction that marks the job `succeeded` (registering
    its outputs) and returns more columns to set; if it raises `ManifestInvalid` the job fails
    with that reason and nothing it wrote is kept. Returns the final state; a cancel or the
    reaper's verdict in between is kept (and then nothing is published)."""
    db = Database(database_url)
    try:
        with db.session() as s:
            if not transition(s, job_id, ("queued",), "running", table=table, started_at=utcnow(), phase=phase):
                return current_state(s, job_id, table)
            row = s.get(table, job_id)  # detached below: its loaded columns stay readable
        try:
            work(db, row)
        except Exception as e:  # the job's verdict, not the actor's crash
            log.error("%s %s failed:\n%s", table.__tablename__, job_id, traceback.format_exc())
            return _fail(db, job_id, table, describe(e))
        try:
            with db.session() as s:
                values = publish(s, row) if publish else {}
                if not transition(s, job_id, ("running",), "succeeded", table=table, finished_at=utcnow(),
                                  phase="done", **values):
                    s.rollback()
                    return current_state(s, job_id, table)
        except ManifestInvalid as e:
            return _fail(db, job_id, table, str(e))
        except Exception as e:  # OSError reading the manifest, a database error: the job's verdict, with its reason
            log.error("%s %s: publishing failed:\n%s", table.__tablename__, job_id, traceback.format_exc())
            return _fail(db, job_id, table, f"publishing the job's outputs failed: {describe(e)}")
        return "succeeded"
    finally:
        db.dispose()


def _fail(db: Database, job_id: str, table: JobTable, error: str) -> str:
    with db.session() as s:
        transition(s, job_id, ("running",), "failed", table=table, error=error, finished_at=utcnow(), phase=None)
    return "failed"


class ProgressRecorder:
    """`Pipeline(progress=...)` callback that writes stage events into `job_stages`."""

    def __init__(self, db: Database, job_id: str) -> None:
        self.db, self.job_id = db, job_id

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        now = utcnow()
        with self.db.session() as s:
            if event == "stage_start":
                self._stage(s, info["index"], state="running", started_at=now)
                self._phase(s, f"{info['name']} ({info['index'] + 1}/{info['total']})")
            elif event == "stage_done":
                st = info["stats"]
                self._stage(s, info["index"], state="done", finished_at=now, docs_in=st.docs_in,
                            docs_out=st.docs_out, tokens_in=st.tokens_in, tokens_out=st.tokens_out,
                            dropped=dict(st.dropped), seconds=st.seconds)
                if info["index"] == 0:
                    s.execute(update(Job).where(Job.id == self.job_id).values(docs_in=st.docs_in))
            elif event == "write_start":
                self._phase(s, "writing output")

    def _stage(self, s: Session, position: int, **values: Any) -> None:
        s.execute(update(JobStage).where(JobStage.job_id == self.job_id, JobStage.position == position).values(**values))

    def _phase(self, s: Session, phase: str) -> None:
        record_phase(s, self.job_id, phase)


def execute_job(database_url: str, job_id: str, read_roots: tuple[str, ...] | None = None) -> str:
    """Run one queued curation job to its end (the pipeline, then its manifest registered with the
    `succeeded` verdict); returns the final state. Runs inside the job's Ray actor (tests may call
    it directly). `read_roots`: the job fails before reading anything if one of its input files
    really lies outside them (a symlink out of an allowed folder); None: no limit."""

    def curate(db: Database, job: Job) -> None:
        # The reader and the stages load in the job's actor, not with the web process.
        from curation.pipeline import Pipeline

        pipeline = Pipeline(parse_config(job.config), overwrite=True, progress=ProgressRecorder(db, job_id))
        if read_roots is not None:
            check_confined(pipeline.read_tasks, read_roots)  # the files it planned, before it reads one
        pipeline.run()

    def publish(s: Session, job: Job) -> dict[str, Any]:
        register_job_manifest(s, job_id, job.output_uri)
        last_stage = select(JobStage.docs_out).where(JobStage.job_id == job_id).order_by(JobStage.position.desc())
        return {"docs_out": s.scalar(last_stage.limit(1))}

    return run_job(database_url, job_id, Job, curate, phase="starting", publish=publish)


class _JobActor:
    """One job (curation, training or ablation), running `execute(database_url, job_id)`.

    `num_cpus=0`: a curation job only drives Ray Data, whose tasks take the CPUs, and a CPU
    reservation for a training job would starve those tasks on a small machine.
    """

    def run(self, execute: Callable[[str, str], str], database_url: str, job_id: str) -> None:
        import ray  # Ray: the web process connects when it first starts a job

        try:
            execute(database_url, job_id)
        finally:
            ray.actor.exit_actor()  # detached actors live until told to go


@cache
def _actor_class():
    import ray  # Ray: the web process connects when it first starts a job

    return ray.remote(num_cpus=0, max_restarts=0)(_JobActor)


class JobRunner:
    """The web process's side: start, cancel and check job actors (Ray is started on first use).

    Generic over the kind of job: a subclass names its table (with the JobLifecycle columns),
    what the actor runs (`execute(database_url, job_id)`) and its actor-name prefix.
    """

    table: JobTable = Job
    actor_prefix = "flywheel-job-"
    execute = staticmethod(execute_job)  # what the actor runs

    def actor_class(self):
        return _actor_class()

    def job_function(self) -> Callable[[str, str], str]:
        """What the actor runs: `execute`, told the read roots when this runner confines reads."""
        if self.read_roots is None:
            return self.execute
        return partial(self.execute, read_roots=self.read_roots)

    def actor_name(self, job_id: str) -> str:
        return f"{self.actor_prefix}{job_id}"

    def _transition(self, session: Session, job_id: str, from_states: tuple[str, ...], to_state: str,
                    **values: Any) -> bool:
        return transition(session, job_id, from_states, to_state, table=self.table, **values)

    def __init__(self, db: Database, *, start_grace_s: float = 60.0, read_roots: tuple[str, ...] | None = None,
                 max_start_attempts: int = 3) -> None:
        self.db = db
        self.start_grace = timedelta(seconds=start_grace_s)
        # A queued job whose actor dies before reporting is started again at most this often in
        # all: a job that crashes its worker at start would otherwise be restarted forever.
        self.max_start_attempts = max_start_attempts
        # Where the job may read its input files (None: anywhere); only for an `execute` taking read_roots=.
        self.read_roots = read_roots

    def _ray(self):
        import ray  # Ray: the web process connects when it first starts a job

        # ray.init on the main thread (the event loop's) swaps the SIGTERM handler for its own
        # sys.exit(15), which uvicorn's loop then never handles: the server hung instead of
        # stopping gracefully. Keep the handler the server had.
        on_main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGTERM) if on_main else None
        runtime.init_ray()
        if on_main:
            signal.signal(signal.SIGTERM, handler)
        return ray

    def start(self, job_id: str) -> None:
        """Create (or find) the job's actor and tell it to run, counting the attempt; returns at once."""
        self._ray()  # Ray up (embedded or RAY_ADDRESS) before the actor is made
        with self.db.session() as s:  # counted before the actor exists: a crash right after still counts
            s.execute(update(self.table).where(self.table.id == job_id)
                      .values(attempts=self.table.attempts + 1, updated_at=utcnow()))
        actor = self.actor_class().options(
            name=self.actor_name(job_id), namespace=ACTOR_NAMESPACE, lifetime="detached", get_if_exists=True,
        ).remote()
        # Fire and forget: the actor reports through the database.
        actor.run.remote(self.job_function(), self.db.url, job_id)

    def start_or_fail(self, job_id: str) -> None:
        try:
            self.start(job_id)
        except Exception as e:  # Ray unreachable: the job cannot run, say so instead of queueing forever
            log.exception("could not start job %s", job_id)
            with self.db.session() as s:
                self._transition(s, job_id, ACTIVE_STATES, "failed",
                                 error=f"could not start on Ray: {describe(e)}", finished_at=utcnow())

    def cancel(self, job_id: str) -> bool:
        """Mark the job cancelled and kill its actor; False if it had already finished."""
        with self.db.session() as s:
            if not self._transition(s, job_id, ACTIVE_STATES, "cancelled", finished_at=utcnow(), phase=None):
                return False
        ray = self._ray()
        try:
            ray.kill(ray.get_actor(self.actor_name(job_id), namespace=ACTOR_NAMESPACE), no_restart=True)
        except ValueError:  # no such actor: it had not started or already exited
            pass
        return True

    def actor_alive(self, job_id: str) -> bool:
        ray = self._ray()
        try:
            ray.get_actor(self.actor_name(job_id), namespace=ACTOR_NAMESPACE)
            return True
        except ValueError:
            return False

    def reap(self, reason: str = ACTOR_DIED, *, at_startup: bool = False) -> dict[str, list[str]]:
        """Fail running jobs whose actor is gone; restart queued jobs whose actor never came."""
        with self.db.session() as s:
            active = s.execute(select(self.table.id, self.table.state, self.table.created_at, self.table.attempts)
                               .where(self.table.state.in_(ACTIVE_STATES))).all()
        done: dict[str, list[str]] = {"failed": [], "restarted": []}
        if not active:
            return done  # no Ray needed for an idle service
        now = utcnow()
        for job_id, state, created_at, attempts in active:
            if self.actor_alive(job_id):
                continue
            if state == "running":
                if self._fail_now(job_id, "running", reason, now):
                    done["failed"].append(job_id)
            elif not (at_startup or now - created_at > self.start_grace):
                continue  # its actor may still be on its way
            elif attempts >= self.max_start_attempts:
                error = f"did not start after {attempts} attempts: {NEVER_REPORTED}"
                if self._fail_now(job_id, "queued", error, now):
                    done["failed"].append(job_id)
            else:
                log.warning("job %s was queued without an actor: starting it again (attempt %d of %d)", job_id,
                            attempts + 1, self.max_start_attempts)
                self.start_or_fail(job_id)
                done["restarted"].append(job_id)
        return done

    def _fail_now(self, job_id: str, state: str, error: str, now) -> bool:
        with self.db.session() as s:
            return self._transition(s, job_id, (state,), "failed", error=error, finished_at=now, phase=None)
