"""The `ray` executor: a study's cells as tasks on a Ray cluster, each with its model's resources.

Before any run exists the driver connects, and refuses a model whose cells no node could hold
and a file-based tracking store (sqlite) when the cluster has more than one node. Then it
submits, and keeps submitting as cells become ready:
- one task per fine-tune cell;
- one task per batch of evaluation cells of one model and one adapter (baseline and CoT cells
  share the base model), run on one evaluation engine opened in the worker and closed when the
  batch ends (`cells_per_task` cells a batch; default: all of them). Engines that start a server
  or load a large model then start once per batch, not once per cell, and no engine outlives
  the task whose resources it uses. Batches that use a fine-tune's adapter take the fine-tune
  task as a dependency, so Ray starts them when it has finished; the others start at once.
Cells of different models run side by side as far as the cluster's resources allow.

Exactly once per cell: the driver claims each cell in the cluster's claim service before
submitting it (`ray_claims`), so a second driver of the same spec waits for the first one's
cells and skips them once they are FINISHED; a task whose worker or node dies is retried by
Ray (`ray_schedule.MAX_RETRIES`), and the retry skips the cells of its batch already FINISHED and resumes a
fine-tune from the last checkpoint in its run's artifacts. Ctrl-C cancels every submitted task
(a running cell ends FAILED; a worker that does not stop is killed and its run marked KILLED);
a re-run repairs the rest, as after any crash.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path

from relxfer.errors import RelxferError, TrackingError
from relxfer.plan.cells import Cell
from relxfer.run.cell import CellOutcome, StudyContext
from relxfer.run.executors.ray_claims import NAMESPACE
from relxfer.run.executors.ray_tasks import PACKAGES
from relxfer.run.failures import error_line
from relxfer.spec.resources import check_resources


class RayExecutor:
    kind = "ray"
    packages = PACKAGES

    def __init__(self, address: str | None = None, cells_per_task: int | None = None):
        self.address = address or os.environ.get("RAY_ADDRESS") or "auto"
        self.cells_per_task = cells_per_task
        self.worker_tracking_uri: str | None = None

    # --- before anything runs ------------------------------------------------------------------

    def check(self, spec, tracker) -> None:
        import ray

        nodes = self._connect()
        try:
            self.worker_tracking_uri = check_tracking_uri(tracker.uri, nodes)
            check_resources(spec, nodes)
        except RelxferError:
            ray.shutdown()
            raise

    def _connect(self) -> list[dict]:
        import ray

        if self.address != "auto":
            _probe(self.address)
        try:
            ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RelxferError(
                f"cannot connect to a Ray cluster at {self.address}: {error_line(e)}; start one with "
                f"`ray start --head` or pass --ray-address HOST:PORT"
            ) from None
        return [n for n in ray.nodes() if n.get("Alive")]

    # --- the study -----------------------------------------------------------------------------

    def run(
        self, study: StudyContext, cells: list[Cell], finished: dict[str, str], outcomes: list[CellOutcome]
    ) -> None:
        import ray

        from relxfer.run.executors.ray_schedule import Schedule

        try:
            Schedule(study, self.worker_tracking_uri or study.tracker.uri, self.cells_per_task, outcomes).run(
                cells, finished
            )
        finally:
            ray.shutdown()  # this driver's lease goes with it: no claim outlives it


def _probe(address: str) -> None:
    """Fail at once on an address where nothing listens (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise RelxferError(
            f"cannot connect to a Ray cluster at {address}: {getattr(e, 'strerror', None) or e}; start one with "
            f"`ray start --head --port PORT` or pass the head node's --ray-address HOST:PORT"
        ) from None


def _host(uri: str) -> str:
    rest = uri.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest


def check_tracking_uri(uri: str, nodes: list[dict]) -> str:
    """The tracking URI as workers must use it; refuses one that workers on other nodes cannot
    reach: a file store (sqlite) with more than one node, this machine's loopback address with
    a node on another machine."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    fix = (
        "run a tracking server that every node can reach (mlflow server --host 0.0.0.0 --port 5000 "
        "--backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlartifacts) and pass "
        "--tracking-uri http://THIS_HOST:5000"
    )
    if scheme in ("sqlite", "file") and len(nodes) > 1:
        raise TrackingError(
            f"tracking URI {uri} is a file on this machine, but the Ray cluster has {len(nodes)} nodes and "
            f"workers on the others cannot write to it: {fix}"
        )
    remote = [n["NodeManagerAddress"] for n in nodes if not _loopback(n["NodeManagerAddress"])]
    if _loopback(_host(uri)) and remote:
        raise TrackingError(
            f"tracking URI {uri} is this machine's loopback address, which node {remote[0]} of the Ray cluster "
            f"cannot reach: {fix}"
        )
    if scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative path: workers do not share the driver's working directory.
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
