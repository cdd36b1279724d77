"""Counting a corpus: documents, malformed records, text bytes and documents per domain.

The counts come from the pipeline's own reader (`curation.io.reader.read_task_tables`), so a
corpus's `documents` is exactly what a job's `read` step will keep, and `malformed` what it
will reject. It is one sequential pass over the data: small uploads are counted before the
upload answers, bigger ones in the background (see `api/services.py`).

A scan reads what a user uploaded, so it never runs in the web process: `ScanProcess` runs it
in a child process whose address space is limited (RLIMIT_AS). A file that needs more memory
than that fails its scan with a clear error; the service and its other requests carry on.
"""

from __future__ import annotations

import json
import logging
import resource
import threading
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context

import pyarrow.compute as pc
import pyarrow.fs as pafs

from contract.stores import filesystem_for
from curation.io.files import plan_reads
from curation.io.reader import read_task_tables
from curation.stages.base import DETAIL, REASON

log = logging.getLogger(__name__)

WHOLE_FILES = 1 << 62  # one read task per file: a scan has no use for byte ranges
DEFAULT_DOMAIN = "web"  # the pipeline's default_domain, for a corpus that names none


@dataclass
class CorpusCounts:
    files: int = 0
    size_bytes: int = 0
    documents: int = 0
    malformed: int = 0
    text_bytes: int = 0
    domains: dict[str, int] = field(default_factory=dict)
    first_problem: str | None = None


def count_corpus(uri: str, domain: str | None, confine_to: tuple[str, ...] | None = None) -> CorpusCounts:
    """Counts for a file or folder of JSONL(.gz/.zst)/Parquet. Raises InputError if there is none,
    or if a file resolves outside `confine_to` (see curation.io.files.plan_reads)."""
    tasks = plan_reads(uri, domain or DEFAULT_DOMAIN, chunk_bytes=WHOLE_FILES, confine_to=confine_to)
    counts = CorpusCounts(files=len(tasks))
    domains: Counter[str] = Counter()
    for task in tasks:
        fs, _ = filesystem_for(task.uri)
        info = fs.get_file_info(task.path)
        counts.size_bytes += info.size if info.type == pafs.FileType.File else 0
        for table in read_task_tables(task):
            ok = pc.equal(table[REASON], "")
            kept = table.filter(ok)
            counts.documents += kept.num_rows
            counts.malformed += table.num_rows - kept.num_rows
            if kept.num_rows:
                counts.text_bytes += int(pc.sum(pc.binary_length(kept["text"])).as_py() or 0)
                for item in pc.value_counts(kept["domain"]).to_pylist():
                    domains[item["values"]] += item["counts"]
            if counts.first_problem is None and kept.num_rows < table.num_rows:
                bad = table.filter(pc.invert(ok)).slice(0, 1)
                counts.first_problem = json.loads(bad[DETAIL][0].as_py()).get("error")
    counts.domains = dict(sorted(domains.items()))
    return counts


def corpus_size(uri: str, confine_to: tuple[str, ...] | None = None) -> tuple[int, int]:
    """(files, bytes) of the data files behind a file or folder URI; InputError if there are none
    or one resolves outside `confine_to`."""
    tasks = plan_reads(uri, DEFAULT_DOMAIN, chunk_bytes=WHOLE_FILES, confine_to=confine_to)
    total = 0
    for task in tasks:
        fs, _ = filesystem_for(task.uri)
        total += fs.get_file_info(task.path).size or 0
    return len(tasks), total


class ScanFailed(ValueError):
    """The scan process ran out of memory or died: the corpus cannot be counted within the limit."""


def _limit_address_space(limit_bytes: int) -> None:
    """The scan process's initializer: allocations past `limit_bytes` of address space fail
    (MemoryError) instead of growing until the machine's OOM killer picks a process."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


class ScanProcess:
    """`count_corpus` in one child process with a limited address space, kept between scans
    (starting it and importing pyarrow costs ~1 s). "spawn", not fork: the web process has
    threads (uvicorn, the reaper) that a fork would copy mid-lock."""

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                                                 initializer=_limit_address_space, initargs=(self.memory_bytes,))
            return self._pool

    def count(self, uri: str, domain: str | None, confine_to: tuple[str, ...] | None = None) -> CorpusCounts:
        """`count_corpus(uri, domain, confine_to)`, run in the child; ScanFailed when it runs out
        of memory or dies (the next scan gets a new child)."""
        pool = self._executor()
        limit = f"{self.memory_bytes / 2**20:,.0f} MiB"
        try:
            return pool.submit(count_corpus, uri, domain, confine_to).result()
        except MemoryError:
            raise ScanFailed(f"the corpus scan ran out of memory (limit {limit})") from None
        except BrokenProcessPool:
            self._discard(pool)
            raise ScanFailed(f"the corpus scan process died (out of memory? limit {limit})") from None

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        _stop(pool)

    def close(self) -> None:
        """Stop the child, also mid-scan (a shutdown must not wait for a long scan)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            _stop(pool)


def _stop(pool: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no way to stop a busy worker before Python 3.14's
    # terminate_workers(): its process table is the only handle on the child.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            log.warning("corpus scan process %s ignored SIGTERM: killing it", process.pid)
            process.kill()
            process.join(timeout=10)
