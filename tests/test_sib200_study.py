"""The SIB-200 study in CI size: real FLORES-200 sentences in 4 Semitic and 6 control languages,
the built-in tiny model fine-tuned on a slice of SIB-200's Arabic training split and evaluated on
a slice of the test split, then compared. The tiny model knows none of these languages: this
checks the real-data path through fine-tune, evaluation and compare (every cell FINISHED, the
evaluated ids are the test split's, none reached training, compare answers with the 4 + 6
design's family gap and permutation test), not transfer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from relxfer.cli import main
from relxfer.plan.cells import plan
from relxfer.spec.load import load_spec

REPO = Path(__file__).resolve().parents[1]
TRAIN_ITEMS, EVAL_ITEMS = 24, 8

pytestmark = pytest.mark.integration


def ci_spec(tmp_path: Path, data_dir: Path) -> Path:
    """specs/sib200-gemma.json on the tiny model, with few training steps and items."""
    raw = json.loads((REPO / "specs" / "sib200-gemma.json").read_text())
    raw["name"] = "sib200-tiny"
    raw["data"]["source"]["path"] = str(data_dir)
    raw["train"]["max_items_per_language"] = TRAIN_ITEMS
    raw["models"] = [{"name": "tiny", "source": "builtin:tiny-llama", "architecture": "dense", "dtype": "float32"}]
    raw["finetune"]["lora"] = {"r": 8, "alpha": 16, "dropout": 0.0}
    raw["finetune"]["training"] = {"max_steps": 3, "learning_rate": 0.002, "batch_size": 8, "max_seq_len": 256}
    raw["evaluation"] = {"max_items": EVAL_ITEMS}
    path = tmp_path / "sib200-tiny.json"
    path.write_text(json.dumps(raw, indent=2, ensure_ascii=False))
    return path


def test_sib200_runs_through_finetune_evaluation_and_compare(sib200_dir, relxfer_cache, tmp_path):
    spec_path = ci_spec(tmp_path, sib200_dir)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", str(spec_path), "--tracking-uri", uri, "--cache-dir", str(relxfer_cache), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output

    spec = load_spec(spec_path)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sib200-tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("relxfer.cell_key")]
    assert sorted(r.data.tags["relxfer.cell_key"] for r in children) == sorted(c.key for c in plan(spec))
    assert {r.info.status for r in children} == {"FINISHED"} and len(children) == 21

    parent = next(r for r in runs if r.data.tags.get("relxfer.kind") == "study")
    assert parent.data.metrics["n_train_items"] == TRAIN_ITEMS
    test_ids = [line.split("\t")[0] for line in (sib200_dir / "heb_Hebr" / "test.tsv").read_text().splitlines()[1:]]
    evaluated = set()
    for run in (r for r in children if r.data.tags["relxfer.kind"] == "evaluate"):
        path = client.download_artifacts(run.info.run_id, "predictions.json", str(tmp_path / run.info.run_id))
        table = json.loads(Path(path).read_text())
        ids = [row[table["columns"].index("question_id")] for row in table["data"]]
        # A seeded draw from the test split, the same in every language, in file order.
        assert len(ids) == EVAL_ITEMS and ids == [i for i in test_ids if i in set(ids)], run.info.run_name
        evaluated.add(tuple(ids))
    assert len(evaluated) == 1

    out = tmp_path / "report"
    args = ["compare", "--experiment", "sib200-tiny", "--tracking-uri", uri, "--no-log", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    gains = [g for g in report["gains"] if g["condition"] == "finetuned"]
    assert sorted(g["language"] for g in gains) == sorted(spec.eval_languages)
    assert {g["role"] for g in gains if g["language"] in ("heb_Hebr", "amh_Ethi", "mlt_Latn", "tir_Ethi")} == {
        "related"
    }
    gap = report["analyses"]["family_gap[finetuned]"]
    assert gap["ci_low"] <= gap["estimate"] <= gap["ci_high"]
    assert 1 / 210 <= gap["perm_p_value"] <= 1  # 4 + 6 languages: 210 assignments
    assert "family gap" in result.output.lower()
