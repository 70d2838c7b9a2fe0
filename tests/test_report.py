"""What a reader sees in `relxfer compare`'s report: the text rendering and the JSON, on a
simulated study (the numbers themselves are checked in test_stats*.py and test_compare_scale.py)."""

from __future__ import annotations

import json
import re

import pytest

from relxfer.compare.report import (
    build_report,
    headline_metrics,
    render_text,
    to_dict,
    write_outputs,
)
from relxfer.compare.stats import RULE
from tests.support.simulate import simulate_study

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def report():
    # 2 models, 3 vs 3 languages, 2 fine-tuning seeds; CoT reasoning fails to parse half the time.
    items = simulate_study(n_models=2, n_questions=40, n_seeds=2, cot_parse_failure=0.5, family_gap=0.8, seed=4)
    return build_report(items, mixed=False)


@pytest.fixture(scope="module")
def text(report) -> str:
    return render_text(report)


def test_seedless_runs_have_no_seed(report, text):
    accuracy = report.accuracy
    assert set(accuracy.loc[accuracy["condition"] != "finetuned", "seed"]) == {-1}
    header = text.splitlines()[1]
    assert re.findall(r"\S+(?: seed \d)?", header) == ["baseline", "cot", "finetuned seed 0", "finetuned seed 1"]
    assert "seed 0" not in header.split("finetuned")[0]  # no seed on baseline and CoT columns
    gains = text.split("Gains over baseline")[1].split("Family gap")[0]
    cot_rows = [line for line in gains.splitlines() if " cot " in line]
    assert cot_rows and all(line.split()[1] == "-" for line in cot_rows)


def test_high_parse_failure_is_flagged_in_the_table_and_the_summary(report, text):
    assert report.accuracy.loc[report.accuracy["condition"] == "cot", "parse_failure_high"].all()
    assert text.count(" !") == len(report.accuracy[report.accuracy["condition"] == "cot"])
    assert "! at least 10% of this run's reasoning texts gave no parseable answer" in text
    assert "Warning: cot: 12 of 12 runs had no parseable answer" in " ".join(text.split())
    assert to_dict(report)["warnings"][0].startswith("Warning: cot: 12 of 12 runs")


def test_gains_table_explains_b_c_and_writes_p_values_with_three_decimals(report, text):
    flat = " ".join(text.split())
    assert "b/c: b questions went from right to wrong, c from wrong to right" in flat
    assert "p: exact passage sign-flip test" in flat and "p_holm: Holm-adjusted" in flat
    gains = text.split("verdict\n")[1].split("\n\n")[0].splitlines()
    cells = [re.search(r"(< 0\.001|\S+)\s+(< 0\.001|\S+)\s+\S+$", line).groups() for line in gains]
    p_cells = [cell for pair in cells for cell in pair]
    assert len(p_cells) == 2 * len(report.gains)
    assert all(re.fullmatch(r"< 0\.001|[01]\.\d{3}", c) for c in p_cells), p_cells
    assert "1.000" in p_cells


def test_every_analysis_leads_with_one_plain_sentence(report, text):
    family = text.split("Family gap: do related languages gain more than controls?\n")[1].split("\n\n")[0]
    first = family.splitlines()[0]
    assert first.startswith("  cot vs baseline: related languages gained") or first.startswith(
        "  cot vs baseline: related languages gained about as much"
    )
    assert "CR2" not in first and "logits" not in first and "points" in first
    for summary in to_dict(report)["summaries"]:
        sentence = summary["summary"].split(". ")[0]
        assert "CR2" not in sentence and "t(" not in sentence and "resolution" not in sentence
        assert summary["summary"].startswith(summary["condition"])
        assert summary["scale"] in ("raw", "logit") and summary["reference"] == "baseline"


def test_the_rule_is_stated_once_at_the_end(text):
    assert " ".join(text.split()).endswith(f"Rule: {RULE}")


def test_a_refused_family_conclusion_has_no_inference(report):
    items = simulate_study(
        n_models=2, n_related=2, n_control=3, n_questions=20, conditions=("baseline", "finetuned"), seed=1
    )
    refused = build_report(items, mixed=False)
    record = to_dict(refused)["analyses"]["family_gap[finetuned]"]
    assert record["conclusion"] == "refused"
    assert record["p_value"] is None and record["estimate"] is None and record["ci_low"] is None
    line = refused.family_gap["finetuned"].summary
    assert line.startswith("finetuned vs baseline: no family conclusion") and "p =" not in line
    assert "family_gap_finetuned" not in headline_metrics(refused)


def test_outputs_include_the_text_report_json_and_the_family_gap_plot(report, tmp_path):
    written = {p.name for p in write_outputs(report, tmp_path)}
    assert {
        "report.txt",
        "report.json",
        "accuracy.csv",
        "gains.csv",
        "family_gap_finetuned.png",
        "family_gap_cot.png",
        "gain_vs_baseline_finetuned.png",
        "language_gains_finetuned.png",
    } <= written
    assert json.loads((tmp_path / "report.json").read_text())["scale"] == "raw"
    assert (tmp_path / "report.txt").read_text().startswith("Accuracy (95% interval clustered by passage")
