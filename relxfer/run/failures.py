"""Why a cell failed, in words a user can act on: out of memory (on the CPU or a GPU, with the
size asked and what to lower), a file missing, a server gone; anything else as its first line.
The full traceback goes with the failed run (relxfer.tracking), never to the screen unless asked.
"""

from __future__ import annotations

import errno
import re
import traceback

# torch: "DefaultCPUAllocator: can't allocate memory: you tried to allocate 512000000000 bytes."
_CPU_OOM = re.compile(r"(?:DefaultCPUAllocator: can't allocate memory|Cannot allocate memory)", re.I)
_CPU_ASKED = re.compile(r"tried to allocate (\d+) bytes", re.I)
# torch: "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of ..."
_GPU_OOM = re.compile(r"(?:CUDA|HIP|XPU|MPS) (?:backend )?out of memory|OutOfMemoryError", re.I)
_GPU_ASKED = re.compile(r"Tried to allocate ([\d.]+ [KMGT]i?B)", re.I)

LOWER = {
    "finetune": "lower finetune.training.batch_size or max_seq_len, or finetune.lora.r (or use method 'qlora')",
    "evaluate": "lower evaluation.batch_size (or cot.max_new_tokens for CoT conditions)",
}


def error_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _chain(e: BaseException):
    """`e` and the errors it was raised from (a loading error wraps the allocator's)."""
    seen: set[int] = set()
    error: BaseException | None = e
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _gigabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:,.1f} GB"


def out_of_memory(e: BaseException, kind: str) -> str | None:
    """'out of memory on the CPU (asked for 512.0 GB at once): lower ...', or None."""
    fix = LOWER.get(kind, LOWER["evaluate"])
    for error in _chain(e):
        text = str(error)
        if type(error).__name__ == "OutOfMemoryError" or _GPU_OOM.search(text):
            asked = _GPU_ASKED.search(text)
            size = f" (asked for {asked.group(1)} at once)" if asked else ""
            return f"out of memory on the GPU{size}: {fix}"
        if isinstance(error, MemoryError) or _CPU_OOM.search(text):
            asked = _CPU_ASKED.search(text)
            size = f" (asked for {_gigabytes(int(asked.group(1)))} at once)" if asked else ""
            return f"out of memory on the CPU{size}: {fix}"
    return None


def describe(e: BaseException, kind: str = "evaluate") -> str:
    """One line that says why a `kind` ("finetune" or "evaluate") cell failed."""
    oom = out_of_memory(e, kind)
    if oom:
        return oom
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(e, OSError) and e.errno == errno.ENOENT:
        return f"file missing: {e.filename or error_line(e)}"
    from relxfer.errors import RelxferError

    if isinstance(e, RelxferError):  # relxfer's own errors already say what went wrong
        return error_line(e)
    return f"{type(e).__name__}: {error_line(e)}"


def traceback_text(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))
