"""A real SkyRL tx server (a Tinker-compatible LoRA training and sampling service on JAX) on
127.0.0.1, serving one of the project's built-in models, for the Tinker engine's tests.

SkyRL tx serves one base model from a Hugging Face directory. It supports Llama, Qwen3 and
DeepSeek-V3 architectures: the tiny model (a `LlamaForCausalLM`) and the Qwen3 twin qualify, but
they are saved by transformers 5 and the server runs transformers 4.57 (its pin), which reads two
files differently. `served_model` copies the directory and makes the smallest change that lets
the server read the same model: `config.json` gains `rope_theta` (transformers 4's spelling of
the `rope_parameters.rope_theta` that transformers 5 writes; SkyRL reads the attribute from a
bare PretrainedConfig, so the architecture's default does not apply), and
`tokenizer_config.json` names `PreTrainedTokenizerFast` (transformers 5 writes
`TokenizersBackend`, unknown to 4.x) with its extra special tokens under 4.x's key. SkyRL
computes in the config's `dtype`: a twin stores bfloat16 weights, so its copy names the dtype the
spec loads it in (float32), as a server would be started for that spec. Weights and tokenizer
files are byte-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path


def served_model(model_dir: Path, dest: Path, dtype: str | None = None) -> Path:
    """A copy of a built model directory that SkyRL tx 0.3.0 (transformers 4.57) loads, computing
    in `dtype` where given (else in the dtype the weights are stored in)."""
    if (dest / "config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    config = json.loads((tmp / "config.json").read_text())
    config["rope_theta"] = config.get("rope_parameters", {}).get("rope_theta", 10000.0)
    if dtype is not None:
        config["dtype"] = dtype
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok = json.loads((tmp / "tokenizer_config.json").read_text())
    if tok.get("tokenizer_class") == "TokenizersBackend":
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(tok.get("extra_special_tokens"), list):
        tok["additional_special_tokens"] = tok.pop("extra_special_tokens")
    tok.pop("backend", None)
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok, indent=2) + "\n")
    os.rename(tmp, dest)
    return dest


class SkyRLServer:
    """`python -m tx.tinker.api` from the SkyRL tx environment, bound to 127.0.0.1, with its
    database and checkpoints under `root`. The API server starts the engine as a child process
    (through the environment's `uv` shim); both run in their own process group, which `stop`
    ends."""

    def __init__(self, python: Path, model_dir: Path, root: Path, port: int, max_lora_rank: int = 8, **backend_options):
        """`backend_options`: more of SkyRL tx's JAX backend settings (`sample_max_num_sequences`
        bounds a sampling batch, and with it the full-vocabulary logits it holds)."""
        self.python = Path(python)
        self.backend_options = backend_options
        self.model_dir = Path(model_dir)
        self.root = Path(root)
        self.port = port
        self.max_lora_rank = max_lora_rank
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = self.root / "skyrl-tx.log"
        self.process: subprocess.Popen | None = None

    @property
    def base_model(self) -> str:
        """The name the server knows its model by (the directory it was started with)."""
        return str(self.model_dir)

    def start(self, timeout: float = 300) -> SkyRLServer:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PATH": f"{self.python.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the `uv` shim
            "JAX_PLATFORMS": "cpu",
            "TX_DATABASE_URL": f"sqlite:///{self.root / 'tinker.db'}",
        }
        env.pop("PYTHONPATH", None)  # relxfer's source tree is none of the server's business
        backend_config = {"max_lora_adapters": 4, "max_lora_rank": self.max_lora_rank, **self.backend_options}
        argv = [
            str(self.python),
            "-m",
            "tx.tinker.api",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-model",
            self.base_model,
            "--checkpoints-base",
            str(self.root / "checkpoints"),
            "--database-url",
            f"sqlite:///{self.root / 'tinker.db'}",
            "--backend-config",
            json.dumps(backend_config),
        ]
        log = open(self.log_path, "ab")
        from tests.conftest import die_with_parent

        self.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SkyRL tx exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/api/v1/healthz", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SkyRL tx did not become healthy in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:  # the engine child too, whatever the API server managed
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None
