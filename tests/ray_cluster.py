"""A real one-node Ray cluster for tests: `ray start --head --block` on 127.0.0.1 in a session of
its own, stopped by signalling that session only (never `ray stop`, which would stop every Ray
cluster on the machine). The workers inherit this test process's PYTHONPATH, so they import the
relxfer under test. (The Ray executor's tests bring a fixture like it; the two can merge.)"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .conftest import die_with_parent

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    def __init__(self, num_cpus: int = 4):
        self.num_cpus = num_cpus
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's unix sockets live under it (path length limit ~107 bytes).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rx-ray-", dir="/tmp"))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "RayCluster":
        ray = Path(sys.executable).with_name("ray")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
        self.log = open(self.temp_dir / "ray-start.log", "ab")
        self.process = subprocess.Popen(
            [str(ray), "start", "--head", "--block", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
             "--num-cpus", str(self.num_cpus), "--num-gpus", "0", "--include-dashboard", "false",
             "--temp-dir", str(self.temp_dir), "--disable-usage-stats"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.temp_dir / 'ray-start.log').read_text()[-2000:]}")
            if b"Ray runtime started" in (self.temp_dir / "ray-start.log").read_bytes():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("the Ray cluster did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # `ray start --block` stops its processes
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:  # anything of its session still alive (raylet, GCS, workers)
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError, AttributeError):
            pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
