"""The science works end to end: the smoke study plants a transfer effect that the
pipeline finds on another data and training seed than the README's main job, and its null twin
plants none and the pipeline finds none.

Each study runs for real (a QLoRA fine-tune of the built-in tiny model, baseline and fine-tuned
scoring of every language) against the real tracking server, and the criteria are read from
`relxfer compare --format json` (tests/smoke_study.py). The criteria concern the fine-tuned
condition only, so these variants leave out the chain-of-thought cells (their baseline and
fine-tuned cells are the ones the full spec runs). Seed 0 of specs/smoke.json, CoT included, is
the README's main job, checked in tests/test_end_to_end.py; bench/smoke_seeds.py runs seeds 0 to
4 of both specs (results in bench/results/smoke_seeds.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from relxfer.cli import main
from tests.smoke_study import findings, null_failures, smoke_failures, write_seed_variant

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "specs" / "smoke.json"
NULL = REPO / "specs" / "smoke-null.json"
CONDITIONS = ["baseline", "finetuned"]


@pytest.fixture(scope="module")
def study(mlflow_server, relxfer_cache, tmp_path_factory):
    """Run a seed variant of a spec with `relxfer run`, then return what compare reports."""
    specs = tmp_path_factory.mktemp("specs")

    def run(spec: Path, seed: int):
        variant = write_seed_variant(spec, seed, specs, CONDITIONS)
        done = CliRunner().invoke(
            main,
            [
                "run",
                str(variant),
                "--tracking-uri",
                mlflow_server.uri,
                "--cache-dir",
                str(relxfer_cache),
                "--no-progress",
            ],
        )
        assert done.exit_code == 0, done.output[-3000:]
        name = json.loads(variant.read_text())["name"]
        report = CliRunner().invoke(
            main, ["compare", "--experiment", name, "--tracking-uri", mlflow_server.uri, "--format", "json", "--no-log"]
        )
        assert report.exit_code == 0, report.output[-3000:]
        return findings(json.loads(report.output))

    return run


def test_smoke_study_finds_the_planted_transfer_on_another_seed(study):
    found = study(SMOKE, 1)
    assert len(found.related_gains) == len(found.control_gains) == 5
    assert smoke_failures(found) == [], found.gap_summary


def test_null_twin_finds_no_family_gap(study):
    found = study(NULL, 0)
    assert len(found.related_gains) == len(found.control_gains) == 5
    assert null_failures(found) == [], found.gap_summary
    assert found.gap_conclusion == "none", found.gap_summary
