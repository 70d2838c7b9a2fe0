"""The science works end to end (issue 13): the smoke study plants a transfer effect that the
pipeline finds, and its null twin plants none and the pipeline finds none.

Each study runs for real (a QLoRA fine-tune of the built-in tiny model, baseline, fine-tuned and
chain-of-thought scoring) against the real tracking server, and the criteria are read from
`relxfer compare --format json` (tests/smoke_study.py). Seed 0 of specs/smoke.json is the
README's main job, checked in tests/test_end_to_end.py; here two more data and training seeds
of it, and specs/smoke-null.json. bench/smoke_seeds.py runs seeds 0 to 4 of both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from relxfer.cli import main

from .smoke_study import findings, null_failures, smoke_failures, write_seed_variant

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "specs" / "smoke.json"
NULL = REPO / "specs" / "smoke-null.json"


@pytest.fixture(scope="module")
def study(mlflow_server, relxfer_cache, tmp_path_factory):
    """Run a seed variant of a spec with `relxfer run`, then return what compare reports."""
    specs = tmp_path_factory.mktemp("specs")

    def run(spec: Path, seed: int):
        variant = write_seed_variant(spec, seed, specs)
        done = CliRunner().invoke(
            main, ["run", str(variant), "--tracking-uri", mlflow_server.uri, "--cache-dir", str(relxfer_cache), "--no-progress"]
        )
        assert done.exit_code == 0, done.output[-3000:]
        name = json.loads(variant.read_text())["name"]
        report = CliRunner().invoke(
            main, ["compare", "--experiment", name, "--tracking-uri", mlflow_server.uri, "--format", "json", "--no-log"]
        )
        assert report.exit_code == 0, report.output[-3000:]
        return findings(json.loads(report.output))

    return run


@pytest.mark.parametrize("seed", [1, 2])
def test_smoke_study_finds_the_planted_transfer(study, seed):
    found = study(SMOKE, seed)
    assert len(found.related_gains) == len(found.control_gains) == 5
    assert smoke_failures(found) == [], found.gap_summary


def test_null_twin_finds_no_family_gap(study):
    found = study(NULL, 0)
    assert len(found.related_gains) == len(found.control_gains) == 5
    assert null_failures(found) == [], found.gap_summary
    # Nothing the training taught is in any evaluation language: no gain survives Holm, and the
    # two groups gain alike (well within the 15 points the smoke study must separate them by).
    assert min(found.holm_p.values()) >= 0.05, found.holm_p
    assert abs(found.mean_related_gain - found.mean_control_gain) < 0.15
