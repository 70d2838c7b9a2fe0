"""The Tinker contract tests (tests/tinker_contract) against the SDK the hosted service speaks,
tinker 0.38.0, in its own environment without torch (tests/tinker_contract/env.py; CI builds it
in the background). The same files also run here, against the 0.16.1 this environment pins.

They run in a pytest of that environment with relxfer from this source tree; the suite's first
test checks that it got 0.38.0, and nothing may be skipped there."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import REPO
from tests.tinker_contract.env import SDK_VERSION, contract_python

pytestmark = pytest.mark.integration


def test_contract_suite_passes_against_the_hosted_services_sdk():
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RELXFER_EXPECT_TINKER": SDK_VERSION,
        "TINKER_API_KEY": "",  # the suite sets what each test needs
    }
    argv = [str(contract_python()), "-m", "pytest", "tests/tinker_contract", "-p", "no:cacheprovider", "-q"]
    # --noconftest: tests/conftest.py serves the main environment (MLflow servers, the tiny model).
    argv += ["--noconftest", "-rs"]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    print(f"tinker {SDK_VERSION}: {summary}")
    assert re.fullmatch(r"\d+ passed in [\d.]+s", summary), summary  # no skips, no failures
