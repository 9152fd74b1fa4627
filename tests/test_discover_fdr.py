"""audit.discover.fdr: BH q-values, the Mantel-Haenszel score test, and group intervals equal to the slices'."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, false_discovery_control

from audit.discover import fdr
from audit.metrics.slices import make_slice_column, slice_counts, slice_rows


def test_bh_matches_scipy_on_random_p_values():
    p = np.random.default_rng(0).random(200) ** 3
    np.testing.assert_allclose(fdr.bh_qvalues(p), false_discovery_control(p, method="bh"), rtol=1e-12)


def test_bh_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(1).random(50) ** 2
    np.testing.assert_allclose(fdr.bh_qvalues(p), multitest.multipletests(p, method="fdr_bh")[1], rtol=1e-12)


def test_bh_hand_computed():
    # sorted p: .01 .03 .04 .2 -> p m / rank: .04 .06 .0533 .2 -> running minimum from the top
    np.testing.assert_allclose(fdr.bh_qvalues([0.01, 0.04, 0.03, 0.2]), [0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_pruned_hypotheses_count_as_p_one_and_nan_is_untested():
    p = np.array([0.001, 0.02, np.nan, 0.3])
    q = fdr.bh_qvalues(p, total=10)
    padded = false_discovery_control(np.r_[[0.001, 0.02, 0.3], np.ones(7)], method="bh")[:3]
    np.testing.assert_allclose(q[[0, 1, 3]], padded)
    assert np.isnan(q[2])


def test_single_stratum_is_pearson_chi_square_up_to_n_minus_one_over_n():
    a, n1, m, total = 30, 60, 100, 1000  # group: 30 wrong of 60; all: 100 wrong of 1000
    table = np.array([[a, n1 - a], [m - a, total - n1 - (m - a)]])
    pearson = chi2_contingency(table, correction=False)[0]
    p = fdr.mantel_haenszel_p([[a]], [[n1]], [m], [total])[0]
    from scipy.stats import chi2
    assert p == pytest.approx(chi2.sf(pearson * (total - 1) / total, 1), rel=1e-9)


def test_two_strata_hand_computed():
    # stratum 1: group 10 of 20 wrong, stratum 10 of 100: E = 2, V = 20*80*10*90/(100^2*99)
    # stratum 2: group 0 of 10, stratum 5 of 50:           E = 1, V = 10*40*5*45/(50^2*49)
    v = 20 * 80 * 10 * 90 / (100**2 * 99) + 10 * 40 * 5 * 45 / (50**2 * 49)
    statistic = (10 - 3) ** 2 / v
    from scipy.stats import chi2
    p = fdr.mantel_haenszel_p([[10, 0]], [[20, 10]], [10, 5], [100, 50])[0]
    assert p == pytest.approx(chi2.sf(statistic, 1), rel=1e-12)


def test_group_intervals_equal_the_slices_on_the_same_rows():
    rng = np.random.default_rng(2)
    values = rng.choice(["a", "b", "c"], 500)
    y = rng.integers(0, 2, 500)
    pred = np.where(rng.random(500) < np.where(values == "a", 0.4, 0.1), 1 - y, y)
    correct = y == pred
    column = make_slice_column("v", pd.Series(values), builtin=False, min_slice_size=30, notes=[])
    rows = slice_rows(column, slice_counts(column, y, correct, 2), min_slice_size=30)
    errors = [int((~correct)[values == v].sum()) for v in column.labels]
    n = [int((values == v).sum()) for v in column.labels]
    stats = fdr.group_statistics(errors, n, int((~correct).sum()), 500)
    for i, row in enumerate(rows):
        assert stats["gap"][i] == pytest.approx(row["gap"])
        assert [stats["gap_lo"][i], stats["gap_hi"][i]] == pytest.approx(row["gap_ci"])
        assert [stats["accuracy_lo"][i], stats["accuracy_hi"][i]] == pytest.approx(row["accuracy_ci"])


def test_p_values_are_uniform_for_groups_chosen_without_the_outcome():
    rng = np.random.default_rng(3)
    wrong = rng.random(2000) < 0.2
    rejected = 0
    for _ in range(400):
        group = rng.random(2000) < 0.05
        p = fdr.mantel_haenszel_p([[wrong[group].sum()]], [[group.sum()]], [wrong.sum()], [2000])[0]
        rejected += p < 0.05
    print(f"score test: {rejected / 400:.3f} of random groups at p < 0.05")
    assert 0.02 <= rejected / 400 <= 0.08
