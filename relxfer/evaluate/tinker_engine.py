"""The `tinker` evaluation engine: the Tinker service's sampling client behind the Backend
interface. Prompts are built and split with the model's own tokenizer exactly as the local
backend does (lm-eval's rules, `relxfer.evaluate.local_backend`); the service only ever sees token ids.

Label scoring: with an SDK that has `target_prompt_logprobs` (0.38 line), one request per prompt
scores every single-token label: the prompt plus one label token is sent, and the row of the
position after the prompt names the label ids. Otherwise (0.16 line, and any multi-token label)
`compute_logprobs` runs on prompt + label, once per label, and the label's tokens are summed
(only the label's positions are asked for where the SDK has `prompt_logprobs_last_n`). A service
that answers a targeted request without the table (the field is optional in the SDK) gets those
prompts again through `compute_logprobs`, and so does every later prompt of that backend; the
run tag `relxfer.tinker.scoring` says which way the scores were made. Either way the numbers are
the log-probabilities of exactly the label token ids after the prompt.

Generation: greedy (temperature 0), cut at the first EOS and before the first stop string, as
the local backend does. The fine-tuned condition samples from the sampler weights the `tinker`
fine-tune saved (their path is in the adapter's relxfer_finetune.json).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from relxfer.evaluate.base import Adapter
from relxfer.models.tokenization import TokenizerMethods
from relxfer.provenance import VERSIONS
from relxfer.services.tinker_client import (
    TinkerError,
    call,
    check_base_model,
    check_environment,
    close_session,
    run_all,
    sdk,
    sdk_version,
    service_address,
    service_client,
    supports,
)
from relxfer.spec.engines import EngineContext
from relxfer.spec.types import FinetuneEngineKind, TinkerEvaluateEngine

if TYPE_CHECKING:
    import tinker

RECORD_FILE = "relxfer_finetune.json"  # relxfer.train.FINETUNE_JSON, without importing torch here

TARGETED = "target_prompt_logprobs"
PER_LABEL = "compute_logprobs"
FALLEN_BACK = "compute_logprobs (the service returned no target_prompt_logprobs)"


def targeted_scoring_supported() -> bool:
    """Whether the installed SDK's sampling client takes `target_prompt_logprobs` (0.30+)."""
    return supports(sdk().SamplingClient.sample, "target_prompt_logprobs")


def sampler_path(adapter_dir: Path) -> str:
    """The Tinker path of the sampler weights a `tinker` fine-tune saved with its adapter."""
    record_file = Path(adapter_dir) / RECORD_FILE
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    path = (record.get("tinker") or {}).get("sampler_path")
    if not path:
        raise TinkerError(
            f"adapter {str(adapter_dir)!r} was not trained on Tinker (no sampler weights recorded): the Tinker "
            "evaluation engine can only sample from a `tinker` fine-tune of the same model"
        )
    return path


def open_sampling_client(client, timeout: float, base_model: str, model_path: str | None = None):
    """A sampling client of the service's base model, or of the sampler weights at `model_path`."""
    if model_path is None:
        make = partial(client.create_sampling_client, base_model=base_model)
    else:
        make = partial(client.create_sampling_client, model_path=model_path)
    return call(make, timeout, retries=2, base_model=base_model)


class TinkerEngine:
    kind = "tinker"

    def __init__(self, config: TinkerEvaluateEngine, context: EngineContext):
        self.config = config
        self.context = context
        self.base_model = config.base_model or context.model.source
        self._client: tinker.ServiceClient | None = None
        self._tokenizer = None
        self._backend: tuple[str | None, TinkerBackend] | None = None

    def check(self) -> None:
        model = self.context.model
        check_environment(f"model {model.name!r}'s evaluation")
        spec = self.context.spec
        finetune_kind = model.engines.finetune.kind
        if spec.finetune is not None and spec.needs_finetune and finetune_kind is not FinetuneEngineKind.TINKER:
            raise TinkerError(
                f"model {model.name!r}: the Tinker evaluation engine samples fine-tuned weights from Tinker only, "
                f'but its fine-tune runs on {finetune_kind.value!r}; set models[].engines.finetune to {{"kind": "tinker"}}'
            )

    def backend(self, adapter: Adapter | None) -> TinkerBackend:
        key = adapter.key if adapter else None
        if self._backend is None or self._backend[0] != key:
            timeout = float(self.config.request_timeout_s)
            if self._client is None:
                self._client = service_client(timeout)
                check_base_model(self._client, self.base_model, timeout)
            model_path = sampler_path(adapter.path) if adapter is not None else None
            sampling = open_sampling_client(self._client, timeout, self.base_model, model_path)
            self._backend = (
                key,
                TinkerBackend(
                    sampling,
                    self._load_tokenizer(),
                    self.config,
                    name=self.context.model.name,
                    base_model=self.base_model,
                ),
            )
        return self._backend[1]

    def _load_tokenizer(self):
        if self._tokenizer is None:
            from relxfer.models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.context.model, self.context.cache_dir)
        return self._tokenizer

    def run_tags(self) -> dict[str, str]:
        # Read after the evaluation: the backend knows whether the service filled the table.
        if self._backend is not None:
            scoring = self._backend[1].scoring
        else:
            scoring = TARGETED if targeted_scoring_supported() else PER_LABEL
        return {
            "engine": self.kind,
            "tinker.base_model": self.base_model,
            VERSIONS + "tinker": sdk_version(),
            "tinker.scoring": scoring,
        }

    def log_files(self) -> dict[str, Path]:
        return {}

    def close(self) -> None:
        client, self._client, self._backend = self._client, None, None
        close_session(client, float(self.config.request_timeout_s), f"relxfer: {self.context.model.name}'s evaluation")


class TinkerBackend(TokenizerMethods):
    """`relxfer.evaluate.base.Backend` over a Tinker sampling client."""

    def __init__(
        self,
        sampling_client,
        tokenizer,
        config: TinkerEvaluateEngine,
        name: str = "tinker",
        base_model: str | None = None,
    ):
        from relxfer.models.tokenization import default_add_bos_token

        self.client = sampling_client
        self.tokenizer = tokenizer
        self.name = name
        self.base_model = base_model
        self.add_bos_token = default_add_bos_token()
        self.timeout = float(config.request_timeout_s)
        self.retries = config.max_retries
        self.max_in_flight = config.max_in_flight
        self.targeted = targeted_scoring_supported()
        self.scoring = TARGETED if self.targeted else PER_LABEL
        self.last_n = supports(sdk().SamplingClient.compute_logprobs, "prompt_logprobs_last_n")

    # -- scoring ----------------------------------------------------------------------------------

    def label_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Sum of log-probabilities of each continuation's token ids after each prompt, float64,
        shape [n_prompts, n_continuations]. `batch_size` is ignored: the service batches."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
        widths = {len(c) for c in continuations}
        if len(widths) > 1:
            raise ValueError(f"every prompt needs the same number of continuations, got {sorted(widths)}")
        out = np.zeros((len(prompts), widths.pop() if widths else 0), dtype=np.float64)
        if not len(prompts):
            return out
        single = all(len(c) == 1 for conts in continuations for c in conts)
        rest: Sequence[int] = range(len(prompts))
        if self.targeted and single:
            rest = self._targeted_scores(prompts, continuations, out, progress)
        pairs = [(i, j, list(prompts[i]), list(c)) for i in rest for j, c in enumerate(continuations[i])]
        submits = [self._logprobs_request(p + c, len(c)) for _, _, p, c in pairs]
        for (i, j, _p, c), logprobs in zip(pairs, self._run(submits, progress, "scoring")):
            # The list ends at the last token whether it has an entry for position 0 (None: the
            # hosted service) or starts at position 1 (SkyRL tx): the label's are the last ones.
            scored = list(logprobs)[-len(c) :]
            if len(scored) != len(c) or any(x is None for x in scored):
                raise TinkerError(f"Tinker returned no log-probability for some label tokens of prompt {i}")
            out[i, j] = float(np.sum(np.asarray(scored, dtype=np.float64)))
        return out

    def _targeted_scores(self, prompts, continuations, out: np.ndarray, progress: bool) -> list[int]:
        """Fill `out` from one targeted request per prompt; the prompts whose answer came without
        the table (a service that does not fill the optional field), to score per label."""
        submits = [self._targeted_request(list(p), [c[0] for c in conts]) for p, conts in zip(prompts, continuations)]
        missing = []
        for i, (prompt, response) in enumerate(zip(prompts, self._run(submits, progress, "scoring"))):
            target = getattr(response, "target_prompt_logprobs", None)
            if target is None:
                missing.append(i)
                continue
            table = np.asarray(target.to_numpy(), dtype=np.float64)
            expected = (len(prompt), out.shape[1])
            if table.shape != expected:
                raise TinkerError(
                    f"Tinker at {service_address()} returned target_prompt_logprobs of shape {table.shape} for a "
                    f"request of shape {expected}; relxfer cannot tell which numbers score the labels"
                )
            out[i] = table[len(prompt) - 1]
        if missing:
            self.targeted, self.scoring = False, FALLEN_BACK
        return missing

    def _targeted_request(self, prompt: list[int], label_ids: list[int]):
        """One prefill scoring every label id at the position after the prompt: the sent tokens
        are the prompt plus one label, row len(prompt) - 1 scores position len(prompt)."""
        tinker = sdk()
        tokens = prompt + [label_ids[0]]
        table = np.full((len(tokens) - 1, len(label_ids)), -1, dtype=np.int64)
        table[len(prompt) - 1] = label_ids
        target = tinker.types.TensorData.from_numpy(table)
        params = tinker.types.SamplingParams(max_tokens=1, temperature=0.0)
        model_input = tinker.types.ModelInput.from_ints(tokens)
        return lambda: self.client.sample(
            prompt=model_input, num_samples=1, sampling_params=params, target_prompt_logprobs=target
        )

    def _logprobs_request(self, tokens: list[int], n_label: int):
        model_input = sdk().types.ModelInput.from_ints(tokens)
        if self.last_n and n_label < len(tokens):  # only the label's positions: the prompt may come from cache
            return lambda: self.client.compute_logprobs(model_input, prompt_logprobs_last_n=n_label)
        return lambda: self.client.compute_logprobs(model_input)

    def _run(self, submits: list, progress: bool, desc: str) -> list:
        return run_all(submits, self.timeout, self.retries, self.max_in_flight, progress, desc, self.base_model)

    # -- generation -------------------------------------------------------------------------------

    def _sample_greedy(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: list[str] | list[int] | None, progress: bool
    ) -> list:
        """The service's greedy samples of `prompts` (one each), in order; `stop`: strings or
        token ids the service ends a sample at."""
        tinker = sdk()
        params = tinker.types.SamplingParams(max_tokens=int(max_new_tokens), temperature=0.0, seed=0, stop=stop)
        submits = []
        for prompt in prompts:
            model_input = tinker.types.ModelInput.from_ints([int(t) for t in prompt])
            submits.append(
                lambda model_input=model_input: self.client.sample(
                    prompt=model_input, num_samples=1, sampling_params=params
                )
            )
        return self._run(submits, progress, "generating")

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Greedy continuation of each prompt, cut at the first EOS and before the first stop
        string (the local backend's semantics). Stop strings go to the service too, so it can end
        early; without them, EOS does."""
        from relxfer.models.tokenization import cut_at_stop

        stop = [s for s in stop if s]
        eos = self.tokenizer.eos_token_id
        service_stop = list(stop) if stop else ([int(eos)] if eos is not None else None)
        texts = []
        for response in self._sample_greedy(prompts, max_new_tokens, service_stop, progress):
            tokens = list(response.sequences[0].tokens)
            if eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            texts.append(cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), stop))
        return texts

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[tuple[list[int], bool]]:
        """Greedy continuation ids of each prompt, up to the first EOS, and whether the row
        ended there."""
        eos = self.tokenizer.eos_token_id
        out = []
        for response in self._sample_greedy(prompts, max_new_tokens, [int(eos)] if eos is not None else None, progress):
            tokens = [int(t) for t in response.sequences[0].tokens]
            ended = eos is not None and eos in tokens
            out.append((tokens[: tokens.index(eos)] if ended else tokens, ended or len(tokens) < int(max_new_tokens)))
        return out
