"""The plots write valid, non-trivial PNG files from the statistics' frames."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from relxfer.compare.plots import (
    plot_family_gap,
    plot_ft_vs_cot,
    plot_gain_vs_baseline,
    plot_language_gains,
)
from relxfer.compare.stats import (
    baseline_gain,
    family_gap,
    paired_gains,
    task_alignment,
)
from tests.support.simulate import simulate_points_study, simulate_study

pytestmark = pytest.mark.unit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def items():
    return simulate_study(n_models=4, n_questions=40, gain_ability_slope=-0.5, seed=3)


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _check_png(path, returned) -> None:
    assert returned == path and path.exists()
    width, height = _png_size(path)
    assert width >= 500 and height >= 400
    assert path.stat().st_size > 15_000, "an empty figure is much smaller"


def test_gain_vs_baseline_with_both_fits(items, tmp_path):
    fit = baseline_gain(items, "finetuned", n_splits=20)
    path = tmp_path / "gain_vs_baseline.png"
    _check_png(path, plot_gain_vs_baseline(fit.cells, path, fit))


def test_gain_vs_baseline_without_a_fit_draws_the_naive_line(items, tmp_path):
    fit = baseline_gain(items, "finetuned", n_splits=5, scale="logit")
    path = tmp_path / "nested" / "naive_only.png"
    _check_png(path, plot_gain_vs_baseline(fit.cells, path))


def test_language_gains(items, tmp_path):
    path = tmp_path / "language_gains.png"
    _check_png(path, plot_language_gains(paired_gains(items, "finetuned"), path))


def test_ft_vs_cot(items, tmp_path):
    fit = task_alignment(items, n_boot=100, n_splits=10)
    path = tmp_path / "ft_vs_cot.png"
    _check_png(path, plot_ft_vs_cot(fit.cells, path, fit))


def _pixels(path):
    import matplotlib.image

    return matplotlib.image.imread(path)[..., :3]


def test_family_gap_makes_the_gap_visible(tmp_path):
    # A planted 25-point gap: the related family's markers and mean line (red) sit well above the
    # controls' (blue), and the gap's interval is drawn above zero.
    fit = family_gap(simulate_points_study(family_gap=0.25, seed=9))
    assert fit.ci_low > 0
    path = tmp_path / "family_gap.png"
    _check_png(path, plot_family_gap(fit, path))
    image = _pixels(path)
    red = (image[..., 0] > 0.6) & (image[..., 1] < 0.35) & (image[..., 2] < 0.35)
    blue = (image[..., 2] > 0.5) & (image[..., 0] < 0.3)
    red_rows, blue_rows = red.nonzero()[0], blue.nonzero()[0]
    assert red_rows.size > 200 and blue_rows.size > 200
    # Image rows grow downward: the related family is drawn higher up than the controls.
    assert np.median(red_rows) < np.median(blue_rows) - 20


def test_family_gap_plot_without_a_conclusion(tmp_path):
    fit = family_gap(simulate_points_study(n_related=2, n_control=3, seed=9))
    assert fit.conclusion == "refused"
    path = tmp_path / "refused.png"
    _check_png(path, plot_family_gap(fit, path))
