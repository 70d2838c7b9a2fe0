"""The ways an OpenAI-compatible /v1/completions server can give exact log-probs of chosen tokens,
as request bodies and answer readers. Prompts are token-id lists (the model's own tokenizer made
them), so the server never re-tokenizes.

- `label_ids`: one request per question: `max_tokens: 1`, `logprob_token_ids: [label ids]`
  (vLLM) and `return_tokens_as_token_ids`; the answer holds the next-token log-prob of exactly
  those ids. Labels that differ only in their last token: the tokens they share (" 1".." 4" are
  [220, 16..19] for Qwen3 and gpt-oss: a space, then the digit) go with the prompt, the last
  tokens are scored by id, and `prompt_logprobs: 0` in the same request gives the log-prob of
  each shared token, so a label's log-prob is still that of its whole continuation.
- `prompt_logprobs` (vLLM): one request per question and label over prompt + label tokens;
  the answer holds the log-prob of every prompt token given the tokens before it.
- `echo` (the OpenAI legacy way, also llama.cpp and SGLang): the same through `echo: true` and
  `logprobs`, reading `token_logprobs` of the echoed prompt; the echoed tokens must be the
  prompt's own (a server that shifts or re-tokenizes them is caught here or by the probe).
- `top_k`: the next-token top-k. Never a scoring mode (labels outside the top-k would be
  missing); the probe uses it as one more reference where labels happen to be in it.

A reader returns None for a value the answer lacks: a missing label is never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LABEL_IDS = "label_ids"
PROMPT_LOGPROBS = "prompt_logprobs"
ECHO = "echo"
TOP_K = "top_k"
CONTINUATION_MODES = (PROMPT_LOGPROBS, ECHO)
SCORING_MODES = (LABEL_IDS, *CONTINUATION_MODES)
TOP_K_REFERENCE = 5  # top-k size of the probe's reference request (servers cap it, vLLM at 20)

# The request field vLLM reads the label ids from (a name an older server does not know).
LABEL_IDS_FIELD = "logprob_token_ids"


class AnswerError(ValueError):
    """An answer that does not have the shape a mode needs (one line)."""


def _base(model: str, prompt: Sequence[int], lora: str | None = None) -> dict:
    return {"model": lora or model, "prompt": [int(t) for t in prompt], "temperature": 0.0}


def split_labels(continuations: Sequence[Sequence[int]]) -> tuple[list[int], list[int]] | str:
    """(the leading tokens all labels share, each label's last token) when the labels differ in
    their last token only, else the reason the label-id mode cannot score them."""
    if not continuations:
        return [], []
    shortest = min(len(c) for c in continuations)
    shared = 0
    while shared < shortest and len({c[shared] for c in continuations}) == 1:
        shared += 1
    lengths = sorted({len(c) for c in continuations})
    if shared == shortest or lengths != [shared + 1]:
        return (
            f"the labels are {'/'.join(map(str, lengths))} tokens long and share {shared} leading token"
            f"{'' if shared == 1 else 's'}: they differ in more than their last token"
        )
    return [int(t) for t in continuations[0][:shared]], [int(c[shared]) for c in continuations]


def label_ids_request(model: str, prompt: Sequence[int], label_ids: Sequence[int], shared: Sequence[int] = ()) -> dict:
    """The labels' last tokens `label_ids` scored after `prompt` + the tokens they share."""
    body = _base(model, list(prompt) + list(shared)) | {
        "max_tokens": 1,
        "logprobs": 1,
        LABEL_IDS_FIELD: [int(t) for t in label_ids],
        "return_tokens_as_token_ids": True,
    }
    return body | {"prompt_logprobs": 0} if shared else body


def top_k_request(model: str, prompt: Sequence[int], k: int = TOP_K_REFERENCE) -> dict:
    return _base(model, prompt) | {"max_tokens": 1, "logprobs": int(k), "return_tokens_as_token_ids": True}


def continuation_request(mode: str, model: str, prompt: Sequence[int], continuation: Sequence[int]) -> dict:
    body = _base(model, list(prompt) + list(continuation)) | {"max_tokens": 1}
    if mode == PROMPT_LOGPROBS:
        return body | {"prompt_logprobs": 0}
    if mode == ECHO:
        return body | {"echo": True, "logprobs": 1, "return_tokens_as_token_ids": True}
    raise ValueError(f"not a continuation mode: {mode}")


def _choice(answer: dict) -> dict:
    try:
        return answer["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise AnswerError(f"answer without choices: {str(answer)[:200]}") from None


def _token_id(key, decoded: dict[str, int] | None = None) -> int | None:
    """A token id from an answer's key: 'token_id:123' (return_tokens_as_token_ids), '123' (a
    vLLM prompt_logprobs key), or a token's text looked up in `decoded`."""
    key = str(key)
    if key.startswith("token_id:"):
        return int(key[len("token_id:") :])
    if decoded is not None:
        return decoded.get(key)
    return int(key) if key.lstrip("-").isdigit() else None


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return max(value, -9999.0) if not math.isnan(value) else None


def read_next_token(
    answer: dict, token_ids: Sequence[int], decoded: dict[str, int] | None = None
) -> list[float | None]:
    """Log-prob of each of `token_ids` at the first generated position (label_ids and top_k
    answers); None where the answer does not have it."""
    logprobs = _choice(answer).get("logprobs") or {}
    tops = logprobs.get("top_logprobs") or []
    if not tops or not isinstance(tops[0], dict):
        raise AnswerError("answer without top_logprobs")
    found: dict[int, float | None] = {}
    for key, value in tops[0].items():
        token = _token_id(key, decoded)
        if token is not None:
            found[token] = _finite(value)
    return [found.get(int(t)) for t in token_ids]


def read_label_ids(
    answer: dict, prompt: Sequence[int], label_ids: Sequence[int], shared: Sequence[int] = ()
) -> list[float | None]:
    """Each label's log-prob from an answer to `label_ids_request`: its last token's next-token
    log-prob plus the log-probs of the tokens all labels share (None where one is missing)."""
    values = read_next_token(answer, label_ids)
    if not shared:
        return values
    prefix = _sum(_prompt_logprobs(_choice(answer), list(prompt) + list(shared), len(prompt)))
    return [None if v is None or prefix is None else v + prefix for v in values]


def _prompt_logprobs(choice: dict, full: list[int], start: int) -> list[float | None]:
    """The log-prob of each of `full[start:]` given the tokens before it, from `prompt_logprobs`."""
    positions = choice.get("prompt_logprobs")
    if not isinstance(positions, list) or len(positions) != len(full):
        raise AnswerError(
            f"prompt_logprobs for {len(positions) if isinstance(positions, list) else 'no'} of {len(full)} prompt tokens"
        )
    values = []
    for i in range(start, len(full)):
        entry = positions[i] or {}
        hit = next((v for k, v in entry.items() if _token_id(k) == full[i]), None)
        values.append(_finite(hit.get("logprob")) if isinstance(hit, dict) else _finite(hit))
    return values


def _sum(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(sum(present)) if len(present) == len(values) else None


def read_continuation(mode: str, answer: dict, prompt: Sequence[int], continuation: Sequence[int]) -> float | None:
    """Sum of the log-probs of `continuation`'s tokens after `prompt` (None when one is
    missing), from a prompt_logprobs or echo answer to `continuation_request`."""
    choice = _choice(answer)
    full = list(prompt) + list(continuation)
    start = len(prompt)
    if mode == PROMPT_LOGPROBS:
        values = _prompt_logprobs(choice, full, start)
    elif mode == ECHO:
        logprobs = choice.get("logprobs") or {}
        tokens, token_logprobs = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []
        if len(tokens) < len(full) or len(token_logprobs) < len(full):
            raise AnswerError(f"echo returned {len(tokens)} tokens for a prompt of {len(full)}")
        echoed = [_token_id(t) for t in tokens[: len(full)]]
        if any(e is not None for e in echoed) and echoed != full:
            raise AnswerError("the echoed tokens are not the prompt's")
        values = [_finite(v) for v in token_logprobs[start : len(full)]]
    else:
        raise ValueError(f"not a continuation mode: {mode}")
    return _sum(values)
