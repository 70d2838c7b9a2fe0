"""The real `datasets` library offline, in a process of its own: loading Belebele from the hub
fails with one line that says how to fix it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_belebele import LOCAL_HINT

pytestmark = pytest.mark.integration


def test_real_datasets_offline_gives_a_clear_error(tmp_path):
    """The real `datasets` library in offline mode, in a fresh process (offline settings are read
    at import time) with an empty cache, so nothing is served from a previous download."""
    pytest.importorskip("datasets", reason='the `test` extra: pip install -e ".[test]"')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    script = (
        "from relxfer.data.belebele import load_belebele\n"
        "from relxfer.errors import DataError\n"
        "try:\n    load_belebele(['arb_Arab'])\n"
        "except DataError as error:\n    print(error)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert "\n" not in message
    assert message.startswith("could not load facebook/belebele config 'arb_Arab' from the Hugging Face hub (")
    assert message.endswith(f"; check the network and HF_HUB_OFFLINE, or point the data source at {LOCAL_HINT}")
