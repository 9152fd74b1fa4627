"""Datasets and annotations: every layout, streaming, and every refusal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.errors import DataError
from audit.io.annotations import load_annotations
from audit.io.data import open_dataset, resolve_class_names
from conftest import CLASSES, SIZE, brightness_images, write_folder_dataset


def _all(ds, shape=(SIZE, SIZE, 3), **kw):
    batches = list(ds.batches(shape, shape[:2], batch_size=7, **kw))
    return (
        np.concatenate([b.index for b in batches]),
        np.concatenate([b.x for b in batches]),
        np.concatenate([b.stored for b in batches]),
        np.concatenate([b.builtin for b in batches]),
    )


def test_class_folders_stream_exact_pixels(tiny):
    ds = open_dataset(tiny["data"])
    assert ds.kind == "folders" and ds.class_names == list(CLASSES) and ds.count == 30
    # Listing order: sorted class folders, then sorted files.
    order = sorted(range(30), key=lambda i: (tiny["labels"][i], i))
    assert ds.paths == [tiny["paths"][i] for i in order]
    index, x, stored, builtin = _all(ds, rescale=0.5)
    assert index.tolist() == list(range(30))
    np.testing.assert_array_equal(stored, tiny["x"][order])
    np.testing.assert_allclose(x, tiny["x"][order] * 0.5)
    grey = tiny["x"][order].astype(np.float64) @ np.array([0.2989, 0.587, 0.114])
    np.testing.assert_allclose(builtin[:, 0], 1.0)  # aspect ratio w/h
    np.testing.assert_allclose(builtin[:, 1], SIZE)  # sqrt(h*w)
    np.testing.assert_allclose(builtin[:, 2], grey.mean(axis=(1, 2)) / 255, atol=2e-3)


def test_labels_csv_with_names_and_indices(tmp_path):
    x, labels = brightness_images(6)
    write_folder_dataset(tmp_path / "imgs", x, labels)
    rows = [f"{CLASSES[k]}/{i:03d}.png" for i, k in enumerate(labels)]
    table = pd.DataFrame({"path": rows, "label": [CLASSES[k] for k in labels]})
    table.to_csv(tmp_path / "imgs" / "labels.csv", index=False)
    ds = open_dataset(tmp_path / "imgs")
    assert ds.kind == "csv" and ds.class_names == sorted(CLASSES) and ds.paths == rows
    assert [ds.class_names[k] for k in ds.labels] == [CLASSES[k] for k in labels]
    pd.DataFrame({"path": ["./imgs/" + r for r in rows], "label": labels}).to_csv(tmp_path / "idx.csv", index=False)
    ds = open_dataset(tmp_path / "idx.csv")
    assert ds.class_names is None and ds.labels.tolist() == labels.tolist() and ds.paths == [f"imgs/{r}" for r in rows]
    assert resolve_class_names(ds, 3) == ["class_0", "class_1", "class_2"]


def test_npz_streams_in_order_and_resizes(tmp_path):
    x, labels = brightness_images(20)
    np.savez_compressed(tmp_path / "d.npz", x=x, y=labels, class_names=np.array(CLASSES))
    ds = open_dataset(tmp_path / "d.npz")
    assert ds.kind == "npz" and ds.class_names == list(CLASSES) and ds.count == 20
    index, xs, stored, _ = _all(ds)
    np.testing.assert_array_equal(index, np.arange(20))
    np.testing.assert_array_equal(stored, x)
    # A subset, and a resize to a non-square model input with one channel.
    sub = list(ds.batches((8, 12, 1), (8, 12), batch_size=4, indices=np.array([3, 7, 19])))
    assert np.concatenate([b.index for b in sub]).tolist() == [3, 7, 19]
    assert sub[0].x.shape[1:] == (8, 12, 1) and sub[0].stored.shape[1:] == (8, 12, 3)


def test_grayscale_and_rgba_images_are_converted(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((10, 20), 100, np.uint8)).save(tmp_path / "a" / "grey.png")
    Image.fromarray(np.full((20, 10, 4), 200, np.uint8)).save(tmp_path / "b" / "rgba.png")
    ds = open_dataset(tmp_path)
    batch = next(ds.batches((SIZE, SIZE, 3), (SIZE, SIZE), batch_size=4))
    assert batch.channels.tolist() == [1, 4]
    np.testing.assert_allclose(batch.x[0], 100, atol=1e-3)
    np.testing.assert_allclose(batch.x[1], 200, atol=1e-3)
    np.testing.assert_allclose(batch.builtin[:, 0], [2.0, 0.5])  # aspect ratio of the original


def test_corrupt_images_are_skipped_and_listed(tmp_path):
    x, labels = brightness_images(9)
    write_folder_dataset(tmp_path, x, labels)
    bad = sorted((tmp_path / CLASSES[1]).iterdir())[0]
    bad.write_bytes(b"not an image")
    ds = open_dataset(tmp_path)
    index, *_ = _all(ds)
    bad_index = ds.paths.index(bad.relative_to(tmp_path).as_posix())
    assert bad_index not in index and len(index) == 8
    assert len(ds.skipped) == 1 and ds.skipped[0]["index"] == bad_index
    assert ds.skipped[0]["path"] == ds.paths[bad_index]
    assert ds.skipped[0]["reason"].startswith("cannot decode: Unknown image file format")


def test_skipped_files_say_why(tmp_path):
    """A truncated PNG, a missing file and a folder each get their own reason, in listing order."""
    from PIL import Image

    x, _ = brightness_images(2)
    Image.fromarray(x[0]).save(tmp_path / "good.png")
    Image.fromarray(x[1]).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "folder.png").mkdir()
    pd.DataFrame({"path": ["good.png", "cut.png", "gone.png", "folder.png", "whole.png"],
                  "label": [0, 1, 0, 1, 0]}).to_csv(tmp_path / "labels.csv", index=False)
    ds = open_dataset(tmp_path)
    index, *_ = _all(ds)
    assert index.tolist() == [0, 4]
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    assert [s["index"] for s in ds.skipped] == [1, 2, 3]
    assert reasons["cut.png"].startswith("cannot decode: Invalid PNG data"), reasons
    assert reasons["gone.png"] == "file not found"
    assert reasons["folder.png"] == "cannot read: Is a directory"
    assert all("\n" not in r and "[Op:" not in r and "function_node" not in r for r in reasons.values())


def _one_image_oracle(pixels: np.ndarray, size, channels, stored_shape, prep):
    """The input pipeline as it was before batching (issue 13), one image at a time, eagerly:
    model input, stored copy and built-in annotations, which the batched pipeline must match bit
    for bit (a store written before and after that change must be byte-identical)."""
    import tensorflow as tf

    img = tf.cast(tf.constant(pixels), tf.float32)[..., :3]
    img = img[..., :1] if img.shape[-1] == 2 else img
    rgb = tf.image.grayscale_to_rgb(img) if img.shape[-1] == 1 else img
    hw = tf.cast(tf.shape(rgb)[:2], tf.float32)
    grey = tf.image.rgb_to_grayscale(rgb)
    builtin = tf.stack([hw[1] / hw[0], tf.sqrt(hw[0] * hw[1]), tf.reduce_mean(grey) / 255.0,
                        tf.math.reduce_std(grey) / 255.0])
    resized = prep.geometry(rgb, size, size)
    x = prep.apply(tf.image.rgb_to_grayscale(resized) if channels == 1 else resized)
    stored = tf.cast(tf.clip_by_value(tf.round(prep.geometry(rgb, stored_shape, size)), 0, 255), tf.uint8)
    return x.numpy(), stored.numpy(), builtin.numpy()


@pytest.mark.parametrize("resize", ["stretch", "pad", "crop"])
def test_batched_pipeline_gives_the_bits_of_one_image_at_a_time(tmp_path, resize):
    """Images of the model's size (whose annotations are computed for the whole batch) among
    others, in every mode, with a stored copy at the input's size and at a smaller one, for
    three- and one-channel models; at an odd size and at one whose pixel count passes 1024."""
    from PIL import Image

    from audit.io.preprocess import preset

    rng = np.random.default_rng(5)
    modes = ["RGB", "L", "LA", "RGBA", "RGB", "RGB"]
    prep = preset("caffe", resize)  # BGR, per-channel mean: every arithmetic op
    for model_size, other in (((12, 10), [(7, 15), (24, 20)]), ((45, 47), [(30, 9)])):
        root = tmp_path / f"{model_size[0]}"
        (root / "a").mkdir(parents=True)
        sizes, originals = [model_size, model_size, *other], []
        for i in range(11):
            h, w = sizes[i % len(sizes)] if i < 8 else model_size  # the last batch: model's size only
            mode = modes[i % len(modes)]
            pixels = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
            originals.append(pixels)
            Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(root / "a" / f"{i:02d}.png")
        ds = open_dataset(root)
        half = (model_size[0] // 2, model_size[1] // 2)
        for shape, stored_shape in (((*model_size, 3), model_size), ((*model_size, 3), half),
                                    ((*model_size, 1), model_size)):
            batches = list(ds.batches(shape, stored_shape, batch_size=4, preprocessing=prep))
            assert np.concatenate([b.index for b in batches]).tolist() == list(range(11))
            got = [np.concatenate([getattr(b, k) for b in batches]) for k in ("x", "stored", "builtin")]
            for i, pixels in enumerate(originals):
                want = _one_image_oracle(pixels, shape[:2], shape[2], stored_shape, prep)
                for name, g, e in zip(("x", "stored", "builtin"), got, want):
                    assert g[i].dtype == e.dtype and g[i].tobytes() == e.tobytes(), (name, i, shape, stored_shape)


@pytest.mark.parametrize("resize", ["stretch", "pad", "crop"])
def test_geometry_to_the_own_size_is_the_identity(resize):
    """Why the pipeline may skip the resize of an image already of the model's size: the
    antialiased resize then weighs each pixel 1 and its neighbours 0, so every bit stays."""
    from audit.io.preprocess import Preprocessing

    rng = np.random.default_rng(2)
    for h, w in ((1, 1), (5, 9), (64, 64), (31, 17)):
        for pixels in (rng.integers(0, 256, (h, w, 3)), rng.normal(0, 1e3, (h, w, 3))):
            x = pixels.astype(np.float32)
            y = np.asarray(Preprocessing(resize=resize).geometry(x, (h, w), (h, w)))
            assert y.tobytes() == x.tobytes(), (h, w, resize)


def test_annotations_by_path_keep_numbers_and_count_gaps(tiny, tmp_path):
    ds = open_dataset(tiny["data"])
    table = pd.read_csv(tiny["annotations"])
    table = pd.concat([table.iloc[2:], pd.DataFrame({"path": ["nowhere.png"], "site": ["z"], "score": [0.0]})])
    table.to_csv(tmp_path / "a.csv", index=False)
    aligned, report = load_annotations(tmp_path / "a.csv", ds)
    assert report["missing_rows"] == 2 and report["extra_rows"] == 1 and report["columns"] == ["site", "score"]
    assert pd.api.types.is_numeric_dtype(aligned["score"])
    expected = dict(zip(table["path"], table["score"]))
    for i, p in enumerate(ds.paths):
        got = aligned["score"].iloc[i]
        assert (np.isnan(got) and p not in expected) or got == expected[p]


def test_annotations_for_npz_by_index_or_row_order(tmp_path):
    x, labels = brightness_images(5)
    np.savez(tmp_path / "d.npz", x=x, y=labels)
    ds = open_dataset(tmp_path / "d.npz")
    pd.DataFrame({"index": [4, 0], "g": ["p", "q"]}).to_csv(tmp_path / "a.csv", index=False)
    aligned, report = load_annotations(tmp_path / "a.csv", ds)
    assert aligned["g"].tolist()[0] == "q" and aligned["g"].tolist()[4] == "p" and report["missing_rows"] == 3
    pd.DataFrame({"g": list("abcde")}).to_csv(tmp_path / "b.csv", index=False)
    assert load_annotations(tmp_path / "b.csv", ds)[0]["g"].tolist() == list("abcde")


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "empty"),
        (lambda p: ((p / "noimg" / "a").mkdir(parents=True), (p / "noimg" / "a" / "x.txt").write_text("x"),
                    p / "noimg")[2], "no images found"),
        (lambda p: ((p / "l.csv").write_text("file,label\na.png,0\n"), p / "l.csv")[1], "missing \\['path'\\]"),
        (lambda p: ((p / "d.txt").write_text("x"), p / "d.txt")[1], "must be an .npz"),
        (lambda p: ((p / "d.npz").write_bytes(b"garbage"), p / "d.npz")[1], "truncated or corrupt"),
        (lambda p: (np.savez(p / "d.npz", x=np.zeros((3, 4, 4, 3))), p / "d.npz")[1], "'y' is missing"),
        (lambda p: (np.savez(p / "d.npz", x=np.zeros((3, 4, 4, 3)), y=np.zeros(2, int)), p / "d.npz")[1], "must be"),
    ],
)
def test_bad_data(tmp_path, setup, message):
    path = setup(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        open_dataset(path)
    assert str(path) in str(err.value)


def test_class_count_must_match_model(tiny, tmp_path):
    ds = open_dataset(tiny["data"])
    with pytest.raises(DataError, match="data names 3 classes but the model outputs 4; pass --class-names with all 4"):
        resolve_class_names(ds, 4)
    x, labels = brightness_images(3)
    np.savez(tmp_path / "d.npz", x=x, y=labels, class_names=np.array(["k0", "k1", "k2", "k3"]))
    with pytest.raises(DataError, match="data has 4 classes .* but the model outputs 3"):
        resolve_class_names(open_dataset(tmp_path / "d.npz"), 3)


@pytest.mark.parametrize(
    "content,message",
    [
        ("file,site\nx.png,a\n", "needs a 'path' column"),
        ("path,site\nunknown/x.png,a\n", "no annotation row matches"),
        ("path,label\nc0_dark/000.png,a\n", "clash with reserved"),
    ],
)
def test_bad_annotations(tiny, tmp_path, content, message):
    (tmp_path / "a.csv").write_text(content)
    with pytest.raises(DataError, match=message) as err:
        load_annotations(tmp_path / "a.csv", open_dataset(tiny["data"]))
    assert str(tmp_path / "a.csv") in str(err.value)
