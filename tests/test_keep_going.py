"""A failing cell, for real, on the local executor: a study of two models where one model's
weights are corrupt. Its fine-tune and baselines fail, its fine-tuned cells are not run (with the
reason), the other model's cells all end FINISHED; the summary lists each failed cell with its
cause and the counts, exit code 1, no traceback (the failed run has it, as error.txt); a re-run
after the fix runs only what did not finish. `--fail-fast` stops at the first failure. What can
be known up front is refused before any run exists: a LoRA adapter that cannot fit this machine
or the declared resources, a local model directory that does not exist. Out of memory is told in
words, with the size asked; third-party warnings stay hidden unless --debug."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from relxfer.cli import main, quiet_libraries
from relxfer.models.tiny import build_tiny_model
from relxfer.run.failures import describe
from tests.smoke_study import write_variant
from tests.support.failing_study import (
    CORRUPT,
    REPO,
    RERUN_STATUSES_OF_BAD_MODEL,
    cell_runs,
    corrupt_model,
    repair_model,
    smoke,
    two_model_spec,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def bad_model(relxfer_cache, tmp_path) -> Path:
    return corrupt_model(relxfer_cache, tmp_path / "bad-model")


def run(spec: Path, uri: str, cache: Path, *extra: str, debug: bool = False):
    args = (["--debug"] if debug else []) + ["run", str(spec), "--tracking-uri", uri, "--cache-dir", str(cache)]
    return CliRunner().invoke(main, [*args, "--no-progress", *extra])


def test_a_model_with_corrupt_weights_fails_alone_and_a_rerun_after_the_fix_runs_only_its_cells(
    tmp_path, relxfer_cache, bad_model
):
    spec = two_model_spec(tmp_path / "two-models.json", bad_model)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(spec, uri, relxfer_cache)

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    client = MlflowClient(uri)
    runs = cell_runs(client, "two-models")
    cause = f"cannot load model from '{bad_model}': {CORRUPT}"
    failed = ["finetune/bad/seed0", "eval/bad/baseline/syn_Rela", "eval/bad/baseline/syn_Ctla"]
    assert result.stdout.splitlines() == [
        *(f"failed   {name}: {cause} (run {runs[name][0].info.run_id})" for name in failed),
        f"not run  eval/bad/finetuned/syn_Rela/seed0: its fine-tune failed: {cause}",
        f"not run  eval/bad/finetuned/syn_Ctla/seed0: its fine-tune failed: {cause}",
        f"{spec}: 5 cells run, 0 already finished, 3 failed, 2 not run; tracking URI {uri}",
        f"ran on: {socket.gethostname()}: 8 cells",
    ]
    # The other model's cells all ran; the failed ones have their cause and traceback.
    good = [name for name in runs if "/good/" in name]
    assert len(good) == 5 and all([r.info.status for r in runs[name]] == ["FINISHED"] for name in good)
    for name in failed:
        (run_,) = runs[name]
        assert run_.info.status == "FAILED" and run_.data.tags["relxfer.error"] == cause
        trace = client.download_artifacts(run_.info.run_id, "error.txt", str(tmp_path / name.replace("/", "-")))
        text = Path(trace).read_text()
        assert text.startswith("Traceback") and "safetensors" in text and cause in text
    assert not any("/bad/finetuned/" in name for name in runs)  # not run: no run at all

    parent = client.get_run(runs["finetune/good/seed0"][0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"
    cells = client.load_table(parent.info.experiment_id, "cells.json", run_ids=[parent.info.run_id])
    by_name = {f"{r.kind}/{r.model}": r for r in cells.itertuples()}
    assert (by_name["finetune/bad"].status, by_name["finetune/bad"].error) == ("FAILED", cause)
    assert set(cells[cells.model == "good"].status) == {"FINISHED"}
    assert sorted(cells[cells.status == "NOT_RUN"].error) == [f"its fine-tune failed: {cause}"] * 2

    # The fix: the real weights back. The re-run runs the bad model's five cells, nothing else.
    repair_model(relxfer_cache, bad_model)
    again = run(spec, uri, relxfer_cache)
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines() == [
        f"{spec}: 5 cells run, 5 already finished, 0 failed, 0 not run; tracking URI {uri}",
        f"ran on: {socket.gethostname()}: 5 cells",
    ]
    runs = cell_runs(client, "two-models")
    assert {
        name: [r.info.status for r in rs] for name, rs in runs.items() if "/bad/" in name
    } == RERUN_STATUSES_OF_BAD_MODEL
    assert all(len(runs[name]) == 1 for name in good)


def test_fail_fast_stops_at_the_first_failure_and_debug_shows_its_traceback(tmp_path, relxfer_cache, bad_model):
    spec = two_model_spec(tmp_path / "fail-fast.json", bad_model, bad_first=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(spec, uri, relxfer_cache, "--fail-fast", debug=True)

    assert result.exit_code == 1, result.output
    client = MlflowClient(uri)
    runs = cell_runs(client, "fail-fast")
    assert list(runs) == ["finetune/bad/seed0"]  # nothing started after the first failure
    cause = f"cannot load model from '{bad_model}': {CORRUPT}"
    stopped = "the study stopped at the first failure (finetune/bad/seed0; --fail-fast)"
    others = [
        "eval/bad/baseline/syn_Rela",
        "eval/bad/baseline/syn_Ctla",
        "eval/bad/finetuned/syn_Rela/seed0",
        "eval/bad/finetuned/syn_Ctla/seed0",
        "finetune/good/seed0",
        "eval/good/baseline/syn_Rela",
        "eval/good/baseline/syn_Ctla",
        "eval/good/finetuned/syn_Rela/seed0",
        "eval/good/finetuned/syn_Ctla/seed0",
    ]
    assert result.stdout.splitlines() == [
        f"failed   finetune/bad/seed0: {cause} (run {runs['finetune/bad/seed0'][0].info.run_id})",
        *(f"not run  {name}: {stopped}" for name in others),
        f"{spec}: 0 cells run, 0 already finished, 1 failed, 9 not run; tracking URI {uri}",
        f"ran on: {socket.gethostname()}: 1 cells",
    ]
    # --debug: the traceback on the screen too.
    assert "--- finetune/bad/seed0\nTraceback (most recent call last):" in result.stderr


def test_mlflow_run_with_fail_fast_true_stops_at_the_first_failure(tmp_path, relxfer_cache, bad_model):
    """`mlflow run . -P fail_fast=true` (MLproject): the project's run is the parent, ends FAILED."""
    spec = two_model_spec(tmp_path / "fail-fast-param.json", bad_model, bad_first=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"} | {"MLFLOW_TRACKING_URI": uri}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `mlflow run` calls `relxfer`
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-P", f"spec={spec}", "-P", "fail_fast=true"]
        + ["-P", f"cache_dir={relxfer_cache}", "--env-manager", "local", "--experiment-name", "fail-fast-param"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert f"{spec}: 0 cells run, 0 already finished, 1 failed, 9 not run; tracking URI {uri}" in output, output
    runs = cell_runs(MlflowClient(uri), "fail-fast-param")
    assert list(runs) == ["finetune/bad/seed0"]
    parent = MlflowClient(uri).get_run(runs["finetune/bad/seed0"][0].data.tags["mlflow.parentRunId"])
    assert (parent.info.status, parent.data.params["fail_fast"]) == ("FAILED", "true")


# --- refused before anything starts ---------------------------------------------------------


def write(tmp_path: Path, name: str, edit) -> Path:
    raw = smoke()
    raw["name"] = name
    edit(raw)
    return write_variant(raw, tmp_path / f"{name}.json")


def assert_refused(result, message: str, uri: str | None = None) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"Error: {message}"]
    if uri:
        client = MlflowClient(uri)
        assert [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == []


def test_an_adapter_that_cannot_fit_this_machine_is_refused_before_any_run(tmp_path, relxfer_cache):
    spec = write(tmp_path, "huge-rank", lambda raw: raw["finetune"]["lora"].update(r=1_000_000_000))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    host_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    assert CliRunner().invoke(main, ["validate", str(spec)]).exit_code == 0  # nothing declared to check against
    result = run(spec, uri, relxfer_cache)
    assert_refused(
        result,
        f"{spec}: /models/0: the fine-tune of model 'tiny' cannot fit on this machine: it needs >= 69632.0 GB of "
        "adapter (LoRA r=1000000000: 4,352,000,000,000 adapter parameters with gradients and AdamW state, "
        "69632.0 GB), >= 69632.0 GB on each of 1 CPU process on local; activations not counted; this machine has "
        f"{host_gb:.1f} GB of memory; lower finetune.lora.r (1000000000): the adapter is most of it",
        uri,
    )


def test_an_adapter_that_cannot_fit_the_declared_memory_is_refused_at_validate(tmp_path, relxfer_cache):
    def edit(raw):
        raw["finetune"]["lora"]["r"] = 100_000
        raw["models"][0]["resources"] = {"memory_gb": 4}

    spec = write(tmp_path, "declared", edit)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    message = (
        f"{spec}: /models/0/resources: the fine-tune of model 'tiny' cannot fit: it needs 7.0 GB of host memory "
        "(>= 7.0 GB of adapter (LoRA r=100000: 435,200,000 adapter parameters with gradients and AdamW state, "
        "7.0 GB), >= 7.0 GB on each of 1 CPU process on local; activations not counted); resources.memory_gb "
        "declares 4 GB; lower finetune.lora.r (100000): the adapter is most of it"
    )
    assert_refused(CliRunner().invoke(main, ["validate", str(spec)]), message)
    assert_refused(run(spec, uri, relxfer_cache), message, uri)


def test_a_local_model_directory_that_does_not_exist_is_refused_at_validate(tmp_path, relxfer_cache):
    spec = write(tmp_path, "no-model", lambda raw: raw["models"][0].update(source="/nonexistent/model"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    message = f"{spec}: /models/0/source: model directory '/nonexistent/model' does not exist"
    for command in ("validate", "plan"):
        assert_refused(CliRunner().invoke(main, [command, str(spec)]), message)
    assert_refused(run(spec, uri, relxfer_cache), message, uri)


def test_the_adapter_count_is_what_peft_builds(relxfer_cache):
    """The floor's adapter size, from the spec alone, against peft's own count on the real model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from relxfer.spec.adapter_size import adapter_params
    from relxfer.spec.types import FinetuneSpec, ModelSpec

    model = ModelSpec.from_partial({"name": "tiny", "source": "builtin:tiny-llama"})
    for lora in ({"r": 8}, {"r": 3, "target_modules": ["q_proj", "v_proj"]}):
        base = AutoModelForCausalLM.from_pretrained(build_tiny_model(relxfer_cache))
        peft = get_peft_model(base, LoraConfig(r=lora["r"], target_modules=lora.get("target_modules", "all-linear")))
        trainable, _ = peft.get_nb_trainable_parameters()
        assert adapter_params(model, FinetuneSpec.from_partial({"lora": lora}).lora) == trainable


# --- causes in words -------------------------------------------------------------------------


def test_out_of_memory_is_told_with_the_size_asked_and_what_to_lower():
    with pytest.raises(RuntimeError) as torch_oom:
        torch.empty(2 * 10**15, dtype=torch.uint8)  # 2 PB: no machine has it
    assert describe(torch_oom.value, "finetune") == (
        "out of memory on the CPU (asked for 2,000,000.0 GB at once): lower finetune.training.batch_size or "
        "max_seq_len, or finetune.lora.r (or use method 'qlora')"
    )
    with pytest.raises(MemoryError) as python_oom:
        bytearray(2 * 10**15)
    assert describe(python_oom.value, "evaluate") == (
        "out of memory on the CPU: lower evaluation.batch_size (or cot.max_new_tokens for CoT conditions)"
    )
    # No GPU on the test machines: torch's own exception type, with the message its CUDA allocator writes.
    cuda = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 3.12 GiB "
        "is free."
    )
    assert describe(cuda, "evaluate") == (
        "out of memory on the GPU (asked for 20.00 GiB at once): lower evaluation.batch_size (or cot.max_new_tokens "
        "for CoT conditions)"
    )
    missing = Path("/nonexistent/adapter_config.json")
    with pytest.raises(FileNotFoundError) as gone:
        missing.read_text()
    assert describe(gone.value) == f"file missing: {missing}"


def test_library_warnings_are_hidden_and_relxfer_s_own_stay(monkeypatch):
    from relxfer.errors import RelxferWarning

    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    code = "import warnings\nwarnings.warn({!r}, {})"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries()
        cases = [
            ("peft.utils.other", "FutureWarning"),
            ("transformers.modeling_utils", "UserWarning"),
            ("relxfer.train.loop", "FutureWarning"),  # a library's, attributed to relxfer's calling line
            ("relxfer.run.cell", "RelxferWarning"),
        ]
        for module, category in cases:
            scope = {"__name__": module, "RelxferWarning": RelxferWarning}
            exec(code.format(f"{category} from {module}", category), scope)
    assert [str(w.message) for w in seen] == ["RelxferWarning from relxfer.run.cell"]
