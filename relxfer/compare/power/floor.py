"""The smallest two-sided p the family gap's exact permutation test can give, and whether the
finding rule can ever be met.

The test (`relxfer.compare.stats.permutation`) compares the observed gap with the gap under
every assignment of the languages to groups of the observed sizes: C(G, n_related) of them. At
best the observed assignment is the most extreme; with equal group sizes its mirror image (the
groups swapped) is exactly as extreme with the opposite sign, so the smallest two-sided p is
2 / C(G, n); with unequal sizes it is 1 / C(G, n_related). Beyond `MAX_EXACT_ASSIGNMENTS` the
test samples assignments at random and the floor is that of the sample (the observed one
included)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from relxfer.compare.stats.common import ALPHA
from relxfer.compare.stats.family import MIN_LANGUAGES_PER_GROUP
from relxfer.compare.stats.permutation import DEFAULT_MONTE_CARLO, MAX_EXACT_ASSIGNMENTS


@dataclass(frozen=True)
class PermutationFloor:
    n_related: int
    n_control: int
    n_assignments: int  # assignments the test compares (all of them, or the sample plus the observed)
    exact: bool
    smallest_p: float

    @property
    def finding_possible(self) -> bool:
        """Can the rule (interval excludes 0 and exact p < 0.05) ever call a family finding?"""
        return min(self.n_related, self.n_control) >= MIN_LANGUAGES_PER_GROUP and self.smallest_p < ALPHA


def permutation_floor(n_related: int, n_control: int) -> PermutationFloor:
    total = math.comb(n_related + n_control, n_related)
    if total <= MAX_EXACT_ASSIGNMENTS:
        ties = 2 if n_related == n_control else 1
        return PermutationFloor(n_related, n_control, total, True, ties / total)
    draws = DEFAULT_MONTE_CARLO + 1
    return PermutationFloor(n_related, n_control, draws, False, 1 / draws)


def largest_p_below(floor: PermutationFloor, alpha: float = ALPHA) -> float | None:
    """The largest p below `alpha` the exact test can give (its effective level), None if none."""
    step = floor.smallest_p
    steps = math.ceil(alpha / step - 1e-9) - 1  # p must stay strictly below alpha
    return steps * step if steps >= 1 else None


def smallest_possible_designs(n_related: int, n_control: int) -> list[tuple[int, int]]:
    """Designs that can reach a finding with the fewest languages added to this one: adding
    related languages only, control languages only, or both equally (each as small as possible)."""
    designs = []
    for add_related, add_control in ((1, 0), (0, 1), (1, 1)):
        r, c = max(n_related, MIN_LANGUAGES_PER_GROUP), max(n_control, MIN_LANGUAGES_PER_GROUP)
        while not permutation_floor(r, c).finding_possible:
            r, c = r + add_related, c + add_control
        designs.append((r, c))
    return sorted(set(designs), key=lambda d: (d[0] + d[1], d))
