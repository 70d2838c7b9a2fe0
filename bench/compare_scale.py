"""`relxfer compare` at scale: 2,000 evaluation runs x 100 items on a real local tracking server.

    python bench/compare_scale.py [--runs 2000] [--workers 8] [--keep DIR] [--uri URI --experiment NAME]

What it does:
1. starts a real `mlflow server` on 127.0.0.1 (free port, temporary sqlite store and artifact
   root; the class the tests use, tests/conftest.py:MlflowServer);
2. populates one study through the runner's own code path: the study design of specs/full.json
   (7 models, 3 Semitic + 3 non-Semitic languages, baseline / finetuned / cot, 100 held-out
   questions) with as many fine-tuning seeds as it takes to reach --runs evaluation runs
   (46 seeds: 7 x 6 x (1 baseline + 1 cot + 46 finetuned) = 2,016 runs). Each cell is run by
   `relxfer.run.cell.CellRunner.evaluate` (the per-cell code of every executor) on an engine
   serving a scripted backend (tests/support/fake_engine.py) whose answers come from
   `tests.support.simulate.simulate_study`, so tags, params, data set inputs, metrics and the
   `predictions.json` table are exactly what `relxfer run` logs; the parent run gets the
   runner's `cells.json` table, so `--parent` works too. Cells run in parallel client threads
   (population time is reported, not the target);
3. times `relxfer compare --experiment NAME --tracking-uri URI --format json --no-log` end to end
   as a subprocess (wall clock; from a temporary working directory with no MLFLOW_* variables,
   so only the tracking server can answer), and a breakdown in this process: run search, table
   downloads, frame assembly, statistics (each analysis).

Target: compare under 60 s for 2,000 runs on the 2-core development machine. With --runs N a
smaller study (whole seeds; at least 7 x 6 x 3 = 126 runs with 7 models, fewer with --models);
with --uri/--experiment it skips steps 1-2 and measures an existing study.

Measured there (2 cores shared with other work; 2,016 runs, 579,600 item rows after seedless
runs are paired with every seed): populate 246 s with 8 threads. compare without the passage
sign-flip tests, the cross-fitted sensitivity analysis and the corrected slope, at load ~3: 27.6 s
end to end (search 3.9 s, 2,016 table downloads + parsing 9.7 s, frame assembly < 1 s,
statistics + JSON ~12 s, the rest interpreter and import start-up). compare with those analyses,
timed alternately against it on the same kept store at load ~6: 65.6 s against 62.0 s.

What keeps it there (each measured on this store): tables are downloaded by 8 threads, not through
MlflowClient.load_table one run at a time (~8 min); Holm's correction is written out, not taken
from statsmodels' multipletests, which collects garbage over the whole heap on every call (~1 min
over the model x seed groups); the descriptive mixed model is fitted on at most 10,000 rows of
whole seeds, not on all 386,400 paired rows (~8 min). Without all three: 17 min 37 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relxfer.data.items import MCItem  # noqa: E402
from relxfer.evaluate.base import Adapter  # noqa: E402
from relxfer.plan.cells import plan  # noqa: E402
from relxfer.plan.study_data import StudyData  # noqa: E402
from relxfer.run.cell import CellRunner, StudyContext  # noqa: E402
from relxfer.run.runner import StudyRunner  # noqa: E402
from relxfer.spec.load import load_spec  # noqa: E402
from relxfer.tracking.client import CELLS_TABLE, PREDICTIONS_TABLE, TAG, Tracker  # noqa: E402
from tests.support.fake_engine import ScriptedBackend, ScriptedEngine  # noqa: E402
from tests.support.simulate import simulate_study  # noqa: E402

FULL_SPEC = REPO / "specs" / "full.json"
FIXED_CELLS = 2  # seedless evaluation cells per model x language: baseline and cot
QID = re.compile(r"\[\[(q\d+)\]\]")


def qid(text: str) -> str:
    """The question id a scripted prompt carries as [[q012]]."""
    match = QID.search(text)
    assert match is not None, text[:200]
    return match.group(1)


# --- the study ---------------------------------------------------------------------------------


def seeds_for(runs: int, n_models: int, n_languages: int = 6) -> int:
    """Fine-tuning seeds that bring the evaluation cells of the design to at least `runs`."""
    return max(1, math.ceil(runs / (n_models * n_languages)) - FIXED_CELLS)


def write_spec(path: Path, experiment: str, n_models: int = 7, n_seeds: int = 1) -> Path:
    """specs/full.json with `n_models` of its models, `n_seeds` seeds and its own experiment. The
    models read raw completion prompts: the scripted engine answers from the prompt's text, and a
    chat template would need each model's tokenizer from the hub."""
    raw = json.loads(FULL_SPEC.read_text())
    raw.pop("$schema", None)
    raw["name"] = f"{experiment}-study"
    raw["experiment"] = experiment
    raw["models"] = [{**model, "chat_template": False} for model in raw["models"][:n_models]]
    raw["seeds"] = list(range(n_seeds))
    path.write_text(json.dumps(raw, indent=1))
    return path


REASONING = (
    "Let me read the passage again. The question asks about the detail in the second sentence; "
    "the passage states it directly, and the other options mention things the passage does not "
    "say or contradicts. Option {a} paraphrases a different sentence, option {b} reverses the "
    "relation. "
)


def _script(rng, rows, labels, cot: bool):
    """Log-probs whose argmax is the simulated prediction; for CoT a reasoning text ending in that
    answer, or in none for a simulated parse failure (`extracted == -1`: the runner then still
    scores the labels after the reasoning, as it does for a real unparsed answer)."""
    logprobs, reasoning = {}, {}
    n = len(labels)
    extracted = rows["extracted"] if "extracted" in rows else [0] * len(rows)
    for qid, predicted, parsed in zip(rows["question_id"], rows["predicted"], extracted):
        failed = parsed == -1
        lp = np.log(rng.dirichlet(np.ones(n)))
        lp[predicted] = lp.max() + float(rng.exponential(1.0)) + 1e-3
        logprobs[qid] = lp
        if cot:
            text = REASONING.format(a=labels[(predicted + 1) % n], b=labels[(predicted + 2) % n]) * 3
            reasoning[qid] = text + ("I am not sure." if failed else f"The answer is {labels[predicted]}.")
    return logprobs, reasoning


class _Recording(Tracker):
    """Tracker that also remembers what each run logged as its predictions table."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.tables: dict[str, list[dict]] = {}

    def log_table(self, run_id, records, artifact_file=PREDICTIONS_TABLE):
        if artifact_file == PREDICTIONS_TABLE:
            self.tables[run_id] = records
        super().log_table(run_id, records, artifact_file)


def populate(
    uri: str,
    experiment: str,
    runs: int = 2000,
    n_models: int = 7,
    n_seeds: int | None = None,
    n_questions: int = 100,
    workers: int = 8,
    workdir: Path | None = None,
    log=print,
) -> dict:
    """Log a simulated study through the runner's code path. Returns parent_id, the planned
    evaluation cells, run_ids (cell key -> run id), tables (run id -> logged records),
    seconds, n_runs and n_seeds."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="relxfer-bench-") as tmp:
            return populate(uri, experiment, runs, n_models, n_seeds, n_questions, workers, Path(tmp), log)
    n_seeds = n_seeds or seeds_for(runs, n_models)
    spec = load_spec(write_spec(workdir / "spec.json", experiment, n_models, n_seeds))
    cells = [c for c in plan(spec) if c.kind == "evaluate"]
    related = [lang for g in spec.groups if g.role == "related" for lang in g.languages]
    control = [lang for g in spec.groups if g.role == "control" for lang in g.languages]
    sim = simulate_study(
        n_models=n_models,
        n_related=len(related),
        n_control=len(control),
        n_questions=n_questions,
        n_seeds=n_seeds,
        family_gap=0.0,
        finetune_gain=1.2,
        baseline_noise=0.3,
        seed=0,
    )
    model_names = {f"sim-m{i + 1}": m.name for i, m in enumerate(spec.models)}
    sim_langs = list(dict.fromkeys(sim["language"]))
    lang_names = dict(zip(sim_langs, related + control))
    sim["model"] = sim["model"].map(model_names)
    sim["language"] = sim["language"].map(lang_names)
    by_cell = {k: g for k, g in sim.groupby(["model", "condition", "language", "seed"], sort=False)}

    questions = by_cell[next(iter(by_cell))][["question_id", "passage_id", "gold"]].to_numpy().tolist()
    eval_items = {
        lang: [
            MCItem(
                qid,
                pid,
                lang,
                f"Passage {pid} in {lang}.",
                f"[[{qid}]] What does the passage say?",
                ("one", "two", "three", "four"),
                int(gold),
            )
            for qid, pid, gold in questions
        ]
        for lang in related + control
    }
    data = StudyData(
        train_items=[],
        eval_items=eval_items,
        held_out_ids=[q[0] for q in questions],
        source="relxfer-bench://simulate_study",
        digest="bench",
        train_digest="bench",
        eval_digests={lang: f"bench-{lang}" for lang in eval_items},
    )
    tracker = _Recording(uri)
    parent = tracker.start_parent(
        tracker.open_study(spec.experiment),
        run_name=spec.name,
        tags={f"{TAG}kind": "study", f"{TAG}spec_hash": spec.hash, f"{TAG}spec_name": spec.name},
        params={},
    )
    runner = CellRunner(StudyContext(spec, tracker, parent, data, workdir / "cache", progress=False))
    labels = runner.builder(spec.models[0].name).labels  # the labels are the spec's, shared by its models
    run_ids: dict[str, str] = {}
    done = [0]
    lock = threading.Lock()
    start = time.perf_counter()

    def one(index_cell):
        index, cell = index_cell
        rng = np.random.default_rng(index)
        rows = by_cell[(cell.model, cell.condition, cell.language, 0 if cell.seed is None else cell.seed)]
        logprobs, reasoning = _script(rng, rows, labels, cot=cell.condition.uses_cot)
        # Prompts carry their question id as [[q012]]: the script answers by it.
        backend = ScriptedBackend(lambda text: logprobs[qid(text)], lambda text: reasoning[qid(text)])
        # The script holds the fine-tuned answers too: the adapter is a name only.
        adapter = Adapter(cell.finetune_key, Path(), "scripted") if cell.finetune_key else None
        run_id = runner.evaluate(cell, ScriptedEngine(backend), None, adapter)
        with lock:
            run_ids[cell.key] = run_id
            done[0] += 1
            if done[0] % 250 == 0:
                log(f"  populated {done[0]}/{len(cells)} runs ({time.perf_counter() - start:.0f} s)")

    # One cell per language first, one at a time: each logs its language's evaluation data set,
    # and the server's log_inputs is check-then-insert, so two threads registering the same
    # new data set at once fail on its UNIQUE constraint (an MLflow server race, not relxfer's).
    first = {cell.language: i for i, cell in reversed(list(enumerate(cells)))}
    for i in first.values():
        one((i, cells[i]))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, [(i, c) for i, c in enumerate(cells) if i not in first.values()]))
    # As StudyRunner.run does at its end: the cells table, then the parent is FINISHED.
    tracker.log_table(parent.run_id, [StudyRunner.cell_row(o) for o in runner.outcomes], CELLS_TABLE)
    tracker.end(parent.run_id, "FINISHED")
    return {
        "parent_id": parent.run_id,
        "cells": cells,
        "run_ids": run_ids,
        "tables": tracker.tables,
        "seconds": time.perf_counter() - start,
        "n_runs": len(cells),
        "n_seeds": n_seeds,
    }


# --- measuring compare --------------------------------------------------------------------------


def time_cli(uri: str, experiment: str) -> tuple[float, dict]:
    """Wall clock of the CLI as a user runs it; returns (seconds, parsed JSON report)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with tempfile.TemporaryDirectory(prefix="relxfer-compare-cwd-") as cwd:
        start = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "relxfer.cli",
                "compare",
                "--experiment",
                experiment,
                "--tracking-uri",
                uri,
                "--format",
                "json",
                "--no-log",
            ],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"relxfer compare failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return seconds, json.loads(result.stdout)


def breakdown(uri: str, experiment: str) -> dict[str, float]:
    """The same work as the CLI, step by step, in this process (seconds; "item rows" a count)."""
    from relxfer.compare import report as report_module
    from relxfer.compare import stats
    from relxfer.compare.frame import load_items

    timings: dict[str, float] = {}
    tracker = Tracker(uri)
    start = time.perf_counter()
    runs = tracker.evaluation_runs(experiment_name=experiment)
    timings["search runs"] = time.perf_counter() - start
    start = time.perf_counter()
    tracker.load_predictions(runs)
    timings["download + parse tables"] = time.perf_counter() - start
    start = time.perf_counter()
    _, items = load_items(tracker, experiment=experiment)
    timings["load_items (search + tables + frame)"] = time.perf_counter() - start
    timings["item rows"] = len(items)

    # Each analysis of build_report on its own, as build_report runs them.
    conditions = sorted(c for c in items["condition"].unique() if c != "baseline")
    steps = [("accuracy_table", lambda: stats.accuracy_table(items))]
    for c in conditions:
        steps += [
            (f"paired_gains[{c}]", lambda c=c: stats.paired_gains(items, c)),
            (f"family_gap[{c}]", lambda c=c: stats.family_gap(items, c)),
            (f"baseline_gain[{c}]", lambda c=c: stats.baseline_gain(items, c)),
            (f"mixed_model[{c}]", lambda c=c: stats.mixed_model(items, c)),
        ]
    if {"finetuned", "cot"} <= set(conditions):
        steps.append(("task_alignment", lambda: stats.task_alignment(items)))
    for name, step in steps:
        start = time.perf_counter()
        step()
        timings[f"  stats: {name}"] = time.perf_counter() - start
    start = time.perf_counter()
    report_module.to_json(report_module.build_report(items))
    timings["build_report + to_json"] = time.perf_counter() - start
    return timings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="evaluation runs to log (rounded up to whole seeds)")
    parser.add_argument("--models", type=int, default=7, help="models of specs/full.json to use (1-7)")
    parser.add_argument("--workers", type=int, default=8, help="client threads while populating")
    parser.add_argument("--keep", type=Path, help="keep the server's store in this directory")
    parser.add_argument("--uri", help="measure an existing tracking server instead of populating one")
    parser.add_argument("--experiment", default="compare-scale")
    parser.add_argument("--no-breakdown", action="store_true", help="only the end-to-end CLI time")
    args = parser.parse_args(argv)

    from tests.conftest import MlflowServer

    server, scratch = None, None
    try:
        uri = args.uri
        if uri is None:
            if args.keep is None:
                scratch = tempfile.TemporaryDirectory(prefix="relxfer-compare-scale-")
            root = args.keep or Path(scratch.name)
            server = MlflowServer(root).start(timeout=300)  # a busy shared machine starts it slowly
            uri = server.uri
            print(f"mlflow server {uri} (store {root})", flush=True)
            study = populate(
                uri, args.experiment, runs=args.runs, n_models=args.models, workers=args.workers, workdir=root
            )
            print(
                f"populate: {study['n_runs']} evaluation runs x 100 items ({args.models} models x 6 languages, "
                f"{study['n_seeds']} seeds) in {study['seconds']:.1f} s with {args.workers} threads",
                flush=True,
            )
        seconds, report = time_cli(uri, args.experiment)
        n_cells = len(report["accuracy"])
        print(
            f"relxfer compare --format json --no-log: {seconds:.1f} s end to end "
            f"({n_cells} accuracy rows, {len(report['gains'])} paired gains)",
            flush=True,
        )
        if not args.no_breakdown:
            for name, value in breakdown(uri, args.experiment).items():
                print(
                    f"  {name:<40} {value:>8,}" if name == "item rows" else f"  {name:<40} {value:8.2f} s", flush=True
                )
        print(f"target: < 60 s -> {'met' if seconds < 60 else 'NOT met'}")
    finally:
        if server is not None:
            server.stop()
        if scratch is not None:
            scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
