"""Expand a spec into cells: one fine-tune cell per model x seed, one evaluation cell per
model x condition x language (x seed for conditions that use the adapter).

Each cell has a key: a hash of everything that determines its result. Re-running a spec skips
cells whose key already has a FINISHED run; changing a setting changes only the keys it affects
(a new learning rate re-runs fine-tunes and fine-tuned evaluations, not baselines)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relxfer import FINETUNE_VERSION, RESULT_VERSION
from relxfer.models.builtin_recipes import builtin_recipe_hash
from relxfer.plan.study_data import local_data_digest
from relxfer.spec.checks import is_local_path
from relxfer.spec.engines import (
    evaluation_identity,
    evaluation_quantization,
    finetune_identity,
)
from relxfer.spec.types import Condition, EvalGroup, GroupRole, ModelSpec, Spec, chat_settings


@dataclass(frozen=True)
class Cell:
    kind: str  # "finetune" or "evaluate"
    model: str
    key: str
    seed: int | None = None  # None for evaluations that do not depend on the fine-tuning seed
    condition: Condition | None = None
    language: str | None = None
    group: str | None = None
    role: GroupRole | None = None
    family: str | None = None
    finetune_key: str | None = None  # the fine-tune cell an evaluation needs

    @property
    def run_name(self) -> str:
        """Readable in the MLflow UI's run list and comparison view."""
        if self.kind == "finetune":
            return f"finetune/{self.model}/seed{self.seed}"
        seed = f"/seed{self.seed}" if self.seed is not None else ""
        return f"eval/{self.model}/{self.condition}/{self.language}{seed}"


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _model_identity(model: ModelSpec, engine: dict[str, Any] | None = None) -> dict[str, Any]:
    # Display fields (name, parameter counts, resources) do not change results; everything else
    # may. An engine adds the settings of it that change results (its kind, dtype: never a URL);
    # the `local` engine adds nothing, so local cells keep the keys they always had.
    identity: dict[str, Any] = {
        "source": model.source,
        "revision": model.revision,
        "dtype": model.dtype,
        "backend": model.backend,
        "trust_remote_code": model.trust_remote_code,
    }
    if model.source.startswith("builtin:"):
        # A built-in model is named by what builds it, as a hub model by its revision.
        identity["builtin_recipe"] = builtin_recipe_hash(model.source)
    if engine is not None:
        identity["engine"] = engine
    return identity


def _data_identity(spec: Spec) -> dict[str, Any]:
    # A local directory is named by what it holds, not where it lies: the same files in another
    # clone or under another mount give the same keys, and edited files give new ones.
    source = dict(spec.data.source.to_dict())
    if source.get("path"):  # every local source, whatever its kind
        del source["path"]
        source["content"] = local_data_digest(spec)
    return {"source": source, "split": spec.data.split.to_dict()}


def _prompt_identity(spec: Spec, model: ModelSpec) -> dict[str, Any]:
    # The model's own prompt format, resolved: `true` and the settings it stands for give one
    # key, and a raw completion prompt (false) keeps the form it always had.
    prompt = dict(spec.prompt.to_dict())
    settings = chat_settings(spec.chat_template(model))
    prompt["chat_template"] = False if settings is None else settings.to_dict()
    template = None if settings is None else local_chat_template(model.source)
    if template is not None:
        # A local model directory is named by its template's text, as a hub model is by its
        # revision: an edited template re-runs the cells it renders.
        prompt["chat_template_source"] = hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]
    return prompt


def local_chat_template(source: str) -> str | None:
    """The chat template a local model directory holds (chat_template.jinja, else the
    tokenizer_config.json entry), or None (a hub id, a built-in, a directory without one)."""
    if source.startswith("builtin:") or not is_local_path(source):
        return None
    directory = Path(source).expanduser()
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _dict_or_none(part: Any) -> dict[str, Any] | None:
    return None if part is None else dict(part.to_dict())


def finetune_cell(spec: Spec, model: ModelSpec, seed: int) -> Cell:
    key = _key(
        {
            "version": RESULT_VERSION,
            "finetune_version": FINETUNE_VERSION,
            "kind": "finetune",
            "model": _model_identity(model, finetune_identity(model)),
            "data": _data_identity(spec),
            "train": spec.train.to_dict(),
            "finetune": _dict_or_none(spec.finetune),
            "prompt": _prompt_identity(spec, model),
            "seed": seed,
        }
    )
    return Cell(kind="finetune", model=model.name, key=key, seed=seed)


def evaluation_cell(
    spec: Spec, model: ModelSpec, condition: Condition, group: EvalGroup, language: str, ft: Cell | None
) -> Cell:
    parts = {
        "version": RESULT_VERSION,
        "kind": "evaluate",
        "model": _model_identity(model, evaluation_identity(model)),
        "data": _data_identity(spec),
        "condition": condition.value,
        "language": language,
        "prompt": _prompt_identity(spec, model),
        "max_items": spec.evaluation.max_items,
        "quantization": _dict_or_none(evaluation_quantization(spec, model)),
        "cot": spec.cot.to_dict() if condition.uses_cot else None,
        "finetune": ft.key if ft is not None else None,
    }
    return Cell(
        kind="evaluate",
        model=model.name,
        key=_key(parts),
        seed=ft.seed if ft is not None else None,
        condition=condition,
        language=language,
        group=group.name,
        role=group.role,
        family=group.family,
        finetune_key=ft.key if ft is not None else None,
    )


def plan(spec: Spec) -> list[Cell]:
    """All cells of a spec, fine-tunes first, in a stable order."""
    cells: list[Cell] = []
    for model in spec.models:
        finetunes = [finetune_cell(spec, model, seed) for seed in spec.seeds] if spec.needs_finetune else []
        cells += finetunes
        for condition in spec.conditions:
            for group in spec.groups:
                for language in group.languages:
                    if condition.uses_adapter:
                        cells += [evaluation_cell(spec, model, condition, group, language, ft) for ft in finetunes]
                    else:
                        cells.append(evaluation_cell(spec, model, condition, group, language, None))
    return cells


def count_by_kind(cells: list[Cell]) -> dict[str, int]:
    counts = {"finetune": 0, "evaluate": 0}
    for cell in cells:
        counts[cell.kind] += 1
    return counts
