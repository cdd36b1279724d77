"""Prometheus metrics: job counts and documents processed come from the database at scrape time
(so every replica reports the same truth); bytes served is this process's own counter."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from api.db import Database
from api.models import JOB_STATES, Corpus, Job


class _DatabaseCollector:
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self):
        with self.db.session() as s:
            by_state = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            docs = s.scalar(select(func.coalesce(func.sum(Job.docs_in), 0)))
            corpora = s.scalar(select(func.count()).select_from(Corpus))
        jobs = GaugeMetricFamily("flywheel_jobs", "Curation jobs by state.", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs
        yield CounterMetricFamily("flywheel_documents_processed", "Documents read by curation jobs.", value=docs)
        yield GaugeMetricFamily("flywheel_corpora", "Registered corpora.", value=corpora)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, db: Database) -> None:
        # A registry per app: several apps in one process (tests) must not share counters.
        self.registry = CollectorRegistry()
        self.bytes_served = Counter("flywheel_shard_bytes_served", "Shard, index and tokenizer bytes sent.",
                                    registry=self.registry)
        self.registry.register(_DatabaseCollector(db))

    def render(self) -> bytes:
        return generate_latest(self.registry)
