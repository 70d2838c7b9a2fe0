"""The environment the Tinker contract tests run in: the SDK the hosted service speaks
(`tinker==0.38.0`), pytest, and the few light packages relxfer's SDK-facing modules import
(jsonschema for the spec types, tqdm for progress bars, jinja2 for the chat templates the
backends render). No torch: those modules must not need
it (tests/tinker_contract/test_sdk_contract.py checks that they do not load it).

    python tests/tinker_contract/env.py      # pre-build (CI runs this in the background); prints the Python

relxfer itself is not installed there: the tests run it from the source tree (PYTHONPATH).
Cached and locked as every test environment (tests/servers/venvs.py); about 30 s fresh.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.servers.venvs import VenvSpec, ensure_venv  # noqa: E402

SDK_VERSION = "0.38.0"
CONTRACT_ENV = VenvSpec(
    name="tinker-contract",
    requirements=(f"tinker=={SDK_VERSION}", "pytest>=8", "jsonschema>=4.20", "tqdm>=4.66", "jinja2>=3.1"),
    check="import tinker, jsonschema, tqdm, jinja2, pytest",
    installer="uv",
)


def contract_python(log=print) -> Path:
    """The Python of the built contract environment (building it first when needed)."""
    return ensure_venv(CONTRACT_ENV, log)


if __name__ == "__main__":
    print(contract_python(log=lambda line: print(line, file=sys.stderr, flush=True)))
