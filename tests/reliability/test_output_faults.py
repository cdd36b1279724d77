"""Output faults: a read-only or full disk gives one clear error and publishes nothing half-written.

The disks are real: small tmpfs mounts. A mount that fails is a test failure, not a skip, where
this process may mount (CAP_SYS_ADMIN): `make test` must not pass without these tests. Only a
process without the capability skips them, with a warning in the run's summary. A full disk mid-run must leave no stats.json and no manifest.json (both are written last,
to a temporary name then renamed), and no torn temporary files.
"""

from __future__ import annotations

import errno
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contract.atomic import write_atomic
from curation.config import parse_config
from curation.pipeline import OutputError, run_pipeline
from flywheel.cli import app
from tests.helpers import write_jsonl
from tests.reliability.report import record_fault

pytestmark = pytest.mark.slow


CAP_SYS_ADMIN = 21  # the capability mount(2) needs (linux/capability.h)


def may_mount() -> bool:
    """Whether this process holds CAP_SYS_ADMIN (its effective set in /proc/self/status)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    caps = next((line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), "0")
    return bool(int(caps, 16) >> CAP_SYS_ADMIN & 1)


def mount_tmpfs(where: Path, size: str, *options: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode == 0:
        return where
    why = f"cannot mount a tmpfs here ({done.stderr.strip()})"
    if may_mount():
        pytest.fail(f"{why}, though this process holds CAP_SYS_ADMIN: the disk-fault tests must run")
    message = f"DISK-FAULT TESTS NOT RUN: {why}; this process lacks CAP_SYS_ADMIN (run as root or privileged)"
    warnings.warn(message, DiskFaultsNotRun, stacklevel=2)  # in the run's warnings summary, even with -q
    pytest.skip(message)


class DiskFaultsNotRun(UserWarning):
    """This machine cannot mount, so the disk-fault tests were skipped: said in the summary."""


@pytest.fixture
def small_disk(tmp_path):
    mounts: list[Path] = []

    def make(size: str, *options: str) -> Path:
        mounts.append(mount_tmpfs(tmp_path / f"disk{len(mounts)}", size, *options))
        return mounts[-1]

    yield make
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], check=False)


def test_a_mount_that_fails_where_mounting_is_allowed_fails_the_test(tmp_path):
    """Not a skip: on a machine that may mount, a skipped disk-fault test would hide a broken setup."""
    if not may_mount():
        pytest.skip("this process lacks CAP_SYS_ADMIN: the loud skip is tested below")
    with pytest.raises(pytest.fail.Exception, match="holds CAP_SYS_ADMIN"):
        mount_tmpfs(tmp_path / "bad", "1m", "no_such_tmpfs_option")


def test_a_machine_that_cannot_mount_skips_loudly(tmp_path):
    """Without CAP_SYS_ADMIN (dropped from the bounding set by setpriv), the skip says why and
    warns, so the run's summary shows it even with -q."""
    if shutil.which("setpriv") is None or not may_mount():
        pytest.skip("needs setpriv and CAP_SYS_ADMIN to drop")
    code = ("import pathlib, warnings, pytest\n"
            "from tests.reliability.test_output_faults import mount_tmpfs, may_mount\n"
            "assert not may_mount()\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    try:\n"
            f"        mount_tmpfs(pathlib.Path({str(tmp_path / 'd')!r}), '1m')\n"
            "    except pytest.skip.Exception as e:\n"
            "        print('SKIPPED:', e)\n"
            "print('WARNED:', [type(w.message).__name__ for w in seen])\n")
    done = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=120)
    assert done.returncode == 0, done.stderr
    assert "SKIPPED: DISK-FAULT TESTS NOT RUN" in done.stdout and "DiskFaultsNotRun" in done.stdout, done.stdout


def random_corpus(path: Path, docs: int, seed: int = 7) -> Path:
    """Documents of random letter-words (incompressible enough that 3 MB stays > 1 MB on disk)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    records = [{"id": f"r{i:04}", "text": " ".join("".join(rng.choices(letters, k=rng.randint(3, 9)))
                                                    for _ in range(1200))} for i in range(docs)]
    return write_jsonl(path, records)


def stray_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name or p.name == "manifest.json")


def test_output_on_a_read_only_disk_is_refused_before_any_work(small_disk, tmp_path):
    disk = small_disk("1m", "ro")
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "hello"}])
    config = tmp_path / "run.yaml"
    config.write_text(f"inputs: [{tmp_path / 'in.jsonl'}]\noutput: {disk / 'out'}\n")
    result = CliRunner().invoke(app, ["curate", str(config), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"output {disk / 'out'}: cannot write there (Read-only file system)" in " ".join(result.output.split())
    record_fault("output on a read-only disk", injected=1, survived=True, records=1, lost=0,
                 check="refused before any work with a one-line error (exit 2)")


def test_output_under_a_file_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    cfg = parse_config({"inputs": [str(random_corpus(tmp_path / "in.jsonl", 2))], "output": str(tmp_path / "a-file" / "out")})
    with pytest.raises(OutputError, match="cannot write there"):
        run_pipeline(cfg)


def test_disk_full_mid_run_stops_with_a_clear_error_and_publishes_nothing(ray_local, small_disk, tmp_path):
    disk = small_disk("1m")
    corpus = random_corpus(tmp_path / "in.jsonl", 300)
    assert corpus.stat().st_size > 2_000_000
    cfg = parse_config({"inputs": [str(corpus)], "output": str(disk / "out"), "seed": 1,
                        "stages": ["exact_dedup", {"name": "tokenize", "vocab_size": 300}]})
    with pytest.raises(OutputError, match=r"No space left on device during (tokenize|write)") as caught:
        run_pipeline(cfg)
    assert "without publishing stats.json or a manifest" in str(caught.value)
    out = disk / "out"
    assert not (out / "stats.json").exists()
    assert stray_files(out) == []
    record_fault("disk full mid-run (1 MiB tmpfs)", injected=1, survived=True, records=300, lost=0,
                 check="one-line error naming the step; no stats.json, manifest or temporary published")


def test_atomic_write_on_a_full_disk_leaves_neither_file_nor_temporary(small_disk):
    disk = small_disk("64k")
    filler = disk / "filler"
    with pytest.raises(OSError):
        filler.write_bytes(b"x" * 128 * 1024)  # fills the disk to the last block
    target = disk / "manifest.json"
    with pytest.raises(OSError) as caught:
        write_atomic(target, b"{}" * 40_000)
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]
