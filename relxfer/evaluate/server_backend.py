"""`relxfer.evaluate.base.Backend` over an OpenAI-compatible /v1/completions server.

Prompts are token ids built with the model's own tokenizer by the same rules as the local
backend (tokenization.py), so the server never re-tokenizes and both engines score the same
sequences. Scoring follows the plan of the start-up probe (scoring_probe.py), run on the first
real prompts this server is asked about: one request per question through `logprob_token_ids`
where the labels differ in their last token only (the tokens they share go with the prompt and
their log-probs come back in the same answer), else one request per question and label through
an exact continuation mode. Every answer is checked: a label the server left out fails the cell, it is
never filled in from a top-k. Generation is greedy (`temperature: 0`) with the spec's stop
strings and token limit; the generated token ids are decoded here and cut at the first stop
string, exactly as the local backend does.

Many requests are in flight at once (`OpenAIClient.map`): the server batches them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from relxfer.evaluate.scoring_modes import (
    LABEL_IDS,
    SCORING_MODES,
    AnswerError,
    continuation_request,
    label_ids_request,
    read_continuation,
    read_label_ids,
    split_labels,
)
from relxfer.evaluate.scoring_probe import ScoringPlan, probe_scoring
from relxfer.models.tokenization import (
    TokenizerMethods,
    cut_at_stop,
    default_add_bos_token,
)
from relxfer.services.openai_client import OpenAIClient, ServerError


@dataclass
class ScoringState:
    """What every backend of one server shares: the modes the spec allows, the probe's tolerance,
    and the probe's plan once it ran."""

    allowed: tuple[str, ...] = SCORING_MODES
    tolerance: float = 1e-3
    plan: ScoringPlan | None = None
    # Send requests that ask for prompt log-probs (continuation requests, label-id requests with
    # shared label tokens) one at a time: vLLM 0.32 with --enable-lora on the CPU crashes its
    # engine on a batch of several such requests (its CPU LoRA logits kernel indexes by request
    # where it needs prompt positions). Plain label-id requests are fine.
    # The engine sets it from `requests.serial_prompt_logprobs`.
    serial_continuations: bool = False


@dataclass
class ServerBackend(TokenizerMethods):
    client: OpenAIClient
    tokenizer: object
    served_model: str  # the `model` of each request: the base model's served name or an adapter's
    name: str  # the spec's model name (messages)
    scoring: ScoringState = field(default_factory=ScoringState)
    # Turns a failed request into the error the cell should fail with (e.g. "the server died").
    explain: Callable[[ServerError], Exception] = lambda error: error
    add_bos_token: bool = field(default_factory=default_add_bos_token)

    def __post_init__(self):
        self._last_context = None

    @property
    def where(self) -> str:
        return f"model server {self.client.base_url} (model {self.served_model!r})"

    def _post(self, body: dict) -> dict:
        try:
            answer = self.client.post("/completions", body)
        except ServerError as e:
            raise self.explain(e) from None
        if not isinstance(answer, dict):
            raise ServerError(f"{self.where}: /completions answered with text, not JSON: {answer[:200]!r}", 200, answer)
        return answer

    def _map(self, bodies: list[dict], progress: bool = False, desc: str = "requests") -> list[dict]:
        return self.client.map(self._post, bodies, progress=progress, desc=desc)

    # -- scoring ------------------------------------------------------------------------------

    def plan(self, prompts, continuations) -> ScoringPlan:
        """The server's scoring plan, probing it on these prompts the first time."""
        if self.scoring.plan is None:
            self.scoring.plan = probe_scoring(
                self._map,
                self.served_model,
                prompts,
                continuations,
                self.scoring.allowed,
                self.scoring.tolerance,
                self.where,
            )
        return self.scoring.plan

    def label_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        batch_size: int | None = None,  # the server batches; kept for the Backend interface
        progress: bool = False,
    ) -> np.ndarray:
        """Sum of log-probabilities of each continuation after each prompt, [n_prompts, n_labels]."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
        n_labels = len(continuations[0]) if continuations else 0
        out = np.zeros((len(prompts), n_labels), dtype=np.float64)
        if not prompts:
            return out
        plan = self.plan(prompts, continuations)
        # One job per question where the label-id mode scores its labels, else one per question and
        # label. A job: the question, how its answer is read (the labels' shared tokens and last
        # ids, or the label's index and continuation mode), whether it asks for prompt log-probs.
        jobs: list[tuple[int, tuple, bool, dict]] = []
        for i, (prompt, conts) in enumerate(zip(prompts, continuations)):
            split = split_labels(conts) if plan.label_ids else None
            if isinstance(split, tuple):
                shared, last = split
                body = label_ids_request(self.served_model, prompt, last, shared)
                jobs.append((i, (LABEL_IDS, shared, last), bool(shared), body))
            elif plan.continuation is None:
                raise ServerError(
                    f"{self.where}: prompt {i}: {split or 'labels of several tokens'}, so they need prompt_logprobs "
                    f"or echo, and the start-up probe found neither exact"
                )
            else:
                jobs += [
                    (
                        i,
                        (plan.continuation, j),
                        True,
                        continuation_request(plan.continuation, self.served_model, prompt, c),
                    )
                    for j, c in enumerate(conts)
                ]
        answers = self._run_jobs([job[3] for job in jobs], [job[2] for job in jobs], progress)
        for (i, how, _, _), answer in zip(jobs, answers):
            try:
                if how[0] == LABEL_IDS:
                    _, shared, last = how
                    values = read_label_ids(answer, prompts[i], last, shared)
                    missing = [t for t, v in zip(last, values) if v is None]
                    if missing:
                        raise AnswerError(
                            f"label ids {missing} (or a shared token's prompt log-prob) missing from the answer (a truncated top-k?)"
                        )
                    out[i] = values
                else:
                    mode, j = how
                    value = read_continuation(mode, answer, prompts[i], continuations[i][j])
                    if value is None:
                        raise AnswerError("a label token's log-prob missing from the answer")
                    out[i, j] = value
            except AnswerError as e:
                raise ServerError(
                    f"{self.where}: prompt {i}: {e}; relxfer never scores from a partial answer"
                ) from None
        return out

    def _run_jobs(self, bodies: list[dict], prompt_logprobs: list[bool], progress: bool) -> list[dict]:
        """The answers, in order; requests that ask for prompt log-probs one at a time where the
        server needs that (`ScoringState.serial_continuations`)."""
        if not self.scoring.serial_continuations or not any(prompt_logprobs):
            return self._map(bodies, progress=progress, desc="scoring")
        answers: list = [None] * len(bodies)
        parallel = [i for i, c in enumerate(prompt_logprobs) if not c]
        for i, answer in zip(parallel, self._map([bodies[i] for i in parallel], progress=progress, desc="scoring")):
            answers[i] = answer
        for i in (i for i, c in enumerate(prompt_logprobs) if c):  # one at a time, nothing else in flight
            answers[i] = self._post(bodies[i])
        return answers

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Greedy continuation of each prompt, decoded without special tokens and cut before the
        first stop string (the server stops there too)."""
        stop = [s for s in stop if s]
        bodies = [
            {
                "model": self.served_model,
                "prompt": [int(t) for t in p],
                "max_tokens": int(max_new_tokens),
                "temperature": 0.0,
                "stop": stop,
                "return_token_ids": True,
                "skip_special_tokens": True,
            }
            for p in prompts
        ]
        out = []
        for answer in self._map(bodies, progress=progress, desc="generating"):
            choice = (answer.get("choices") or [{}])[0]
            ids = choice.get("token_ids")
            text = self.decode(ids) if ids is not None else str(choice.get("text", ""))
            out.append(cut_at_stop(text, stop))
        return out

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[tuple[list[int], bool]]:
        """Greedy continuation ids of each prompt, up to the first EOS (the server stops there
        and leaves it out), and whether the row ended there (`finish_reason` "stop")."""
        bodies = [
            {
                "model": self.served_model,
                "prompt": [int(t) for t in p],
                "max_tokens": int(max_new_tokens),
                "temperature": 0.0,
                "return_token_ids": True,
                "skip_special_tokens": False,
            }
            for p in prompts
        ]
        out = []
        eos = getattr(self.tokenizer, "eos_token_id", None)
        for answer in self._map(bodies, progress=progress, desc="generating"):
            choice = (answer.get("choices") or [{}])[0]
            ids = choice.get("token_ids")
            if ids is None:
                raise ServerError(f"{self.where}: no token ids came back for a generation (vLLM's return_token_ids)")
            ids = [int(t) for t in ids]
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos)]
            out.append((ids, choice.get("finish_reason") == "stop"))
        return out
