"""Run the reliability suite and write `benchmarks/reliability.md`: faults injected, survived,
records lost (must be 0), and the security checks that refused what they should.

    .venv/bin/python benchmarks/reliability.py [--out benchmarks/reliability.md]

The faults are the tests in tests/reliability/ (each records what it injected once its checks
passed, through tests/reliability/report.py); the security part is the service's security suites
(SECURITY_TESTS), listed from pytest's JUnit XML: every test that ran, by file, with its outcome,
so the report names only checks that were run. A failed test is listed as not survived: the
report never hides a failure, and the script exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULT_TESTS = ["tests/reliability"]
SECURITY_TESTS = ["tests/api/test_api_auth.py", "tests/api/test_security.py", "tests/api/test_tokens.py",
                  "tests/api/test_rate_limit.py", "tests/api/test_bounded_input.py", "tests/api/test_api_corpora.py",
                  "tests/api/test_api_shards.py"]


def run_pytest(paths: list[str], report: Path, junit: Path) -> float:
    # FLYWHEEL_TEST_POSTGRES: the API tests run on PostgreSQL as well as SQLite (as make test does)
    env = {**os.environ, "FLYWHEEL_RELIABILITY_REPORT": str(report), "FLYWHEEL_TEST_POSTGRES": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=900",
                    f"--junitxml={junit}", *paths], cwd=ROOT, env=env, check=False)
    return time.perf_counter() - started


def junit_cases(junit: Path) -> list[dict]:
    """(file, test, outcome) of every test case in a JUnit XML report."""
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        cases.append({"file": case.get("classname", "").rsplit(".", 1)[-1], "name": case.get("name"),
                      "outcome": outcome})
    return cases


def render(faults: list[dict], fault_cases: list[dict], security_cases: list[dict], seconds: float) -> str:
    lines = [
        "# Reliability report",
        "",
        f"Written by `benchmarks/reliability.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"({os.cpu_count()} CPUs, {seconds:.0f} s). Every fault is injected for real (SIGKILL, read-only and "
        "full tmpfs mounts, generated hostile files); see the test files for how.",
        "",
        "| fault | injected | survived | records | lost | what was checked |",
        "|---|---:|:---:|---:|---:|---|",
    ]
    for f in faults:
        lines.append(f"| {f['fault']} | {f['injected']} | {'yes' if f['survived'] else '**no**'} | "
                     f"{f['records']:,} | {f['lost']} | {f['check']} |")
    failed = [c for c in fault_cases if c["outcome"] == "failed"]
    for c in failed:
        lines.append(f"| {c['file']}::{c['name']} | ? | **no** | ? | ? | the test failed (see pytest output) |")
    total_lost = sum(f["lost"] for f in faults)
    lines += ["", f"Faults injected: {sum(f['injected'] for f in faults)}; survived: "
                  f"{sum(1 for f in faults if f['survived'])} of {len(faults) + len(failed)} scenarios; "
                  f"records lost: {total_lost}.", ""]
    lines += security_section(security_cases)
    skipped = [c for c in fault_cases if c["outcome"] == "skipped"]
    if skipped:
        lines += ["Skipped here: " + ", ".join(f"{c['file']}::{c['name']}" for c in skipped), ""]
    return "\n".join(lines)


def security_section(cases: list[dict]) -> list[str]:
    """Per suite: its counts, then each test that ran (parametrised variants folded into one line)."""
    outcomes = Counter(c["outcome"] for c in cases)
    lines = ["## Security", "", f"{outcomes['passed']} passed, {outcomes['failed']} failed, {outcomes['skipped']} "
             f"skipped, on SQLite and PostgreSQL (`{' '.join(SECURITY_TESTS)}`).", ""]
    by_file: dict[str, dict[str, Counter]] = {}
    for c in cases:
        by_file.setdefault(c["file"], {}).setdefault(c["name"].split("[", 1)[0], Counter())[c["outcome"]] += 1
    for file, tests in by_file.items():
        lines += [f"### `{file}`", ""]
        for name, counts in tests.items():
            tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            lines.append(f"- `{name}`: {tally}")
        lines.append("")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reliability.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report, junit_faults, junit_security = (Path(tmp) / n for n in ("faults.jsonl", "f.xml", "s.xml"))
        seconds = run_pytest(FAULT_TESTS, report, junit_faults)
        seconds += run_pytest(SECURITY_TESTS, report, junit_security)
        faults = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
        fault_cases, security_cases = junit_cases(junit_faults), junit_cases(junit_security)
    text = render(faults, fault_cases, security_cases, seconds)
    args.out.write_text(text + "\n")
    print(text)
    bad = any(c["outcome"] == "failed" for c in fault_cases + security_cases)
    return 1 if bad or any(f["lost"] for f in faults) else 0


if __name__ == "__main__":
    sys.exit(main())
