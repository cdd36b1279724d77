"""Run untrusted Python (a model's code and its tests) in a throw-away Linux sandbox.

    result = run_python("print(1 + 1)", SandboxLimits(wall_seconds=5))
    result.status, result.stdout        # "passed", "2\\n"

How: `unshare` (util-linux) starts this file as a small init (`_init`, root, PID 1) in new
network, mount, PID, IPC and UTS namespaces. The init makes the file system read-only, forks the
program under a fresh unprivileged uid with resource limits, waits, and reports the exit status
and CPU time on a pipe. When the init exits, the kernel kills every process left in the PID
namespace, so nothing outlives a run (a fork bomb included).

What is isolated:
- network: an empty network namespace (a loopback that is down): no TCP/UDP anywhere, 127.0.0.1
  included, and no abstract Unix sockets of the host;
- file writes: every mount is remounted read-only and nosuid; the only writable place is a fresh
  tmpfs of `file_bytes` at WORKSPACE (cwd, HOME and TMPDIR), gone when the run ends. /tmp,
  /var/tmp, /run and /dev/shm are masked by empty read-only tmpfs (other runs' files, sockets);
  a directory others cannot enter on the way to the interpreter (here /root) is masked too, with
  only the interpreter's prefix bound back in;
- identity: a random uid/gid in [UID_BASE, UID_BASE + UID_SPAN) with no groups and
  no_new_privs, so it owns nothing on the host, cannot gain privileges through setuid binaries,
  cannot remount anything, and cannot signal or trace other runs;
- processes: its own PID namespace (it sees and signals only its own processes);
- resources: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NPROC (counted per uid, so per
  run), RLIMIT_NOFILE, no core files; a wall-clock limit after which the whole process group
  is killed;
- inputs: stdin is /dev/null, the environment is HOME/TMPDIR/PATH/LANG only, and the base
  interpreter runs in isolated mode (`-I`: no PYTHON* variables, no user site, no script dir),
  with the standard library only (no virtual environment packages).

What is NOT isolated: reads of whatever the host lets any user read (/etc, /usr, world-readable
files); the kernel (no seccomp filter: every system call reaches the host kernel, so a kernel
bug is an escape); Unix sockets in the file system outside the masked folders (connect() works on
a read-only mount where the socket's permissions allow it); CPU and memory bandwidth shared with
the host (no cgroup); time and side channels. It keeps a model's buggy or greedy code from doing
harm; it is not a security boundary against a determined attacker the way gVisor or Firecracker
is.

It needs Linux, util-linux `unshare` and root (to build the namespaces and switch to an
unprivileged uid). Anywhere else `run_python` answers `refused` and runs nothing: there is no
unsandboxed fallback.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["passed", "failed", "timeout", "memory", "crashed", "refused"]
# Which limit ended a run, when one did (`SandboxResult.limit`).
Limit = Literal["wall_time", "cpu_time", "memory", "processes", "file_size"]

WORKSPACE = "/tmp/sandbox"  # inside the sandbox's own /tmp mask; the host's /tmp is not touched
MASKED = ("/tmp", "/var/tmp", "/run", "/dev/shm")
UID_BASE, UID_SPAN = 1_000_000, 1_000_000  # no such user on the host: owns nothing there
MAX_PROGRAM_BYTES = 100_000  # the program travels in argv (Linux allows 128 KiB per argument)

# Linux <sys/mount.h> and <sys/prctl.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38


class SandboxLimits(BaseModel):
    """What one run may use. Defaults fit a function and its tests with room to spare."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_seconds: float = Field(10.0, gt=0, description="Wall clock, then the process group is killed.")
    cpu_seconds: int = Field(5, gt=0, description="RLIMIT_CPU: SIGXCPU at this, SIGKILL a second later.")
    memory_bytes: int = Field(512 * 2**20, ge=64 * 2**20, description="RLIMIT_AS (address space).")
    file_bytes: int = Field(16 * 2**20, gt=0, description="RLIMIT_FSIZE and the workspace tmpfs size.")
    max_processes: int = Field(16, ge=1, description="RLIMIT_NPROC for the run's uid: processes and threads.")
    max_open_files: int = Field(64, ge=16, description="RLIMIT_NOFILE.")
    output_bytes: int = Field(8192, gt=0, description="How much of the end of stdout and stderr is kept.")


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    exit_code: int | None  # negative: killed by that signal; None: never ran
    stdout: str  # the last `output_bytes` of each stream
    stderr: str
    duration_s: float  # wall clock, namespace setup (~0.1 s) included
    cpu_s: float = 0.0
    limit: Limit | None = None  # the limit that ended it, when one did
    detail: str = ""  # why it was refused, or what the classification saw

    def to_dict(self) -> dict:
        return {"status": self.status, "exit_code": self.exit_code, "limit": self.limit, "detail": self.detail,
                "duration_s": round(self.duration_s, 3), "cpu_s": round(self.cpu_s, 3),
                "stdout": self.stdout, "stderr": self.stderr}


class SandboxUnavailable(RuntimeError):
    """This machine cannot sandbox (not Linux, no unshare, not root, namespaces forbidden)."""


def unavailable_reason() -> str | None:
    """Why this machine cannot build the sandbox, or None when it can try."""
    if sys.platform != "linux":
        return f"the sandbox needs Linux namespaces (this is {sys.platform})"
    if shutil.which("unshare") is None:
        return "util-linux `unshare` is not installed"
    if os.geteuid() != 0:
        return "the sandbox needs root to build its namespaces and run the code as an unprivileged uid"
    return None


def require_sandbox() -> None:
    """Raise SandboxUnavailable unless a trivial program really runs sandboxed here."""
    probe = run_python("print('ok')", SandboxLimits(wall_seconds=30))
    if probe.status != "passed" or probe.stdout.strip() != "ok":
        raise SandboxUnavailable(f"sandbox probe {probe.status}: {probe.detail or probe.stderr[-500:]}")


def interpreter() -> tuple[str, str]:
    """(base interpreter, its prefix): the standard library's Python, not a virtual environment's."""
    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return python, os.path.realpath(sys.base_prefix)


def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `code` as a script in a fresh sandbox and classify how it ended (never raises for the
    program's behaviour; `refused` when the sandbox cannot be built here)."""
    limits = limits or SandboxLimits()
    reason = unavailable_reason()
    if reason is None and len(code.encode()) > MAX_PROGRAM_BYTES:
        reason = f"program of {len(code.encode()):,} bytes is over the {MAX_PROGRAM_BYTES:,}-byte limit"
    if reason is not None:
        return SandboxResult("refused", None, "", "", 0.0, detail=reason)
    python, prefix = interpreter()
    report_r, report_w = os.pipe()
    plan = {"code": code, "python": python, "expose": [prefix], "uid": UID_BASE + secrets.randbelow(UID_SPAN),
            "report_fd": report_w, "limits": limits.model_dump()}
    cmd = [shutil.which("unshare"), "--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child",
           "--mount-proc", "--propagation", "private", "--", sys.executable, "-I", os.path.abspath(__file__),
           json.dumps(plan)]  # fmt: skip
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(report_w,), start_new_session=True,
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    finally:
        os.close(report_w)
    streams = [_Tail(proc.stdout, limits.output_bytes), _Tail(proc.stderr, limits.output_bytes)]
    timed_out = False
    try:
        proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # unshare and the init; --kill-child and the PID namespace do the rest
        proc.wait()
    duration = time.monotonic() - start
    for stream in streams:
        stream.join(timeout=5)  # EOF once the namespace is gone; a bound all the same
    with os.fdopen(report_r, "rb") as f:
        raw = f.read()
    report = json.loads(raw) if raw else {}
    out, err = (s.text() for s in streams)
    return _classify(report, timed_out, duration, out, err, proc.returncode, limits)


class _Tail(threading.Thread):
    """Drains a pipe on a thread, keeping its last `keep` bytes (a program may print forever)."""

    def __init__(self, pipe, keep: int):
        super().__init__(daemon=True)
        self.pipe, self.keep, self.data = pipe, keep, bytearray()
        self.start()

    def run(self) -> None:
        while chunk := self.pipe.read1(65536):
            self.data += chunk
            del self.data[: max(0, len(self.data) - self.keep)]
        self.pipe.close()

    def text(self) -> str:
        return self.data.decode(errors="replace")


def _classify(report: dict, timed_out: bool, duration: float, out: str, err: str, unshare_code: int | None,
              limits: SandboxLimits) -> SandboxResult:
    """The status of a finished run from the init's report and the program's stderr."""
    code, cpu = report.get("exit_code"), float(report.get("cpu_s", 0.0))

    def result(status: Status, limit: Limit | None = None, detail: str = "") -> SandboxResult:
        return SandboxResult(status, code, out, err, duration, cpu, limit, detail)

    if "setup_error" in report:
        return result("refused", detail=f"sandbox setup failed: {report['setup_error']}")
    if timed_out:
        return result("timeout", "wall_time", f"killed after {limits.wall_seconds:g} s wall clock")
    if code is None:  # unshare itself failed (namespaces forbidden here): nothing ran
        return result("refused", detail=f"unshare exited {unshare_code}: {err.strip()[-300:]}")
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= limits.cpu_seconds):
        return result("timeout", "cpu_time", f"{cpu:.2f} s CPU, limit {limits.cpu_seconds} s")
    if code == 0:
        return result("passed")
    last_lines = err.strip().splitlines()[-3:]
    if any(line.startswith("MemoryError") for line in last_lines) or "Cannot allocate memory" in err:
        return result("memory", "memory", f"address-space limit {limits.memory_bytes:,} bytes")
    if code < 0:
        return result("crashed", detail=f"killed by {signal.Signals(-code).name}")
    if ("Resource temporarily unavailable" in err and "fork" in err) or "can't start new thread" in err:
        return result("failed", "processes", f"process limit {limits.max_processes}")
    if "File too large" in err or "No space left on device" in err:
        return result("failed", "file_size", f"file-size limit {limits.file_bytes:,} bytes")
    return result("failed", detail=f"exit code {code}")


# -- the init: runs as root, PID 1 of the new namespaces (`python -I sandbox.py PLAN`) ------------

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _mount_points() -> list[str]:
    """Mount points of this namespace, from /proc/self/mountinfo (octal escapes decoded)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(raw.encode().decode("unicode_escape").encode("latin-1").decode())
    return points


def _closed_ancestor(path: str) -> str | None:
    """The first directory above `path` that others cannot enter (no o+x), if any."""
    parts = Path(path).parts
    for i in range(2, len(parts)):
        ancestor = str(Path(*parts[:i]))
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def _setup_mounts(expose: list[str], uid: int, file_bytes: int) -> None:
    """Read-only file system, masked scratch folders, the interpreter reachable, a private workspace."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    stage = "/dev/shm"  # masked below anyway; an interpreter never lives under it
    _mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=64k")
    closed = {}
    for i, path in enumerate(expose):
        if (ancestor := _closed_ancestor(path)) is not None:
            os.mkdir(f"{stage}/{i}")
            _mount(path, f"{stage}/{i}", None, MS_BIND | MS_REC)
            closed[path] = (ancestor, f"{stage}/{i}")
    masked = set()
    for path, (ancestor, staged) in closed.items():
        if ancestor not in masked:
            _mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            masked.add(ancestor)
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(staged, path, None, MS_BIND | MS_REC)
        _check(_libc.umount2(staged.encode(), MNT_DETACH), f"umount {staged}")
    _check(_libc.umount2(stage.encode(), MNT_DETACH), f"umount {stage}")
    for folder in MASKED:
        if os.path.isdir(folder) and not os.path.islink(folder):
            _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
    os.mkdir(WORKSPACE)
    _mount("tmpfs", WORKSPACE, "tmpfs", MS_NOSUID | MS_NODEV,
           f"mode=0700,uid={uid},gid={uid},size={max(file_bytes, 4096)}")
    for point in _mount_points():
        if point == WORKSPACE:
            continue
        try:
            keep = os.statvfs(point).f_flag & (MS_NODEV | MS_NOEXEC)  # ST_* equal MS_* for these bits
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EINVAL, errno.EACCES):  # hidden under another mount
                raise
    # The invariant, checked rather than assumed: every mount a path reaches is read-only.
    for point in _mount_points():
        try:
            writable = point != WORKSPACE and not os.statvfs(point).f_flag & MS_RDONLY
        except OSError:
            continue  # unreachable (under a mask)
        if writable:
            raise OSError(errno.EROFS, f"{point} is still writable")


def _start_program(plan: dict) -> int:
    """Fork the program: unprivileged uid, limits, workspace; returns its pid."""
    limits, uid = SandboxLimits(**plan["limits"]), plan["uid"]
    pid = os.fork()
    if pid:
        return pid
    try:
        os.close(plan["report_fd"])
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        for which, value in ((resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)),
                             (resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_FSIZE, limits.file_bytes),
                             (resource.RLIMIT_NPROC, limits.max_processes),
                             (resource.RLIMIT_NOFILE, limits.max_open_files), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, value if isinstance(value, tuple) else (value, value))
        os.chdir(WORKSPACE)
        env = {"HOME": WORKSPACE, "TMPDIR": WORKSPACE, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        os.execve(plan["python"], [plan["python"], "-I", "main.py"], env)
    except BaseException as e:  # noqa: BLE001 - the child must never return into the init's code
        os.write(2, f"sandbox: could not start the program: {e!r}\n".encode())
    os._exit(127)


def _init(plan: dict) -> NoReturn:
    """PID 1 of the sandbox: set up, run the program, report {exit_code, cpu_s} or {setup_error}."""
    report = os.fdopen(plan["report_fd"], "w")
    try:
        _setup_mounts(plan["expose"], plan["uid"], plan["limits"]["file_bytes"])
        program = Path(WORKSPACE, "main.py")
        program.write_text(plan["code"])
        os.chown(program, plan["uid"], plan["uid"])
    except OSError as e:
        report.write(json.dumps({"setup_error": str(e)}))
        report.close()
        os._exit(0)
    pid = _start_program(plan)
    _, status, usage = os.wait4(pid, 0)
    report.write(json.dumps({"exit_code": os.waitstatus_to_exitcode(status),
                             "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss}))
    report.close()
    os._exit(0)  # the kernel now kills whatever the program left running in the namespace


if __name__ == "__main__":
    _init(json.loads(sys.argv[1]))
