"""How scoring requests become forward passes.

A request asks for log-probabilities at the last positions of one token sequence. Requests
whose sequences start with the same long prefix (Belebele: the questions of one passage, or
the four continuations of one prompt) can share a row: the prefix runs once and each member's
rest of its sequence follows it in the same row, attending to the prefix and to itself only
(tree attention through a custom mask, position ids that restart after the prefix). Rows are
then cut into batches that minimise the estimated cost of the forward passes.

Pure bookkeeping on token ids; the backend turns rows into tensors and runs the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Request:
    """Log-softmax at the last `len(targets)` positions of `input_ids`, where position j is
    scored on the token ids `targets[j]` (one id per scored continuation)."""

    index: int  # the prompt it belongs to
    label: int | None  # the one continuation it scores, or None for all of them at once
    input_ids: list[int]
    targets: list[list[int]]


def build_requests(prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]) -> list[Request]:
    """One request per prompt when every continuation is one token (the next-token distribution
    scores them all), else one per continuation over prompt + continuation[:-1]."""
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
            requests.append(Request(i, None, prompt, [[int(c[0]) for c in conts]]))
        else:
            for j, cont in enumerate(conts):
                cont = [int(t) for t in cont]
                requests.append(Request(i, j, prompt + cont[:-1], [[t] for t in cont]))
    return requests


@dataclass
class Row:
    """One row of a forward pass: `shared` leading tokens common to every member, run once,
    then each member's remaining tokens in member order."""

    shared: int
    members: list[Request]

    @classmethod
    def single(cls, request: Request) -> Row:
        return cls(len(request.input_ids), [request])

    @property
    def packed(self) -> bool:
        """Whether the row needs the tree mask (a plain causal mask does otherwise)."""
        return len(self.members) > 1

    def __len__(self) -> int:
        return self.shared + sum(len(m.input_ids) - self.shared for m in self.members)

    @property
    def n_scored(self) -> int:
        return sum(len(m.targets) for m in self.members)

    def tokens(self) -> list[int]:
        out = list(self.members[0].input_ids[: self.shared])
        for m in self.members:
            out += m.input_ids[self.shared :]
        return out

    def segments(self) -> list[int]:
        """0 for the shared prefix, k + 1 for member k's own tokens."""
        out = [0] * self.shared
        for k, m in enumerate(self.members):
            out += [k + 1] * (len(m.input_ids) - self.shared)
        return out

    def positions(self) -> list[int]:
        """Position ids: each member's own tokens continue right after the prefix."""
        out = list(range(self.shared))
        for m in self.members:
            out += range(self.shared, len(m.input_ids))
        return out

    def scored(self) -> list[int]:
        """Row indices of every member's scored positions, member after member (a position
        inside the prefix is read from the prefix, which every member shares)."""
        out, offset = [], 0
        for m in self.members:
            n = len(m.input_ids)
            for p in range(n - len(m.targets), n):
                out.append(p if p < self.shared else self.shared + offset + p - self.shared)
            offset += n - self.shared
        return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def shared_prefix_rows(requests: list[Request], min_shared: int) -> list[Row]:
    """Rows for `requests`: those whose token ids share a prefix of at least `min_shared` tokens
    share a row, the others get one each. The shared part always leaves each member at least
    its last token. Found by sorting the ids lexicographically (sequences sharing a prefix are
    then neighbours); a request joins the row before it when its common prefix with the row is
    at least `min_shared` tokens and at least half the row's shared length so far."""
    rows: list[Row] = []
    members: list[Request] = []
    shared = 0
    for request in sorted(requests, key=lambda r: r.input_ids) + [None]:
        if request is not None and members:
            common = min(_common_prefix(members[0].input_ids, request.input_ids), shared, len(request.input_ids) - 1)
            if common >= min_shared and 2 * common >= shared:
                members.append(request)
                shared = common
                continue
        if len(members) > 1:
            rows.append(Row(shared, members))
        elif members:
            rows.append(Row.single(members[0]))
        if request is not None:
            members, shared = [request], len(request.input_ids) - 1
    return rows


def plan_batches(rows: list[Row], max_rows: Callable[[int, int], int], pass_overhead: int) -> list[list[Row]]:
    """Cut `rows`, sorted longest first, into consecutive batches that minimise the estimated
    cost sum(pass_overhead + rows x longest row), in tokens: every forward pass pays a fixed
    price (weights read from memory, kernel launches, Python) and every padded token costs
    like a real one. `max_rows(width, kept)` bounds a batch whose longest row has `width`
    tokens and whose rows keep at most `kept` logits each. Exact dynamic programme over cut
    points; deterministic, so the same rows always make the same batches."""
    n = len(rows)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        kept = 0
        for j in range(i - 1, -1, -1):  # the batch rows[j:i]; its longest row is rows[j]
            kept = max(kept, rows[j].n_scored)
            width = len(rows[j])
            if i - j > max(1, max_rows(width, kept)):
                break
            cost = best[j] + pass_overhead + (i - j) * width
            if cost < best[i]:
                best[i], cut[i] = cost, j
            if pass_overhead + (i - j) * width >= best[i]:
                break  # longer batches only cost more from here on
    batches, i = [], n
    while i > 0:
        batches.append(rows[cut[i] : i])
        i = cut[i]
    return batches[::-1]
