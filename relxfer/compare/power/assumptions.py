"""What a power computation assumes about a study before it runs: the variance components of
accuracies and gains, in accuracy points (proportions: 0.05 is 5 points).

Every default is stated here with its reason; `relxfer plan --assume KEY=VALUE` overrides one,
and `relxfer plan --from-experiment NAME` estimates them from a pilot study (`pilot.py`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from relxfer.errors import RelxferError

CHANCE = 0.25  # four answer options


class AssumptionError(RelxferError):
    """An assumption is malformed or impossible (a negative SD, a correlation outside [0, 1))."""


@dataclass(frozen=True)
class Assumptions:
    # Mean baseline accuracy over models: the study's weak-baseline models sit near 40%, its
    # strong ones near 80%; the middle keeps the binomial noise near its largest (p = 0.5).
    baseline: float = 0.45
    # Range of the models' mean baselines (evenly spread around `baseline`): what a
    # baseline-gain slope is measured across.
    baseline_spread: float = 0.20
    # SD of a language's effect on baseline accuracy (shared by every model).
    language_sd: float = 0.03
    # Mean gain of a condition over the reference (it sets the accuracies the noise is drawn at).
    gain: float = 0.15
    # Between-language SD of true gains: languages are the replicates of the family contrast, so
    # this dominates its precision. 5 points: the spread of the study's per-language gains within
    # one model after subtracting their sampling noise.
    language_gain_sd: float = 0.05
    # Model x language SD of true gains (a model's gain in one language beyond its mean and the
    # language's effect).
    cell_gain_sd: float = 0.02
    # SD of the models' mean gains (absorbed by the family gap's model fixed effects; it adds
    # noise to the baseline-gain slope).
    model_gain_sd: float = 0.03
    # Within-passage correlation of one run's answers (latent, Gaussian copula): questions of one
    # passage are missed together when a model misreads the passage.
    passage_correlation: float = 0.3
    # SD of question difficulty on the logit scale, shared by every run (parallel questions).
    question_sd: float = 1.0
    # Run-to-run SD of a fine-tuned gain across seeds.
    seed_sd: float = 0.01
    # Questions per passage; None: from the spec's data (Belebele: 1 when single questions are
    # held out, 2 when whole passages are; synthetic: its questions_per_passage).
    questions_per_passage: int | None = None

    def describe(self) -> str:
        """One line naming every assumption, in points."""
        return (
            f"baseline {_pts(self.baseline)}% (models spread over {_pts(self.baseline_spread)} points, "
            f"language SD {_pts(self.language_sd)}), mean gain {_pts(self.gain)} points, SD of gains between "
            f"languages {_pts(self.language_gain_sd)}, model x language {_pts(self.cell_gain_sd)}, between models "
            f"{_pts(self.model_gain_sd)}, seeds {_pts(self.seed_sd)}; within-passage correlation "
            f"{self.passage_correlation:.2f}, question difficulty SD {self.question_sd:.2f} logits"
        )


SD_KEYS = ("language_sd", "language_gain_sd", "cell_gain_sd", "model_gain_sd", "seed_sd", "question_sd")
KEYS = tuple(f.name for f in dataclasses.fields(Assumptions))


def _pts(value: float) -> str:
    return f"{100 * value:.1f}".rstrip("0").rstrip(".") if value else "0"


def parse_assumptions(pairs: tuple[str, ...] | list[str], base: Assumptions | None = None) -> Assumptions:
    """`base` (default: the defaults) with each KEY=VALUE of `pairs` applied, checked."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise AssumptionError(f"--assume {pair!r}: expected KEY=VALUE, e.g. language_gain_sd=0.05")
        if key not in KEYS:
            raise AssumptionError(f"--assume {pair!r}: unknown assumption {key!r}; known: {', '.join(KEYS)}")
        try:
            number = float(text)
        except ValueError:
            raise AssumptionError(f"--assume {pair!r}: {text!r} is not a number") from None
        if key == "questions_per_passage":
            if number != int(number):
                raise AssumptionError(f"--assume {pair!r}: questions_per_passage is a whole number")
            values[key] = int(number)
        else:
            values[key] = number
    return checked(dataclasses.replace(base or Assumptions(), **values))


def checked(assumptions: Assumptions) -> Assumptions:
    """`assumptions` if possible, else AssumptionError naming the first impossible one."""
    a = assumptions
    for key in SD_KEYS + ("baseline_spread",):
        value = getattr(a, key)
        if not math.isfinite(value) or value < 0:
            raise AssumptionError(f"assumption {key}={value:g}: a standard deviation or spread cannot be negative")
    if not 0 <= a.passage_correlation < 1:
        raise AssumptionError(
            f"assumption passage_correlation={a.passage_correlation:g}: a correlation must lie in [0, 1)"
        )
    low, high = a.baseline - a.baseline_spread / 2, a.baseline + a.baseline_spread / 2
    if not CHANCE < low + min(a.gain, 0.0) or not high + max(a.gain, 0.0) < 1:
        raise AssumptionError(
            f"assumptions baseline={a.baseline:g}, baseline_spread={a.baseline_spread:g}, gain={a.gain:g}: "
            f"accuracies must stay between chance ({CHANCE:g}) and 1 (models from {low + min(a.gain, 0.0):g} to {high + max(a.gain, 0.0):g})"
        )
    if a.questions_per_passage is not None and a.questions_per_passage < 1:
        raise AssumptionError(
            f"assumption questions_per_passage={a.questions_per_passage}: a passage has at least one question"
        )
    return a
