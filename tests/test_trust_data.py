"""Trust at the edges: labels mapped by name, duplicate and escaping paths, hostile .npz files,
and the dataset fingerprint.

The oracle for every label test is the true class index of each example, known by construction:
the model order is ``MODEL_ORDER`` (not alphabetical: sorted it reads alpha, mid, zeta), and the
data holds only some of those classes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.errors import DataError
from audit.io.annotations import load_annotations
from audit.io.data import open_dataset, resolve_class_names
from conftest import brightness_images, brightness_model, write_folder_dataset

MODEL_ORDER = ["zeta", "alpha", "mid"]  # brightness_model: index 0 dark, 1 mid, 2 light


def _subset(n: int, keep=(0, 2)):
    """Images of the kept classes only, and their true indices in MODEL_ORDER."""
    x, labels = brightness_images(n)
    mask = np.isin(labels, keep)
    return x[mask], labels[mask]


def _csv_dataset(root: Path, x, labels, label_column) -> Path:
    write_folder_dataset(root, x, labels, names=MODEL_ORDER)
    rows = [f"{MODEL_ORDER[k]}/{i:03d}.png" for i, k in enumerate(labels)]
    pd.DataFrame({"path": rows, "label": label_column}).to_csv(root / "labels.csv", index=False)
    return root


def _by_path(ds, labels) -> list[int]:
    """Known true index of each listed file (files are named by their position in ``labels``)."""
    return [int(labels[int(Path(p).stem)]) for p in ds.paths]


# -- labels given as names map by name -----------------------------------------------------------


def test_csv_names_map_to_the_given_class_order_with_a_subset(tmp_path):
    x, labels = _subset(12)
    root = _csv_dataset(tmp_path, x, labels, [MODEL_ORDER[k] for k in labels])
    ds = open_dataset(root)
    assert resolve_class_names(ds, 3, MODEL_ORDER) == MODEL_ORDER
    assert ds.labels.tolist() == _by_path(ds, labels) and set(ds.labels.tolist()) == {0, 2}


def test_csv_names_without_an_order_and_a_missing_class_say_so(tmp_path):
    x, labels = _subset(12)
    ds = open_dataset(_csv_dataset(tmp_path, x, labels, [MODEL_ORDER[k] for k in labels]))
    with pytest.raises(DataError) as err:
        resolve_class_names(ds, 3)
    assert str(err.value) == (
        f"{tmp_path / 'labels.csv'}: data names 2 classes but the model outputs 3; "
        "pass --class-names with all 3 in model output order"
    )


def test_csv_names_without_an_order_use_sorted_names(tmp_path):
    x, labels = brightness_images(9)
    ds = open_dataset(_csv_dataset(tmp_path, x, labels, [MODEL_ORDER[k] for k in labels]))
    assert resolve_class_names(ds, 3) == sorted(MODEL_ORDER)
    assert [sorted(MODEL_ORDER)[k] for k in ds.labels] == [MODEL_ORDER[k] for k in _by_path(ds, labels)]


def test_csv_name_not_in_the_order_is_named(tmp_path):
    x, labels = _subset(6)
    names = [MODEL_ORDER[k] for k in labels]
    names[3] = "giraffe"
    ds = open_dataset(_csv_dataset(tmp_path, x, labels, names))
    with pytest.raises(DataError, match="'giraffe'") as err:
        resolve_class_names(ds, 3, MODEL_ORDER)
    assert str(tmp_path / "labels.csv") in str(err.value) and "--class-names" in str(err.value)


def test_csv_indices_stay_indices_and_class_names_only_name_them(tmp_path):
    x, labels = _subset(9)
    ds = open_dataset(_csv_dataset(tmp_path, x, labels, labels))
    assert resolve_class_names(ds, 3, MODEL_ORDER) == MODEL_ORDER
    assert ds.labels.tolist() == _by_path(ds, labels)


def test_csv_whole_float_indices_are_indices(tmp_path):
    x, labels = _subset(6)
    ds = open_dataset(_csv_dataset(tmp_path, x, labels, labels.astype(float)))
    assert resolve_class_names(ds, 3, MODEL_ORDER) == MODEL_ORDER and ds.labels.tolist() == _by_path(ds, labels)


def test_class_folders_map_by_name_to_the_given_order_with_a_subset(tmp_path):
    x, labels = _subset(12)
    write_folder_dataset(tmp_path, x, labels, names=MODEL_ORDER)  # folders zeta/ and mid/ only
    ds = open_dataset(tmp_path)
    assert resolve_class_names(ds, 3, MODEL_ORDER) == MODEL_ORDER
    assert ds.labels.tolist() == _by_path(ds, labels) and set(ds.labels.tolist()) == {0, 2}


def test_class_folders_in_another_order_than_class_names(tmp_path):
    x, labels = brightness_images(9)
    write_folder_dataset(tmp_path, x, labels, names=MODEL_ORDER)
    ds = open_dataset(tmp_path)
    assert resolve_class_names(ds, 3, MODEL_ORDER) == MODEL_ORDER
    assert ds.labels.tolist() == _by_path(ds, labels)


def test_class_folder_not_in_class_names_is_named(tmp_path):
    x, labels = brightness_images(9)
    write_folder_dataset(tmp_path, x, labels, names=("zeta", "alpha", "zebra"))
    with pytest.raises(DataError, match="class folder 'zebra' is not in --class-names") as err:
        resolve_class_names(open_dataset(tmp_path), 3, MODEL_ORDER)
    assert str(tmp_path) in str(err.value)


def test_npz_string_labels_map_to_its_own_class_names(tmp_path):
    x, labels = _subset(12)
    y = np.array([MODEL_ORDER[k] for k in labels])
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(MODEL_ORDER))
    ds = open_dataset(tmp_path / "d.npz")
    assert resolve_class_names(ds, 3) == MODEL_ORDER and ds.labels.tolist() == labels.tolist()
    np.savez(tmp_path / "e.npz", x=x, y=y.astype("S"))  # bytes, no class_names: --class-names gives the order
    ds = open_dataset(tmp_path / "e.npz")
    assert resolve_class_names(ds, 3, MODEL_ORDER) == MODEL_ORDER and ds.labels.tolist() == labels.tolist()


def test_npz_label_not_in_its_class_names_is_named(tmp_path):
    x, labels = _subset(6)
    names = [MODEL_ORDER[k] for k in labels]
    names[1] = "giraffe"
    y = np.array(names)
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(MODEL_ORDER))
    with pytest.raises(DataError, match="'giraffe' is not in the .npz's class_names") as err:
        resolve_class_names(open_dataset(tmp_path / "d.npz"), 3)
    assert str(tmp_path / "d.npz") in str(err.value)


@pytest.mark.parametrize(
    "names,message",
    [(["a", "b", "a"], "--class-names names 'a' twice"), (["a", "", "b"], "--class-names has an empty name")],
)
def test_bad_class_names_option(tiny, names, message):
    with pytest.raises(DataError, match=message):
        resolve_class_names(open_dataset(tiny["data"]), 3, names)


@pytest.mark.parametrize(
    "class_names,message",
    [(["zeta", "mid", "zeta"], "names 'zeta' twice"), (["zeta", " ", "mid"], "has an empty name")],
)
def test_bad_npz_class_names(tmp_path, class_names, message):
    x, labels = _subset(6)
    np.savez(tmp_path / "d.npz", x=x, y=labels, class_names=np.array(class_names))
    with pytest.raises(DataError, match=f"class_names {message}") as err:
        open_dataset(tmp_path / "d.npz")
    assert str(tmp_path / "d.npz") in str(err.value)


# -- duplicate and escaping paths ---------------------------------------------------------------


def test_identical_duplicate_paths_are_kept_once_and_noted(tmp_path):
    x, labels = brightness_images(6)
    root = _csv_dataset(tmp_path, x, labels, [MODEL_ORDER[k] for k in labels])
    table = pd.read_csv(root / "labels.csv")
    extra = table.iloc[[0, 2]].assign(path=lambda t: "./" + t["path"])  # same files, other spelling
    pd.concat([table, extra]).to_csv(root / "labels.csv", index=False)
    ds = open_dataset(root)
    assert ds.count == 6 and ds.paths == table["path"].tolist()
    assert ds.notes == ["labels.csv lists 2 paths more than once with the same label; each is counted once"]


def test_contradictory_duplicate_paths_are_refused(tmp_path):
    x, labels = brightness_images(6)
    root = _csv_dataset(tmp_path, x, labels, [MODEL_ORDER[k] for k in labels])
    table = pd.read_csv(root / "labels.csv")
    pd.concat([table, pd.DataFrame({"path": ["./" + table["path"][1]], "label": ["zeta"]})]).to_csv(
        root / "labels.csv", index=False)
    with pytest.raises(DataError) as err:
        open_dataset(root)
    assert str(err.value) == (
        f"{root / 'labels.csv'}: path 'alpha/001.png' is listed with different labels: 'alpha', 'zeta' "
        "(1 such path); give each file one label"
    )


@pytest.mark.parametrize("bad", ["../outside.png", "{abs}", "zeta/../../outside.png"])
def test_csv_paths_outside_the_data_folder_are_refused(tmp_path, bad):
    x, labels = brightness_images(6)
    root = tmp_path / "data"
    _csv_dataset(root, x, labels, labels)
    (tmp_path / "outside.png").write_bytes((root / "zeta" / "000.png").read_bytes())
    bad = bad.format(abs=tmp_path / "outside.png")
    table = pd.read_csv(root / "labels.csv")
    rows = pd.DataFrame({"path": [bad, "/etc/hostname"], "label": [0, 0]})
    pd.concat([table, rows]).to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError) as err:
        open_dataset(root)
    first = os.path.normpath(bad)
    assert str(err.value) == (
        f"{root / 'labels.csv'}: path {first!r} lies outside the data folder {root} (2 such paths); "
        "only files inside it are read"
    )


def test_symlink_out_of_a_class_folder_is_refused(tmp_path):
    x, labels = brightness_images(6)
    root = write_folder_dataset(tmp_path / "data", x, labels, names=MODEL_ORDER)
    (tmp_path / "secret.png").write_bytes((root / "zeta" / "000.png").read_bytes())
    (root / "mid" / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "alpha" / "inside.png").symlink_to(root / "zeta" / "000.png")  # a link within the folder is fine
    with pytest.raises(DataError) as err:
        open_dataset(root)
    assert str(err.value) == (
        f"{root}: path 'mid/link.png' lies outside the data folder {root} (1 such path); only files inside it are read"
    )


def test_csv_symlink_resolving_outside_is_refused(tmp_path):
    x, labels = brightness_images(3)
    root = _csv_dataset(tmp_path / "data", x, labels, labels)
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "alpha" / "001.png").unlink()
    (root / "alpha" / "001.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DataError, match=r"path 'alpha/001.png' lies outside the data folder .* \(1 such path\)"):
        open_dataset(root)


# -- hostile or malformed .npz files ------------------------------------------------------------


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "arrays,message",
    [
        (lambda x, y: {"x": x, "y": np.array(list(y), dtype=object)}, "array 'y' holds Python objects"),
        (lambda x, y: {"x": np.array(list(x) + [None], dtype=object)[:-1], "y": y}, "array 'x' holds Python objects"),
        (lambda x, y: {"x": x, "y": y, "class_names": np.array(["a", "b", "c"], dtype=object)},
         "array 'class_names' holds Python objects"),
        (lambda x, y: {"x": x, "y": y + 0.5}, "'y' holds 0.5, not a whole class index"),
        (lambda x, y: {"x": x, "y": y - 1}, "'y' holds -1; class indices start at 0"),
        (lambda x, y: {"x": x, "y": np.where(y == 0, np.nan, y)}, "'y' has 2 empty labels"),
        (lambda x, y: {"x": x.astype(str), "y": y}, "array 'x' has dtype <U"),
        (lambda x, y: {"x": x, "y": y, "class_names": np.array([["a", "b", "c"]])}, "'class_names' must be 1-D"),
        (lambda x, y: {"x": x, "y": y, "class_names": np.array([], dtype=str)}, "'class_names' must be 1-D"),
        (lambda x, y: {"x": x[:, :0], "y": y}, "'x' has an empty image size"),
    ],
    ids=["y objects", "x objects", "class_names objects", "y fractional", "y negative", "y nan", "x strings",
         "class_names 2-D", "class_names empty", "x empty images"],
)
def test_bad_npz_is_one_line(tmp_path, arrays, message):
    x, labels = brightness_images(6)
    path = _npz(tmp_path / "d.npz", **arrays(x, labels))
    with pytest.raises(DataError, match=message) as err:
        open_dataset(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


def test_npz_whole_float_and_bool_labels_are_indices(tmp_path):
    x, labels = brightness_images(6)
    ds = open_dataset(_npz(tmp_path / "d.npz", x=x, y=labels.astype(np.float32)))
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == labels.tolist()
    ds = open_dataset(_npz(tmp_path / "b.npz", x=x, y=labels == 2))
    assert ds.labels.tolist() == (labels == 2).astype(int).tolist()


# -- fingerprint and annotation hash ------------------------------------------------------------


def test_fingerprint_follows_listing_sizes_times_and_labels(tmp_path):
    x, labels = brightness_images(6)
    root = _csv_dataset(tmp_path, x, labels, labels)
    first = open_dataset(root).fingerprint()
    assert len(first) == 64 and set(first) <= set("0123456789abcdef")
    assert open_dataset(root).fingerprint() == first  # nothing changed: same print
    f = root / "zeta" / "000.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    touched = open_dataset(root).fingerprint()
    assert touched != first
    table = pd.read_csv(root / "labels.csv")
    table.loc[0, "label"] = 1
    table.to_csv(root / "labels.csv", index=False)
    assert open_dataset(root).fingerprint() not in (first, touched)


def test_fingerprint_does_not_depend_on_resolving_names(tmp_path):
    x, labels = _subset(6)
    root = _csv_dataset(tmp_path, x, labels, [MODEL_ORDER[k] for k in labels])
    ds = open_dataset(root)
    before = ds.fingerprint()
    resolve_class_names(ds, 3, MODEL_ORDER)
    assert ds.fingerprint() == before


def test_npz_fingerprint_follows_file_and_labels(tmp_path):
    x, labels = brightness_images(6)
    path = _npz(tmp_path / "d.npz", x=x, y=labels)
    first = open_dataset(path).fingerprint()
    assert open_dataset(path).fingerprint() == first
    st = path.stat()
    _npz(path, x=x, y=labels[::-1].copy())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same time and size: the labels still tell
    assert path.stat().st_size == st.st_size and open_dataset(path).fingerprint() != first


def test_annotation_report_has_the_csv_sha256(tiny):
    _, report = load_annotations(tiny["annotations"], open_dataset(tiny["data"]))
    assert report["sha256"] == hashlib.sha256(Path(tiny["annotations"]).read_bytes()).hexdigest()


def test_skipped_is_per_pass(tmp_path):
    x, labels = brightness_images(6)
    write_folder_dataset(tmp_path, x, labels)
    bad = sorted(tmp_path.rglob("*.png"))[0]
    bad.write_bytes(b"not an image")
    ds = open_dataset(tmp_path)
    for _ in range(2):
        list(ds.batches((16, 16, 3), (16, 16), batch_size=4))
        assert len(ds.skipped) == 1


# -- end to end through the CLI -----------------------------------------------------------------

RUN = ("--explain", "none", "--no-tensorboard", "--quiet", "--bootstrap", "10")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("trust_model") / "m.keras"
    brightness_model().save(path)
    return str(path)


def _accuracy(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["accuracy"]


@pytest.mark.parametrize("keep", [(0, 1, 2), (0, 2)], ids=["all classes", "subset"])
def test_cli_name_labels_in_another_alphabetical_order(tmp_path, model, keep):
    from audit.cli import main

    x, labels = _subset(18, keep)
    root = _csv_dataset(tmp_path / "data", x, labels, [MODEL_ORDER[k] for k in labels])
    out = tmp_path / "out"
    assert main(["run", model, str(root), "--out", str(out), "--class-names", ",".join(MODEL_ORDER), *RUN]) == 0
    assert _accuracy(out) == 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_names"] == MODEL_ORDER


@pytest.mark.parametrize(
    "make,extra,needles",
    [
        ("subset_no_order", [], ["labels.csv", "data names 2 classes but the model outputs 3", "--class-names"]),
        ("unknown_name", ["--class-names", ",".join(MODEL_ORDER)], ["labels.csv", "'giraffe'"]),
        ("escape", [], ["labels.csv", "'../outside.png'", "outside the data folder"]),
        ("contradictory", [], ["labels.csv", "'zeta/000.png'", "different labels"]),
        ("objects_npz", [], ["d.npz", "Python objects"]),
        ("duplicate_option", ["--class-names", "zeta,alpha,zeta"], ["--class-names", "'zeta' twice"]),
    ],
)
def test_cli_refusals_are_one_line_and_write_nothing(tmp_path, model, capsys, make, extra, needles):
    from audit.cli import main

    x, labels = _subset(6)
    root = tmp_path / "data"
    names = [MODEL_ORDER[k] for k in labels]
    if make == "unknown_name":
        names[-1] = "giraffe"
    _csv_dataset(root, x, labels, names)
    table = pd.read_csv(root / "labels.csv")
    if make == "escape":
        (tmp_path / "outside.png").write_bytes(b"x")
        pd.concat([table, pd.DataFrame({"path": ["../outside.png"], "label": ["zeta"]})]).to_csv(
            root / "labels.csv", index=False)
    if make == "contradictory":
        pd.concat([table, pd.DataFrame({"path": ["zeta/000.png"], "label": ["mid"]})]).to_csv(
            root / "labels.csv", index=False)
    data = root
    if make == "objects_npz":
        data = _npz(tmp_path / "d.npz", x=x, y=np.array(names, dtype=object))
    out = tmp_path / "out"
    code = main(["run", model, str(data), "--out", str(out), *extra, *RUN])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("keras-audit: error:"), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert not out.exists()
