"""DATA on a filesystem fsspec resolves: an object store (``s3://``, ``gs://``, ``az://``, ...), ``memory://``,
a chain such as ``simplecache::s3://...``; any protocol fsspec knows whose package is installed.

:func:`audit.io.data.open_dataset` hands a DATA that :func:`is_url` recognises to :func:`open_remote`, which
lists it by the rules of the local layouts, so a dataset lists the same examples in the same order
wherever its files lie:

* class folders: every sub-folder of DATA is a class (in sorted order; names starting with '.' are not),
  its .png/.jpg/.jpeg/.bmp/.gif files, at any depth, in the order pathlib sorts them locally (by path
  parts), an empty class folder (a folder marker object) still a class;
* ``DATA/labels.csv``, or DATA a ``.csv``: paths relative to its folder, refused when they leave it;
* an ``.npz``: copied once to a local temporary file (removed with the dataset), then read as a local one.

Images are read in Python by :meth:`Remote.contents` (a few threads, in order, a bounded read-ahead) and
decoded by the graph that decodes local files, so the same bytes give the same pixels. ``file://`` URLs are
local paths (:func:`local_path`): they keep the local reader, which is faster and refuses symlinks that
leave DATA.

A file's *version*, for the data fingerprint (:meth:`Remote.stats`), is its size plus the first of
:data:`VERSION_KEYS` that the filesystem's listing gives (S3: ``ETag``; GCS: ``generation``; local and
most others: ``mtime``/``created``): a rewritten object changes the print as a touched local file does.

Credentials and endpoints come from each filesystem's own configuration (for S3: the ``AWS_*``
environment variables, ``~/.aws``, or ``FSSPEC_S3_*``); with ``--engine ray`` every node needs them, and
the filesystem's package.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, cast

import numpy as np

from audit.errors import DataError

# The keys of fsspec's file info, in order of preference, whose value says which version of a file this is.
VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "last_modified", "updated",
                "modified", "created")
_READERS = 8  # threads reading files
_AHEAD = 32  # files read ahead of the pipeline, at most
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")  # two letters at least: C:/ is a Windows drive, not a URL


def is_url(data) -> bool:
    """Whether DATA names a file on a filesystem fsspec resolves (``s3://b/x``, ``simplecache::s3://b/x``),
    rather than a local path: ``PROTOCOL://...`` with a protocol of two letters or more (``C://x`` is a
    Windows drive), possibly after ``::``-chained ones. Path objects are local paths.
    """
    if not isinstance(data, str):
        return False
    return bool(_URL.match(data)) or ("::" in data and bool(_URL.match(data.rsplit("::", 1)[-1])))


def local_path(url: str) -> Path | None:
    """The local path a plain ``file://`` (or ``local://``) URL names, as fsspec reads it; None for any other URL."""
    for prefix in ("file://", "local://"):
        if url.startswith(prefix):
            return Path(url[len(prefix):] or "/")
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def resolve(url: str) -> tuple[Any, str]:
    """``(filesystem, path on it)`` of a URL, or one DataError line: fsspec or the protocol's package is
    missing (naming what to pip install), or the protocol is unknown."""
    protocol = url.split("://", 1)[0].rsplit("::", 1)[-1]
    try:
        import fsspec.core
    except ImportError:
        raise DataError(f"DATA is a {protocol}:// URL, which needs fsspec: pip install fsspec", url) from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:
        # fsspec knows the protocol; its implementation (or one of its dependencies) is not installed.
        missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None)
        if not missing:
            from fsspec.registry import known_implementations

            missing = known_implementations.get(protocol, {}).get("class", "").split(".")[0] or None
        if not missing:
            raise DataError(f"DATA is a {protocol}:// URL, whose filesystem cannot be imported ({_first_line(e)}); "
                            "pip install the package it names", url) from None
        package = missing.split(".")[0]
        raise DataError(f"DATA is a {protocol}:// URL, which needs the package {package}, not installed: "
                        f"pip install {package}", url) from None
    except ValueError as e:
        if "protocol not known" not in str(e).lower():
            raise DataError(f"cannot open DATA ({_first_line(e)})", url) from None
        raise DataError(f"DATA is a {protocol}:// URL, a protocol fsspec does not know; pip install the package "
                        f"that implements it (fsspec lists them under 'Other Known Implementations')", url) from None
    except Exception as e:  # a malformed URL, bad options in the fsspec configuration, ...
        raise DataError(f"cannot open DATA ({_first_line(e)})", url) from None
    return fs, path.rstrip("/")


def _join(base: str, rel: str) -> str:
    return f"{base}/{rel}" if base else rel


def _child(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def _version(info: dict) -> str:
    for key in VERSION_KEYS:
        value = info.get(key)
        if value not in (None, ""):
            return f"{key}={value}"
    return ""


@dataclass(eq=False)
class RemotePath(os.PathLike):
    """Stands where :mod:`audit.io.data` keeps a local path (``Dataset.source``, the files its readers
    open): ``str()`` is the URL, for messages and the manifest; ``os.fspath()`` the local copy, if one was
    fetched, which zipfile, numpy and pandas open."""

    url: str
    local: str | None = None

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        if self.local is None:
            raise TypeError(f"{self.url} has no local copy")
        return self.local

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # removed already, e.g. by the temp folder's own cleaning
        os.unlink(path)


@dataclass(eq=False)
class Remote:
    """Where the files of a remote DATA lie: ``base`` on filesystem ``fs`` (the folder its paths are
    relative to; an .npz itself) and the URL it was given as."""

    fs: Any
    base: str
    url: str
    listing: dict[str, dict] | None = field(default=None, repr=False)  # rel path -> info, from opening

    def path(self, rel: str) -> str:
        return _join(self.base, rel)

    def read(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def contents(self, indices: Sequence[int] | np.ndarray, rels: Sequence[str]) -> Iterator[tuple[int, bytes]]:
        """``(index, bytes)`` of each file, in the order given, read by a few threads at most
        :data:`_AHEAD` files ahead. A file that cannot be read is left out: the gap in the indices
        says which (:meth:`audit.io.data.Dataset.batches` records it, reading it once more for the reason)."""
        from concurrent.futures import ThreadPoolExecutor

        todo = iter(zip(np.asarray(indices, np.int64).tolist(), rels))
        pool = ThreadPoolExecutor(_READERS, thread_name_prefix="keras-audit-read")
        pending: deque = deque()
        try:
            for i, rel in todo:
                pending.append((i, pool.submit(self.read, rel)))
                if len(pending) >= _AHEAD:
                    break
            while pending:
                i, future = pending.popleft()
                following = next(todo, None)
                if following is not None:
                    pending.append((following[0], pool.submit(self.read, following[1])))
                try:
                    data = future.result()
                except Exception:  # any failure to read leaves the file out (see above)
                    continue
                yield i, data
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def read_again(self, rel: str) -> tuple[bytes | None, str | None]:
        """A skipped file's bytes, or why it cannot be read (the words the local reader uses)."""
        try:
            return self.read(rel), None
        except FileNotFoundError:
            return None, "file not found"
        except Exception as e:
            return None, f"cannot read: {_first_line(e)}"

    def _list(self) -> dict[str, dict]:
        """Every file under ``base``, by path relative to it, with its info (one listing)."""
        found = _call(self.url, "list", self.fs.find, self.base, detail=True)
        prefix = f"{self.base}/" if self.base else ""
        return {name[len(prefix):]: info for name, info in found.items()
                if name.startswith(prefix) and info.get("type", "file") == "file" and name != prefix}

    def stats(self, rels: Sequence[str]) -> list[tuple[int, str]]:
        """``(size, version)`` of each file (-1 and "" for one that is not there), from one listing: the
        one made when the folders were listed, else a fresh one."""
        listing = self.listing if self.listing is not None else self._list()
        out = []
        for rel in rels:
            info = listing.get(rel)
            out.append((-1, "") if info is None else (int(info.get("size") or 0), _version(info)))
        return out

    def stat(self) -> tuple[int, str]:
        """``(size, version)`` of ``base`` itself (an .npz)."""
        info = _call(self.url, "read", self.fs.info, self.base)
        return int(info.get("size") or 0), _version(info)


def _call(url: str, what: str, fn, *args, **kwargs):
    """A filesystem call; its failure as one DataError line naming the URL."""
    try:
        return fn(*args, **kwargs)
    except FileNotFoundError:
        raise DataError("data path does not exist", url) from None
    except DataError:
        raise
    except Exception as e:  # permissions, credentials, the network: whatever the filesystem raises
        raise DataError(f"cannot {what} DATA ({_first_line(e)})", url) from None


# -- the three layouts -----------------------------------------------------------------------------
def open_remote(url: str):
    """A :class:`~audit.io.data.Dataset` of a remote DATA, validated without reading an image."""
    from audit.io import data as d

    fs, base = resolve(url)
    _call(url, "list", fs.invalidate_cache, base)  # what is there now, not what this process listed before
    info = _call(url, "read", fs.info, base)
    if info.get("type") != "directory":
        suffix = PurePosixPath(base).suffix.lower()
        if suffix == ".npz":
            return _open_npz(fs, base, url)
        if suffix == ".csv":
            parent, _, _ = base.rpartition("/")
            return _open_csv(fs, base, url, Remote(fs, parent, url.rsplit("/", 1)[0]))
        raise DataError("data file must be an .npz or a .csv (or pass a directory of class folders)", url)
    entries = _call(url, "list", fs.ls, base, detail=True)
    names = {posixpath.basename(e["name"].rstrip("/")): e for e in entries if e["name"].rstrip("/") != base}
    if d.LABEL_CSV in names and names[d.LABEL_CSV].get("type") == "file":
        return _open_csv(fs, _join(base, d.LABEL_CSV), _child(url, d.LABEL_CSV), Remote(fs, base, url))
    if not names:
        raise DataError("data directory is empty", url)
    return _open_folders(Remote(fs, base, url), names)


def _open_folders(remote: Remote, entries: dict[str, dict]):
    from audit.io import data as d

    listing = remote._list()
    folders = {rel.split("/", 1)[0] for rel in listing if "/" in rel}
    folders |= {name for name, e in entries.items() if e.get("type") == "directory"}
    classes = sorted(name for name in folders if not name.startswith("."))
    chosen = set(classes)
    found = [rel for rel in listing if "/" in rel and rel.split("/", 1)[0] in chosen
             and PurePosixPath(rel).suffix.lower() in d.IMAGE_SUFFIXES]
    # The local reader's order: class by class (the first part), each class's files as pathlib sorts
    # them, by their parts (a/b/c.png before a/b.png, which a string sort would swap).
    found.sort(key=lambda rel: rel.split("/"))
    if not found:
        raise DataError(
            "no images found (expected one sub-folder per class with .png/.jpg/.jpeg/.bmp/.gif files, "
            f"or a {d.LABEL_CSV} with path and label columns)", remote.url)
    remote.listing = listing
    names = np.asarray([rel.split("/", 1)[0] for rel in found], dtype=str)
    return d._dataset(_source(RemotePath(remote.url)), "folders", names, None, classes, paths=found, remote=remote)


def _source(path: RemotePath) -> Path:
    """A RemotePath where :mod:`audit.io.data` expects a Path: it reads only ``str()`` (the URL) and
    ``os.fspath()`` (the local copy) of it, and :meth:`Dataset.fingerprint` asks the filesystem instead
    of ``stat()``."""
    return cast(Path, path)


def _fetch(fs, path: str, url: str, suffix: str) -> RemotePath:
    """A local copy of one remote file, removed when the returned RemotePath is."""
    handle, local = tempfile.mkstemp(prefix="keras-audit-", suffix=suffix)
    os.close(handle)
    copy = RemotePath(url, local)
    weakref.finalize(copy, _remove, local)
    _call(url, "read", fs.get_file, path, local)
    return copy


def _open_csv(fs, path: str, url: str, remote: Remote):
    from audit.io import data as d

    csv = _source(_fetch(fs, path, url, ".csv"))
    paths, raw, notes = d.csv_listing(csv)
    outside = [p for p in paths if p == ".." or p.startswith(("../", "/"))]
    if outside:
        raise DataError(
            f"path {outside[0]!r} lies outside the data folder {remote.url} "
            f"({d._count(len(outside), 'such path')}); only files inside it are read", url)
    return d._dataset(_source(RemotePath(url)), "csv", raw, None, paths=paths, notes=notes, remote=remote)


def _open_npz(fs, path: str, url: str):
    from audit.io import data as d

    dataset = d._open_npz(_source(_fetch(fs, path, url, ".npz")))
    dataset.remote = Remote(fs, path, url)
    return dataset
