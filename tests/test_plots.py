"""The plots write valid, non-trivial PNG files from the statistics' frames."""

from __future__ import annotations

import struct

import pytest

from relxfer.compare.plots import plot_ft_vs_cot, plot_gain_vs_baseline, plot_language_gains
from relxfer.compare.simulate import simulate_study
from relxfer.compare.stats import baseline_gain, paired_gains, task_alignment

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
