"""The Tinker engines against a real Tinker-compatible server: SkyRL tx 0.3.0 (JAX on the CPU) on
127.0.0.1 serving the tiny model, driven by the tinker SDK 0.16.1 (the line SkyRL tx speaks), a
real MLflow server and real Belebele questions from ../shared/data.

One study does everything, as a user would: `relxfer run` in a subprocess is killed once the
fine-tune has saved its state on the service, and the same command run again resumes it from
that state and then runs the baseline, fine-tuned and chain-of-thought evaluations. Then:
- the loss curve in MLflow has every step once and falls; step 1's loss equals the local
  trainer's mean completion loss of the same batch on the same weights;
- the exported adapter loads in peft and gives the label log-probs the service gave (fine-tuned
  tables), and the baseline tables equal the local engine's, both within 1e-4;
- the tables have the local engine's columns; chain-of-thought texts equal local greedy ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, MlflowServer, free_port
from tests.servers.skyrl_env import skyrl_python
from tests.servers.skyrl_server import SkyRLServer, served_model

pytestmark = pytest.mark.system

tinker = pytest.importorskip("tinker", reason='the `test` extra: pip install -e ".[test]"')
TOLERANCE = 1e-4
STEPS, CHECKPOINT_EVERY = 6, 2


@pytest.fixture(scope="module")
def skyrl_server(tmp_path_factory, relxfer_cache):
    from relxfer.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("skyrl")
    model_dir = served_model(build_tiny_model(relxfer_cache), root / "tiny-llama")
    server = SkyRLServer(skyrl_python(), model_dir, root / "server", free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """A real MLflow server of its own, given 5 minutes to come up: on a 2-core machine busy with
    SkyRL tx's JIT compilation the session server's 90 s were not always enough."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-tinker")).start(timeout=300)
    yield server
    server.stop()


def study_spec(path: Path, belebele_dir: Path, base_model: str) -> Path:
    engine = {"kind": "tinker", "base_model": base_model, "request_timeout_s": 300}
    spec = {
        "name": "tinker-belebele",
        "data": {
            "source": {"kind": "belebele", "path": str(belebele_dir)},
            "split": {"held_out": 4, "unit": "question", "seed": 0},
        },
        "train": {"languages": ["eng_Latn"], "max_items_per_language": 24},
        "eval": {
            "groups": [
                {"name": "related", "role": "related", "languages": ["fra_Latn"]},
                {"name": "control", "role": "control", "languages": ["tur_Latn"]},
            ]
        },
        "models": [
            {
                "name": "tiny",
                "source": "builtin:tiny-llama",
                "dtype": "float32",
                "engines": {"evaluate": engine, "finetune": engine},
            }
        ],
        "finetune": {
            "method": "lora",
            "lora": {"r": 8, "alpha": 32, "dropout": 0.0},
            "training": {
                "max_steps": STEPS,
                "batch_size": 4,
                "learning_rate": 0.01,
                "warmup_ratio": 0.0,
                "lr_scheduler": "constant",
                "max_seq_len": 192,
                "checkpoint_every": CHECKPOINT_EVERY,
            },
        },
        "conditions": ["baseline", "finetuned", "cot"],
        "cot": {"max_new_tokens": 6, "stop": ["\n\n"]},
        "seeds": [0],
    }
    path.write_text(json.dumps(spec, indent=2))
    return path


def relxfer_run(spec: Path, env: dict, cache: Path, uri: str) -> subprocess.Popen:
    argv = [
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
    ]
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_tinker_study_kill_resume_and_parity(skyrl_server, tracking_server, belebele_dir, relxfer_cache, tmp_path):
    mlflow_server = tracking_server
    spec = study_spec(tmp_path / "spec.json", belebele_dir, skyrl_server.base_model)
    env = {
        **os.environ,
        "TINKER_API_KEY": "tml-relxfer-test",
        "TINKER_BASE_URL": skyrl_server.base_url,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cache = tmp_path / "cache"

    # 1. Kill the run once the service holds the state of step CHECKPOINT_EVERY and the MLflow
    #    run holds the checkpoint naming it (a re-run starts from the run's artifacts, never
    #    from this machine's disk).
    client = MlflowClient(mlflow_server.uri)
    first = relxfer_run(spec, env, cache, mlflow_server.uri)
    deadline = time.time() + 600
    while not saved_checkpoints(client, "tinker-belebele"):
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "no Tinker state saved in time"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    resumed_at = max(saved_checkpoints(client, "tinker-belebele"))

    # 2. The same command resumes the fine-tune from that state and runs the evaluations.
    second = relxfer_run(spec, env, cache, mlflow_server.uri)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output + skyrl_server.log_tail()

    experiment = client.get_experiment_by_name("tinker-belebele")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    finetunes = [r for r in runs if r.data.tags.get("relxfer.kind") == "finetune"]
    finished = [r for r in finetunes if r.info.status == "FINISHED"]
    assert len(finished) == 1, [(r.info.run_id, r.info.status) for r in finetunes]
    run = finished[0]
    assert run.data.tags["relxfer.engine"] == "tinker" and run.data.tags["relxfer.resumed"] == "true"
    assert run.data.tags["relxfer.versions.tinker"] == metadata.version("tinker")
    assert run.data.tags["relxfer.tinker.state_path"].startswith("tinker://")
    assert run.data.metrics["resumed_from_step"] == resumed_at >= CHECKPOINT_EVERY

    # Loss curve: every step once, falling.
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.1, losses
    print("loss curve:", [round(x, 4) for x in losses], "resumed after step", resumed_at)
    check_first_step_loss(spec, relxfer_cache, losses[0])

    adapter = Path(client.download_artifacts(run.info.run_id, "adapter", str(tmp_path / "adapter")))
    record = json.loads((adapter / "relxfer_finetune.json").read_text())
    assert record["tinker"]["export"]["format"] == "peft"
    check_tables_against_local(client, runs, spec, adapter, relxfer_cache, tmp_path)


def saved_checkpoints(client: MlflowClient, experiment_name: str) -> list[int]:
    """Steps of the complete checkpoints (state.json uploaded) in the fine-tune run's artifacts."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    steps = []
    for run in client.search_runs([experiment.experiment_id], "tags.`relxfer.kind` = 'finetune'"):
        for folder in client.list_artifacts(run.info.run_id, "checkpoints"):
            if any(f.path.endswith("/state.json") for f in client.list_artifacts(run.info.run_id, folder.path)):
                steps.append(int(folder.path.rsplit("-", 1)[1]))
    return steps


def check_first_step_loss(spec_path: Path, cache: Path, reported: float) -> None:
    """Step 1 runs on the untrained LoRA (B = 0): the base weights. Its reported loss must be the
    local trainer's mean completion-token loss of the same examples."""
    import torch

    from relxfer.data.prompts import PromptBuilder
    from relxfer.models.loading import load_causal_lm
    from relxfer.models.tokenization import default_add_bos_token
    from relxfer.plan.study_data import load_study_data
    from relxfer.spec.load import load_spec
    from relxfer.train import completion_loss, tokenize_examples
    from relxfer.train.tinker_recipe import schedule_length, step_examples

    spec = load_spec(spec_path)
    model = spec.models[0]
    train = spec.finetune.training
    builder = PromptBuilder.from_spec(spec.prompt.to_dict())
    examples = [builder.training_example(item) for item in load_study_data(spec).train_items]
    lm, tokenizer = load_causal_lm(model, None, cache)
    rows = tokenize_examples(tokenizer, examples, default_add_bos_token(), train.max_seq_len)
    batch = [rows[i] for i in step_examples(len(rows), train, 0, 1, schedule_length(len(rows), train)[1])]
    with torch.inference_mode():
        loss_sum, n = completion_loss(lm, batch, tokenizer.pad_token_id, torch.device("cpu"))
    print(f"step-1 loss: service {reported:.6f}, local {loss_sum.item() / n:.6f}")
    assert abs(reported - loss_sum.item() / n) < TOLERANCE


def check_tables_against_local(client, runs, spec_path: Path, adapter: Path, cache: Path, tmp_path: Path) -> None:
    """Every evaluation table has the local engine's columns; its label log-probs are the local
    engine's on the same questions (base model, or base + the exported adapter in peft), and its
    chain-of-thought texts are local greedy generation's."""
    from relxfer.data.prompts import PromptBuilder
    from relxfer.evaluate.local_backend import LocalBackend
    from relxfer.evaluate.loop import evaluate_items
    from relxfer.plan.study_data import load_study_data
    from relxfer.spec.load import load_spec

    spec = load_spec(spec_path)
    data = load_study_data(spec)
    builder = PromptBuilder.from_spec(spec.prompt.to_dict())
    model = spec.models[0]
    backends = {
        "baseline": LocalBackend.load(model, None, cache),
        "finetuned": LocalBackend.load(model, None, cache, adapter_dir=adapter),
    }
    backends["cot"] = backends["baseline"]
    worst: dict[str, float] = {}
    for run in (r for r in runs if r.data.tags.get("relxfer.kind") == "evaluate" and r.info.status == "FINISHED"):
        condition, language = run.data.tags["relxfer.condition"], run.data.tags["relxfer.language"]
        assert run.data.tags["relxfer.engine"] == "tinker"
        assert run.data.tags["relxfer.versions.tinker"] == metadata.version("tinker")
        path = client.download_artifacts(run.info.run_id, "predictions.json", str(tmp_path / run.info.run_id))
        table = json.loads(Path(path).read_text())
        service = [dict(zip(table["columns"], row)) for row in table["data"]]
        local = evaluate_items(
            backends[condition],
            data.eval_items[language],
            builder,
            cot=spec.cot if condition == "cot" else None,
            progress=False,
        ).records
        assert table["columns"] == list(local[0]), (condition, table["columns"])
        by_id = {r["question_id"]: r for r in local}
        assert sorted(by_id) == sorted(r["question_id"] for r in service)
        labels = [f"logprob_{label}" for label in builder.labels]
        diff = max(abs(r[c] - by_id[r["question_id"]][c]) for r in service for c in labels)
        worst[condition] = max(worst.get(condition, 0.0), diff)
        if condition == "cot":
            assert [r["cot_text"] for r in service] == [by_id[r["question_id"]]["cot_text"] for r in service]
        if condition == "finetuned":  # the service sampled trained weights, not the base model's
            base = evaluate_items(backends["baseline"], data.eval_items[language], builder, progress=False).records
            moved = max(abs(a[c] - b[c]) for a, b in zip(local, base) for c in labels)
            assert moved > 0.01, moved
    print("max |service - local| label log-prob by condition:", worst)
    assert set(worst) == {"baseline", "finetuned", "cot"}
    assert all(v < TOLERANCE for v in worst.values()), worst
