"""Reading a minimum detectable effect off a simulated power curve."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

POWER = 0.80


def crossing(effects: NDArray[np.float64], power: NDArray[np.float64], target: float = POWER) -> float | None:
    """The smallest effect at which `power` (over increasing `effects`) reaches `target`, by
    linear interpolation between the grid points around the first crossing; None when the grid
    never reaches it."""
    reached = np.flatnonzero(power >= target)
    if reached.size == 0:
        return None
    i = int(reached[0])
    if i == 0:
        return float(effects[0])
    x0, x1, y0, y1 = effects[i - 1], effects[i], power[i - 1], power[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
