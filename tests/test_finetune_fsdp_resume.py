"""SIGKILL of one torchrun rank mid-training, through `relxfer run` and a real tracking server:
the cell fails with one line, the re-run resumes from the last sharded checkpoint inside the same
MLflow run, every step is logged exactly once, and the curve is the one-process curve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from relxfer.data.prompts import PromptBuilder
from relxfer.models.tiny import build_tiny_model
from relxfer.plan.cells import plan
from relxfer.plan.study_data import load_study_data
from relxfer.spec.load import load_spec
from relxfer.train import train_lora
from tests.fsdp_helpers import LOSS_TOLERANCE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
STEPS = 12


def write_spec(tmp_path: Path) -> Path:
    raw = json.loads((REPO / "specs" / "smoke.json").read_text())
    raw["name"] = "fsdp-resume"
    raw["data"]["source"]["n_passages"] = 30
    raw["data"]["split"]["held_out"] = 10
    raw["eval"]["groups"][0]["languages"] = ["syn_Rela"]
    raw["eval"]["groups"][1]["languages"] = ["syn_Ctla"]
    raw["models"][0]["engines"] = {"finetune": {"kind": "torchrun", "nproc_per_node": 2}}
    raw["finetune"]["training"] = {
        "max_steps": STEPS,
        "learning_rate": 0.003,
        "batch_size": 8,
        "checkpoint_every": 2,
        "max_seq_len": 256,
    }
    raw["conditions"] = ["finetuned"]
    path = tmp_path / "fsdp-resume.json"
    path.write_text(json.dumps(raw))
    return path


def start(spec: Path, uri: str, cache: Path, log: Path, tag: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "RELXFER_TEST_TAG": tag,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relxfer.cli",
            "run",
            str(spec),
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


def ranks(tag: str) -> dict[int, int]:
    """LOCAL_RANK -> pid of the training processes started under `tag`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"relxfer.train.worker" in cmdline and f"RELXFER_TEST_TAG={tag}".encode() in environ:
            rank = next((int(e.split(b"=", 1)[1]) for e in environ if e.startswith(b"LOCAL_RANK=")), None)
            if rank is not None:
                found[rank] = int(proc.name)
    return found


def test_sigkill_of_one_rank_then_rerun_resumes_in_the_same_run(mlflow_server, relxfer_cache, tmp_path):
    spec_path = write_spec(tmp_path)
    spec = load_spec(spec_path)
    finetune_key = next(c.key for c in plan(spec) if c.kind == "finetune")
    cache = tmp_path / "cache"
    built = build_tiny_model(relxfer_cache)  # the session's tiny model, not built again
    (cache / "builtin").mkdir(parents=True)
    os.symlink(built, cache / "builtin" / built.name)
    checkpoints = cache / "finetune" / finetune_key / "checkpoints"
    log, tag = tmp_path / "log.txt", uuid.uuid4().hex

    process = start(spec_path, mlflow_server.uri, cache, log, tag)
    deadline = time.time() + 420
    while not (checkpoints / "step-4" / "state.json").is_file():
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    victim = ranks(tag)[1]
    os.kill(victim, signal.SIGKILL)
    # The fine-tune fails; the study goes on with the cells that do not need its adapter.
    assert process.wait(timeout=600) == 1, log.read_text()[-3000:]
    output = log.read_text()
    assert "failed   finetune/tiny/seed0: torchrun fine-tune of model 'tiny' failed (exit code 1)" in output, output[
        -3000:
    ]
    assert "Traceback" not in output
    time.sleep(1)
    assert ranks(tag) == {}, "a rank outlived its group"

    assert start(spec_path, mlflow_server.uri, cache, log, tag).wait(timeout=600) == 0, log.read_text()[-3000:]
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("fsdp-resume").experiment_id
    runs = [r for r in client.search_runs([experiment]) if r.data.tags.get("relxfer.cell_key")]
    finetunes = [r for r in runs if r.data.tags["relxfer.kind"] == "finetune"]
    assert len(finetunes) == 1, [(r.info.run_name, r.info.status) for r in finetunes]
    run = finetunes[0]
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED" and tags["relxfer.resumed"] == "true"
    assert (
        tags["relxfer.engine"] == "torchrun"
        and tags["relxfer.world_size"] == "2"
        and tags["relxfer.finetune_method"] == "qlora"
    )
    assert 4 <= metrics["resumed_from_step"] < STEPS and metrics["resumed_from_step"] % 2 == 0
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # each step exactly once
    assert {f.path for f in client.list_artifacts(run.info.run_id, "adapter")} >= {"adapter/adapter_model.safetensors"}
    assert sorted(r.info.status for r in runs if r.data.tags["relxfer.kind"] == "evaluate") == ["FINISHED"] * 2

    # Killed, resumed from a sharded checkpoint, and still the one-process loss curve.
    data = load_study_data(spec)
    builder = PromptBuilder.from_spec(spec.prompt.to_dict())
    examples = [builder.training_example(item) for item in data.train_items]
    single = train_lora(
        spec.models[0], spec.finetune, examples, tmp_path / "single", seed=0, cache_dir=relxfer_cache, progress=False
    )
    logged = [m.value for m in sorted(history, key=lambda m: m.step)]
    difference = np.abs(np.array(logged) - np.array(single.loss_history)).max()
    print(f"resumed FSDP2 run vs one process: max loss difference {difference:.2e}")
    assert difference <= LOSS_TOLERANCE
