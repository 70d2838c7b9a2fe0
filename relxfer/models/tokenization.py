"""Tokenization the lm-evaluation-harness way (0.4.x: `TemplateLM._encode_pair` and HFLM's
`tok_encode` for causal models), shared by every backend that builds token-id prompts with the
model's own Hugging Face tokenizer (local transformers, a model server) and by fine-tuning, so
all of them see exactly the same token ids. No torch here.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from relxfer.data.prompts import ChatSettings
from relxfer.models.chat_format import ChatFormat


def default_add_bos_token(model=None) -> bool:
    """lm-eval 0.4.13's HFLM default (add_bos_token=None, since lm-eval PR #3347): encode with
    the tokenizer's own default, `add_special_tokens=True`, i.e. with BOS where the tokenizer
    prepends one (Llama, Gemma, the built-in tiny model) and without where it does not (Qwen).
    `add_special_tokens=True` is exactly that default for every tokenizer, so this is True.
    (lm-eval before 0.4.13 added BOS for Gemma models only.) `model` is ignored."""
    return True


def tok_encode(tokenizer, text: str, add_bos_token: bool) -> list[int]:
    """HFLM.tok_encode for a causal model (lm-eval 0.4.13): `add_special_tokens=add_bos_token`,
    except that a text already starting with the BOS (prefix) token's text never gets a second."""
    add = bool(add_bos_token)
    prefix = _prefix_text(tokenizer)
    if add and prefix is not None and text.startswith(prefix):
        add = False
    return list(tokenizer.encode(text, add_special_tokens=add))


_PREFIX_TEXT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def encode_pair(
    tokenizer, context: str, continuation: str, add_bos_token: bool, encode_context=None
) -> tuple[list[int], list[int]]:
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


class TokenizerMethods:
    """The Backend's tokenization methods over a Hugging Face tokenizer (lm-eval's rules, above),
    for every backend that builds token-id prompts with the model's own tokenizer (this one, and
    the model-server backend). Needs `tokenizer`, `add_bos_token` and `name`."""

    tokenizer: Any  # a Hugging Face tokenizer; AutoTokenizer picks its class at run time
    add_bos_token: bool
    name: str
    _last_context: tuple[str, list[int]] | None = None

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

    def chat_format(self, settings: ChatSettings) -> ChatFormat:
        """The model's chat template with `settings` (resolved `ChatTemplateSettings`)."""
        return ChatFormat(self.tokenizer, settings, self.add_bos_token, self.name)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        at = text.find(s)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]
