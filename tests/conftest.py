"""Shared fixtures: a real `mlflow server` on 127.0.0.1 (free port, temporary backend), the
shared real data directory, and a per-session relxfer cache."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def die_with_parent() -> None:
    """preexec_fn for test servers: the kernel sends SIGTERM when the process that started them
    dies, so a pytest killed by a timeout leaves no server behind (Linux prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real tracking server process bound to 127.0.0.1, storing into `root`."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            preexec_fn=die_with_parent,
            # MLflow 3's job runner starts seven Huey consumer processes per server that relxfer
            # never uses; off, a server starts faster, weighs a third, and leaves nothing behind.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()  # never leave a server behind (on a busy machine it may come up later)
        raise RuntimeError(f"mlflow server did not become healthy in {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def relxfer_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("relxfer-cache")


@pytest.fixture(scope="session")
def belebele_dir() -> Path:
    path = SHARED_DATA / "belebele"
    if not (path / "eng_Latn.jsonl").exists():
        pytest.skip(f"real Belebele files not found at {path}")
    return path


@pytest.fixture(scope="session")
def vllm_server(relxfer_cache, tmp_path_factory):
    """One real vLLM server (tiny model, float32, LoRA at run time) for the session; its
    environment is built on first use (tests/servers/vllm_env.py)."""
    from tests.servers.vllm_server import start_test_server

    server = start_test_server(relxfer_cache, tmp_path_factory.mktemp("vllm-server"))
    yield server
    server.stop()
