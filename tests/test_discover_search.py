"""audit.discover.search: a planted conjunction is found, sliceline agrees, pruning is sound, no false alarms."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest

from audit.discover import search


def planted_table(seed: int, n: int = 3000, rate: float = 0.6):
    """Five columns of four values; errors 60% where a = 1 and b = z, 10% elsewhere."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.integers(0, 4, n).astype(str) for c in "abcde"})
    frame["b"] = frame["b"].map({"0": "x", "1": "y", "2": "z", "3": "w"})
    frame["brightness"] = rng.random(n)  # a built-in, binned into quantiles as the slices bin it
    planted = ((frame.a == "1") & (frame.b == "z")).to_numpy()
    wrong = rng.random(n) < np.where(planted, rate, 0.1)
    return frame, wrong, planted


def test_planted_two_way_conjunction_is_the_strongest():
    frame, wrong, planted = planted_table(0)
    entries, binned, info = search.slice_search(frame, wrong, [*"abcde", "brightness"])
    best = entries[0]
    print(f"search: {best['description']}, n {best['n']}, q {best['q_value']:.2g}, evaluated {info['evaluated']}, "
          f"pruned {info['pruned_by_error_bound']}")
    assert best["predicate"] == {"a": "1", "b": "z"} and best["significant"]
    members = search.members(binned, best["predicate"])
    np.testing.assert_array_equal(members, planted)
    assert best["n"] == planted.sum() and best["errors"] == wrong[planted].sum()
    assert info["tested"] == info["evaluated"] + info["pruned_by_error_bound"]


def test_top_slices_and_scores_match_sliceline():
    sliceline = pytest.importorskip("sliceline")
    frame, wrong, _ = planted_table(1)
    columns = list("abcde")
    binned = search.search_columns(frame, columns, min_slice_size=30)
    evaluated, _ = search.lattice(binned, wrong, min_slice_size=30)
    n = np.array([e[2] for e in evaluated])
    errors = np.array([e[3] for e in evaluated])
    score = search.sliceline_score(n, errors, len(wrong), int(wrong.sum()))
    ours = [(search.predicate_of(binned, *evaluated[i][:2]), score[i], n[i]) for i in np.argsort(-score)[:3]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "numba not available"
        finder = sliceline.Slicefinder(alpha=search.ALPHA, k=3, max_l=3, min_sup=30, verbose=False)
        finder.fit(frame[columns].to_numpy(), wrong.astype(float))
    theirs = [({c: v for c, v in zip(columns, row) if v is not None}, s["slice_score"], s["slice_size"])
              for row, s in zip(finder.top_slices_, finder.top_slices_statistics_)]
    assert [t[0] for t in ours] == [t[0] for t in theirs]
    np.testing.assert_allclose([t[1] for t in ours], [t[1] for t in theirs], rtol=1e-9)
    assert [t[2] for t in ours] == [t[2] for t in theirs]


def test_lattice_counts_are_exact_and_pruning_loses_no_worse_slice():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({c: rng.integers(0, 3, 1500).astype(str) for c in "abcd"})
    # errors: 30% overall, but rare where a = 0, so the error bound prunes a = 0's children
    wrong = rng.random(1500) < np.where(frame.a == "0", 0.01, 0.45)
    binned = search.search_columns(frame, list("abcd"), min_slice_size=30)
    evaluated, pruned = search.lattice(binned, wrong, min_slice_size=30)
    assert pruned > 0
    found = {tuple(sorted(search.predicate_of(binned, *e[:2]).items())): (e[2], e[3]) for e in evaluated}
    rows_of = {}
    for level in (1, 2, 3):
        for cols in itertools.combinations("abcd", level):
            for values, rows in frame.groupby(list(cols)).groups.items():
                key = tuple(zip(cols, values))
                n, e = len(rows), int(wrong[rows].sum())
                rows_of[key] = frozenset(rows)
                if key in found:
                    assert found[key] == (n, e)  # counts equal a direct groupby count
                elif n >= 30 and e / n > wrong.mean():
                    # a worse slice not evaluated must be one of its parents, row for row
                    parents = [key[:i] + key[i + 1:] for i in range(level)]
                    assert any(rows_of.get(p) == rows_of[key] and p in found for p in parents), key


def test_no_false_alarms_when_errors_do_not_follow_the_columns():
    runs, groups, alarms = 20, 0, 0
    for seed in range(runs):
        frame, _, _ = planted_table(30 + seed, n=1500)
        wrong = np.random.default_rng(seed).random(1500) < 0.15
        entries, _, info = search.slice_search(frame, wrong, list("abcde"))
        groups += info["tested"]
        alarms += sum(e["q_value"] < 0.05 for e in entries)
    print(f"search under the null: {alarms} of {groups} tested slices at q < 0.05 ({alarms / groups:.4f})")
    assert alarms / groups <= 0.05 + 0.01
    assert alarms <= 3  # BH under the complete null: P(any discovery in a run) <= 0.05


@pytest.mark.parametrize("child_errors, evaluated_child", [(12, True), (10, False)])
def test_error_bound_at_its_edge(child_errors, evaluated_child):
    """Hand-made: 200 rows, 70 errors (35%). Parents a = 1 and b = 1 have 40 rows each and
    ``child_errors`` errors, all inside the 30-row child a = 1 & b = 1. The bound on the child's
    rate is child_errors / 30: 0.4 > 0.35 must be evaluated (it is a worse slice), 0.333 is pruned."""
    a = np.r_[np.ones(30), np.ones(10), np.zeros(10), np.zeros(150)].astype(int).astype(str)
    b = np.r_[np.ones(30), np.zeros(10), np.ones(10), np.zeros(150)].astype(int).astype(str)
    wrong = np.zeros(200, dtype=bool)
    wrong[:child_errors] = True
    wrong[50:50 + 70 - child_errors] = True
    binned = search.search_columns(pd.DataFrame({"a": a, "b": b}), ["a", "b"], min_slice_size=30)
    evaluated, pruned = search.lattice(binned, wrong, min_slice_size=30)
    pairs = [search.predicate_of(binned, *e[:2]) for e in evaluated if len(e[0]) == 2]
    assert ({"a": "1", "b": "1"} in pairs) is evaluated_child
    # with 10 errors the bound also prunes a = 1 & b = 0 and a = 0 & b = 1 (at most 40 rows, 10 errors)
    assert pruned == (0 if evaluated_child else 3)
