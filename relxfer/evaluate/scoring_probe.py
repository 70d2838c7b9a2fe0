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
and the probe cannot tell which. The plan takes `label_ids` for single-token labels (one request
per question) and the first exact continuation mode for the rest; with none, a clear one-line
refusal. Nothing is ever scored from a truncated top-k.
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
    read_next_token,
    top_k_request,
)
from relxfer.services.openai_client import ServerError, one_line

PROBE_PROMPTS = 4


class ScoringRefused(RelxferError):
    """The server offers no exact way to score the labels."""


@dataclass(frozen=True)
class ScoringPlan:
    label_ids: bool  # single-token labels: one request per question through `logprob_token_ids`
    continuation: str | None  # the exact continuation mode (multi-token labels, or no label ids)
    max_difference: float  # largest disagreement between sources seen by the probe

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
    single = all(len(c) == 1 for conts in continuations for c in conts)
    try:
        if mode in (LABEL_IDS, TOP_K):
            if not single:
                return "labels of more than one token"
            ids = [[c[0] for c in conts] for conts in continuations]
            bodies = [
                label_ids_request(model, p, i) if mode == LABEL_IDS else top_k_request(model, p)
                for p, i in zip(prompts, ids)
            ]
            answers = map_requests(bodies)
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
    return ScoringPlan(label_ids, continuation, worst)


def _label(mode: str) -> str:
    return {LABEL_IDS: "label-id", TOP_K: "top-k"}.get(mode, mode)


def _reasons(sources: dict, values: dict, overlaps: dict, allowed: Sequence[str], continuations) -> str:
    reasons = []
    for mode in SCORING_MODES:
        source = sources[mode]
        if mode not in allowed:
            reason = "not allowed by `scoring`"
        elif isinstance(source, str):
            reason = source
        elif mode == LABEL_IDS:
            labels = sorted(
                {c[0] for conts, row in zip(continuations, source) for c, v in zip(conts, row) if np.isnan(v)}
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
