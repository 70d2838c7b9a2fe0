"""No orphaned server: the process handling of relxfer's vLLM launcher (`VllmServer`) when the
relxfer process gets SIGTERM, Ctrl-C (SIGINT) or SIGKILL. The server here is a small real HTTP
server that answers /health and, like vLLM, runs a child process of its own; vLLM itself is
exercised in test_vllm_launch.py (a launched server killed mid-cell, `mlflow run` stopping it).
A server that dies with requests in flight is told at once, with its exit code, to every one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from relxfer.services.openai_client import OpenAIClient, ServerError
from relxfer.services.vllm_launch import LaunchError, VllmServer, free_port
from tests.servers.vllm_server import session_processes

pytestmark = pytest.mark.integration

SERVER = textwrap.dedent("""
    import http.server, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like vLLM's engine process
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
""")

RELXFER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from relxfer.services.vllm_launch import VllmServer, free_port
    port = free_port()
    server = VllmServer([sys.executable, "-c", sys.argv[1], str(port)], port, Path(sys.argv[2]), 60).start()
    print(server.process.pid, flush=True)
    time.sleep(600)
""")


def wait_gone(pids, timeout=20.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [
            p
            for p in pids
            if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split(")")[-1][:3]
        ]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def kernel_states(pid: int) -> str:
    """What the kernel says each thread of `pid` is doing (state and wait channel): why a process
    does not go is read there, not in Python."""
    states = []
    for task in sorted(os.listdir(f"/proc/{pid}/task")) if os.path.isdir(f"/proc/{pid}/task") else []:
        try:
            stat = open(f"/proc/{pid}/task/{task}/stat").read().split(")")[-1].split()[0]
            wchan = open(f"/proc/{pid}/task/{task}/wchan").read() or "-"
        except OSError:
            continue
        states.append(f"{task}:{stat}/{wchan}")
    return ", ".join(states) or "no /proc entry"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_server_does_not_outlive_relxfer(sig, tmp_path):
    relxfer = subprocess.Popen(
        [sys.executable, "-c", RELXFER, SERVER, str(tmp_path / "server.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control (CI run as a background job) starts its children with
        # SIGINT ignored, and they inherit that: give relxfer the default a user's terminal gives.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    server_pid = int(relxfer.stdout.readline())
    deadline = time.time() + 20
    while len(session_processes(server_pid)) < 2 and time.time() < deadline:  # the server and its child
        time.sleep(0.1)
    group = session_processes(server_pid)
    assert len(group) == 2
    relxfer.send_signal(sig)
    try:
        relxfer.wait(timeout=60)
    except subprocess.TimeoutExpired:
        states = kernel_states(relxfer.pid)
        for pid in [relxfer.pid, *group]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"{signal.Signals(sig).name}: relxfer still there after 60 s: {states}")
    # SIGKILL leaves relxfer no say: the kernel sends the server SIGTERM (PR_SET_PDEATHSIG), and
    # vLLM's engine processes follow their parent; this small server's child does not.
    expected_gone = [server_pid] if sig == signal.SIGKILL else group
    left = wait_gone(expected_gone)
    for pid in session_processes(server_pid):
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"{signal.Signals(sig).name}: still running {left}"


def test_a_server_that_exits_while_starting_shows_its_last_log_lines(tmp_path):
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        "import sys; print('loading weights'); print('CUDA out of memory', file=sys.stderr); sys.exit(3)",
    ]
    with pytest.raises(LaunchError) as error:
        VllmServer(argv, port, tmp_path / "vllm.log", startup_timeout_s=60).start()
    message = str(error.value)
    assert message.startswith("vLLM server exited with code 3 while starting; last log lines: ")
    assert "loading weights | CUDA out of memory" in message and "\n" not in message


def test_a_server_that_never_becomes_healthy_is_stopped_after_the_timeout(tmp_path):
    port = free_port()
    server = VllmServer(
        [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(600)"],
        port,
        tmp_path / "vllm.log",
        startup_timeout_s=3,
    )
    with pytest.raises(
        LaunchError, match=r"not healthy after 3 s \(launch.startup_timeout_s\); last log lines: .*still loading"
    ):
        server.start()
    assert server.process is None


SLOW_SERVER = textwrap.dedent("""
    import http.server, sys, time
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # /health
            self.send_response(200)
            self.end_headers()
        def do_POST(self):  # a request that is still in flight when the server dies
            time.sleep(600)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
""")


def test_requests_in_flight_when_the_server_dies_learn_its_exit_code_at_once(tmp_path):
    """Sixteen requests in flight, the server SIGKILLed: every one of them stops retrying once the
    process watch has seen the exit (well before the client's 7.5 s of retries) and reads the
    exit code, all at the same time from their own threads."""
    port = free_port()
    server = VllmServer([sys.executable, "-c", SLOW_SERVER, str(port)], port, tmp_path / "server.log", 60).start()
    client = OpenAIClient(server.root_url + "/v1", max_retries=4, give_up=lambda: not server.alive())
    failures: list[tuple[float, int | None]] = []

    def post() -> None:
        try:
            client.post("/completions", {"prompt": "x"})
        except ServerError as e:
            assert e.status is None
            failures.append((time.monotonic(), server.exited()))

    threads = [threading.Thread(target=post) for _ in range(16)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # every request has reached the server
        killed = time.monotonic()
        os.kill(server.process.pid, signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=30)
    finally:
        server.stop()
    assert [code for _, code in failures] == [-signal.SIGKILL] * 16
    assert max(at for at, _ in failures) - killed < 3.0
    assert not server.alive() and server.exited() == -signal.SIGKILL
