"""Cell claims: two `relxfer run` processes on the same spec never run the same cell twice.

A claim is an exclusive `flock` on `<cache_dir>/claims/<cell_key>.lock`. The kernel releases it
when the holder exits, however it exits (SIGKILL included), so a crashed run never leaves a
stale claim behind. Claims therefore coordinate processes that share a cache directory: on
one machine, or on a shared file system with working `flock` (NFSv4, Lustre). Processes on
machines with separate caches are not coordinated; give them different specs or seeds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class CellClaims:
    def __init__(self, cache_dir: Path):
        self.directory = cache_dir / "claims"
        self.directory.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def claim(self, key: str, wait: bool) -> Iterator[bool]:
        """Yield True while holding the claim on `key`; False (at once) when another process
        holds it and `wait` is False. With `wait`, block until it is free."""
        fd = os.open(self.directory / f"{key}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
