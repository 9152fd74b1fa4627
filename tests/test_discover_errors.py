"""audit.discover.errors: a planted error slice in the embeddings is found; no false alarms under the null."""

from __future__ import annotations

import numpy as np
import pytest

from audit.discover.errors import error_slices

CLASSES = ["a", "b", "c"]
PLANTED = 60


def planted_embeddings(seed: int, n: int = 1500, d: int = 24):
    """A linear-head "model": prediction = argmax of the first 3 features. 60 rows of class 0
    sit in their own region (a cue on features 3..6) that the head reads mostly as class 1."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    centres = np.zeros((3, d))
    centres[np.arange(3), np.arange(3)] = 3.0
    emb = centres[label] + rng.normal(0, 1, (n, d))
    planted = np.zeros(n, dtype=bool)
    planted[rng.choice(np.flatnonzero(label == 0), PLANTED, replace=False)] = True
    emb[planted] = 0.3 * centres[0] + 0.7 * centres[1] + rng.normal(0, 1, (PLANTED, d))
    emb[planted, 3:7] += 4.0
    pred = emb[:, :3].argmax(1)
    return emb.astype(np.float16), label, pred, planted


def shuffled_within_prediction(label: np.ndarray, pred: np.ndarray, seed: int) -> np.ndarray:
    """The permutation null: labels shuffled among rows of the same prediction (correct permuted within class)."""
    rng = np.random.default_rng(seed)
    out = label.copy()
    for c in np.unique(pred):
        rows = np.flatnonzero(pred == c)
        out[rows] = label[rng.permutation(rows)]
    return out


def strongest_worse(entries: list[dict]) -> dict:
    """As the findings view picks: the significant group whose gap interval lies furthest below zero."""
    return min((e for e in entries if e["significant"]), key=lambda e: e["gap_ci"][1])


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_error_slice_is_found(seed):
    emb, label, pred, planted = planted_embeddings(seed)
    assert (label != pred)[planted].mean() > 0.65 and (label != pred)[~planted].mean() < 0.1
    entries, component, info = error_slices(emb, label, pred, CLASSES, min_slice_size=30, seed=seed)
    best = strongest_worse(entries)
    members = component == best["group"]
    precision = planted[members].mean()
    recall = planted[members].sum() / PLANTED
    print(f"seed {seed}: group of {best['n']}, precision {precision:.2f}, recall {recall:.2f}, "
          f"q {best['q_value']:.2g}, gap {best['gap']:.2f} {best['gap_ci']}")
    assert best["n"] == members.sum() >= 30
    assert precision >= 0.9
    assert best["q_value"] < 0.05 and best["gap_ci"][1] < 0
    assert best["errors"] == int((label != pred)[members].sum())


def test_k_is_the_lowest_bic_and_every_bic_is_recorded():
    emb, label, pred, _ = planted_embeddings(2)
    _, _, info = error_slices(emb, label, pred, CLASSES, seed=0)
    bic = {int(k): v for k, v in info["criterion_values"].items()}
    assert sorted(bic) == info["parameters"]["k_grid"] and len(bic) >= 3
    assert info["chosen_k"] == min(bic, key=bic.get)


def test_same_seed_same_groups():
    emb, label, pred, _ = planted_embeddings(3, n=600)
    first = error_slices(emb, label, pred, CLASSES, seed=5)
    second = error_slices(emb, label, pred, CLASSES, seed=5)
    np.testing.assert_array_equal(first[1], second[1])
    assert first[0] == second[0]


def test_no_false_alarms_under_the_permutation_null():
    runs, groups, alarms, runs_with_alarm = 6, 0, 0, 0
    for seed in range(runs):
        emb, label, pred, _ = planted_embeddings(100 + seed, n=1000)
        null = shuffled_within_prediction(label, pred, seed)
        entries, _, _ = error_slices(emb, null, pred, CLASSES, seed=seed)
        found = sum(e["q_value"] < 0.05 for e in entries)
        groups, alarms, runs_with_alarm = groups + len(entries), alarms + found, runs_with_alarm + (found > 0)
    print(f"error slices under the null: {alarms} of {groups} groups at q < 0.05 ({alarms / groups:.3f}); "
          f"{runs_with_alarm} of {runs} runs with any")
    # Under the complete null BH keeps P(any q < 0.05) <= 0.05 per run; 3 or more of 6 runs: probability 0.2%.
    assert alarms / groups <= 0.05 + 0.05
    assert runs_with_alarm <= 2


def test_the_label_term_makes_confusion_cells_that_look_significant_under_the_null():
    """Why label_weight is 0 by default: with Domino's label term, a component can be one
    confusion cell, all wrong by construction, and the test on the same rows calls it significant."""
    emb, label, pred, _ = planted_embeddings(7, n=1200)
    null = shuffled_within_prediction(label, pred, 7)
    with_label, _, _ = error_slices(emb, null, pred, CLASSES, seed=0, label_weight=3.0)
    without, _, _ = error_slices(emb, null, pred, CLASSES, seed=0)
    print("q < 0.05 under the null: with the label term", sum(e["q_value"] < 0.05 for e in with_label),
          "without", sum(e["q_value"] < 0.05 for e in without))
    assert any(e["q_value"] < 0.05 for e in with_label)
    assert not any(e["q_value"] < 0.05 for e in without)
