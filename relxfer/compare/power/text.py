"""The words of a power report: the lines `relxfer plan` prints (docs/power.md reads them)."""

from __future__ import annotations

from relxfer.compare.power.floor import PermutationFloor, smallest_possible_designs
from relxfer.compare.power.report import PowerReport
from relxfer.compare.power.sizing import MAX_LANGUAGES_PER_FAMILY

PREFIX = "power     "


def power_lines(report: PowerReport) -> list[str]:
    d, a = report.design, report.assumptions
    lines = [f"assumptions ({report.source}): {a.describe()}"]
    conditions = ", ".join(d.conditions) or "none"
    floor = report.floor
    lines.append(
        f"family gap ({conditions} vs {d.reference}): {d.n_related} related vs {d.n_control} control languages; "
        f"{'exact' if floor.exact else 'Monte Carlo'} permutation test over {floor.n_assignments} assignments, "
        f"smallest possible p {_p(floor.smallest_p)}"
    )
    if report.gap is not None:
        if report.gap.detectable is not None:
            lines.append(
                f"family gap: 80% power for a gap of {_pts(report.gap.detectable)} points (CR2 interval and exact "
                f"permutation test both, over {report.n_studies} simulated studies)"
            )
        elif floor.finding_possible:
            lines.append("family gap: no gap reaches 80% power within the simulated range")
    p = report.paired
    if p.detectable is not None:
        lines.append(
            f"per-language gain: 80% power for a gain of {_pts(p.detectable)} points in each language "
            f"({p.n_items} items in {p.n_passages} passages; sign-flip test with Holm across {p.n_languages} "
            f"languages; a language that gains alone needs more)"
        )
    else:
        lines.append(f"per-language gain: no gain up to the accuracy ceiling reaches 80% power at {p.n_items} items")
    s = report.slope
    if s.detectable is not None:
        lines.append(
            f"baseline-gain slope: 80% power for a slope of -{s.detectable:.2f} points of gain per point of baseline "
            f"({d.n_models} model{'s' if d.n_models != 1 else ''}, jackknife over {s.clusters}s)"
        )
    else:
        lines.append(
            f"baseline-gain slope: no slope up to -3 reaches 80% power ({d.n_models} model"
            f"{'s' if d.n_models != 1 else ''}; the baselines were reliable enough to correct in "
            f"{100 * s.reliable_share:.0f}% of the simulated studies)"
        )
    if report.sizing is not None:
        lines.append(_sizing(report))
    lines.append(
        f"power computed in {report.seconds:.1f} s; --assume KEY=VALUE changes an assumption, --from-experiment "
        f"estimates them from a pilot, docs/power.md says how to read these lines"
    )
    return [PREFIX + line for line in lines]


def floor_warning(floor: PermutationFloor) -> str | None:
    """One plain sentence when the rule can never call a family gap a finding."""
    if floor.finding_possible:
        return None
    if min(floor.n_related, floor.n_control) < 3:
        return (
            f"warning: with {floor.n_related} related and {floor.n_control} control languages compare gives no family "
            f"conclusion at all: it needs at least 3 languages a side."
        )
    designs = [f"{r} + {c}" for r, c in smallest_possible_designs(floor.n_related, floor.n_control)]
    options = designs[0] if len(designs) == 1 else ", ".join(designs[:-1]) + " or " + designs[-1]
    return (
        f"warning: with {floor.n_related} related and {floor.n_control} control languages the rule can never call "
        f"a family gap a finding: the exact permutation test's smallest possible p is {_p(floor.smallest_p)}, not "
        f"below 0.05; {options} languages could."
    )


def _sizing(report: PowerReport) -> str:
    sizing, d = report.sizing, report.design
    assert sizing is not None
    target = f"for 80% power at a family gap of {_pts(sizing.target)} points"
    languages = (
        f"{sizing.languages_per_family} + {sizing.languages_per_family} languages at {d.items_per_language} items each"
        if sizing.languages_per_family is not None
        else f"more than {MAX_LANGUAGES_PER_FAMILY} languages a family at {d.items_per_language} items"
    )
    if sizing.items_per_language is not None:
        items = f"or {sizing.items_per_language} items per language at {d.n_related} + {d.n_control} languages"
    else:
        items = f"no number of items suffices at {d.n_related} + {d.n_control} languages"
    return f"{target}: {languages}; {items} (approximate: closed form scaled to the simulation)"


def _pts(value: float) -> str:
    return f"{100 * value:.1f}"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
