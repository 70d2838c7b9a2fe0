"""PNG plots for `relxfer compare` (matplotlib, Agg backend: no display needed).

Each function takes the frames the statistics return, writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROLE_COLOURS = {"related": "#c0392b", "control": "#2471a3"}
if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from relxfer.compare.stats.alignment import TaskAlignmentResult
    from relxfer.compare.stats.baseline_result import BaselineGainResult
    from relxfer.compare.stats.family_result import FamilyGapResult

DPI = 120


def plot_gain_vs_baseline(cells: pd.DataFrame, path: str | Path, fit: BaselineGainResult | None = None) -> Path:
    """Gain against baseline per model x language cell, coloured by role, with the corrected,
    split-half and naive regression lines.

    `cells` is `BaselineGainResult.cells` (columns baseline, gain, role, model; on the result's
    scale) and `fit` the `BaselineGainResult` whose lines to draw; without `fit` only the naive
    least-squares line (computed from `cells`) is drawn.
    """
    scale = getattr(fit, "scale", "raw")
    factor = 100 if scale == "raw" else 1  # raw proportions are shown as percentages
    fig, ax = plt.subplots(figsize=(7, 5))
    for role, block in _by_role(cells):
        ax.scatter(
            factor * block["baseline"],
            factor * block["gain"],
            s=36,
            alpha=0.8,
            color=ROLE_COLOURS.get(role),
            label=f"{role} languages",
            edgecolor="white",
        )
    xs = np.linspace(cells["baseline"].min(), cells["baseline"].max(), 50)
    naive: tuple[float, float]
    if fit is not None and fit.naive_slope is not None and fit.naive_intercept is not None:
        naive = (fit.naive_intercept, fit.naive_slope)
    else:
        slope, intercept = np.polyfit(cells["baseline"], cells["gain"], 1)
        naive = (intercept, slope)
    ax.plot(
        factor * xs,
        factor * (naive[0] + naive[1] * xs),
        color="0.6",
        linestyle="--",
        label=f"naive fit, slope {naive[1]:.2f} (not corrected for measurement error)",
    )
    if fit is not None and fit.split_half_slope is not None and fit.split_half_intercept is not None:
        ax.plot(
            factor * xs,
            factor * (fit.split_half_intercept + fit.split_half_slope * xs),
            color="0.35",
            linestyle=":",
            label=f"split-half fit (check), slope {fit.split_half_slope:.2f}",
        )
    if fit is not None and fit.corrected_slope is not None and fit.corrected_intercept is not None:
        ax.plot(
            factor * xs,
            factor * (fit.corrected_intercept + fit.corrected_slope * xs),
            color="black",
            label=f"corrected fit, slope {fit.corrected_slope:.2f} "
            f"(95% CI {fit.corrected_slope_ci_low:.2f} to {fit.corrected_slope_ci_high:.2f})",
        )
    ax.axhline(0, color="0.8", linewidth=0.8)
    unit = "accuracy (%)" if scale == "raw" else "logit accuracy"
    ax.set_xlabel(f"baseline {unit}")
    ax.set_ylabel(f"gain ({unit.replace('accuracy (%)', 'percentage points')})")
    condition = getattr(fit, "condition", "condition")
    ax.set_title(f"Gain from {condition} vs baseline, one point per model x language")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_language_gains(gains: pd.DataFrame, path: str | Path) -> Path:
    """Per-language gain with its 95% interval, one marker per model (x seed), languages
    grouped by role. `gains` is the frame `paired_gains` returns."""
    gains = gains.sort_values(["role", "language"], ascending=[False, True])
    languages = list(dict.fromkeys(gains["language"]))
    runs = list(dict.fromkeys(zip(gains["model"], gains["seed"])))
    offsets = np.linspace(-0.3, 0.3, len(runs)) if len(runs) > 1 else np.zeros(1)
    markers = "osD^v<>pP*hX"
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(languages) + 3), 5))
    for i, (model, seed) in enumerate(runs):
        block = gains[(gains["model"] == model) & (gains["seed"] == seed)]
        x = np.array([languages.index(lang) for lang in block["language"]]) + offsets[i]
        label = model if gains["seed"].nunique() == 1 else f"{model} (seed {seed})"
        ax.errorbar(
            x,
            100 * block["gain"],
            yerr=[100 * (block["gain"] - block["ci_low"]), 100 * (block["ci_high"] - block["gain"])],
            fmt=markers[i % len(markers)],
            markersize=5,
            capsize=2,
            linewidth=1,
            label=label,
        )
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_xticks(range(len(languages)))
    roles = gains.drop_duplicates("language").set_index("language")["role"]
    ax.set_xticklabels([f"{lang}\n({roles[lang]})" for lang in languages], fontsize=9)
    for tick, lang in zip(ax.get_xticklabels(), languages):
        tick.set_color(ROLE_COLOURS.get(roles[lang], "black"))
    ax.set_ylabel("gain (percentage points, 95% CI)")
    condition, reference = gains["condition"].iloc[0], gains["reference"].iloc[0]
    ax.set_title(f"Gain of {condition} over {reference} per language")
    ax.legend(fontsize=8, ncol=2 if len(runs) > 6 else 1, loc="best")
    return _save(fig, path)


def plot_ft_vs_cot(cells: pd.DataFrame, path: str | Path, fit: TaskAlignmentResult | None = None) -> Path:
    """Fine-tuning gain against CoT gain per model x language cell, coloured by role.

    `cells` is `TaskAlignmentResult.cells` (columns ft_gain, cot_gain, role); with `fit` (the
    `TaskAlignmentResult`) the correlations are shown in the title.
    """
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for role, block in _by_role(cells):
        ax.scatter(
            100 * block["ft_gain"],
            100 * block["cot_gain"],
            s=36,
            alpha=0.8,
            color=ROLE_COLOURS.get(role),
            label=f"{role} languages",
            edgecolor="white",
        )
    low = 100 * min(cells["ft_gain"].min(), cells["cot_gain"].min())
    high = 100 * max(cells["ft_gain"].max(), cells["cot_gain"].max())
    ax.plot([low, high], [low, high], color="0.7", linestyle=":", label="equal gains")
    ax.axhline(0, color="0.85", linewidth=0.8)
    ax.axvline(0, color="0.85", linewidth=0.8)
    ax.set_xlabel("fine-tuning gain (percentage points)")
    ax.set_ylabel("CoT gain (percentage points)")
    title = "Fine-tuning gain vs CoT gain, one point per model x language"
    if fit is not None and fit.pearson_r is not None:
        title += (
            f"\nPearson r = {fit.pearson_r:.2f} ({fit.pearson_ci_low:.2f} to {fit.pearson_ci_high:.2f}), "
            f"Spearman rho = {fit.spearman_rho:.2f}"
        )
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_family_gap(fit: FamilyGapResult, path: str | Path) -> Path:
    """The family gap at a glance: left, each language's gain (one small marker per model, a
    large one for the language's mean over models) with each family's mean as a line; right,
    the gap with its 95% interval, and the baseline-adjusted sensitivity estimate beside it.

    `fit` is a `FamilyGapResult` with its `cells` (gains on the result's scale)."""
    cells = fit.cells
    factor = 100 if fit.scale == "raw" else 1
    unit = "percentage points" if fit.scale == "raw" else "logits"
    fig, (ax, right) = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [3, 1]})
    order = cells.groupby("language")["related"].first().sort_values(ascending=False, kind="stable").index.tolist()
    for role, block in _by_role(cells):
        colour = ROLE_COLOURS.get(role)
        x = np.array([order.index(lang) for lang in block["language"]])
        ax.scatter(x, factor * block["gain"], s=14, color=colour, alpha=0.45, edgecolor="none")
        means = block.groupby("language")["gain"].mean()
        xm = [order.index(lang) for lang in means.index]
        ax.scatter(
            xm,
            factor * means,
            s=70,
            color=colour,
            edgecolor="white",
            zorder=3,
            label=f"{role} languages (mean over models)",
        )
        ax.hlines(
            factor * block["gain"].mean(),
            min(xm) - 0.4,
            max(xm) + 0.4,
            color=colour,
            linewidth=2,
            label=f"{role} mean: {factor * block['gain'].mean():.1f}",
        )
    ax.axhline(0, color="0.8", linewidth=0.8)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=30, ha="right", fontsize=9)
    roles = cells.drop_duplicates("language").set_index("language")["role"]
    for tick, lang in zip(ax.get_xticklabels(), order):
        tick.set_color(ROLE_COLOURS.get(roles[lang], "black"))
    ax.set_ylabel(f"gain of {fit.condition} over {fit.reference} ({unit})")
    ax.set_title("Gain per language (small markers: one per model)", fontsize=10)
    ax.legend(fontsize=8, loc="best")

    estimates = [("gap", fit.estimate, fit.ci_low, fit.ci_high, "black")]
    if fit.adjusted_estimate is not None:
        estimates.append(
            (
                "baseline-\nadjusted\n(sensitivity)",
                fit.adjusted_estimate,
                fit.adjusted_ci_low,
                fit.adjusted_ci_high,
                "0.55",
            )
        )
    for i, (_label, value, low, high, colour) in enumerate(estimates):
        if value is None or low is None or high is None:
            continue
        right.errorbar(
            [i],
            [factor * value],
            yerr=[[factor * (value - low)], [factor * (high - value)]],
            fmt="o",
            color=colour,
            capsize=6,
            markersize=8,
            linewidth=2,
        )
    right.axhline(0, color="0.6", linewidth=0.8)
    right.set_xticks(range(len(estimates)))
    right.set_xticklabels([e[0] for e in estimates], fontsize=9)
    right.set_xlim(-0.6, len(estimates) - 0.4)
    right.set_ylabel(f"related minus control ({unit}, 95% CI)")
    verdict = {
        "above": "finding: related gained more",
        "below": "finding: controls gained more",
        "none": "not a finding",
        "inconclusive": "inconclusive",
        "refused": "too few languages",
    }
    right.set_title(verdict.get(fit.conclusion or "", fit.conclusion or ""), fontsize=10)
    fig.suptitle(
        f"Family gap, {fit.condition} vs {fit.reference}: {fit.n_related} related vs {fit.n_control} control languages",
        fontsize=11,
    )
    return _save(fig, path)


def _by_role(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(role, rows) for related, then control, then any other role, skipping empty ones."""
    roles = [*ROLE_COLOURS, *sorted(set(cells["role"].unique()) - set(ROLE_COLOURS))]
    return [(role, cells[cells["role"] == role]) for role in roles if (cells["role"] == role).any()]


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI, format="png")
    plt.close(fig)
    return out
