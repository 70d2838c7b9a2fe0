"""A real one-node Ray cluster for tests: `ray start --head --block` in a session of its own, on
loopback address 127.0.0.2, with logical GPUs, free ports for every component, a private temp
directory and a relxfer cache of its own; stopped by signalling that session only (never
`ray stop`, which would stop every Ray cluster on the machine), and it dies with the pytest
process that started it.

    cluster = RayCluster(num_cpus=2, num_gpus=2, root=tmp_path).start()
    subprocess.run([...], env=cluster.env())     # a driver: relxfer run ... --ray-address cluster.address
    cluster.stop()

Why 127.0.0.2: Ray replaces a 127.0.0.1 node address by the machine's routable one (its switch
back to loopback refuses clusters of more than one node), but leaves other loopback addresses
alone, so everything stays on loopback. Workers inherit `env()`: this checkout on PYTHONPATH (they
import the relxfer under test) and RELXFER_CACHE (the node's cache, not the driver's)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import die_with_parent, free_port

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
NODE_IP = "127.0.0.2"


class NodeExited(RuntimeError):
    pass


class RayCluster:
    def __init__(self, num_cpus: int = 4, num_gpus: int = 0, root: Path | None = None, object_store_mb: int = 100):
        self.num_cpus, self.num_gpus, self.object_store_mb = num_cpus, num_gpus, object_store_mb
        # Short: Ray's unix sockets live under it (path length limit ~107 bytes).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rx-ray-", dir="/tmp"))
        self.root = Path(root) if root else self.temp_dir
        self.node_cache = self.root / "node-cache"
        self.port = free_port()
        self.address = f"{NODE_IP}:{self.port}"
        self.process: subprocess.Popen | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "RAY_ADDRESS")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env | {"RAY_USAGE_STATS_ENABLED": "0"} | extra

    def start(self, timeout: float = 180, tries: int = 3) -> RayCluster:
        """Start the node; one that gives up during start-up is retried from scratch (a raylet
        waits 15 s for its dashboard agent, a Python process, and `ray start` 30 s for the
        raylet: a heavily loaded machine can exceed both)."""
        for attempt in range(1, tries + 1):
            try:
                return self._start(timeout)
            except NodeExited:
                self.stop(keep_temp_dir=True)
                if attempt == tries:
                    raise
                self.port = free_port()
                self.address = f"{NODE_IP}:{self.port}"
        return self

    def _start(self, timeout: float) -> RayCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        log_path = self.root / "ray-start.log"
        log_path.write_bytes(b"")
        ports = [
            arg
            for name in (
                "--node-manager-port",
                "--object-manager-port",
                "--dashboard-agent-listen-port",
                "--dashboard-agent-grpc-port",
                "--metrics-export-port",
                "--runtime-env-agent-port",
                "--ray-client-server-port",
            )
            for arg in (name, str(free_port()))
        ]
        self.process = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                "--port",
                str(self.port),
                "--node-ip-address",
                NODE_IP,
                "--num-cpus",
                str(self.num_cpus),
                "--num-gpus",
                str(self.num_gpus),
                "--include-dashboard",
                "false",
                "--object-store-memory",
                str(self.object_store_mb * 2**20),
                "--temp-dir",
                str(self.temp_dir),
                "--disable-usage-stats",
                *ports,
            ],
            env=self.env(RELXFER_CACHE=str(self.node_cache), OMP_NUM_THREADS="1"),
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
            cwd=self.root,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise NodeExited(f"ray start exited: {log_path.read_text()[-3000:]}")
            if b"Ray runtime started" in log_path.read_bytes():
                return self
            time.sleep(0.5)
        raise NodeExited(f"the Ray cluster did not start in {timeout:.0f} s: {log_path.read_text()[-2000:]}")

    def _session_pids(self) -> list[int]:
        """Every process of this cluster: Ray puts each worker in a process group of its own,
        but all of them stay in the session `ray start` began (whose id is that process's pid,
        also after it exits)."""
        if self.process is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.getsid(int(entry.name)) == self.process.pid:
                    pids.append(int(entry.name))
            except (OSError, ProcessLookupError):
                continue
        return pids

    def worker_pids(self, title_prefix: str) -> list[int]:
        """Processes of this cluster whose title starts with `title_prefix` (Ray names a worker
        running a task `ray::<task name>`)."""
        pids = []
        for pid in self._session_pids():
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith(title_prefix):
                pids.append(pid)
        return pids

    def stop(self, keep_temp_dir: bool = False) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)  # `ray start --block` stops its node
                try:
                    # Its graceful stop can take 30 s and more on a busy 2-core machine; what is
                    # left after 10 s is killed below (a test cluster keeps nothing worth waiting for).
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            for pid in self._session_pids():  # whatever outlived its node (workers included)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.process.poll() is None:
                self.process.wait()
        if not keep_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
