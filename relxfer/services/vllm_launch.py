"""A vLLM server process that relxfer starts for one model and stops again.

`python -m vllm.entrypoints.openai.api_server` (the module: the `vllm` console script does not
exist in every distribution of vLLM), an argv list and never a shell, bound to 127.0.0.1. Its
output goes to a log file (the runner keeps it as an artifact). Startup waits for `/health`
within a bound and shows the last log lines when the server does not come up.

One thread per server waits for its process (the only caller of `wait` while it runs, since
concurrent `poll` calls can answer "running" for a dead process): `alive()` and `exited()` read
what it saw, so a request that fails because the server died can be told so at once.

No orphaned server: the server runs in its own process group, stopped (SIGTERM, then SIGKILL)
on `stop()`, at interpreter exit and on SIGTERM to relxfer (Ctrl-C reaches the runner as
KeyboardInterrupt, which closes the engine); on Linux the kernel also sends it SIGTERM when the
relxfer process dies without cleaning up (kill -9).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from relxfer.errors import RelxferError
from relxfer.spec.types import VllmLaunch

# LoRA ranks vLLM accepts for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
PYTHON_ENV = "RELXFER_VLLM_PYTHON"
STOP_GRACE_S = 30


class LaunchError(RelxferError):
    pass


def vllm_python() -> str:
    """The interpreter that runs vLLM: $RELXFER_VLLM_PYTHON, else this one."""
    return os.environ.get(PYTHON_ENV) or sys.executable


def lora_rank_limit(requested: int | None, finetune_rank: int | None) -> int | None:
    """--max-lora-rank: the requested one, else the smallest rank vLLM allows that holds the
    fine-tune's; None when there is no fine-tune."""
    if requested is not None:
        return int(requested)
    if finetune_rank is None:
        return None
    return next((r for r in VLLM_LORA_RANKS if r >= finetune_rank), int(finetune_rank))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_argv(
    python: str,
    model_dir: str,
    served_name: str,
    port: int,
    launch: VllmLaunch,
    lora_rank: int | None,
    trust_remote_code: bool,
) -> list[str]:
    """The command line, flag by flag from the spec's `launch` settings."""
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tensor-parallel-size",
        str(launch.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(launch.pipeline_parallel_size),
        "--dtype",
        launch.dtype,
        "--gpu-memory-utilization",
        str(launch.gpu_memory_utilization),
    ]
    if launch.max_model_len:
        argv += ["--max-model-len", str(launch.max_model_len)]
    if lora_rank is not None:
        argv += ["--enable-lora", "--max-lora-rank", str(lora_rank), "--max-loras", str(launch.max_loras)]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    extra = list(launch.extra_args)
    for reserved in ("--trust-remote-code", "--host", "--port", "--api-key"):
        if any(a == reserved or a.startswith(reserved + "=") for a in extra):
            raise LaunchError(
                f"launch.extra_args: {reserved} is set by relxfer (trust_remote_code comes from the model entry)"
            )
    return argv + extra


class VllmServer:
    """One server process. `start()` returns once it answers /health; `stop()` is idempotent."""

    _live: set[VllmServer] = set()
    _handlers_installed = False

    def __init__(self, argv: list[str], port: int, log_file: Path, startup_timeout_s: float, env: dict | None = None):
        self.argv = argv
        self.port = port
        self.log_file = Path(log_file)
        self.startup_timeout_s = float(startup_timeout_s)
        self.env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in_s: float | None = None
        self.exit_code: int | None = None  # set by the watch when the process has exited
        self._exited = threading.Event()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, report=lambda _: None) -> VllmServer:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        _install_handlers()
        begin = time.monotonic()
        with self.log_file.open("ab") as log:
            log.write(("$ " + " ".join(self.argv) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.exit_code = None
        self._exited = threading.Event()
        threading.Thread(
            target=self._watch, args=(self.process, self._exited), name=f"vllm-watch-{self.port}", daemon=True
        ).start()
        VllmServer._live.add(self)
        report(f"vLLM server starting on {self.root_url} (pid {self.process.pid}, log {self.log_file})")
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - begin
        report(f"vLLM server ready on {self.root_url} after {self.started_in_s:.0f} s")
        return self

    def _watch(self, process: subprocess.Popen, exited: threading.Event) -> None:
        code = process.wait()
        if exited is self._exited:  # not a server started since
            self.exit_code = code
        exited.set()

    def exited(self, timeout: float = 0.0) -> int | None:
        """The server's exit code once it has exited (waiting up to `timeout` s for it), else None."""
        if self.process is None and not self._exited.is_set():
            return None
        return self.exit_code if self._exited.wait(timeout) else None

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self.exited()
            if code is not None:
                raise LaunchError(
                    f"vLLM server exited with code {code} while starting; last log lines: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.root_url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"vLLM server not healthy after {self.startup_timeout_s:g} s (launch.startup_timeout_s); "
                    f"last log lines: {self.log_tail()}"
                )
            time.sleep(1.0)

    def log_tail(self, lines: int = 8) -> str:
        """The log's last non-empty lines joined with ' | ' (one line for an error message)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = [" ".join(line.split()) for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(line[:240] for line in tail) or "(empty log)"

    def alive(self) -> bool:
        return self.process is not None and not self._exited.is_set()

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after a grace period; waits for it."""
        process, self.process = self.process, None
        VllmServer._live.discard(self)
        if process is None:
            return
        try:
            if not self._exited.is_set():
                _signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            # vLLM's engine processes share the group: make sure none outlives the server.
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=STOP_GRACE_S)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def stop_all() -> None:
    for server in list(VllmServer._live):
        server.stop()


def _install_handlers() -> None:
    """Stop live servers at exit and on SIGTERM (then behave as SIGTERM would have)."""
    if VllmServer._handlers_installed:
        return
    VllmServer._handlers_installed = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        stop_all()
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
