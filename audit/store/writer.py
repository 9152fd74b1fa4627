"""The only code that writes a results store.

Every file is written atomically (to a temporary name, then renamed), so a run
killed at any moment leaves each file either old or new, never half-written.
Large arrays are preallocated ``.npy`` files filled in place with ``os.pwrite``
(which keeps them out of the process's memory), and ``work/state.json`` records
how far each phase got; a resumed run continues from there.
``manifest.json`` says ``complete: true`` only after everything else is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import StoreError
from audit.store import schema

STATE = f"{schema.WORK_DIR}/state.json"
# mkstemp creates files 0600; a store is meant to be read by others (app, TensorBoard).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(schema.to_json(obj), indent=1, allow_nan=False).encode())


def write_parquet(path: Path, frame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write a whole (small) array atomically."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    atomic_write_bytes(path, buf.getvalue())


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
                raise StoreError(f"{path.name} has shape {existing.shape}, expected {self.shape}; cannot resume", path.parent)
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
        positions = np.arange(at, at + len(rows)) if np.isscalar(at) else np.asarray(at)
        # Consecutive positions go out in one call; the common case is a single run.
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        for chunk_rows, chunk_pos in zip(np.split(rows, breaks), np.split(positions, breaks)):
            if len(chunk_pos):
                os.pwrite(self.fd, chunk_rows.tobytes(), self.offset + int(chunk_pos[0]) * self.row_bytes)

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class StoreWriter:
    """Creates (or resumes) a results store in ``out``.

    Refuses to write into an existing directory that is not a store, so a typo
    in ``--out`` cannot destroy someone's files.
    """

    def __init__(self, out: str | Path, *, resume: bool = False):
        self.out = Path(out)
        manifest = self.out / schema.MANIFEST
        if self.out.exists() and not self.out.is_dir():
            raise StoreError("--out exists and is a file, not a directory", self.out)
        if self.out.is_dir() and any(self.out.iterdir()) and not manifest.is_file():
            raise StoreError("--out is an existing directory that is not a keras-audit store; refusing to overwrite it", self.out)
        self.resuming = resume and (self.out / STATE).is_file()
        if resume and not self.resuming:
            if manifest.is_file() and json.loads(manifest.read_text()).get("complete"):
                raise StoreError("run is already complete; nothing to resume", self.out)
            raise StoreError("nothing to resume (no interrupted run in this directory)", self.out)
        if not self.resuming and manifest.is_file():
            self._clear()
        self.out.mkdir(parents=True, exist_ok=True)
        self.state: dict = json.loads((self.out / STATE).read_text()) if self.resuming else {}
        self._arrays: dict[str, NpyArray] = {}

    def _clear(self) -> None:
        """Remove a previous run's files (only names the schema owns)."""
        for name in (schema.MANIFEST, schema.PREDICTIONS, schema.METRICS, schema.IMAGES, schema.EMBEDDINGS):
            (self.out / name).unlink(missing_ok=True)
        for d in (schema.HEATMAP_DIR, schema.ACTIVATION_DIR, schema.WORK_DIR, schema.TENSORBOARD_DIR):
            shutil.rmtree(self.out / d, ignore_errors=True)

    # -- manifest and state ------------------------------------------------------------
    def read_manifest(self) -> dict:
        return json.loads((self.out / schema.MANIFEST).read_text())

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.out / schema.MANIFEST, {"schema_version": schema.SCHEMA_VERSION, **manifest})

    def save_state(self, **updates) -> None:
        self.state.update(updates)
        write_json(self.out / STATE, self.state)

    # -- arrays --------------------------------------------------------------------------
    def array(self, rel: str, shape: tuple[int, ...], dtype) -> NpyArray:
        """A preallocated array file in the store, reopened (not cleared) when resuming."""
        if rel not in self._arrays:
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

    # -- final files -------------------------------------------------------------------
    def write_predictions(self, frame) -> None:
        write_parquet(self.out / schema.PREDICTIONS, frame)

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.out / schema.METRICS, metrics)

    def finish(self, manifest: dict) -> None:
        """Mark the run complete; the manifest goes last so 'complete' implies everything else."""
        for arr in self._arrays.values():
            arr.flush()
            arr.close()
        self._arrays.clear()
        self.write_manifest({**manifest, "complete": True})
        shutil.rmtree(self.out / schema.WORK_DIR, ignore_errors=True)
