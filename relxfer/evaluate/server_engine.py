"""The `vllm` and `openai` evaluation engines: a model served over an OpenAI-compatible API,
either launched by relxfer for this model's cells (`vllm` with `launch`) or already running
(`base_url`).

The server starts on the first backend (nothing starts when every cell is finished). The base
model is requested by its served name; a fine-tuned adapter is loaded into the server at run
time (`/v1/load_lora_adapter`, which a launched server allows through
VLLM_ALLOW_RUNTIME_LORA_UPDATING) and requested by its own name, after its rank has been
checked against the server's LoRA limit. The server reads the adapter from its own file system:
a remote server needs the directory at the same path (a shared file system).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from pathlib import Path

from relxfer.errors import RelxferError
from relxfer.evaluate.base import Adapter
from relxfer.evaluate.scoring_modes import SCORING_MODES
from relxfer.evaluate.server_backend import ScoringState, ServerBackend
from relxfer.provenance import VERSIONS
from relxfer.services.openai_client import OpenAIClient, ServerError, one_line
from relxfer.services.vllm_launch import (
    LaunchError,
    VllmServer,
    free_port,
    lora_rank_limit,
    server_argv,
    vllm_python,
)
from relxfer.spec.engines import EngineContext
from relxfer.spec.types import OpenaiEvaluateEngine, VllmEvaluateEngine, VllmLaunch

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# After a request could not connect: how long to wait for the watch to see relxfer's own server
# exit (the socket closes a moment before the process is reaped).
DEATH_WAIT_S = 10.0


class EngineError(RelxferError):
    pass


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def probe_tolerance(dtype: str | None) -> float:
    """How far two exact scoring paths of one server may differ: float32 computes both to ~1e-5;
    16-bit formats differ between batch shapes by up to a few hundredths."""
    return 1e-3 if dtype == "float32" else 0.25


class ServerEngine:
    def __init__(self, config: VllmEvaluateEngine | OpenaiEvaluateEngine, context: EngineContext):
        self.kind = config.kind.value
        self.config = config
        self.context = context
        self.model = context.model
        self.launch = config.launch
        self.dtype = (self.launch.dtype if self.launch else None) or config.dtype or "unknown"
        allowed = SCORING_MODES if config.scoring == "auto" else (config.scoring,)
        self.scoring = ScoringState(
            allowed=tuple(allowed),
            tolerance=probe_tolerance(self.dtype),
            serial_continuations=bool(config.requests.serial_prompt_logprobs),
        )
        self.server: VllmServer | None = None
        self.client: OpenAIClient | None = None
        self.served_model = ""  # the base model's name on the server, once started
        self.version = "unknown"
        self.tokenizer = None
        self.adapters: dict[str, str] = {}  # adapter key -> served name
        self._log_file: Path | None = None

    # -- protocol -----------------------------------------------------------------------------

    def check(self) -> None:
        """Cheap checks before any run exists: the key's variable, the LoRA rank against the
        limit, vLLM importable for a launch, a running server answering."""
        name = self.config.api_key_env
        if name and not os.environ.get(name):
            raise EngineError(
                f"model {self.model.name!r}: environment variable {name} (engines.evaluate.api_key_env) is not set"
            )
        rank = self._finetune_rank()
        limit = self._lora_limit()
        if rank is not None and limit is not None and rank > limit:
            raise EngineError(
                f"model {self.model.name!r}: LoRA rank {rank} (finetune.lora.r) is above the server's "
                f"max_lora_rank {limit}; raise max_lora_rank or lower the rank"
            )
        if self.launch:
            self._check_vllm_installed()
        else:
            self._client().get("/models", timeout=15, retries=1)

    def backend(self, adapter: Adapter | None) -> ServerBackend:
        if self.server is not None and not self.server.alive():
            # It died during an earlier cell (that cell failed saying so): the next cells get a new one.
            self.context.report(f"{self._death(self.server.exited())}; starting a new one")
            self.server.stop()
            self.server, self.client = None, None
            self.adapters.clear()
        self._start()
        served = self.served_model if adapter is None else self._load_adapter(adapter)
        return ServerBackend(
            self._connected(), self.tokenizer, served, self.model.name, self.scoring, explain=self._explain
        )

    def run_tags(self) -> dict[str, str]:
        tags = {
            "engine": self.kind,
            "server_version": self.version,
            "dtype": str(self.dtype),
            "scoring_mode": self.scoring.plan.tag if self.scoring.plan else "not probed",
        }
        if self.scoring.plan is not None and self.scoring.plan.label_ids_fallback:
            tags["scoring_fallback"] = self.scoring.plan.label_ids_fallback  # why not one request a question
        if self.launch:
            tags["tensor_parallel_size"] = str(self.launch.tensor_parallel_size)
        if self.kind == "vllm":  # an `openai` server may be any server: its version stays server_version
            tags[VERSIONS + "vllm"] = self.version
        return tags

    def log_files(self) -> dict[str, Path]:
        if self._log_file is not None and self._log_file.is_file():
            return {f"servers/{self.model.name}": self._log_file}
        return {}

    def close(self) -> None:
        if self.server is None and self.client is not None:
            for served in self.adapters.values():  # leave a shared server as we found it
                try:
                    self.client.post("/unload_lora_adapter", {"lora_name": served}, retries=0, timeout=30)
                except RelxferError:
                    pass
        self.adapters.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.client = None

    # -- starting -----------------------------------------------------------------------------

    def _client(self, base_url: str | None = None, give_up=lambda: False) -> OpenAIClient:
        requests = self.config.requests
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        url = base_url or self.config.base_url
        assert url is not None  # the schema requires base_url where nothing is launched
        return OpenAIClient(
            url,
            key,
            timeout=requests.timeout_s,
            max_retries=requests.max_retries,
            max_in_flight=requests.max_in_flight,
            give_up=give_up,
        )

    def _start(self) -> None:
        if self.client is not None:
            return
        from relxfer.models.loading import load_tokenizer, resolve_source

        self.tokenizer = load_tokenizer(self.model, self.context.cache_dir)
        if self.launch:
            self._launch(self.launch, resolve_source(self.model, self.context.cache_dir))
        else:
            self.client = self._client()
        try:
            self.served_model = self._served_model()
            version = self._get("/version", root=True)
        except ServerError as e:
            raise self._explain(e) from None
        self.version = str(version.get("version", "unknown")) if isinstance(version, dict) else "unknown"

    def _launch(self, launch: VllmLaunch, model_dir: str) -> None:
        port = launch.port or free_port()
        name = self.config.served_model_name or self.model.name
        lora = lora_rank_limit(launch.max_lora_rank, self._finetune_rank()) if self._needs_lora() else None
        argv = server_argv(vllm_python(), model_dir, name, port, launch, lora, self.model.trust_remote_code)
        log_file = self.context.cache_dir / "servers" / f"{self.model.name}-{port}.log"
        if log_file != self._log_file:  # a server started again on the same port keeps the dead one's log
            log_file.unlink(missing_ok=True)
        self._log_file = log_file
        serial = self.config.requests.serial_prompt_logprobs
        self.scoring.serial_continuations = (lora is not None and not _has_cuda()) if serial is None else serial
        self.server = VllmServer(argv, port, self._log_file, launch.startup_timeout_s)
        self.server.start(self.context.report)
        server = self.server
        self.client = self._client(server.root_url + "/v1", give_up=lambda: not server.alive())

    def _connected(self) -> OpenAIClient:
        """The client of the started server (`_start` makes it)."""
        if self.client is None:
            raise EngineError(f"model {self.model.name!r}: its model server has not been started")
        return self.client

    def _get(self, path: str, root: bool = False) -> dict | str | None:
        """An optional endpoint (e.g. /version): None when the server answers with an error."""
        try:
            return self._connected().get(path, root=root, retries=0, timeout=30)
        except ServerError as e:
            if e.status is None:
                raise
            return None

    def _served_model(self) -> str:
        listed = self._connected().get("/models")
        # LoRA adapters are listed too, with their base model as `parent` (vLLM).
        ids = [m.get("id") for m in listed.get("data", []) if not m.get("parent")] if isinstance(listed, dict) else []
        wanted = self.config.served_model_name or (self.model.name if self.launch else None)
        if wanted:
            if ids and wanted not in ids:
                raise EngineError(
                    f"model server {self._connected().base_url} does not serve {wanted!r} (it lists {', '.join(ids)}); "
                    f"set engines.evaluate.served_model_name"
                )
            return wanted
        if len(ids) != 1:
            raise EngineError(
                f"model server {self._connected().base_url} lists {len(ids)} models ({', '.join(map(str, ids))}); "
                f"name one in engines.evaluate.served_model_name"
            )
        return ids[0]

    def _check_vllm_installed(self) -> None:
        python = vllm_python()
        try:
            found = (
                subprocess.run(
                    [python, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                    capture_output=True,
                    timeout=60,
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            found = False
        if not found:
            raise EngineError(
                f"model {self.model.name!r} is evaluated on a vLLM server relxfer launches, but {python} "
                f"cannot import vllm: pip install vllm there, or set RELXFER_VLLM_PYTHON to a Python that has it"
            )

    # -- adapters -----------------------------------------------------------------------------

    def _needs_lora(self) -> bool:
        return self.context.spec.finetune is not None and self.context.spec.needs_finetune

    def _finetune_rank(self) -> int | None:
        finetune = self.context.spec.finetune
        return finetune.lora.r if finetune is not None and self._needs_lora() else None

    def _lora_limit(self) -> int | None:
        if self.launch:
            return lora_rank_limit(self.launch.max_lora_rank, self._finetune_rank())
        return self.config.max_lora_rank

    def _load_adapter(self, adapter: Adapter) -> str:
        if adapter.key in self.adapters:
            return self.adapters[adapter.key]
        config_file = Path(adapter.path) / "adapter_config.json"
        try:
            rank = int(json.loads(config_file.read_text())["r"])
        except (OSError, ValueError, KeyError) as e:
            raise EngineError(
                f"adapter {adapter.path}: cannot read its LoRA rank from adapter_config.json ({e})"
            ) from None
        limit = self._lora_limit()
        if limit is not None and rank > limit:
            raise EngineError(f"adapter {adapter.path} has LoRA rank {rank}, above the server's max_lora_rank {limit}")
        served = f"relxfer-{adapter.key}"
        path = str(Path(adapter.path).resolve())
        try:
            self._connected().post("/load_lora_adapter", {"lora_name": served, "lora_path": path}, retries=1)
        except ServerError as e:
            if e.status is None:
                raise self._explain(e) from None
            if "already been loaded" not in e.body:
                raise self._adapter_error(e, path) from None
        self.adapters[adapter.key] = served
        return served

    def _adapter_error(self, error: ServerError, path: str) -> RelxferError:
        host = urllib.parse.urlparse(self._connected().base_url).hostname or ""
        remote = (
            ""
            if host in LOOPBACK
            else (
                f" The server at {host} reads adapters from its own file system: {path} must exist there at the same path "
                f"(a shared directory); relxfer cannot upload it."
            )
        )
        if error.status == 404:
            return EngineError(
                f"{self._connected().base_url} cannot load LoRA adapters at run time (404 on /v1/load_lora_adapter): "
                f"start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.{remote}"
            )
        return EngineError(
            f"{self._connected().base_url} could not load the adapter {path}: {one_line(error.body or str(error), 240)}.{remote}"
        )

    def _explain(self, error: ServerError) -> Exception:
        """A request failed: when relxfer's own server has died, say that (its exit code and last
        log lines), whichever noticed first: the request (it could not connect; the watch is given
        a moment to see the exit) or the watch (the client stopped retrying)."""
        if self.server is None or error.status is not None:
            return error
        code = self.server.exited(timeout=DEATH_WAIT_S)
        if code is None:
            return error
        return LaunchError(f"{self._death(code)} during the cell; last log lines: {self.server.log_tail(4)}")

    def _death(self, code: int | None) -> str:
        return f"the vLLM server for model {self.model.name!r} exited (code {code})"
