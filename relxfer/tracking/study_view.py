"""How a study reads in the MLflow UI, on top of the Tracker's calls (only relxfer.tracking.client talks to
MLflow):

- the experiment is marked as model training (MLflow's experiment kind) and described by the spec;
- the parent run is described by the spec, and after `relxfer compare` also by the answer: the
  report's warnings and each analysis's plain sentence, and the plots, which it holds as
  artifacts (`plots/`);
- a comparison is one run nested under the study's parent run. Comparing again with the same
  settings keeps it when the same runs are compared, and replaces it (the older one is deleted)
  when they changed, so repeated calls never pile up runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from relxfer import __version__
from relxfer.spec.load import Spec
from relxfer.tracking.client import TAG, Study, Tracker

NOTE_TAG = "mlflow.note.content"  # the description of a run or experiment in the MLflow UI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # "Machine learning" in MLflow 3's experiment types
# MLflow 3.17's UI opens an experiment in the view its sidebar switch selects (GenAI unless the
# browser remembers "Model training"); a link with this query opens the runs list whatever it is.
RUNS_VIEW_QUERY = "workflowType=machine_learning"
RESULT_START, RESULT_END = "<!-- relxfer compare -->", "<!-- /relxfer compare -->"
DEFAULT_SETTINGS = {"reference": "baseline", "scale": "raw"}  # `relxfer compare`'s (a test checks)
PLOTS_FIRST = ("family_gap", "language_gains")  # the study's answer, before the diagnostics


def runs_link(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The experiment's runs list (or one run) in the MLflow UI of a tracking server; None for a
    database URI, which has no UI of its own."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/{page}?{RUNS_VIEW_QUERY}"


def study_note(spec: Spec, experiment_id: str | None = None) -> str:
    """Markdown describing the study: what it asks and its design; for the experiment, first a
    link to its runs list (MLflow 3.17 may open the experiment on its GenAI overview)."""
    models = ", ".join(f"{m.name} (`{m.source}`)" for m in spec.models)
    groups = "; ".join(f"{g.name} ({g.role}): {', '.join(g.languages)}" for g in spec.groups)
    link = f"[Open the runs list](#/experiments/{experiment_id}/runs?{RUNS_VIEW_QUERY}) · " if experiment_id else ""
    lines = [
        f"{link}**{spec.name}**" + (f": {spec.description}" if spec.description else ""),
        "",
        f"- models: {models}",
        f"- fine-tuned on: {', '.join(spec.train_languages)}" if spec.finetune else "- no fine-tune",
        f"- evaluated on: {groups}",
        f"- conditions: {', '.join(spec.conditions)}; seeds: {', '.join(map(str, spec.seeds))}",
    ]
    if experiment_id is not None:
        lines += [
            "",
            f"One parent run per `relxfer run` of the spec that runs something, named `{spec.name}`, with one child "
            f"run per cell (`finetune/<model>/seed<n>`, `eval/<model>/<condition>/<language>`); `relxfer compare` "
            f"nests its run under it and puts the answer (summary, plots) on it.",
        ]
    return "\n".join(lines)


def parent_name(study: Study, spec_name: str) -> str:
    """The spec's name, unless the run `mlflow run` started was given one (`--run-name`)."""
    given = study.adopted_name
    return given if given and not _generated_name(given) else spec_name


def _generated_name(name: str) -> bool:
    """True for a run name MLflow made up ("inquisitive-auk-377")."""
    parts = name.split("-")
    if len(parts) != 3 or not parts[2].isdigit():
        return False
    try:
        from mlflow.utils.name_utils import _GENERATOR_NOUNS as nouns
        from mlflow.utils.name_utils import _GENERATOR_PREDICATES as predicates
    except ImportError:  # a later MLflow moved its word lists: the shape alone decides
        return parts[0].isalpha() and parts[1].isalpha()
    return parts[0] in {p.lower() for p in predicates} and parts[1] in {n.lower() for n in nouns}


def describe_experiment(tracker: Tracker, experiment_id: str, spec: Spec) -> None:
    """Mark the experiment as model training unless it has a kind, and describe it by the spec
    unless someone other than relxfer wrote its description."""
    tags = tracker.experiment_tags(experiment_id)
    note = study_note(spec, experiment_id)
    updates = {}
    if not tags.get(EXPERIMENT_KIND_TAG):
        updates[EXPERIMENT_KIND_TAG] = EXPERIMENT_KIND
    current = tags.get(NOTE_TAG, "")
    if not current or _digest(current) == tags.get(f"{TAG}note_digest"):
        updates |= {NOTE_TAG: note, f"{TAG}note_digest": _digest(note)}
    tracker.set_experiment_tags(experiment_id, updates)


def latest_study_run(tracker: Tracker, experiment_id: str) -> str | None:
    """The most recent parent run of the experiment, a FINISHED one if there is any."""
    runs = tracker.runs(experiment_id, f"tags.`{TAG}kind` = 'study'", ["attributes.start_time DESC"])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return (finished or runs)[0].info.run_id if runs else None


def file_rerun(tracker: Tracker, study: Study, spec_name: str, tags: Mapping[str, str] | None = None) -> None:
    """A re-run with nothing to run makes no parent run, but `mlflow run` has started one already
    (and ends it itself when the command returns, so it cannot be deleted): file it under the
    study's latest parent run, as the only record of such a re-run there. `tags`: what the re-run
    was made with (provenance, the spec's hash), as a parent run would carry them."""
    if not study.adopted_id:
        return
    parent_id = latest_study_run(tracker, study.experiment_id)
    earlier = (
        tracker.runs(
            study.experiment_id,
            f"tags.`{TAG}kind` = 'rerun' and tags.`mlflow.parentRunId` = "
            f"'{parent_id}' and attributes.status = 'FINISHED'",
        )
        if parent_id
        else []
    )
    parent = {"mlflow.parentRunId": parent_id} if parent_id else {}
    tracker.set_tags(
        study.adopted_id,
        {**(tags or {}), f"{TAG}kind": "rerun", "mlflow.runName": f"{spec_name} (nothing to run)", **parent},
    )
    for run in earlier:
        tracker.delete(run.info.run_id)


@dataclass(frozen=True)
class Published:
    run_id: str
    parent_id: str | None
    kept: bool  # True: a comparison of the same runs and settings was there already; nothing logged
    replaced: int  # older comparisons with the same settings, deleted


def publish_comparison(
    tracker: Tracker,
    experiment_id: str,
    parent_id: str | None,
    subject: str,
    settings: dict[str, str],
    compared_run_ids: list[str],
    metrics: dict[str, float],
    out_dir: Path,
    answer: list[str],
    provenance: dict[str, str],
) -> Published:
    """Log a comparison as the one comparison run (per settings) under `parent_id`, and put its
    plots, headline numbers and `answer` (plain sentences) on the parent run as well. A comparison of the same runs
    with the same settings (by the same relxfer version) counts as unchanged: its statistics are
    the same up to the last digits of iterative fits. `provenance`: tags saying what the
    comparison was made with (relxfer.provenance, keys with the `relxfer.` prefix)."""
    settings_tag = json.dumps(settings, sort_keys=True)
    digest = _digest(json.dumps([sorted(compared_run_ids), settings_tag, subject, __version__]))
    same_settings = [
        r
        for r in tracker.runs(experiment_id, f"tags.`{TAG}kind` = 'compare'", ["attributes.start_time DESC"])
        if r.data.tags.get(f"{TAG}compared") == subject and r.data.tags.get(f"{TAG}compare_settings") == settings_tag
    ]
    for run in same_settings:
        if (
            run.info.status == "FINISHED"
            and run.data.tags.get(f"{TAG}report_digest") == digest
            and run.data.tags.get("mlflow.parentRunId") == parent_id
        ):
            return Published(run.info.run_id, parent_id, kept=True, replaced=0)
    changed = {k: v for k, v in settings.items() if DEFAULT_SETTINGS.get(k) != v}
    name = "compare" + (" (" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")" if changed else "")
    tags = {f"{TAG}compared": subject, f"{TAG}compare_settings": settings_tag, f"{TAG}report_digest": digest}
    parent = {"mlflow.parentRunId": parent_id} if parent_id else {}
    run_id = tracker.log_comparison(experiment_id, name, provenance | tags | parent, metrics, out_dir)
    if parent_id is not None and not changed:  # the parent shows the comparison with default settings
        _show_on_parent(tracker, parent_id, name, metrics, out_dir, answer)
    for run in same_settings:  # only once the new comparison is complete
        tracker.delete(run.info.run_id)
    return Published(run_id, parent_id, kept=False, replaced=len(same_settings))


def _show_on_parent(
    tracker: Tracker, parent_id: str, name: str, metrics: dict[str, float], out_dir: Path, answer: list[str]
) -> None:
    """The study's answer on its parent run: plots as artifacts (`plots/`) shown in its
    description under the answer's sentences, and the headline numbers as metrics."""
    plots = sorted(out_dir.glob("*.png"), key=lambda p: (not p.name.startswith(PLOTS_FIRST), p.name))
    for plot in plots:
        tracker.log_artifact(parent_id, plot, "plots")
    tracker.log_metrics(parent_id, metrics)
    note = tracker.run_tags(parent_id).get(NOTE_TAG, "")
    if RESULT_START in note and RESULT_END in note:  # the previous comparison's block
        note = note[: note.index(RESULT_START)] + note[note.index(RESULT_END) + len(RESULT_END) :]
    images = [f"![{p.stem}](get-artifact?path={quote('plots/' + p.name, safe='')}&run_uuid={parent_id})" for p in plots]
    result = [RESULT_START, f"### Result ({name})", "", *[f"- {line}" for line in answer], "", *images, RESULT_END]
    tracker.set_tags(parent_id, {NOTE_TAG: "\n".join(result) + "\n\n" + note.strip()})


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
