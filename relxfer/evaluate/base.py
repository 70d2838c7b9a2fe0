"""The interfaces of evaluation: a Backend speaks token ids (so evaluation code stays free of
transformers-specific calls), and an EvaluationEngine hands out backends for one model, with or
without a fine-tuned adapter, owning whatever they run on (weights in this process, a server)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from relxfer.data.prompts import ChatSettings
from relxfer.models.chat_format import ChatFormat


class Backend(Protocol):
    name: str

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as a prompt (with BOS when the model expects one)."""

    def split_continuation(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context_ids, continuation_ids) the lm-evaluation-harness way: encode the whole
        string, then cut it at the length of the encoded context."""

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens left out."""

    def chat_format(self, settings: ChatSettings) -> ChatFormat:
        """The model's chat template with `settings`: renders the prompts, the end of an answer
        and the family's reasoning markers (for a model whose prompt format is a chat template)."""

    def label_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Sum of log-probabilities of each continuation after each prompt, shape
        [n_prompts, n_continuations]. One forward pass per prompt when every continuation is a
        single token; full continuation scoring otherwise."""

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Greedy continuation text of each prompt, cut at the first stop string."""

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[tuple[list[int], bool]]:
        """Greedy continuation ids of each prompt, special tokens kept, up to (not including)
        the first EOS, and whether the row stopped at EOS (False: it used `max_new_tokens`)."""


@dataclass(frozen=True)
class Adapter:
    """A fine-tuned LoRA adapter as evaluation receives it."""

    key: str  # the fine-tune cell's key: a stable name (e.g. for a server's LoRA registry)
    path: Path  # a local directory in peft format, downloaded from the fine-tune's MLflow run
    run_id: str  # the fine-tune's run


class EvaluationEngine(Protocol):
    """Built by `relxfer.spec.engines.evaluation_engine(context)` from the model's
    `engines.evaluate` entry; nothing starts until the first `backend` call, so a model whose
    cells are all finished costs nothing. The runner closes it when the model's cells are done
    (also on errors and Ctrl-C)."""

    kind: str

    def check(self) -> None:
        """Fail (RelxferError, one line) before any run exists when the engine cannot work:
        a missing key, binary or server. Must not start anything expensive."""

    def backend(self, adapter: Adapter | None) -> Backend:
        """A backend for the base model (None) or the base model with `adapter`."""

    def run_tags(self) -> dict[str, str]:
        """What can change an evaluation's numbers (engine kind, version, dtype, scoring
        mode), as tags for each evaluation run (keys without the `relxfer.` prefix). Read after
        the cell's evaluation: a server engine learns its scoring mode from a probe on the
        first real prompts it scores."""

    def log_files(self) -> dict[str, Path]:
        """Files worth keeping with the study (e.g. a server's log): artifact path -> file."""

    def close(self) -> None:
        """Release what the engine holds (weights, a server process). Idempotent."""
