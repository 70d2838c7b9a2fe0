"""What the contract tests share: the stand-in service reached through `tinker.ServiceClient` and
`tinker.RestClient`, a real tokenizer over the stand-in model's ids, training rows and settings,
and a file server that signs URLs the way a bucket does."""

from __future__ import annotations

import datetime
import http.server
import io
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tinker

from relxfer.evaluate.tinker_engine import TinkerBackend
from relxfer.services.tinker_client import service_client
from relxfer.spec.types import FinetuneSpec, TinkerEvaluateEngine
from relxfer.train.tinker_trainer import train_on_service
from tests.tinker_contract.fake_sdk import VOCAB, Service, constructor, logprob

LINE_038 = hasattr(tinker.TrainingClient, "save_weights_external")  # the hosted service's line
EOS = VOCAB - 1


@pytest.fixture(name="service")
def stand_in_service(monkeypatch):
    """The stand-in service, reached the way relxfer reaches the real one: `tinker.ServiceClient`
    and `tinker.RestClient` build stand-ins after checking their constructors' arguments."""
    service = Service()
    monkeypatch.setattr(tinker, "ServiceClient", replacement(tinker.ServiceClient, service.service_client, service))
    if hasattr(tinker, "RestClient"):
        monkeypatch.setattr(tinker, "RestClient", replacement(tinker.RestClient, service.rest_client, service))
    monkeypatch.setenv("TINKER_API_KEY", "tml-contract-test")
    yield service
    service.released.set()  # calls a test left blocked return


def replacement(real: type, make, service: Service) -> type:
    """A class standing for `real`: its `__init__` is the real one (feature detection reads its
    signature), constructing it checks the arguments and returns the stand-in."""
    build = constructor(real, lambda **arguments: make(), service.log)

    class Replacement:
        def __new__(cls, *args, **kwargs):
            return build(*args, **kwargs)

    Replacement.__init__ = real.__init__  # type: ignore[misc]
    Replacement.__name__ = real.__name__
    for name in dir(real):  # class-level feature detection: methods as the real class has them
        if not name.startswith("_"):
            setattr(Replacement, name, getattr(real, name))
    return Replacement


def tokenizer():
    """A real Hugging Face fast tokenizer over the stand-in model's ids: `t0` ... `t38` and EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {"</s>": EOS}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="t0")


def backend(sampling, **settings) -> TinkerBackend:
    config = TinkerEvaluateEngine.from_partial({"request_timeout_s": 5, **settings})
    return TinkerBackend(sampling, tokenizer(), config, name="toy", base_model="toy/base")


def expected_scores(prompts, continuations) -> np.ndarray:
    """What relxfer must report: the sum of the label tokens' log-probabilities after the prompt."""
    out = np.zeros((len(prompts), len(continuations[0])))
    for i, (prompt, labels) in enumerate(zip(prompts, continuations)):
        for j, label in enumerate(labels):
            scored = [logprob(list(prompt) + list(label[:k]), t) for k, t in enumerate(label)]
            out[i, j] = float(np.sum(np.asarray(scored, dtype=np.float64)))
    return out


PROMPTS = [[1, 5, 9, 2], [3, 3], [7, 1, 4, 4, 8, 2, 6]]
SINGLE = [[[11], [12], [13], [14]]] * len(PROMPTS)
MULTI = [[[11, 20], [12], [13, 5, 6], [14]]] * len(PROMPTS)


ROWS = [([1, 2, 3, 4, 5, 6, 7], 1), ([8, 9, 10], 2), ([11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 5), ([4, 4], 1)]


def finetune(**training) -> FinetuneSpec:
    settings = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant"}
    return FinetuneSpec.from_partial({"method": "lora", "lora": {"r": 4}, "training": settings | training})


def expected_loss(batch) -> float:
    """The step's mean completion-token loss: every completion token weighs the same."""
    losses = [-logprob(ids[: t + 1], ids[t + 1]) for ids, n in batch for t in range(len(ids) - 1 - n, len(ids) - 1)]
    return float(np.mean(losses))


def run_training(service, out_dir: Path, spec: FinetuneSpec, steps_seen: list, timeout: float = 5.0):
    return train_on_service(
        service_client(timeout),
        ROWS,
        base_model="toy/base",
        finetune=spec,
        seed=0,
        out_dir=out_dir,
        config_hash="contract",
        timeout=timeout,
        on_step=lambda step, metrics: steps_seen.append((step, metrics)),
    )


class SigningServer:
    """A file server on 127.0.0.1 that accepts only URLs of the latest signature before their
    expiry (`?sig=<n>&exp=<unix time>`), as a bucket's signed URLs behave: 403 otherwise."""

    def __init__(self, files: dict[str, bytes], delay_s: float = 0.0):
        self.files, self.delay_s = files, delay_s
        self.signature, self.rejected, self.served = 0, 0, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                path, _, query = self.path.partition("?")
                params = dict(p.split("=") for p in query.split("&") if p)
                name = path.lstrip("/")
                if int(params.get("sig", -1)) != outer.signature or float(params["exp"]) < time.time():
                    outer.rejected += 1
                    self.send_error(403, "Request has expired")
                    return
                time.sleep(outer.delay_s)
                outer.served.append((name, outer.signature))
                body = outer.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def sign(self, names, valid_s: float, stale: bool = False) -> tuple[dict[str, str], datetime.datetime]:
        """URLs for `names`; `stale`: signed under a signature the server no longer accepts."""
        if not stale:
            self.signature += 1
        expires = time.time() + valid_s
        port = self.httpd.server_address[1]
        urls = {n: f"http://127.0.0.1:{port}/{n}?sig={self.signature - stale}&exp={expires}" for n in names}
        return urls, datetime.datetime.fromtimestamp(expires, datetime.timezone.utc)

    def close(self):
        self.httpd.shutdown()


ADAPTER = {"adapter_model.safetensors": b"weights" * 1000, "adapter_config.json": b'{"r": 4}'}


def adapter_archive() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in ADAPTER.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
