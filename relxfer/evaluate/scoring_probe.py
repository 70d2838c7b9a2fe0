"""The start-up probe: before a server scores anything, find out which exact scoring mode it
supports, on the first real prompts of the evaluation.

Every mode (scoring_modes.py) is asked about the same few prompts and labels, and so is the
server's plain top-k as a reference. A mode counts as exact when
- `label_ids`: every label id came back (an older vLLM ignores `logprob_token_ids` and answers
  with its top-k, which would drop labels without an error);
- a continuation mode: every (prompt, label) got a value, and the values agree with at least one
  other source (the label-id path, the other continuation mode, or labels that happen to be in
  the top-k): a server whose echoed log-probs are shifted by a token is caught here.
Any two sources that disagree beyond the tolerance make the probe refuse: one of them is wrong
and the probe cannot tell which. The plan takes `label_ids` for labels that differ in their last
token only (one request per question; the tokens they share go with the prompt) and the first
exact continuation mode for the rest, and keeps the reason where the label-id mode could not
score the probe's labels; with no exact mode, a clear one-line refusal. Nothing is ever scored
from a truncated top-k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from relxfer.errors import RelxferError
from relxfer.evaluate.scoring_modes import (
    CONTINUATION_MODES,
    LABEL_IDS,
    LABEL_IDS_FIELD,
    SCORING_MODES,
    TOP_K,
    AnswerError,
    continuation_request,
    label_ids_request,
    read_continuation,
    read_label_ids,
    read_next_token,
    split_labels,
    top_k_request,
)
from relxfer.services.openai_client import ServerError, one_line

PROBE_PROMPTS = 4


class ScoringRefused(RelxferError):
    """The server offers no exact way to score the labels."""


@dataclass(frozen=True)
class ScoringPlan:
    label_ids: bool  # one request per question through `logprob_token_ids`
    continuation: str | None  # the exact continuation mode (other labels, or no label ids)
    max_difference: float  # largest disagreement between sources seen by the probe
    # Why the label-id mode is not used for the probe's labels (None where it is).
    label_ids_fallback: str | None = None

    @property
    def tag(self) -> str:
        if self.label_ids and self.continuation:
            return f"{LABEL_IDS}+{self.continuation}"
        return LABEL_IDS if self.label_ids else str(self.continuation)


def _source_values(mode: str, map_requests: Callable, model: str, prompts, continuations) -> np.ndarray | str:
    """[prompts, labels] values from one source (NaN where the answer lacks one), or the reason
    the source gave none. Connection failures propagate: they are not a property of the mode.
    Continuation requests go one at a time: vLLM 0.32's CPU LoRA kernels crash the server on a
    batch of several prompt-log-prob requests (see ScoringState.serial_continuations)."""
    try:
        if mode == LABEL_IDS:
            splits = []
            for conts in continuations:
                split = split_labels(conts)
                if isinstance(split, str):
                    return split
                splits.append(split)
            bodies = [label_ids_request(model, p, i, s) for p, (s, i) in zip(prompts, splits)]
            # With shared label tokens the requests read prompt log-probs: one at a time, as above.
            shared = any(s for s, _ in splits)
            answers = [map_requests([b])[0] for b in bodies] if shared else map_requests(bodies)
            rows = [read_label_ids(a, p, i, s) for a, p, (s, i) in zip(answers, prompts, splits)]
        elif mode == TOP_K:
            if not all(len(c) == 1 for conts in continuations for c in conts):
                return "labels of more than one token"
            ids = [[c[0] for c in conts] for conts in continuations]
            answers = map_requests([top_k_request(model, p) for p in prompts])
            rows = [read_next_token(a, i) for a, i in zip(answers, ids)]
        else:
            pairs = [(p, c) for p, conts in zip(prompts, continuations) for c in conts]
            answers = [map_requests([continuation_request(mode, model, p, c)])[0] for p, c in pairs]
            flat = [read_continuation(mode, a, p, c) for a, (p, c) in zip(answers, pairs)]
            n = len(continuations[0])
            rows = [flat[i * n : (i + 1) * n] for i in range(len(prompts))]
    except ServerError as e:
        if e.status is None:
            raise
        return one_line(str(e).split(": ", 1)[-1], 160)
    except AnswerError as e:
        return one_line(str(e), 160)
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


def probe_scoring(
    map_requests: Callable[[list[dict]], list[dict]],
    model: str,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    allowed: Sequence[str] = SCORING_MODES,
    tolerance: float = 1e-3,
    where: str = "model server",
) -> ScoringPlan:
    """The scoring plan for this server, from its answers about the first `PROBE_PROMPTS`
    prompts (all their labels). `map_requests` posts completion bodies and returns the answers."""
    prompts = [list(p) for p in prompts[:PROBE_PROMPTS]]
    continuations = [[list(c) for c in conts] for conts in continuations[:PROBE_PROMPTS]]
    sources = {
        mode: _source_values(mode, map_requests, model, prompts, continuations) for mode in (*SCORING_MODES, TOP_K)
    }
    values = {m: v for m, v in sources.items() if isinstance(v, np.ndarray)}

    # Every pair of sources must agree where both have a value.
    worst, overlaps = 0.0, {m: 0 for m in values}
    names = list(values)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = ~np.isnan(values[a]) & ~np.isnan(values[b])
            if not both.any():
                continue
            overlaps[a] += 1
            overlaps[b] += 1
            difference = float(np.abs(values[a][both] - values[b][both]).max())
            worst = max(worst, difference)
            if difference > tolerance:
                raise ScoringRefused(
                    f"{where}: its {_label(a)} and {_label(b)} log-probs disagree by {difference:.3g} "
                    f"(tolerance {tolerance:g}) on the same prompts; relxfer cannot tell which is right and scores with neither"
                )

    def complete(mode: str) -> bool:
        return mode in values and not np.isnan(values[mode]).any()

    label_ids = LABEL_IDS in allowed and complete(LABEL_IDS)
    continuation = next((m for m in CONTINUATION_MODES if m in allowed and complete(m) and overlaps[m] > 0), None)
    if not label_ids and continuation is None:
        raise ScoringRefused(
            f"{where} offers no exact way to score the answer labels ({_reasons(sources, values, overlaps, allowed, continuations)}); relxfer never scores from a truncated top-k"
        )
    fallback = None if label_ids else _reasons(sources, values, overlaps, allowed, continuations, (LABEL_IDS,))
    return ScoringPlan(label_ids, continuation, worst, fallback)


def _label(mode: str) -> str:
    return {LABEL_IDS: "label-id", TOP_K: "top-k"}.get(mode, mode)


def _reasons(
    sources: dict, values: dict, overlaps: dict, allowed: Sequence[str], continuations, modes=SCORING_MODES
) -> str:
    reasons = []
    for mode in modes:
        source = sources[mode]
        if mode not in allowed:
            reason = "not allowed by `scoring`"
        elif isinstance(source, str):
            reason = source
        elif mode == LABEL_IDS:
            labels = sorted(
                {c[-1] for conts, row in zip(continuations, source) for c, v in zip(conts, row) if np.isnan(v)}
            )
            reason = (
                f"the answers lacked label ids {', '.join(map(str, labels))}: only the server's top-k came back "
                f"(it ignores `{LABEL_IDS_FIELD}`)"
            )
        elif np.isnan(source).any():
            reason = "the answers lacked some label tokens"
        else:
            reason = "no other source to check its values against"
        reasons.append(f"{mode}: {reason}")
    return "; ".join(reasons)
