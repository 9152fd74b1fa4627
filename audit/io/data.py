"""Labelled image datasets, streamed in batches.

Three layouts are accepted (see :func:`open_dataset`):

* a directory with one sub-folder per class (Keras ``image_dataset_from_directory``
  convention: classes in sorted folder-name order);
* a directory of images plus a CSV with ``path`` (relative to the directory) and
  ``label`` (class name or index) columns: ``DATA/labels.csv`` or the CSV itself;
* an ``.npz`` file with ``x`` (N, H, W, C), ``y`` (N,) and optional ``class_names``.

Images are decoded and resized by a ``tf.data`` pipeline (files) or read in
chunks straight from the ``.npz`` zip member (arrays), so memory does not grow
with the number of images. Unreadable files are skipped and counted, never
fatal unless none can be read. Each example carries its position in the
listing (``index``), which is the key used everywhere in the results store.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from audit.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
LABEL_CSV = "labels.csv"


@dataclass
class Batch:
    """One preprocessed batch, ready for the model."""

    index: np.ndarray  # (B,) int64 positions in the dataset listing
    x: np.ndarray  # (B, H, W, C) float32, resized and rescaled for the model
    stored: np.ndarray  # (B, h, w, 3) uint8 copy for the results store
    builtin: np.ndarray  # (B, 4) float32: aspect_ratio, resolution, brightness, contrast
    channels: np.ndarray  # (B,) int: channel count of each source image


@dataclass
class Dataset:
    """A labelled image dataset (paths or arrays) that streams preprocessed batches."""

    source: Path
    kind: str  # "folders" | "csv" | "npz"
    labels: np.ndarray  # (N,) int64
    class_names: list[str] | None  # None: labels are bare indices
    paths: list[str] | None = None  # relative to root, for file datasets
    root: Path | None = None
    skipped: list[dict] = field(default_factory=list)  # [{path, reason}] filled while streaming

    @property
    def count(self) -> int:
        return len(self.labels)

    def describe(self) -> dict:
        return {"source": str(self.source), "kind": self.kind, "count": self.count}

    def batches(
        self,
        input_shape: tuple[int, int, int],
        stored_shape: tuple[int, int],
        *,
        batch_size: int = 64,
        rescale: float = 1.0,
        start: int = 0,
        indices: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        """Preprocessed batches from position ``start`` on, or of the given ``indices`` only."""
        import tensorflow as tf

        if indices is None:
            indices = np.arange(start, self.count, dtype=np.int64)
        indices = np.asarray(indices, np.int64)
        h, w, c = input_shape

        def prepare(i, img):
            return (i, *_preprocess(img, (h, w), c, stored_shape, rescale))

        if self.paths is not None:
            files = tf.constant([str(self.root / self.paths[i]) for i in indices] or [""])[: len(indices)]
            ds = tf.data.Dataset.from_tensor_slices((indices, files)).map(
                lambda i, f: prepare(i, _decode(f)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
            )
            # A corrupt file raises inside map; ignore_errors drops just that element, and the
            # gap in `index` tells us which one it was.
            ds = ds.ignore_errors()
        else:
            ds = tf.data.Dataset.from_generator(
                lambda: _npz_rows(self.source, indices),
                output_signature=(
                    tf.TensorSpec((), tf.int64),
                    tf.TensorSpec((None, None, None), tf.uint8),
                ),
            ).map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size).prefetch(2)
        expected = iter(indices.tolist())
        for idx, x, stored, builtin, channels in ds.as_numpy_iterator():
            for i in idx:  # record files dropped by ignore_errors
                for missing in expected:
                    if missing == i:
                        break
                    self._skip(missing)
            yield Batch(idx, x, stored, builtin, channels)
        for missing in expected:
            self._skip(missing)

    def _skip(self, i: int) -> None:
        self.skipped.append({"index": int(i), "path": self.paths[i] if self.paths else None, "reason": "unreadable image"})


def _decode(file):
    import tensorflow as tf

    img = tf.io.decode_image(tf.io.read_file(file), expand_animations=False)
    return tf.ensure_shape(img, (None, None, None))


def _preprocess(img, size, channels, stored_shape, rescale):
    """Resize and convert one image; also compute its built-in annotations."""
    import tensorflow as tf

    src_channels = tf.shape(img)[-1]
    img = tf.cast(img, tf.float32)
    img = img[..., :3] if img.shape[-1] is None or img.shape[-1] > 3 else img
    img = tf.cond(tf.shape(img)[-1] == 2, lambda: img[..., :1], lambda: img)  # grey + alpha
    rgb = tf.cond(tf.shape(img)[-1] == 1, lambda: tf.image.grayscale_to_rgb(img), lambda: img[..., :3])
    rgb = tf.ensure_shape(rgb, (None, None, 3))
    hw = tf.cast(tf.shape(rgb)[:2], tf.float32)
    grey = tf.image.rgb_to_grayscale(rgb)
    builtin = tf.stack(
        [hw[1] / hw[0], tf.sqrt(hw[0] * hw[1]), tf.reduce_mean(grey) / 255.0, tf.math.reduce_std(grey) / 255.0]
    )
    resized = tf.image.resize(rgb, size, antialias=True)
    model_in = tf.image.rgb_to_grayscale(resized) if channels == 1 else resized
    stored = tf.image.resize(rgb, stored_shape, antialias=True)
    stored = tf.cast(tf.clip_by_value(tf.round(stored), 0, 255), tf.uint8)
    return model_in * rescale, stored, builtin, src_channels


def _npz_member(path: Path, name: str):
    """Open one array of an .npz for streaming: (file object, shape, dtype)."""
    z = zipfile.ZipFile(path)
    member = f"{name}.npy"
    if member not in z.namelist():
        raise DataError(f".npz has no array {name!r} (has: {', '.join(n[:-4] for n in z.namelist())})", path)
    fh = z.open(member)
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(fh)
    if fortran:
        raise DataError(f"array {name!r} is stored in Fortran order; save it with np.savez(x=np.ascontiguousarray(x))", path)
    return z, fh, shape, dtype


def _npz_rows(path: Path, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Rows of ``x`` at the given sorted indices, read sequentially in chunks."""
    z, fh, shape, dtype = _npz_member(path, "x")
    row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    wanted = set(indices.tolist())
    pos = 0
    try:
        last = int(indices.max()) if len(indices) else -1
        while pos <= last:
            n = min(256, last + 1 - pos)
            chunk = np.frombuffer(fh.read(row_bytes * n), dtype).reshape(n, *shape[1:])
            for k in range(n):
                if pos + k in wanted:
                    img = chunk[k] if chunk.ndim == 4 else chunk[k][..., None]
                    if img.dtype != np.uint8:
                        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255)
                    yield pos + k, img.astype(np.uint8)
            pos += n
    finally:
        fh.close()
        z.close()


def _labels_from_column(values, source: Path, column: str) -> tuple[np.ndarray, list[str] | None]:
    import pandas as pd

    s = pd.Series(values)
    if s.isna().any():
        raise DataError(f"column {column!r} has {int(s.isna().sum())} empty labels", source)
    if pd.api.types.is_integer_dtype(s) or s.astype(str).str.fullmatch(r"\d+").all():
        labels = s.astype(np.int64).to_numpy()
        return labels, None
    names = sorted(s.astype(str).unique())
    lookup = {n: k for k, n in enumerate(names)}
    return s.astype(str).map(lookup).to_numpy(np.int64), names


def _open_folders(root: Path) -> Dataset:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for k, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f.relative_to(root).as_posix())
                labels.append(k)
    if not paths:
        raise DataError(
            "no images found (expected one sub-folder per class with .png/.jpg/.jpeg/.bmp/.gif files, "
            f"or a {LABEL_CSV} with path and label columns)",
            root,
        )
    return Dataset(root, "folders", np.asarray(labels, np.int64), classes, paths, root)


def _open_csv(csv: Path, root: Path) -> Dataset:
    import pandas as pd

    try:
        table = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read label CSV ({str(e).splitlines()[0]})", csv)
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise DataError(f"label CSV needs columns 'path' and 'label'; missing {missing}", csv)
    if table.empty:
        raise DataError("label CSV has no rows", csv)
    labels, names = _labels_from_column(table["label"], csv, "label")
    paths = [normalise_path(p) for p in table["path"].astype(str)]
    return Dataset(csv, "csv", labels, names, paths, root)


def _open_npz(path: Path) -> Dataset:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "y.npy" not in names:
                raise DataError(".npz needs arrays 'x' (N, H, W, C) and 'y' (N,); 'y' is missing", path)
    except zipfile.BadZipFile:
        raise DataError("not a readable .npz file (truncated or corrupt)", path)
    z, fh, x_shape, _ = _npz_member(path, "x")
    fh.close(), z.close()
    data = np.load(path, allow_pickle=False)
    y = data["y"]
    if len(x_shape) not in (3, 4) or y.ndim != 1 or len(y) != x_shape[0]:
        raise DataError(f"'x' must be (N, H, W[, C]) and 'y' (N,); got x{tuple(x_shape)} and y{y.shape}", path)
    if len(y) == 0:
        raise DataError(".npz holds no examples", path)
    class_names = [str(c) for c in data["class_names"]] if "class_names" in data.files else None
    if np.issubdtype(y.dtype, np.integer):
        labels = y.astype(np.int64)
    else:
        labels, found = _labels_from_column(y, path, "y")
        class_names = class_names or found
    return Dataset(path, "npz", labels, class_names)


def normalise_path(p: str) -> str:
    """One spelling per file: forward slashes, no './' or duplicate separators."""
    import posixpath

    return posixpath.normpath(str(p).strip().replace("\\", "/"))


def open_dataset(path: str | Path) -> Dataset:
    """Open DATA (class folders, images + labels CSV, or .npz); validate without decoding images."""
    path = Path(path)
    if not path.exists():
        raise DataError("data path does not exist", path)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _open_npz(path)
        if path.suffix.lower() == ".csv":
            return _open_csv(path, path.parent)
        raise DataError("data file must be an .npz or a .csv (or pass a directory of class folders)", path)
    if (path / LABEL_CSV).is_file():
        return _open_csv(path / LABEL_CSV, path)
    if not any(path.iterdir()):
        raise DataError("data directory is empty", path)
    return _open_folders(path)


def resolve_class_names(dataset: Dataset, num_classes: int, override: list[str] | None = None) -> list[str]:
    """Class names that agree with the model's class count, or a DataError."""
    names = override or dataset.class_names
    if names is None:
        top = int(dataset.labels.max())
        if dataset.labels.min() < 0 or top >= num_classes:
            raise DataError(f"labels go up to {top} but the model has {num_classes} classes", dataset.source)
        return [f"class_{k}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(
            f"data has {len(names)} classes ({', '.join(map(str, names[:6]))}{'…' if len(names) > 6 else ''}) "
            f"but the model outputs {num_classes}",
            dataset.source,
        )
    if dataset.labels.min() < 0 or dataset.labels.max() >= num_classes:
        raise DataError(f"labels must lie in 0..{num_classes - 1}", dataset.source)
    return [str(n) for n in names]
