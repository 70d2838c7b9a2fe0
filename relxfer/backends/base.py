"""The interface every model backend implements. It speaks token ids, so evaluation code stays
free of transformers-specific calls and a remote serving engine (vLLM/SGLang with prompt
log-probs) can implement the same methods later."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class Backend(Protocol):
    name: str

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as a prompt (with BOS when the model expects one)."""

    def split_continuation(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context_ids, continuation_ids) the lm-evaluation-harness way: encode the whole
        string, then cut it at the length of the encoded context."""

    def chat(self, text: str) -> str:
        """`text` as one user turn of the model's chat template, ending where the assistant's
        reply begins (for `prompt.chat_template`)."""

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
