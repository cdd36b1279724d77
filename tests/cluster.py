"""A real multi-node Ray cluster on one machine: a head and worker nodes, each a `ray start --block`
in its own process group, for the multi-node tests and `benchmarks/scaling.py`.

    with LocalRayCluster(env=s3.env, head_cpus=0) as cluster:
        worker = cluster.add_worker(num_cpus=1, hide=[scratch])   # scratch: an empty tmpfs there
        run_driver(..., env={**s3.env, "RAY_ADDRESS": cluster.address})
        cluster.kill_worker(worker)                                # SIGKILL its raylet and workers
        cluster.add_worker(num_cpus=1, hide=[scratch])

Every node listens on 127.0.0.1 with ports of its own (GCS on the head; node manager, object
manager, metrics, dashboard agent and runtime-env agent on each) and has its own `--temp-dir`
(session, logs, sockets, spill files) under one short folder in /tmp: Unix socket paths must stay
under 108 bytes, and the default /tmp/ray is shared with every other Ray on the machine.

A worker node with `hide=[folder, ...]` starts inside `unshare --mount` (root) with an empty
tmpfs mounted over each folder: it cannot see what the driver wrote there, so a test that passes
proves the code shares nothing through the local disk. Where mounting is impossible (no root, no
CAP_SYS_ADMIN) the test is skipped with the reason; nothing else is skipped.

Stopping never uses `ray stop` (it stops every Ray on the machine): each node is stopped by
SIGTERM then SIGKILL to its process group.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded here: no dlopen between fork and exec
# Failure detection in seconds instead of Ray's default ~30 s (a killed node's raylet stops
# answering health checks; GCS marks it dead after period x threshold).
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                          "RAY_health_check_initial_delay_ms": "1000"}
PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port")


class ClusterError(RuntimeError):
    """A node did not come up (or go down) in time; the message carries the node's log tails."""


@dataclass
class RayNode:
    name: str
    temp_dir: Path
    ports: dict[str, int]
    proc: subprocess.Popen
    num_cpus: int
    hidden: list[Path] = field(default_factory=list)
    node_id: str | None = None  # hex, once GCS lists the node

    @property
    def pgid(self) -> int:
        return self.proc.pid  # setsid: the leader's pid is the group id

    @property
    def metrics_port(self) -> int:
        return self.ports["--metrics-export-port"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def processes(self) -> list:
        """Every live process under this node's `ray start` (raylet, agents, Ray workers), as
        psutil processes: only this node's, though other Rays on the machine run the same names."""
        import psutil  # installed with Ray; only the cluster tests need it

        try:
            return psutil.Process(self.pgid).children(recursive=True)
        except psutil.Error:
            return []

    def logs_dir(self) -> Path | None:
        sessions = sorted(self.temp_dir.glob("session_2*"))
        return sessions[-1] / "logs" if sessions else None

    def worker_logs(self) -> list[Path]:
        """One `python-core-worker-*.log` per Ray worker process this node's raylet started."""
        logs = self.logs_dir()
        return sorted(logs.glob("python-core-worker-*.log")) if logs else []

    def executed(self) -> Counter[str]:
        """Names of the tasks and actors this node's Ray workers ran, with counts: Ray writes a
        `:task_name:NAME` (or `:actor_name:NAME`) line to a worker's .out file as each one starts."""
        logs = self.logs_dir()
        names: Counter[str] = Counter()
        for out in sorted(logs.glob("worker-*.out")) if logs else []:
            for line in out.read_text(errors="replace").splitlines():
                if line.startswith((":task_name:", ":actor_name:")):
                    names[line.split(":", 2)[2]] += 1
        return names

    def log_tails(self, lines: int = 15) -> str:
        out = [f"--- {self.name} (ray start exit code {self.proc.poll()}) stdout/stderr:",
               _tail(self.temp_dir / "ray-start.log", lines)]
        logs = self.logs_dir()
        for name in ("raylet.err", "raylet.out", "gcs_server.err", "gcs_server.out"):
            if logs is not None and (logs / name).exists():
                out += [f"--- {self.name} {name}:", _tail(logs / name, lines)]
        return "\n".join(out)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({e})"


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on 127.0.0.1 now (all held open at once, so no repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def mount_namespace_problem() -> str | None:
    """Why a worker node cannot get a private tmpfs here, or None when it can."""
    if shutil.which("unshare") is None:
        return "the `unshare` command is missing (util-linux)"
    probe = tempfile.mkdtemp(prefix="fwc-probe-")
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs -o size=1m tmpfs {probe} && test -z \"$(ls -A {probe})\""],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        if done.returncode != 0:
            return f"`unshare --mount` + `mount -t tmpfs` failed ({done.stderr.strip() or done.returncode}): needs root"
        return None
    finally:
        os.rmdir(probe)


class LocalRayCluster:
    """A head node plus worker nodes, each `ray start --block` in its own session (process group)."""

    def __init__(self, *, env: dict[str, str] | None = None, head_cpus: int = 0, object_store_mb: int = 150,
                 start_timeout_s: float = 90, system_env: dict[str, str] | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="fwc-", dir="/tmp"))  # short: socket paths
        self.head_cpus, self.object_store_mb, self.start_timeout_s = head_cpus, object_store_mb, start_timeout_s
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    **FAST_FAILURE_DETECTION, **(system_env or {}), **(env or {})}
        self.env.pop("RAY_ADDRESS", None)  # `ray start --head` must not join another cluster
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []
        self._count = 0

    @property
    def address(self) -> str:
        assert self.head is not None, "start() first"
        return f"127.0.0.1:{self.head.ports['--port']}"

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalRayCluster:
        try:
            self.head = self._launch("head", ["--head", "--include-dashboard", "false"], self.head_cpus, [], "--port")
            self._wait_registered(self.head)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, num_cpus: int = 1, hide: list[Path] | tuple[Path, ...] = ()) -> RayNode:
        """Start a worker node and wait until GCS lists it alive. `hide`: folders it sees as empty tmpfs."""
        self._count += 1
        node = self._launch(f"worker{self._count}", ["--address", self.address], num_cpus, list(hide))
        self.workers.append(node)
        self._wait_registered(node)
        return node

    def kill_worker(self, node: RayNode, wait_dead: bool = True) -> None:
        """SIGKILL the node's whole process group (raylet, agents) and its Ray workers at once, as a
        machine loss would; then wait until GCS has marked the node dead."""
        _signal_groups(_process_groups(node), signal.SIGKILL)
        node.proc.wait(timeout=30)
        if wait_dead:
            self._wait_state(node, alive=False)

    def stop(self) -> None:
        """Every node by its process groups: SIGTERM, then SIGKILL what is left after 3 s (nothing
        on a node needs saving: outputs are in the store; `ray start --block` took ~10 s to exit)."""
        nodes = [n for n in [*self.workers, self.head] if n is not None]
        groups = {n.name: _process_groups(n) for n in nodes}  # before the leaders exit: workers get orphaned
        for node in nodes:
            _signal_groups(groups[node.name], signal.SIGTERM)
        deadline = time.monotonic() + 3
        for node in nodes:
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_groups(groups[node.name], signal.SIGKILL)  # the stragglers
            if node.proc.poll() is None:
                node.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def node_infos(self) -> dict[str, object]:
        """GCS's view: {node_id hex: GcsNodeInfo} for every node it has seen, dead ones too."""
        from ray._raylet import GcsClient  # Ray, only for the tests that start a cluster

        infos = GcsClient(address=self.address).get_all_node_info(timeout=10)
        return {node_id.hex(): info for node_id, info in infos.items()}

    def _launch(self, name: str, role: list[str], num_cpus: int, hide: list[Path], *extra_ports: str) -> RayNode:
        temp_dir = self.root / name
        temp_dir.mkdir()
        flags = [*extra_ports, *PORT_FLAGS]
        ports = dict(zip(flags, free_ports(len(flags))))
        cmd = [RAY, "start", *role, "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
               "--object-store-memory", str(self.object_store_mb * 1024 * 1024), "--temp-dir", str(temp_dir),
               "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats", "--log-style", "record",
               *(x for flag, port in ports.items() for x in (flag, str(port)))]  # fmt: skip
        if hide:
            cmd = _in_private_mounts(cmd, hide)
        with open(temp_dir / "ray-start.log", "wb") as log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=_own_group_dying_with_parent)
        return RayNode(name, temp_dir, ports, proc, num_cpus, hide)

    def _wait_registered(self, node: RayNode) -> None:
        self._wait_state(node, alive=True)

    def _wait_state(self, node: RayNode, alive: bool) -> None:
        """Poll GCS until it lists `node` (found by its temp dir) alive, or dead."""
        deadline = time.monotonic() + self.start_timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            if alive and not node.alive():
                raise ClusterError(f"{node.name} exited during start-up\n{self._all_tails(node)}")
            try:
                infos = self.node_infos()
            except Exception as e:  # GCS not up yet
                last_error = repr(e)
                time.sleep(0.5)
                continue
            mine = [(nid, i) for nid, i in infos.items() if i.temp_dir == str(node.temp_dir)]
            is_alive = bool(mine) and mine[-1][1].state == 0  # GcsNodeState.ALIVE
            if mine:
                node.node_id = mine[-1][0]
            if is_alive == alive:
                return
            time.sleep(0.5)
        state = "alive" if alive else "dead"
        raise ClusterError(f"{node.name} not {state} in GCS after {self.start_timeout_s:.0f} s {last_error}\n"
                           f"{self._all_tails(node)}")

    def _all_tails(self, node: RayNode) -> str:
        others = [n for n in (self.head,) if n is not None and n is not node]
        return "\n".join(n.log_tails() for n in [node, *others])


def _in_private_mounts(cmd: list[str], hide: list[Path]) -> list[str]:
    """`cmd` inside a new mount namespace (private propagation: nothing leaks back to the host)
    with an empty tmpfs over each folder of `hide`."""
    mounts = " && ".join(f"mkdir -p '{p}' && mount -t tmpfs -o size=256m tmpfs '{p}'" for p in hide)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh", *cmd]


def _own_group_dying_with_parent() -> None:
    """In the child before exec: setsid (its own process group, stopped by pgid), and SIGTERM when
    the process that started it dies, so a harness killed without running `finally` (a timeout's
    SIGKILL) leaves no cluster behind: `ray start --block` then stops its node."""
    os.setsid()
    _LIBC.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _process_groups(node: RayNode) -> list[int]:
    """The node's process group, then the group of each Ray worker its raylet started: Ray puts
    every worker process in a process group of its own (to clean up the worker's children)."""
    groups = set()
    for child in node.processes():
        try:
            groups.add(os.getpgid(child.pid))
        except ProcessLookupError:
            continue  # exited meanwhile
    return [node.pgid, *sorted(groups - {node.pgid})]


def _signal_groups(groups: list[int], sig: int) -> None:
    for pgid in groups:
        _killpg(pgid, sig)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- a curation workload for the cluster: corpus in S3, the driver as a subprocess ---------------

WORDS = ("the of and to in is was for on that with as by at from this be are it not or have an they which "
         "river stone light morning paper garden window music letter forest silver bridge animal planet "
         "harbour engine market winter signal copper meadow lantern canyon orbit").split()


def corpus_jsonl(docs: int, seed: int) -> bytes:
    """`docs` seeded documents plus exact copies and near copies (dedup has work), as JSONL."""
    import json
    import random

    rng = random.Random(seed)
    records = [{"id": f"d{i:05}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 300)))}
               for i in range(docs)]
    records += [{"id": f"copy{i:05}", "text": records[i]["text"]} for i in range(0, docs, 40)]
    records += [{"id": f"near{i:05}", "text": records[i]["text"] + " coda"} for i in range(5, docs, 40)]
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def dedup_tokenize_config(inputs: str, output: str, seed: int = 7) -> dict:
    """Dedup + tokenize, the curation the multi-node tests and benchmarks run (s3:// in and out)."""
    return {"inputs": [inputs], "output": output, "seed": seed,
            "stages": ["exact_dedup", {"name": "minhash_dedup", "threshold": 0.8},
                       {"name": "tokenize", "vocab_size": 500, "shard_tokens": 20000}]}


def start_curation(cluster: LocalRayCluster, config: dict, workdir: Path, extra_env: dict | None = None,
                   ) -> subprocess.Popen:
    """`flywheel curate` as a driver joined to `cluster` (RAY_ADDRESS), in its own process group;
    stdout/stderr go to workdir/driver.log."""
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "curate.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    flywheel = str(Path(sys.executable).with_name("flywheel"))
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, **(extra_env or {})}
    with open(workdir / "driver.log", "wb") as log:
        return subprocess.Popen([flywheel, "curate", str(config_file), "--quiet", "--overwrite"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_own_group_dying_with_parent, cwd=workdir)


def finish_curation(cluster: LocalRayCluster, proc: subprocess.Popen, workdir: Path, timeout_s: float) -> str:
    """Wait for the driver; its output, or a ClusterError with the driver's and nodes' log tails."""
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = f"killed after {timeout_s:.0f} s"
    text = (workdir / "driver.log").read_text(errors="replace")
    if rc != 0:
        nodes = [n for n in [cluster.head, *cluster.workers] if n is not None]
        raise ClusterError(f"flywheel curate on the cluster: exit {rc}\n--- driver:\n{text[-4000:]}\n"
                           + "\n".join(n.log_tails() for n in nodes))
    return text


def curate(cluster: LocalRayCluster, config: dict, workdir: Path, timeout_s: float = 600) -> str:
    return finish_curation(cluster, start_curation(cluster, config, workdir), workdir, timeout_s)
