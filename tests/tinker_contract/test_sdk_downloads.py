"""The adapter download against the real SDK's classes: signed URLs that expired or are about to,
a download that keeps failing, and every SDK call of a whole study (see test_sdk_contract.py for
how these tests run on both SDK lines). A local file server signs URLs as a bucket does."""

from __future__ import annotations

import json
import time

import pytest

from relxfer.evaluate.tinker_engine import open_sampling_client
from relxfer.services.tinker_client import TinkerError, check_base_model, service_client
from relxfer.train import tinker_export
from relxfer.train.tinker_trainer import STATE_FILE, train_on_service
from tests.tinker_contract.support import (
    ADAPTER,
    LINE_038,
    MULTI,
    PROMPTS,
    ROWS,
    SINGLE,
    SigningServer,
    adapter_archive,
    backend,
    finetune,
    stand_in_service,  # noqa: F401 - the `service` fixture
)

pytestmark = pytest.mark.integration


def test_an_expired_download_url_is_signed_again(service, tmp_path):
    server = SigningServer({**ADAPTER, "adapter.tar": adapter_archive()})
    signings = []

    def sign(names):
        signings.append(len(signings))
        return server.sign(names, valid_s=3600, stale=len(signings) == 1)  # the first URLs have expired

    service.urls = lambda path: sign(list(ADAPTER))
    service.archive_url = lambda run, checkpoint: (lambda u, e: (u["adapter.tar"], e))(*sign(["adapter.tar"]))
    try:
        client = service_client(5.0)
        training = service.training_client()
        sampler = "tinker://run-0/sampler_weights/relxfer-final"
        tinker_export.download_adapter(client, training, sampler, tmp_path / "raw", 5.0, backoff=0.0)
    finally:
        server.close()
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == ADAPTER
    assert len(signings) == 2 and server.rejected == 1
    if LINE_038:
        assert [c.arguments for c in service.calls("save_weights_external")] == [{"name": "relxfer-export"}]
        paths = [c.arguments["tinker_path"] for c in service.calls("get_external_weights_urls")]
        assert paths == ["tinker://run-0/external_weights/relxfer-export"] * 2
    else:
        asked = [c.arguments for c in service.calls("get_checkpoint_archive_url")]
        assert asked == [{"training_run_id": "run-0", "checkpoint_id": "sampler_weights/relxfer-final"}] * 2


def test_urls_about_to_expire_are_signed_again_before_a_late_download(tmp_path):
    server = SigningServer(ADAPTER, delay_s=1.5)  # the first file takes long enough for the URLs to age
    signings = []

    def sign():
        signings.append(time.time())
        return server.sign(list(ADAPTER), valid_s=tinker_export.EXPIRY_MARGIN_S + 1.0)

    try:
        tinker_export.download_signed(sign, tmp_path, timeout=10.0, backoff=0.0)
    finally:
        server.close()
    assert len(signings) == 2 and server.rejected == 0
    assert [sig for _, sig in server.served] == [1, 2]  # the second file with the fresh signature
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == ADAPTER


def test_a_download_that_keeps_failing_ends_in_one_line(tmp_path):
    server = SigningServer(ADAPTER)
    try:
        with pytest.raises(TinkerError) as failure:
            tinker_export.download_signed(
                lambda: server.sign(list(ADAPTER), 3600, stale=True), tmp_path, timeout=5.0, attempts=3, backoff=0.0
            )
    finally:
        server.close()
    assert server.rejected == 3 and "\n" not in str(failure.value)
    assert "failed 3 times, each time with freshly signed URLs" in str(failure.value) and "403" in str(failure.value)


def test_a_whole_study_makes_exactly_these_sdk_calls(service, tmp_path):
    """A fine-tune, its download and both evaluations through the stand-in: the set of SDK calls
    relxfer makes on this line, each checked against the real class on the way."""
    server = SigningServer(ADAPTER)
    service.urls = lambda path: server.sign(list(ADAPTER), 3600)
    tar = adapter_archive()
    server.files["adapter.tar"] = tar
    service.archive_url = lambda run, checkpoint: (lambda u, e: (u["adapter.tar"], e))(
        *server.sign(["adapter.tar"], 3600)
    )
    try:
        client = service_client(5.0)
        check_base_model(client, "toy/base", 5.0)
        spec = finetune(max_steps=2, checkpoint_every=1)
        train_on_service(  # saves the state of step 1
            client,
            ROWS,
            base_model="toy/base",
            finetune=spec,
            seed=0,
            out_dir=tmp_path,
            config_hash="c",
            timeout=5.0,
            on_step=lambda *a: None,
        )
        # A re-run after a kill: the saved state of step 1 is restored with its optimizer.
        (tmp_path / "checkpoints" / "step-1").mkdir(parents=True, exist_ok=True)
        state = {
            "config_hash": "c2",
            "checkpoints": [{"step": 1, "path": "tinker://run-0/weights/relxfer-step-1", "loss_history": [1.0]}],
        }
        (tmp_path / "checkpoints" / "step-1" / STATE_FILE).write_text(json.dumps(state))
        run = train_on_service(
            client,
            ROWS,
            base_model="toy/base",
            finetune=spec,
            seed=0,
            out_dir=tmp_path,
            config_hash="c2",
            timeout=5.0,
            on_step=lambda *a: None,
        )
        tinker_export.download_adapter(client, run.training, run.sampler_path, tmp_path / "raw", 5.0, backoff=0.0)
        for path in (None, run.sampler_path):
            scoring = backend(open_sampling_client(client, 5.0, "toy/base", path))
            scoring.label_logprobs(PROMPTS, SINGLE)
            scoring.label_logprobs(PROMPTS, MULTI)
            scoring.generate(PROMPTS, max_new_tokens=3)
    finally:
        server.close()
    calls = {
        ("ServiceClient", "__init__"),
        ("ServiceClient", "create_sampling_client"),
        ("ServiceClient", "create_lora_training_client"),
        ("ServiceClient", "create_training_client_from_state_with_optimizer"),
        ("SamplingClient", "sample"),
        ("SamplingClient", "compute_logprobs"),
        ("TrainingClient", "forward_backward"),
        ("TrainingClient", "optim_step"),
        ("TrainingClient", "save_state"),
        ("TrainingClient", "save_weights_for_sampler"),
    }
    if LINE_038:
        calls |= {
            ("RestClient", "__init__"),
            ("RestClient", "get_server_capabilities"),
            ("TrainingClient", "save_weights_external"),
            ("RestClient", "get_external_weights_urls"),
        }
    else:
        calls |= {
            ("ServiceClient", "get_server_capabilities"),
            ("ServiceClient", "create_rest_client"),
            ("RestClient", "get_checkpoint_archive_url"),
        }
    assert {(c.cls, c.method) for c in service.log} == calls
