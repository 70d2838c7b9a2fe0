"""Operating characteristics of `relxfer compare`'s statistics on simulated studies, beside the
estimators compare does not lead with, with hundreds of studies per scenario.

    python bench/compare_simulations.py [--studies 300] [--out bench/results/compare_simulations.json]

Each study is simulated in the runner's logged format (tests.support.simulate: records as
`relxfer.evaluate.loop.make_records` writes them, tags as the runner sets them, assembled by
relxfer.compare.frame) and analysed by the same functions `relxfer compare` calls. Design:
2 models x 8 languages (4 related, 4 control), 100 questions as 20 passages
x 5, each run's answers correlated within a passage (latent correlation 0.3), true gains
independent of true baselines unless a slope is planted; accuracies and effects in points.

Scenarios and what is measured:
- family_null_7pt: no gap, related languages 7 points higher at baseline -> mean estimate,
  coverage of 0, false findings (interval, exact test, both: the rule);
- family_gap12_7pt: a 12-point gap, same baselines -> mean estimate, coverage, power;
- family_gap12_equal: a 12-point gap, equal baselines: power where adjusting cannot bias;
- family_null_7pt_slope: no gap, 7 points of baseline difference AND a true slope of -0.5
  (gains shrink as baselines rise): what no estimator here can fix, and what the sensitivity
  analysis shows;
- cells_null_rho03 / cells_null_rho06: no true gain, within-passage correlation 0.3 / 0.6 ->
  per-language false positives of McNemar's test and of the passage sign-flip test compare uses;
- slope_m05_6models / slope_0_6models: 6 models (baselines 30% to 70%) x 8 languages, true
  slope -0.5 / 0 -> coverage and how often 0 is excluded, corrected vs split-half vs naive.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relxfer.compare.stats import baseline_gain, family_gap, mcnemar_test, paired_gains  # noqa: E402
from relxfer.compare.stats.common import conclusion  # noqa: E402
from relxfer.compare.stats.data import cell_table, on_scale, paired_wide, validate_items  # noqa: E402
from relxfer.compare.stats.family_fits import fit_corrected, fit_ols  # noqa: E402
from relxfer.compare.stats.measurement import error_moments  # noqa: E402
from relxfer.compare.stats.permutation import permutation_p  # noqa: E402
from tests.support.simulate import simulate_points_study  # noqa: E402

SIX_MODELS = dict(n_models=6, model_baselines=list(np.linspace(0.30, 0.70, 6)), gain=0.25)
FAMILY = {
    "family_null_7pt": dict(family_gap=0.0, family_baseline_gap=0.07),
    "family_gap12_7pt": dict(family_gap=0.12, family_baseline_gap=0.07),
    "family_gap12_equal": dict(family_gap=0.12, family_baseline_gap=0.0),
    "family_null_7pt_slope": dict(family_gap=0.0, family_baseline_gap=0.07, gain_slope=-0.5),
}
NO_GAIN = dict(gain=0.0, model_gain_sd=0, language_gain_sd=0, cell_gain_sd=0, seed_sd=0)


def family_methods(items) -> dict:
    """Every family-gap estimator on one study: estimate, interval, exact permutation p."""
    after = family_gap(items)  # unadjusted lead, cross-fitted sensitivity
    conditions = ["baseline", "finetuned"]
    wide = paired_wide(validate_items(items), conditions)
    cells = cell_table(wide, conditions)
    cells["related"] = (cells["role"] == "related").astype(float)
    out = {
        "lead: unadjusted": (after.estimate, after.ci_low, after.ci_high, after.perm_p_value),
        "sensitivity: cross-fitted": (
            after.adjusted_estimate,
            after.adjusted_ci_low,
            after.adjusted_ci_high,
            after.adjusted_perm_p_value,
        ),
    }
    for scale in ("raw", "logit"):
        base = on_scale(cells["k_baseline"], cells["n"], scale)
        gain = on_scale(cells["k_finetuned"], cells["n"], scale) - base
        fit = fit_ols(cells, gain, covariate=base)
        name = "measured-baseline adjustment" + (" (logit)" if scale == "logit" else "")
        out[name] = (fit.estimate, fit.ci_low, fit.ci_high, permutation_p(fit.betas, fit.estimate)["perm_p_value"])
    v, w = error_moments(wide, cells, "baseline", "finetuned")
    base = on_scale(cells["k_baseline"], cells["n"], "raw")
    eiv = fit_corrected(cells, on_scale(cells["k_finetuned"], cells["n"], "raw") - base, base, v, w)
    out["rejected: errors-in-variables"] = (
        eiv.estimate,
        eiv.ci_low,
        eiv.ci_high,
        permutation_p(eiv.betas, eiv.estimate)["perm_p_value"],
    )
    out["_reliability"] = after.baseline_reliability
    return out


def summarise_family(rows: list[dict], truth: float) -> dict:
    summary = {"baseline_reliability_median": float(np.median([r.pop("_reliability") for r in rows]))}
    for method in rows[0]:
        a = np.array([r[method] for r in rows], dtype=float)
        estimate, low, high, perm = a.T
        interval = (low > 0) | (high < 0)
        rule = np.array([conclusion(lo, hi, p) in ("above", "below") for lo, hi, p in zip(low, high, perm)])
        summary[method] = {
            "mean_points": 100 * float(np.mean(estimate)) if "logit" not in method else None,
            "sd_points": 100 * float(np.std(estimate)) if "logit" not in method else None,
            "coverage": float(np.mean((low <= truth) & (truth <= high)))
            if "logit" not in method or truth == 0
            else None,
            "interval_rejects": float(np.mean(interval)),
            "permutation_rejects": float(np.mean(perm < 0.05)),
            "rule_finds": float(np.mean(rule)),
        }
    return summary


def run_family(name, planted, studies, first_seed):
    rows = [family_methods(simulate_points_study(seed=first_seed + i, **planted)) for i in range(studies)]
    return summarise_family(rows, planted["family_gap"])


def run_cells(rho, studies, first_seed) -> dict:
    mcnemar, signflip, covered = [], [], []
    for i in range(studies):
        gains = paired_gains(
            simulate_points_study(passage_correlation=rho, seed=first_seed + i, **NO_GAIN), "finetuned"
        )
        mcnemar += [mcnemar_test(b, c)[0] < 0.05 for b, c in zip(gains["b"], gains["c"])]
        signflip += (gains["p_value"] < 0.05).tolist()
        covered += ((gains["ci_low"] <= 0) & (0 <= gains["ci_high"])).tolist()
    return {
        "cells": len(mcnemar),
        "McNemar false positives": float(np.mean(mcnemar)),
        "lead: passage sign-flip false positives": float(np.mean(signflip)),
        "interval coverage": float(np.mean(covered)),
    }


def run_slope(slope, studies, first_seed) -> dict:
    rows = []
    for i in range(studies):
        r = baseline_gain(simulate_points_study(gain_slope=slope, seed=first_seed + i, **SIX_MODELS), n_splits=50)
        rows.append(
            (
                r.corrected_slope,
                r.corrected_slope_ci_low,
                r.corrected_slope_ci_high,
                r.split_half_slope,
                r.split_half_slope_ci_low,
                r.split_half_slope_ci_high,
                r.naive_slope,
                r.naive_slope_ci_low,
                r.naive_slope_ci_high,
                r.detectable_slope,
                r.baseline_reliability,
            )
        )
    a = np.array(rows, dtype=float)
    out = {
        "detectable_slope_median": float(np.median(a[:, 9])),
        "baseline_reliability_median": float(np.median(a[:, 10])),
    }
    for j, method in enumerate(["lead: corrected", "split-half", "naive"]):
        estimate, low, high = a[:, 3 * j], a[:, 3 * j + 1], a[:, 3 * j + 2]
        out[method] = {
            "mean": float(np.mean(estimate)),
            "sd": float(np.std(estimate)),
            "coverage": float(np.mean((low <= slope) & (slope <= high))),
            "excludes_zero": float(np.mean((low > 0) | (high < 0))),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=300, help="simulated studies per scenario")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "compare_simulations.json")
    args = parser.parse_args(argv)
    results = {"studies_per_scenario": args.studies}
    start = time.perf_counter()
    for k, (name, planted) in enumerate(FAMILY.items()):
        results[name] = run_family(name, planted, args.studies, 100_000 * (k + 1))
        print(name, json.dumps(results[name], indent=1), f"({time.perf_counter() - start:.0f} s)", flush=True)
    for k, rho in enumerate((0.3, 0.6)):
        name = f"cells_null_rho0{int(10 * rho)}"
        results[name] = run_cells(rho, max(1, args.studies * 2 // 3), 600_000 + 100_000 * k)
        print(name, json.dumps(results[name], indent=1), f"({time.perf_counter() - start:.0f} s)", flush=True)
    for k, slope in enumerate((-0.5, 0.0)):
        name = "slope_m05_6models" if slope else "slope_0_6models"
        results[name] = run_slope(slope, args.studies, 800_000 + 100_000 * k)
        print(name, json.dumps(results[name], indent=1), f"({time.perf_counter() - start:.0f} s)", flush=True)
    results["seconds"] = round(time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
