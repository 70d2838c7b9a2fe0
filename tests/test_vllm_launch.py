"""A vLLM server relxfer launches itself (`{"kind": "vllm", "launch": ...}`, specs/vllm-smoke.json),
for real: killed mid-cell, that cell fails saying so (exit code, last log lines), the other cells
run on a new server, and relxfer leaves no server process; then `mlflow run . -P spec=...` runs
the failed cell again on a new server: exactly one FINISHED run per cell (baseline, fine-tuned
through the adapter loaded into the server, chain of thought), the server's log logged, the
server stopped and no process left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from relxfer.cli import main
from relxfer.plan.cells import plan
from relxfer.spec.load import load_spec
from tests.servers.vllm_server import launch_env, session_processes

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "vllm-smoke.json"
EXPERIMENT = "vllm-launch"
STARTED = re.compile(r"vLLM server starting on http://127\.0\.0\.1:\d+ \(pid (\d+),")


def wait_for(pattern: re.Pattern, log: Path, process: subprocess.Popen, timeout: float) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
        match = pattern.search(log.read_text(errors="replace"))
        if match or process.poll() is not None:
            return match
        time.sleep(0.2)
    raise AssertionError(f"{pattern.pattern!r} not seen in {timeout} s:\n{log.read_text()[-3000:]}")


def assert_no_server_left(pid: int) -> None:
    deadline = time.time() + 30
    while session_processes(pid) and time.time() < deadline:
        time.sleep(0.5)
    left = session_processes(pid)
    for orphan in left:  # never leave them behind, even when the test fails
        os.kill(orphan, signal.SIGKILL)
    assert not left, f"vLLM processes left behind: {left}"


def test_plan_shows_the_launched_engine_offline():
    result = CliRunner().invoke(main, ["plan", str(SPEC)])
    assert result.exit_code == 0, result.output
    assert (
        "model     tiny: evaluate on vllm launched by relxfer on 127.0.0.1 (tensor_parallel_size=1, dtype=float32, "
        "max_model_len=1024, gpu_memory_utilization=0.9, extra_args=['--enforce-eager']), scoring auto; fine-tune on local"
    ) in result.output


def test_server_killed_mid_cell_then_mlflow_run_completes(mlflow_server, tmp_path):
    env = launch_env() | {
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_RUN_ID", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `mlflow run` calls `relxfer`
    cache = tmp_path / "cache"

    # 1. `relxfer run`: the server starts inside the first evaluation cell's run; kill it there.
    log = tmp_path / "run.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "relxfer.cli", "run", str(SPEC), "--cache-dir", str(cache), "--no-progress"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        started = wait_for(STARTED, log, process, timeout=600)
        assert started, log.read_text()[-3000:]
        pid = int(started.group(1))
        ready = wait_for(re.compile(r"vLLM server ready on"), log, process, timeout=600)
        assert ready, log.read_text()[-3000:]
        os.kill(pid, signal.SIGKILL)
        code = process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    # The cell in flight fails, told that the server died (whether the request or the process
    # watch notices first); the next cells get a new server; the summary lists the one failure.
    failed = [line for line in output.splitlines() if line.startswith("failed ")]
    assert code == 1 and len(failed) == 1 and "Traceback" not in output, output[-3000:]
    assert re.match(
        r"failed   eval/tiny/\S+: the vLLM server for model 'tiny' exited \(code -9\) during the cell; "
        r"last log lines: ",
        failed[0],
    ), failed[0]
    assert "1 failed, 0 not run" in output
    assert_no_server_left(pid)
    for restarted in STARTED.findall(output)[1:]:
        assert_no_server_left(int(restarted))

    # 2. `mlflow run` runs the failed cell again: one FINISHED run per cell, the failed one stays FAILED.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO),
            "-P",
            f"spec={SPEC}",
            "-P",
            f"cache_dir={cache}",
            "--env-manager",
            "local",
            "--experiment-name",
            EXPERIMENT,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    started = STARTED.search(output)
    assert started and "already finished" in output
    assert_no_server_left(int(started.group(1)))

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=1000)
    cells = {cell.key: cell for cell in plan(load_spec(SPEC))}
    finished = Counter(
        r.data.tags["relxfer.cell_key"]
        for r in runs
        if r.info.status == "FINISHED" and "relxfer.cell_key" in r.data.tags
    )
    assert finished == Counter(list(cells)), finished  # exactly one FINISHED run per planned cell
    assert any(r.info.status == "FAILED" for r in runs)
    evaluations = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("relxfer.kind") == "evaluate"]
    assert {r.data.tags["relxfer.condition"] for r in evaluations} == {"baseline", "finetuned", "cot"}
    for run in evaluations:
        tags = run.data.tags
        assert (
            tags["relxfer.engine"],
            tags["relxfer.server_version"],
            tags["relxfer.versions.vllm"],
            tags["relxfer.dtype"],
            tags["relxfer.scoring_mode"],
        ) == ("vllm", "0.32.0", "0.32.0", "float32", "label_ids+prompt_logprobs"), tags
    parent = next(r for r in runs if r.info.run_id == evaluations[0].data.tags["mlflow.parentRunId"])
    logged = [a.path for a in client.list_artifacts(parent.info.run_id, "servers/tiny")]
    assert logged and all(path.endswith(".log") for path in logged)
