"""Output faults: a read-only or full disk gives one clear error and publishes nothing half-written.

The disks are real: small tmpfs mounts (the test skips where mounting is not allowed, e.g. without
root). A full disk mid-run must leave no stats.json and no manifest.json (both are written last,
to a temporary name then renamed), and no torn temporary files.
"""

from __future__ import annotations

import errno
import random
import subprocess
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


def mount_tmpfs(where: Path, size: str, *options: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the disk-fault tests need root")
    return where


@pytest.fixture
def small_disk(tmp_path):
    mounts: list[Path] = []

    def make(size: str, *options: str) -> Path:
        mounts.append(mount_tmpfs(tmp_path / f"disk{len(mounts)}", size, *options))
        return mounts[-1]

    yield make
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], check=False)


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
