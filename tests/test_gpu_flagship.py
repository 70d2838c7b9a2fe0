"""bench/gpu_flagship.py runs to the end on the CPU in its tiny mode (shrunken configs of the real
Qwen3 and gpt-oss architectures, their real tokenizers), from a packed data folder as a GPU
machine without network reads it, and says that it measured nothing on a GPU. Its count of the
weights' bytes under relxfer's QLoRA must equal what the trained models really hold."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relxfer.spec.load import load_spec
from relxfer.spec.memory import estimate
from tests.support import shared_data

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_flagship.py"

pytestmark = pytest.mark.integration


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )


def test_tiny_mode_runs_every_phase_from_packed_data(tmp_path):
    data = shared_data.SHARED_DATA
    shared_data.need(data / "tokenizers" / "SOURCE.md", "the real tokenizers and configs")
    shared_data.need(data / "belebele" / "arb_Arab.jsonl", "real Belebele files")
    packed = run_script("--pack", str(tmp_path / "carry"), "--no-wheels", "--data", str(data))
    assert packed.returncode == 0, packed.stderr[-2000:]
    assert (tmp_path / "carry" / "data" / "tokenizers" / "gpt-oss" / "tokenizer.json.gz").is_file()

    out = tmp_path / "tiny.json"
    args = ["--tiny", "--steps", "1", "--oss-steps", "1", "--data", str(tmp_path / "carry" / "data")]
    done = run_script(*args, "--out", str(out), "--work", str(tmp_path / "work"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "measured nothing on a GPU" in done.stdout

    results = json.loads(out.read_text())
    assert results["measured_on_gpu"] is False and results["mode"] == "tiny"
    assert "measured nothing on a GPU" in results["note"]
    assert results["machine"]["device"] == "cpu"
    assert {p: r["outcome"] for p, r in results["phases"].items()} == dict.fromkeys(
        ("qwen", "eval", "fsdp", "gpt-oss"), "ok"
    )
    # The spec's settings, but for the shorter sequences of the CPU check.
    spec = load_spec(REPO / "specs" / "full.json")
    assert spec.finetune is not None
    training = spec.finetune.training
    assert results["settings"]["batch_size"] == training.batch_size
    assert results["settings"]["grad_accum_steps"] == training.grad_accum_steps
    assert results["settings"]["gradient_checkpointing"] == training.gradient_checkpointing

    for name, model in results["models"].items():
        # The floors are relxfer plan's own.
        floor = estimate(spec.model(name), spec.finetune)
        assert floor is not None
        assert model["plan_floor"]["per_device_gb"] == round(floor.per_device_gb, 2)
        finetune = model["finetune"]
        assert finetune["steps"] == 1 and finetune["examples"] == training.batch_size * training.grad_accum_steps
        assert len(finetune["losses"]) == 1 and math.isfinite(finetune["losses"][0])
        assert finetune["tokens_per_s_median"] > 0 and finetune["peak_rss_gib"] > 0
        # The meta-device count agrees with the weights the trained tiny model holds, byte for byte.
        assert finetune["weights_measured_gb"] == model["tiny_weights_expected_gb"]
        assert model["weights_expected_gb"]["total"] > model["tiny_weights_expected_gb"]["total"]

    qwen = results["models"]["qwen3-4b"]
    assert qwen["params_b"] == pytest.approx(4.02, abs=0.01)
    assert results["models"]["gpt-oss-20b"]["params_b"] == pytest.approx(20.9, abs=0.1)
    scoring, cot = qwen["evaluation"]["scoring"], qwen["evaluation"]["cot"]
    assert scoring["questions"] == 12 and scoring["questions_per_s"] > 0 and scoring["prompt_tokens"] > 12 * 100
    assert cot["prompts"] == 2 and 0 < cot["generated_token_slots"] <= 2 * cot["max_new_tokens"]
    fsdp = qwen["finetune_fsdp"]
    assert fsdp["engine"] == "torchrun x 1"
    assert fsdp["max_loss_diff_vs_local"] < 1e-3  # world size 1: the one-process loss, up to summation order


def test_full_mode_refuses_a_machine_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the full run would start")
    done = run_script("--out", str(tmp_path / "x.json"))
    assert done.returncode == 2
    assert "no CUDA GPU visible" in done.stderr and not (tmp_path / "x.json").exists()
