"""The real Tinker-compatible server the tests train and sample on: SkyRL tx (PyPI `skyrl-tx`
0.3.0, JAX on the CPU) in its own virtual environment, apart from relxfer's.

    python tests/servers/skyrl_env.py      # pre-build (safe next to a running test); prints the Python

What goes in: `skyrl-tx[tinker]` with a CPU JAX (its `jax` extra would pull CUDA wheels), flax
and optax as that extra pins them, `torch==2.13.0` (peft needs torch; a bare `torch` would pull
a multi-GB CUDA build, the pinned one is a CPU wheel on these machines' disk) and `tinker==0.16.1`
(the SDK line SkyRL tx 0.3.0 speaks). It is installed with `uv` (PyPI `uv`, put into a small
bootstrap environment first): about 45 s where pip took 6 to 9 minutes for the same set.

SkyRL tx's API server starts its engine as `uv run --extra tinker --extra jax -m
tx.tinker.engine ...`, which expects a checkout of its repository; `bin/uv` in the environment is
a shim that runs that module with the environment's own Python instead (`uv` itself lives in the
bootstrap environment, never on the server's PATH).

Cached as `~/.cache/relxfer-test-envs/skyrl-tx-<hash>/` (root `$RELXFER_TEST_ENVS` when set); the
hash covers the requirements, the shim and the Python version. Built under an exclusive `flock`
on `<dir>.lock`, so a second builder waits and then finds it finished; a build counts only once
its marker file exists, so an interrupted one is wiped and redone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SKYRL_TX_VERSION = "0.3.0"
SERVER_SDK_VERSION = "0.16.1"  # the tinker SDK line SkyRL tx 0.3.0 accepts (0.38.0: 404 on /client/config)
UV_VERSION = "0.13.9"
REQUIREMENTS = (
    f"skyrl-tx[tinker]=={SKYRL_TX_VERSION}",
    "jax>=0.8,<1",  # CPU jaxlib; skyrl-tx's own `jax` extra adds jax[cuda12]
    "flax>=0.12.2",
    "optax>=0.2.5",
    "torch==2.13.0",
    f"tinker=={SERVER_SDK_VERSION}",
)
UV_SHIM = """#!/bin/sh
# SkyRL tx starts its engine with `uv run --extra tinker --extra <backend> -m tx.tinker.engine ...`;
# run the module with this environment's Python instead of syncing a project checkout.
while [ $# -gt 0 ]; do
  case "$1" in
    run) shift ;;
    --extra) shift 2 ;;
    *) break ;;
  esac
done
exec "$(dirname "$0")/python" "$@"
"""
# Installed, not imported: importing JAX, torch and transformers takes minutes on a busy 2-core
# machine, and the server's start imports them anyway.
CHECK = "import importlib.metadata as m; [m.version(p) for p in ('skyrl-tx', 'jaxlib', 'flax', 'optax', 'torch', 'tinker')]"
MARKER = ".relxfer-complete"


def envs_root() -> Path:
    return Path(os.environ.get("RELXFER_TEST_ENVS", Path.home() / ".cache" / "relxfer-test-envs")).expanduser()


def env_key() -> str:
    blob = json.dumps({"requirements": REQUIREMENTS, "uv": UV_VERSION, "shim": UV_SHIM, "check": CHECK,
                       "python": list(sys.version_info[:3])}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def env_dir() -> Path:
    return envs_root() / f"skyrl-tx-{env_key()}"


def _base_python() -> str:
    """The interpreter the environment is made from: the base of the caller's venv, so the
    environment does not depend on it."""
    return getattr(sys, "_base_executable", None) or sys.executable


def skyrl_python(log=print) -> Path:
    """The Python of the built SkyRL tx environment, building it first when needed. Safe to call
    from several processes at once: all but one wait on the lock."""
    target = env_dir()
    if (target / MARKER).is_file():
        return target / "bin" / "python"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process building {target} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / MARKER).is_file():
            _build(target, log)
    return target / "bin" / "python"


def _run(argv: list, log_file: Path, env: dict | None = None) -> None:
    with log_file.open("ab") as out:
        out.write(("\n$ " + " ".join(map(str, argv)) + "\n").encode())
        out.flush()
        code = subprocess.call([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`{' '.join(map(str, argv))}` failed with exit code {code}; end of {log_file}:\n{tail}")


def _uv_environment() -> dict:
    """uv reads no pip configuration: hand it pip's wheel directories (where the pinned CPU torch
    lies on these machines). pip's extra file:// indexes are left out: uv searched them for every
    package, which made the install 5x slower, and PyPI has everything else."""
    env = dict(os.environ)
    try:
        config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    except OSError:
        config = ""
    for line in config.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith(".find-links") and value:
            env.setdefault("UV_FIND_LINKS", value.replace(" ", ","))
    return env


def _build(target: Path, log) -> None:
    shutil.rmtree(target, ignore_errors=True)  # a build that died half-way
    start = time.time()
    log(f"building {target} (SkyRL tx {SKYRL_TX_VERSION}, JAX on the CPU); about a minute, once per machine ...")
    log_file = target.parent / f"{target.name}.build.log"
    log_file.write_text("")
    _run([_base_python(), "-m", "venv", target], log_file)
    # uv goes into its own bootstrap environment inside the target: the server never sees it.
    boot = target / "uv-bootstrap"
    _run([_base_python(), "-m", "venv", boot], log_file)
    _run([boot / "bin" / "python", "-m", "pip", "install", "--no-input", "-q", f"uv=={UV_VERSION}"], log_file)
    _run([boot / "bin" / "uv", "pip", "install", "--python", target / "bin" / "python", *REQUIREMENTS],
         log_file, env=_uv_environment())
    shim = target / "bin" / "uv"
    shim.write_text(UV_SHIM)
    shim.chmod(0o755)
    _run([target / "bin" / "python", "-c", CHECK], log_file)
    seconds = round(time.time() - start)
    (target / MARKER).write_text(json.dumps({"requirements": REQUIREMENTS, "seconds": seconds}) + "\n")
    log(f"built {target} in {seconds} s")


if __name__ == "__main__":
    print(skyrl_python(log=lambda line: print(line, file=sys.stderr, flush=True)))
