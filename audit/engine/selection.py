"""Which examples get maps when ``--explain-limit`` caps the explained set.

Discovery clusters each predicted class's maps and reads each confusion cell's, and users open
mistakes first, so the budget goes (1) to a quota Q: for each predicted class the first
``m1 = max(12, limit // (2C))`` rows by key, for each off-diagonal confusion cell the first
``m2 = max(12, limit // (2C(C-1)))`` (12: the fewest maps discovery clusters, so every class and
cell with that many rows can be clustered); (2) then to the rest F, ordered by (correct, key):
every mistake before any correct example (rows without a label in between). Cut to ``limit``.

A row's key is a splitmix64 hash of (its global index, the seed): it needs no other row, so a
shard that sees only its rows ranks them as the whole run would, and :func:`shard_candidates`
can return a superset of the shard's share of the global selection (see its proof). Merging
shards recomputes the global selection on the merged predictions and keeps only its maps.

Example:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"index": range(6), "label": [0, 0, 0, 1, 1, 1], "pred": [0, 1, 0, 1, 1, 0],
    ...                       "correct": [True, False, True, True, True, False]})
    >>> select_for_explanation(frame, None, seed=0).tolist()
    [0, 1, 2, 3, 4, 5]
    >>> len(select_for_explanation(frame, 4, seed=0, num_classes=2))
    4
"""

from __future__ import annotations

import numpy as np

from audit.store import schema

# The fewest maps a class or cell gets when it has that many rows (discovery clusters from 12).
MIN_PER_GROUP = 12
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele et al., 2014), elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return z ^ (z >> np.uint64(31))


def example_keys(index, seed: int) -> np.ndarray:
    """The key of each example: splitmix64(global index XOR splitmix64(seed)), uint64."""
    salt = _splitmix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], np.uint64))[0]
    return _splitmix64(np.asarray(index, np.int64).astype(np.uint64) ^ salt)


def quotas(limit: int, num_classes: int) -> tuple[int, int]:
    """(m1, m2): rows per predicted class and per off-diagonal confusion cell in the quota."""
    c = max(int(num_classes), 1)
    return max(MIN_PER_GROUP, limit // (2 * c)), max(MIN_PER_GROUP, limit // max(2 * c * (c - 1), 1))


def _columns(predictions, seed: int):
    index = predictions["index"].to_numpy(np.int64)
    label = predictions["label"].to_numpy(float, na_value=np.nan)
    labelled = np.isfinite(label) & (label >= 0)
    pred = predictions["pred"].to_numpy(np.int64)
    correct = predictions["correct"].to_numpy(bool) & labelled
    # 0: a mistake, 1: no label (neither right nor wrong), 2: correct.
    tier = np.where(correct, 2, np.where(labelled, 0, 1))
    return index, np.where(labelled, label, -1).astype(np.int64), pred, tier, example_keys(index, seed)


def _quota(label, pred, key, limit: int, num_classes: int) -> np.ndarray:
    """Per row, its smallest rank inside a quota group it makes (the group's first m rows by key),
    or -1 when it is in no group's quota."""
    m1, m2 = quotas(limit, num_classes)
    rank = np.full(len(key), -1, np.int64)
    groups = [(pred == k, m1) for k in range(num_classes)]
    groups += [((label == t) & (pred == p), m2) for t in range(num_classes) for p in range(num_classes) if t != p]
    for inside, m in groups:
        rows = np.flatnonzero(inside)
        first = rows[np.lexsort((rows, key[rows]))][:m]
        r = np.arange(len(first))
        rank[first] = np.where(rank[first] < 0, r, np.minimum(rank[first], r))
    return rank


def _num_classes(predictions, num_classes: int | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    return sum(1 for c in predictions.columns if str(c).startswith(schema.PROB_PREFIX))


def select_for_explanation(predictions, limit: int | None, seed: int, *, num_classes: int | None = None) -> np.ndarray:
    """Example indices to explain (int64, ascending): the quota Q, then mistakes, then the rest.

    ``predictions`` needs ``index`` (the global index), ``label``, ``pred`` and ``correct``;
    ``num_classes`` defaults to the number of ``prob_*`` columns. ``limit`` None or at least the
    row count selects every row.
    """
    index, label, pred, tier, key = _columns(predictions, seed)
    if limit is None or limit >= len(index):
        return np.sort(index)
    rank = _quota(label, pred, key, limit, _num_classes(predictions, num_classes))
    in_q = np.flatnonzero(rank >= 0)
    if len(in_q) >= limit:  # round-robin over the groups: every group's first rows before any's next
        chosen = in_q[np.lexsort((index[in_q], key[in_q], rank[in_q]))][:limit]
    else:
        rest = np.flatnonzero(rank < 0)
        fill = rest[np.lexsort((index[rest], key[rest], tier[rest]))][: limit - len(in_q)]
        chosen = np.concatenate([in_q, fill])
    return np.sort(index[chosen])


def shard_candidates(predictions, limit: int | None, seed: int, num_classes: int) -> np.ndarray:
    """The rows of one shard that the global selection may choose (int64 indices, ascending):
    the shard's own quota Q_local, plus its first ``limit`` other rows by (correct, key).

    Why it holds every globally chosen row r of the shard: m1 and m2 depend on ``limit`` and C
    only, and fewer rows of the shard than of the whole run precede r by key, so r in the global
    Q is in Q_local. If r is in the global F, fewer than ``limit`` rows outside the global Q
    precede it by (correct, key); rows outside Q_local are outside the global Q, so fewer than
    ``limit`` rows of the shard outside Q_local precede it either. ``limit`` None: every row.
    """
    index, label, pred, tier, key = _columns(predictions, seed)
    if limit is None or limit >= len(index):
        return np.sort(index)
    rank = _quota(label, pred, key, limit, num_classes)
    rest = np.flatnonzero(rank < 0)
    top = rest[np.lexsort((index[rest], key[rest], tier[rest]))][:limit]
    return np.sort(np.concatenate([index[rank >= 0], index[top]]))
