"""The local transformers backend: one process, the model on the CPU or on the GPUs of one machine.

Tokenization follows lm-evaluation-harness 0.4.x (`TemplateLM._encode_pair` and HFLM's
`tok_encode` for causal models), so log-probabilities are comparable with lm-eval's numbers.

Scoring computes logits only where they are needed: the model's forward takes
`logits_to_keep=k` and applies the output projection to the last k positions only (any
model-specific logit post-processing such as soft-capping still applies). With left padding
those are the last k columns of every row. For a 150k-262k vocabulary this is most of the cost
of a forward pass otherwise.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ModelError
from ..models.loading import load_causal_lm

# Auto batch size: at most this many (padded) tokens per forward pass, this many rows, and this
# many logits (rows x kept positions x vocabulary) in memory at once.
DEFAULT_MAX_BATCH_TOKENS = 8192
DEFAULT_MAX_BATCH_SIZE = 64
MAX_LOGITS_PER_BATCH = 64 * 1024 * 1024  # 256 MiB of float32


# ---------------------------------------------------------------------------------------------
# Tokenization, lm-evaluation-harness style (also used by the fine-tuning code)


def default_add_bos_token(model) -> bool:
    """lm-eval's HFLM encodes without special tokens for causal models, except for Gemma models,
    which it encodes with their BOS token (they degrade badly without it)."""
    model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
    return "gemma" in model_type


def tok_encode(tokenizer, text: str, add_bos_token: bool) -> list[int]:
    """HFLM.tok_encode for a causal model: `add_special_tokens=False or add_bos_token`."""
    return list(tokenizer.encode(text, add_special_tokens=bool(add_bos_token)))


def prefix_token_id(tokenizer) -> int:
    """The token lm-eval scores an empty context after: BOS, or EOS when there is none."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str, add_bos_token: bool) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) as lm-eval's `loglikelihood` builds them: trailing spaces
    of the context move onto the continuation; the whole string is encoded and cut at the length
    of the encoded context (so context_ids + continuation_ids == encode(context + continuation));
    an empty context becomes the prefix token."""
    if context == "":
        return [prefix_token_id(tokenizer)], tok_encode(tokenizer, continuation, add_bos_token)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation, add_bos_token)
    context_ids = tok_encode(tokenizer, context, add_bos_token)
    return context_ids, whole[len(context_ids) :]


# ---------------------------------------------------------------------------------------------
# Batched scoring


@dataclass
class _Request:
    """One forward pass: log-softmax at the last `len(targets)` positions of `input_ids`, where
    position j is scored on the token ids `targets[j]` (one id per scored continuation)."""

    index: int  # the prompt it belongs to
    label: int | None  # the one continuation it scores, or None for all of them at once
    input_ids: list[int]
    targets: list[list[int]]


def _requests(prompts, continuations) -> list[_Request]:
    requests = []
    for i, (prompt, conts) in enumerate(zip(prompts, continuations)):
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError(f"prompt {i} is empty (use the BOS token as an empty context)")
        for j, cont in enumerate(conts):
            if len(cont) == 0:
                # lm-eval would silently score it 0.0, i.e. make it the most likely option.
                raise ValueError(
                    f"continuation {j} of prompt {i} is empty (it merged into the prompt's last token; "
                    "start the continuation with a separator such as a space)"
                )
        if all(len(c) == 1 for c in conts):
            # One pass: the next-token distribution after the prompt scores every label.
            requests.append(_Request(i, None, prompt, [[int(c[0]) for c in conts]]))
        else:
            # Full continuation scoring: prompt + continuation[:-1] predicts each continuation token.
            for j, cont in enumerate(conts):
                cont = [int(t) for t in cont]
                requests.append(_Request(i, j, prompt + cont[:-1], [[t] for t in cont]))
    return requests


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids of left-padded rows. Position ids count real
    tokens only, so a padded row gets the same rotary positions as the row alone."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


class LocalBackend:
    """`relxfer.backends.base.Backend` over a transformers causal LM (optionally 4-bit, optionally
    with a LoRA adapter)."""

    def __init__(
        self,
        model,
        tokenizer,
        name: str = "local",
        add_bos_token: bool | None = None,  # None = lm-eval's HFLM rule (BOS only for Gemma)
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.add_bos_token = default_add_bos_token(model) if add_bos_token is None else add_bos_token
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = model.get_input_embeddings().weight.device
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters

    @classmethod
    def load(cls, model: dict, quantization: dict | None, cache_dir: Path, adapter_dir: Path | None = None, **kwargs):
        """Load a spec's model entry (see `relxfer.models.loading.load_causal_lm`)."""
        lm, tokenizer = load_causal_lm(model, quantization, Path(cache_dir), adapter_dir)
        return cls(lm, tokenizer, name=model.get("name", str(model["source"])), **kwargs)

    # -- tokenization -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return tok_encode(self.tokenizer, text, self.add_bos_token)

    def split_continuation(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return encode_pair(self.tokenizer, context, continuation, self.add_bos_token)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def chat(self, text: str) -> str:
        """`text` as one user turn of the tokenizer's chat template, ending where the assistant's
        reply begins (lm-eval's `apply_chat_template`). A BOS the template writes is dropped when
        `encode` adds one itself, so the ids hold one BOS either way (lm-eval's has_bos_prefix)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelError(f"model {self.name!r} has no chat template; set prompt.chat_template to false")
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        bos = self.tokenizer.bos_token
        if self.add_bos_token and bos and rendered.startswith(bos):
            rendered = rendered[len(bos) :]
        return rendered

    # -- scoring ------------------------------------------------------------------------------

    def label_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Sum of token log-probabilities of each continuation after each prompt, float64, shape
        [n_prompts, n_continuations]. A prompt whose continuations are all single tokens takes one
        forward pass (the next-token distribution scores them all); otherwise every continuation
        takes one pass over prompt + continuation. Requests run longest first, left-padded, in
        batches of `batch_size` rows, or of an automatic size within `max_batch_tokens`."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
        n_labels = {len(c) for c in continuations}
        if len(n_labels) > 1:
            raise ValueError(f"every prompt needs the same number of continuations, got {sorted(n_labels)}")
        out = np.zeros((len(prompts), n_labels.pop() if n_labels else 0), dtype=np.float64)
        requests = _requests(prompts, continuations)
        # Longest first: similar lengths share a batch, and memory trouble shows up at once.
        requests.sort(key=lambda r: (-len(r.input_ids), r.index))
        with torch.inference_mode(), tqdm(total=len(requests), desc="scoring", disable=not progress) as bar:
            for batch in self._batches(requests, batch_size, extra_tokens=0):
                for request, scores in zip(batch, self._score_batch(batch)):
                    if request.label is None:
                        out[request.index, :] = scores
                    else:
                        out[request.index, request.label] = scores[0]
                bar.update(len(batch))
        return out

    def _batches(self, requests: list, batch_size: int | None, extra_tokens: int):
        """Consecutive slices of `requests` (sorted longest first): `batch_size` rows each, or as
        many rows as fit the token and logits budgets."""
        i = 0
        while i < len(requests):
            if batch_size is not None:
                n = max(1, int(batch_size))
            else:
                width = len(requests[i].input_ids) + extra_tokens  # the longest row of the batch
                kept = max(len(r.targets) for r in requests[i : i + self.max_batch_size])  # logits per row
                n = min(
                    self.max_batch_size,
                    self.max_batch_tokens // max(1, width),
                    MAX_LOGITS_PER_BATCH // max(1, kept * self.vocab_size),
                )
                n = max(1, n)
            yield requests[i : i + n]
            i += n

    def _score_batch(self, batch: list[_Request]) -> list[np.ndarray]:
        ids, mask, positions = left_pad([r.input_ids for r in batch], self.pad_id, self.device)
        keep = max(len(r.targets) for r in batch)
        kwargs = {"logits_to_keep": keep} if self._keeps_logits else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **kwargs).logits
        logprobs = torch.log_softmax(logits[:, -keep:, :].float(), dim=-1)
        results = []
        for row, request in enumerate(batch):
            k = len(request.targets)
            targets = torch.tensor(request.targets, dtype=torch.long, device=logprobs.device)  # [k, m]
            picked = logprobs[row, keep - k :, :].gather(-1, targets)  # [k, m]
            results.append(picked.double().sum(0).cpu().numpy())
        return results

    def label_logprobs_bruteforce(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> np.ndarray:
        """The reference for `label_logprobs`: one unbatched pass per prompt and continuation over
        prompt + continuation, full logits, full-vocabulary log-softmax, summed over the
        continuation. Slow; for tests."""
        out = np.zeros((len(prompts), len(continuations[0]) if continuations else 0), dtype=np.float64)
        with torch.inference_mode():
            for i, (prompt, conts) in enumerate(zip(prompts, continuations)):
                for j, cont in enumerate(conts):
                    ids = torch.tensor([list(prompt) + list(cont)], dtype=torch.long, device=self.device)
                    logprobs = torch.log_softmax(self.model(input_ids=ids, use_cache=False).logits[0].float(), -1)
                    n = len(prompt)
                    out[i, j] = sum(float(logprobs[n - 1 + t, tok]) for t, tok in enumerate(cont))
        return out

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Greedy continuation of each prompt (left-padded batches), decoded without special
        tokens and cut before the first occurrence of any stop string. Generation of a row ends at
        EOS, at a stop string or after `max_new_tokens` tokens."""
        stop = [s for s in stop if s]
        config = copy.deepcopy(self.model.generation_config)
        # Greedy decoding whatever sampling defaults the checkpoint ships with.
        config.update(do_sample=False, temperature=None, top_p=None, top_k=None, num_beams=1)
        config.update(max_new_tokens=int(max_new_tokens), pad_token_id=self.pad_id)
        if stop:
            config.update(stop_strings=list(stop))

        # A generation step keeps the logits of one position per row, like a one-target request.
        requests = [_Request(i, None, [int(t) for t in p], [[0]]) for i, p in enumerate(prompts)]
        requests.sort(key=lambda r: (-len(r.input_ids), r.index))
        out = [""] * len(requests)
        with torch.inference_mode(), tqdm(total=len(requests), desc="generating", disable=not progress) as bar:
            for batch in self._batches(requests, batch_size, extra_tokens=int(max_new_tokens)):
                ids, mask, _ = left_pad([r.input_ids for r in batch], self.pad_id, self.device)
                generated = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=config,
                    tokenizer=self.tokenizer if stop else None,
                )
                for request, row in zip(batch, generated[:, ids.shape[1] :].tolist()):
                    out[request.index] = cut_at_stop(self.decode(row), stop)
                bar.update(len(batch))
        return out


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        at = text.find(s)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]
