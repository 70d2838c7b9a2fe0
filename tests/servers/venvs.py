"""Virtual environments for the servers tests start (a real vLLM, ...), built by the repository
itself so that a fresh machine works, and cached between runs.

An environment lives in `~/.cache/relxfer-test-envs/<name>-<hash>/` (the root is
`$RELXFER_TEST_ENVS` when set), where the hash covers everything that decides its contents (the
requirements, what is uninstalled afterwards, the Python version). It is built under an
exclusive `flock` on `<dir>.lock`, so a second builder (another pytest worker, CI's background
pre-build) waits and then finds it finished; a build counts only once its marker file exists,
so an interrupted build is wiped and redone by the next builder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = ".relxfer-complete"


def envs_root() -> Path:
    return Path(os.environ.get("RELXFER_TEST_ENVS", Path.home() / ".cache" / "relxfer-test-envs")).expanduser()


def base_python() -> str:
    """The interpreter the environment is made from: this one's base (a venv of a venv works
    too, but the base keeps the environment independent of the caller's venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


UV_VERSION = "0.13.9"


@dataclass(frozen=True)
class VenvSpec:
    name: str
    requirements: tuple[str, ...]  # what the installer gets, in one resolver run
    uninstall: tuple[str, ...] = ()  # removed afterwards (e.g. a CUDA torchvision that breaks imports)
    check: str = ""  # Python that must run in the environment before it counts as built
    # "pip", or "uv" (run from its own cached environment, never inside this one): several times
    # faster on a large set (SkyRL tx: about 45 s where pip took 6 to 9 minutes).
    installer: str = "pip"
    files: tuple[tuple[str, str], ...] = ()  # (path inside the environment, text): executables written after install

    @property
    def key(self) -> str:
        blob = json.dumps(
            {
                "requirements": self.requirements,
                "uninstall": self.uninstall,
                "check": self.check,
                "python": list(sys.version_info[:3]),
                "installer": self.installer,
                "uv": UV_VERSION if self.installer == "uv" else None,
                "files": self.files,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def directory(self) -> Path:
        return envs_root() / f"{self.name}-{self.key}"

    @property
    def python(self) -> Path:
        return self.directory / "bin" / "python"

    def is_built(self) -> bool:
        return (self.directory / MARKER).is_file()


def ensure_venv(spec: VenvSpec, log=print) -> Path:
    """The environment's Python, building the environment first unless a finished one exists.
    Safe to call from several processes at once: all but one wait on the lock."""
    if spec.is_built():
        return spec.python
    root = envs_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{spec.directory.name}.lock", "w") as lock:
        if not spec.is_built():
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"waiting for another process building {spec.directory} ...")
                fcntl.flock(lock, fcntl.LOCK_EX)
        if not spec.is_built():
            _build(spec, log)
    return spec.python


UV_ENV = VenvSpec(name="uv", requirements=(f"uv=={UV_VERSION}",))


def _uv_environment() -> dict:
    """uv reads no pip configuration: hand it pip's wheel directories (where the pinned CPU torch
    lies on these machines). pip's extra file:// indexes are left out: uv searched them for every
    package, which made the install 5x slower, and PyPI has everything else."""
    env = dict(os.environ)
    try:
        config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    except OSError:
        config = ""
    for line in config.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith(".find-links") and value:
            env.setdefault("UV_FIND_LINKS", value.replace(" ", ","))
    return env


def _run(argv: list[str], log_file: Path, env: dict | None = None) -> None:
    argv = [str(a) for a in argv]
    with log_file.open("ab") as out:
        out.write(("\n$ " + " ".join(argv) + "\n").encode())
        out.flush()
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`{' '.join(argv)}` failed with exit code {code}; last lines of {log_file}:\n{tail}")


def _build(spec: VenvSpec, log) -> None:
    target = spec.directory
    shutil.rmtree(target, ignore_errors=True)  # a build that died half-way
    start = time.time()
    log(f"building {target} ({' '.join(spec.requirements)}); a few minutes, once per machine ...")
    log_file = target.parent / f"{target.name}.build.log"
    log_file.write_text("")
    _run([base_python(), "-m", "venv", str(target)], log_file)
    python = str(spec.python)
    if spec.installer == "uv":
        uv = ensure_venv(UV_ENV, log).parent / "uv"
        _run([uv, "pip", "install", "--python", python, *spec.requirements], log_file, env=_uv_environment())
    else:
        _run([python, "-m", "pip", "install", "--no-input", *spec.requirements], log_file)
    if spec.uninstall:
        _run([python, "-m", "pip", "uninstall", "-y", *spec.uninstall], log_file)
    for relative, text in spec.files:
        path = target / relative
        path.write_text(text)
        path.chmod(0o755)
    if spec.check:
        _run([python, "-c", spec.check], log_file)
    (target / MARKER).write_text(json.dumps({"requirements": spec.requirements, "seconds": round(time.time() - start)}))
    log(f"built {target} in {time.time() - start:.0f} s")
