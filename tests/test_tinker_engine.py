"""The Tinker engines without a server: the spec's `tinker` kinds, `relxfer plan` without a key,
`relxfer run` refusing up front in one line, the recipe mapping (learning rates equal the local
trainer's scheduler, LoRA groups, optimizer settings passed explicitly), one-line service errors,
and specs/full-tinker.json. The server-backed tests are in test_tinker_service.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from relxfer.cli import main
from relxfer.plan.cells import plan
from relxfer.spec.load import load_spec
from relxfer.spec.types import FinetuneSpec, TinkerEvaluateEngine, TrainingSpec
from tests.support.spec_files import write_spec
from tests.test_bad_input import run_cli

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
TINKER = {"kind": "tinker"}


def training_settings(partial: dict) -> TrainingSpec:
    """`finetune.training` with the schema's defaults, as a spec resolves it."""
    return FinetuneSpec.from_partial({"training": partial}).training


def smoke_with(engines: dict) -> dict:
    raw = json.loads((REPO / "specs" / "smoke.json").read_text())
    raw["models"][0]["engines"] = engines
    return raw


def test_tinker_kinds_fill_their_defaults_and_change_keys(tmp_path):
    local = plan(load_spec(write_spec(tmp_path, smoke_with({}), "local.json")))
    spec = load_spec(write_spec(tmp_path, smoke_with({"evaluate": TINKER, "finetune": TINKER}), "tinker.json"))
    engines = spec.models[0].engines.to_dict()
    assert engines["evaluate"] == {
        "kind": "tinker",
        "base_model": None,
        "max_in_flight": 32,
        "request_timeout_s": 600,
        "max_retries": 3,
    }
    assert engines["finetune"] == {"kind": "tinker", "base_model": None, "request_timeout_s": 600}
    tinker = plan(spec)
    assert len(tinker) == len(local) and not {c.key for c in tinker} & {c.key for c in local}
    # The service's model name is part of the result; timeouts are not.
    renamed = smoke_with(
        {"evaluate": {"kind": "tinker", "base_model": "x/y", "request_timeout_s": 5}, "finetune": TINKER}
    )
    keys = {c.run_name: c.key for c in plan(load_spec(write_spec(tmp_path, renamed, "renamed.json")))}
    for cell in tinker:
        assert (keys[cell.run_name] == cell.key) == (cell.kind == "finetune"), cell.run_name


def test_unknown_tinker_setting_is_bad_input(tmp_path):
    spec = write_spec(tmp_path, smoke_with({"evaluate": {"kind": "tinker", "api_key": "tml-x"}}))
    line = run_cli(tmp_path, ["validate", str(spec)])
    # (best_match reports the `local` branch's complaint here; the path is the right one)
    assert line.startswith(f"{spec}: /models/0/engines/evaluate")


def test_plan_needs_no_key_and_run_refuses_without_one(tmp_path, monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    spec = write_spec(tmp_path, smoke_with({"evaluate": TINKER, "finetune": TINKER}))
    result = CliRunner().invoke(main, ["plan", str(spec)], env={"TINKER_API_KEY": None})
    assert result.exit_code == 0, result.output
    assert "tinker" in result.output
    line = run_cli(tmp_path, ["run", str(spec)], env={"TINKER_API_KEY": None})
    assert line == (
        "model 'tiny''s evaluation runs on Tinker, but TINKER_API_KEY is not set: export "
        "TINKER_API_KEY=tml-... (and TINKER_BASE_URL for a service other than the hosted one)"
    )


def test_tinker_evaluation_of_a_local_finetune_is_refused(tmp_path):
    spec = write_spec(tmp_path, smoke_with({"evaluate": TINKER}))
    line = run_cli(tmp_path, ["run", str(spec)], env={"TINKER_API_KEY": "tml-not-used"})
    assert line == (
        "model 'tiny': the Tinker evaluation engine samples fine-tuned weights from Tinker only, but its "
        'fine-tune runs on \'local\'; set models[].engines.finetune to {"kind": "tinker"}'
    )


def test_target_modules_tinker_cannot_express_are_refused(tmp_path):
    raw = smoke_with({"finetune": TINKER})
    raw["finetune"]["lora"]["target_modules"] = ["q_proj", "v_proj"]
    line = run_cli(tmp_path, ["run", str(write_spec(tmp_path, raw))], env={"TINKER_API_KEY": "tml-not-used"})
    assert line == (
        "/finetune/lora/target_modules: Tinker trains the whole attention group; add k_proj, o_proj or use all-linear"
    )


def test_learning_rates_equal_the_local_trainers_scheduler():
    import torch
    from transformers import get_scheduler

    from relxfer.train import SCHEDULERS
    from relxfer.train.tinker_recipe import learning_rate

    for kind in ("linear", "cosine", "constant"):
        for steps, warmup_ratio in ((10, 0.0), (37, 0.1), (5, 0.5)):
            training = training_settings({"learning_rate": 3e-4, "lr_scheduler": kind, "warmup_ratio": warmup_ratio})
            optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
            scheduler = get_scheduler(
                SCHEDULERS[kind], optimizer, num_warmup_steps=round(warmup_ratio * steps), num_training_steps=steps
            )
            for step in range(1, steps + 1):  # the local trainer logs get_last_lr() before stepping
                assert learning_rate(step, steps, training) == pytest.approx(scheduler.get_last_lr()[0], abs=1e-15)
                optimizer.step()
                scheduler.step()


def test_lora_groups_and_optimizer_settings_are_explicit():
    tinker = pytest.importorskip("tinker", reason='the `test` extra: pip install -e ".[test]"')
    from relxfer.train.tinker_recipe import adam_params, lora_groups, not_applied

    assert lora_groups("all-linear") == {"train_attn": True, "train_mlp": True, "train_unembed": False}
    assert lora_groups(["gate_proj", "up_proj", "down_proj", "lm_head"]) == {
        "train_attn": False,
        "train_mlp": True,
        "train_unembed": True,
    }
    training = {"weight_decay": 0.01, "max_grad_norm": 1.0}
    params = adam_params(tinker.types, 2e-4, training_settings(training))
    assert (params.beta1, params.beta2, params.eps) == (0.9, 0.999, 1e-8)  # torch AdamW, not the SDK's 0.95 / 1e-12
    assert (params.learning_rate, params.weight_decay) == (2e-4, 0.01)
    if "grad_clip_norm" in tinker.types.AdamParams.model_fields:
        assert params.grad_clip_norm == 1.0
    recipe = {"method": "qlora", "lora": {"alpha": 16, "dropout": 0.05}, "training": training}
    assert not_applied(FinetuneSpec.from_partial(recipe), sdk_has_clipping=True) == (
        "lora.alpha=16 (Tinker fixes 32); lora.dropout=0.05 (Tinker has none); "
        "method=qlora (Tinker trains on its own precision, no 4-bit base)"
    )


def test_service_failures_are_one_line_without_the_key(monkeypatch):
    tinker = pytest.importorskip("tinker", reason='the `test` extra: pip install -e ".[test]"')
    import httpx

    from relxfer.services.tinker_client import TinkerError, call

    monkeypatch.setenv("TINKER_BASE_URL", "http://127.0.0.1:9")
    request = httpx.Request("POST", "http://127.0.0.1:9/api/v1/asample")
    cases = {
        401: "Tinker rejected the API key in TINKER_API_KEY (401 at http://127.0.0.1:9)",
        429: "Tinker quota or rate limit reached (429 at http://127.0.0.1:9); re-run later to resume",
        404: "Tinker does not know the requested model, run or checkpoint (base model 'x/y') (404 at http://127.0.0.1:9)",
    }
    for status, start in cases.items():
        error = tinker.APIStatusError(
            "tml-secret-should-not-matter", response=httpx.Response(status, request=request), body=None
        )
        error.status_code = status
        attempts = []

        def submit(attempts=attempts, error=error):
            attempts.append(1)
            raise error

        with pytest.raises(TinkerError) as caught:
            call(submit, timeout=1, retries=2, base_model="x/y", backoff=0)
        line = str(caught.value)
        assert line.startswith(start) and "\n" not in line
        assert len(attempts) == (3 if status == 429 else 1)  # only transient failures are tried again


def test_full_tinker_spec_runs_the_seven_models_on_tinker(monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    full = load_spec(REPO / "specs" / "full.json")
    spec = load_spec(REPO / "specs" / "full-tinker.json")
    assert [m.name for m in spec.models] == [m.name for m in full.models]
    for model in spec.models:
        assert model.engines.evaluate.kind == model.engines.finetune.kind == "tinker"
        assert isinstance(model.engines.evaluate, TinkerEvaluateEngine)
        assert model.engines.evaluate.base_model in TINKER_LINEUP
    assert len(plan(spec)) == len(plan(full))


# Base models Tinker's model lineup lists (docs: tinker-docs.thinkingmachines.ai/model-lineup).
TINKER_LINEUP = {
    "Qwen/Qwen3-4B-Instruct-2507",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-32B",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "deepseek-ai/DeepSeek-V3.1",
}
