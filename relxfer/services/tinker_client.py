"""What the Tinker engines share: the SDK's service and REST clients, one-line errors for the
service's failures, bounded waits and retries, and feature detection across SDK lines.

The SDK (`pip install "relxfer[tinker]"`) reads its key from `TINKER_API_KEY` (the 0.38 line also
from `TINKER_CREDENTIAL_CMD` or the key `tinker auth login` stored) and its address from
`TINKER_BASE_URL` (the hosted service when unset); relxfer never reads, logs or stores the key
itself, it only checks that one is there. Two SDK lines are tested: 0.16.1 (what the open SkyRL
tx server speaks; end to end) and 0.38.0 (what the hosted service speaks; contract tests against
the real SDK classes, tests/tinker_contract). Where they differ, relxfer looks at what the
installed SDK offers (`supports`, `standalone_rest_client`) instead of pinning one:

- 0.16 hands ServiceClient's extra keywords to its HTTP client, so `timeout` bounds each HTTP
  request; 0.35+ takes named options only and ignores any other with a FutureWarning, so
  `timeout` is passed only to the first. Every wait is bounded by relxfer itself either way
  (`call`, `run_all`): a request that blocks, a future that never resolves.
- 0.36+ builds `tinker.RestClient()` on its own; `create_rest_client()` and
  `ServiceClient.get_server_capabilities()` are deprecated there and used only on older lines.
- 0.38 ends a session on request (`ServiceClient.close(status)`, which stops its heartbeats):
  relxfer does so when a fine-tune or a model's evaluations end; older lines end it on exit.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

from relxfer.errors import RelxferError

KEY_VARIABLE = "TINKER_API_KEY"
URL_VARIABLE = "TINKER_BASE_URL"
CREDENTIAL_COMMAND_VARIABLE = "TINKER_CREDENTIAL_CMD"  # the 0.38 line runs it for a fresh credential
T = TypeVar("T")
log = logging.getLogger(__name__)


class TinkerError(RelxferError):
    """The Tinker service refused or failed a request (one line, without the key)."""


def check_environment(what: str) -> None:
    """Before any run exists: the SDK must be installed and a credential it reads present (never
    read further than that)."""
    sdk()
    if os.environ.get(KEY_VARIABLE):
        return
    stored = _stored_key_check()
    if stored is None:  # an SDK that reads the environment variable only
        raise TinkerError(
            f"{what} runs on Tinker, but {KEY_VARIABLE} is not set: export {KEY_VARIABLE}=tml-... "
            f"(and {URL_VARIABLE} for a service other than the hosted one)"
        )
    if os.environ.get(CREDENTIAL_COMMAND_VARIABLE) or stored():
        return
    raise TinkerError(
        f"{what} runs on Tinker, but no Tinker credential was found: run `tinker auth login`, or export "
        f"{KEY_VARIABLE}=tml-... (and {URL_VARIABLE} for a service other than the hosted one)"
    )


def _stored_key_check() -> Callable[[], bool] | None:
    """Whether `tinker auth login` stored a default key, asked of the SDK's own credential store
    (0.38 line: `tinker.lib.credentials`, which its client and its CLI use); None for an SDK
    that has none."""
    try:  # imported by name: the 0.16 line has no such module
        credentials = importlib.import_module("tinker.lib.credentials")
    except ImportError:
        return None
    if not hasattr(credentials, "JsonCredentialStore") or not hasattr(credentials, "default_credentials_path"):
        return None
    path = Path(credentials.default_credentials_path())

    def has_default_key() -> bool:
        try:
            return credentials.JsonCredentialStore(path).get_default_key() is not None
        except Exception as error:  # noqa: BLE001 - a damaged file: the SDK's own validation error
            raise TinkerError(
                f"{path}: cannot read the Tinker credentials `tinker auth login` stored ({type(error).__name__}); "
                "run `tinker auth logout` and log in again"
            ) from None

    return has_default_key


def sdk():
    try:
        import tinker
    except ImportError:
        raise TinkerError('the Tinker engine needs the Tinker SDK: pip install "relxfer[tinker]"') from None
    return tinker


def sdk_version() -> str:
    return str(getattr(sdk(), "__version__", "unknown"))


def supports(function, parameter: str) -> bool:
    """Whether an SDK function takes `parameter` (feature detection across SDK lines)."""
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def service_address() -> str:
    """The service requests go to, for messages."""
    return os.environ.get(URL_VARIABLE) or "the hosted Tinker service"


def describe_failure(error: BaseException, base_model: str | None = None) -> str:
    """One line for a failed request: what went wrong and what to do, without secrets."""
    tinker = sdk()
    status = getattr(error, "status_code", None)
    detail = _short(error)
    where = service_address()
    if isinstance(error, getattr(tinker, "AuthenticationError", ())) or status == 401:
        return f"Tinker rejected the API key in {KEY_VARIABLE} (401 at {where}): {detail}"
    if isinstance(error, getattr(tinker, "PermissionDeniedError", ())) or status == 403:
        return f"Tinker refused the request (403 at {where}: the key lacks access): {detail}"
    if isinstance(error, getattr(tinker, "RateLimitError", ())) or status == 429:
        return f"Tinker quota or rate limit reached (429 at {where}); re-run later to resume: {detail}"
    if isinstance(error, getattr(tinker, "NotFoundError", ())) or status == 404:
        model = f" (base model {base_model!r})" if base_model else ""
        return f"Tinker does not know the requested model, run or checkpoint{model} (404 at {where}): {detail}"
    if isinstance(error, (FutureTimeout, TimeoutError)) or isinstance(error, getattr(tinker, "APITimeoutError", ())):
        return f"Tinker did not answer in time at {where}; re-run to resume: {detail}"
    if isinstance(error, getattr(tinker, "APIConnectionError", ())):
        return f"cannot reach Tinker at {where}: {detail}"
    return f"Tinker request failed at {where}: {type(error).__name__}: {detail}"


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_transient(error: BaseException) -> bool:
    """Failures worth another try: timeouts, lost connections, 408/409/429/5xx."""
    tinker = sdk()
    if isinstance(error, (FutureTimeout, TimeoutError, getattr(tinker, "APIConnectionError", ()))):
        return True
    status = getattr(error, "status_code", None)
    return status in (408, 409, 429) or (isinstance(status, int) and status >= 500)


def bounded(submit: Callable[[], T], timeout: float) -> T:
    """`submit()`'s value, or concurrent.futures.TimeoutError after `timeout` seconds. It runs on
    a daemon thread: SDK calls that block before they return a future (0.16: creating clients,
    the server's capabilities; 0.38: a client's first request fetches the client configuration)
    would otherwise wait as long as the SDK's own retries do. A call that never returns leaves
    only that idle thread behind."""
    box: Future = Future()

    def run() -> None:
        try:
            box.set_result(submit())
        except BaseException as error:  # noqa: BLE001 - handed to the waiting caller as is
            box.set_exception(error)

    threading.Thread(target=run, name="relxfer-tinker-request", daemon=True).start()
    return box.result(timeout=timeout)


def call(
    submit: Callable[[], object], timeout: float, retries: int = 0, base_model: str | None = None, backoff: float = 2.0
) -> Any:
    """`submit()` returns an SDK future (or a value); wait at most `timeout` seconds for the
    submission and its result together and return the result (whichever response type the
    SDK's request returns: Any). With `retries`, transient failures are submitted again (only
    for idempotent requests: sampling, scoring, downloads), at most that many times with
    exponential backoff. Any failure left ends as a TinkerError with one line."""
    attempt = 0
    while True:
        try:
            deadline = time.monotonic() + timeout
            future = bounded(submit, timeout)
            if not hasattr(future, "result"):
                return future
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TinkerError:
            raise
        except Exception as error:  # the SDK's own types, futures' timeouts
            if attempt < retries and is_transient(error):
                time.sleep(backoff * 2**attempt)
                attempt += 1
                continue
            raise TinkerError(describe_failure(error, base_model)) from error


def http_timeout_honoured() -> bool:
    """Whether ServiceClient hands extra keywords to its HTTP client, where `timeout` bounds
    each HTTP request (0.16 line). The 0.35+ line names its options (`base_url`, `api_key`, ...)
    and ignores any other keyword with a FutureWarning that it will become an error."""
    parameters = inspect.signature(sdk().ServiceClient.__init__).parameters
    if "timeout" in parameters:
        return True
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return forwards and "base_url" not in parameters


def standalone_rest_client() -> bool:
    """Whether the SDK builds `tinker.RestClient()` on its own (0.36+, where the service client's
    `create_rest_client` and `get_server_capabilities` are deprecated)."""
    rest = getattr(sdk(), "RestClient", None)
    return rest is not None and supports(rest.__init__, "base_url")


def service_client(timeout: float):
    """A ServiceClient for `TINKER_BASE_URL` (or the hosted service) with the SDK's credential.
    The 0.16 line opens its session here: the construction is bounded too."""
    tinker = sdk()
    options = {"timeout": timeout} if http_timeout_honoured() else {}
    return call(lambda: tinker.ServiceClient(**options), timeout)


def closes_sessions() -> bool:
    """Whether the SDK ends a session on request (0.38: `ServiceClient.close(status)`, which also
    stops its heartbeats); on older lines a session ends with the process."""
    return supports(getattr(sdk().ServiceClient, "close", None), "status")


def ending_status() -> str:
    """How a session ends, in the SDK's words, from the exception being handled (none: success)."""
    error = sys.exc_info()[1]
    if error is None:
        return "success"
    return "errored" if isinstance(error, Exception) else "interrupted"


def close_session(client, timeout: float, detail: str) -> None:
    """Tell the service the session is over (status from `ending_status`) where the SDK can.
    Never raises: a session that cannot be closed must not hide the outcome being reported."""
    if client is None or not closes_sessions():
        return
    status = ending_status()
    try:
        call(lambda: client.close(status, detail), timeout)
    except TinkerError as error:
        log.warning("the Tinker session did not close cleanly: %s", error)


def rest_client(client, timeout: float):
    """The SDK's REST client (checkpoints, download URLs, capabilities): `tinker.RestClient()`
    where the SDK has it, else the service client's."""
    if standalone_rest_client():
        return call(lambda: sdk().RestClient(), timeout)
    return call(lambda: client.create_rest_client(), timeout)


def server_capabilities(client, timeout: float):
    """What the service serves, from the REST client where the SDK has one of its own."""
    if standalone_rest_client():
        rest = rest_client(client, timeout)
        return call(lambda: rest.get_server_capabilities(), timeout, retries=2)
    return call(lambda: client.get_server_capabilities(), timeout, retries=2)


def check_base_model(client, base_model: str, timeout: float) -> None:
    """Refuse, in one line with suggestions, a base model the service does not list."""
    capabilities = server_capabilities(client, timeout)
    names = [
        m.model_name for m in getattr(capabilities, "supported_models", []) or [] if getattr(m, "model_name", None)
    ]
    if names and base_model not in names:
        close = difflib.get_close_matches(base_model, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; it serves: {', '.join(sorted(names))}"
        raise TinkerError(f"Tinker does not serve base model {base_model!r}{hint}")


def run_all(
    submits: list[Callable[[], object]],
    timeout: float,
    retries: int,
    max_in_flight: int,
    progress: bool = False,
    desc: str = "tinker",
    base_model: str | None = None,
    backoff: float = 2.0,
) -> list:
    """Results of idempotent requests (`submits[i]()` returns an SDK future), in order: at most
    `max_in_flight` submitted ahead of the oldest one waited for; a transient failure is
    submitted again, at most `retries` times per request; any other ends as one TinkerError."""
    from collections import deque

    from tqdm.auto import tqdm

    def submit(i: int):
        try:
            return submits[i]()
        except Exception as error:  # noqa: BLE001 - a request refused before it left: fail it like a future would
            failed: Future = Future()
            failed.set_exception(error)
            return failed

    results: list = [None] * len(submits)
    attempts = [0] * len(submits)
    pending: deque = deque()
    next_index = 0
    with tqdm(total=len(submits), desc=desc, disable=not progress) as bar:
        while next_index < len(submits) or pending:
            while next_index < len(submits) and len(pending) < max_in_flight:
                pending.append((next_index, submit(next_index)))
                next_index += 1
            i, future = pending.popleft()
            try:
                results[i] = future.result(timeout=timeout)
            except Exception as error:
                if attempts[i] < retries and is_transient(error):
                    time.sleep(backoff * 2 ** attempts[i])
                    attempts[i] += 1
                    pending.appendleft((i, submit(i)))
                    continue
                raise TinkerError(describe_failure(error, base_model)) from error
            bar.update(1)
    return results
