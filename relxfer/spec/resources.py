"""A model's `resources` (what one of its cells needs on one node) as cluster resources: shown
by `relxfer plan`, requested by the ray executor for each task, and checked against the
cluster's nodes before anything runs. No Ray import here."""

from __future__ import annotations

from typing import Any

from relxfer.errors import RelxferError
from relxfer.spec.types import (
    EvaluateEngineKind,
    FinetuneEngineKind,
    ModelSpec,
    Resources,
    Spec,
    VllmEvaluateEngine,
)


def resource_request(resources: Resources) -> dict[str, float]:
    """A model's `resources` as Ray resource names (what one cell asks of one node)."""
    request = {"CPU": float(resources.cpus), "GPU": float(resources.gpus)}
    if resources.memory_gb:
        request["memory"] = float(resources.memory_gb) * 2**30
    return request


# A task whose engine works elsewhere only coordinates: Ray Train's workers reserve their own
# resources, a hosted service (Tinker) or a server already running (a `base_url`) uses none of
# this node's. Holding the model's GPUs there would starve the workers it waits for.
COORDINATOR = {"CPU": 1.0, "GPU": 0.0}


def works_elsewhere(model: ModelSpec, kind: str) -> bool:
    """Whether a `kind` ("finetune" or "evaluate") cell of `model` runs its heavy work off the
    node that runs its task."""
    if kind == "finetune":
        return model.engines.finetune.kind in (FinetuneEngineKind.RAY, FinetuneEngineKind.TINKER)
    engine = model.engines.evaluate
    return engine.kind in (EvaluateEngineKind.TINKER, EvaluateEngineKind.OPENAI) or (
        isinstance(engine, VllmEvaluateEngine) and not engine.launch
    )


def cell_request(model: ModelSpec, kind: str) -> dict[str, float]:
    """What the task running a `kind` cell of `model` asks of its node."""
    return dict(COORDINATOR) if works_elsewhere(model, kind) else resource_request(model.resources)


def describe_resources(request: dict[str, float]) -> str:
    parts = [f"{request.get('GPU', 0):g} GPU", f"{request.get('CPU', 0):g} CPU"]
    if request.get("memory"):
        parts.append(f"{request['memory'] / 2**30:.1f} GB memory")
    return ", ".join(parts)


def check_resources(spec: Spec, nodes: list[dict[str, Any]]) -> None:
    """Refuse, before anything runs, a model whose cells no node of the cluster could hold."""
    for i, model in enumerate(spec.models):
        kinds = ("finetune", "evaluate") if spec.finetune is not None else ("evaluate",)
        if all(works_elsewhere(model, kind) for kind in kinds):
            continue
        request = resource_request(model.resources)
        if any(all(node["Resources"].get(k, 0.0) >= v for k, v in request.items() if v) for node in nodes):
            continue
        shown = "; ".join(f"{n['NodeManagerAddress']}: {describe_resources(n['Resources'])}" for n in nodes[:4])
        more = f" and {len(nodes) - 4} more" if len(nodes) > 4 else ""
        raise RelxferError(
            f"{spec.path}: /models/{i}/resources: model '{model.name}' asks for {describe_resources(request)} "
            f"a cell, but no node of the Ray cluster has that much (nodes: {shown}{more}); lower its resources "
            f"or add a node that large"
        )
