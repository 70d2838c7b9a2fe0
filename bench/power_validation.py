"""Does `relxfer plan`'s detectable effect give 80% power when compare itself analyses the
studies? For each design, plan's detectable family gap, per-language gain and baseline-gain
slope are planted in `--studies` studies simulated in the runner's logged format
(tests.support.simulate), compare's own analyses run on them (family_gap, paired_gains,
baseline_gain), and the share of findings under compare's rule is the simulated power.

    python bench/power_validation.py [--studies 500] [--plan-studies 600] [--designs 5+5x2 ...] [--out ...]

Designs: 3 + 3, 5 + 5 and 4 + 6 languages, each with 2 and 7 models; 100 items per language
in passages of 2 questions; plan's default assumptions (docs/power.md). The predicted effects
come from plan's simulation with `--plan-studies` studies (`relxfer plan --simulations`); the
default (200) is also run and recorded, to show how much its answer varies. A 3 + 3 design has
no detectable family gap (its exact permutation test cannot go below p = 0.10), so only its
per-language gain and slope are checked. Results are written after every check (the cheapest first), so a
run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relxfer.compare.power.assumptions import Assumptions  # noqa: E402
from relxfer.compare.power.design import StudyDesign  # noqa: E402
from relxfer.compare.power.report import DEFAULT_STUDIES, power_report  # noqa: E402
from tests.support.power_check import check_family_gap, check_per_language, check_slope  # noqa: E402

DESIGNS = [(3, 3, 2), (5, 5, 2), (4, 6, 2), (3, 3, 7), (5, 5, 7), (4, 6, 7)]
ANALYSES = {"family_gap": check_family_gap, "slope": check_slope, "per_language": check_per_language}
ITEMS, QUESTIONS_PER_PASSAGE = 100, 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=500)
    parser.add_argument("--plan-studies", type=int, default=600)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "power_validation.json")
    parser.add_argument("--designs", nargs="*", help="e.g. 5+5x2 (default: all six)")
    args = parser.parse_args()
    designs = DESIGNS if not args.designs else [_parse(d) for d in args.designs]
    results: dict[str, object] = {
        "studies": args.studies,
        "plan_studies": args.plan_studies,
        "items_per_language": ITEMS,
        "questions_per_passage": QUESTIONS_PER_PASSAGE,
        "assumptions": dataclasses.asdict(Assumptions()),
        "rows": [],
    }
    rows: list[dict[str, object]] = results["rows"]  # type: ignore[assignment]
    reports = {}
    # Cheapest first (2 models before 7, the family gap first), so a run cut short keeps the most.
    order = [(d, a) for few in (True, False) for a in ANALYSES for d in designs if (d[2] <= 2) == few]
    for (related, control, models), analysis in order:
        if (related, control, models) not in reports:
            design = StudyDesign(related, control, models, ITEMS, QUESTIONS_PER_PASSAGE)
            start = time.perf_counter()
            report = power_report(design, Assumptions(), n_studies=args.plan_studies)
            seconds = time.perf_counter() - start
            quick = power_report(design, Assumptions(), n_studies=DEFAULT_STUDIES, seed=1)
            reports[(related, control, models)] = (report, seconds, quick)
        report, plan_seconds, quick = reports[(related, control, models)]
        defaults = {
            "family_gap": quick.gap.detectable if quick.gap else None,
            "per_language": quick.paired.detectable,
            "slope": quick.slope.detectable,
        }
        if analysis == "family_gap" and (report.gap is None or report.gap.detectable is None):
            continue  # e.g. 3 + 3: the exact test cannot reach p < 0.05, nothing is detectable
        start = time.perf_counter()
        result = ANALYSES[analysis](report, args.studies, seed=10_000)
        row = {
            "design": f"{related}+{control}x{models}",
            "analysis": result.analysis,
            "predicted": result.predicted,
            "predicted_default_simulations": defaults[result.analysis],
            "power": result.power,
            "findings": result.findings,
            "trials": result.trials,
            "studies": result.studies,
            "within_5_points": abs(result.power - 0.8) <= 0.05,
            "plan_seconds": round(plan_seconds, 1),
            "check_seconds": round(time.perf_counter() - start, 1),
            "floor": report.floor.smallest_p,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table(results) + "\n")


def table(results: dict[str, object]) -> str:
    lines = [
        f"Simulated power at plan's detectable effect ({results['studies']} studies a row through compare; "
        f"plan: {results['plan_studies']} simulated studies; 100 items a language, passages of 2)",
        "",
        "| design (related + control x models) | analysis | detectable (plan) | plan, default 200 | power (compare) | trials |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:  # type: ignore[attr-defined]
        unit = "" if row["analysis"] == "slope" else " pts"
        scale = 1 if row["analysis"] == "slope" else 100
        sign = "-" if row["analysis"] == "slope" else ""
        default = row["predicted_default_simulations"]
        lines.append(
            f"| {row['design']} | {row['analysis']} | {sign}{scale * row['predicted']:.2f}{unit} | "
            f"{'' if default is None else f'{sign}{scale * default:.2f}{unit}'} | {100 * row['power']:.1f}% | {row['trials']} |"
        )
    seconds = sum(row["check_seconds"] for row in results["rows"])  # type: ignore[attr-defined]
    lines += [
        "",
        f"{sum(row['within_5_points'] for row in results['rows'])} of {len(results['rows'])} within 80% +/- 5 points; "  # type: ignore[attr-defined]
        f"the checks took {seconds / 60:.0f} min. The per-language gain and the slope do not use the family labels, "
        "so 5 + 5 and 4 + 6 languages (the same 10 languages, the same seeds) give identical rows for them.",
    ]
    return "\n".join(lines)


def _parse(text: str) -> tuple[int, int, int]:
    languages, models = text.split("x")
    related, control = languages.split("+")
    return int(related), int(control), int(models)


if __name__ == "__main__":
    main()
