"""Explanation selection (audit.engine.selection) against the rule, written a second time here.

The oracle is a plain-Python reading of the contract's rule (quota per predicted class and per
confusion cell by key, then mistakes before correct rows, cut round-robin when the quota alone
is over budget), with its own splitmix64 in Python integers; the key's first value is the
published splitmix64 output for state 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.engine.selection import example_keys, quotas, select_for_explanation, shard_candidates

MASK = (1 << 64) - 1


def mix(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def oracle(frame: pd.DataFrame, limit, seed: int, c: int) -> list[int]:
    rows = frame.to_dict("records")
    if limit is None or limit >= len(rows):
        return sorted(r["index"] for r in rows)
    salt = mix(seed & MASK)
    key = {r["index"]: mix((r["index"] & MASK) ^ salt) for r in rows}
    m1 = max(12, limit // (2 * c))
    m2 = max(12, limit // (2 * c * (c - 1)))
    groups = [[r["index"] for r in rows if r["pred"] == k] for k in range(c)]
    groups = [(g, m1) for g in groups]
    for t in range(c):
        for p in range(c):
            if t != p:
                groups.append(([r["index"] for r in rows if r["label"] == t and r["pred"] == p], m2))
    rank: dict[int, int] = {}
    for members, m in groups:
        for r, i in enumerate(sorted(members, key=lambda i: key[i])[:m]):
            rank[i] = min(rank.get(i, r), r)
    if len(rank) > limit:
        return sorted(sorted(rank, key=lambda i: (rank[i], key[i]))[:limit])

    def tier(r):
        if r["label"] < 0:
            return 1
        return 2 if r["correct"] else 0

    rest = sorted((r for r in rows if r["index"] not in rank), key=lambda r: (tier(r), key[r["index"]]))
    return sorted([*rank, *(r["index"] for r in rest[: limit - len(rank)])])


def frame_of(n: int, c: int, seed: int, accuracy: float = 0.8, unlabelled: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, c, n)
    wrong = rng.random(n) > accuracy
    pred = np.where(wrong, (label + rng.integers(1, c, n)) % c, label)
    label = np.where(rng.random(n) < unlabelled, -1, label)
    index = rng.permutation(10 * n)[:n]  # global indices need not be 0..n-1 (a shard's are not)
    frame = pd.DataFrame({"index": index, "label": label, "pred": pred, "correct": (pred == label)})
    for k in range(c):
        frame[f"prob_{k}"] = 0.0
    return frame


def test_key_is_splitmix64():
    # splitmix64 from state 0 gives 0xe220a8397b1dcdaf first (Vigna's reference implementation).
    assert mix(0) == 0xE220A8397B1DCDAF
    keys = example_keys(np.array([0, 1, 2**40]), seed=7)
    assert keys.tolist() == [mix(i ^ mix(7)) for i in (0, 1, 2**40)]


@pytest.mark.parametrize(("n", "c", "limit", "unlabelled"), [
    (600, 3, 120, 0.0),  # the demo's shape: the quota (60 + up to 72) is over budget, cut round-robin
    (600, 3, 200, 0.0),
    (300, 2, 40, 0.1),
    (500, 10, 150, 0.0),
    (50, 4, 49, 0.2),
    (80, 3, 5, 0.0),
])
def test_matches_the_rule(n, c, limit, unlabelled):
    for seed in range(3):
        frame = frame_of(n, c, seed, unlabelled=unlabelled)
        got = select_for_explanation(frame, limit, seed).tolist()
        assert got == oracle(frame, limit, seed, c)
        assert len(got) == min(limit, n)


def test_every_limit_and_nothing_capped():
    frame = frame_of(40, 3, 1)
    assert select_for_explanation(frame, None, 0).tolist() == sorted(frame["index"])
    assert select_for_explanation(frame, 40, 0).tolist() == sorted(frame["index"])
    assert select_for_explanation(frame, 0, 0).tolist() == []


def test_mistakes_first_and_every_class_covered():
    frame = frame_of(2000, 3, 4, accuracy=0.9)
    limit = 500
    chosen = set(select_for_explanation(frame, limit, 3).tolist())
    m1, _ = quotas(limit, 3)
    for k in range(3):
        assert len(chosen & set(frame["index"][frame["pred"] == k])) >= m1
    mistakes = set(frame["index"][~frame["correct"]])
    assert len(mistakes) < limit - 3 * m1 and mistakes <= chosen  # every mistake has a map


def test_row_order_does_not_matter():
    frame = frame_of(300, 3, 2)
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert select_for_explanation(frame, 50, 9).tolist() == select_for_explanation(shuffled, 50, 9).tolist()


@pytest.mark.parametrize("limit", [30, 120, 400])
def test_shards_give_the_global_answer(limit):
    frame = frame_of(900, 3, 5, unlabelled=0.05)
    whole = set(select_for_explanation(frame, limit, 11).tolist())
    rng = np.random.default_rng(0)
    skewed = np.where(frame["correct"], rng.integers(1, 3, len(frame)), 0)  # shard 0: every mistake
    for shards, part in ((1, np.zeros(len(frame), int)), (2, rng.integers(0, 2, len(frame))), (3, skewed),
                         (7, rng.integers(0, 7, len(frame)))):
        pieces = [frame[part == s] for s in range(shards)]
        candidates = [shard_candidates(p, limit, 11, 3) for p in pieces]
        for piece, cand in zip(pieces, candidates):
            assert whole & set(piece["index"]) <= set(cand.tolist())
            assert len(cand) <= len(piece)
        merged = frame[frame["index"].isin(np.concatenate(candidates))]
        assert set(select_for_explanation(merged, limit, 11, num_classes=3).tolist()) == whole


def test_quota_floor_is_what_discovery_clusters():
    from audit.discover import MIN_MAPS
    from audit.engine.selection import MIN_PER_GROUP

    assert MIN_PER_GROUP == MIN_MAPS  # every class and cell with that many rows gets enough maps to cluster
