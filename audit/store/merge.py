"""Shard stores, and combining them row by row into one store (the store side of ``keras-audit merge``).

A shard store is an ordinary finished store of one share of the data (``--shard i/n``): its rows
are numbered within the share, and ``manifest["dataset"]["shard"]`` says where the share starts
in the whole listing. It keeps one thing an ordinary store drops when it finishes: the per-row
deletion/insertion scores of its maps (``shard/quality_<method>.npy``), so that the merged
store's explanation quality covers exactly the globally chosen maps.

Everything here is a copy of stored bytes through the store writer (predictions, probabilities,
stored images, embeddings, maps, activations) or an exact recombination of stored sums
(activation statistics). Choosing which maps to keep, and recomputing metrics, slices and
discovery on the merged rows, is the engine's (``audit.engine.shard.merge_shards``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.errors import StoreError
from audit.store import schema

SHARD_DIR = "shard"
# The columns the explanation selection reads, of a shard's rows (global indices): written by a
# shard whose siblings choose together (the Ray engine), read by each of them.
SELECTION_ROWS = f"{SHARD_DIR}/selection_rows.parquet"
SELECTION_COLUMNS = ("index", "label", "pred", "correct")
# Options that may differ between the shards of one dataset: which share, and per-shard exports.
PER_SHARD_OPTIONS = ("shard", "tensorboard")
_CHUNK_BYTES = 64 << 20  # rows copied per write: bounded memory whatever the store's size


def quality_file(method: str) -> str:
    """A shard store's per-row (deletion, insertion) scores of ``method``: float32 (K, 2)."""
    return f"{SHARD_DIR}/quality_{schema.file_stem(method)}.npy"


@dataclass(frozen=True)
class ShardStore:
    """One finished shard store: rows ``start``..``stop`` of ``of`` examples, share ``index`` of ``count``."""

    path: Path
    manifest: dict
    index: int
    count: int
    start: int
    stop: int
    of: int

    def load(self, rel: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.path / rel, mmap_mode="r" if mmap else None)

    def has(self, rel: str) -> bool:
        return (self.path / rel).is_file()

    @property
    def metrics(self) -> dict:
        return json.loads((self.path / schema.METRICS).read_text())


def _open_shard(path: Path) -> ShardStore:
    manifest = schema.read_manifest_file(path)
    if not schema.is_marked(manifest):
        raise StoreError("not a keras-audit results store (no manifest.json of one)", path)
    assert manifest is not None
    dataset: dict = dict(manifest.get("dataset") or {})
    share: dict = dataset.get("shard") or {}
    if not share:
        raise StoreError("not a shard store (made by `keras-audit run --shard i/n`)", path)
    if not manifest.get("complete"):
        raise StoreError("shard run is not finished; complete it with `keras-audit run ... --resume`", path)
    return ShardStore(path, dict(manifest), int(share["index"]), int(share["count"]), int(share["start"]),
                      int(share["stop"]), int(share["of"]))


def _identity(shard: ShardStore) -> dict:
    """What must agree between the shards of one run: model, data, classes, result-shaping options."""
    m = shard.manifest
    options = {k: v for k, v in m.get("options", {}).items() if k not in PER_SHARD_OPTIONS}
    dataset = {k: m["dataset"].get(k) for k in ("source", "kind", "fingerprint")}
    return {"the model": m["model"].get("sha256"), "the data": dataset, "the of rows": shard.of,
            "the share count": shard.count, "the class names": m.get("class_names"), "the options": options,
            "the annotations": (m["dataset"].get("annotations") or {}).get("sha256")}


def open_shards(paths) -> list[ShardStore]:
    """The shard stores at ``paths``, checked to be every share of one run exactly once, in share order.

    Raises:
        StoreError: one line naming the store that does not fit (not a shard, unfinished, another
            model/data/options, a share twice or missing).
    """
    shards = [_open_shard(Path(p)) for p in paths]
    if not shards:
        raise StoreError("merge needs at least one shard store", Path("."))
    first = _identity(shards[0])
    for shard in shards[1:]:
        for what, value in _identity(shard).items():
            if value != first[what]:
                raise StoreError(f"{what} differ from those of {shards[0].path} (shards of another run?)", shard.path)
    seen: dict[int, ShardStore] = {}
    for shard in shards:
        if shard.index in seen:
            raise StoreError(f"share {shard.index}/{shard.count} is also {seen[shard.index].path}", shard.path)
        seen[shard.index] = shard
    missing = [f"{i}/{shards[0].count}" for i in range(shards[0].count) if i not in seen]
    if missing:
        raise StoreError(f"shard {', '.join(missing)} missing: merge needs every share", shards[0].path)
    ordered = [seen[i] for i in range(len(seen))]
    if ordered[0].start != 0 or ordered[-1].stop != ordered[0].of or any(
            a.stop != b.start for a, b in zip(ordered, ordered[1:])):
        raise StoreError("shares do not tile the data (made with different --batch-size?)", ordered[0].path)
    return ordered


def merged_predictions(shards: list[ShardStore]):
    """The shards' predictions.parquet rows in global index order, ``index`` global again."""
    import pandas as pd

    frames = []
    for shard in shards:
        frame = schema.read_parquet(shard.path / schema.PREDICTIONS)
        frame["index"] = frame["index"] + shard.start
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def merged_skipped(shards: list[ShardStore]) -> list[dict]:
    return [{**s, "index": int(s["index"]) + shard.start}
            for shard in shards for s in shard.manifest["dataset"].get("skipped", [])]


def copy_rows(writer, shards: list[ShardStore], rel: str) -> None:
    """``rel`` (one row per example: images.npy, embeddings.npy) of every shard, at its global rows."""
    if not all(shard.has(rel) for shard in shards):
        return
    first = shards[0].load(rel)
    dest = writer.array(rel, (shards[0].of, *first.shape[1:]), first.dtype)
    for shard in shards:
        _copy(shard.load(rel), dest, np.arange(shard.start, shard.stop))
    writer.flush()


def _copy(src: np.ndarray, dest, at: np.ndarray, take: np.ndarray | None = None) -> None:
    """Rows ``take`` of ``src`` (all, if None) written at rows ``at`` of ``dest``, a chunk at a time."""
    take = np.arange(len(src)) if take is None else take
    step = max(1, _CHUNK_BYTES // max(1, dest.row_bytes))
    for k in range(0, len(take), step):
        dest.write(np.asarray(src[take[k : k + step]]), at[k : k + step])


def explained_rows(shards: list[ShardStore], chosen: np.ndarray) -> list[tuple[ShardStore, np.ndarray, np.ndarray]]:
    """For each shard: (shard, its rows of the chosen maps, their rows in the merged store).

    Raises:
        StoreError: a shard lacks the map of an example the global selection chose (its
            candidates were not a superset of its part of the selection).
    """
    out = []
    for shard in shards:
        mine = (chosen >= shard.start) & (chosen < shard.stop)
        local = shard.load(schema.HEATMAP_INDEX, mmap=False).astype(np.int64) + shard.start
        rows = np.searchsorted(local, chosen[mine])
        found = (rows < len(local)) & (local[np.minimum(rows, len(local) - 1)] == chosen[mine]) if len(local) else \
            np.zeros(int(mine.sum()), bool)
        if not found.all():
            lost = int(chosen[mine][~found][0])
            raise StoreError(f"has no map of example {lost}, which the merged selection explains", shard.path)
        out.append((shard, rows, np.flatnonzero(mine)))
    return out


def copy_explained(writer, parts, k: int, rel: str) -> np.ndarray | None:
    """``rel`` (one row per explained example) gathered from the shards into (k, ...) rows of the store."""
    if not all(shard.has(rel) for shard, _, _ in parts):
        return None
    first = parts[0][0].load(rel)
    dest = writer.array(rel, (k, *first.shape[1:]), first.dtype)
    for shard, rows, at in parts:
        _copy(shard.load(rel), dest, at, rows)
    writer.flush()
    return np.load(writer.out / rel, mmap_mode="r")


def gathered(parts, k: int, rel: str) -> np.ndarray:
    """``rel`` rows of the chosen examples, in memory (small per-row arrays: scores)."""
    first = parts[0][0].load(rel)
    out = np.zeros((k, *first.shape[1:]), first.dtype)
    for shard, rows, at in parts:
        out[at] = shard.load(rel)[rows]
    return out


def merged_activation_stats(shards: list[ShardStore]) -> dict | None:
    """The whole dataset's per-channel activation statistics from the shards' own.

    Each shard's mean and zero fraction are over its readable images (times the layer's positions,
    the same for every image), so their sums are recovered exactly as value × readable count;
    maxima are the maxima of the shards'.
    """
    if not all(shard.has(schema.ACTIVATION_STATS) for shard in shards):
        return None
    stats = [json.loads((s.path / schema.ACTIVATION_STATS).read_text()) for s in shards]
    weights = np.array([int(s.manifest["dataset"]["readable"]) for s in shards], np.float64)
    out = {}
    for layer in stats[0]:
        def weighted(key: str, layer=layer) -> list[float]:
            total = sum(w * np.asarray(st[layer][key], np.float64) for w, st in zip(weights, stats))
            return (total / weights.sum()).tolist()

        out[layer] = {"mean": weighted("mean"),
                      "max": np.max([st[layer]["max"] for st in stats], axis=0).astype(np.float64).tolist(),
                      "frac_zero": weighted("frac_zero")}
    return out
