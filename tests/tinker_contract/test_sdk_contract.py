"""relxfer's Tinker engines against the real classes of the installed Tinker SDK, without a server.

Runs twice: in the main environment against tinker 0.16.1 (the line SkyRL tx speaks, also
tested end to end in test_tinker_service.py), and in its own environment against tinker 0.38.0
(the line the hosted service speaks; tests/test_tinker_contract.py builds it and runs this file
there, with no torch installed). Every SDK call relxfer makes goes through `fake_sdk.Stand`,
which refuses a method the SDK lacks or deprecates and arguments that do not bind to the real
signature or match its annotations; the answers are the SDK's own response types from a
deterministic stand-in model, so every number relxfer reports is checked against one computed
here without relxfer.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tinker

from relxfer.evaluate.tinker_engine import (
    FALLEN_BACK,
    PER_LABEL,
    TARGETED,
    open_sampling_client,
    targeted_scoring_supported,
)
from relxfer.services import tinker_client
from relxfer.services.tinker_client import TinkerError, check_base_model, check_environment, service_client
from relxfer.train.tinker_trainer import STATE_FILE
from tests.tinker_contract.fake_sdk import (
    SAMPLING_CLIENT,
    SERVICE_CLIENT,
    TRAINING_CLIENT,
    ContractViolation,
    check_call,
    greedy,
)
from tests.tinker_contract.support import (
    EOS,
    LINE_038,
    MULTI,
    PROMPTS,
    ROWS,
    SINGLE,
    backend,
    expected_loss,
    expected_scores,
    finetune,
    run_training,
    stand_in_service,  # noqa: F401 - the `service` fixture
    tokenizer,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_the_sdk_line_under_test():
    expected = os.environ.get("RELXFER_EXPECT_TINKER")
    if expected:
        assert tinker.__version__ == expected
    assert tinker.__version__ in ("0.16.1", "0.38.0"), tinker.__version__
    assert LINE_038 == (tinker.__version__ == "0.38.0")
    if LINE_038:  # relxfer's SDK-facing modules run where torch is not installed
        assert "torch" not in sys.modules


# -- clients -----------------------------------------------------------------------------------


def test_service_client_gets_only_arguments_the_sdk_honours(service):
    client = service_client(timeout=7.0)
    (construction,) = service.calls("__init__")
    if LINE_038:  # named options only: `timeout` would be ignored with a FutureWarning
        assert construction.arguments == {}
    else:  # the 0.16 line hands extra keywords to its HTTP client, where `timeout` bounds a request
        assert construction.arguments == {"kwargs": {"timeout": 7.0}}
    assert client.real is SERVICE_CLIENT


def test_the_real_service_client_takes_relxfers_arguments_without_a_warning(monkeypatch):
    if not LINE_038:
        pytest.skip("the 0.16 line opens a session on construction: needs a server (test_tinker_service.py)")
    monkeypatch.setenv("TINKER_API_KEY", "tml-contract-test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the SDK's FutureWarning for ignored arguments fails the test
        client = service_client(timeout=7.0)
    assert type(client) is tinker.ServiceClient


def test_the_call_check_refuses_what_the_sdk_would_not_take():
    ignored = "would land in" if LINE_038 else "unexpected keyword argument 'nonsense'"
    with pytest.raises(ContractViolation, match=ignored):
        check_call(SERVICE_CLIENT, "__init__", (), {"timeout": 1.0} if LINE_038 else {"nonsense": 1})
    with pytest.raises(ContractViolation, match="is not a"):
        check_call(SAMPLING_CLIENT, "sample", ([1, 2],), {"num_samples": 1, "sampling_params": None})
    with pytest.raises(ContractViolation):
        check_call(TRAINING_CLIENT, "forward_backward", ([], "mean_squared_error"), {})
    if LINE_038:
        with pytest.raises(ContractViolation, match="deprecated"):
            check_call(SERVICE_CLIENT, "create_rest_client", (), {})


def test_base_model_check_asks_the_rest_client_where_the_sdk_has_one(service):
    client = service_client(timeout=5.0)
    check_base_model(client, "toy/base", timeout=5.0)
    with pytest.raises(TinkerError, match=r"does not serve base model 'toy/bsae'; did you mean toy/base\?"):
        check_base_model(client, "toy/bsae", timeout=5.0)
    asked = {(c.cls, c.method) for c in service.log if c.method == "get_server_capabilities"}
    assert (
        asked == {("RestClient", "get_server_capabilities")}
        if LINE_038
        else {("ServiceClient", "get_server_capabilities")}
    )


def test_sampling_clients_for_the_base_model_and_for_trained_weights(service):
    client = service_client(timeout=5.0)
    open_sampling_client(client, 5.0, "toy/base")
    open_sampling_client(client, 5.0, "toy/base", "tinker://run-0/sampler_weights/relxfer-final")
    assert [c.arguments for c in service.calls("create_sampling_client")] == [
        {"base_model": "toy/base"},
        {"model_path": "tinker://run-0/sampler_weights/relxfer-final"},
    ]


# -- evaluation --------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [SINGLE, MULTI], ids=["single-token", "multi-token"])
def test_label_scores_are_the_models_log_probabilities(service, labels):
    scoring = backend(service.sampling_client())
    scores = scoring.label_logprobs(PROMPTS, labels)
    np.testing.assert_array_equal(scores, expected_scores(PROMPTS, labels))
    targeted = LINE_038 and labels is SINGLE
    assert targeted_scoring_supported() == LINE_038
    assert scoring.scoring == (TARGETED if targeted_scoring_supported() else PER_LABEL)
    assert len(service.calls("sample")) == (len(PROMPTS) if targeted else 0)
    n_labels = sum(len(c) for c in labels)
    assert len(service.calls("compute_logprobs")) == (0 if targeted else n_labels)
    if not targeted and LINE_038:  # only the label's positions are asked for
        lasts = [c.arguments["prompt_logprobs_last_n"] for c in service.calls("compute_logprobs")]
        assert lasts == [len(label) for labels_of_prompt in labels for label in labels_of_prompt]


@pytest.mark.skipif(not targeted_scoring_supported(), reason="the SDK has no target_prompt_logprobs (0.16 line)")
def test_a_service_that_leaves_target_prompt_logprobs_empty_is_scored_per_label(service):
    service.fill_targets = False
    scoring = backend(service.sampling_client())
    np.testing.assert_array_equal(scoring.label_logprobs(PROMPTS, SINGLE), expected_scores(PROMPTS, SINGLE))
    assert scoring.scoring == FALLEN_BACK
    assert len(service.calls("sample")) == len(PROMPTS)  # asked once, then per label
    assert len(service.calls("compute_logprobs")) == 4 * len(PROMPTS)
    service.log.clear()  # later prompts go per label straight away
    np.testing.assert_array_equal(
        scoring.label_logprobs(PROMPTS[:1], SINGLE[:1]), expected_scores(PROMPTS[:1], SINGLE[:1])
    )
    assert not service.calls("sample") and len(service.calls("compute_logprobs")) == 4


def test_generation_is_greedy_and_cut_at_eos(service):
    generating = backend(service.sampling_client())
    texts = generating.generate(PROMPTS, max_new_tokens=6)
    toks = tokenizer()
    for prompt, text in zip(PROMPTS, texts):
        tokens, _ = greedy(prompt, 6, {EOS})
        tokens = tokens[: tokens.index(EOS)] if EOS in tokens else tokens
        assert text == toks.decode(tokens, skip_special_tokens=True)
    for c in service.calls("sample"):
        params = c.arguments["sampling_params"]
        assert (params.temperature, params.max_tokens, params.stop) == (0.0, 6, [EOS])


def test_a_sampling_request_that_never_resolves_ends_the_cell_in_one_line(service):
    service.lose = {"sample", "compute_logprobs"}
    scoring = backend(service.sampling_client(), request_timeout_s=0.2, max_retries=0)
    started = time.monotonic()
    with pytest.raises(TinkerError) as failure:
        scoring.label_logprobs(PROMPTS, SINGLE)
    assert time.monotonic() - started < 5
    assert "\n" not in str(failure.value) and str(failure.value).startswith("Tinker did not answer in time")


def test_a_client_creation_that_never_returns_is_bounded(service):
    service.block = {"create_sampling_client"}
    client = service_client(timeout=5.0)
    started = time.monotonic()
    with pytest.raises(TinkerError, match="did not answer in time"):
        tinker_client.call(lambda: client.create_sampling_client(base_model="toy/base"), 0.3)
    assert time.monotonic() - started < 3


# -- ending a session ----------------------------------------------------------------------------


def ended(service) -> list[tuple[str, str]]:
    return [(c.arguments["status"], c.arguments["detail"]) for c in service.calls("close")]


def test_a_session_is_closed_with_how_it_ended_where_the_sdk_can(service):
    client = service_client(timeout=5.0)
    tinker_client.close_session(client, 5.0, "done")
    try:
        raise ValueError("a cell failed")
    except ValueError:
        tinker_client.close_session(client, 5.0, "failed")
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        tinker_client.close_session(client, 5.0, "stopped")
    assert tinker_client.closes_sessions() == LINE_038
    # The 0.16 line has no way to end a session but the process's exit.
    assert ended(service) == (
        [("success", "done"), ("errored", "failed"), ("interrupted", "stopped")] if LINE_038 else []
    )


def test_a_close_the_service_never_answers_neither_hangs_nor_raises(service, caplog):
    if not LINE_038:
        pytest.skip("the 0.16 line has no session close")
    service.lose = {"close"}
    client = service_client(timeout=5.0)
    started = time.monotonic()
    tinker_client.close_session(client, 0.3, "done")
    assert time.monotonic() - started < 3
    assert "the Tinker session did not close cleanly: Tinker did not answer in time" in caplog.text


def test_the_evaluation_engine_ends_its_session_when_it_is_closed(service, tmp_path):
    from relxfer.evaluate.tinker_engine import TinkerEngine
    from relxfer.spec.engines import EngineContext
    from relxfer.spec.load import load_spec

    spec = load_spec(REPO / "specs" / "full-tinker.json")
    model = spec.models[0]
    engine = TinkerEngine(model.engines.evaluate, EngineContext(model, spec, tmp_path, print, False))
    engine._client = service_client(timeout=5.0)  # what the first backend opens
    try:
        raise ValueError("its last cell failed")
    except ValueError:
        engine.close()
    engine.close()  # idempotent: nothing left to close
    assert ended(service) == ([("errored", f"relxfer: {model.name}'s evaluation")] if LINE_038 else [])


def test_training_sends_the_recipe_and_reports_the_mean_completion_loss(service, tmp_path):
    from relxfer.train.tinker_recipe import schedule_length, step_examples

    spec = finetune(checkpoint_every=2, weight_decay=0.01, max_grad_norm=1.0)
    seen: list = []
    run = run_training(service, tmp_path, spec, seen)
    assert run.steps == 3 and run.start_step == 0
    (create,) = service.calls("create_lora_training_client")
    assert create.arguments == {
        "base_model": "toy/base",
        "rank": 4,
        "train_attn": True,
        "train_mlp": True,
        "train_unembed": False,
        "seed": 0,
    }
    total_micro = schedule_length(len(ROWS), spec.training)[1]
    for step, call in enumerate(service.calls("forward_backward"), start=1):
        assert call.arguments["loss_fn"] == "cross_entropy"
        batch = [ROWS[i] for i in step_examples(len(ROWS), spec.training, 0, step, total_micro)]
        weights = np.concatenate([d.loss_fn_inputs["weights"].to_numpy() for d in call.arguments["data"]])
        assert weights.sum() == pytest.approx(1.0, abs=1e-6)
        assert run.loss_history[step - 1] == pytest.approx(expected_loss(batch), rel=1e-6)
    adam = [
        next(iter(c.arguments.values())) for c in service.calls("optim_step")
    ]  # optim_params (0.38), adam_params (0.16)
    assert len(adam) == 3 and {(a.beta1, a.beta2, a.eps, a.weight_decay) for a in adam} == {(0.9, 0.999, 1e-8, 0.01)}
    if "grad_clip_norm" in type(adam[0]).model_fields:
        assert adam[0].grad_clip_norm == 1.0
    assert [c.arguments["name"] for c in service.calls("save_state")] == ["relxfer-step-2"]
    state = json.loads((tmp_path / "checkpoints" / "step-2" / STATE_FILE).read_text())
    assert state["checkpoints"][0]["path"] == "tinker://run-0/weights/relxfer-step-2"
    assert run.sampler_path == "tinker://run-0/sampler_weights/relxfer-final"
    assert [s for s, m in seen if "train_loss" in m] == [1, 2, 3]

    # A re-run resumes from the saved state with the optimizer's, and trains step 3 only.
    service.log.clear()
    resumed = run_training(service, tmp_path, spec, seen := [])
    (restore,) = service.calls("create_training_client_from_state_with_optimizer")
    assert restore.arguments == {"path": "tinker://run-0/weights/relxfer-step-2"}
    assert resumed.start_step == 2 and len(service.calls("forward_backward")) == 1
    assert resumed.loss_history == pytest.approx(run.loss_history, rel=1e-6)


def test_a_training_step_that_never_resolves_ends_the_cell_in_one_line(service, tmp_path):
    service.lose = {"forward_backward"}
    started = time.monotonic()
    with pytest.raises(TinkerError) as failure:
        run_training(service, tmp_path, finetune(), [], timeout=0.3)
    assert time.monotonic() - started < 5
    assert "\n" not in str(failure.value) and "did not answer in time" in str(failure.value)


def test_a_training_client_creation_that_hangs_is_bounded(service, tmp_path):
    service.block = {"create_lora_training_client"}
    with pytest.raises(TinkerError, match="did not answer in time"):
        run_training(service, tmp_path, finetune(), [], timeout=0.3)


# -- credentials -------------------------------------------------------------------------------


def test_credentials_stored_by_tinker_auth_login_are_accepted_where_the_sdk_reads_them(monkeypatch, tmp_path):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(TinkerError) as missing:
        check_environment("model 'toy''s fine-tune")
    if not LINE_038:
        assert str(missing.value).startswith("model 'toy''s fine-tune runs on Tinker, but TINKER_API_KEY is not set")
        return
    assert "run `tinker auth login`" in str(missing.value)
    from tinker.lib.credentials import JsonCredentialStore, ManualKey, default_credentials_path

    store = JsonCredentialStore(default_credentials_path())
    store.add_key("k1", ManualKey(key="tml-stored", name="relxfer test"))
    with pytest.raises(TinkerError):  # stored, but not the default
        check_environment("model 'toy''s fine-tune")
    store.set_default("k1")
    check_environment("model 'toy''s fine-tune")
    default_credentials_path().write_text("{not json")
    with pytest.raises(TinkerError, match="credentials.json: cannot read the Tinker credentials"):
        check_environment("model 'toy''s fine-tune")
    monkeypatch.setenv("TINKER_CREDENTIAL_CMD", "echo tml-from-command")
    check_environment("model 'toy''s fine-tune")
