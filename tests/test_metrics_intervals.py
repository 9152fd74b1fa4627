"""Intervals: published values, simulated coverage, and the multinomial bootstrap against row resampling."""

from __future__ import annotations

import numpy as np
import pytest

from audit.metrics.intervals import (
    bootstrap_statistic,
    excludes_zero,
    newcombe_difference,
    percentile_interval,
    resample_counts,
    rng_for,
    wilson,
)
from audit.metrics.slices import SliceColumn, disparity


def test_wilson_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 -> 0.2553 to 0.3662.
    lo, hi = wilson(81, 263)
    assert (float(lo), float(hi)) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    lo, hi = wilson(9, 10)
    assert (float(lo), float(hi)) == pytest.approx((0.5958, 0.9821), abs=5e-5)


def test_wilson_edges():
    lo, hi = wilson(np.array([0, 10, 0]), np.array([10, 10, 0]))
    assert lo[0] == 0 and 0 < hi[0] < 0.35
    assert hi[1] == 1 and 0.65 < lo[1] < 1
    assert np.isnan(lo[2]) and np.isnan(hi[2])


def test_newcombe_matches_published_value():
    # Newcombe (1998) Table II, example (a): 56/70 - 48/80, method 10 -> 0.0524 to 0.3339.
    lo, hi = newcombe_difference(56, 70, 48, 80)
    assert (float(lo), float(hi)) == pytest.approx((0.0524, 0.3339), abs=5e-5)


def test_wilson_keeps_coverage_where_percentile_bootstrap_loses_it():
    # The reason slices use Wilson: a small slice with accuracy near 1.
    rng = np.random.default_rng(0)
    n, p, sims = 25, 0.95, 4000
    k = rng.binomial(n, p, sims)
    lo, hi = wilson(k, n)
    wilson_cover = np.mean((lo <= p) & (p <= hi))
    boot = rng.binomial(n, k / n, size=(1000, sims)) / n
    blo, bhi = np.percentile(boot, [2.5, 97.5], axis=0)
    boot_cover = np.mean((blo <= p) & (p <= bhi))
    assert 0.93 <= wilson_cover <= 0.99
    assert boot_cover < wilson_cover - 0.1


@pytest.mark.parametrize("n1, p1, n2, p2", [(40, 0.9, 400, 0.8), (30, 0.6, 300, 0.6), (200, 0.97, 50, 0.9)])
def test_newcombe_coverage(n1, p1, n2, p2):
    rng = np.random.default_rng(1)
    sims = 20000
    k1, k2 = rng.binomial(n1, p1, sims), rng.binomial(n2, p2, sims)
    lo, hi = newcombe_difference(k1, n1, k2, n2)
    cover = np.mean((lo <= p1 - p2) & (p1 - p2 <= hi))
    assert 0.93 <= cover <= 0.985


def test_multinomial_draws_match_row_resampling():
    counts = np.array([[50, 30, 20], [5, 0, 15]])
    draws = resample_counts(counts, 20000, np.random.default_rng(2))
    assert draws.shape == (20000, 2, 3)
    assert (draws.sum(-1) == counts.sum(-1)).all()  # group sizes stay fixed
    assert (draws[:, 1, 1] == 0).all()  # an empty cell stays empty

    # Oracle: resample the rows themselves.
    rng = np.random.default_rng(3)
    rows = np.repeat(np.arange(3), counts[0])
    picks = rows[rng.integers(0, len(rows), size=(20000, len(rows)))]
    by_rows = np.stack([(picks == c).sum(1) for c in range(3)], axis=1)
    assert draws[:, 0].mean(0) == pytest.approx(by_rows.mean(0), rel=0.02)
    assert draws[:, 0].var(0) == pytest.approx(by_rows.var(0), rel=0.06)


def test_empty_group_draws_zeros():
    draws = resample_counts(np.array([[0, 0], [3, 1]]), 5, np.random.default_rng(0))
    assert (draws[:, 0] == 0).all()


def test_chunked_bootstrap_equals_one_pass():
    counts = np.array([[40, 10], [7, 3], [0, 5]])
    stat = lambda d: d[..., 1] / d.sum(-1)  # noqa: E731
    (whole,) = bootstrap_statistic(counts, 300, rng_for(0, "x"), stat)
    (chunked,) = bootstrap_statistic(counts, 300, rng_for(0, "x"), stat, max_cells=13)
    assert whole.shape == (300, 3)
    np.testing.assert_array_equal(whole, chunked)


def test_rng_for_depends_on_key_and_seed():
    a = rng_for(0, "background").random(3)
    assert np.array_equal(a, rng_for(0, "background").random(3))
    assert not np.array_equal(a, rng_for(0, "site").random(3))
    assert not np.array_equal(a, rng_for(1, "background").random(3))


def test_percentile_interval_ignores_undefined_resamples():
    samples = np.array([[0.1, np.nan], [0.2, np.nan], [np.nan, np.nan], [0.3, np.nan]])
    lo, hi = percentile_interval(samples)
    assert 0.1 <= lo[0] < hi[0] <= 0.3
    assert np.isnan(lo[1]) and np.isnan(hi[1])


def test_excludes_zero():
    assert excludes_zero([0.1, -0.3, -0.1, np.nan], [0.2, -0.1, 0.1, 0.5]).tolist() == [True, True, False, False]


def _two_group_column(n1: int, n2: int) -> SliceColumn:
    codes = np.repeat([0, 1], [n1, n2])
    return SliceColumn("g", ("g",), "category", codes, ["x", "y"], [("x",), ("y",)], False)


def test_disparity_gap_interval_coverage():
    # Planted: group x right with p 0.9, group y with p 0.7; the true gap is 0.2, ratio 0.7 / 0.9.
    rng = np.random.default_rng(4)
    n1, n2, sims = 150, 100, 200
    column = _two_group_column(n1, n2)
    covered_gap = covered_ratio = 0
    for _ in range(sims):
        right = np.array([rng.binomial(n1, 0.9), rng.binomial(n2, 0.7)])
        # One class: counts (values, C=1, [wrong, right]).
        counts = np.stack([np.array([n1, n2]) - right, right], axis=-1)[:, None, :]
        d = disparity(column, counts, binary=False, class_names=["only"], min_slice_size=30,
                      bootstrap=400, seed=int(rng.integers(1 << 30)), notes=[])
        lo, hi = d["accuracy_gap_ci"]
        covered_gap += lo <= 0.2 <= hi
        lo, hi = d["accuracy_ratio_ci"]
        covered_ratio += lo <= 0.7 / 0.9 <= hi
    assert covered_gap / sims >= 0.9
    assert covered_ratio / sims >= 0.9
