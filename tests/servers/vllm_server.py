"""A real vLLM server for tests: the tiny built-in model saved to a directory, served on
127.0.0.1 by `python -m vllm.entrypoints.openai.api_server` from the environment vllm_env.py
builds, in float32 (vLLM's CPU default, bfloat16, would differ from transformers by 1e-2), eager
mode, LoRA enabled and loadable at run time. Process handling is relxfer's own `VllmServer`
(process group, bounded health wait, stop)."""

from __future__ import annotations

import os
from pathlib import Path

from relxfer.models.tiny import build_tiny_model
from relxfer.services.vllm_launch import VllmServer, free_port
from tests.servers.vllm_env import vllm_python

SERVED_NAME = "tiny"
MAX_MODEL_LEN = 2048  # real Belebele passages run to ~1,600 tokens in the tiny byte-level tokenizer
MAX_LORA_RANK = 8
# vLLM on the CPU: a small KV cache (GiB) keeps two servers within a shared 2-core machine's memory.
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
# The `launch` settings of a spec whose server relxfer starts on this machine's CPU.
CPU_LAUNCH = {
    "dtype": "float32",
    "max_model_len": MAX_MODEL_LEN,
    "extra_args": ["--enforce-eager"],
    "startup_timeout_s": 600,
}


def launch_env() -> dict[str, str]:
    """Environment for a relxfer process that launches vLLM itself (`launch` engines)."""
    return {**os.environ, **SERVER_ENV, "RELXFER_VLLM_PYTHON": str(vllm_python())}


def start_test_server(
    cache_dir: Path, log_dir: Path, lora_rank: int | None = MAX_LORA_RANK, model_dir: Path | None = None
) -> VllmServer:
    """A server for `model_dir` (the tiny built-in model by default) under the name SERVED_NAME."""
    model_dir = model_dir or build_tiny_model(cache_dir)
    port = free_port()
    argv = [
        str(vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED_NAME,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if lora_rank:
        argv += ["--enable-lora", "--max-lora-rank", str(lora_rank)]
    server = VllmServer(argv, port, Path(log_dir) / "vllm.log", startup_timeout_s=600, env=SERVER_ENV)
    return server.start()


def session_processes(leader: int) -> list[int]:
    """Pids in the session `leader` started (vLLM renames its engine processes, so they are
    found by session id, not by command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == leader and fields[0] != "Z":  # fields[3]: the session id
            found.append(int(entry.name))
    return found
