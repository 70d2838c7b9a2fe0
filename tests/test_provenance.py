"""What every run records about the install that made it: relxfer's version and git state (from a
real checkout), package versions from their metadata, and the device, without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import relxfer
from relxfer.provenance import (
    CORE_PACKAGES,
    driver_gpu_models,
    git_state,
    package_versions,
    provenance_tags,
    relxfer_git_state,
    visible_count,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout holding a package `pkg/` and, ignored, a virtual environment with an
    installed copy of it (as when a venv lives inside the project)."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (repo / "README.md").write_text("a project\n")
    (repo / ".gitignore").write_text(".venv/\n__pycache__/\n")
    installed = repo / ".venv" / "lib" / "site-packages" / "pkg"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("VALUE = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def test_a_clean_checkout_gives_its_commit(checkout):
    state = git_state(checkout / "pkg")
    assert state is not None
    assert (state.commit, state.dirty) == (git(checkout, "rev-parse", "HEAD"), False)


def test_changed_or_new_files_in_the_package_make_it_dirty(checkout):
    package = checkout / "pkg"
    (package / "__init__.py").write_text("VALUE = 2\n")
    assert git_state(package).dirty
    git(checkout, "checkout", "--", "pkg/__init__.py")
    assert not git_state(package).dirty
    (package / "new_module.py").write_text("")  # untracked code runs too
    assert git_state(package).dirty


def test_changes_outside_the_package_and_ignored_files_leave_it_clean(checkout):
    (checkout / "README.md").write_text("edited\n")
    (checkout / "pkg" / "__pycache__").mkdir()
    (checkout / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert git_state(checkout / "pkg").dirty is False


def test_a_later_commit_is_seen(checkout):
    first = git_state(checkout / "pkg").commit
    (checkout / "pkg" / "__init__.py").write_text("VALUE = 3\n")
    git(checkout, "commit", "-q", "-am", "second")
    assert git_state(checkout / "pkg").commit == git(checkout, "rev-parse", "HEAD") != first


def test_an_installed_copy_is_not_a_checkout_even_inside_one(checkout, tmp_path):
    assert git_state(checkout / ".venv" / "lib" / "site-packages" / "pkg") is None
    elsewhere = tmp_path / "site-packages" / "pkg"
    elsewhere.mkdir(parents=True)
    assert git_state(elsewhere) is None


def test_a_checkout_without_commits_has_no_commit(tmp_path):
    repo = tmp_path / "empty"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    assert git_state(repo / "pkg") is None


def test_relxfer_looks_at_its_own_location_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a checkout
    expected = git_state(Path(relxfer.__file__).resolve().parent)
    assert relxfer_git_state() == expected
    if (REPO / ".git").exists() and Path(relxfer.__file__).resolve().is_relative_to(REPO):
        assert expected is not None and expected.commit == git(REPO, "rev-parse", "HEAD")


def test_versions_come_from_package_metadata():
    found = package_versions([*CORE_PACKAGES, "no-such-package-relxfer"])
    assert found == {name: metadata.version(name) for name in CORE_PACKAGES}


def test_tags_name_relxfer_its_packages_and_the_device():
    tags = provenance_tags(("scipy",))
    assert tags["version"] == relxfer.__version__
    assert {f"versions.{name}" for name in (*CORE_PACKAGES, "scipy")} <= tags.keys()
    assert tags["versions.scipy"] == metadata.version("scipy")
    import torch

    if torch.cuda.is_available():
        assert tags["device"] == "cuda" and int(tags["device_count"]) == torch.cuda.device_count()
    else:
        assert tags["device"] == "cpu" and "device_count" not in tags


def test_collecting_imports_neither_torch_nor_the_packages_it_names():
    """`relxfer compare` does not load torch: asking for the device must not load it either."""
    code = (
        "import json, sys\n"
        "from relxfer.provenance import provenance_tags\n"
        "tags = provenance_tags(('ray',))\n"
        "print(json.dumps([tags, sorted(m for m in ('torch', 'transformers', 'peft', 'mlflow', 'ray') if m in sys.modules)]))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(relxfer.__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    tags, loaded = json.loads(out)
    assert loaded == []
    assert tags["versions.torch"] == metadata.version("torch") and tags["versions.ray"] == metadata.version("ray")
    assert tags["device"] in ("cpu", "cuda")


def test_gpus_are_read_from_the_driver_files(tmp_path):
    """Without torch, the GPUs come from the NVIDIA driver's /proc files (their format here)."""
    for bus, model in (("0000:18:00.0", "NVIDIA H100 80GB HBM3"), ("0000:2a:00.0", "NVIDIA H100 80GB HBM3")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 42\nGPU UUID: \t GPU-0\nBus Location: \t {bus}\nDevice Minor: \t 0\n"
        )
    assert driver_gpu_models(tmp_path) == ["NVIDIA H100 80GB HBM3"] * 2
    assert driver_gpu_models(tmp_path / "absent") == []
    assert [visible_count(2, v) for v in (None, "0", "1,0", "", "-1", "0,-1,1", "0,1,2,3")] == [2, 1, 2, 0, 0, 1, 2]
