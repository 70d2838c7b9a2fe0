"""An independent recomputation of `relxfer compare`'s numbers from what a study logged to MLflow,
with MlflowClient, statsmodels and scipy, sharing no code with relxfer.compare, so a mistake in
compare cannot hide in a shared helper (used by tests/test_compare_scale.py).

Not recomputed here: numbers that depend on relxfer's random passage splits (the cross-fitted
sensitivity analysis, the split-half slope; checked on relxfer's own splits against statsmodels
in tests/test_stats_models.py), bootstrap intervals (tests/test_stats.py) and the descriptive
mixed model (statsmodels itself)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from mlflow import MlflowClient
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint


def logged_items(client: MlflowClient, experiment: str, tmp: Path) -> pd.DataFrame:
    """Every FINISHED evaluation run's predictions.json with the run's tags; seed -1 when seedless."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs(
        [experiment_id], "tags.`relxfer.kind` = 'evaluate' and attributes.status = 'FINISHED'", max_results=5000
    )
    frames = []
    for run in runs:
        path = client.download_artifacts(run.info.run_id, "predictions.json", str(tmp / run.info.run_id))
        table = json.loads(Path(path).read_text())
        frame = pd.DataFrame(table["data"], columns=table["columns"])
        tags = run.data.tags
        seed = tags["relxfer.seed"]
        frames.append(
            frame.assign(
                model=tags["relxfer.model"],
                condition=tags["relxfer.condition"],
                role=tags["relxfer.role"],
                seed=int(seed) if seed else -1,
            )
        )
    return pd.concat(frames, ignore_index=True)


def accuracy_rows(items: pd.DataFrame) -> pd.DataFrame:
    """Per run: accuracy, the passage-clustered Wilson interval (Korn-Graubard effective n), and
    the CoT parse-failure rate."""
    rows = []
    z = stats.norm.ppf(0.975)
    for (model, seed, language, condition), run in items.groupby(["model", "seed", "language", "condition"]):
        y = run["correct"].to_numpy(float)
        groups = pd.factorize(run["passage_id"])[0]
        p, n, g = y.mean(), len(y), groups.max() + 1
        fit = sm.OLS(y, np.ones(n)).fit(cov_type="cluster", cov_kwds={"groups": groups})
        deff = max(1.0, fit.bse[0] ** 2 / (p * (1 - p) / n)) if 0 < p < 1 else 1.0
        n_eff = n / deff * (z / stats.t.ppf(0.975, g - 1)) ** 2
        low, high = proportion_confint(p * n_eff, n_eff, method="wilson")
        failure = (run["extracted"] == -1).mean() if condition == "cot" else None
        rows.append(
            dict(
                model=model,
                seed=seed,
                language=language,
                condition=condition,
                accuracy=p,
                ci_low=0.0 if p == 0 else low,
                ci_high=1.0 if p == 1 else high,
                parse_failure_rate=failure,
            )
        )
    return pd.DataFrame(rows)


def signflip_by_enumeration(passage_sums) -> float:
    d = np.array([x for x in passage_sums if x != 0], dtype=float)
    if d.size == 0:
        return 1.0
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=d.size)))
    return float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-9))


def rule(low, high, p, holm) -> str:
    side = "above" if low > 0 else "below" if high < 0 else None
    if (side is not None) != (p < 0.05):
        return "inconclusive"
    return side if side is not None and holm < 0.05 else "none"


def gain_rows(items: pd.DataFrame, condition: str) -> pd.DataFrame:
    """Per model x seed x language (seed -1 when the condition is seedless): paired gain, its
    passage-clustered t interval, b/c, the exact passage sign-flip p, Holm across languages."""
    base = (
        items[items["condition"] == "baseline"].set_index(["model", "language", "question_id"])["correct"].sort_index()
    )
    rows = []
    for (model, seed, language), run in items[items["condition"] == condition].groupby(["model", "seed", "language"]):
        before = base.loc[(model, language)].reindex(run["question_id"]).to_numpy(float)
        d = run["correct"].to_numpy(float) - before
        groups = pd.factorize(run["passage_id"])[0]
        fit = sm.OLS(d, np.ones(len(d))).fit(cov_type="cluster", use_t=True, cov_kwds={"groups": groups})
        low, high = fit.conf_int()[0]
        sums = pd.Series(d).groupby(groups).sum()
        rows.append(
            dict(
                model=model,
                seed=seed,
                language=language,
                gain=d.mean(),
                ci_low=max(-1, low),
                ci_high=min(1, high),
                b=int((d < 0).sum()),
                c=int((d > 0).sum()),
                p_value=signflip_by_enumeration(sums),
            )
        )
    frame = pd.DataFrame(rows)
    frame["p_holm"] = frame.groupby(["model", "seed"])["p_value"].transform(
        lambda p: multipletests(p, method="holm")[1]
    )
    frame["verdict"] = [rule(r.ci_low, r.ci_high, r.p_value, r.p_holm) for r in frame.itertuples()]
    return frame


def cells(items: pd.DataFrame, condition: str) -> pd.DataFrame:
    """Model x language: baseline accuracy, the condition's accuracy averaged over seeds, gain."""
    acc = (
        items.groupby(["model", "language", "condition", "seed"])["correct"]
        .mean()
        .groupby(["model", "language", "condition"])
        .mean()
        .unstack("condition")
    )
    out = pd.DataFrame({"baseline": acc["baseline"], "after": acc[condition]}).reset_index()
    out["gain"] = out["after"] - out["baseline"]
    roles = items.drop_duplicates("language").set_index("language")["role"]
    out["related"] = (out["language"].map(roles) == "related").astype(float)
    return out


def family_gap(items: pd.DataFrame, condition: str) -> dict:
    """Unadjusted gap: OLS gain ~ related + C(model) (statsmodels, CR1 by language); CR2 with
    Bell-McCaffrey df as Welch on language means (balanced cells); permutation by refitting
    every assignment."""
    c = cells(items, condition)
    fit = sm.OLS.from_formula("gain ~ related + C(model)", c).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(c["language"])[0]}, use_t=True
    )
    means = c.groupby("language").agg(gain=("gain", "mean"), related=("related", "first"))
    related, control = means.loc[means["related"] == 1, "gain"], means.loc[means["related"] == 0, "gain"]
    estimate = related.mean() - control.mean()
    se = abs(estimate / stats.ttest_ind(related, control, equal_var=False).statistic)
    df = len(means) - 2
    q = stats.t.ppf(0.975, df)
    betas = []
    for chosen in itertools.combinations(means.index, len(related)):
        c["related"] = c["language"].isin(chosen).astype(float)
        betas.append(sm.OLS.from_formula("gain ~ related + C(model)", c).fit().params["related"])
    perm = float(np.mean(np.abs(betas) >= abs(estimate) - 1e-9))
    low, high = estimate - q * se, estimate + q * se
    return dict(
        estimate=estimate,
        fit_estimate=fit.params["related"],
        cr1_se=fit.bse["related"],
        se=se,
        df=df,
        ci_low=low,
        ci_high=high,
        p_value=2 * stats.t.sf(abs(estimate / se), df),
        perm_p_value=perm,
        conclusion=rule(low, high, perm, perm),
        raw_gap=estimate,
    )


def moments(items: pd.DataFrame, condition: str) -> pd.DataFrame:
    """Per cell: the passage-clustered variance of the baseline accuracy (v) and its covariance
    with the condition's accuracy (w), each question's condition answer averaged over seeds."""
    before = items[items["condition"] == "baseline"]
    after = (
        items[items["condition"] == condition]
        .groupby(["model", "language", "question_id"])["correct"]
        .mean()
        .sort_index()
    )
    rows = []
    for (model, language), run in before.groupby(["model", "language"]):
        y0 = run["correct"].to_numpy(float)
        y1 = after.loc[(model, language)].reindex(run["question_id"]).to_numpy()
        groups = pd.factorize(run["passage_id"])[0]

        def var(y, groups=groups):
            return sm.OLS(y, np.ones(len(y))).fit(cov_type="cluster", cov_kwds={"groups": groups}).bse[0] ** 2

        rows.append(dict(model=model, language=language, v=var(y0), w=(var(y0 + y1) - var(y0) - var(y1)) / 2))
    return pd.DataFrame(rows)


def corrected_slope(items: pd.DataFrame, condition: str) -> dict:
    """Measurement-error-corrected slope (centred normal equations), delete-one-cluster jackknife
    (languages when fewer than 3 models), reliability, detectable slope, naive slope."""
    c = cells(items, condition).merge(moments(items, condition), on=["model", "language"])
    b, g, v, w = (c[k].to_numpy(float) for k in ("baseline", "gain", "v", "w"))

    def slope(keep):
        bc, gc = b[keep] - b[keep].mean(), g[keep] - g[keep].mean()
        return (bc @ gc - np.sum(w[keep] - v[keep])) / (bc @ bc - np.sum(v[keep]))

    clusters = c["model"] if c["model"].nunique() >= 3 else c["language"]
    labels = sorted(set(clusters))
    replicates = np.array([slope((clusters != label).to_numpy()) for label in labels])
    G = len(labels)
    se = np.sqrt((G - 1) / G * np.sum((replicates - replicates.mean()) ** 2))
    estimate = slope(np.ones(len(b), bool))
    q = stats.t.ppf(0.975, G - 1)
    return dict(
        corrected_slope=estimate,
        corrected_slope_se=se,
        corrected_slope_ci_low=estimate - q * se,
        corrected_slope_ci_high=estimate + q * se,
        detectable_slope=(q + stats.t.ppf(0.8, G - 1)) * se,
        baseline_reliability=1 - v.mean() / np.var(b, ddof=1),
        naive_slope=stats.linregress(b, g).slope,
    )


def alignment(items: pd.DataFrame) -> dict:
    ft, cot = cells(items, "finetuned"), cells(items, "cot")
    x, y = ft["gain"].to_numpy(), cot["gain"].to_numpy()
    return dict(
        pearson_r=stats.pearsonr(x, y).statistic,
        pearson_p=stats.pearsonr(x, y).pvalue,
        spearman_rho=stats.spearmanr(x, y).statistic,
        spearman_p=stats.spearmanr(x, y).pvalue,
    )
