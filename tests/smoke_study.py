"""The smoke study's variants and acceptance criteria (what docs/smoke-study.md says it finds).

- A seed variant sets the three seeds of a spec to one value: `data.source.seed` (the synthetic
  lexicons, object-to-category facts, passages and questions), `data.split.seed` (which question
  ids are held out) and `seeds` (LoRA initialisation and the order of training batches).
  tests/test_smoke_science.py and bench/smoke_seeds.py run them.
- The plumbing variant is a cheaper smoke study (fewer languages and training steps) for tests of
  orchestration, which need real cells but not the planted effect.
- The criteria are read from `relxfer compare --format json`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

CONDITION = "finetuned"
MIN_RELATED_GAIN = 0.20  # every related language gains at least 20 points ...
ALPHA = 0.05  # ... with a Holm-adjusted p below this
MIN_GAIN_DIFFERENCE = 0.15  # mean control gain at least 15 points below the mean related gain


def seed_variant(raw: dict, seed: int, conditions: list[str] | None = None) -> dict:
    """The spec `raw` with its data, split and training seeds all set to `seed`, named apart;
    `conditions`, when given, replaces the spec's (the baseline and fine-tuned cells, and so the
    criteria, do not depend on which other conditions run beside them)."""
    raw = copy.deepcopy(raw)
    raw["data"]["source"]["seed"] = seed
    raw["data"]["split"]["seed"] = seed
    raw["seeds"] = [seed]
    raw["name"] = f"{raw['name']}-seed{seed}"
    raw.pop("experiment", None)
    if conditions is not None:
        raw["conditions"] = list(conditions)
    return raw


def write_seed_variant(spec_path: Path, seed: int, out_dir: Path, conditions: list[str] | None = None) -> Path:
    raw = seed_variant(json.loads(Path(spec_path).read_text()), seed, conditions)
    return write_variant(raw, Path(out_dir) / f"{raw['name']}.json")


def plumbing_variant(raw: dict, languages_per_group: int = 2, epochs: int = 3) -> dict:
    """The spec `raw` with the first `languages_per_group` languages of each evaluation group and
    `epochs` training epochs (45 steps for the smoke spec: checkpoints at steps 20 and 40)."""
    raw = copy.deepcopy(raw)
    for group in raw["eval"]["groups"]:
        group["languages"] = group["languages"][:languages_per_group]
    raw["finetune"]["training"]["epochs"] = epochs
    return raw


def write_variant(raw: dict, path: Path) -> Path:
    raw = dict(raw)
    raw.pop("$schema", None)  # relative to specs/; the copy lives elsewhere
    Path(path).write_text(json.dumps(raw, indent=2))
    return Path(path)


@dataclass
class Findings:
    """What compare reported for the fine-tuned condition of one study (gains are proportions)."""

    related_gains: dict[str, float]
    control_gains: dict[str, float]
    holm_p: dict[str, float]
    gap_estimate: float  # related minus control mean gain (compare's default raw scale)
    gap_ci: tuple[float, float]
    gap_perm_p: float
    gap_conclusion: str  # the report's rule: above | below | none | inconclusive | refused
    gap_summary: str

    @property
    def mean_related_gain(self) -> float:
        return sum(self.related_gains.values()) / len(self.related_gains)

    @property
    def mean_control_gain(self) -> float:
        return sum(self.control_gains.values()) / len(self.control_gains)

    def gap_excludes_zero(self) -> bool:
        return self.gap_ci[0] > 0 or self.gap_ci[1] < 0


def findings(report: dict, condition: str = CONDITION) -> Findings:
    """Findings from the JSON report of `relxfer compare --format json` (one model, one seed)."""
    if report["scale"] != "raw":  # the criteria are in accuracy points
        raise ValueError(f"expected a report on the raw scale, not {report['scale']!r}")
    gains = [g for g in report["gains"] if g["condition"] == condition]
    gap = report["analyses"][f"family_gap[{condition}]"]
    return Findings(
        related_gains={g["language"]: g["gain"] for g in gains if g["role"] == "related"},
        control_gains={g["language"]: g["gain"] for g in gains if g["role"] == "control"},
        holm_p={g["language"]: g["p_holm"] for g in gains},
        gap_estimate=gap["estimate"],
        gap_ci=(gap["ci_low"], gap["ci_high"]),
        gap_perm_p=gap["perm_p_value"],
        gap_conclusion=gap["conclusion"],
        gap_summary=gap["summary"],
    )


def smoke_failures(f: Findings) -> list[str]:
    """The positive control's criteria that `f` misses (empty: all met)."""
    failures = [
        f"{lang}: gain {100 * gain:+.1f} points, Holm p {f.holm_p[lang]:.3g}"
        for lang, gain in f.related_gains.items()
        if not (gain >= MIN_RELATED_GAIN and f.holm_p[lang] < ALPHA)
    ]
    if f.mean_related_gain - f.mean_control_gain < MIN_GAIN_DIFFERENCE:
        failures.append(
            f"mean gains: related {100 * f.mean_related_gain:+.1f}, control {100 * f.mean_control_gain:+.1f} points"
        )
    if not (f.gap_ci[0] > 0):
        failures.append(f"family-gap interval {f.gap_ci} does not lie above 0")
    if not f.gap_perm_p < ALPHA:
        failures.append(f"family-gap permutation p {f.gap_perm_p:.3g} is not below {ALPHA}")
    if f.gap_conclusion != "above":
        failures.append(f"the report's verdict on the family gap is {f.gap_conclusion!r}, not 'above'")
    return failures


def null_failures(f: Findings) -> list[str]:
    """The negative control's criterion that `f` misses: the family-gap interval must cover 0."""
    return [] if f.gap_ci[0] <= 0 <= f.gap_ci[1] else [f"family-gap interval {f.gap_ci} excludes 0"]
