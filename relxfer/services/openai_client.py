"""HTTP to an OpenAI-compatible server (vLLM, SGLang, llama.cpp, a hosted endpoint): JSON posts
with per-request timeouts and bounded retries, and many requests in flight at once.

Retried: connection errors, timeouts, HTTP 429 and 5xx, with exponential backoff (0.5 s, 1 s,
2 s, ... capped at 8 s), unless the caller knows the server is gone (`give_up`). Anything else (a 4xx: the server refuses the request itself) fails at
once. Every failure is one `ServerError` line naming the server and what went wrong; the API key
goes into the Authorization header only and is never part of a message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

import requests
from tqdm.auto import tqdm

from relxfer.errors import RelxferError

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUS = {429, 500, 502, 503, 504}


class ServerError(RelxferError):
    """The model server failed a request (after retries where retrying made sense)."""

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


class OpenAIClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 4,
        max_in_flight: int = 32,
        backoff: float = 0.5,
        give_up: Callable[[], bool] = lambda: False,
    ):
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_in_flight = max(1, int(max_in_flight))
        self.backoff = float(backoff)
        # Asked before each retry: True stops retrying (e.g. the server's process has exited).
        self.give_up = give_up
        self._local = threading.local()  # one keep-alive session per thread

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIClient({self.base_url!r})"

    @property
    def server_root(self) -> str:
        """The server's root URL (vLLM serves /health, /version and /v1/load_lora_adapter beside /v1)."""
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def request(
        self,
        method: str,
        path: str,
        payload: dict | None = None,
        *,
        root: bool = False,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> dict | str:
        """JSON (or text) of `method path` relative to the API base (`root`: the server root).
        Retries connection errors, timeouts, 429 and 5xx; raises ServerError otherwise."""
        url = (self.server_root if root else self.base_url) + path
        retries = self.max_retries if retries is None else retries
        timeout = self.timeout if timeout is None else timeout
        for attempt in range(retries + 1):
            try:
                response = self._session().request(method, url, json=payload, headers=self._headers, timeout=timeout)
            except requests.Timeout:
                problem, status, body = f"no answer within {timeout:g} s", None, ""
            except requests.RequestException as e:
                problem, status, body = f"cannot connect ({_reason(e)})", None, ""
            else:
                if response.ok:
                    try:
                        return response.json()
                    except ValueError:
                        return response.text
                status, body = response.status_code, response.text
                problem = f"HTTP {status}: {one_line(_error_message(body))}"
                if status not in RETRY_STATUS:
                    break
            if attempt < retries:
                if status is None and self.give_up():
                    break
                time.sleep(min(8.0, self.backoff * 2**attempt))
        tries = f" after {retries + 1} tries" if retries and (status is None or status in RETRY_STATUS) else ""
        raise ServerError(f"model server {self.base_url}: {method} {path}: {problem}{tries}", status, body)

    def post(self, path: str, payload: dict, **kwargs) -> dict | str:
        return self.request("POST", path, payload, **kwargs)

    def get(self, path: str, **kwargs) -> dict | str:
        return self.request("GET", path, **kwargs)

    def map(self, fn: Callable[[T], R], inputs: Sequence[T], progress: bool = False, desc: str = "requests") -> list[R]:
        """[fn(x) for x in inputs] with up to `max_in_flight` calls at once, in input order. The
        first failure cancels what has not started and is raised once the calls in flight end."""
        if len(inputs) <= 1 or self.max_in_flight == 1:
            return [fn(x) for x in _progress(inputs, progress, desc)]
        out: list = [None] * len(inputs)
        with (
            ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="relxfer-http") as pool,
            tqdm(total=len(inputs), desc=desc, disable=not progress) as bar,
        ):
            pending = set()
            index = {}
            queue = iter(enumerate(inputs))
            # Submit lazily: a bounded window keeps memory flat and makes cancelling cheap.
            for i, x in _take(queue, 2 * self.max_in_flight):
                future = pool.submit(fn, x)
                index[future] = i
                pending.add(future)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    error = future.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        raise error
                    out[index.pop(future)] = future.result()
                    bar.update(1)
                for i, x in _take(queue, len(done)):
                    future = pool.submit(fn, x)
                    index[future] = i
                    pending.add(future)
        return out


def _take(iterator: Iterator[T], n: int) -> Iterator[T]:
    for _ in range(n):
        try:
            yield next(iterator)
        except StopIteration:
            return


def _progress(inputs, progress: bool, desc: str):
    return tqdm(inputs, desc=desc, disable=not progress)


def _reason(error: Exception) -> str:
    """The innermost reason of a requests error ('[Errno 111] Connection refused'), one line."""
    text = str(error)
    for marker in ("[Errno", "Read timed out", "RemoteDisconnected", "Connection aborted"):
        at = text.find(marker)
        if at != -1:
            return one_line(text[at:].rstrip("')\""), 120)
    return one_line(text, 120)


def _error_message(body: str) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}} or {"message": ...})."""
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "detail" in data:
            return str(data["detail"])
    return body
