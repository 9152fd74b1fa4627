"""Labelled image datasets, streamed in batches.

Three layouts are accepted (see :func:`open_dataset`):

* a directory with one sub-folder per class (Keras ``image_dataset_from_directory``
  convention: classes in sorted folder-name order);
* a directory of images plus a CSV with ``path`` (relative to the directory) and
  ``label`` (class name or index) columns: ``DATA/labels.csv`` or the CSV itself;
* an ``.npz`` file with ``x`` (N, H, W, C), ``y`` (N,) and optional ``class_names``.

Labels given as class *names* (folder names, CSV names, string ``y``) are kept as
names and mapped by name onto the class order in :func:`resolve_class_names`, so a
dataset may hold any subset of the model's classes; labels given as numbers are
class indices. Every listed file must resolve (symlinks followed) inside DATA.

Images are decoded and resized by a ``tf.data`` pipeline (files) or read in
chunks straight from the ``.npz`` zip member (arrays), so memory does not grow
with the number of images. Unreadable files are skipped and counted, never
fatal unless none can be read. Each example carries its position in the
listing (``index``), which is the key used everywhere in the results store.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from audit.errors import DataError
from audit.io.preprocess import Preprocessing

if TYPE_CHECKING:
    from audit.io.remote import Remote

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
    labels: np.ndarray  # (N,) int64 class indices; for named labels, final once resolve_class_names ran
    class_names: list[str] | None  # the data's own class order; None: labels are bare indices
    paths: list[str] | None = None  # relative to root, for file datasets
    root: Path | None = None
    label_names: np.ndarray | None = None  # (N,) str: each example's class as the data names it, if by name
    order_declared: bool = False  # class_names is an order the data states (.npz class_names), not the names found
    notes: list[str] = field(default_factory=list)  # things worth telling the user (for the manifest notes)
    skipped: list[dict] = field(default_factory=list)  # [{path, reason}] filled while streaming (latest pass)
    # The run's preprocessing (set by the audit session), used by batches() unless it is given one.
    preprocessing: Preprocessing | None = None
    # DATA on an fsspec filesystem (a URL, audit.io.remote): its files are read through this, not from root.
    remote: Remote | None = None

    @property
    def count(self) -> int:
        return len(self.labels)

    def describe(self) -> dict:
        return {"source": str(self.source), "kind": self.kind, "count": self.count}

    def fingerprint(self) -> str:
        """Hex sha256 of what shapes the results, from file stats only (no image reads).

        File datasets: each listed path with its size, mtime_ns and label; ``.npz``: the file's
        size and mtime_ns plus the labels. Raw labels (names as written) are hashed, so the print
        does not change when :func:`resolve_class_names` maps them. Remote DATA: the size and the
        version the filesystem lists (ETag, generation, mtime, ...: :mod:`audit.io.remote`) in
        place of mtime_ns.
        """
        h = hashlib.sha256(f"{self.kind}\n{self.class_names!r}\n".encode())
        raw = self.label_names if self.label_names is not None else self.labels
        if self.paths is None:
            if self.remote is not None:
                size, version = self.remote.stat()
                h.update(f"{size} {version} {raw.dtype.str}\n".encode())
            else:
                st = self.source.stat()
                h.update(f"{st.st_size} {st.st_mtime_ns} {raw.dtype.str}\n".encode())
            h.update(np.ascontiguousarray(raw).tobytes())
            return h.hexdigest()
        if self.remote is not None:
            for p, label, (size, version) in zip(self.paths, raw.tolist(), self.remote.stats(self.paths)):
                h.update(f"{p}\0{size}\0{version}\0{label!r}\n".encode())
            return h.hexdigest()
        assert self.root is not None  # file datasets always carry their root
        for p, label in zip(self.paths, raw.tolist()):
            try:
                st = (self.root / p).stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:  # missing now: streaming will skip it, and the print records that
                size = mtime = -1
            h.update(f"{p}\0{size}\0{mtime}\0{label!r}\n".encode())
        return h.hexdigest()

    def batches(
        self,
        input_shape: tuple[int, int, int],
        stored_shape: tuple[int, int],
        *,
        batch_size: int = 64,
        rescale: float = 1.0,
        start: int = 0,
        indices: np.ndarray | None = None,
        preprocessing: Preprocessing | None = None,
    ) -> Iterator[Batch]:
        """Preprocessed batches from position ``start`` on, or of the given ``indices`` only.

        The pixels go through ``preprocessing``, else the dataset's own :attr:`preprocessing`
        (which already holds the run's ``--rescale``), else a plain multiplication by ``rescale``.
        """
        import tensorflow as tf

        prep = preprocessing or self.preprocessing or Preprocessing(scale=float(rescale))

        self.skipped = []  # per pass: a later pass over the same data must not count its files again
        if indices is None:
            indices = np.arange(start, self.count, dtype=np.int64)
        indices = np.asarray(indices, np.int64)
        h, w, c = input_shape

        @_plain_graph
        def prepare(i, img):
            return i, _per_image(img, (h, w), c, stored_shape, prep)

        parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.paths is not None and self.remote is not None:
            # Remote files are read in Python (a few threads, in order, a bounded read-ahead) and decoded
            # by the local files' graph; one that cannot be read or decoded leaves a gap, as below.
            remote, rels = self.remote, [self.paths[i] for i in indices]
            ds = tf.data.Dataset.from_generator(
                lambda: remote.contents(indices, rels),
                output_signature=(tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.string)),
            ).map(_plain_graph(lambda i, data: prepare(i, _decode_bytes(data))), **parallel).ignore_errors()
        elif self.paths is not None:
            files = tf.constant([str(self.root / self.paths[i]) for i in indices] or [""])[: len(indices)]
            ds = tf.data.Dataset.from_tensor_slices((indices, files)).map(
                _plain_graph(lambda i, f: prepare(i, _decode(f))), **parallel
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
            ).map(prepare, **parallel)
        # What can run on the whole batch does (fewer, larger ops than per image): _per_batch.
        ds = ds.batch(batch_size).map(_plain_graph(lambda i, parts: (i, *_per_batch(parts, prep))), **parallel)
        ds = ds.prefetch(2)
        expected = iter(indices.tolist())
        for idx, x, stored, builtin, channels in ds.as_numpy_iterator():
            for i in idx:  # record files dropped by ignore_errors
                for missing in expected:
                    if missing == i:
                        break
                    self._skip(missing, prepare)
            yield Batch(idx, x, stored, builtin, channels)
        for missing in expected:
            self._skip(missing, prepare)

    def _skip(self, i: int, prepare=None) -> None:
        """Record example ``i`` as skipped, with the reason found by reading it once more, eagerly.

        ``ignore_errors`` drops a failing element without its error, so only skipped files
        are read again (one eager decode each), to tell e.g. a missing file from a corrupt one.
        """
        path = self.paths[i] if self.paths else None
        if path is not None and self.remote is not None:
            data, reason = self.remote.read_again(path)
            if data is not None:
                reason = _undecodable_reason(data, i, prepare)
        elif path is not None and self.root is not None:
            reason = _unreadable_reason(self.root / path, i, prepare)
        else:
            reason = "unreadable image"
        self.skipped.append({"index": int(i), "path": path, "reason": reason})


def _op_message(e) -> str:
    """The readable part of a TensorFlow op error: no '{{function_node ...}}' prefix, no '[Op:...]' suffix."""
    text = (getattr(e, "message", None) or str(e)).strip()
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
    return (text.splitlines() or [type(e).__name__])[0][:300]


def _unreadable_reason(file: Path, index: int, prepare=None) -> str:
    """Why one file fails the pipeline, found by reading, decoding and preprocessing it eagerly."""
    import tensorflow as tf

    try:
        data = tf.io.read_file(str(file))
    except tf.errors.NotFoundError:
        return "file not found"
    except tf.errors.OpError as e:  # a directory, no permission, ...
        return f"cannot read: {_op_message(e).replace(str(file) + '; ', '')}"
    return _undecodable_reason(data, index, prepare)


def _undecodable_reason(data, index: int, prepare=None) -> str:
    """Why one file's bytes fail the pipeline, found by decoding and preprocessing them eagerly."""
    import tensorflow as tf

    try:
        img = _decode_bytes(data)
    except tf.errors.OpError as e:
        return f"cannot decode: {_op_message(e)}"
    if prepare is not None:
        try:
            prepare(tf.constant(index, tf.int64), img)  # the per-image part, where a bad image fails
        except (tf.errors.OpError, ValueError) as e:
            return f"cannot preprocess: {_op_message(e)}"
    return "unreadable image (failed in the input pipeline, but not when read again)"


def _plain_graph(fn):
    """``fn`` traced as written, without AutoGraph: these functions branch with ``tf.cond``
    only, and AutoGraph's source rewrite of them cost ~0.9 s per pass, more than predicting
    2,000 images (issue 13). Same ops, same bits."""
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)


def _decode(file):
    import tensorflow as tf

    return _decode_bytes(tf.io.read_file(file))


def _decode_bytes(data):
    """Pixels (h, w, channels) of one image file's bytes: what local and remote files share."""
    import tensorflow as tf

    img = tf.io.decode_image(data, expand_animations=False)
    return tf.ensure_shape(img, (None, None, None))


def _per_image(img, size, channels, stored_shape, prep: Preprocessing) -> dict:
    """What needs each original image: its built-in annotations, its pixels at the model's
    geometry (``x``; grey for a one-channel model) and its stored copy (``stored``, uint8:
    a plain image's own pixels). :func:`_per_batch` finishes a batch of these.

    A *plain* image (RGB, already of the model's size, as most datasets are) skips the channel
    conversion and the resize, which is then the identity, bit for bit: one branch instead of
    several, each of which cost about as much as the pixels' own work (issue 13). For an RGB
    model, a plain image's annotations are then computed on the batch, from ``x`` (which is
    its original pixels): row reductions give each image the bits it gets alone, and a batch
    costs a few ops where each image cost a dozen.

    The stored copy goes through the same geometry as the model's input (padding and crop
    included, at the stored size), so maps drawn on it sit on the pixels the model saw.
    """
    import tensorflow as tf

    shape = tf.shape(img)
    plain = tf.reduce_all(tf.equal(shape, tf.constant([*size, 3], tf.int32)))
    later = channels == 3  # a plain image's annotations come from x, in _per_batch
    resized_copy = tuple(stored_shape) != tuple(size)

    def finish(rgb, x, pixels=None, annotate=True):
        """x for the model, the annotations (or zeros, filled in later) and the uint8 copy,
        which is ``pixels`` themselves where they are the plain image's own."""
        if resized_copy:
            pixels = _to_uint8(prep.geometry(rgb, stored_shape, size))
        elif pixels is None:
            pixels = _to_uint8(x)
        x = tf.image.rgb_to_grayscale(x) if channels == 1 else x
        builtin = _builtins(rgb[None])[0] if annotate else tf.zeros([4], tf.float32)  # filled in by _per_batch
        return x, builtin, pixels

    def as_is():
        rgb = tf.cast(img, tf.float32)
        return finish(rgb, rgb, img, annotate=not later)

    def converted():
        rgb = _rgb(img)
        return finish(rgb, prep.geometry(rgb, size, size))

    x, builtin, stored = tf.cond(plain, as_is, converted)
    parts = {"x": tf.ensure_shape(x, (*size, channels)), "builtin": builtin, "channels": shape[-1],
             "stored": tf.ensure_shape(stored, (*stored_shape, 3))}
    if later:
        parts["plain"] = plain
    return parts


def _per_batch(parts: dict, prep: Preprocessing) -> tuple:
    """``(x, stored, builtin, channels)`` of a batch of :func:`_per_image` parts: the arithmetic
    and the plain images' annotations. Both are per image (elementwise, or reductions along
    each image's own row), so each image gets the bits it would alone."""
    import tensorflow as tf

    builtin = parts["builtin"]
    if "plain" in parts:
        builtin = tf.where(parts["plain"][:, None], _builtins(parts["x"]), builtin)
    return prep.apply(parts["x"]), parts["stored"], builtin, parts["channels"]


def _builtins(rgb):
    """aspect_ratio, resolution, brightness and contrast (B, 4) of float32 RGB images (B, h, w, 3).

    The ops of ``tf.image.rgb_to_grayscale``, ``tf.reduce_mean`` and ``tf.math.reduce_std``
    (the same matmul on the same matrices, the same reductions), without their shape
    bookkeeping and with the mean computed once: the same bits for a few ops fewer.
    """
    import tensorflow as tf

    shape = tf.shape(rgb)
    hw = tf.cast(shape[1:3], tf.float32)
    grey = tf.matmul(tf.reshape(rgb, (-1, 3)), tf.constant([[0.2989], [0.5870], [0.1140]], tf.float32))
    grey = tf.reshape(grey, (shape[0], -1))
    mean = tf.reduce_mean(grey, axis=1)
    std = tf.sqrt(tf.reduce_mean(tf.square(grey - mean[:, None]), axis=1))
    geometry = tf.broadcast_to(tf.stack([hw[1] / hw[0], tf.sqrt(hw[0] * hw[1])]), (shape[0], 2))
    return tf.concat([geometry, tf.stack([mean / 255.0, std / 255.0], axis=1)], axis=1)


def _rgb(img):
    """Decoded pixels (h, w, 1 to 4+ channels) as float32 RGB: grey repeated, alpha dropped."""
    import tensorflow as tf

    three = tf.shape(img)[-1] >= 3
    rgb = tf.cond(three, lambda: img[..., :3], lambda: tf.tile(img[..., :1], [1, 1, 3]))
    return tf.ensure_shape(tf.cast(rgb, tf.float32), (None, None, 3))


def _to_uint8(pixels):
    import tensorflow as tf

    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)


def preprocess_images(images: np.ndarray, input_shape: tuple[int, int, int], *, rescale: float = 1.0,
                      preprocessing: Preprocessing | None = None) -> np.ndarray:
    """A batch of decoded images, prepared for the model exactly as :meth:`Dataset.batches` prepares files.

    Args:
        images: uint8 ``(N, h, w)`` or ``(N, h, w, channels)`` with 1 to 4 channels, all of one size.
        input_shape: the model's ``(H, W, C)``.
        rescale: the factor the pixels are multiplied by, after resizing (without ``preprocessing``).
        preprocessing: the run's :class:`~audit.io.preprocess.Preprocessing` (resize and
            arithmetic, e.g. ``AuditOptions.preprocessing()``); it replaces ``rescale``.

    Returns:
        float32 ``(N, H, W, C)``: through the same graph (:func:`_per_image` in a ``tf.data``
        map, then :func:`_per_batch`), so a model scores these as it scored the audit's batches.

    Raises:
        DataError: ``images`` is not such a batch.
    """
    import tensorflow as tf

    images = np.asarray(images)
    images = images[..., None] if images.ndim == 3 else images
    if images.dtype != np.uint8 or images.ndim != 4 or not 1 <= images.shape[-1] <= 4:
        raise DataError(f"expected uint8 images (N, h, w[, 1-4 channels]); received {images.dtype} {images.shape}")
    h, w, c = input_shape
    if not len(images):
        return np.zeros((0, h, w, c), np.float32)
    prep = preprocessing or Preprocessing(scale=float(rescale))
    # As the .npz path of Dataset.batches feeds its rows: one image at a time, of unknown size.
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec((None, None, None), tf.uint8)
    ).map(_plain_graph(lambda img: _per_image(img, (h, w), c, (h, w), prep)))
    ds = ds.batch(len(images)).map(_plain_graph(lambda parts: _per_batch(parts, prep)[0]))
    return np.concatenate(list(ds.as_numpy_iterator())).astype(np.float32, copy=False)


def _npz_member(path: Path, name: str):
    """Open one array of an .npz for streaming: (zip, file object, shape, dtype)."""
    z = zipfile.ZipFile(path)
    member = f"{name}.npy"
    if member not in z.namelist():
        z.close()
        raise DataError(f".npz has no array {name!r} (has: {', '.join(n[:-4] for n in z.namelist())})", path)
    fh = z.open(member)
    try:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if dtype.hasobject:  # reading it would need pickle, which runs code from the file
            raise DataError(
                f"array {name!r} holds Python objects (dtype=object), which are never unpickled; "
                "save names with dtype=str and numbers with a numeric dtype", path)
        if fortran:
            raise DataError(
                f"array {name!r} is stored in Fortran order; save it with np.savez(x=np.ascontiguousarray(x))", path)
    except (ValueError, EOFError) as e:
        fh.close()
        z.close()
        raise DataError(f"array {name!r} is not a readable .npy ({str(e).splitlines()[0]})", path) from None
    except DataError:
        fh.close()
        z.close()
        raise
    return z, fh, shape, dtype


def _npz_header(path: Path, name: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of one .npz array, without reading its data."""
    z, fh, shape, dtype = _npz_member(path, name)
    fh.close()
    z.close()
    return shape, dtype


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _parse_labels(values, source: Path, what: str) -> np.ndarray:
    """Raw labels: int64 class indices when every label is a whole number >= 0, else str names."""
    import pandas as pd

    s = pd.Series(values)
    if pd.api.types.is_bool_dtype(s):
        s = s.astype(np.int64)
    if not pd.api.types.is_numeric_dtype(s):
        s = s.astype("string").str.strip().replace("", pd.NA)
    if s.isna().any():
        raise DataError(f"{what} has {int(s.isna().sum())} empty labels", source)
    if not pd.api.types.is_numeric_dtype(s):
        if not s.str.fullmatch(r"-?\d+").all():
            return np.asarray(s.tolist(), dtype=str)
        s = s.astype(np.int64)
    numbers = s.to_numpy(np.float64)
    bad = ~np.isfinite(numbers) | (numbers != np.round(numbers))
    if bad.any():
        raise DataError(f"{what} holds {numbers[bad][0]:g}, not a whole class index", source)
    if (numbers < 0).any():
        raise DataError(f"{what} holds {numbers[numbers < 0][0]:g}; class indices start at 0", source)
    return numbers.astype(np.int64)


def _checked_names(names, where: str, path: Path | None) -> list[str]:
    """A class order with no empty or repeated name (either would make name mapping ambiguous)."""
    names = [str(n).strip() for n in names]
    if "" in names:
        raise DataError(f"{where} has an empty name (position {names.index('') + 1})", path)
    twice = [n for n, c in Counter(names).items() if c > 1]
    if twice:
        raise DataError(f"{where} names {twice[0]!r} twice", path)
    return names


def _shown(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + ("…" if len(names) > limit else "")


def _map_names(label_names: np.ndarray, order: list[str], source: Path, where: str, noun: str) -> np.ndarray:
    """Class indices of named labels in ``order``; a name not in it is refused by name."""
    found, inverse = np.unique(label_names, return_inverse=True)
    lookup = {n: k for k, n in enumerate(order)}
    unknown = [n for n in found.tolist() if n not in lookup]
    if unknown:
        more = f" ({len(unknown) - 1} more names are not either)" if len(unknown) > 1 else ""
        raise DataError(f"{noun} {unknown[0]!r} is not in {where} ({_shown(order)}){more}", source)
    return np.asarray([lookup[n] for n in found.tolist()], np.int64)[inverse.reshape(-1)]


def _dataset(source: Path, kind: str, raw: np.ndarray, declared: list[str] | None,
             vocabulary: list[str] | None = None, **kw) -> Dataset:
    """A Dataset from raw labels (indices or names); names get provisional indices in the data's order."""
    if raw.dtype.kind != "U":
        return Dataset(source, kind, raw, declared, **kw)
    order = declared or vocabulary or sorted(set(raw.tolist()))
    where = "the .npz's class_names" if declared else "the data's class names"
    labels = _map_names(raw, order, source, where, "label")
    return Dataset(source, kind, labels, order, label_names=raw, order_declared=declared is not None, **kw)


def _check_inside(root: Path, paths: list[str], source: Path) -> None:
    """Refuse files that resolve outside DATA (``..``, absolute paths, symlinks): they would be
    read and copied into the store. Stats only, no reads."""
    top = root.resolve()
    folders: dict[str, Path] = {}

    def real(p: str) -> Path:
        # Resolving each folder once and lstat-ing each file is exact (a plain name under a real
        # folder is already real) and ten times cheaper than resolving every path in full.
        head, _, name = p.rpartition("/")
        if name in ("", ".", ".."):
            return (root / p).resolve()
        if head not in folders:
            folders[head] = (root / head).resolve()
        f = folders[head] / name
        return f.resolve() if f.is_symlink() else f

    def inside(p: str) -> bool:
        try:
            return real(p).is_relative_to(top)
        except (OSError, RuntimeError):  # a symlink loop cannot be shown to stay inside
            return False

    outside = [p for p in paths if not inside(p)]
    if outside:
        raise DataError(
            f"path {outside[0]!r} lies outside the data folder {root} ({_count(len(outside), 'such path')}); "
            "only files inside it are read", source)


def _open_folders(root: Path) -> Dataset:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, names = [], []
    for name in classes:
        for f in sorted((root / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f.relative_to(root).as_posix())
                names.append(name)
    if not paths:
        raise DataError(
            "no images found (expected one sub-folder per class with .png/.jpg/.jpeg/.bmp/.gif files, "
            f"or a {LABEL_CSV} with path and label columns)",
            root,
        )
    _check_inside(root, paths, root)
    # Every class folder is a class, even an empty one (as Keras does): the order is all folders.
    return _dataset(root, "folders", np.asarray(names, dtype=str), None, classes, paths=paths, root=root)


def _read_label_csv(csv: Path):
    import pandas as pd

    try:
        table = pd.read_csv(csv)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read label CSV ({str(e).splitlines()[0]})", csv) from None
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise DataError(f"label CSV needs columns 'path' and 'label'; missing {missing}", csv)
    if table.empty:
        raise DataError("label CSV has no rows", csv)
    if table["path"].isna().any():
        raise DataError(f"column 'path' has {int(table['path'].isna().sum())} empty cells", csv)
    return table


def _dedupe(paths: list[str], raw: np.ndarray, csv: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """One row per file: identical repeats are dropped (and noted), contradictory ones refused."""
    import pandas as pd

    t = pd.DataFrame({"path": paths, "label": raw})
    repeated = t.duplicated("path").to_numpy()
    if not repeated.any():
        return paths, raw, []
    per_path = t.groupby("path", sort=False)["label"].nunique()
    clash = per_path[per_path > 1]
    if len(clash):
        first = clash.index[0]
        shown = ", ".join(repr(v) for v in dict.fromkeys(t.loc[t["path"] == first, "label"].tolist()))
        raise DataError(
            f"path {first!r} is listed with different labels: {shown} ({_count(len(clash), 'such path')}); "
            "give each file one label", csv)
    n = t.loc[repeated, "path"].nunique()
    note = f"{csv.name} lists {_count(n, 'path')} more than once with the same label; each is counted once"
    return [p for p, r in zip(paths, repeated) if not r], raw[~repeated], [note]


def csv_listing(csv: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """``(paths, raw labels, notes)`` of a labels CSV, local or a remote one's local copy: parsed,
    each path spelled one way, repeated rows resolved (:func:`_dedupe`)."""
    table = _read_label_csv(csv)
    raw = _parse_labels(table["label"], csv, "column 'label'")
    return _dedupe([normalise_path(p) for p in table["path"].astype(str)], raw, csv)


def _open_csv(csv: Path, root: Path) -> Dataset:
    paths, raw, notes = csv_listing(csv)
    _check_inside(root, paths, csv)
    return _dataset(csv, "csv", raw, None, paths=paths, root=root, notes=notes)


def _npz_strings(a: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Bytes arrays (np.savez of b'...' or dtype 'S') as str, so names compare as text."""
    if a.dtype.kind != "S":
        return a
    try:
        return np.char.decode(a, "utf-8")
    except UnicodeDecodeError:
        raise DataError(f"array {name!r} holds bytes that are not UTF-8 text", path) from None


def _load_npz_labels(path: Path, members: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """y and class_names, read with pickle off after their headers were checked."""
    import zlib

    for name in ("y", "class_names"):
        if f"{name}.npy" in members:
            _npz_header(path, name)  # refuses object arrays with a clear line
    try:
        with np.load(path, allow_pickle=False) as data:
            names = data["class_names"] if "class_names" in data.files else None
            return data["y"], names
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"cannot read the .npz ({str(e).splitlines()[0]})", path) from None


def _open_npz(path: Path) -> Dataset:
    try:
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
    except zipfile.BadZipFile:
        raise DataError("not a readable .npz file (truncated or corrupt)", path) from None
    if "y.npy" not in members:
        raise DataError(".npz needs arrays 'x' (N, H, W, C) and 'y' (N,); 'y' is missing", path)
    x_shape, x_dtype = _npz_header(path, "x")
    if x_dtype.kind not in "uif":
        raise DataError(
            f"array 'x' has dtype {x_dtype.str}; images must be numbers (uint8 0..255 or floats 0..1)", path)
    y, names = _load_npz_labels(path, members)
    if len(x_shape) not in (3, 4) or y.ndim != 1 or len(y) != x_shape[0]:
        raise DataError(f"'x' must be (N, H, W[, C]) and 'y' (N,); got x{tuple(x_shape)} and y{y.shape}", path)
    if len(y) == 0:
        raise DataError(".npz holds no examples", path)
    if 0 in x_shape[1:]:
        raise DataError(f"array 'x' has an empty image size {tuple(x_shape)}", path)
    if names is not None and (names.ndim != 1 or names.size == 0):
        raise DataError(f"array 'class_names' must be 1-D (one name per class); got shape {names.shape}", path)
    declared = None
    if names is not None:
        declared = _checked_names(_npz_strings(names, "class_names", path).tolist(), "class_names", path)
    raw = _parse_labels(_npz_strings(y, "y", path), path, "array 'y'")
    return _dataset(path, "npz", raw, declared)


def normalise_path(p: str) -> str:
    """One spelling per file: forward slashes, no './' or duplicate separators."""
    import posixpath

    return posixpath.normpath(str(p).strip().replace("\\", "/"))


def open_dataset(path: str | Path) -> Dataset:
    """Open DATA (class folders, images + labels CSV, or .npz); validate without decoding images.

    DATA may be a local path or a URL fsspec resolves (``s3://bucket/data``, ``gs://``, ``memory://``, ...),
    listed by the same rules: see :mod:`audit.io.remote`.
    """
    from audit.io import remote

    if remote.is_url(path):
        local = remote.local_path(str(path))
        if local is None:
            return remote.open_remote(str(path))
        path = local
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
    """The class order (model output order) for this data, or a DataError.

    ``override`` (``--class-names``) wins over the data's own order. Labels given as names are
    mapped by name onto the chosen order and ``dataset.labels`` is set from them; labels given
    as indices stay indices into it.
    """
    order: list[str] | None
    if override is not None:
        order = _checked_names(override, "--class-names", None)
        if len(order) != num_classes:
            raise DataError(f"--class-names has {len(order)} names but the model outputs {num_classes}")
    else:
        order = dataset.class_names
    if dataset.label_names is not None:
        assert order is not None  # named labels always come with the data's class order (see _dataset)
        if override is None and not dataset.order_declared and len(order) < num_classes:
            # The names found cannot say where the missing classes sit in the model's outputs.
            raise DataError(
                f"data names {len(order)} classes but the model outputs {num_classes}; "
                f"pass --class-names with all {num_classes} in model output order", dataset.source)
        noun = "class folder" if dataset.kind == "folders" else "label"
        where = "--class-names" if override is not None else "the .npz's class_names"
        dataset.labels = _map_names(dataset.label_names, order, dataset.source, where, noun)
    if order is None:
        top = int(dataset.labels.max())
        if top >= num_classes:
            raise DataError(f"labels go up to {top} but the model has {num_classes} classes", dataset.source)
        return [f"class_{k}" for k in range(num_classes)]
    if len(order) != num_classes:
        raise DataError(
            f"data has {len(order)} classes ({_shown(order)}) but the model outputs {num_classes}", dataset.source)
    if dataset.labels.max() >= num_classes:
        raise DataError(f"labels must lie in 0..{num_classes - 1}", dataset.source)
    return list(order)
