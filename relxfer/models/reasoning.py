"""Chain of thought per model family, on token ids: where a family's reasoning ends and its answer
begins, and how unfinished reasoning is closed before the label is scored.

- `think` (Qwen3, DeepSeek-V3.1): reasoning inside `<think>` ... `</think>`; the answer follows
  the text the template writes after `</think>` (Qwen3 "\\n\\n", DeepSeek nothing). Unfinished
  reasoning is closed with "\\n</think>" and that text.
- `harmony` (gpt-oss): reasoning in the `analysis` channel, the answer after
  `<|channel|>final<|message|>`. Unfinished reasoning is closed with `<|end|>` and the final
  channel's header `<|start|>assistant<|channel|>final<|message|>`.
- `plain`: no markers (a raw completion prompt, a template that closes the reasoning block in the
  prompt, a model that did not open one): the generated text is the reasoning, cut at the stop
  strings, and the answer cue follows it as text.

The ids are split, never decoded and re-encoded: special tokens keep their ids and the label is
scored exactly where the family writes its answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ReasoningKind = Literal["think", "harmony", "plain"]
# The most tokens a model that reasons in marked blocks may generate when its format sets no
# reasoning budget: thinking traces run to thousands of tokens (Qwen3's card recommends 32768 for
# hard problems; a reading-comprehension question needs far fewer).
THINKING_BUDGET = 8192


@dataclass(frozen=True)
class ReasoningMarkers:
    """A family's markers as token ids.

    think: `open_ids` `<think>`, `close_ids` `</think>`, `answer_ids` the text after it,
    `before_close_ids` a newline (what closes unfinished reasoning before `</think>`).
    harmony: `close_ids` `<|end|>`, `reopen_ids` `<|start|>assistant`, `answer_ids`
    `<|channel|>final<|message|>`."""

    kind: ReasoningKind
    open_ids: tuple[int, ...] = ()
    close_ids: tuple[int, ...] = ()
    answer_ids: tuple[int, ...] = ()
    before_close_ids: tuple[int, ...] = ()
    reopen_ids: tuple[int, ...] = ()
    opened_in_prompt: bool = False  # the prompt ends inside an open reasoning block


@dataclass(frozen=True)
class SplitGeneration:
    """Generated ids split at the family's markers. `context_tail`: the ids that follow the
    prompt in the scored context (reasoning, its closing, the answer header); `truncated`: the
    reasoning never closed and was closed here."""

    reasoning_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    context_tail: tuple[int, ...]
    truncated: bool


def _find(sequence: Sequence[int], part: Sequence[int], start: int = 0) -> int:
    """Index of the first occurrence of `part` in `sequence` at or after `start`, or -1."""
    n = len(part)
    if n == 0:
        return -1
    for i in range(start, len(sequence) - n + 1):
        if tuple(sequence[i : i + n]) == tuple(part):
            return i
    return -1


def _cut_at(ids: tuple[int, ...], ends: Sequence[int]) -> tuple[int, ...]:
    for i, t in enumerate(ids):
        if t in ends:
            return ids[:i]
    return ids


def _strip_open(markers: ReasoningMarkers, ids: tuple[int, ...]) -> tuple[int, ...]:
    """Reasoning without the `<think>` the model opened it with."""
    at = _find(ids[: len(markers.open_ids) + 1], markers.open_ids)
    return ids[at + len(markers.open_ids) :] if at >= 0 else ids


def _message_content(markers: ReasoningMarkers, ids: tuple[int, ...]) -> tuple[int, ...]:
    """The text of the first harmony message in `ids` (after its `<|message|>`, before `<|end|>`)."""
    message = markers.answer_ids[-1:]
    at = _find(ids, message)
    content = ids[at + 1 :] if at >= 0 else ids
    end = _find(content, markers.close_ids)
    return content[:end] if end >= 0 else content


def split_generation(
    markers: ReasoningMarkers, generated: Sequence[int], end_ids: Sequence[int] = ()
) -> SplitGeneration | None:
    """Split `generated` (ids after the CoT prompt) at the family's markers; None when they
    hold no marked reasoning (then the plain path applies). `end_ids`: ids that end the answer
    (end of message, EOS), left out of the answer."""
    ids = tuple(int(t) for t in generated)
    if markers.kind == "think":
        opened = markers.opened_in_prompt or (len(ids) > 0 and _find(ids[:2], markers.open_ids) == 0)
        at = _find(ids, markers.close_ids)
        if at >= 0:
            reasoning = _strip_open(markers, ids[:at])
            after = ids[at + len(markers.close_ids) :]
            if markers.answer_ids and after[: len(markers.answer_ids)] == markers.answer_ids:
                after = after[len(markers.answer_ids) :]  # the header the model wrote itself
            answer = _cut_at(after, end_ids)
            return SplitGeneration(
                reasoning, answer, ids[: at + len(markers.close_ids)] + markers.answer_ids, truncated=False
            )
        if not opened:
            return None
        body = _cut_at(ids, end_ids)
        tail = body + markers.before_close_ids + markers.close_ids + markers.answer_ids
        return SplitGeneration(_strip_open(markers, body), (), tail, truncated=True)
    if markers.kind == "harmony":
        at = _find(ids, markers.answer_ids)
        if at >= 0:
            answer = _cut_at(ids[at + len(markers.answer_ids) :], end_ids)
            reasoning = _message_content(markers, ids[:at])
            return SplitGeneration(reasoning, answer, ids[: at + len(markers.answer_ids)], truncated=False)
        if not ids:
            return None
        # The analysis message's own end is not the end of the reply.
        body = _cut_at(ids, [e for e in end_ids if (e,) != markers.close_ids])
        # A header the budget cut short is dropped; a message the model ended needs no second end.
        for n in range(len(markers.reopen_ids), 0, -1):
            if body[-n:] == markers.reopen_ids[:n]:
                body = body[:-n]
                break
        close = () if body[-len(markers.close_ids) :] == markers.close_ids else markers.close_ids
        tail = body + close + markers.reopen_ids + markers.answer_ids
        return SplitGeneration(_message_content(markers, body), (), tail, truncated=True)
    return None
