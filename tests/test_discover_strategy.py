"""audit.discover.strategy: planted strategies inside one predicted class come out as separate clusters."""

from __future__ import annotations

import numpy as np
import pytest

from audit.discover import attention as att
from audit.discover import strategy

CLASSES = ["circle", "square", "rare"]


def blobs(rng, n: int, centre: tuple[float, float], size: int = 32, jitter: float = 1.5) -> np.ndarray:
    """Maps of one strategy: a Gaussian blob at ``centre`` (jittered per map) over faint noise."""
    yy, xx = np.mgrid[:size, :size]
    cy = centre[0] + rng.normal(0, jitter, n)
    cx = centre[1] + rng.normal(0, jitter, n)
    maps = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * 3.0**2))
    return (maps + 0.1 * rng.random((n, size, size))).astype(np.float16)


def planted_maps(seed: int):
    """'circle': 50 tag maps (top-left) with 60% errors and 70 shape maps (centre); 'square': 40
    centre maps; 'rare': 7 maps."""
    rng = np.random.default_rng(seed)
    maps = np.concatenate([blobs(rng, 50, (4, 4)), blobs(rng, 70, (16, 16)), blobs(rng, 40, (16, 16)),
                           blobs(rng, 7, (16, 16))])
    pred = np.repeat([0, 0, 1, 2], [50, 70, 40, 7])
    tag = np.arange(len(pred)) < 50
    label = pred.copy()
    label[tag & (rng.random(len(pred)) < 0.6)] = 1
    return maps, label, pred, tag


def test_two_planted_strategies_are_two_clusters():
    maps, label, pred, tag = planted_maps(0)
    entries, group, out = strategy.strategy_clusters({"gradcam": maps}, np.arange(len(pred)), label, pred,
                                                     CLASSES)
    info = out["info"]
    assert info["chosen_k"]["circle"] == 2 and info["chosen_k"]["square"] == 1
    circle = [e for e in entries if e["predicted_class"] == "circle"]
    assert len(circle) == 2 and len(entries) == 2
    tag_group = np.bincount(group[tag]).argmax()
    assert (group[tag] == tag_group).all() and not (group[~tag & (pred == 0)] == tag_group).any()
    looks = {g: att.summarise(maps[group == g].astype(float))["top_cell"] for g in np.unique(group[group >= 0])}
    assert looks[tag_group] == "top-left" and set(looks.values()) == {"top-left", "centre"}
    worst = next(e for e in entries if e["group"] == tag_group)
    print(f"tag strategy: {worst['n']} maps, accuracy {worst['accuracy']:.2f}, gap {worst['gap']:.2f}, "
          f"q {worst['q_value']:.2g}")
    assert worst["significant"] and worst["gap_ci"][1] < 0 and worst["n"] == 50
    assert out["notes"] == ["class 'rare': 7 maps, too few to cluster (need 12)"]


def test_one_strategy_is_one_cluster():
    rng = np.random.default_rng(1)
    labels, info = strategy.cluster_maps({"gradcam": blobs(rng, 150, (16, 16), jitter=3.0)})
    assert info["k"] == 1 and (labels == 0).all()


def test_occlusion_maps_are_used_beside_grad_cam():
    rng = np.random.default_rng(2)
    same = blobs(rng, 80, (16, 16))  # Grad-CAM cannot tell the two halves apart
    occlusion = np.concatenate([blobs(rng, 40, (4, 28)), blobs(rng, 40, (28, 4))])
    labels, info = strategy.cluster_maps({"gradcam": same, "occlusion": occlusion})
    assert info["k"] == 2
    assert len(set(labels[:40])) == 1 and len(set(labels[40:])) == 1 and labels[0] != labels[-1]


def test_downsample_is_an_area_average():
    maps = np.arange(25, dtype=float).reshape(1, 5, 5)
    small = strategy.downsample(maps, side=2)  # edges at 0, 2, 5 (2.5 rounds to even)
    expected = [[maps[0, :2, :2].mean(), maps[0, :2, 2:].mean()], [maps[0, 2:, :2].mean(), maps[0, 2:, 2:].mean()]]
    np.testing.assert_allclose(small[0], expected, rtol=1e-6)
    assert strategy.downsample(np.ones((2, 4, 4)), side=8).shape == (2, 4, 4)


def test_no_false_alarms_when_errors_do_not_follow_the_strategy():
    runs, groups, alarms = 10, 0, 0
    for seed in range(runs):
        maps, label, pred, _ = planted_maps(10 + seed)
        rng = np.random.default_rng(seed)
        wrong = rng.random(len(pred)) < 0.3  # errors independent of the maps
        null = np.where(wrong, (pred + 1) % 3, pred)
        entries, _, _ = strategy.strategy_clusters({"gradcam": maps}, np.arange(len(pred)), null, pred, CLASSES)
        groups += len(entries)
        alarms += sum(e["q_value"] < 0.05 for e in entries)
    print(f"strategy clusters under the null: {alarms} of {groups} groups at q < 0.05 ({alarms / groups:.3f})")
    assert alarms / groups <= 0.05 + 0.05


@pytest.mark.parametrize("n", [12, 40])
def test_small_classes_cluster_without_error(n):
    rng = np.random.default_rng(n)
    labels, info = strategy.cluster_maps({"gradcam": np.concatenate([blobs(rng, n // 2, (4, 4)),
                                                                     blobs(rng, n - n // 2, (26, 26))])})
    assert info["k"] == 2 and len(set(labels[: n // 2])) == 1
