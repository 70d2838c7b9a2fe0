"""Bad input that needs a network port: a tracking server nobody listens on is one line, exit
code 2, and runs nothing (the rest of the catalogue: test_bad_input.py)."""

from __future__ import annotations

import pytest

from tests.conftest import free_port
from tests.test_bad_input import REPO, run_cli

pytestmark = pytest.mark.integration


def test_unreachable_tracking_server(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    message = run_cli(tmp_path, ["run", str(REPO / "specs" / "smoke.json"), "--tracking-uri", uri])
    assert message.startswith(f"cannot reach the MLflow tracking server at {uri}: ")
