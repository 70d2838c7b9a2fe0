"""A model's `resources` (what one of its cells needs on one node) as cluster resources: shown
by `relxfer plan`, requested by the ray executor for each task, and checked against the
cluster's nodes before anything runs. No Ray import here."""

from __future__ import annotations

from ..errors import RelxferError


def resource_request(resources: dict) -> dict[str, float]:
    """A model's `resources` as Ray resource names (what one cell asks of one node)."""
    request = {"CPU": float(resources["cpus"]), "GPU": float(resources["gpus"])}
    if resources.get("memory_gb"):
        request["memory"] = float(resources["memory_gb"]) * 2**30
    return request


def describe_resources(request: dict[str, float]) -> str:
    parts = [f"{request.get('GPU', 0):g} GPU", f"{request.get('CPU', 0):g} CPU"]
    if request.get("memory"):
        parts.append(f"{request['memory'] / 2**30:.1f} GB memory")
    return ", ".join(parts)


def check_resources(spec, nodes: list[dict]) -> None:
    """Refuse, before anything runs, a model whose cells no node of the cluster could hold."""
    for i, model in enumerate(spec.models):
        request = resource_request(model["resources"])
        if any(all(node["Resources"].get(k, 0.0) >= v for k, v in request.items() if v) for node in nodes):
            continue
        shown = "; ".join(f"{n['NodeManagerAddress']}: {describe_resources(n['Resources'])}" for n in nodes[:4])
        more = f" and {len(nodes) - 4} more" if len(nodes) > 4 else ""
        raise RelxferError(
            f"{spec.path}: /models/{i}/resources: model '{model['name']}' asks for {describe_resources(request)} "
            f"a cell, but no node of the Ray cluster has that much (nodes: {shown}{more}); lower its resources "
            f"or add a node that large"
        )
