"""Everything `relxfer plan` says about power, for one design and one set of assumptions."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from relxfer.compare.power.assumptions import Assumptions
from relxfer.compare.power.design import StudyDesign
from relxfer.compare.power.family import GapPower, gap_power
from relxfer.compare.power.floor import PermutationFloor, permutation_floor
from relxfer.compare.power.paired import PairedPower, paired_power
from relxfer.compare.power.simulate import draw_world
from relxfer.compare.power.sizing import GapSizing, size_for_gap
from relxfer.compare.power.slope import SlopePower, slope_power
from relxfer.errors import RelxferError

DEFAULT_STUDIES = 200  # simulated studies for the family gap and the slope
PAIRED_BLOCKS = 100  # simulated models' sets of languages for the per-language gains
DEFAULT_TARGET_GAP = 0.10


@dataclass(frozen=True)
class PowerReport:
    design: StudyDesign
    assumptions: Assumptions
    source: str  # where the assumptions come from, in words
    floor: PermutationFloor
    gap: GapPower | None  # None: the design has no family contrast
    paired: PairedPower
    slope: SlopePower
    sizing: GapSizing | None
    n_studies: int
    seconds: float


def power_report(
    design: StudyDesign,
    assumptions: Assumptions,
    source: str = "defaults",
    n_studies: int = DEFAULT_STUDIES,
    target_gap: float = DEFAULT_TARGET_GAP,
    seed: int = 0,
) -> PowerReport:
    """Permutation floor, detectable effects at 80% power and what reaches `target_gap` (see
    docs/power.md). `n_studies` scales every simulation (the per-language one by the same
    factor over `PAIRED_BLOCKS`)."""
    if design.items_per_language < 2:
        raise RelxferError(
            f"a power computation needs at least 2 evaluation items per language, not {design.items_per_language}"
        )
    if n_studies < 20:
        raise RelxferError(f"--simulations {n_studies}: at least 20 simulated studies are needed for a power curve")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    world = draw_world(design, assumptions, n_studies, rng)
    has_contrast = design.n_related >= 1 and design.n_control >= 1
    gap = gap_power(world) if has_contrast else None
    blocks = max(1, round(PAIRED_BLOCKS * n_studies / DEFAULT_STUDIES))
    paired = paired_power(draw_world(design, assumptions, -(-blocks // design.n_models), rng, gain_sds=False))
    return PowerReport(
        design=design,
        assumptions=assumptions,
        source=source,
        floor=permutation_floor(design.n_related, design.n_control),
        gap=gap,
        paired=paired,
        slope=slope_power(world),
        sizing=size_for_gap(design, assumptions, gap, target_gap) if gap is not None else None,
        n_studies=n_studies,
        seconds=time.perf_counter() - start,
    )
