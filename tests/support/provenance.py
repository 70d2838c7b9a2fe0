"""The provenance tags every recorded run carries, checked against what the test process sees
(it runs the same relxfer and packages as the process that recorded the run)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import relxfer
from relxfer.provenance import CORE_PACKAGES, git_state


def assert_provenance(tags: dict[str, str]) -> None:
    import torch

    assert tags["relxfer.version"] == relxfer.__version__
    for package in CORE_PACKAGES:
        assert tags[f"relxfer.versions.{package}"] == metadata.version(package), package
    git = git_state(Path(relxfer.__file__).resolve().parent)
    if git is None:
        assert "relxfer.git_commit" not in tags
    else:
        assert (tags["relxfer.git_commit"], tags["relxfer.git_dirty"]) == (git.commit, str(git.dirty).lower())
    assert tags["relxfer.device"] == ("cuda" if torch.cuda.is_available() else "cpu")
