"""What the routes share: settings, database, storage, job runners, metrics, background scans.

`start()` runs at application start-up: schema migration, the reaper's first pass (jobs left
`running` by a previous process are failed as "lost on restart"), counting of corpora whose
scan a previous process did not finish, and the periodic reaper thread.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select, update

from api.ablations import AblationRunner
from api.db import Database
from api.jobs import ACTOR_DIED, LOST_ON_RESTART, JobRunner
from api.metrics import ServiceMetrics
from api.models import Corpus, utcnow
from api.scan import ScanProcess
from api.settings import Settings
from api.storage import Storage
from api.training_jobs import TrainingJobRunner

log = logging.getLogger(__name__)


class Services:
    def __init__(self, settings: Settings) -> None:
        settings.prepare()
        self.settings = settings
        self.db = Database(settings.database_url)
        self.storage = Storage(settings.storage)
        # Curation jobs and ablations read corpora: their actors refuse files outside read_roots.
        self.runner = JobRunner(self.db, start_grace_s=settings.job_start_grace_s, read_roots=self.read_roots)
        self.training_runner = TrainingJobRunner(self.db, start_grace_s=settings.job_start_grace_s)
        self.ablation_runner = AblationRunner(self.db, start_grace_s=settings.job_start_grace_s,
                                              read_roots=self.read_roots)
        self.metrics = ServiceMetrics(self.db)
        self._scans = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-scan")
        # Scans read user files: in child processes with a memory limit, never here. Two, so an
        # upload's inline count never waits behind a long background scan.
        self.inline_scanner = ScanProcess(settings.scan_memory_bytes)
        self.background_scanner = ScanProcess(settings.scan_memory_bytes)
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def read_roots(self) -> tuple[str, ...]:
        """Where the service's jobs may read: the allowed roots (corpora registered by URI, model
        files) and its own storage (uploads, earlier runs' outputs)."""
        return self.settings.allowed_roots + (self.storage.root,)

    @property
    def runners(self) -> tuple[JobRunner, ...]:
        return (self.runner, self.training_runner, self.ablation_runner)

    def start(self) -> None:
        self.db.migrate()
        self.storage.sweep_tmp()
        for runner in self.runners:
            runner.reap(LOST_ON_RESTART, at_startup=True)
        with self.db.session() as s:
            unfinished = s.scalars(select(Corpus.id).where(Corpus.state == "scanning")).all()
        for corpus_id in unfinished:
            self.scan_later(corpus_id)
        self._reaper = threading.Thread(target=self._reap_forever, name="job-reaper", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        self._stop.set()
        self._scans.shutdown(wait=False, cancel_futures=True)
        self.inline_scanner.close()
        self.background_scanner.close()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
        self.db.dispose()

    def _reap_forever(self) -> None:
        while not self._stop.wait(self.settings.reap_interval_s):
            for runner in self.runners:
                try:
                    runner.reap(ACTOR_DIED)
                except Exception:  # the reaper must outlive a database or Ray hiccup
                    log.exception("job reaper pass failed")

    def scan_later(self, corpus_id: str) -> None:
        self._scans.submit(self._scan, corpus_id)

    def _scan(self, corpus_id: str) -> None:
        with self.db.session() as s:
            corpus = s.get(Corpus, corpus_id)
            uri, domain = corpus.uri, corpus.domain
        try:
            counts = self.background_scanner.count(uri, domain, self.read_roots)
            values = dict(state="ready" if counts.documents else "invalid", documents=counts.documents,
                          malformed=counts.malformed, text_bytes=counts.text_bytes, domains=counts.domains,
                          files=counts.files, error=None if counts.documents else
                          f"no valid documents (first problem: {counts.first_problem})")
        except Exception as e:
            log.exception("scan of corpus %s failed", corpus_id)
            values = dict(state="invalid", error=f"{type(e).__name__}: {e}"[:2000])
        with self.db.session() as s:
            s.execute(update(Corpus).where(Corpus.id == corpus_id).values(scanned_at=utcnow(), **values))
