"""The built-in tiny model builds to the same bytes in any directory and in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relxfer.models.tiny import build_tiny_model
from tests import test_tiny_model
from tests.test_tiny_model import REPO, file_digests

pytestmark = pytest.mark.integration
tiny_dir = test_tiny_model.tiny_dir  # the session cache's build (a fixture)


def test_build_is_deterministic_across_directories_and_processes(tmp_path, tiny_dir):
    first = build_tiny_model(tmp_path / "a")
    second = build_tiny_model(tmp_path / "b")
    assert first.name == second.name == tiny_dir.name
    digests = file_digests(first)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(digests)
    assert file_digests(second) == digests
    # A fresh interpreter (other hash seeds for the tokenizer trainer's maps) builds the same bytes.
    code = "import sys; from pathlib import Path; from relxfer.models.tiny import build_tiny_model; build_tiny_model(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], check=True, cwd=REPO, capture_output=True)
    assert file_digests(tmp_path / "c" / "builtin" / first.name) == digests
    # Other seed, other weights and another directory.
    other = build_tiny_model(tmp_path / "a", seed=1)
    assert other != first and file_digests(other)["model.safetensors"] != digests["model.safetensors"]
