"""Every MLflow call of relxfer lives here: the spec's parent run, one child run per cell, tags,
metrics, tables and artifacts, the look-ups that make re-runs resume, and reading runs back for
`relxfer compare`. Everything goes through an explicit MlflowClient and explicit run ids, never
MLflow's global active run: under `mlflow run`, MLFLOW_RUN_ID in the environment would otherwise
hijack nested runs."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import pandas as pd

from relxfer.errors import TrackingError

if TYPE_CHECKING:
    from types import ModuleType

    from mlflow import MlflowClient
    from mlflow.entities import Run as Run  # re-exported: the type of the runs callers get back

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default, in the working directory
SUPPORTED_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
PREDICTIONS_TABLE = "predictions.json"
CELLS_TABLE = "cells.json"
TAG = "relxfer."
ERROR_TAG = TAG + "error"  # a failed run: why, in one line
ERROR_ARTIFACT = "error.txt"  # a failed run: the full traceback
# Design factors, logged as params too: MLflow's compare-runs page and its plots offer params only.
DESIGN_PARAMS = ("model", "condition", "language", "group", "role", "family", "seed")


# Bounded retries for a tracking server that restarts or goes away mid-study: urllib3 backoff
# sleeps factor * 2^k between tries (about 1+2+4+8 s here) instead of MLflow's default of
# 7 retries with factor 2 (minutes). Each can be overridden in the environment.
RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
UNFINISHED = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")


P = ParamSpec("P")
R = TypeVar("R")


def server_call(method: Callable[Concatenate[Tracker, P], R]) -> Callable[Concatenate[Tracker, P], R]:
    """Turn a failure to talk to the tracking server (after MLflow's bounded retries) into a
    one-line TrackingError that names the URI and the operation."""

    def wrapper(self: Tracker, /, *args: P.args, **kwargs: P.kwargs) -> R:
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        try:
            return method(self, *args, **kwargs)
        except (MlflowException, RequestException, ConnectionError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrackingError(f"tracking server {self.uri}: {method.__name__} failed: {first_line[:300]}") from e

    functools.update_wrapper(wrapper, method)
    return wrapper


def _mlflow() -> tuple[ModuleType, type[MlflowClient]]:
    # Imported lazily: `relxfer validate` and `plan` should not pay MLflow's import time.
    import mlflow
    from mlflow import MlflowClient

    return mlflow, MlflowClient


WRITE_ATTEMPTS = 3  # of a write that lost an insert race


def _despite_insert_races(write: Callable[[], object]) -> None:
    """Run `write`, again when it lost an insert race: MLflow's SQL store inserts a row (a tag, a
    data set) it did not find, so two processes writing the same new row at once collide on its
    unique key. The loser's next try finds the winner's row and updates or reuses it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            write()
            return
        except MlflowException as e:
            if attempt == WRITE_ATTEMPTS or not _unique_key_collision(e):
                raise
            time.sleep(0.2 * attempt)  # the winner's transaction commits


def _unique_key_collision(error: Exception) -> bool:
    """Whether the store refused a write because another writer inserted the same key first
    (SQLite, PostgreSQL and MySQL word it differently)."""
    text = str(error).lower()
    return (
        "integrityerror" in text
        or "uniqueviolation" in text
        or "unique constraint" in text
        or "duplicate entry" in text
    )


def resolve_tracking_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme not in SUPPORTED_SCHEMES:
        raise TrackingError(
            f"tracking URI '{uri}': unsupported scheme '{scheme or uri}'; use http://HOST:PORT for a "
            f"tracking server or sqlite:///PATH.db for a local database"
        )
    return uri


@dataclass(frozen=True)
class Study:
    experiment_id: str
    adopted_id: str | None = None  # the run `mlflow run` started for this spec, and its name
    adopted_name: str | None = None


@dataclass(frozen=True)
class ParentRun:
    run_id: str
    experiment_id: str
    adopted: bool  # True when the run was started by `mlflow run` (MLflow ends it, not relxfer)


class Tracker:
    def __init__(self, uri: str | None = None):
        # MLflow's per-download progress bars would flood the terminal (one per run's table).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one "View run" line per cell
        for name, value in RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)
        # A new sqlite store announces its schema migrations at INFO level on stderr.
        for noisy in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.uri = resolve_tracking_uri(uri)
        self._check_reachable()
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        """Created on first use, so checks that fail before any run leave no store behind."""
        if self._client is None:
            _, MlflowClient = _mlflow()
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _check_reachable(self) -> None:
        if not self.uri.startswith(("http://", "https://")):
            return
        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"cannot reach the MLflow tracking server at {self.uri}: {reason}") from None

    # --- experiments and the parent run -------------------------------------------------

    @server_call
    def experiment_id(self, name: str) -> str:
        """The id of the experiment `name`, created when there is none."""
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return self.client.create_experiment(name)
        except MlflowException:
            # Another process created it between the look-up and the create (two runs started
            # together on a new experiment): use theirs.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    @server_call
    def open_study(self, experiment_name: str) -> Study:
        """Where a spec's runs go: the experiment of the run `mlflow run` started (MLFLOW_RUN_ID, taken
        out of the environment so nothing else adopts it), else MLFLOW_EXPERIMENT_ID/_NAME, else the
        spec's experiment, created if needed."""
        adopted_id = os.environ.pop("MLFLOW_RUN_ID", None)
        if adopted_id:
            info = self.client.get_run(adopted_id).info
            return Study(info.experiment_id, adopted_id, info.run_name)
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or self.experiment_id(
            os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment_name
        )
        return Study(experiment_id)

    @server_call
    def start_parent(self, study: Study, run_name: str, tags: dict[str, str], params: dict[str, str]) -> ParentRun:
        """The spec's parent run, named `run_name`: the run `mlflow run` started (the params it
        has, `mlflow run`'s own, are left as they are) or a new one."""
        if study.adopted_id:
            logged = self.client.get_run(study.adopted_id).data.params
            parent = ParentRun(study.adopted_id, study.experiment_id, adopted=True)
            tags, params = {"mlflow.runName": run_name, **tags}, {k: v for k, v in params.items() if k not in logged}
        else:
            run = self.client.create_run(study.experiment_id, run_name=run_name)
            parent = ParentRun(run.info.run_id, study.experiment_id, adopted=False)
        self.set_tags(parent.run_id, tags)
        self.log_params(parent.run_id, params)
        return parent

    @server_call
    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        return dict(self.client.get_experiment(experiment_id).tags)

    @server_call
    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            # Studies starting together tag their shared experiment at once.
            _despite_insert_races(functools.partial(self.client.set_experiment_tag, experiment_id, key, value))

    @server_call
    def runs(self, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list[Run]:
        return self._search([experiment_id], filter_string, order_by)

    @server_call
    def delete(self, run_id: str) -> None:  # MLflow's soft delete: out of the runs list, `mlflow gc` purges
        self.client.delete_run(run_id)

    # --- cell runs ------------------------------------------------------------------------

    @server_call
    def finished_cells(self, experiment_id: str) -> dict[str, str]:
        """cell key -> run id of the latest FINISHED run of each cell in the experiment."""
        runs = self._search(
            [experiment_id],
            f"attributes.status = 'FINISHED' and tags.`{TAG}cell_key` != ''",
            ["attributes.start_time ASC"],
        )
        return {run.data.tags[f"{TAG}cell_key"]: run.info.run_id for run in runs}

    @server_call
    def cell_runs(self, experiment_id: str, cell_key: str) -> list[Run]:
        """Every run of one cell (any status), oldest first: a fresh look just before running it."""
        return self._search([experiment_id], f"tags.`{TAG}cell_key` = '{cell_key}'", ["attributes.start_time ASC"])

    @server_call
    def reopen(self, run_id: str) -> None:
        """Mark a run left behind by a killed process (or failed after a checkpoint) as RUNNING
        again, to resume into it; a failure it recorded no longer applies."""
        self.client.update_run(run_id, status="RUNNING")
        if ERROR_TAG in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, ERROR_TAG)
            self.delete_artifacts(run_id, ERROR_ARTIFACT)

    @server_call
    def last_step(self, run_id: str, metric: str) -> int:
        """The highest step logged for `metric` (0 when none): a resumed trainer logs only later steps."""
        history = self.client.get_metric_history(run_id, metric)
        return max((m.step for m in history), default=0)

    @server_call
    def start_child(self, parent: ParentRun, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(
            parent.experiment_id,
            run_name=run_name,
            tags={"mlflow.parentRunId": parent.run_id, **tags},
        )
        # A seedless cell (baseline, CoT) says so: a missing param would plot as a value.
        run_id = str(run.info.run_id)
        self.log_params(run_id, {k: tags[TAG + k] or "none" for k in DESIGN_PARAMS if TAG + k in tags})
        return run_id

    @server_call
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @server_call
    def log_params(self, run_id: str, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    @server_call
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    @server_call
    def log_table(self, run_id: str, records: list[dict[str, Any]], artifact_file: str = PREDICTIONS_TABLE) -> None:
        self.client.log_table(run_id, pd.DataFrame.from_records(records), artifact_file)

    @server_call
    def log_dict(self, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    @server_call
    def record_failure(self, run_id: str, cause: str, traceback_text: str) -> None:
        """Why a run failed: the cause in words as the `relxfer.error` tag (a column of the runs
        list) and the full traceback as the run's `error.txt` artifact."""
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(ERROR_TAG, cause[:5000])])
        self.client.log_text(run_id, traceback_text, ERROR_ARTIFACT)

    @server_call
    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    @server_call
    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    @server_call
    def log_dataset(self, run_id: str, name: str, digest: str, source: str, context: str) -> None:
        """Record a data set a run used (shown in the MLflow UI's Datasets column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type="relxfer", source=json.dumps({"uri": source}))
        inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
        # Studies starting together register the same new data set at once.
        _despite_insert_races(lambda: self.client.log_inputs(run_id, inputs))

    @server_call
    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    @server_call
    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    @server_call
    def list_artifacts(self, run_id: str, path: str) -> list[tuple[str, bool]]:
        """(artifact path, is a directory) of the entries directly under `path` of a run."""
        return [(f.path, f.is_dir) for f in self.client.list_artifacts(run_id, path)]

    @server_call
    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Remove `path` (a file or a directory) from a run's artifacts: superseded checkpoints."""
        from mlflow.store.artifact.artifact_repository_registry import (
            get_artifact_repository,
        )

        run = self.client.get_run(run_id)
        get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri).delete_artifacts(path)

    @server_call
    def running_children(self, parent: ParentRun) -> list[str]:
        """Ids of the parent's child runs still RUNNING (to close them when a study is cancelled)."""
        runs = self._search(
            [parent.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}' and attributes.status = 'RUNNING'"
        )
        return [run.info.run_id for run in runs]

    @server_call
    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    # --- reading back for compare -----------------------------------------------------------

    # Runs per search_runs page (MLflow's default page size; the REST API takes up to 50,000).
    search_page_size = 1000
    # Concurrent table downloads in `load_predictions`. Each is one small GET that the server
    # answers in milliseconds, so round trips, not bandwidth, bound a sequential loop.
    table_workers = 8

    def _search(
        self,
        experiment_ids: list[str],
        filter_string: str,
        order_by: list[str] | None = None,
        page_size: int | None = None,
    ) -> list[Run]:
        """Every run matching `filter_string`, following search_runs' page tokens."""
        runs: list[Run] = []
        token: str | None = None
        while True:
            page = self.client.search_runs(
                experiment_ids,
                filter_string,
                max_results=page_size or self.search_page_size,
                order_by=order_by,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    @server_call
    def evaluation_runs(
        self, experiment_name: str | None = None, parent_id: str | None = None, page_size: int | None = None
    ) -> list[Run]:
        """FINISHED evaluation runs of an experiment (latest per cell) or of one spec's parent run
        (the cells it ran and the finished cells it reused, as listed in its cells table)."""
        finished_evaluations = f"tags.`{TAG}kind` = 'evaluate' and attributes.status = 'FINISHED'"
        if parent_id is not None:
            parent = self.client.get_run(parent_id)
            cells = self._read_table(parent, CELLS_TABLE)
            kind, run_id = cells["columns"].index("kind"), cells["columns"].index("run_id")
            ids = {row[run_id] for row in cells["data"] if row[kind] == "evaluate"}
            runs = self._search([parent.info.experiment_id], finished_evaluations, page_size=page_size)
            return [r for r in runs if r.info.run_id in ids]
        if experiment_name is None:
            raise ValueError("evaluation_runs needs an experiment name or a parent run id")
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise TrackingError(f"no experiment named '{experiment_name}' at {self.uri}")
        runs = self._search([experiment.experiment_id], finished_evaluations, ["attributes.start_time ASC"], page_size)
        latest = {r.data.tags[f"{TAG}cell_key"]: r for r in runs}
        return list(latest.values())

    @server_call
    def load_predictions(self, runs: list[Run], workers: int | None = None) -> pd.DataFrame:
        """Per-item tables of `runs`, one frame with a run_id column, fetched from the server.

        Each run's `predictions.json` is downloaded from the run's own artifact location, through
        the artifact repository MLflow resolves for it and this tracker's URI (for a tracking
        server: its artifact proxy), by a bounded pool of threads, and parsed with `json`: values
        come back as logged (pandas' read_json would turn an id like "0012" into 12). A table's
        columns missing from other runs' tables (e.g. cot_text) are NaN there."""
        from concurrent.futures import ThreadPoolExecutor

        if not runs:
            return pd.DataFrame()
        workers = max(1, min(workers or self.table_workers, len(runs)))
        with ThreadPoolExecutor(workers, thread_name_prefix="relxfer-table") as pool:
            tables = list(pool.map(lambda run: self._read_table(run, PREDICTIONS_TABLE), runs))
        return self._tables_frame(tables, [run.info.run_id for run in runs])

    def _read_table(self, run: Run, artifact_file: str) -> dict[str, Any]:
        """One MLflow table artifact of `run` as logged: {"columns": [...], "data": [[...], ...]}
        (pandas' orient="split", what MlflowClient.log_table writes)."""
        import tempfile

        from mlflow.exceptions import MlflowException
        from mlflow.store.artifact.artifact_repository_registry import (
            get_artifact_repository,
        )
        from requests.exceptions import RequestException

        repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
        with tempfile.TemporaryDirectory(prefix="relxfer-table-") as tmp:
            local = os.path.join(tmp, os.path.basename(artifact_file))
            try:
                # The repository's own single-file download: one request. Its public
                # download_artifacts first lists the path to tell a file from a directory,
                # which doubles the round trips for 2,000 tables.
                repo._download_file(artifact_file, local)
            except (MlflowException, RequestException, OSError) as e:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise TrackingError(
                    f"cannot read table '{artifact_file}' of run {run.info.run_id} from {self.uri}: {reason}"
                ) from e
            with open(local, encoding="utf-8") as f:
                table = json.load(f)
        if not isinstance(table, dict) or not {"columns", "data"} <= table.keys():
            raise TrackingError(
                f"run {run.info.run_id}: '{artifact_file}' is not an MLflow table (orient='split' JSON)"
            )
        return table

    @staticmethod
    def _tables_frame(tables: list[dict[str, Any]], run_ids: list[str]) -> pd.DataFrame:
        """One frame from parsed tables plus a run_id column: one DataFrame per distinct column
        layout (not per run), then one concat, in which columns a layout lacks become NaN."""
        layouts: dict[tuple[str, ...], tuple[list[list[Any]], list[str]]] = {}
        for table, run_id in zip(tables, run_ids):
            rows, ids = layouts.setdefault(tuple(table["columns"]), ([], []))
            rows.extend(table["data"])
            ids.extend([run_id] * len(table["data"]))
        frames = []
        for columns, (rows, ids) in layouts.items():
            frame = pd.DataFrame(rows, columns=list(columns))
            frame["run_id"] = ids
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    @server_call
    def log_comparison(
        self, experiment_id: str, run_name: str, tags: dict[str, str], metrics: dict[str, float], out_dir: Path
    ) -> str:
        """A FINISHED comparison run holding the report's headline numbers and its files."""
        run_id = str(
            self.client.create_run(experiment_id, run_name=run_name, tags={f"{TAG}kind": "compare", **tags}).info.run_id
        )
        try:
            self.log_metrics(run_id, metrics)
            self.log_artifacts(run_id, out_dir, "report")
        except BaseException:
            self.end(run_id, "FAILED")
            raise
        self.end(run_id, "FINISHED")
        return run_id
