"""Write a model directory into the cache exactly once, atomically.

The files go to a temporary directory next to the final one and are renamed into place, so a
crash never leaves a half-written cache entry and two processes building at once both end up
with one complete directory (the loser of the rename race uses the winner's)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(final: Path, write: Callable[[Path], None], complete_marker: str = "config.json") -> Path:
    """`final`, after `write(tmp_dir)` filled a temporary directory that is then renamed to it;
    nothing is written when `final/complete_marker` already exists."""
    final = Path(final)
    if (final / complete_marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / complete_marker).is_file():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' per-load progress bars (the library never prints)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
