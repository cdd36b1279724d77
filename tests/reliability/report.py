"""What each reliability test injected and what survived, for `benchmarks/reliability.py`.

A test calls `record_fault(...)` after its checks passed; with FLYWHEEL_RELIABILITY_REPORT set
(the benchmark script sets it) one JSON line is appended to that file, otherwise nothing happens.
"""

from __future__ import annotations

import json
import os

REPORT_ENV = "FLYWHEEL_RELIABILITY_REPORT"


def record_fault(fault: str, *, injected: int, survived: bool, records: int, lost: int, check: str) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    line = {"fault": fault, "injected": injected, "survived": survived, "records": records, "lost": lost,
            "check": check}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
