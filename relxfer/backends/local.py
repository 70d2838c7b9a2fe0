"""The local transformers backend: one process, the model on the CPU or on the GPUs of one machine.

Tokenization follows lm-evaluation-harness 0.4.x (`TemplateLM._encode_pair` and HFLM's
`tok_encode` for causal models), so log-probabilities are comparable with lm-eval's numbers.

Scoring runs right-padded batches without an attention mask: with causal attention a real
position never sees the pads after it, and without a mask PyTorch's SDPA takes its causal
kernel (a padding mask made long prompts 1.3-2.7x slower on the CPU). Logits are computed only
where they are needed: a pre-hook on the output embeddings hands the output projection each
row's scored positions only (any model-specific logit post-processing such as soft-capping
still applies). For a 150k-262k vocabulary this is most of the cost of a forward pass otherwise.
Generation left-pads with a mask, as `generate` expects.
"""

from __future__ import annotations

import copy
import inspect
import weakref
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
# With `min_shared_prefix` set (off by default: see `_score_shared`), prompts sharing at least
# that many leading token ids run them once through a key/value cache; 32 is a sensible value.


# ---------------------------------------------------------------------------------------------
# Tokenization, lm-evaluation-harness style (also used by the fine-tuning code)


def default_add_bos_token(model=None) -> bool:
    """lm-eval 0.4.13's HFLM default (add_bos_token=None, since lm-eval PR #3347): encode with
    the tokenizer's own default, `add_special_tokens=True`, i.e. with BOS where the tokenizer
    prepends one (Llama, Gemma, the built-in tiny model) and without where it does not (Qwen).
    `add_special_tokens=True` is exactly that default for every tokenizer, so this is True.
    (lm-eval before 0.4.13 added BOS for Gemma models only.) `model` is ignored."""
    return True


def render_chat(tokenizer, text: str, add_bos_token: bool, name: str = "model") -> str:
    """`text` as one user turn of the tokenizer's chat template, ending where the assistant's
    reply begins (lm-eval's `apply_chat_template`). A BOS the template writes is dropped when
    encoding adds one itself, so the ids hold one BOS either way (lm-eval's has_bos_prefix).
    Needs only the tokenizer, so training data can be rendered before a model is loaded."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"model {name!r} has no chat template; set prompt.chat_template to false")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if add_bos_token and bos and rendered.startswith(bos):
        rendered = rendered[len(bos):]
    return rendered


def tok_encode(tokenizer, text: str, add_bos_token: bool) -> list[int]:
    """HFLM.tok_encode for a causal model (lm-eval 0.4.13): `add_special_tokens=add_bos_token`,
    except that a text already starting with the BOS (prefix) token's text never gets a second."""
    add = bool(add_bos_token)
    prefix = _prefix_text(tokenizer)
    if add and prefix is not None and text.startswith(prefix):
        add = False
    return list(tokenizer.encode(text, add_special_tokens=add))


_PREFIX_TEXT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _prefix_text(tokenizer) -> str | None:
    """The prefix token's text (lm-eval's has_bos_prefix test), or None without a BOS and EOS."""
    try:
        return _PREFIX_TEXT[tokenizer]
    except (KeyError, TypeError):
        token = prefix_token_id(tokenizer)
        text = None if token is None else tokenizer.decode([token])
        try:
            _PREFIX_TEXT[tokenizer] = text
        except TypeError:
            pass
        return text


def prefix_token_id(tokenizer) -> int:
    """The token lm-eval scores an empty context after: BOS, or EOS when there is none."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str, add_bos_token: bool, encode_context=None) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) as lm-eval's `loglikelihood` builds them: trailing spaces
    of the context move onto the continuation; the whole string is encoded and cut at the length
    of the encoded context (so context_ids + continuation_ids == encode(context + continuation));
    an empty context becomes the prefix token (the continuation encoded without special tokens;
    when it starts with the prefix token itself, that token is the context)."""
    if context == "":
        continuation_ids = list(tokenizer.encode(continuation, add_special_tokens=False))
        prefix = prefix_token_id(tokenizer)
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation, add_bos_token)
    context_ids = encode_context(context) if encode_context else tok_encode(tokenizer, context, add_bos_token)
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


def right_pad(rows: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """input_ids of right-padded rows (no mask needed when only real positions are read: causal
    attention never lets a real position see the pads after it)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids.to(device)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def _shared_prefix_groups(requests: list[_Request], min_shared: int) -> tuple[list[tuple[int, list[_Request]]], list[_Request]]:
    """(groups, singles): groups of one-pass requests whose token ids share a prefix of at least
    `min_shared` tokens, as (shared length, members), and the requests in no group. The shared
    part always leaves each member at least its last token (whose logits score the labels).
    Found by sorting the ids lexicographically (prompts sharing a prefix are then neighbours);
    a prompt joins the group before it when its common prefix with the group is at least
    `min_shared` tokens and at least half the group's shared length so far."""
    order = sorted(requests, key=lambda r: r.input_ids)
    groups, singles = [], []
    members, shared = [], 0
    for request in order + [None]:
        if request is not None and members:
            common = min(_common_prefix(members[0].input_ids, request.input_ids), shared, len(request.input_ids) - 1)
            if common >= min_shared and 2 * common >= shared:
                members.append(request)
                shared = common
                continue
        if len(members) > 1:
            groups.append((shared, members))
        else:
            singles.extend(members)
        if request is not None:
            members, shared = [request], len(request.input_ids) - 1
    return groups, singles


class LocalBackend:
    """`relxfer.backends.base.Backend` over a transformers causal LM (optionally 4-bit, optionally
    with a LoRA adapter)."""

    def __init__(
        self,
        model,
        tokenizer,
        name: str = "local",
        add_bos_token: bool | None = None,  # None = the tokenizer's own default (lm-eval 0.4.13)
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        min_shared_prefix: int | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.add_bos_token = default_add_bos_token() if add_bos_token is None else bool(add_bos_token)
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.min_shared_prefix = min_shared_prefix  # None: never reuse a shared prefix
        self._last_context: tuple[str, list[int]] | None = None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = model.get_input_embeddings().weight.device
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        forward_params = inspect.signature(base.forward).parameters
        self._keeps_logits = "logits_to_keep" in forward_params
        self._cache_arg = "cache" if "cache" in forward_params else "past_key_values"  # transformers 5.2x renamed it

    @classmethod
    def load(cls, model: dict, quantization: dict | None, cache_dir: Path, adapter_dir: Path | None = None, **kwargs):
        """Load a spec's model entry (see `relxfer.models.loading.load_causal_lm`)."""
        lm, tokenizer = load_causal_lm(model, quantization, Path(cache_dir), adapter_dir)
        return cls(lm, tokenizer, name=model.get("name", str(model["source"])), **kwargs)

    # -- tokenization -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return tok_encode(self.tokenizer, text, self.add_bos_token)

    def split_continuation(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return encode_pair(self.tokenizer, context, continuation, self.add_bos_token, self._encode_context)

    def _encode_context(self, context: str) -> list[int]:
        """`encode`, remembering the last context: callers split one prompt with every label."""
        if self._last_context is None or self._last_context[0] != context:
            self._last_context = (context, self.encode(context))
        return list(self._last_context[1])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def chat(self, text: str) -> str:
        """`text` as one user turn of the tokenizer's chat template (see `render_chat`)."""
        return render_chat(self.tokenizer, text, self.add_bos_token, self.name)

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
        takes one pass over prompt + continuation. Requests run longest first, right-padded
        without an attention mask (causal attention: a real position never sees the pads after
        it), in batches of `batch_size` rows, or of an automatic size within `max_batch_tokens`.

        Prompts that share a long prefix of token ids (Belebele: the questions of one passage)
        run that prefix once: its key/value cache is computed in one pass and each prompt's rest
        attends to it (see `_shared_prefix_groups`). `batch_size` then bounds the rows of each
        pass (prefixes in one, the prompts' rests in the next)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
        n_labels = {len(c) for c in continuations}
        if len(n_labels) > 1:
            raise ValueError(f"every prompt needs the same number of continuations, got {sorted(n_labels)}")
        out = np.zeros((len(prompts), n_labels.pop() if n_labels else 0), dtype=np.float64)
        requests = _requests(prompts, continuations)
        one_pass = [r for r in requests if r.label is None]
        groups, singles = (
            _shared_prefix_groups(one_pass, self.min_shared_prefix) if self._can_share_prefix() else ([], one_pass)
        )
        singles = singles + [r for r in requests if r.label is not None]
        # Longest first: similar lengths share a batch, and memory trouble shows up at once.
        singles.sort(key=lambda r: (-len(r.input_ids), r.index))
        # Similar shared lengths share a chunk (each chunk runs its shortest shared prefix once).
        groups.sort(key=lambda g: (-g[0], g[1][0].index))

        def store(batch, scores):
            for request, row in zip(batch, scores):
                if request.label is None:
                    out[request.index, :] = row
                else:
                    out[request.index, request.label] = row[0]

        with torch.inference_mode(), tqdm(total=len(requests), desc="scoring", disable=not progress) as bar:
            for chunk in self._group_chunks(groups, batch_size):
                members = [r for _, rs in chunk for r in rs]
                store(members, self._score_shared(chunk))
                bar.update(len(members))
            for batch in self._batches(singles, batch_size, extra_tokens=0):
                store(batch, self._score_batch(batch))
                bar.update(len(batch))
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

    def _group_chunks(self, groups: list, batch_size: int | None):
        """Consecutive runs of shared-prefix groups (sorted longest first) with at most a batch of
        member rows in all; a group larger than a batch is cut into batch-sized groups."""
        chunk, rows, limit = [], 0, 0
        for shared, members in groups:
            n = self._rows_for(len(members[0].input_ids), 1, batch_size)
            for start in range(0, len(members), n):
                piece = members[start : start + n]
                if chunk and rows + len(piece) > limit:
                    yield chunk
                    chunk, rows = [], 0
                if not chunk:
                    limit = n
                chunk.append((shared, piece))
                rows += len(piece)
        if chunk:
            yield chunk

    def _can_share_prefix(self) -> bool:
        """Prefix reuse needs a custom attention mask over a key/value cache: supported for SDPA
        and eager attention with full (not sliding-window) attention in every layer."""
        if self.min_shared_prefix is None:
            return False
        config = getattr(self.model, "config", None)
        impl = getattr(config, "_attn_implementation", None)
        if impl not in ("sdpa", "eager"):
            return False
        layer_types = getattr(config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            return False
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            return False
        return True

    def _forward_gathered(self, ids: torch.Tensor, positions: torch.Tensor, **kwargs):
        """The model's forward with the output projection applied only at `positions` ([rows, k]:
        row i's logits at positions[i, j]); model-specific logit post-processing still applies.
        Returns (logits [rows, k, vocab], model output)."""
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
        return output.logits, output

    def _score_rows(self, logits: torch.Tensor, batch: list[_Request]) -> list[np.ndarray]:
        """Per request: summed log-probs of its targets from logits [rows, k, vocab], where row i's
        last len(targets) columns are its scored positions."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        keep = logits.shape[1]
        results = []
        for row, request in enumerate(batch):
            k = len(request.targets)
            targets = torch.tensor(request.targets, dtype=torch.long, device=logprobs.device)  # [k, m]
            picked = logprobs[row, keep - k :, :].gather(-1, targets)  # [k, m]
            results.append(picked.double().sum(0).cpu().numpy())
        return results

    def _score_batch(self, batch: list[_Request]) -> list[np.ndarray]:
        ids = right_pad([r.input_ids for r in batch], self.pad_id, self.device)
        keep = max(len(r.targets) for r in batch)
        # Row i scores its last len(targets) positions; shorter target lists repeat the first one
        # in front (those columns are ignored).
        positions = torch.tensor(
            [[max(len(r.input_ids) - len(r.targets), len(r.input_ids) - keep + j) for j in range(keep)] for r in batch],
            dtype=torch.long,
            device=self.device,
        )
        logits, _ = self._forward_gathered(ids, positions, use_cache=False)
        return self._score_rows(logits, batch)

    def _score_shared(self, chunk: list[tuple[int, list[_Request]]]) -> list[np.ndarray]:
        """Score the one-pass requests of shared-prefix groups. Every group of the chunk runs the
        same number of leading tokens once (the chunk's shortest shared prefix, so no row is
        padded): pass 1 computes their key/value cache, pass 2 runs each member's rest of the
        prompt (right-padded) on its group's cache with plain causal attention.

        Off by default (`min_shared_prefix=None`): on the built-in tiny model on the CPU it is
        not faster (bench/README.md). Pass 2's queries attend to the cache through an explicit
        mask, which PyTorch's CPU SDPA runs without skipping masked blocks, and each chunk pads
        its members' rests to the longest; together these eat the saved prefix tokens."""
        shared = min(n for n, _ in chunk)
        ids = torch.tensor([members[0].input_ids[:shared] for _, members in chunk], dtype=torch.long, device=self.device)
        last = torch.full((len(chunk), 1), shared - 1, dtype=torch.long, device=self.device)
        _, output = self._forward_gathered(ids, last, use_cache=True)
        cache = output.cache if hasattr(output, "cache") else output.past_key_values
        members = [(g, r) for g, (_, rs) in enumerate(chunk) for r in rs]
        cache.batch_select_indices(torch.tensor([g for g, _ in members], dtype=torch.long, device=self.device))
        rests = [r.input_ids[shared:] for _, r in members]
        rest_ids = right_pad(rests, self.pad_id, self.device)
        positions = shared + torch.arange(rest_ids.shape[1], device=self.device)[None, :].expand(rest_ids.shape[0], -1)
        last = torch.tensor([[len(rest) - 1] for rest in rests], dtype=torch.long, device=self.device)
        logits, _ = self._forward_gathered(rest_ids, last, position_ids=positions, use_cache=True, **{self._cache_arg: cache})
        return self._score_rows(logits, [r for _, r in members])

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
