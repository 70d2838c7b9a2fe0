"""What `relxfer plan` says about a spec's power: the assumptions (defaults, `--assume`, or a
pilot experiment in the tracking server), the spec's design, and the report's lines."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from relxfer.compare.power.assumptions import Assumptions, parse_assumptions
from relxfer.compare.power.design import design_from_spec
from relxfer.compare.power.pilot import PilotEstimate, estimate_assumptions
from relxfer.compare.power.report import DEFAULT_STUDIES, DEFAULT_TARGET_GAP, power_report
from relxfer.compare.power.text import PREFIX, floor_warning, power_lines
from relxfer.spec.load import Spec


@dataclass(frozen=True)
class Settled:
    """The assumptions to plan with and where they come from."""

    assumptions: Assumptions
    source: str
    notes: tuple[str, ...] = ()


def settle_assumptions(
    assume: Sequence[str] = (),
    from_experiment: str | None = None,
    tracking_uri: str | None = None,
    reference: str = "baseline",
) -> Settled:
    """Defaults, or a pilot's estimates, with each `assume` KEY=VALUE applied; raises a one-line
    error for an impossible assumption or a pilot without runs."""
    base, source = Assumptions(), "defaults"
    notes: tuple[str, ...] = ()
    if from_experiment is not None:
        pilot = _pilot(from_experiment, tracking_uri, reference)
        base, notes = pilot.assumptions, pilot.notes
        source = (
            f"estimated from experiment '{from_experiment}', {pilot.n_models} model(s) x "
            f"{pilot.n_languages} languages, {pilot.condition}"
        )
    assumptions = parse_assumptions(list(assume), base)
    if assume:
        source += "; set: " + ", ".join(assume)
    return Settled(assumptions, source, notes)


def spec_power_lines(
    spec: Spec,
    eval_items: Mapping[str, int],
    settled: Settled,
    n_studies: int = DEFAULT_STUDIES,
    target_gap: float = DEFAULT_TARGET_GAP,
) -> list[str]:
    """The power lines of `relxfer plan` (a warning line first when no family finding is possible)."""
    design = design_from_spec(spec, eval_items)
    if not design.conditions:
        return [f"{PREFIX}no condition is compared with {design.reference}: compare has no gain to test"]
    a = settled.assumptions
    if a.questions_per_passage is not None:
        design = dataclasses.replace(design, questions_per_passage=a.questions_per_passage)
    report = power_report(design, a, settled.source, n_studies=n_studies, target_gap=target_gap)
    warning = floor_warning(report.floor)
    notes = [f"{PREFIX}pilot: {note}" for note in settled.notes]
    return ([warning] if warning else []) + power_lines(report) + notes


def _pilot(name: str, tracking_uri: str | None, reference: str) -> PilotEstimate:
    # The tracking client loads only here: a plan without a pilot never touches MLflow.
    from relxfer.compare.frame import load_items
    from relxfer.tracking.client import Tracker

    _, items = load_items(Tracker(tracking_uri), experiment=name)
    return estimate_assumptions(items, name, reference)
