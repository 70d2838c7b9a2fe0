"""A failing cell, for real, on the Ray executor (a real one-node cluster on 127.0.0.2): the same
two-model study as tests/test_keep_going.py, one model's weights corrupt. The same rules as the
local executor (relxfer.run.ledger): its fine-tune and baselines fail, its fine-tuned cells are
not run with the reason, the other model's cells all end FINISHED; the summary lists each with
its cause, exit code 1, no traceback; the failed run has error.txt; a re-run after the fix runs
only what did not finish."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.ray_cluster import RayCluster
from tests.support.failing_study import (
    CORRUPT,
    RERUN_STATUSES_OF_BAD_MODEL,
    cell_runs,
    corrupt_model,
    repair_model,
    two_model_spec,
)

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = RayCluster(num_cpus=2, root=tmp_path_factory.mktemp("ray")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def bad_model(relxfer_cache, tmp_path) -> Path:
    return corrupt_model(relxfer_cache, tmp_path / "bad-model")


def driver(cluster: RayCluster, spec: Path, uri: str, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "relxfer.cli", "run", str(spec), "--executor", "ray", *extra]
    argv += ["--ray-address", cluster.address, "--tracking-uri", uri, "--cache-dir", str(cache), "--no-progress"]
    return subprocess.run(
        argv, env=cluster.env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900, cwd=cache.parent
    )


def test_a_model_with_corrupt_weights_fails_alone_on_ray_and_a_rerun_after_the_fix_runs_only_its_cells(
    cluster, tmp_path, relxfer_cache, bad_model
):
    spec = two_model_spec(tmp_path / "two-models-ray.json", bad_model)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cache = tmp_path / "driver-cache"
    result = driver(cluster, spec, uri, cache)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "Traceback" not in output
    client = MlflowClient(uri)
    runs = cell_runs(client, "two-models-ray")
    cause = f"cannot load model from '{bad_model}': {CORRUPT}"
    failed = ["finetune/bad/seed0", "eval/bad/baseline/syn_Rela", "eval/bad/baseline/syn_Ctla"]
    summary = [line for line in result.stdout.splitlines() if not line.startswith("ran on: ")]
    # Cells of different models run side by side: the lines come in the order the cells ended.
    assert sorted(summary[:-1]) == sorted(
        [
            *(f"failed   {name}: {cause} (run {runs[name][0].info.run_id})" for name in failed),
            f"not run  eval/bad/finetuned/syn_Rela/seed0: its fine-tune failed: {cause}",
            f"not run  eval/bad/finetuned/syn_Ctla/seed0: its fine-tune failed: {cause}",
        ]
    )
    assert summary[-1] == f"{spec}: 5 cells run, 0 already finished, 3 failed, 2 not run; tracking URI {uri}"
    good = [name for name in runs if "/good/" in name]
    assert len(good) == 5 and all([r.info.status for r in runs[name]] == ["FINISHED"] for name in good)
    (finetune,) = runs["finetune/bad/seed0"]
    assert finetune.info.status == "FAILED" and finetune.data.tags["relxfer.error"] == cause
    trace = Path(client.download_artifacts(finetune.info.run_id, "error.txt", str(tmp_path / "error")))
    assert trace.read_text().startswith("Traceback") and cause in trace.read_text()
    parent = client.get_run(finetune.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"

    repair_model(relxfer_cache, bad_model)
    again = driver(cluster, spec, uri, cache)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"{spec}: 5 cells run, 5 already finished, 0 failed, 0 not run; tracking URI {uri}" in again.stdout
    runs = cell_runs(client, "two-models-ray")
    assert {
        name: [r.info.status for r in rs] for name, rs in runs.items() if "/bad/" in name
    } == RERUN_STATUSES_OF_BAD_MODEL
    assert all(len(runs[name]) == 1 for name in good)


def test_fail_fast_on_ray_stops_scheduling_at_the_first_failure(
    cluster, mlflow_server, tmp_path, relxfer_cache, bad_model
):
    """Cells run side by side on Ray, so some may be in flight when the first failure comes back:
    those are cancelled (their runs end KILLED), every cell not started is recorded NOT_RUN, each
    with the reason, and the bad model's fine-tuned cells never start."""
    spec = two_model_spec(tmp_path / "fail-fast-ray.json", bad_model, bad_first=True)
    # A tracking server, as a cluster has: the cancel makes workers and driver write at once.
    uri = mlflow_server.uri
    result = driver(cluster, spec, uri, tmp_path / "driver-cache", "--fail-fast")

    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "Traceback" not in output
    runs = cell_runs(MlflowClient(uri), "fail-fast-ray")
    cause = f"cannot load model from '{bad_model}': {CORRUPT}"
    lines = result.stdout.splitlines()
    failed = {line.split()[1].rstrip(":"): line for line in lines if line.startswith("failed   ")}
    not_run = {line.split()[2].rstrip(":"): line for line in lines if line.startswith("not run  ")}
    first = next(iter(failed))
    stop = f"the study stopped at the first failure ({first}; --fail-fast)"
    assert failed and all(cause in line for line in failed.values()), result.stdout
    cancelled = {name for name, line in not_run.items() if line.endswith(f": cancelled ({stop})")}
    # A cell that needs the failed fine-tune says so, whether or not the stop came first: it could
    # never have run.
    needed_it = {name for name, line in not_run.items() if line.endswith(f": its fine-tune failed: {cause}")}
    assert all(name.startswith("eval/bad/finetuned/") for name in needed_it), result.stdout
    assert all(
        name in cancelled or name in needed_it or line.endswith(f": {stop}") for name, line in not_run.items()
    ), result.stdout
    summary = next(line for line in lines if line.startswith(f"{spec}: "))
    finished = {name for name, rs in runs.items() if [r.info.status for r in rs] == ["FINISHED"]}
    assert summary == (
        f"{spec}: {len(finished)} cells run, 0 already finished, {len(failed)} failed, {len(not_run)} not run; "
        f"tracking URI {uri}"
    )
    assert len(finished) + len(failed) + len(not_run) == 10
    statuses = {name: [r.info.status for r in rs] for name, rs in runs.items()}
    expected = {
        **{name: ["FINISHED"] for name in finished},
        **{name: ["FAILED"] for name in failed},
        **{name: ["KILLED"] for name in cancelled if name in runs},  # a cancelled task may not have started its run
    }
    assert statuses == expected
    assert not any("/bad/finetuned/" in name for name in runs)
