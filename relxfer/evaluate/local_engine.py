"""The `local` evaluation engine: transformers in this process, one model in memory at a time."""

from __future__ import annotations

from pathlib import Path

from relxfer.evaluate.base import Adapter
from relxfer.spec.engines import EngineContext
from relxfer.spec.types import LocalEvaluateEngine


class LocalEngine:
    kind = "local"

    def __init__(self, config: LocalEvaluateEngine, context: EngineContext):
        self.context = context
        self._loaded: tuple[str | None, object] | None = None  # (adapter key, backend)

    def backend(self, adapter: Adapter | None):
        from relxfer.evaluate.local_backend import LocalBackend

        key = adapter.key if adapter else None
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # drop the previous weights before loading the next ones
            backend = LocalBackend.load(
                self.context.model,
                self.context.spec.eval_quantization,
                self.context.cache_dir,
                adapter_dir=adapter.path if adapter else None,
            )
            self._loaded = (key, backend)
        return self._loaded[1]

    def check(self) -> None:
        pass  # the model source is checked by the runner's preflight for every engine

    def run_tags(self) -> dict[str, str]:
        return {"engine": self.kind, "dtype": self.context.model.dtype}

    def log_files(self) -> dict[str, Path]:
        return {}

    def close(self) -> None:
        self._loaded = None
