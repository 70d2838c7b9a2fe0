"""The runner on a small variant of the smoke study against a sqlite store: the chat-template
option works through training and evaluation, and a changed setting re-runs only its cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relxfer.data.prompts import PromptBuilder
from relxfer.plan.cells import plan
from relxfer.run.runner import StudyRunner
from relxfer.spec.load import load_spec
from relxfer.tracking.client import Tracker
from tests.smoke_study import plumbing_variant
from tests.support.provenance import assert_provenance

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def small_spec(tmp_path: Path, name: str, edit=None):
    raw = plumbing_variant(json.loads((REPO / "specs" / "smoke.json").read_text()))
    raw["data"]["source"]["n_passages"] = 30
    raw["data"]["split"]["held_out"] = 10
    raw["finetune"]["training"] = {"max_steps": 3, "learning_rate": 0.003, "batch_size": 8, "checkpoint_every": 0}
    raw["conditions"] = ["baseline", "finetuned"]
    if edit:
        edit(raw)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return load_spec(path)


def test_chat_template_runs_through_training_and_evaluation(tmp_path, relxfer_cache):
    spec = small_spec(tmp_path, "chat", lambda r: r["prompt"].update(chat_template=True))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runner = StudyRunner(spec, tracker, relxfer_cache, progress=False)
    outcomes = runner.run()
    assert [o.status for o in outcomes] == ["FINISHED"] * len(plan(spec))
    run = tracker.client.get_run(next(o.run_id for o in outcomes if o.cell.kind == "evaluate"))
    from relxfer.models.chat_format import ChatFormat
    from relxfer.models.loading import load_tokenizer
    from relxfer.spec.types import ChatTemplateSettings

    settings = ChatTemplateSettings.from_partial({}).to_dict()  # what `true` stands for
    renderer = ChatFormat(load_tokenizer(spec.models[0], relxfer_cache), settings)
    chat_id = PromptBuilder.from_spec(spec.prompt.to_dict(), settings).bind(renderer).template_id
    assert run.data.tags["relxfer.template"] == chat_id == run.data.params["template_id"]
    assert chat_id != PromptBuilder.from_spec({**spec.prompt.to_dict(), "chat_template": False}).template_id
    # Every run says what made it: the parent, the fine-tune and the evaluation runs.
    finetune = tracker.client.get_run(next(o.run_id for o in outcomes if o.cell.kind == "finetune"))
    for recorded in (tracker.client.get_run(runner.parent.run_id), finetune, run):
        assert_provenance(recorded.data.tags)


def test_changing_the_learning_rate_reruns_only_finetune_cells(tmp_path, relxfer_cache):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = StudyRunner(small_spec(tmp_path, "a"), tracker, relxfer_cache, progress=False).run()
    assert {o.status for o in first} == {"FINISHED"}
    again = StudyRunner(small_spec(tmp_path, "b"), tracker, relxfer_cache, progress=False).run()
    assert {o.status for o in again} == {"SKIPPED"}
    changed = small_spec(tmp_path, "c", lambda r: r["finetune"]["training"].update(learning_rate=0.01))
    third = StudyRunner(changed, tracker, relxfer_cache, progress=False).run()
    ran = {o.cell.run_name for o in third if o.status == "FINISHED"}
    assert ran == {c.run_name for c in plan(changed) if c.kind == "finetune" or c.condition == "finetuned"}
    assert {o.status for o in third if o.cell.run_name not in ran} == {"SKIPPED"}
