"""The real Tinker-compatible server the tests train and sample on: SkyRL tx (PyPI `skyrl-tx`
0.3.0, JAX on the CPU) in its own virtual environment, apart from relxfer's.

    python tests/servers/skyrl_env.py      # pre-build (safe next to a running test); prints the Python

What goes in: `skyrl-tx[tinker]` with a CPU JAX (its `jax` extra would pull CUDA wheels), flax
and optax as that extra pins them, `torch==2.13.0` (peft needs torch; a bare `torch` would pull
a multi-GB CUDA build, the pinned one is a CPU wheel on these machines' disk) and `tinker==0.16.1`
(the SDK line SkyRL tx 0.3.0 speaks). It is installed with `uv` (from its own cached
environment): about 45 s where pip took 6 to 9 minutes for the same set.

SkyRL tx's API server starts its engine as `uv run --extra tinker --extra jax -m
tx.tinker.engine ...`, which expects a checkout of its repository; `bin/uv` in the environment is
a shim that runs that module with the environment's own Python instead (the real `uv` is never
on the server's PATH). Cached and locked as every test environment (tests/servers/venvs.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.servers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.servers.venvs import VenvSpec, ensure_venv  # noqa: E402

SKYRL_TX_VERSION = "0.3.0"
SERVER_SDK_VERSION = "0.16.1"  # the tinker SDK line SkyRL tx 0.3.0 accepts (0.38.0: 404 on /client/config)
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
CHECK = (
    "import importlib.metadata as m; [m.version(p) for p in ('skyrl-tx', 'jaxlib', 'flax', 'optax', 'torch', 'tinker')]"
)
SKYRL_ENV = VenvSpec(
    name="skyrl-tx", requirements=REQUIREMENTS, check=CHECK, installer="uv", files=(("bin/uv", UV_SHIM),)
)


def skyrl_python(log=print) -> Path:
    """The Python of the built SkyRL tx environment, building it first when needed."""
    return ensure_venv(SKYRL_ENV, log)


if __name__ == "__main__":
    print(skyrl_python(log=lambda line: print(line, file=sys.stderr, flush=True)))
