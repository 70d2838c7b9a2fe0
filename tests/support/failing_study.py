"""A study with a failing model, for the tests of what a failed cell does (tests/test_keep_going.py
on the local executor, tests/test_keep_going_ray.py on Ray): the smoke study made small, on two
models, one of them a copy of the tiny model whose weights file is corrupt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlflow import MlflowClient

from relxfer.models.tiny import build_tiny_model
from tests.smoke_study import plumbing_variant, write_variant

REPO = Path(__file__).resolve().parents[2]
# What loading the corrupt copy says (safetensors' own words).
CORRUPT = "Error while deserializing header: invalid JSON in header: EOF while parsing a value at line 1 column 0"
# After the bad model is repaired and the study run again: the cells that failed keep their FAILED
# run and gain a FINISHED one; the fine-tuned evaluations, never started, run once.
RERUN_STATUSES_OF_BAD_MODEL = {
    "finetune/bad/seed0": ["FAILED", "FINISHED"],
    "eval/bad/baseline/syn_Rela": ["FAILED", "FINISHED"],
    "eval/bad/baseline/syn_Ctla": ["FAILED", "FINISHED"],
    "eval/bad/finetuned/syn_Rela/seed0": ["FINISHED"],
    "eval/bad/finetuned/syn_Ctla/seed0": ["FINISHED"],
}


def smoke() -> dict:
    return json.loads((REPO / "specs" / "smoke.json").read_text())


def two_model_spec(path: Path, bad_dir: Path, bad_first: bool = False) -> Path:
    """The smoke study made small (one related and one control language, 3 training steps,
    baseline and fine-tuned) on two models: the built-in tiny model and a copy of it in
    `bad_dir`."""
    raw = plumbing_variant(smoke(), languages_per_group=1)
    raw["name"] = path.stem
    raw["data"]["source"]["n_passages"] = 30
    raw["data"]["split"]["held_out"] = 10
    raw["finetune"]["training"] = {"max_steps": 3, "learning_rate": 0.003, "batch_size": 8, "checkpoint_every": 0}
    raw["conditions"] = ["baseline", "finetuned"]
    good = {**raw["models"][0], "name": "good"}
    bad = {**raw["models"][0], "name": "bad", "source": str(bad_dir)}
    raw["models"] = [bad, good] if bad_first else [good, bad]
    return write_variant(raw, path)


def corrupt_model(cache: Path, where: Path) -> Path:
    """A copy of the tiny model (built in `cache`) at `where` whose weights file is corrupt (its
    header overwritten)."""
    built = build_tiny_model(cache)
    bad = where
    shutil.copytree(built, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(b"\0" * 64 + weights.read_bytes()[64:])
    return bad


def repair_model(cache: Path, bad: Path) -> None:
    """The fix: the tiny model's real weights back into the corrupt copy."""
    shutil.copy(build_tiny_model(cache) / "model.safetensors", bad / "model.safetensors")


def cell_runs(client: MlflowClient, experiment: str) -> dict[str, list]:
    """run name -> its runs, oldest first."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs: dict[str, list] = {}
    for r in sorted(client.search_runs([experiment_id], max_results=1000), key=lambda r: r.info.start_time):
        if r.data.tags.get("relxfer.cell_key"):
            runs.setdefault(r.info.run_name, []).append(r)
    return runs
