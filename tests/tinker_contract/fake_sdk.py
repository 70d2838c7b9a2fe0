"""A stand-in Tinker service behind the real SDK's classes, for contract tests without a server.

`Stand(real_class, ...)` is what relxfer gets where the SDK would hand it a client: every method
relxfer calls on it must exist on the installed SDK's class, must not be deprecated there, and
its arguments must bind to the real signature and match the real annotations (checked value by
value: `types.ModelInput`, `List[types.Datum]`, a `Literal`, `TensorData | None`, ...). The
answer comes from a handler and is wrapped in a future where the real method returns one. The
responses are the SDK's own types (`SampleResponse`, `ForwardBackwardOutput`, ...), built the
way the installed line builds them.

`Service` is the service itself: a deterministic toy language model (log-probabilities of a
token after a prefix, greedy sampling) that sampling, scoring and training answer from, so a
test can compute every number relxfer should report without relxfer's code.
"""

from __future__ import annotations

import collections.abc
import datetime
import hashlib
import inspect
import threading
import types as pytypes
import typing
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tinker

VOCAB = 40
SDK = tinker.__version__


class ContractViolation(AssertionError):
    """relxfer used the SDK in a way the installed SDK's classes do not allow."""


# -- checking a call against the real class --------------------------------------------------


def _annotations(function) -> dict[str, Any]:
    """Annotations of `function` (a method of a real SDK class) resolved to objects; names the SDK
    imports only for type checkers stay strings (and fail the check if relxfer passes one)."""
    target = inspect.unwrap(function)
    namespace = dict(getattr(target, "__globals__", {}))
    namespace.setdefault("tinker", tinker)
    namespace.setdefault("types", tinker.types)
    resolved = {}
    for name, annotation in getattr(target, "__annotations__", {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - the SDK's own annotation text
            except Exception:  # noqa: BLE001 - a TYPE_CHECKING-only name
                pass
        resolved[name] = annotation
    return resolved


def conforms(value: Any, annotation: Any) -> bool:
    """Whether `value` is what `annotation` (a resolved type hint) admits."""
    if annotation in (Any, object, inspect.Parameter.empty):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if isinstance(annotation, str):
        raise ContractViolation(f"cannot check a value against the unresolved annotation {annotation!r}")
    if isinstance(annotation, typing.TypeVar):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return conforms(value, args[0])
    if origin in (typing.Union, pytypes.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, collections.abc.Sequence, tuple, set, frozenset):
        container = {collections.abc.Sequence: (list, tuple)}.get(origin, origin)
        if not isinstance(value, container) or isinstance(value, str):
            return False
        return not args or all(conforms(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, collections.abc.Mapping):
            return False
        return not args or all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    if origin is not None:
        return isinstance(value, origin)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    raise ContractViolation(f"cannot check a value against the annotation {annotation!r}")


def _forwarded_to(real: type, name: str):
    """Where a method hands the keywords its `**kwargs` collects, on the installed line (read in
    its source): tinker 0.16.1's ServiceClient gives them to the HTTP client (`AsyncTinker`); the
    0.35+ line ignores them with a FutureWarning."""
    if SDK == "0.16.1" and (real.__name__, name) == ("ServiceClient", "__init__"):
        from tinker._client import AsyncTinker

        return AsyncTinker.__init__
    return None


def check_call(real: type, name: str, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    """Bind relxfer's call of `real.name` to the real signature, refusing what the SDK would not
    take: a method it lacks or deprecates, an unknown or missing argument, a value of another
    type, an argument that would land in `**kwargs`."""
    where = f"tinker {SDK}: {real.__name__}.{name}"
    function = getattr(real, name, None)
    if function is None:
        raise ContractViolation(f"{where} does not exist")
    if getattr(function, "__deprecated__", None) is not None:
        raise ContractViolation(f"{where} is deprecated: {function.__deprecated__}")
    signature = inspect.signature(function)
    try:
        bound = signature.bind(None, *args, **kwargs)  # None stands for self
    except TypeError as error:
        raise ContractViolation(f"{where}: {error}") from None
    hints = _annotations(function)
    for parameter_name, value in list(bound.arguments.items())[1:]:
        parameter = signature.parameters[parameter_name]
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            target = _forwarded_to(real, name)
            if target is None:
                raise ContractViolation(f"{where}: {sorted(value)} would land in **{parameter_name}")
            check_call(type("Forwarded", (), {"__init__": target}), "__init__", (), value)
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            raise ContractViolation(f"{where}: extra positional arguments {value!r}")
        annotation = hints.get(parameter_name, inspect.Parameter.empty)
        if not conforms(value, annotation):
            raise ContractViolation(f"{where}: {parameter_name}={value!r} is not a {annotation}")
    return bound


def _returns_future(function) -> bool:
    annotation = inspect.signature(function).return_annotation
    return "Future" in (annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""))


# -- futures ---------------------------------------------------------------------------------


def resolved(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def never() -> Future:
    """A future that never resolves (a request the service lost)."""
    return Future()


@dataclass
class Call:
    cls: str
    method: str
    arguments: dict[str, Any]


@dataclass
class Stand:
    """relxfer's view of one SDK object of class `real`; `handlers[name](**arguments)` answers."""

    real: type
    handlers: dict[str, Callable[..., Any]]
    log: list[Call]

    def __getattr__(self, name: str):
        if name.startswith("__") or not hasattr(self.real, name):
            raise AttributeError(name)  # hasattr() answers as the real class does

        def method(*args, **kwargs):
            bound = check_call(self.real, name, args, kwargs)
            arguments = dict(list(bound.arguments.items())[1:])
            self.log.append(Call(self.real.__name__, name, arguments))
            if name not in self.handlers:
                raise ContractViolation(f"the stand-in service does not serve {self.real.__name__}.{name}")
            bound.apply_defaults()
            answer = self.handlers[name](**dict(list(bound.arguments.items())[1:]))
            if isinstance(answer, Future) or not _returns_future(getattr(self.real, name)):
                return answer
            return resolved(answer)

        return method


def constructor(real: type, make: Callable[..., Any], log: list[Call]):
    """What replaces `tinker.<real>` for a test: checks the constructor's arguments against the
    real `__init__` and returns `make(**arguments)`."""

    def build(*args, **kwargs):
        bound = check_call(real, "__init__", args, kwargs)
        arguments = dict(list(bound.arguments.items())[1:])
        log.append(Call(real.__name__, "__init__", arguments))
        return make(**arguments)

    return build


# -- the service -----------------------------------------------------------------------------


def logprob(prefix: list[int], token: int) -> float:
    """log p(token | prefix) of the toy model, as float32 (what the service sends)."""
    digest = hashlib.sha256(np.asarray(prefix[-3:] + [len(prefix)], dtype=np.int64).tobytes()).digest()
    logits = np.random.default_rng(int.from_bytes(digest[:8], "little")).normal(0.0, 2.0, VOCAB)
    logits = logits - logits.max()
    return float(np.float32(logits[token] - np.log(np.exp(logits).sum())))


def greedy(prompt: list[int], max_tokens: int, stop_ids: set[int]) -> tuple[list[int], str]:
    out: list[int] = []
    while len(out) < max_tokens:
        token = max(range(VOCAB), key=lambda t: logprob(prompt + out, t))
        out.append(token)
        if token in stop_ids:
            return out, "stop"
    return out, "length"


def sample_response(tokens: list[int], stop_reason: str, target=None):
    types = tinker.types
    if "tokens_np" in getattr(types.SampledSequence, "__dataclass_fields__", {}):  # 0.38 line
        sequence = types.SampledSequence(
            stop_reason=stop_reason, sequence_id="seq-0", tokens_np=np.asarray(tokens, dtype=np.int64)
        )
        return types.SampleResponse(sequences=[sequence], target_prompt_logprobs=target)
    assert target is None, "this SDK line has no target_prompt_logprobs"
    return types.SampleResponse(sequences=[types.SampledSequence(stop_reason=stop_reason, tokens=tokens)])


@dataclass
class Service:
    """The stand-in Tinker service. `fill_targets=False` answers targeted scoring without the
    table (the field is optional); `lose` names methods whose futures never resolve; `block`
    names calls that never return (a client creation that hangs)."""

    models: tuple[str, ...] = ("toy/base",)
    fill_targets: bool = True
    lose: set[str] = field(default_factory=set)
    block: set[str] = field(default_factory=set)
    log: list[Call] = field(default_factory=list)
    saved: dict[str, str] = field(default_factory=dict)  # tinker path -> kind
    urls: Callable[[str], tuple[dict[str, str], datetime.datetime]] | None = None  # external weights
    archive_url: Callable[[str, str], tuple[str, datetime.datetime]] | None = None
    released: threading.Event = field(default_factory=threading.Event)

    def calls(self, method: str) -> list[Call]:
        return [c for c in self.log if c.method == method]

    def _answer(self, name: str, value: Callable[[], Any]):
        if name in self.block:
            self.released.wait()  # until the test ends
        return never() if name in self.lose else value()

    # clients

    def service_client(self) -> Stand:
        return Stand(
            SERVICE_CLIENT,
            {
                "create_lora_training_client": lambda **a: self._answer(
                    "create_lora_training_client", lambda: self.training_client()
                ),
                "create_training_client_from_state_with_optimizer": lambda **a: self._answer(
                    "create_training_client_from_state_with_optimizer", lambda: self.training_client()
                ),
                "create_sampling_client": lambda **a: self._answer(
                    "create_sampling_client", lambda: self.sampling_client()
                ),
                "create_rest_client": lambda **a: self.rest_client(),
                "get_server_capabilities": lambda **a: self.capabilities(),
                "close": lambda **a: self._answer("close", lambda: None),
            },
            self.log,
        )

    def rest_client(self, **_ignored) -> Stand:
        return Stand(
            REST_CLIENT,
            {
                "get_server_capabilities": lambda **a: self.capabilities(),
                "get_external_weights_urls": self._external_urls,
                "get_checkpoint_archive_url": self._archive_url,
            },
            self.log,
        )

    def sampling_client(self) -> Stand:
        return Stand(
            SAMPLING_CLIENT,
            {"sample": self._sample, "compute_logprobs": self._compute_logprobs},
            self.log,
        )

    def training_client(self) -> Stand:
        return Stand(
            TRAINING_CLIENT,
            {
                "forward_backward": self._forward_backward,
                "optim_step": lambda **a: self._answer(
                    "optim_step", lambda: tinker.types.OptimStepResponse(metrics={})
                ),
                "save_state": lambda name, **a: self._save("save_state", "weights", name),
                "save_weights_for_sampler": lambda name, **a: self._save(
                    "save_weights_for_sampler", "sampler_weights", name
                ),
                "save_weights_external": lambda name, **a: self._save(
                    "save_weights_external", "external_weights", name
                ),
            },
            self.log,
        )

    # answers

    def capabilities(self):
        types = tinker.types
        return types.GetServerCapabilitiesResponse(
            supported_models=[types.SupportedModel(model_name=name) for name in self.models]
        )

    def _sample(self, prompt, num_samples, sampling_params, target_prompt_logprobs=None, **_):
        def answer():
            tokens = prompt.to_ints()
            target = None
            if target_prompt_logprobs is not None and self.fill_targets:
                ids = target_prompt_logprobs.to_numpy()
                table = np.zeros(ids.shape, dtype=np.float32)
                for i, j in zip(*np.nonzero(ids >= 0)):
                    table[i, j] = logprob(tokens[: i + 1], int(ids[i, j]))
                target = tinker.types.TensorData.from_numpy(table)
            stops = {s for s in (sampling_params.stop or []) if isinstance(s, int)}
            out, reason = greedy(tokens, sampling_params.max_tokens or 1, stops)
            return sample_response(out, reason, target)

        return self._answer("sample", answer)

    def _compute_logprobs(self, prompt, prompt_logprobs_last_n=None):
        def answer():
            tokens = prompt.to_ints()
            values: list[float | None] = [None] + [logprob(tokens[:i], tokens[i]) for i in range(1, len(tokens))]
            if prompt_logprobs_last_n is not None:
                values = [None] * (len(tokens) - prompt_logprobs_last_n) + values[-prompt_logprobs_last_n:]
            return values

        return self._answer("compute_logprobs", answer)

    def _forward_backward(self, data, loss_fn, loss_fn_config=None):
        def answer():
            outputs = []
            for datum in data:
                inputs = datum.model_input.to_ints()
                targets = datum.loss_fn_inputs["target_tokens"].to_numpy().tolist()
                values = [logprob(inputs[: t + 1], int(targets[t])) for t in range(len(targets))]
                outputs.append({"logprobs": tinker.types.TensorData.from_numpy(np.asarray(values, dtype=np.float32))})
            return tinker.types.ForwardBackwardOutput(
                loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={}
            )

        return self._answer("forward_backward", answer)

    def _save(self, method: str, kind: str, name: str):
        path = f"tinker://run-0/{kind}/{name}"
        self.saved[path] = kind
        response = {
            "save_state": "SaveWeightsResponse",
            "save_weights_for_sampler": "SaveWeightsForSamplerResponse",
            "save_weights_external": "SaveWeightsExternalResponse",
        }[method]
        return self._answer(method, lambda: getattr(tinker.types, response)(path=path))

    def _external_urls(self, tinker_path):
        assert self.saved.get(tinker_path) == "external_weights", tinker_path
        urls, expires = self.urls(tinker_path)
        return tinker.types.ExternalWeightsUrlsResponse(urls=urls, expires=expires)

    def _archive_url(self, training_run_id, checkpoint_id):
        url, expires = self.archive_url(training_run_id, checkpoint_id)
        return tinker.types.CheckpointArchiveUrlResponse(url=url, expires=expires)


def _rest_class() -> type:
    """The REST client class of the installed SDK: `tinker.RestClient`, or the one the 0.16 line's
    `ServiceClient.create_rest_client` returns."""
    if hasattr(tinker, "RestClient"):
        return tinker.RestClient
    from tinker.lib.public_interfaces.rest_client import RestClient

    return RestClient


# The real classes, taken before a test replaces `tinker.ServiceClient` and `tinker.RestClient`.
SERVICE_CLIENT, REST_CLIENT = tinker.ServiceClient, _rest_class()
SAMPLING_CLIENT, TRAINING_CLIENT = tinker.SamplingClient, tinker.TrainingClient
