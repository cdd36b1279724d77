"""Counting a corpus: documents, malformed records, text bytes and documents per domain.

The counts come from the pipeline's own reader (`curation.io.reader.read_task_tables`), so a
corpus's `documents` is exactly what a job's `read` step will keep, and `malformed` what it
will reject. It is one sequential pass over the data: small uploads are counted before the
upload answers, bigger ones in the background (see `api/services.py`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.compute as pc
import pyarrow.fs as pafs

from contract.stores import filesystem_for
from curation.io.files import plan_reads
from curation.io.reader import read_task_tables
from curation.stages.base import DETAIL, REASON

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
