"""Shards: one deterministic share of the data run as an ordinary audit, and their merge.

``--shard i/n`` cuts the listing into n contiguous shares (cut at multiples of --batch-size
where the data allows, so every prediction batch is the very batch a single-process run
feeds the model, and the probabilities come out bit for bit the same). A shard run is the
ordinary run on its share: its store numbers rows within the share and records where the share
starts (``manifest["dataset"]["shard"]``); it explains ``shard_candidates``, a superset of its
part of any global selection, and keeps the per-row scores of those maps for the merge.

``merge_shards`` puts the rows back in global order through the store writer, recomputes the
global selection on the merged predictions and keeps only its maps, merges the activation
statistics, then runs finish and the post-steps once, as a run does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.engine.options import AuditOptions, parse_shard
from audit.errors import AuditError
from audit.io.data import Dataset
from audit.store import merge as shards_store
from audit.store import schema
from audit.store.writer import StoreWriter


@dataclass(frozen=True)
class Share:
    """Rows ``start``..``stop`` of ``of`` examples: share ``index`` of ``count``."""

    index: int
    count: int
    start: int
    stop: int
    of: int

    def describe(self) -> dict:
        return {"spec": f"{self.index}/{self.count}", "index": self.index, "count": self.count,
                "start": self.start, "stop": self.stop, "of": self.of}


def share(spec: str, total: int, batch_size: int) -> Share:
    """Share ``spec`` ("i/n") of ``total`` examples.

    Cuts fall at multiples of ``batch_size`` whenever every share still gets a batch, so
    shards batch exactly as one process does; otherwise at whole examples.

    >>> share("1/3", 100, 8), share("2/3", 100, 8).stop
    (Share(index=1, count=3, start=32, stop=64, of=100), 100)
    """
    i, n = parse_shard(spec)
    if total < n:
        raise AuditError(f"--shard {spec}: the data has {total} examples, fewer than {n} shares; use at most {total}")
    align = batch_size if total >= n * batch_size else 1

    def cut(k: int) -> int:
        return total if k == n else min(total, round(k * total / (n * align)) * align)

    return Share(i, n, cut(i), cut(i + 1), total)


@dataclass
class ShardDataset(Dataset):
    """The examples of one share, numbered within it; batches are read through the whole dataset."""

    whole: Dataset | None = None
    share: Share | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def describe(self) -> dict:
        assert self.share is not None
        return {**super().describe(), "shard": self.share.describe()}

    def fingerprint(self) -> str:
        """The whole dataset's: every shard of one run records the same data."""
        assert self.whole is not None
        if self._fingerprint is None:
            self._fingerprint = self.whole.fingerprint()
        return self._fingerprint

    def batches(self, input_shape, stored_shape, *, start: int = 0, indices=None, **kw) -> Iterator:
        assert self.whole is not None and self.share is not None
        offset = self.share.start
        local = np.arange(start, self.count, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        kw.setdefault("preprocessing", self.preprocessing)
        self.skipped = []
        for batch in self.whole.batches(input_shape, stored_shape, indices=local + offset, **kw):
            self._take_skipped(offset)
            batch.index = batch.index - offset
            yield batch
        self._take_skipped(offset)

    def _take_skipped(self, offset: int) -> None:
        """Move the whole dataset's skipped files (found so far) here, numbered within the share."""
        assert self.whole is not None
        self.skipped += [{**s, "index": int(s["index"]) - offset} for s in self.whole.skipped]
        self.whole.skipped.clear()


def restrict(dataset: Dataset, annotations, spec: str, batch_size: int):
    """(share, the share's dataset, its annotation rows): what a ``--shard`` session runs on."""
    part = share(spec, dataset.count, batch_size)
    rows = slice(part.start, part.stop)
    local = ShardDataset(**{**{f: getattr(dataset, f) for f in Dataset.__dataclass_fields__},
                            "labels": dataset.labels[rows],
                            "paths": None if dataset.paths is None else dataset.paths[rows],
                            "label_names": None if dataset.label_names is None else dataset.label_names[rows],
                            "notes": list(dataset.notes), "skipped": []},
                         whole=dataset, share=part)
    if annotations is not None:
        annotations = annotations.iloc[rows].reset_index(drop=True)
    return part, local, annotations


# -- the shard run's two additions to an ordinary run ---------------------------------------------
def choose_candidates(session, predictions, share_selection=None) -> None:
    """Record the examples the shard's explain phase explains (unless an interrupted run recorded
    them already): ``share_selection(session, predictions)``, its part of the global selection,
    where something sees every share (the Ray engine); else ``shard_candidates``, a superset of
    that part. ``predictions`` are handed over with global indices."""
    from audit.engine.selection import shard_candidates

    w, o, part = session.writer, session.options, session.shard
    if "explained" in w.state or not session.methods:
        return
    globally = predictions.assign(index=predictions["index"].to_numpy() + part.start)
    if share_selection is not None:
        chosen = share_selection(session, globally)
    else:
        chosen = shard_candidates(globally, o.explain_limit, o.seed, len(session.class_names))
    w.save_state(explained=(np.sort(np.asarray(chosen, np.int64)) - part.start).tolist())


def keep_for_merge(session) -> None:
    """Keep the per-row map scores (work/ goes when the run finishes): the merge averages them
    over the globally chosen maps."""
    from audit.engine.explain import _quality_file

    w = session.writer
    for method in session.methods:
        work = w.work_array(_quality_file(method)) if method != "activations" else None
        if work is not None:
            w.save_npy(shards_store.quality_file(method), np.asarray(work))


# -- merge ------------------------------------------------------------------------------------
@dataclass
class MergedSession:
    """What finish and the post-steps read of a session, for a store made by merging shards."""

    options: AuditOptions
    writer: StoreWriter
    class_names: list[str]
    manifest: dict
    notes: list[str]
    methods: tuple[str, ...]
    progress: bool = False
    shard: Share | None = None
    predictions: object = None  # the merged predictions table
    quality: dict = field(default_factory=dict)  # explanation quality of the kept maps


def _options(recorded: dict, tensorboard: bool | None) -> AuditOptions:
    fields = {k: v for k, v in recorded.items() if k in AuditOptions.__dataclass_fields__}
    for k in ("explain", "mean", "std"):
        if fields.get(k) is not None:
            fields[k] = tuple(fields[k])
    fields["shard"] = None
    if tensorboard is not None:
        fields["tensorboard"] = tensorboard
    return AuditOptions(**fields).validate()


def _manifest(shards, options: AuditOptions, notes: list[str]) -> dict:
    first = shards[0].manifest
    dataset = {k: v for k, v in first["dataset"].items() if k not in ("shard", "skipped", "readable")}
    dataset["count"] = shards[0].of
    keep = ("model", "class_names", "preprocessing", "stored_image_shape", "versions")
    manifest = {k: first[k] for k in keep if k in first}
    manifest.update(complete=False, dataset=dataset, options=options.recorded(),
                    started_at=min(s.manifest.get("started_at", "") for s in shards), notes=notes,
                    merged_from=[str(s.path.resolve()) for s in shards])
    return manifest


def _as_given(manifest: dict, paths: dict) -> None:
    """Record the input paths as the user gave them (actors were handed absolute ones)."""
    manifest["model"] = {**manifest["model"], "path": str(paths["model"])}
    manifest["dataset"]["source"] = str(paths["data"])
    if paths.get("annotations") is not None and manifest["dataset"].get("annotations"):
        manifest["dataset"]["annotations"] = {**manifest["dataset"]["annotations"], "path": str(paths["annotations"])}


def _notes(shards) -> list[str]:
    """The shards' own notes (data, preprocessing), each once; metric notes are recomputed."""
    out: list[str] = []
    for shard in shards:
        own = set(shard.metrics.get("notes", []))
        out += [n for n in shard.manifest.get("notes", []) if n not in own and n not in out]
    return out


def _explanations(session: MergedSession, shards, predictions) -> dict:
    """The global selection's maps, signal, activations and scores; returns the explanation quality."""
    from audit.engine.explain import _quality_file, _quality_summary
    from audit.engine.selection import select_for_explanation

    w, first = session.writer, shards[0].manifest
    explained = first.get("explained")
    if not explained:
        return {}
    o = session.options
    chosen = np.sort(np.asarray(select_for_explanation(predictions, o.explain_limit, o.seed,
                                                       num_classes=len(session.class_names)), np.int64))
    parts = shards_store.explained_rows(shards, chosen)
    w.save_npy(schema.HEATMAP_INDEX, chosen)
    quality = {}
    for method in explained["methods"]:
        shards_store.copy_explained(w, parts, len(chosen), schema.heatmap_file(method))
        signal = shards_store.copy_explained(w, parts, len(chosen), schema.signal_file(method))
        scores = shards_store.gathered(parts, len(chosen), shards_store.quality_file(method))
        w.save_npy(f"{schema.WORK_DIR}/{_quality_file(method)}", scores)
        no_signal = dict(shards[0].metrics["explanations"][method]["no_signal"])
        assert signal is not None
        no_signal.update(count=int(np.sum(~signal)), of=len(chosen))
        quality[method] = {**_quality_summary(w, method), "no_signal": no_signal}
    for layer in explained.get("activation_layers", []):
        shards_store.copy_explained(w, parts, len(chosen), schema.activation_file(layer))
    session.manifest["explained"] = {**explained, "count": len(chosen)}
    return quality


def merge_into(writer: StoreWriter, shard_outs: Sequence[str | Path], *, tensorboard: bool | None = None,
               progress: bool = False, paths: dict | None = None) -> MergedSession:
    """Fill the open store ``writer`` from the shard stores, up to the finish phase (not run)."""
    shards = shards_store.open_shards(shard_outs)
    first = shards[0].manifest
    options = _options(first["options"], tensorboard)
    notes = _notes(shards)
    methods = tuple((first.get("explained") or {}).get("methods", ()))
    session = MergedSession(options, writer, list(first["class_names"]), _manifest(shards, options, notes), notes,
                            methods, progress)
    if paths is not None:
        _as_given(session.manifest, paths)
    writer.write_manifest(session.manifest)
    writer.save_state(skipped=shards_store.merged_skipped(shards), merging=True)
    predictions = shards_store.merged_predictions(shards)
    for rel in (schema.IMAGES, schema.EMBEDDINGS):
        shards_store.copy_rows(writer, shards, rel)
    session.quality = _explanations(session, shards, predictions)
    stats = shards_store.merged_activation_stats(shards)
    if stats is not None:
        writer.write_json(schema.ACTIVATION_STATS, stats)
    session.predictions = predictions
    return session


def merge_shards(out: str | Path, shard_outs: Sequence[str | Path], *, post_steps=(), tensorboard: bool | None = None,
                 progress: bool = False, writer: StoreWriter | None = None, paths: dict | None = None) -> Path:
    """Merge finished shard stores into the store ``out``: rows in global order, the global
    selection's maps, merged activation statistics; then finish and ``post_steps`` once.

    ``writer``: an open StoreWriter of ``out`` to use (the Ray engine's); else one is opened.
    ``paths``: the ``model``, ``data`` and ``annotations`` paths to record, when the shards were
    given other spellings of them (the Ray engine hands its actors absolute paths).

    Raises:
        StoreError: the shards are not every share of one run, or ``out`` cannot be written.
    """
    from audit.engine.finish import finish

    shards_store.open_shards(shard_outs)  # refuse before anything is written
    own = writer is None
    w = StoreWriter(out) if writer is None else writer
    try:
        session = merge_into(w, shard_outs, tensorboard=tensorboard, progress=progress, paths=paths)
        finish(session, session.predictions, session.quality)
        for step in post_steps:
            step(session)
    except AuditError:
        w.discard()
        raise
    finally:
        if own:
            w.close()
    return w.out
