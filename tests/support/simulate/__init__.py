"""Simulated transfer studies with planted effects, in the runner's logged format, for tests and
benchmarks of `relxfer compare`'s statistics.

- `simulate_study`: effects on the logit scale (`logit.py`).
- `simulate_points_study`: baselines and gains planted in accuracy points (`points.py`), for
  the scenarios of bench/compare_simulations.py.
"""

from tests.support.simulate.logit import (
    CONTROL_NAMES,
    N_OPTIONS,
    RELATED_NAMES,
    simulate_study,
)
from tests.support.simulate.points import simulate_points_study

__all__ = ["simulate_study", "simulate_points_study", "RELATED_NAMES", "CONTROL_NAMES", "N_OPTIONS"]
