"""Run a spec: record its parent run, execute every cell whose key has no FINISHED run yet (all of
them with `force`), one child run per cell. A cell's run is marked FINISHED only after its
metrics, table and artifacts are written; a cell that raises is marked FAILED and the error is
re-raised, so a re-run picks up exactly the cells still missing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .data.study import StudyData, load_study_data
from .evaluate import evaluate_items
from .plan import COT_CONDITIONS, Cell, plan
from .prompts import PromptBuilder
from .spec import Spec
from .tracking import CELLS_TABLE, TAG, ParentRun, Tracker

Report = Callable[[str], None]


@dataclass
class CellOutcome:
    cell: Cell
    run_id: str
    status: str  # "FINISHED" (ran now), "SKIPPED" (a FINISHED run with this key exists), "FAILED"
    metrics: dict = field(default_factory=dict)


def cell_tags(spec: Spec, cell: Cell, builder: PromptBuilder) -> dict[str, str]:
    model = spec.model(cell.model)
    tags = {
        f"{TAG}kind": cell.kind,
        f"{TAG}model": cell.model,
        f"{TAG}model_source": model["source"],
        f"{TAG}model_revision": model["revision"] or "",
        f"{TAG}architecture": model["architecture"],
        f"{TAG}cell_key": cell.key,
        f"{TAG}spec_hash": spec.hash,
        f"{TAG}spec_name": spec.name,
        f"{TAG}template": builder.template_id,
        f"{TAG}seed": "" if cell.seed is None else str(cell.seed),
    }
    if cell.kind == "evaluate":
        tags |= {
            f"{TAG}condition": cell.condition,
            f"{TAG}language": cell.language,
            f"{TAG}group": cell.group,
            f"{TAG}role": cell.role,
            f"{TAG}family": cell.family,
        }
    return tags


def _flatten(prefix: str, value) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out |= _flatten(f"{prefix}.{k}" if prefix else k, v)
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


class StudyRunner:
    def __init__(self, spec: Spec, tracker: Tracker, cache_dir: Path, report: Report = lambda _: None, progress: bool = True):
        self.spec = spec
        self.tracker = tracker
        self.cache_dir = cache_dir
        self.report = report
        self.progress = progress
        self.builder = PromptBuilder.from_spec(spec.prompt)
        self.outcomes: list[CellOutcome] = []

    # --- the study -------------------------------------------------------------------------

    def run(self, force: bool = False) -> list[CellOutcome]:
        data = load_study_data(self.spec)  # before any run exists: bad data fails fast
        cells = plan(self.spec)
        parent = self.tracker.start_parent(
            self.spec.experiment,
            run_name=self.spec.name,
            tags={f"{TAG}kind": "study", f"{TAG}spec_hash": self.spec.hash, f"{TAG}spec_name": self.spec.name},
        )
        self._log_study_inputs(parent, data)
        finished = {} if force else self.tracker.finished_cells(parent.experiment_id)
        self.report(f"parent run {parent.run_id}: {len(cells)} cells, {sum(c.key in finished for c in cells)} already finished")
        status = "FAILED"
        try:
            for model in self.spec.models:
                self._run_model(parent, data, [c for c in cells if c.model == model["name"]], finished)
            status = "FINISHED"
        finally:
            self.tracker.log_table(parent.run_id, [self._cell_row(o) for o in self.outcomes], CELLS_TABLE)
            if not parent.adopted:
                self.tracker.end(parent.run_id, status)
        return self.outcomes

    def _log_study_inputs(self, parent: ParentRun, data: StudyData) -> None:
        self.tracker.log_artifact(parent.run_id, self.spec.path, "spec")
        self.tracker.log_dict(parent.run_id, self.spec.raw, "spec/resolved.json")
        self.tracker.log_dict(parent.run_id, {"held_out_ids": data.held_out_ids}, "data/held_out_ids.json")
        self.tracker.log_params(parent.run_id, {"spec_name": self.spec.name, "spec_hash": self.spec.hash, "data_source": data.source})
        self.tracker.log_metrics(parent.run_id, {"n_train_items": len(data.train_items), "n_held_out_ids": len(data.held_out_ids)})
        self.tracker.log_dataset(parent.run_id, "train", data.train_digest, data.source, "train")

    def _cell_row(self, outcome: CellOutcome) -> dict:
        c = outcome.cell
        return {"key": c.key, "kind": c.kind, "model": c.model, "condition": c.condition or "", "language": c.language or "",
                "seed": -1 if c.seed is None else c.seed, "run_id": outcome.run_id, "status": outcome.status}

    # --- one model: its fine-tunes, then its evaluations grouped by adapter ------------------

    def _run_model(self, parent: ParentRun, data: StudyData, cells: list[Cell], finished: dict[str, str]) -> None:
        finetune_runs: dict[str, str] = {}
        for cell in (c for c in cells if c.kind == "finetune"):
            finetune_runs[cell.key] = finished.get(cell.key) or self._run_finetune(parent, data, cell)
            if cell.key in finished:
                self._skip(cell, finished[cell.key])
        by_adapter: dict[str | None, list[Cell]] = {}
        for cell in (c for c in cells if c.kind == "evaluate"):
            if cell.key in finished:
                self._skip(cell, finished[cell.key])
            else:
                by_adapter.setdefault(cell.finetune_key, []).append(cell)
        for finetune_key, group in by_adapter.items():
            adapter_dir = self._fetch_adapter(finetune_runs[finetune_key], finetune_key) if finetune_key else None
            backend = self._load_backend(group[0].model, adapter_dir)
            for cell in group:
                self._run_evaluation(parent, data, cell, backend)

    def _skip(self, cell: Cell, run_id: str) -> None:
        self.outcomes.append(CellOutcome(cell, run_id, "SKIPPED"))
        self.report(f"skip  {cell.run_name} (finished run {run_id})")

    def _quantization(self) -> dict | None:
        ft = self.spec.finetune
        if ft is not None and ft["method"] == "qlora" and self.spec.evaluation["quantize_base"]:
            return ft["quantization"]
        return None

    def _load_backend(self, model_name: str, adapter_dir: Path | None):
        from .backends.local import LocalBackend

        return LocalBackend.load(self.spec.model(model_name), self._quantization(), self.cache_dir, adapter_dir=adapter_dir)

    def _fetch_adapter(self, finetune_run_id: str, finetune_key: str) -> Path:
        """The adapter as the tracking server stores it, not a local path only the trainer knew."""
        target = self.cache_dir / "adapters" / finetune_key
        return self.tracker.download(finetune_run_id, "adapter", target)

    def _in_cell_run(self, parent: ParentRun, cell: Cell, work: Callable[[str], dict]) -> str:
        run_id = self.tracker.start_child(parent, cell.run_name, cell_tags(self.spec, cell, self.builder))
        try:
            metrics = work(run_id)
        except BaseException:
            self.tracker.end(run_id, "FAILED")
            self.outcomes.append(CellOutcome(cell, run_id, "FAILED"))
            raise
        self.tracker.end(run_id, "FINISHED")
        self.outcomes.append(CellOutcome(cell, run_id, "FINISHED", metrics))
        return run_id

    def _run_finetune(self, parent: ParentRun, data: StudyData, cell: Cell) -> str:
        from .finetune import train_lora

        def work(run_id: str) -> dict:
            model = self.spec.model(cell.model)
            self.tracker.log_params(run_id, _flatten("finetune", self.spec.finetune) | {"model_source": model["source"]})
            self.tracker.log_dataset(run_id, "train", data.train_digest, data.source, "train")
            examples = [self.builder.training_example(item) for item in data.train_items]
            self.report(f"train {cell.run_name}: {len(examples)} examples")
            result = train_lora(
                model,
                self.spec.finetune,
                examples,
                out_dir=self.cache_dir / "finetune" / cell.key,
                seed=cell.seed,
                cache_dir=self.cache_dir,
                on_step=lambda step, m: self.tracker.log_metrics(run_id, m, step),
                progress=self.progress,
            )
            summary = {
                "n_train_items": result.n_items,
                "steps": result.steps,
                "final_loss": result.final_loss,
                "mean_tokens_per_s": result.tokens_per_s,
                "peak_memory_mb": result.peak_memory_mb,
            }
            self.tracker.log_metrics(run_id, summary, step=result.steps)
            self.tracker.log_artifacts(run_id, result.adapter_dir, "adapter")
            self.report(f"done  {cell.run_name}: final loss {result.final_loss:.3f} after {result.steps} steps")
            return summary

        return self._in_cell_run(parent, cell, work)

    def _run_evaluation(self, parent: ParentRun, data: StudyData, cell: Cell, backend) -> str:
        def work(run_id: str) -> dict:
            items = data.eval_items[cell.language]
            self.tracker.log_params(
                run_id,
                {"prompt_preset": self.spec.prompt["preset"], "labels": json.dumps(list(self.builder.labels)),
                 "template_id": self.builder.template_id, "condition": cell.condition}
                | (_flatten("cot", self.spec.cot) if cell.condition in COT_CONDITIONS else {}),
            )
            self.tracker.log_dataset(run_id, f"eval-{cell.language}", data.eval_digests[cell.language], data.source, "eval")
            result = evaluate_items(
                backend,
                items,
                self.builder,
                cot=self.spec.cot if cell.condition in COT_CONDITIONS else None,
                batch_size=self.spec.evaluation["batch_size"],
                progress=self.progress,
            )
            self.tracker.log_table(run_id, result.records)
            self.tracker.log_metrics(run_id, result.metrics)
            m = result.metrics
            self.report(f"done  {cell.run_name}: accuracy {m['accuracy']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] n={m['n_items']}")
            return result.metrics

        return self._in_cell_run(parent, cell, work)
