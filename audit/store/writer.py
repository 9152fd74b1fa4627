"""The only code that writes a results store.

Every file is written atomically (to a temporary name, then renamed), so a run
killed at any moment leaves each file either old or new, never half-written.
Large arrays are preallocated ``.npy`` files filled in place with ``os.pwrite``
(which keeps them out of the process's memory), and ``work/state.json`` records
how far each phase got; a resumed run continues from there.
``manifest.json`` says ``complete: true`` only after everything else is in place,
and lists every file the store wrote (``files``), each before it is written, so
a re-run removes exactly those. A run holds the store's lock file throughout.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import secrets
import shutil
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import StoreError
from audit.store import schema
from audit.store.killpoint import checkpoint

STATE = f"{schema.WORK_DIR}/state.json"
# Temporary names of atomic writes; a re-run removes these leftovers of a kill beside each own file.
_TMP_INFIX = ".partial-"


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}{_TMP_INFIX}{secrets.token_hex(6)}"


def _exclusive_tmp(path: Path) -> tuple[int, Path]:
    """A new temporary file beside ``path``; created by os.open, so the umask gives its mode
    (mkstemp would make it 0600, and a store is meant to be read by others: app, TensorBoard)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _tmp_name(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = _exclusive_tmp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(schema.to_json(obj), indent=1, allow_nan=False).encode())


def write_parquet(path: Path, frame) -> None:
    fd, tmp = _exclusive_tmp(path)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:  # a file, not a path string: see schema.read_parquet
            frame.to_parquet(fh, index=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write a whole (small) array atomically."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    atomic_write_bytes(path, buf.getvalue())


_datasync = getattr(os, "fdatasync", os.fsync)


class NpyArray:
    """A preallocated ``.npy`` file whose rows are written in place.

    Rows written before a crash survive; callers record progress only after
    :meth:`flush`, so an unrecorded row is simply written again on resume.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, *, reuse: bool):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        if reuse and path.is_file():
            existing = np.load(path, mmap_mode="r")
            if existing.shape != self.shape or existing.dtype != self.dtype:
                raise StoreError(
                    f"{path.name} has shape {existing.shape}, expected {self.shape}; cannot resume", path.parent
                )
            self.offset = existing.offset
            del existing
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
            with open(path, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, header)
                self.offset = fh.tell()
                fh.truncate(self.offset + self.row_bytes * self.shape[0])
        self.fd = os.open(path, os.O_RDWR)

    def write(self, rows: np.ndarray, at: np.ndarray | int) -> None:
        """Write ``rows`` at row positions ``at`` (an int start, or one position per row)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        positions = np.arange(at, at + len(rows)) if isinstance(at, (int, np.integer)) else np.asarray(at)
        # Consecutive positions go out in one call; the common case is a single run.
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        for chunk_rows, chunk_pos in zip(np.split(rows, breaks), np.split(positions, breaks)):
            if len(chunk_pos):
                os.pwrite(self.fd, chunk_rows.tobytes(), self.offset + int(chunk_pos[0]) * self.row_bytes)

    def flush(self) -> None:
        # The file's size was fixed when it was made, so its data is all there is to sync:
        # fdatasync skips the mtime update's metadata write (fsync where there is none: macOS).
        _datasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _remove_file(path: Path) -> None:
    """Remove ``path`` and the temporary files a killed atomic write of it left beside it."""
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}{_TMP_INFIX}*"):
        tmp.unlink(missing_ok=True)


def _inside(out: Path, rel: str) -> bool:
    """Whether ``out/rel``'s folder is really inside ``out`` (no symbolic link on the way out)."""
    return (out / rel.rstrip("/")).parent.resolve().is_relative_to(out.resolve())


def _remove_listed(out: Path, rels: Iterable[str]) -> None:
    """Remove the listed files (and listed folders, whole), then the folders they leave empty."""
    rels = list(rels)
    folders = {p for rel in rels for p in Path(rel.rstrip("/")).parents if p.parts}
    # A listed path that has become a symbolic link (planted in a store, say) loses the link,
    # never what it points to; the run then writes into a real folder of its own.
    for path in sorted({*folders, *map(Path, rels)}, key=lambda p: len(p.parts)):
        if (out / path).is_symlink():
            (out / path).unlink()
    for rel in rels:
        if not _inside(out, rel):
            continue
        if rel.endswith("/"):
            shutil.rmtree(out / rel, ignore_errors=True)
        else:
            _remove_file(out / rel)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            (out / folder).rmdir()
        except OSError:  # not empty: someone else's file is inside
            pass


class StoreLock:
    """The exclusive right to write one store: ``fcntl.flock`` on its lock file, which holds the
    holder's process id while held. The kernel drops the lock when the process dies, so a
    killed run never leaves a stale one behind."""

    def __init__(self, store: Path):
        try:
            self.fd: int | None = os.open(store / schema.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise StoreError(f"cannot write to --out ({e.strerror or e})", store) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self.fd)
            self.fd = None
            raise StoreError(
                f"in use by another keras-audit run (process {holder}); wait for it to end or choose another --out",
                store,
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def _holder(self) -> str:
        # The holder writes its id just after it locks; a loser arriving in between waits a moment.
        assert self.fd is not None
        for _ in range(20):
            pid = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            if pid:
                return pid
            time.sleep(0.05)
        return "unknown"

    def release(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is None:
            return
        os.ftruncate(fd, 0)  # empty whenever nobody holds it
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        self.fd = None

    # A writer its caller never closed still frees the store when it is dropped.
    __del__ = release


def _manifest_leftover(name: str) -> bool:
    """The temporary file of a manifest write that a kill interrupted (every manifest writer holds
    the store's lock, so none is in progress while a writer holds it)."""
    return name.startswith(f".{schema.MANIFEST}{_TMP_INFIX}")


def _existing_store(out: Path) -> dict[str, Any] | None:
    """The manifest of the store in ``out``, or None when ``out`` is absent or empty.

    Anything else is refused, naming the folder: a typo in ``--out`` must not
    write into (let alone clear) someone else's files.
    """
    if out.exists() and not out.is_dir():
        raise StoreError("--out exists and is a file, not a directory", out)
    if not out.is_dir():
        return None
    manifest = schema.read_manifest_file(out)
    if schema.is_marked(manifest):
        return dict(manifest or {})
    if schema.is_legacy(manifest):
        raise StoreError(
            "--out holds a results store of an older keras-audit, which does not list its own files; "
            "delete it yourself or choose another --out", out,
        )
    try:
        # A folder holding only our lock file is what a run killed before its first manifest leaves
        # (with the temporary file of that manifest, when killed while writing it).
        foreign = any(entry.name != schema.LOCK_FILE and not _manifest_leftover(entry.name) for entry in out.iterdir())
    except OSError as e:
        raise StoreError(f"cannot read --out ({e.strerror or e})", out) from None
    if foreign:
        raise StoreError(
            "--out is an existing directory that is not a keras-audit store; refusing to write into it", out
        )
    return None


# Stores this process is writing, by resolved path, so write_owned_file() goes through their writer;
# weak, so that a writer dropped without close() is not kept alive (with its lock) by this registry.
_OPEN: weakref.WeakValueDictionary[Path, StoreWriter] = weakref.WeakValueDictionary()


class StoreWriter:
    """Creates (or resumes) a results store in ``out``, holding its lock until :meth:`close`.

    Refuses a directory that is neither empty nor a store; re-running into a
    store removes only the files it lists as its own (``manifest["files"]``).
    Every file is listed before it is written, so even a killed run's files
    are removed by the next one.
    """

    def __init__(self, out: str | Path, *, resume: bool = False, reopen: bool = False):
        if "://" in str(out):  # pathlib would make s3://b/x the local folder s3:/b/x
            raise StoreError("--out must be a local (or mounted) folder; a store is not written to a URL", out)
        self.out = Path(out)
        _existing_store(self.out)  # refuse before creating anything
        self.created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create --out ({e.strerror or e})", self.out) from None
        self._lock = StoreLock(self.out)
        self._arrays: dict[str, NpyArray] = {}
        try:
            previous = _existing_store(self.out)  # again under the lock: it may have changed
            for entry in self.out.iterdir():
                if _manifest_leftover(entry.name):  # of a killed manifest write: the lock keeps out any live one
                    entry.unlink(missing_ok=True)
            self._reopen(previous) if reopen else self._open(previous, resume)
        except BaseException:
            self._lock.release()
            raise
        _OPEN[self.out.resolve()] = self

    # Manifests are built here as plain dicts; schema.Manifest types what readers get back.
    def _open(self, previous: dict[str, Any] | None, resume: bool) -> None:
        """Decide between resuming and starting afresh (clearing the previous run's files)."""
        has_state = (self.out / STATE).is_file()
        # A run killed during its TensorBoard export is complete but for the logs: redo only them.
        self.export_only = bool(resume and previous and previous.get("complete"))
        pending = previous and (previous.get("tensorboard") == schema.TENSORBOARD_PENDING
                                or previous.get("discovery") == schema.DISCOVERY_PENDING)
        if self.export_only and not pending:
            raise StoreError("run is already complete; nothing to resume", self.out)
        # With nothing recorded yet (killed before its first state.json), --resume starts afresh.
        self.resuming = bool(resume and previous and (self.export_only or has_state))
        if previous is not None and not self.resuming:
            self._clear(previous)
        self.files: set[str] = set(self._listed(previous)) if previous and self.resuming else set()
        self.state: dict = json.loads((self.out / STATE).read_text()) if self.resuming and has_state else {}
        self._manifest: dict[str, Any] = dict(previous) if previous and self.resuming else {}

    def _reopen(self, previous: dict[str, Any] | None) -> None:
        """A finished store, to add its own files to (``keras-audit tensorboard OUT``)."""
        if not (previous and previous.get("complete")):
            raise StoreError("not a finished keras-audit results store", self.out)
        self.export_only = self.resuming = True
        self.files = set(self._listed(previous))
        self.state, self._manifest = {}, dict(previous)

    def _listed(self, manifest: dict[str, Any]) -> list[str]:
        files = manifest.get("files", [])
        rels = [schema.owned_path(f) for f in files] if isinstance(files, list) else [None]
        listed = [r for r in rels if r is not None]
        if len(listed) != len(rels):
            raise StoreError("manifest.json lists a file outside the store; refusing to touch it", self.out)
        return listed

    def _clear(self, previous: dict[str, Any]) -> None:
        """Remove the previous run's listed files, then the folders they leave empty; nothing else.
        The old manifest stays until the new run replaces it, so a kill in here loses nothing."""
        _remove_listed(self.out, self._listed(previous))

    # -- manifest, own files and state ----------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        return json.loads((self.out / schema.MANIFEST).read_text())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._manifest = dict(manifest)
        self._write_manifest()

    def update_manifest(self, **changes) -> None:
        self._manifest.update(changes)
        self._write_manifest()

    def _write_manifest(self) -> None:
        fixed = ("store", "schema_version", "files")
        body = {k: v for k, v in self._manifest.items() if k not in fixed}
        write_json(self.out / schema.MANIFEST, {
            "store": schema.STORE_MARKER, "schema_version": schema.SCHEMA_VERSION, **body, "files": sorted(self.files),
        })

    def own(self, *rels: str) -> None:
        """List ``rels`` among the store's own files; called before they are written."""
        new = set()
        for rel in rels:
            norm = schema.owned_path(rel)
            if norm is None:
                raise StoreError(f"{rel!r} is not a path inside the store", self.out)
            new.add(norm)
        if not new <= self.files:
            self.files |= new
            self._write_manifest()

    def _forget(self, prefix: str) -> None:
        """Unlist (and remove) the own files under ``prefix``."""
        gone = {f for f in self.files if f.startswith(prefix)}
        _remove_listed(self.out, gone)
        if gone:
            self.files -= gone
            self._write_manifest()

    def save_state(self, **updates) -> None:
        self.own(STATE)
        self.state.update(updates)
        write_json(self.out / STATE, self.state)

    # -- arrays --------------------------------------------------------------------------
    def array(self, rel: str, shape: tuple[int, ...], dtype) -> NpyArray:
        """A preallocated array file in the store, reopened (not cleared) when resuming."""
        if rel not in self._arrays:
            self.own(rel)
            reuse = self.resuming or rel in self.state.get("arrays", [])
            self._arrays[rel] = NpyArray(self.out / rel, shape, dtype, reuse=reuse)
            if rel not in self.state.get("arrays", []):
                self.save_state(arrays=[*self.state.get("arrays", []), rel])
        return self._arrays[rel]

    def flush(self) -> None:
        for arr in self._arrays.values():
            arr.flush()

    def work_array(self, name: str) -> np.ndarray | None:
        file = self.out / schema.WORK_DIR / name
        return np.load(file, mmap_mode="r") if file.is_file() else None

    # -- whole files -----------------------------------------------------------------------
    def save_npy(self, rel: str, array: np.ndarray) -> None:
        self.own(rel)
        save_npy(self.out / rel, array)

    def write_json(self, rel: str, obj: Any) -> None:
        self.own(rel)
        write_json(self.out / rel, obj)

    def write_predictions(self, frame) -> None:
        self.own(schema.PREDICTIONS)
        write_parquet(self.out / schema.PREDICTIONS, frame)

    def write_metrics(self, metrics: schema.Metrics) -> None:
        self.write_json(schema.METRICS, metrics)

    def write_slices(self, frame) -> None:
        """slices.parquet: the slice membership of every example (``audit.metrics.slice_membership``
        of the predictions and metrics this store holds). Checked here only for its shape; that it
        agrees with metrics.json is the job of whoever computes it."""
        columns = [str(c) for c in frame.columns]
        if not columns or columns[0] != schema.SLICE_INDEX_COLUMN:
            raise StoreError(f"slice membership must start with column {schema.SLICE_INDEX_COLUMN!r}", self.out)
        self.own(schema.SLICES)
        write_parquet(self.out / schema.SLICES, frame)

    def _close_arrays(self) -> None:
        for arr in self._arrays.values():
            arr.close()
        self._arrays.clear()

    def finish(self, manifest: schema.Manifest) -> None:
        """Mark the run complete; the manifest goes last so 'complete' implies everything else."""
        self.flush()
        self._close_arrays()
        self.write_manifest({**manifest, "complete": True})
        self._forget(f"{schema.WORK_DIR}/")

    # -- output of other writers (TensorBoard's) -------------------------------------------------
    def staging(self, dest: str) -> Path:
        """An empty folder under work/ for files that ``publish`` then moves into ``dest``.

        Files an interrupted earlier publish already moved into ``dest`` are removed first.
        """
        rel = f"{schema.WORK_DIR}/{dest}/"
        self._forget(f"{dest}/")
        self._forget(rel)
        self.own(rel)
        (self.out / rel).mkdir(parents=True)
        return self.out / rel

    def publish(self, staging: Path, dest: str) -> list[str]:
        """List every file of ``staging`` as ``dest/...``, then move each there (an atomic rename)."""
        moves = [(p, f"{dest}/{p.relative_to(staging).as_posix()}") for p in sorted(staging.rglob("*")) if p.is_file()]
        self.own(*(rel for _, rel in moves))
        for k, (src, rel) in enumerate(moves):
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, self.out / rel)
            if k == 0:
                checkpoint("publish")
        self._forget(f"{schema.WORK_DIR}/")
        return [rel for _, rel in moves]

    # -- replacing own files of a finished store (discovery's) ---------------------------------
    def replacement(self, name: str) -> Path:
        """An empty folder ``work/<name>/``, laid out like the store, for the files :meth:`commit` then
        moves over the store's own; until then the files in place stay as they are."""
        rel = f"{schema.WORK_DIR}/{name}/"
        self._forget(rel)
        self.own(rel)
        (self.out / rel).mkdir(parents=True)
        return self.out / rel

    def commit(self, staging: Path, *, stale: str | None = None) -> list[str]:
        """Move every file of ``staging`` (a :meth:`replacement` folder) to the same path in the store,
        each an atomic rename, listed first; then remove the own files under ``stale`` (a folder prefix
        such as ``discovered/``) that the move did not replace. Returns the moved paths."""
        moves = [(p, p.relative_to(staging).as_posix()) for p in sorted(staging.rglob("*")) if p.is_file()]
        self.own(*(rel for _, rel in moves))
        for k, (src, rel) in enumerate(moves):
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, self.out / rel)
            if k == 0:
                checkpoint("commit")
        moved = {rel for _, rel in moves}
        gone = {f for f in self.files if stale is not None and f.startswith(stale) and f not in moved}
        _remove_listed(self.out, gone)
        self.files -= gone
        self._forget(staging.relative_to(self.out).as_posix() + "/")
        return sorted(moved)

    def discard(self) -> None:
        """Remove everything this run wrote, after a mistake found midway (no image readable, NaN
        outputs): an unfinished store must not be left to look like a result. A folder this run
        created goes too; a store it replaced is left empty, since its files were cleared already."""
        self._close_arrays()
        _remove_listed(self.out, {*self.files, f"{schema.WORK_DIR}/"})
        (self.out / schema.MANIFEST).unlink(missing_ok=True)
        self.files.clear()
        self.close()
        if self.created:
            (self.out / schema.LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: someone wrote into it meanwhile
                self.out.rmdir()

    def close(self) -> None:
        """Close array files and release the store (also after an error; safe to call twice)."""
        self._close_arrays()
        self._lock.release()
        _OPEN.pop(self.out.resolve(), None)


def write_owned_file(store: str | Path, rel: str, data: bytes) -> Path:
    """Write ``data`` atomically to ``store/rel`` and list ``rel`` among the store's own files
    (manifest.json is updated atomically, first), so a re-run into the store removes it.

    For files made from a finished store, such as ``report.html``. A schema-1
    store lists no files; the file is written all the same.

    Raises:
        StoreError: ``store`` is not a results store, ``rel`` is not a path inside it,
            or another run is writing it.
    """
    store = Path(store)
    norm = schema.owned_path(rel)
    if norm is None or norm.endswith("/"):
        raise StoreError(f"{rel!r} is not a file path inside the store", store)
    writer = _OPEN.get(store.resolve())
    if writer is not None:  # this process is writing the store: one manifest, the writer's
        writer.own(norm)
        atomic_write_bytes(store / norm, data)
        return store / norm
    if not schema.is_store(store):
        raise StoreError("not a keras-audit results store (no manifest.json of one)", store)
    lock = StoreLock(store)
    try:
        manifest = schema.read_manifest_file(store)  # again under the lock
        if manifest is not None and schema.is_marked(manifest) and norm not in manifest.get("files", []):
            manifest["files"] = sorted({*manifest.get("files", []), norm})
            write_json(store / schema.MANIFEST, manifest)
        atomic_write_bytes(store / norm, data)
    finally:
        lock.release()
    return store / norm
