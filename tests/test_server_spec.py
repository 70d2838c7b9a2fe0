"""Server engines in the spec (no server needed): the schema's `vllm` and `openai` branches with
their defaults, one-line errors, cell keys that carry what changes results (engine kind, dtype;
not the URL, key, request settings or parallelism; no 4-bit settings a server never loads), and
the launch command line relxfer builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from relxfer.errors import SpecError
from relxfer.plan.cells import plan
from relxfer.services.vllm_launch import LaunchError, lora_rank_limit, server_argv
from relxfer.spec.load import load_spec
from relxfer.spec.types import ModelSpec, VllmLaunch
from tests.test_plan import keys, load_variant

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
LAUNCH = {"kind": "vllm", "launch": {"tensor_parallel_size": 8, "dtype": "bfloat16"}}
RUNNING = {"kind": "vllm", "base_url": "http://10.0.0.5:8000/v1", "dtype": "bfloat16"}


def load(tmp_path: Path, engine: dict | None, edit=None):
    """The smoke spec with `engine` as the model's evaluation engine (and `edit` applied)."""

    def change(raw):
        if engine is not None:
            raw["models"][0]["engines"] = {"evaluate": engine}
        if edit:
            edit(raw)

    return load_variant(tmp_path, f"spec-{len(list(tmp_path.iterdir()))}", change)


def evaluation_keys(spec) -> dict[str, str]:
    return {cell.run_name: cell.key for cell in plan(spec) if cell.kind == "evaluate"}


def test_defaults_are_filled_in_the_matching_branch(tmp_path):
    """...and the filled entry is valid too (a library call completes and validates it again)."""
    model = load(tmp_path, LAUNCH).models[0]
    assert ModelSpec.from_partial(model.to_dict()) == model
    launched = model.engines.evaluate.to_dict()
    assert launched["launch"] == {
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 1,
        "dtype": "bfloat16",
        "max_model_len": None,
        "gpu_memory_utilization": 0.9,
        "max_lora_rank": None,
        "max_loras": 1,
        "extra_args": [],
        "startup_timeout_s": 1800,
        "port": None,
    }
    assert launched["scoring"] == "auto" and "base_url" not in launched
    assert launched["requests"] == {
        "max_in_flight": 32,
        "timeout_s": 600,
        "max_retries": 4,
        "serial_prompt_logprobs": None,
    }
    running = load(
        tmp_path, {"kind": "openai", "base_url": "http://127.0.0.1:30000/v1", "api_key_env": "SGLANG_KEY"}
    ).models[0]
    assert (
        ModelSpec.from_partial(running.to_dict()) == running
        and ModelSpec.from_partial(load(tmp_path, RUNNING).models[0].to_dict()).engines.evaluate.dtype == "bfloat16"
    )
    assert running.engines.evaluate.dtype is None and running.engines.evaluate.api_key_env == "SGLANG_KEY"


@pytest.mark.parametrize(
    "engine, message",
    [
        (
            {"kind": "vllm", "launch": {"tensor_parallel_sise": 8}},
            "/models/0/engines/evaluate/launch: unknown key 'tensor_parallel_sise'; did you mean tensor_parallel_size",
        ),
        (
            {"kind": "vllm", "base_url": "127.0.0.1:8000"},
            "/models/0/engines/evaluate/base_url: '127.0.0.1:8000' does not match '^https?://'",
        ),
        (
            {"kind": "vllm", "launch": {}, "base_url": "http://127.0.0.1:8000/v1"},
            "/models/0/engines/evaluate: give 'launch' or 'base_url', not both",
        ),
        (
            {"kind": "vllm", "launch": {}, "dtype": "fp8"},
            "/models/0/engines/evaluate/dtype: not used here: A launched server's dtype is `launch.dtype`.",
        ),
        ({"kind": "vllm"}, "/models/0/engines/evaluate: needs 'launch' or 'base_url'"),
        ({"kind": "openai"}, "/models/0/engines/evaluate: 'base_url' is a required property"),
        (
            {"kind": "vllm", "base_url": "http://h:1/v1", "api_key_env": "not a name"},
            "/models/0/engines/evaluate/api_key_env: 'not a name' does not match",
        ),
    ],
)
def test_bad_engine_entries_are_one_line_errors(tmp_path, engine, message):
    with pytest.raises(SpecError) as error:
        load(tmp_path, engine)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_keys_carry_kind_and_dtype_but_not_url_key_requests_or_parallelism(tmp_path):
    running = evaluation_keys(load(tmp_path, RUNNING))
    assert (
        evaluation_keys(
            load(
                tmp_path,
                RUNNING
                | {
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key_env": "KEY",
                    "requests": {"max_in_flight": 4},
                    "max_lora_rank": 64,
                },
            )
        )
        == running
    )
    assert set(evaluation_keys(load(tmp_path, RUNNING | {"dtype": "fp8"})).values()).isdisjoint(running.values())
    assert set(evaluation_keys(load(tmp_path, RUNNING | {"kind": "openai"})).values()).isdisjoint(running.values())
    launched = evaluation_keys(load(tmp_path, LAUNCH))
    assert (
        evaluation_keys(
            load(
                tmp_path,
                {
                    "kind": "vllm",
                    "launch": {
                        "tensor_parallel_size": 4,
                        "pipeline_parallel_size": 2,
                        "dtype": "bfloat16",
                        "extra_args": ["--seed", "1"],
                    },
                },
            )
        )
        == launched
    )
    assert set(evaluation_keys(load(tmp_path, {"kind": "vllm", "launch": {"dtype": "float16"}})).values()).isdisjoint(
        launched.values()
    )
    local = keys(load(tmp_path, None))
    assert set(launched.values()).isdisjoint(local.values())
    # The fine-tune runs on the local trainer either way: its key does not move.
    assert keys(load(tmp_path, LAUNCH))["finetune/tiny/seed0"] == local["finetune/tiny/seed0"]


def test_a_server_engine_keys_no_4bit_settings_it_never_loads(tmp_path):
    """The smoke spec fine-tunes with QLoRA, so local evaluations load a 4-bit base and their
    keys change with its settings; a server runs the checkpoint as it is."""

    def nf4_to_fp4(raw):
        raw["finetune"]["quantization"]["quant_type"] = "fp4"

    def baseline(spec):
        return {k: v for k, v in keys(spec).items() if "/baseline/" in k}

    assert baseline(load(tmp_path, None)) != baseline(load(tmp_path, None, nf4_to_fp4))
    assert baseline(load(tmp_path, LAUNCH)) == baseline(load(tmp_path, LAUNCH, nf4_to_fp4))


def test_launch_argv_is_a_list_from_the_spec():
    launch = load_spec(REPO / "specs" / "full.json").model("deepseek-v3.1").engines.evaluate.launch
    argv = server_argv(
        "/py", "deepseek-ai/DeepSeek-V3.1", "deepseek-v3.1", 8123, launch, lora_rank_limit(None, 16), False
    )
    assert argv[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    pairs = dict(zip(argv[3::2], argv[4::2]))
    assert {
        k: pairs[k] for k in ("--model", "--host", "--port", "--tensor-parallel-size", "--dtype", "--max-model-len")
    } == {
        "--model": "deepseek-ai/DeepSeek-V3.1",
        "--host": "127.0.0.1",
        "--port": "8123",
        "--tensor-parallel-size": "8",
        "--dtype": "bfloat16",
        "--max-model-len": "8192",
    }
    assert argv[argv.index("--enable-lora") :][:5] == ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "1"]
    assert lora_rank_limit(None, 24) == 32 and lora_rank_limit(64, 16) == 64 and lora_rank_limit(None, None) is None
    with pytest.raises(LaunchError, match="--trust-remote-code is set by relxfer"):
        server_argv("/py", "m", "m", 1, VllmLaunch.from_partial({"extra_args": ["--trust-remote-code"]}), None, False)


def test_launch_without_vllm_installed_fails_before_any_run(tmp_path, monkeypatch):
    import sys

    from relxfer.errors import RelxferError
    from relxfer.spec.engines import EngineContext, evaluation_engine

    monkeypatch.setenv("RELXFER_VLLM_PYTHON", sys.executable)  # the test environment has no vLLM
    spec = load(tmp_path, LAUNCH)
    engine = evaluation_engine(EngineContext(spec.models[0], spec, tmp_path))
    with pytest.raises(
        RelxferError,
        match=rf"^model 'tiny' is evaluated on a vLLM server relxfer launches, but {sys.executable} "
        r"cannot import vllm: pip install vllm there, or set RELXFER_VLLM_PYTHON",
    ):
        engine.check()
