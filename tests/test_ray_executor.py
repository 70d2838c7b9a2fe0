"""`relxfer run --executor ray` against a real Ray cluster on 127.0.0.2 (logical GPUs, its own
relxfer cache, so workers have nothing of the driver's disk) and a real tracking server: the
same cells, keys, accuracies and MLflow layout as the local executor; a worker SIGKILLed mid
fine-tune is retried and resumes from the checkpoint in its run's artifacts; a driver
interrupted (Ctrl-C) or killed mid-study and run again leaves exactly one FINISHED run per
cell; two drivers started together never run a cell twice; a cell no node can hold is refused
before anything runs, and so is a tracking store workers on other machines cannot reach."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import pytest
from mlflow import MlflowClient

from relxfer.plan.cells import plan
from relxfer.run.runner import StudyRunner
from relxfer.spec.load import load_spec
from relxfer.tracking.client import Tracker
from tests.ray_cluster import RayCluster

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]


def small_spec(path: Path, **resources) -> Path:
    """The smoke study made small: 2 related + 2 control languages, 8 held-out questions, a
    40-step QLoRA fine-tune with a checkpoint every 4 steps; one GPU and one CPU a cell."""
    raw = json.loads((REPO / "specs" / "smoke.json").read_text())
    raw["name"] = "ray-small"
    source = raw["data"]["source"]
    source |= {"n_passages": 24, "questions_per_passage": 2}
    source["languages"] = [
        {"code": "syn_Base", "family": "Synthetic-A"},
        *({"code": code, "family": "Synthetic-A", "overlap": 0.85} for code in ("syn_Rela", "syn_Relb")),
        *(
            {"code": code, "family": "Synthetic-B", "overlap": 0.0, "alphabet": "disjoint"}
            for code in ("syn_Ctla", "syn_Ctlb")
        ),
    ]
    raw["train"]["languages"] = ["syn_Base"]
    raw["data"]["split"]["held_out"] = 8
    raw["eval"]["groups"][0]["languages"] = ["syn_Rela", "syn_Relb"]
    raw["eval"]["groups"][1]["languages"] = ["syn_Ctla", "syn_Ctlb"]
    raw["finetune"]["training"] = {"max_steps": 40, "learning_rate": 0.003, "batch_size": 8, "checkpoint_every": 4}
    raw["cot"]["max_new_tokens"] = 8
    raw["models"][0]["resources"] = {"gpus": 1, "cpus": 1} | resources
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = RayCluster(num_cpus=2, num_gpus=2, root=tmp_path_factory.mktemp("ray")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    return small_spec(tmp_path_factory.mktemp("spec") / "small.json")


def driver(cluster, spec: Path, uri: str, experiment: str, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relxfer.cli",
            "run",
            str(spec),
            "--executor",
            "ray",
            "--ray-address",
            cluster.address,
            "--tracking-uri",
            uri,
            "--cache-dir",
            str(log.parent / "driver-cache"),
            "--no-progress",
            *extra,
        ],
        env=cluster.env(MLFLOW_EXPERIMENT_NAME=experiment, OMP_NUM_THREADS="1"),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        # A shell without job control starts background jobs with SIGINT ignored, and children
        # inherit that: give the driver the default, so Ctrl-C (SIGINT) reaches it as a user's would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def run_driver(cluster, spec: Path, uri: str, experiment: str, log: Path) -> None:
    code = driver(cluster, spec, uri, experiment, log).wait(timeout=600)
    assert code == 0, log.read_text()[-4000:]


def cell_runs(client: MlflowClient, experiment: str) -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return [r for r in client.search_runs([experiment_id], max_results=1000) if r.data.tags.get("relxfer.cell_key")]


def finished_results(client: MlflowClient, experiment: str, spec: Path) -> dict[str, float]:
    """cell key -> accuracy (final loss for a fine-tune) of its FINISHED run; asserts exactly one
    FINISHED run per planned cell and nothing left RUNNING."""
    runs = cell_runs(client, experiment)
    keys = {cell.key for cell in plan(load_spec(spec))}
    finished = Counter(r.data.tags["relxfer.cell_key"] for r in runs if r.info.status == "FINISHED")
    assert set(finished) == keys and set(finished.values()) == {1}, finished
    assert all(r.info.status in ("FINISHED", "KILLED", "FAILED") for r in runs)
    return {
        r.data.tags["relxfer.cell_key"]: r.data.metrics.get("accuracy", r.data.metrics.get("final_loss"))
        for r in runs
        if r.info.status == "FINISHED"
    }


def assert_loss_steps_once(client: MlflowClient, experiment: str):
    finetune = next(
        r
        for r in cell_runs(client, experiment)
        if r.data.tags["relxfer.kind"] == "finetune" and r.info.status == "FINISHED"
    )
    steps = [m.step for m in client.get_metric_history(finetune.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, int(finetune.data.metrics["steps"]) + 1))
    return finetune


def wait_for(predicate, timeout: float, what: str, log: Path):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def reference(cluster, mlflow_server, spec_path, tmp_path_factory) -> dict[str, float]:
    """The small study run once on the cluster as docs/clusters.md says, `mlflow run . -P executor=ray`
    (MLflow's project run is the parent): the accuracies every disturbed run must match."""
    root = tmp_path_factory.mktemp("reference")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO),
            "-P",
            f"spec={spec_path}",
            "-P",
            "executor=ray",
            "-P",
            f"ray_address={cluster.address}",
            "-P",
            f"cache_dir={root / 'driver-cache'}",
            "--env-manager",
            "local",
            "--experiment-name",
            "ray-reference",
        ],
        cwd=root,
        env=cluster.env(MLFLOW_TRACKING_URI=mlflow_server.uri, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "13 cells run, 0 already finished, 0 failed" in output and "ran on: 127.0.0.2 (pid" in output, output
    return finished_results(MlflowClient(mlflow_server.uri), "ray-reference", spec_path)


def test_plan_shows_each_cell_s_resources(spec_path):
    from click.testing import CliRunner

    from relxfer.cli import main

    result = CliRunner().invoke(main, ["plan", str(spec_path)])
    cell_lines = [line for line in result.output.splitlines() if line.startswith(("finetune ", "evaluate "))]
    assert len(cell_lines) == 13 and all(line.endswith("  (1 GPU, 1 CPU)") for line in cell_lines), result.output


def test_tasks_whose_engine_works_elsewhere_only_coordinate():
    """A Ray Train or Tinker fine-tune, and evaluation on a server that is already running or
    hosted, hold one CPU and no GPU: the GPUs belong to the workers or the server they wait for."""
    from dataclasses import replace

    from relxfer.spec.load import load_spec
    from relxfer.spec.resources import cell_request
    from relxfer.spec.types import OpenaiEvaluateEngine

    full = load_spec(REPO / "specs" / "full.json")
    deepseek, qwen = full.model("deepseek-v3.1"), full.model("qwen3-4b")
    assert deepseek.engines.finetune.kind == "ray"
    assert cell_request(deepseek, "finetune") == {"CPU": 1.0, "GPU": 0.0}
    assert cell_request(deepseek, "evaluate")["GPU"] == 8  # relxfer launches its vLLM server on the node
    assert (
        cell_request(qwen, "finetune")
        == cell_request(qwen, "evaluate")
        == {"CPU": 8.0, "GPU": 1.0, "memory": 64 * 2**30}
    )
    hosted = load_spec(REPO / "specs" / "full-tinker.json").model("deepseek-v3.1")
    assert cell_request(hosted, "finetune") == cell_request(hosted, "evaluate") == {"CPU": 1.0, "GPU": 0.0}
    server = OpenaiEvaluateEngine.from_partial({"kind": "openai", "base_url": "http://h:8000/v1"})
    remote = replace(qwen, engines=replace(qwen.engines, evaluate=server))
    assert cell_request(remote, "evaluate") == {"CPU": 1.0, "GPU": 0.0}


def test_same_cells_keys_accuracies_and_layout_as_the_local_executor(
    mlflow_server, spec_path, reference, relxfer_cache, monkeypatch
):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ray-local-twin")
    StudyRunner(load_spec(spec_path), Tracker(mlflow_server.uri), relxfer_cache, progress=False).run()
    client = MlflowClient(mlflow_server.uri)
    # Accuracies are equal; the fine-tune's final loss may differ in its 7th digit: Ray runs a
    # 1-CPU task with one BLAS thread, this process with several (another summation order).
    assert finished_results(client, "ray-local-twin", spec_path) == pytest.approx(reference, rel=1e-6)

    def layout(experiment: str) -> dict[str, tuple]:
        out = {}
        for run in cell_runs(client, experiment):
            parent = client.get_run(run.data.tags["mlflow.parentRunId"])
            assert parent.data.tags["relxfer.kind"] == "study" and parent.info.status == "FINISHED"
            # Only the runs made on Ray record Ray's version.
            ray_version = run.data.tags.get("relxfer.versions.ray")
            relxfer_tags = {
                k: v for k, v in run.data.tags.items() if k.startswith("relxfer.") and k != "relxfer.versions.ray"
            }
            artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
            out[run.data.tags["relxfer.cell_key"]] = (
                run.info.run_name,
                ray_version,
                relxfer_tags,
                run.data.params,
                sorted(run.data.metrics),
                artifacts,
            )
        return out

    ray, local = layout("ray-reference"), layout("ray-local-twin")
    assert {v[1] for v in ray.values()} == {metadata.version("ray")} and {v[1] for v in local.values()} == {None}
    assert {k: (v[0], *v[2:]) for k, v in local.items()} == {k: (v[0], *v[2:]) for k, v in ray.items()}


def test_worker_killed_mid_finetune_resumes_from_its_uploaded_checkpoint(
    cluster, mlflow_server, spec_path, reference, tmp_path
):
    client = MlflowClient(mlflow_server.uri)
    log = tmp_path / "log.txt"
    process = driver(cluster, spec_path, mlflow_server.uri, "ray-worker-kill", log)

    def uploaded_checkpoint():
        experiment = client.get_experiment_by_name("ray-worker-kill")
        runs = experiment and client.search_runs([experiment.experiment_id], "tags.`relxfer.kind` = 'finetune'")
        for run in runs or []:
            for step in client.list_artifacts(run.info.run_id, "checkpoints"):
                if any(f.path.endswith("/state.json") for f in client.list_artifacts(run.info.run_id, step.path)):
                    return run.info.run_id
        return None

    run_id = wait_for(uploaded_checkpoint, 300, "a checkpoint in the fine-tune's artifacts", log)
    workers = cluster.worker_pids("ray::finetune/")
    assert len(workers) == 1, workers
    subprocess.run(["kill", "-KILL", str(workers[0])], check=True)
    assert process.wait(timeout=600) == 0, log.read_text()[-4000:]
    assert finished_results(client, "ray-worker-kill", spec_path) == pytest.approx(reference, abs=1e-9)
    finetune = assert_loss_steps_once(client, "ray-worker-kill")
    # Ray retried the task; the retry resumed the same run from the checkpoint the dead worker
    # had uploaded (its node's cache was wiped first: only the run's artifacts could supply it).
    assert finetune.info.run_id == run_id and finetune.data.tags.get("relxfer.resumed") == "true"
    assert finetune.data.metrics["resumed_from_step"] > 0
    assert not client.list_artifacts(run_id, "checkpoints")  # removed once the adapter is logged


def test_driver_interrupted_then_killed_then_rerun_finishes_every_cell_once(
    cluster, mlflow_server, spec_path, reference, tmp_path
):
    client = MlflowClient(mlflow_server.uri)
    log = tmp_path / "log.txt"

    def finished_cells():
        experiment = client.get_experiment_by_name("ray-driver-kill")
        return experiment and sum(r.info.status == "FINISHED" for r in cell_runs(client, "ray-driver-kill"))

    # Ctrl-C: running cells end KILLED, queued tasks are cancelled, nothing stays RUNNING.
    process = driver(cluster, spec_path, mlflow_server.uri, "ray-driver-kill", log)
    wait_for(lambda: (finished_cells() or 0) >= 2, 300, "two finished cells", log)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) != 0
    experiment_id = client.get_experiment_by_name("ray-driver-kill").experiment_id
    assert not client.search_runs([experiment_id], "attributes.status = 'RUNNING'"), log.read_text()[-3000:]
    # SIGKILL: Ray kills the driver's tasks and frees its claims; the re-run repairs the rest.
    before = finished_cells()
    process = driver(cluster, spec_path, mlflow_server.uri, "ray-driver-kill", log)
    wait_for(lambda: finished_cells() > before, 300, "one more finished cell", log)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_driver(cluster, spec_path, mlflow_server.uri, "ray-driver-kill", log)
    assert finished_results(client, "ray-driver-kill", spec_path) == pytest.approx(reference, abs=1e-9)
    assert_loss_steps_once(client, "ray-driver-kill")


def test_two_drivers_started_together_never_run_a_cell_twice(cluster, mlflow_server, spec_path, reference, tmp_path):
    logs = [tmp_path / "a" / "log.txt", tmp_path / "b" / "log.txt"]
    for log in logs:
        log.parent.mkdir()
    drivers = [driver(cluster, spec_path, mlflow_server.uri, "ray-two-drivers", log) for log in logs]
    for process, log in zip(drivers, logs):
        assert process.wait(timeout=600) == 0, log.read_text()[-4000:]
    client = MlflowClient(mlflow_server.uri)
    assert finished_results(client, "ray-two-drivers", spec_path) == pytest.approx(reference, abs=1e-9)
    # Every cell ran exactly once in all: no KILLED or FAILED leftovers of a double run.
    assert len(cell_runs(client, "ray-two-drivers")) == len(reference)
    ran = [int(log.read_text().split(" cells run,")[0].rsplit(" ", 1)[-1]) for log in logs]
    assert sum(ran) == len(reference), [log.read_text()[-2000:] for log in logs]


def test_a_cell_no_node_can_hold_is_refused_before_anything_runs(cluster, mlflow_server, tmp_path):
    spec = small_spec(tmp_path / "big.json", gpus=3)
    log = tmp_path / "log.txt"
    assert driver(cluster, spec, mlflow_server.uri, "ray-too-big", log).wait(timeout=300) == 2
    output = log.read_text()
    assert (
        f"Error: {spec}: /models/0/resources: model 'tiny' asks for 3 GPU, 1 CPU a cell, but no node of the Ray "
        f"cluster has that much (nodes: 127.0.0.2: 2 GPU, 2 CPU"
    ) in output, output
    assert "Traceback" not in output
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name("ray-too-big") is None


def test_a_tracking_store_other_nodes_cannot_reach_is_refused():
    """The rule on node records as `ray.nodes()` returns them (a cluster of several machines
    cannot be started here)."""
    from relxfer.errors import TrackingError
    from relxfer.run.executors.ray import check_tracking_uri

    here, there = {"NodeManagerAddress": "127.0.0.2"}, {"NodeManagerAddress": "10.1.2.3"}
    with pytest.raises(
        TrackingError,
        match=r"^tracking URI sqlite:////x/mlflow.db is a file on this machine, but the "
        r"Ray cluster has 2 nodes .* run a tracking server that every node can reach",
    ):
        check_tracking_uri("sqlite:////x/mlflow.db", [here, there])
    with pytest.raises(TrackingError, match="is this machine's loopback address, which node 10.1.2.3"):
        check_tracking_uri("http://127.0.0.1:5000", [here, there])
    assert (
        check_tracking_uri("http://127.0.0.1:5000", [here, {"NodeManagerAddress": "127.0.0.3"}])
        == "http://127.0.0.1:5000"
    )
    assert check_tracking_uri("http://mlflow.example.org:5000", [here, there]) == "http://mlflow.example.org:5000"
    assert check_tracking_uri("sqlite:///rel/mlflow.db", [here]) == f"sqlite:///{Path('rel/mlflow.db').resolve()}"
