"""The exact passage sign-flip test of a paired gain: McNemar's test for questions that come in
passages.

For one model x seed x language, let d_k = (right after) - (right before), summed over the
questions of passage k (so d_k = c_k - b_k, the passage's discordant counts). Under the null
hypothesis that the two conditions are exchangeable within each passage (nothing the condition
does changes how a passage is answered), every d_k is as likely to be +d_k as -d_k, whatever the
correlation between a passage's questions. The test statistic T = sum_k d_k = c - b is compared
with its exact distribution over all 2^K sign flips, computed by convolving the K two-point
distributions on the integers (no sampling, no enumeration).

With one question per passage d_k is -1, 0 or +1 and this is exactly the exact McNemar test,
min(1, 2 P[Bin(b + c, 1/2) <= min(b, c)]). With several questions per passage it keeps its level
where McNemar's does not: McNemar treats the questions of a passage as independent, and when a
run's answers to one passage move together it rejects too often (measured in
bench/compare_simulations.py).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def signflip_p(passage_sums: npt.ArrayLike) -> float:
    """Two-sided exact p-value P(|T| >= |t_observed|) of T = sum_k s_k d_k over all sign
    vectors s, for integer passage sums d_k; 1.0 when every d_k is 0."""
    d = np.abs(np.asarray(passage_sums, dtype=np.int64))
    observed = abs(int(np.asarray(passage_sums, dtype=np.int64).sum()))
    d = d[d > 0]
    if d.size == 0:
        return 1.0
    total = int(d.sum())
    # dist[t + total] = P(T = t); start at T = 0, then each passage moves it by +d or -d.
    dist = np.zeros(2 * total + 1)
    dist[total] = 1.0
    for step in d:
        shifted = np.zeros_like(dist)
        shifted[step:] += dist[:-step]
        shifted[:-step] += dist[step:]
        dist = 0.5 * shifted
    t = np.arange(-total, total + 1)
    return float(min(1.0, dist[np.abs(t) >= observed].sum()))
