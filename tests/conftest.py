"""Test tiers, per-test isolation and shared fixtures.

Tiers: every test carries exactly one of the markers `unit` (in this process and quick: no
server, no subprocess, no socket; `python -m pytest -m unit` is the fast tier), `integration`
(real subprocesses or servers: an mlflow server, torchrun, a tiny study) or `system` (whole
studies, Ray clusters, vLLM, SkyRL tx), set by `pytestmark` in its file; a test with none or two
is a collection error, which stops the run.

Isolation: every test starts with MLFLOW_TRACKING_URI on a sqlite file of its own, RELXFER_CACHE
on the session's cache, no MLflow run or experiment and no service key inherited from the shell
(session and module fixtures too), and whatever it changes in os.environ is undone after it; a
unit test runs in a directory of its own.

Shared (per session, so per xdist worker): a real `mlflow server` on 127.0.0.1 (free port,
temporary backend), the relxfer cache, the real data directory, a vLLM server."""

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

from tests.support import shared_data

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "system")
# Settings a test must not inherit from the shell that started pytest: they would point a test at
# a real server, a real run, a real key.
INHERITED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "RELXFER_CACHE",
    "RELXFER_VLLM_PYTHON",
    "BELEBELE_DIR",
    "RAY_ADDRESS",
    "TINKER_API_KEY",
    "TINKER_BASE_URL",
)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A file with a test that has no tier, or two, fails to collect: the run stops with a
    collection error naming the tests, with or without `-m` and xdist."""
    report = yield
    if report.passed:
        wrong = []
        for node in report.result:
            if isinstance(node, pytest.Item):
                tiers = sorted({mark.name for mark in node.iter_markers() if mark.name in TIERS})
                if len(tiers) != 1:
                    wrong.append(f"  {node.nodeid}: {', '.join(tiers) or 'no tier'}")
        if wrong:
            report.outcome = "failed"
            report.longrepr = (
                f"every test needs exactly one tier marker ({', '.join(TIERS)}; pytestmark in its file):\n"
                + "\n".join(wrong)
            )
            report.result = []
    return report


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker
        # The workers share the machine's cores: one intra-op thread each, also in the processes
        # they start. With more, OpenMP threads spin on a core another worker holds, and in-process
        # training ran ten times slower than alone. Set before torch or numpy is imported.
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")


def tier_of(item: pytest.Item) -> str:
    return next(mark.name for mark in item.iter_markers() if mark.name in TIERS)


def pytest_collection_modifyitems(config, items):
    """Distributed (xdist), the longest tiers go first: with `--dist loadfile
    --no-loadscope-reorder` each worker takes the next file when it is free, so the whole
    studies and servers start at once and the many short unit tests fill in at the end, which
    keeps the workers' finishing times close. One process keeps the files' order."""
    if hasattr(config, "workerinput"):  # an xdist worker: only workers collect
        rank = {"system": 0, "integration": 1, "unit": 2}
        items.sort(key=lambda item: rank[tier_of(item)])  # stable: a file's tests stay together


def isolate(tracking_dir: Path, cache: Path) -> None:
    for name in INHERITED_ENV:
        os.environ.pop(name, None)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tracking_dir / 'mlflow.db'}"
    os.environ["RELXFER_CACHE"] = str(cache)


@pytest.fixture(scope="session", autouse=True)
def isolated_session(tmp_path_factory, relxfer_cache):
    """The same settings for session and module fixtures, which start before any test's own."""
    saved = dict(os.environ)
    isolate(tmp_path_factory.mktemp("tracking"), relxfer_cache)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def isolated_environment(request, tmp_path_factory, isolated_session):
    """A private tracking store and the session's cache for every test; os.environ as it was
    afterwards. A test that wants another tracking URI sets its own (monkeypatch.setenv). A unit
    test also runs in that store's directory: MLflow's `./mlruns` (a sqlite store's artifacts)
    and `./mlflow.db` defaults land there, not in the checkout (unit tests start no process
    that would need the checkout as its working directory)."""
    saved, cwd = dict(os.environ), os.getcwd()
    tracking_dir = tmp_path_factory.mktemp("tracking")
    isolate(tracking_dir, request.getfixturevalue("relxfer_cache"))
    if request.node.get_closest_marker("unit") is not None:
        os.chdir(tracking_dir)
    yield
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(saved)


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


@pytest.fixture(autouse=True)
def unit_tests_open_no_connection(request, monkeypatch):
    """A unit test that connects to anything over the network (a server, even a refused port)
    fails, so the fast tier cannot come to depend on one."""
    if request.node.get_closest_marker("unit") is None:
        return
    connect = socket.socket.connect

    def refuse(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"a unit test connected to {address}: mark its file integration")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)


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
    return shared_data.belebele_dir()


@pytest.fixture(scope="session")
def sib200_dir() -> Path:
    return shared_data.sib200_dir()


@pytest.fixture(scope="session")
def vllm_server(relxfer_cache, tmp_path_factory):
    """One real vLLM server (tiny model, float32, LoRA at run time) for the session; its
    environment is built on first use (tests/servers/vllm_env.py)."""
    from tests.servers.vllm_server import start_test_server

    server = start_test_server(relxfer_cache, tmp_path_factory.mktemp("vllm-server"))
    yield server
    server.stop()
