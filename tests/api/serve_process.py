"""`flywheel serve` as a real subprocess in its own session, for the tests that need the real
command (its HTTP settings, its shutdown): started, waited for, and its whole process tree
recorded so a test can check that nothing it started outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.helpers import free_port

FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))


class ServeProcess:
    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "serve.log"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_NUM_CPUS": "1",
                    "FLYWHEEL_OBJECT_STORE_MB": "100", **(env or {})}
        self.args = [FLYWHEEL, "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.proc: subprocess.Popen | None = None
        self.seen: dict[int, float] = {}  # pid -> create_time of every process of the tree seen

    def __enter__(self) -> "ServeProcess":
        with open(self.log, "wb") as log:
            # Its own session: the test can end the whole group, and a SIGTERM reaches serve alone.
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill_all()
                raise RuntimeError(f"flywheel serve did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.25)

    def __exit__(self, *exc) -> None:
        self.kill_all()

    def record_tree(self) -> list[psutil.Process]:
        """Every live descendant of the serve process (and itself), remembered for `alive`."""
        root = psutil.Process(self.proc.pid)
        tree = [root, *root.children(recursive=True)]
        for p in tree:
            try:
                self.seen[p.pid] = p.create_time()
            except psutil.NoSuchProcess:
                pass
        return tree

    def alive(self) -> list[str]:
        """The processes of the recorded tree still running (a zombie has exited)."""
        left = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {' '.join(p.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
        return left

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill_all(self) -> None:
        """SIGKILL what this test started: serve's process group, then any recorded process of its
        tree that left the group (pid and start time checked: never someone else's)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
            except psutil.NoSuchProcess:
                pass
