"""Power of a per-language paired gain, through compare's own test and rule: the exact passage
sign-flip test (`stats.signflip`), Holm's correction across the languages of a model
(`stats.paired.holm_adjust`), the passage-clustered interval, and the rule
(`stats.common.conclusion`): a finding needs the interval above 0, p < 0.05 and Holm's p < 0.05.

Scenario: every language of the model gains the same amount (fine-tuning usually moves all
languages; a language that gains alone meets Holm's full penalty and needs more). The answer
is found by evaluating the power on the same draws at a few gains and interpolating."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from relxfer.compare.power.curve import POWER
from relxfer.compare.power.simulate import World
from relxfer.compare.stats.common import ALPHA, conclusion
from relxfer.compare.stats.paired import holm_adjust
from relxfer.compare.stats.signflip import signflip_p
from relxfer.evaluate.intervals import cluster_mean_var

MAX_STEPS = 8
TOLERANCE = 0.005  # stop when the power at the interpolated gain is this close to 80%


@dataclass(frozen=True)
class PairedPower:
    detectable: float | None  # gain (proportion) found with 80% power in each language
    n_items: int
    n_passages: int
    n_languages: int  # Holm's family: the languages of one model
    n_blocks: int  # simulated model x study blocks


def paired_power(world: World) -> PairedPower:
    """The gain every language needs for each to be a finding with 80% power. `world` should be
    drawn with `gain_sds=False` (a language's true gain is then the planted one)."""
    d = world.design
    guess = _normal_guess(world)
    tried: dict[float, float] = {}

    def at(gain: float) -> float:
        if gain not in tried:
            tried[gain] = _power(world, gain)
        return tried[gain]

    low, high = 0.0, guess
    for _ in range(MAX_STEPS):
        if at(high) >= POWER or high >= _largest_gain(world):
            break
        low, high = high, min(1.5 * high, _largest_gain(world))
    answer = None
    if at(high) >= POWER:
        for _ in range(MAX_STEPS):
            p_low = tried.get(low, 0.0)
            middle = low + (POWER - p_low) * (high - low) / (at(high) - p_low)
            power = at(middle)
            if abs(power - POWER) <= TOLERANCE:
                break
            low, high = (middle, high) if power < POWER else (low, middle)
        answer = middle
    return PairedPower(answer, d.items_per_language, d.n_passages, d.n_languages, world.baseline.shape[0] * d.n_models)


def _largest_gain(world: World) -> float:
    """A gain beyond which accuracies would leave [0, 0.98]."""
    return float(0.98 - world.baseline.max())


def _normal_guess(world: World) -> float:
    d, a = world.design, world.assumptions
    p = a.baseline
    level = ALPHA / d.n_languages
    deff = 1 + (d.questions_per_passage - 1) * a.passage_correlation
    se = math.sqrt(2 * p * (1 - p) * deff / d.items_per_language)
    return float(min((stats.norm.ppf(1 - level / 2) + stats.norm.ppf(POWER)) * se, _largest_gain(world)))


def _power(world: World, gain: float) -> float:
    """Share of (study, model, language) gains the rule calls a finding "above" when every
    language's true gain is `gain` (seed 0's fine-tune, as compare pairs it per seed)."""
    reference, condition = world.counts(np.full(world.baseline.shape, gain))
    differences = condition[..., 0, :] - reference  # (studies, models, languages, passages)
    sizes = np.bincount(world.passage_of).astype(float)
    n, n_passages = world.design.items_per_language, len(sizes)
    q = float(stats.t.ppf(0.975, n_passages - 1))
    found = total = 0
    for block in differences.reshape(-1, *differences.shape[-2:]):
        p = np.array([signflip_p(np.rint(d).astype(np.int64)) for d in block])
        holm = holm_adjust(p)
        for d, p_value, p_holm in zip(block, p, holm):
            mean = float(d.sum() / n)
            se = math.sqrt(cluster_mean_var(d, sizes, mean))
            low, high = max(-1.0, mean - q * se), min(1.0, mean + q * se)
            found += conclusion(low, high, float(p_value), float(p_holm)) == "above"
            total += 1
    return found / total
