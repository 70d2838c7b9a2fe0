"""What the Tinker engines share: the SDK's service client, one-line errors for the service's
failures, bounded waits and retries, and feature detection across SDK lines.

The SDK (`pip install "relxfer[tinker]"`) reads its key from `TINKER_API_KEY` and its address
from `TINKER_BASE_URL` (the hosted service when unset); relxfer never reads, logs or stores the
key itself, it only checks that it is there. Two SDK lines are in use: 0.16 (what the open
SkyRL tx server speaks; the tests run against it) and 0.38 (what the hosted service speaks; its request
bodies SkyRL tx 0.3.0 does not accept). Where they differ, relxfer looks at what the installed SDK
offers (`supports`) instead of pinning one.
"""

from __future__ import annotations

import difflib
import inspect
import os
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from relxfer.errors import RelxferError

KEY_VARIABLE = "TINKER_API_KEY"
URL_VARIABLE = "TINKER_BASE_URL"
T = TypeVar("T")


class TinkerError(RelxferError):
    """The Tinker service refused or failed a request (one line, without the key)."""


def check_environment(what: str) -> None:
    """Before any run exists: the SDK must be installed and the key set (never read further)."""
    if not os.environ.get(KEY_VARIABLE):
        raise TinkerError(
            f"{what} runs on Tinker, but {KEY_VARIABLE} is not set: export {KEY_VARIABLE}=tml-... "
            f"(and {URL_VARIABLE} for a service other than the hosted one)"
        )
    sdk()


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


def describe_failure(error: BaseException, base_model: str | None = None) -> str:
    """One line for a failed request: what went wrong and what to do, without secrets."""
    tinker = sdk()
    status = getattr(error, "status_code", None)
    detail = _short(error)
    where = os.environ.get(URL_VARIABLE) or "the hosted Tinker service"
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


def call(
    submit: Callable[[], object], timeout: float, retries: int = 0, base_model: str | None = None, backoff: float = 2.0
) -> Any:
    """`submit()` returns an SDK future (or a value); wait at most `timeout` seconds for it and
    return its result (whichever response type the SDK's request returns: Any). With
    `retries`, transient failures are submitted again (only for idempotent requests: sampling,
    scoring, downloads), at most that many times with exponential backoff. Any failure left ends
    as a TinkerError with one line."""
    attempt = 0
    while True:
        try:
            future = submit()
            return future.result(timeout=timeout) if hasattr(future, "result") else future
        except TinkerError:
            raise
        except Exception as error:  # the SDK's own types, futures' timeouts
            if attempt < retries and is_transient(error):
                time.sleep(backoff * 2**attempt)
                attempt += 1
                continue
            raise TinkerError(describe_failure(error, base_model)) from error


def service_client(timeout: float):
    """A ServiceClient for `TINKER_BASE_URL` (or the hosted service) with `TINKER_API_KEY`."""
    tinker = sdk()
    try:
        return tinker.ServiceClient(timeout=timeout)
    except Exception as error:
        raise TinkerError(describe_failure(error)) from error


def check_base_model(client, base_model: str, timeout: float) -> None:
    """Refuse, in one line with suggestions, a base model the service does not list."""
    capabilities = call(lambda: client.get_server_capabilities(), timeout, retries=2)
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
    from concurrent.futures import Future

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
