"""The sandbox really refuses: network, writes outside its workspace, and each resource limit.

Every test runs real programs in real namespaces (root on Linux); elsewhere they skip, and
`run_python` answers `refused` without running anything (the last test checks that path too).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from training.sandbox import MAX_PROGRAM_BYTES, WORKSPACE, SandboxLimits, run_python, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}")
FAST = SandboxLimits(wall_seconds=10, cpu_seconds=2)


def test_a_program_runs_in_a_fresh_workspace_as_an_unprivileged_user():
    code = """
import os, sys
print(os.getcwd(), os.environ["HOME"], sorted(os.environ))
print(os.getuid(), os.getgroups(), repr(sys.stdin.read()))
print(sys.flags.isolated, len([p for p in os.listdir("/proc") if p.isdigit()]))
open("notes.txt", "w").write("kept")
print(open("notes.txt").read(), sorted(os.listdir(".")))
"""
    r = run_python(code, FAST)
    assert r.status == "passed", r
    cwd_line, user_line, flags_line, files_line = r.stdout.splitlines()
    assert cwd_line == f"{WORKSPACE} {WORKSPACE} ['HOME', 'LANG', 'PATH', 'TMPDIR']"
    uid, groups, stdin = user_line.split(" ", 2)
    assert int(uid) >= 1_000_000 and groups == "[]" and stdin == "''"  # stdin is /dev/null
    isolated, visible_pids = flags_line.split()
    assert isolated == "1" and int(visible_pids) <= 2  # its own PID namespace: itself (and at most a zombie)
    assert files_line == "kept ['main.py', 'notes.txt']"
    assert r.exit_code == 0 and r.limit is None and 0 < r.duration_s < 10


def test_no_network_even_to_a_port_listening_on_the_host():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    print("connected")
except OSError as e:
    print("refused", e.errno)
"""
        with socket.create_connection(("127.0.0.1", port), timeout=3):  # the control: the port is open here
            server.accept()[0].close()
        r = run_python(code, FAST)
        assert r.status == "passed", r
        assert r.stdout.split()[0] == "refused", r.stdout
        with pytest.raises(socket.timeout):  # and nothing reached the listener
            server.accept()


def test_writes_outside_the_workspace_fail(tmp_path):
    tag = uuid.uuid4().hex
    targets = [tmp_path / "escape.txt", Path(f"/tmp/flywheel-escape-{tag}"), Path(f"/var/tmp/flywheel-escape-{tag}"),
               Path(f"/etc/flywheel-escape-{tag}")]  # fmt: skip
    code = f"""
import errno
for path in {[str(t) for t in targets]!r} + ["{WORKSPACE}/inside.txt"]:
    try:
        with open(path, "w") as f:
            f.write("x")
        print("wrote", path)
    except OSError as e:
        print("denied", errno.errorcode[e.errno], path)
"""
    try:
        r = run_python(code, FAST)
        assert r.status == "passed", r
        lines = r.stdout.splitlines()
        assert lines[-1] == f"wrote {WORKSPACE}/inside.txt"
        # /tmp is masked (the pytest folder is not even there), /etc is read-only
        assert [line.split()[:2] for line in lines[:-1]] == [["denied", "ENOENT"], ["denied", "EROFS"],
                                                             ["denied", "EROFS"], ["denied", "EROFS"]]
        assert not any(t.exists() for t in targets)
    finally:
        for t in targets:
            t.unlink(missing_ok=True)


def test_an_infinite_loop_is_stopped_at_the_cpu_limit():
    r = run_python("while True:\n    pass\n", SandboxLimits(wall_seconds=10, cpu_seconds=1))
    assert (r.status, r.limit) == ("timeout", "cpu_time"), r
    assert 0.9 <= r.cpu_s < 3 and r.duration_s < 5


def test_a_sleeping_program_is_killed_at_the_wall_clock():
    r = run_python("import time\ntime.sleep(60)\n", SandboxLimits(wall_seconds=1.0, cpu_seconds=5))
    assert (r.status, r.limit) == ("timeout", "wall_time"), r
    assert 1.0 <= r.duration_s < 4


def test_a_memory_hog_fails_at_the_memory_limit():
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n"
    r = run_python(code, SandboxLimits(wall_seconds=10, cpu_seconds=5, memory_bytes=256 * 2**20))
    assert (r.status, r.limit) == ("memory", "memory"), r
    assert r.stderr.strip().splitlines()[-1] == "MemoryError"


def test_a_fork_bomb_stops_at_the_process_limit_and_nothing_outlives_the_run():
    r = run_python("import os\nwhile True:\n    os.fork()\n", SandboxLimits(wall_seconds=10, max_processes=8))
    assert (r.status, r.limit) == ("failed", "processes"), r
    assert "BlockingIOError" in r.stderr and r.duration_s < 5
    # A detached child (its own session) dies with the run's PID namespace.
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}.5"  # a unique `sleep` argument
    r = run_python(f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n", FAST)
    assert r.status == "passed", r
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                leftovers.append(pid)
        except OSError:
            pass  # exited while we looked
    assert leftovers == []


def test_files_are_capped_at_the_file_size_limit():
    code = "open('big.bin', 'wb').write(bytes(4 * 2**20))\n"
    r = run_python(code, SandboxLimits(wall_seconds=10, file_bytes=2**20))
    assert (r.status, r.limit) == ("failed", "file_size"), r


def test_oversized_programs_are_refused_without_running():
    r = run_python("x = 1\n" * (MAX_PROGRAM_BYTES // 6 + 1), FAST)
    assert r.status == "refused" and r.exit_code is None and "limit" in r.detail
