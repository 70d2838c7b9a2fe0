"""Orchestration that loses nothing, against real `relxfer run` processes and a real tracking
server: SIGKILL at random points, a server restart mid-study, two processes on one spec, and no
secret from the environment in anything a study writes."""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from relxfer.plan.cells import plan
from relxfer.spec.load import load_spec
from tests.conftest import MlflowServer
from tests.smoke_study import plumbing_variant, write_variant

REPO = Path(__file__).resolve().parents[1]
# The smoke study with 2 + 2 languages and 45 training steps: these tests need real cells and
# checkpoints, not the planted effect (tests/test_smoke_science.py checks that).
SPEC_DIR = Path(tempfile.mkdtemp(prefix="relxfer-resilience-"))
atexit.register(shutil.rmtree, SPEC_DIR, ignore_errors=True)
SPEC = write_variant(
    plumbing_variant(json.loads((REPO / "specs" / "smoke.json").read_text())), SPEC_DIR / "smoke-plumbing.json"
)
CELLS = {cell.key: cell for cell in plan(load_spec(SPEC))}
SECRETS = {
    "HF_TOKEN": "hf_relxferTestSecret0001",
    "HUGGING_FACE_HUB_TOKEN": "hf_relxferTestSecret0002",
    "OPENAI_API_KEY": "sk-relxferTestSecret0003",
    "MLFLOW_TRACKING_TOKEN": "relxferTestSecret0004",
}

pytestmark = pytest.mark.system


def start_run(uri: str, experiment: str, cache: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, **SECRETS, "MLFLOW_EXPERIMENT_NAME": experiment, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relxfer.cli",
            "run",
            str(SPEC),
            "--tracking-uri",
            uri,
            "--cache-dir",
            str(cache),
            "--no-progress",
        ],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def run_to_completion(uri: str, experiment: str, cache: Path, log: Path, tries: int = 3) -> None:
    for _ in range(tries):
        if start_run(uri, experiment, cache, log).wait(timeout=600) == 0:
            return
    raise AssertionError(f"study did not complete in {tries} runs:\n{log.read_text()[-3000:]}")


def cell_runs(client: MlflowClient, experiment: str) -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return [r for r in client.search_runs([experiment_id], max_results=1000) if r.data.tags.get("relxfer.cell_key")]


def finished_accuracy(client: MlflowClient, experiment: str) -> dict[str, float]:
    """cell key -> accuracy of its FINISHED run; asserts there is exactly one per planned cell."""
    runs = cell_runs(client, experiment)
    finished = Counter(r.data.tags["relxfer.cell_key"] for r in runs if r.info.status == "FINISHED")
    assert set(finished) == set(CELLS), set(CELLS) ^ set(finished)
    assert set(finished.values()) == {1}, finished
    assert all(r.info.status in ("FINISHED", "KILLED", "FAILED") for r in runs)
    return {
        r.data.tags["relxfer.cell_key"]: r.data.metrics.get("accuracy", r.data.metrics.get("final_loss"))
        for r in runs
        if r.info.status == "FINISHED"
    }


def uploaded_checkpoint(client: MlflowClient, experiment: str) -> bool:
    """Whether the experiment's fine-tune run holds a complete checkpoint (its state.json)."""
    found = client.get_experiment_by_name(experiment)
    runs = found and client.search_runs([found.experiment_id], "tags.`relxfer.kind` = 'finetune'")
    return any(
        f.path.endswith("/state.json")
        for run in runs or []
        for step in client.list_artifacts(run.info.run_id, "checkpoints")
        for f in client.list_artifacts(run.info.run_id, step.path)
    )


@pytest.fixture(scope="module")
def reference_log(mlflow_server, tmp_path_factory) -> Path:
    """The uninterrupted study every disturbed one must reproduce (run with secrets in its
    environment); returns its console log."""
    root = tmp_path_factory.mktemp("reference")
    run_to_completion(mlflow_server.uri, "resilience-reference", root / "cache", root / "log.txt", tries=1)
    return root / "log.txt"


@pytest.fixture(scope="module")
def reference(mlflow_server, reference_log) -> dict[str, float]:
    return finished_accuracy(MlflowClient(mlflow_server.uri), "resilience-reference")


def test_sigkill_three_times_then_rerun_loses_and_duplicates_nothing(mlflow_server, reference, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    rng = random.Random(20261126)
    log = tmp_path / "log.txt"
    for _ in range(3):
        process = start_run(mlflow_server.uri, "resilience-kill", tmp_path / "cache", log)
        time.sleep(rng.uniform(3.0, 12.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    run_to_completion(mlflow_server.uri, "resilience-kill", tmp_path / "cache", log)
    assert finished_accuracy(client, "resilience-kill") == pytest.approx(reference, abs=1e-9)
    # The fine-tune's loss curve has every step exactly once, even if it was killed mid-training.
    finetune = next(
        r
        for r in cell_runs(client, "resilience-kill")
        if r.data.tags["relxfer.kind"] == "finetune" and r.info.status == "FINISHED"
    )
    steps = [m.step for m in client.get_metric_history(finetune.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, int(finetune.data.metrics["steps"]) + 1))


def test_tracking_server_restart_mid_study(reference, tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    log = tmp_path / "log.txt"
    try:
        process = start_run(server.uri, "resilience-restart", tmp_path / "cache", log)
        client = MlflowClient(server.uri)
        deadline = time.time() + 300
        while time.time() < deadline:  # wait until part of the study is done
            experiment = client.get_experiment_by_name("resilience-restart")
            if (
                experiment
                and sum(r.info.status == "FINISHED" for r in client.search_runs([experiment.experiment_id])) >= 3
            ):
                break
            time.sleep(0.5)
        server.stop()
        time.sleep(25)  # longer than the client's bounded retries (about 15 s)
        server.start()
        code = process.wait(timeout=600)
        output = log.read_text()
        if code != 0:  # the cell in flight failed cleanly: one line naming the server
            assert f"Error: tracking server {server.uri}" in output and "Traceback" not in output, output[-2000:]
        run_to_completion(server.uri, "resilience-restart", tmp_path / "cache", log)
        assert finished_accuracy(client, "resilience-restart") == pytest.approx(reference, abs=1e-9)
    finally:
        server.stop()


def test_two_processes_on_one_spec_never_run_a_cell_twice(mlflow_server, reference, tmp_path):
    log_a, log_b = tmp_path / "a.txt", tmp_path / "b.txt"
    a = start_run(mlflow_server.uri, "resilience-concurrent", tmp_path / "cache", log_a)
    b = start_run(mlflow_server.uri, "resilience-concurrent", tmp_path / "cache", log_b)
    assert a.wait(timeout=600) == 0, log_a.read_text()[-3000:]
    assert b.wait(timeout=600) == 0, log_b.read_text()[-3000:]
    client = MlflowClient(mlflow_server.uri)
    assert finished_accuracy(client, "resilience-concurrent") == pytest.approx(reference, abs=1e-9)
    # Every cell ran exactly once in total: no KILLED or FAILED leftovers from a double run.
    assert len(cell_runs(client, "resilience-concurrent")) == len(CELLS)


def test_no_secret_reaches_params_tags_metrics_artifacts_or_logs(mlflow_server, reference_log, tmp_path):
    """Every run the reference study wrote, and its console output."""
    assert not any(secret in reference_log.read_text() for secret in SECRETS.values())
    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.get_experiment_by_name("resilience-reference").experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    assert runs
    for run in runs:
        text = json.dumps([run.data.params, run.data.tags, list(run.data.metrics)])
        artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        for path in artifacts.rglob("*"):
            if path.is_file():
                text += path.read_bytes().decode("utf-8", errors="replace")
        for name, secret in SECRETS.items():
            assert secret not in text, (name, run.info.run_name)


def test_kill_mid_training_resumes_from_the_checkpoint_in_the_same_run(mlflow_server, reference, tmp_path):
    """SIGKILL right after the fine-tune's first checkpoint reached the run's artifacts: the re-run
    resumes from it (not from step 0) inside the same MLflow run, whose loss curve then has every
    step exactly once, and the study ends with the accuracies of the uninterrupted run."""
    client = MlflowClient(mlflow_server.uri)
    log = tmp_path / "log.txt"
    process = start_run(mlflow_server.uri, "resilience-midtrain", tmp_path / "cache", log)
    deadline = time.time() + 300
    while not uploaded_checkpoint(client, "resilience-midtrain") and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert time.time() < deadline, log.read_text()[-2000:]
    run_to_completion(mlflow_server.uri, "resilience-midtrain", tmp_path / "cache", log)
    assert finished_accuracy(client, "resilience-midtrain") == pytest.approx(reference, abs=1e-9)
    finetunes = [r for r in cell_runs(client, "resilience-midtrain") if r.data.tags["relxfer.kind"] == "finetune"]
    assert len(finetunes) == 1 and finetunes[0].data.tags.get("relxfer.resumed") == "true"
    run = finetunes[0]
    assert run.data.metrics["resumed_from_step"] > 0
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, int(run.data.metrics["steps"]) + 1))
