"""Command line: parse, call the library, print. Every RelxferError becomes one line on stderr and
exit code 2; `relxfer --debug ...` shows the traceback instead."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from relxfer import __version__
from relxfer.errors import RelxferError


def default_cache() -> Path:
    """$RELXFER_CACHE as it is when a command runs (not when this module was imported)."""
    return Path(os.environ.get("RELXFER_CACHE") or Path.home() / ".cache" / "relxfer")


class RelxferGroup(click.Group):
    """Turns library errors into a one-line message with exit code 2 (the traceback with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RelxferError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            for line in str(e).splitlines() or [type(e).__name__]:  # a spec's problems: one line each
                click.echo(f"Error: {line}", err=True)
            ctx.exit(2)


@click.group(cls=RelxferGroup)
@click.version_option(__version__, prog_name="relxfer")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """relxfer: cross-lingual transfer studies declared as JSON specs, tracked in MLflow."""
    ctx.obj = {"debug": debug}
    if not debug:
        quiet_libraries()


def quiet_libraries() -> None:
    """Hide the warnings of the libraries relxfer drives (deprecations, notices meant for their
    developers, also those they attribute to relxfer's calling line); relxfer's own
    (RelxferWarning) stay. --debug shows them all."""
    import warnings

    from relxfer.errors import RelxferWarning

    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", category=RelxferWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _spec_arg():
    return click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))


@main.command()
@_spec_arg()
def validate(spec: Path) -> None:
    """Check SPEC against the schema and the language table, and a declared local data set's rows; run nothing.

    Example: relxfer validate specs/smoke.json
    """
    from relxfer.plan.study_data import check_local_data
    from relxfer.spec.load import load_spec

    loaded = load_spec(spec)
    check_local_data(loaded)
    click.echo(f"{spec}: valid (spec hash {loaded.hash})")


@main.command()
@_spec_arg()
@click.option("--assume", multiple=True, metavar="KEY=VALUE", help="Change a power assumption (docs/power.md).")
@click.option("--from-experiment", help="Estimate the power assumptions from this pilot experiment's runs.")
@click.option("--tracking-uri", help="With --from-experiment: MLflow tracking URI (default: $MLFLOW_TRACKING_URI).")
@click.option(
    "--simulations", type=click.IntRange(min=20), default=200, show_default=True, help="Simulated studies per analysis."
)
@click.option(
    "--target-gap", type=float, default=10.0, show_default=True, help="Family gap (points) to size the study for."
)
def plan(
    spec: Path,
    assume: tuple[str, ...],
    from_experiment: str | None,
    tracking_uri: str | None,
    simulations: int,
    target_gap: float,
) -> None:
    """Print every cell SPEC expands into, the counts per kind, and what the design can detect; run nothing.

    Example: relxfer plan specs/full.json
    """
    from relxfer.compare.power.for_spec import settle_assumptions, spec_power_lines
    from relxfer.plan.cells import count_by_kind
    from relxfer.plan.cells import plan as expand
    from relxfer.spec.engines import describe
    from relxfer.spec.load import load_spec
    from relxfer.spec.memory import estimate
    from relxfer.spec.resources import cell_request, describe_resources

    loaded = load_spec(spec)
    settled = settle_assumptions(assume, from_experiment, tracking_uri, loaded.analysis.reference)
    cells = expand(loaded)
    for model in loaded.models:
        engines, res = model.engines, model.resources
        memory = f", {res.memory_gb:g} GB" if res.memory_gb else ""
        gpu_memory = f" x {res.gpu_memory_gb:g} GB" if res.gpu_memory_gb else ""
        click.echo(
            f"model     {model.name}: evaluate on {describe(engines.evaluate)}; "
            f"fine-tune on {describe(engines.finetune)}; {res.gpus} GPU{gpu_memory}, {res.cpus:g} CPU{memory} a cell"
        )
        floor = estimate(model, loaded.finetune)
        if floor is not None:
            click.echo(f"memory    {model.name}: fine-tune needs {floor.describe()}")
    for cell in cells:
        needs = describe_resources(cell_request(loaded.model(cell.model), cell.kind))
        click.echo(
            f"{cell.kind:9} {cell.key}  {cell.run_name}"
            + (f"  [{cell.group}/{cell.role}]" if cell.group else "")
            + f"  ({needs})"
        )
    counts = count_by_kind(cells)
    click.echo(f"cells: {counts['finetune']} finetune, {counts['evaluate']} evaluate, {len(cells)} total")
    from relxfer.plan.study_data import summarize_study_data

    data = summarize_study_data(loaded)
    how = "loaded" if data.loaded else "expected"
    click.echo(
        f"data ({how}): {'unknown' if data.train_items is None else data.train_items} training items from {', '.join(loaded.train_languages)}; "
        f"{data.held_out_ids} held-out ids; {data.leaked_ids} held-out ids in training"
    )
    if data.note:
        click.echo(f"data: {data.note}")
    click.echo("evaluation items per language:")
    rows = [(g.name, g.role, code, str(data.eval_items.get(code, 0))) for g in loaded.groups for code in g.languages]
    click.echo(_table(("group", "role", "language", "items"), rows, right=("items",)))
    click.echo("\n".join(spec_power_lines(loaded, data.eval_items, settled, simulations, target_gap / 100)))


def _table(
    header: tuple[str, ...], rows: Sequence[tuple[str, ...]], right: tuple[str, ...] = (), indent: str = "  "
) -> str:
    """A plain-text table: columns as wide as their longest cell, `right` columns right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = []
    for row in (header, *rows):
        cells = [str(c).rjust(w) if h in right else str(c).ljust(w) for c, w, h in zip(row, widths, header)]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


@main.command()
@_spec_arg()
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_cache,
    show_default="$RELXFER_CACHE, else ~/.cache/relxfer",
    help="Where built models, checkpoints and downloaded adapters live (with --executor ray: the driver's; "
    "each node uses its own $RELXFER_CACHE, default ~/.cache/relxfer).",
)
# `mlflow run . -P cache_dir=DIR` passes an undeclared parameter on as `--cache_dir DIR`.
@click.option("--cache_dir", "cache_dir_param", type=click.Path(file_okay=False, path_type=Path), hidden=True)
@click.option("--force", is_flag=True, help="Re-run every cell, even those with a FINISHED run of the same key.")
@click.option(
    "--fail-fast",
    is_flag=True,
    help="Stop at the first failed cell (by default a failed cell does not stop the cells that do not need it).",
)
# `mlflow run . -P fail_fast=true` (MLproject) passes `--fail_fast true`.
@click.option("--fail_fast", "fail_fast_param", type=click.BOOL, hidden=True)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: cells one after another in this process; ray: cells as tasks on a Ray cluster, each with "
    "its model's resources (pip install 'relxfer[ray]').",
)
@click.option(
    "--ray-address",
    help="With --executor ray: the cluster's HOST:PORT (default: $RAY_ADDRESS, else the "
    "cluster started on this machine with `ray start --head`).",
)
@click.option(
    "--cells-per-task",
    type=click.IntRange(min=1),
    help="With --executor ray: evaluation cells per task (default: all cells of one model and adapter, so "
    "each evaluation engine starts once per model and adapter).",
)
def run(
    spec: Path,
    tracking_uri: str | None,
    cache_dir: Path,
    cache_dir_param: Path | None,
    force: bool,
    fail_fast: bool,
    fail_fast_param: bool | None,
    no_progress: bool,
    executor: str,
    ray_address: str | None,
    cells_per_task: int | None,
) -> None:
    """Run SPEC: fine-tune and evaluate every cell not yet finished, one MLflow run per cell.

    A cell that fails does not stop the others (only those that need it); at the end each failed
    cell is listed with its cause and the exit code is 1. A re-run runs only what did not finish.

    Example: relxfer run specs/smoke.json --tracking-uri http://127.0.0.1:5000

    On a Ray cluster: relxfer run specs/full.json --executor ray --ray-address HEAD:6379 --tracking-uri http://HOST:5000
    """
    from relxfer.run.executors import make_executor
    from relxfer.run.runner import StudyRunner
    from relxfer.spec.load import load_spec
    from relxfer.tracking.client import Tracker
    from relxfer.tracking.study_view import runs_link

    loaded = load_spec(spec)
    # `mlflow run` quotes parameters for the shell: a `~` reaches relxfer unexpanded.
    cache_dir = (cache_dir_param or cache_dir).expanduser().absolute()
    options = {"address": ray_address, "cells_per_task": cells_per_task} if executor == "ray" else {}
    tracker = Tracker(tracking_uri)
    runner = StudyRunner(
        loaded,
        tracker,
        cache_dir,
        report=lambda line: click.echo(line, err=True),
        progress=not no_progress,
        executor=make_executor(executor, **options),
    )
    outcomes = runner.run(force=force, fail_fast=fail_fast or bool(fail_fast_param))
    parent = runner.parent
    link = runs_link(tracker.uri, parent.experiment_id, parent.run_id) if parent is not None else None
    _summary(spec, outcomes, tracker.uri, link)


def _summary(spec: Path, outcomes, uri: str, link: str | None) -> None:
    """One line per cell that failed or did not run (the cause in words; the traceback is the
    run's error.txt, shown here with --debug), then the counts; exit 1 when any cell failed."""
    from collections import Counter

    from relxfer.run.cell import FAILED, FINISHED, NOT_RUN, SKIPPED

    ctx = click.get_current_context()
    if ctx.obj and ctx.obj.get("debug"):
        for o in outcomes:
            if o.status == FAILED and o.traceback:
                click.echo(f"--- {o.cell.run_name}\n{o.traceback.rstrip()}", err=True)
    for o in outcomes:
        if o.status == FAILED:
            click.echo(f"failed   {o.cell.run_name}: {o.error}" + (f" (run {o.run_id})" if o.run_id else ""))
        elif o.status == NOT_RUN:
            click.echo(f"not run  {o.cell.run_name}: {o.error}")
    counts = Counter(o.status for o in outcomes)
    click.echo(
        f"{spec}: {counts[FINISHED]} cells run, {counts[SKIPPED]} already finished, {counts[FAILED]} failed, "
        f"{counts[NOT_RUN]} not run; tracking URI {uri}"
    )
    where = Counter(o.where for o in outcomes if o.status in (FINISHED, FAILED) and o.where)
    if where:
        click.echo("ran on: " + "; ".join(f"{w}: {n} cells" for w, n in sorted(where.items())))
    if link:
        click.echo(f"study run: {link}")
    if counts[FAILED] or counts[NOT_RUN]:
        ctx.exit(1)


@main.command()
@click.option("--experiment", help="Experiment to compare (every FINISHED evaluation run, latest per cell).")
@click.option("--parent", "parent_id", help="A spec's parent run id: compare the cells of that run.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@click.option("--reference", default="baseline", show_default=True, help="Condition gains are measured against.")
@click.option(
    "--scale",
    type=click.Choice(["raw", "logit"]),
    default="raw",
    show_default=True,
    help="Scale of the family gap and the baseline-gain slope: raw accuracy points, or logits "
    "(for studies near the 25% floor or the ceiling).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table: readable report; json: everything as JSON; csv: the accuracy table.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write CSV tables, report.json and PNG plots into this directory.",
)
@click.option(
    "--no-log",
    is_flag=True,
    help="Log nothing to MLflow (by default: one comparison run under the study's parent run, replaced "
    "when compared again, and the plots and summary on the parent run).",
)
def compare(experiment, parent_id, tracking_uri, reference, scale, fmt, out_dir, no_log) -> None:
    """Read a study's runs back from the tracking server and answer its question with statistics.

    Example: relxfer compare --experiment smoke --tracking-uri http://127.0.0.1:5000 --out report/
    """
    from relxfer.compare.frame import load_items
    from relxfer.compare.report import build_report, render_text, to_json
    from relxfer.tracking.client import Tracker

    if (experiment is None) == (parent_id is None):
        raise click.UsageError("give exactly one of --experiment or --parent")
    tracker = Tracker(tracking_uri)
    runs, items = load_items(tracker, experiment=experiment, parent=parent_id)
    if items.empty:
        raise RelxferError(
            f"no finished evaluation runs in {'experiment ' + experiment if experiment else 'run ' + parent_id}"
        )
    report = build_report(items, reference=reference, scale=scale)
    if fmt == "json":
        click.echo(to_json(report))
    elif fmt == "csv":
        click.echo(report.accuracy.drop(columns=["summary"]).to_csv(index=False), nl=False)
    else:
        click.echo(render_text(report))
    if out_dir is not None or not no_log:
        _write_and_log(
            report, tracker, runs, out_dir, experiment, parent_id, {"reference": reference, "scale": scale}, no_log
        )


def _write_and_log(
    report,
    tracker,
    runs,
    out_dir: Path | None,
    experiment: str | None,
    parent_id: str | None,
    settings: dict,
    no_log: bool,
) -> None:
    import tempfile

    from relxfer.compare.report import headline_metrics, write_outputs
    from relxfer.provenance import provenance_tags
    from relxfer.tracking.client import TAG
    from relxfer.tracking.study_view import (
        latest_study_run,
        publish_comparison,
        runs_link,
    )

    with tempfile.TemporaryDirectory(prefix="relxfer-compare-") as tmp:
        target = out_dir or Path(tmp)
        written = write_outputs(report, target)
        if out_dir is not None:
            click.echo(f"wrote {len(written)} files to {out_dir}", err=True)
        if no_log:
            return
        experiment_id = runs["experiment_id"].iloc[0]
        parent_id = parent_id or latest_study_run(tracker, experiment_id)
        published = publish_comparison(
            tracker,
            experiment_id,
            parent_id,
            experiment or str(parent_id),  # what was compared: one of the two is given
            settings,
            list(runs["run_id"]),
            headline_metrics(report),
            target,
            [*report.warnings(), *(s["summary"] for s in report.summaries())],
            {TAG + k: v for k, v in provenance_tags().items()},
        )
        where = f" under study run {parent_id}" if parent_id else ""
        if published.kept:
            click.echo(f"comparison run {published.run_id}{where} is up to date (same runs, same settings)", err=True)
        else:
            replaced = f", replacing {published.replaced} older" if published.replaced else ""
            click.echo(f"comparison run {published.run_id}{where}{replaced}", err=True)
        if link := runs_link(tracker.uri, experiment_id, parent_id or published.run_id):
            click.echo(f"open: {link}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
