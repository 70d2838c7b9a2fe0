"""What would reach 80% power for a stated family gap: languages per family (at the design's
items per language) and items per language (at the design's languages).

Each candidate design is priced with the normal-theory approximation (`family.closed_form_gap`),
scaled by the ratio of the simulated to the approximate answer for the design at hand when the
design has one (the simulation carries what the approximation leaves out: the interval's exact
width, the permutation test's discreteness, the rule's two conditions)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from relxfer.compare.power.assumptions import Assumptions
from relxfer.compare.power.design import StudyDesign
from relxfer.compare.power.family import GapPower, closed_form_gap

MAX_LANGUAGES_PER_FAMILY = 40
ITEM_STEPS = (50, 100, 150, 200, 300, 400, 500, 600, 800, 900, 1200, 1600, 2000, 3000, 5000, 10000)


@dataclass(frozen=True)
class GapSizing:
    target: float  # the gap (proportion) to reach 80% power for
    languages_per_family: int | None  # equal languages per family; None: not within MAX_LANGUAGES_PER_FAMILY
    items_per_language: int | None  # at the design's languages; None: no number of items reaches it
    calibration: float  # simulated / approximate detectable gap at the design (1.0 when not simulated)


def size_for_gap(design: StudyDesign, assumptions: Assumptions, gap: GapPower, target: float) -> GapSizing:
    noise_at = _noise(design, gap.gain_noise_var)
    here = closed_form_gap(
        design.n_related, design.n_control, design.n_models, assumptions, noise_at(design.items_per_language)
    )
    calibration = gap.detectable / here if gap.detectable is not None and here else 1.0

    def detectable(n_related: int, n_control: int, items: int) -> float | None:
        value = closed_form_gap(n_related, n_control, design.n_models, assumptions, noise_at(items))
        return None if value is None else calibration * value

    languages = next(
        (
            n
            for n in range(3, MAX_LANGUAGES_PER_FAMILY + 1)
            if _reaches(detectable(n, n, design.items_per_language), target)
        ),
        None,
    )
    items = next(
        (k for k in ITEM_STEPS if _reaches(detectable(design.n_related, design.n_control, k), target)),
        None,
    )
    return GapSizing(target, languages, items, calibration)


def _reaches(value: float | None, target: float) -> bool:
    return value is not None and value <= target


def _noise(design: StudyDesign, noise_var: float) -> Callable[[int], float]:
    """A cell gain's sampling variance at other item counts (it falls as 1 / items)."""

    def at(items: int) -> float:
        return noise_var * design.items_per_language / items

    return at
