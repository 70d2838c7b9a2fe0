"""The local transformers backend: one process, the model on the CPU or on the GPUs of one machine.

Tokenization follows lm-evaluation-harness 0.4.x (tokenization.py, shared with the model-server
backend), so log-probabilities are comparable with lm-eval's numbers.

Scoring runs right-padded batches without a padding mask: with causal attention a real
position never sees the pads after it, and without a mask PyTorch's SDPA takes its causal
kernel (a padding mask made long prompts 1.3-2.7x slower on the CPU). Prompts that share a long
prefix share a row and run it once, under a tree mask (packing.py). Logits are computed only
where they are needed: a pre-hook on the output embeddings hands the output projection each
row's scored positions only (any model-specific logit post-processing such as soft-capping
still applies). For a 150k-262k vocabulary this is most of the cost of a forward pass otherwise.
Generation left-pads with a mask, as `generate` expects.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from relxfer.errors import ModelError
from relxfer.evaluate.packing import (
    Request,
    Row,
    build_requests,
    plan_batches,
    shared_prefix_rows,
)
from relxfer.models.loading import load_causal_lm
from relxfer.models.padding import left_pad, right_pad
from relxfer.models.tokenization import (
    TokenizerMethods,
    cut_at_stop,
    default_add_bos_token,
)
from relxfer.spec.types import ModelSpec, Quantization

# Auto batch size: at most this many (padded) tokens per forward pass, this many rows, and this
# many logits (rows x kept positions x vocabulary) in memory at once.
DEFAULT_MAX_BATCH_TOKENS = 8192
DEFAULT_MAX_BATCH_SIZE = 64
MAX_LOGITS_PER_BATCH = 64 * 1024 * 1024  # 256 MiB of float32
# The fixed price of one forward pass, in tokens' worth of compute, used to choose batches
# (packing.plan_batches). On the CPU a pass streams every weight from memory once, about what
# 30 tokens of arithmetic take on Gemma 3 270M with one thread, plus Python overhead: padding a
# batch further costs more than a new pass beyond that. On a GPU a pass is cheap per token and
# batches buy parallelism: rows and memory alone bound them.
CPU_PASS_OVERHEAD_TOKENS = 64
GPU_PASS_OVERHEAD_TOKENS = 1 << 16
# Prompts sharing at least this many leading token ids run them once (see packing.py).
DEFAULT_MIN_SHARED_PREFIX = 32


# ---------------------------------------------------------------------------------------------
# Batched scoring


class LocalBackend(TokenizerMethods):
    """`relxfer.evaluate.base.Backend` over a transformers causal LM (optionally 4-bit, optionally
    with a LoRA adapter)."""

    def __init__(
        self,
        model,
        tokenizer,
        name: str = "local",
        add_bos_token: bool | None = None,  # None = the tokenizer's own default (lm-eval 0.4.13)
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        min_shared_prefix: int | None = DEFAULT_MIN_SHARED_PREFIX,  # None: never share a prefix
        pass_overhead_tokens: int | None = None,  # None: by device (see CPU_PASS_OVERHEAD_TOKENS)
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.add_bos_token = default_add_bos_token() if add_bos_token is None else bool(add_bos_token)
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.min_shared_prefix = min_shared_prefix
        self._last_context: tuple[str, list[int]] | None = None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = model.get_input_embeddings().weight.device
        if pass_overhead_tokens is None:
            pass_overhead_tokens = CPU_PASS_OVERHEAD_TOKENS if self.device.type == "cpu" else GPU_PASS_OVERHEAD_TOKENS
        self.pass_overhead_tokens = int(pass_overhead_tokens)
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        forward_params = inspect.signature(base.forward).parameters
        self._keeps_logits = "logits_to_keep" in forward_params

    @classmethod
    def load(
        cls,
        model: ModelSpec,
        quantization: Quantization | None,
        cache_dir: Path,
        adapter_dir: Path | None = None,
        **kwargs,
    ):
        """Load a spec's model entry (see `relxfer.models.loading.load_causal_lm`)."""
        lm, tokenizer = load_causal_lm(model, quantization, Path(cache_dir), adapter_dir)
        return cls(lm, tokenizer, name=model.name, **kwargs)

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
        position of one forward pass (the next-token distribution scores them all); otherwise
        every continuation is scored over prompt + continuation.

        Sequences sharing at least `min_shared_prefix` leading token ids (Belebele: the
        questions of one passage; the continuations of one prompt) share a row: the prefix runs
        once (see packing.py). Rows run longest first, right-padded without a padding mask
        (causal attention: a real position never sees the pads after it), in batches chosen to
        minimise padding plus a fixed price per pass, of at most `batch_size` rows or, without
        it, as many as fit the token and logits budgets."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
        n_labels = {len(c) for c in continuations}
        if len(n_labels) > 1:
            raise ValueError(f"every prompt needs the same number of continuations, got {sorted(n_labels)}")
        out = np.zeros((len(prompts), n_labels.pop() if n_labels else 0), dtype=np.float64)
        requests = build_requests(prompts, continuations)
        # Rows that may take the tree mask, and rows that must keep the model's own masks.
        limit, min_shared = self._shareable_length(), self.min_shared_prefix
        if limit is None or min_shared is None:
            pools = [[Row.single(r) for r in requests]]
        else:
            pools = [
                shared_prefix_rows([r for r in requests if len(r.input_ids) < limit], min_shared),
                [Row.single(r) for r in requests if len(r.input_ids) >= limit],
            ]

        with torch.inference_mode(), tqdm(total=len(requests), desc="scoring", disable=not progress) as bar:
            for rows in pools:
                # Longest first: similar lengths share a batch, and memory trouble shows up at once.
                rows.sort(key=lambda row: (-len(row), min(m.index for m in row.members)))
                for batch in plan_batches(
                    rows, lambda width, kept: self._rows_for(width, kept, batch_size), self.pass_overhead_tokens
                ):
                    for request, scores in zip((m for row in batch for m in row.members), self._score_rows(batch)):
                        if request.label is None:
                            out[request.index, :] = scores
                        else:
                            out[request.index, request.label] = scores[0]
                    bar.update(sum(len(row.members) for row in batch))
        return out

    def _rows_for(self, width: int, kept: int, batch_size: int | None) -> int:
        if batch_size is not None:
            return max(1, int(batch_size))
        n = min(
            self.max_batch_size,
            self.max_batch_tokens // max(1, width),
            MAX_LOGITS_PER_BATCH // max(1, kept * self.vocab_size),
        )
        return max(1, n)

    def _batches(self, requests: list, batch_size: int | None, extra_tokens: int):
        """Consecutive slices of `requests` (sorted longest first): `batch_size` rows each, or as
        many rows as fit the token and logits budgets."""
        i = 0
        while i < len(requests):
            width = len(requests[i].input_ids) + extra_tokens  # the longest row of the batch
            kept = max(len(r.targets) for r in requests[i : i + self.max_batch_size])  # logits per row
            n = self._rows_for(width, kept, batch_size)
            yield requests[i : i + n]
            i += n

    def _shareable_length(self) -> int | None:
        """Sequences shorter than this (in tokens) may share a row under the tree mask; None when
        sharing is off or unsupported. The mask is passed as a 4-D tensor, which SDPA and eager
        attention take as it is. The tree mask attends like full attention, so sliding-window
        layers (Gemma 3, Mistral) allow it only below the window; longer sequences keep the
        model's own masks."""
        if self.min_shared_prefix is None:
            return None
        config = getattr(self.model, "config", None)
        if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
            return None
        layer_types = getattr(config, "layer_types", None) or []
        window = getattr(config, "sliding_window", None)
        sliding = any(t != "full_attention" for t in layer_types) or (
            window and getattr(config, "use_sliding_window", True)
        )
        if not sliding:
            return sys.maxsize
        return int(window) if window else None

    def _forward_gathered(self, ids: torch.Tensor, positions: torch.Tensor, **kwargs):
        """The model's forward with the output projection applied only at `positions` ([rows, k]:
        row i's logits at positions[i, j]); model-specific logit post-processing still applies.
        Returns logits [rows, k, vocab]."""
        head = self.model.get_output_embeddings()
        rows = torch.arange(positions.shape[0], device=positions.device)[:, None]
        called = []

        def gather(module, args):
            called.append(True)
            return (args[0][rows, positions],) + tuple(args[1:])

        hook = head.register_forward_pre_hook(gather)
        try:
            extra = {"logits_to_keep": 0} if self._keeps_logits else {}
            output = self.model(input_ids=ids, **extra, **kwargs)
        finally:
            hook.remove()
        if len(called) != 1 or output.logits.shape[:2] != positions.shape:
            raise ModelError(f"model {self.name!r}: cannot select logit positions through its output embeddings")
        return output.logits

    def _score_rows(self, batch: list[Row]) -> list[np.ndarray]:
        """One forward pass over `batch`; per member of each row in order, its targets' summed
        log-probs. Rows with shared prefixes run under the tree mask (packing.py), with position
        ids restarting after the prefix; a batch of single sequences runs on the model's own
        causal mask (faster attention kernels)."""
        ids = right_pad([row.tokens() for row in batch], self.pad_id, self.device)
        scored = [row.scored() for row in batch]
        keep = max(len(p) for p in scored)
        # A row with fewer scored positions repeats its first one (those columns are ignored).
        positions = torch.tensor([p + p[:1] * (keep - len(p)) for p in scored], dtype=torch.long, device=self.device)
        kwargs = {}
        if any(row.packed for row in batch):
            kwargs = self._tree_attention(
                [row.segments() for row in batch], [row.positions() for row in batch], ids.shape[1]
            )
        logprobs = torch.log_softmax(self._forward_gathered(ids, positions, use_cache=False, **kwargs).float(), dim=-1)
        sums = []
        for r, row in enumerate(batch):
            column = 0
            for member in row.members:
                k = len(member.targets)
                targets = torch.tensor(member.targets, dtype=torch.long, device=logprobs.device)  # [k, m]
                sums.append(logprobs[r, column : column + k].gather(-1, targets).double().sum(0))
                column += k
        # One device-to-host copy for the batch, not one per member.
        flat = torch.cat(sums).cpu().numpy()
        return np.split(flat, np.cumsum([len(x) for x in sums])[:-1])

    def _tree_attention(self, segments: list[list[int]], positions: list[list[int]], width: int) -> dict:
        """The model kwargs for packed rows: a 4-D attention mask (transformers passes a 4-D mask
        through unchanged) where a token sees the earlier tokens of the shared prefix and of its
        own segment, and position ids. Pads (segment -1, after every real token) see the prefix
        and the pads: never attended to by a real token, they only need a finite softmax."""
        seg = torch.tensor([s + [-1] * (width - len(s)) for s in segments], dtype=torch.long, device=self.device)
        pos = torch.tensor([p + list(range(len(p), width)) for p in positions], dtype=torch.long, device=self.device)
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        allowed = causal & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))  # [rows, query, key]
        mask = allowed[:, None]
        if self.model.config._attn_implementation == "eager":  # eager attention adds the mask to the scores
            dtype = self.model.get_input_embeddings().weight.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill(~mask, torch.finfo(dtype).min)
        return {"attention_mask": mask, "position_ids": pos}

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
        rows = self._greedy(prompts, max_new_tokens, stop, batch_size, progress)
        return [cut_at_stop(self.decode(row), stop) for row in rows]

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[tuple[list[int], bool]]:
        """Greedy continuation ids of each prompt, up to the first EOS (special tokens kept), and
        whether the row ended at EOS."""
        rows = self._greedy(prompts, max_new_tokens, [], batch_size, progress)
        ends = self._eos_ids()
        out = []
        for row in rows:
            at = next((i for i, t in enumerate(row) if t in ends), None)
            out.append((row, False) if at is None else (row[:at], True))
        return out

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {self.tokenizer.eos_token_id}
        return {int(i) for i in ids if i is not None}

    def _greedy(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Sequence[str],
        batch_size: int | None,
        progress: bool,
    ) -> list[list[int]]:
        """The generated ids of each prompt (padding after EOS included)."""
        config = copy.deepcopy(self.model.generation_config)
        # Greedy decoding whatever sampling defaults the checkpoint ships with. The sampling
        # settings get transformers' neutral values, not None: generate() fills a None back in
        # from the checkpoint's defaults and then warns that greedy decoding ignores them.
        config.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, num_beams=1)
        config.update(max_new_tokens=int(max_new_tokens), pad_token_id=self.pad_id)
        if stop:
            config.update(stop_strings=list(stop))

        # A generation step keeps the logits of one position per row, like a one-target request.
        requests = [Request(i, None, [int(t) for t in p], [[0]]) for i, p in enumerate(prompts)]
        requests.sort(key=lambda r: (-len(r.input_ids), r.index))
        out: list[list[int]] = [[] for _ in requests]
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
                    out[request.index] = row
                bar.update(len(batch))
        return out
