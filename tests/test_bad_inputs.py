"""The bad-input matrix: every user mistake is exit 2, one line naming the file or option, no
traceback, and nothing written to ``--out`` (or nothing changed in what was already there).

Each case builds its own broken input from the tiny fixtures, so the oracle is the case itself:
the needles are the file or option a user must be told about.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from conftest import CLASSES, SIZE, brightness_images, brightness_model, write_folder_dataset

RUN = ("--quiet", "--no-tensorboard", "--explain", "none", "--bootstrap", "10")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    """Every broken input the cases below point at, built once."""
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("bad_inputs")
    good = brightness_model()
    nan = brightness_model()
    nan.get_layer("head").set_weights([np.full_like(w, np.nan) for w in nan.get_layer("head").get_weights()])
    nan.save(root / "nan.keras")
    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Lambda(lambda t: t + 1), keras.layers.Flatten(),
                      keras.layers.Dense(3, activation="softmax")]).save(root / "lambda.keras")
    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(3, 1)]).save(root / "segmenter.keras")
    keras.Sequential([keras.Input((SIZE, SIZE, 2)), keras.layers.Flatten(),
                      keras.layers.Dense(3, activation="softmax")]).save(root / "two_channel.keras")
    keras.Sequential([keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(3, activation="softmax")]).save(root / "any_size.keras")
    (root / "truncated.keras").write_bytes((root / "nan.keras").read_bytes()[:500])
    (root / "empty.keras").write_bytes(b"")
    (root / "model.onnx").write_bytes(b"onnx")
    (root / "not_savedmodel").mkdir()
    (root / "not_savedmodel" / "weights.bin").write_bytes(b"x")
    tf.saved_model.save(good, str(root / "savedmodel"))

    x, labels = brightness_images(12)
    data = tiny["data"]

    def labels_csv(name: str, rows: list[tuple[str, str]]) -> Path:
        d = root / name
        shutil.copytree(data, d)
        pd.DataFrame(rows, columns=["path", "label"]).to_csv(d / "labels.csv", index=False)
        return d

    csv_rows = [(p, CLASSES[k]) for p, k in zip(tiny["paths"], tiny["labels"])]
    labels_csv("escape_dotdot", [*csv_rows, ("../../etc/passwd", CLASSES[0])])
    labels_csv("escape_absolute", [*csv_rows, ("/etc/hostname", CLASSES[0])])
    other = CLASSES[2] if csv_rows[0][1] != CLASSES[2] else CLASSES[1]
    labels_csv("contradictory", [*csv_rows, (csv_rows[0][0], other)])
    labels_csv("unknown_name", [*csv_rows[:-1], (csv_rows[-1][0], "giraffe")])
    (root / "no_label_col").mkdir()
    (root / "no_label_col" / "labels.csv").write_text("path,klass\na.png,x\n")
    (root / "no_rows").mkdir()
    (root / "no_rows" / "labels.csv").write_text("path,label\n")
    link = root / "symlink_out"
    shutil.copytree(data, link)
    outside = root / "outside.png"
    shutil.copy(next(data.rglob("*.png")), outside)
    (link / CLASSES[0] / "zz_link.png").symlink_to(outside)

    np.savez(root / "objects.npz", x=x, y=np.array(list(labels), dtype=object))
    np.savez(root / "no_y.npz", x=x)
    np.savez(root / "mismatch.npz", x=x, y=labels[:5])
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 not really")
    (root / "data.txt").write_text("hello")
    (root / "empty_dir").mkdir()
    unreadable = root / "unreadable"
    for k in CLASSES:
        (unreadable / k).mkdir(parents=True)
        (unreadable / k / "x.png").write_bytes(b"\x89PNG broken")
    write_folder_dataset(root / "extra_folder", x, labels, names=(*CLASSES[:2], "zebra"))

    ann = pd.DataFrame({"path": tiny["paths"], "site": "a"})
    ann.rename(columns={"path": "file"}).to_csv(root / "ann_no_path.csv", index=False)
    ann.assign(path=[f"other/{p}" for p in tiny["paths"]]).to_csv(root / "ann_nomatch.csv", index=False)
    pd.concat([ann, ann.head(2)]).to_csv(root / "ann_dup.csv", index=False)
    ann.assign(pred=1).to_csv(root / "ann_reserved.csv", index=False)
    (root / "ann_binary.csv").write_bytes(b"\xff\xfe\x00\x81\x00garbage\x00")
    (root / "a_file").write_text("not a folder")
    (root / "precious").mkdir()
    (root / "precious" / "thesis.tex").write_text("keep me")
    (root / "foreign").mkdir()
    (root / "foreign" / "manifest.json").write_text('{"name": "my web app", "version": 3}')
    (root / "foreign" / "tensorboard").mkdir()
    (root / "foreign" / "tensorboard" / "notes.txt").write_text("mine")
    return root


def _model_cases(m: str, d: str, f: Path):
    return [
        ("model missing", [str(f / "nope.keras"), d], ["nope.keras", "does not exist"]),
        ("model truncated", [str(f / "truncated.keras"), d], ["truncated.keras", "corrupt"]),
        ("model empty file", [str(f / "empty.keras"), d], ["empty.keras", "empty"]),
        ("model unknown format", [str(f / "model.onnx"), d], ["model.onnx", "format"]),
        ("model dir not savedmodel", [str(f / "not_savedmodel"), d], ["not_savedmodel", "saved_model.pb"]),
        ("model savedmodel without --unsafe", [str(f / "savedmodel"), d], ["savedmodel", "--unsafe"]),
        ("model not a classifier", [str(f / "segmenter.keras"), d], ["segmenter.keras", "classifier"]),
        ("model lambda layer", [str(f / "lambda.keras"), d], ["lambda.keras", "Lambda", "--unsafe"]),
        ("model 2-channel input", [str(f / "two_channel.keras"), d], ["two_channel.keras", "2-channel"]),
        ("model without fixed size", [str(f / "any_size.keras"), d], ["any_size.keras", "fixed size"]),
        ("model NaN outputs", [str(f / "nan.keras"), d], ["nan.keras", "NaN"]),
        ("gradcam on savedmodel", [str(f / "savedmodel"), d, "--unsafe", "--explain", "gradcam"],
         ["savedmodel", "layers"]),
        ("layer does not exist", [m, d, "--explain", "gradcam", "--layer", "conv99"], ["conv99", "does not exist"]),
    ]


def _data_cases(m: str, d: str, f: Path):
    return [
        ("data missing", [m, str(f / "missing_dir")], ["missing_dir", "does not exist"]),
        ("data empty dir", [m, str(f / "empty_dir")], ["empty_dir", "empty"]),
        ("data wrong suffix", [m, str(f / "data.txt")], ["data.txt", ".npz"]),
        ("labels.csv without label column", [m, str(f / "no_label_col")], ["labels.csv", "label"]),
        ("labels.csv without rows", [m, str(f / "no_rows")], ["labels.csv", "no rows"]),
        ("labels.csv path with ..", [m, str(f / "escape_dotdot")], ["labels.csv", "../../etc/passwd", "outside"]),
        ("labels.csv absolute path", [m, str(f / "escape_absolute")], ["labels.csv", "/etc/hostname", "outside"]),
        ("labels.csv contradictory duplicate", [m, str(f / "contradictory")], ["labels.csv", "c0_dark/000.png"]),
        ("labels.csv unknown class name", [m, str(f / "unknown_name"), "--class-names", ",".join(CLASSES)],
         ["giraffe"]),
        ("symlink out of the data folder", [m, str(f / "symlink_out")], ["zz_link.png", "outside"]),
        ("npz object arrays", [m, str(f / "objects.npz")], ["objects.npz", "object"]),
        ("npz without y", [m, str(f / "no_y.npz")], ["no_y.npz", "'y'"]),
        ("npz x and y disagree", [m, str(f / "mismatch.npz")], ["mismatch.npz", "(N,)"]),
        ("npz corrupt", [m, str(f / "corrupt.npz")], ["corrupt.npz", "corrupt"]),
        ("no image readable", [m, str(f / "unreadable")], ["unreadable", "none of the 3 images"]),
        ("folder not in --class-names", [m, str(f / "extra_folder"), "--class-names", ",".join(CLASSES)], ["zebra"]),
        ("duplicate class names", [m, d, "--class-names", "a,b,a"], ["--class-names", "'a'"]),
        ("empty class name", [m, d, "--class-names", "a,,b"], ["--class-names", "empty"]),
        ("class count differs", [m, d, "--class-names", "a,b"], ["2", "outputs 3"]),
    ]


def _annotation_cases(m: str, d: str, f: Path):
    return [
        ("annotations missing", [m, d, "--annotations", str(f / "none.csv")], ["none.csv", "does not exist"]),
        ("annotations without path", [m, d, "--annotations", str(f / "ann_no_path.csv")],
         ["ann_no_path.csv", "'path'"]),
        ("annotations match nothing", [m, d, "--annotations", str(f / "ann_nomatch.csv")],
         ["ann_nomatch.csv", "matches"]),
        ("annotations duplicate rows", [m, d, "--annotations", str(f / "ann_dup.csv")], ["ann_dup.csv", "already"]),
        ("annotations reserved column", [m, d, "--annotations", str(f / "ann_reserved.csv")],
         ["ann_reserved.csv", "pred"]),
        ("annotations not text", [m, d, "--annotations", str(f / "ann_binary.csv")], ["ann_binary.csv", "cannot read"]),
    ]


def _option_cases(m: str, d: str, f: Path):
    return [
        ("--batch-size 0", [m, d, "--batch-size", "0"], ["--batch-size", "at least 1"]),
        ("--seed -1", [m, d, "--seed", "-1"], ["--seed", "-1"]),
        ("--bootstrap -5", [m, d, "--bootstrap", "-5"], ["--bootstrap", "-5"]),
        ("--min-slice-size -1", [m, d, "--min-slice-size", "-1"], ["--min-slice-size", "-1"]),
        ("--explain-limit -3", [m, d, "--explain-limit", "-3"], ["--explain-limit", "-3"]),
        ("--rescale abc", [m, d, "--rescale", "abc"], ["--rescale", "abc"]),
        ("--rescale 0", [m, d, "--rescale", "0"], ["--rescale", "positive"]),
        ("--explain lime", [m, d, "--explain", "lime"], ["--explain", "lime"]),
        ("--occlusion-patch too big", [m, d, "--explain", "occlusion", "--occlusion-patch", "99"],
         ["--occlusion-patch", "16"]),
        ("--seed not a number", [m, d, "--seed", "x"], ["--seed", "'x'"]),
    ]


def _store_cases(m: str, d: str, f: Path):
    return [
        ("--out is a file", [m, d, "--out", str(f / "a_file")], ["a_file", "file"]),
        ("--out not a store", [m, d, "--out", str(f / "precious")], ["precious", "not a keras-audit"]),
        ("--out holds a foreign manifest.json", [m, d, "--out", str(f / "foreign")], ["foreign", "not a keras-audit"]),
    ]


def _all_run_cases():
    """(id, builder) pairs; builders take (model, data, files) so ids are known at collection time."""
    groups = (_model_cases, _data_cases, _annotation_cases, _option_cases, _store_cases)
    return [(group, i) for group in groups for i in range(len(group("m", "d", Path("."))))]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "group,i", _all_run_cases(), ids=[g("m", "d", Path("."))[i][0] for g, i in _all_run_cases()]
)
def test_run_refuses_with_one_line(group, i, files, tiny, tmp_path, capsys):
    _, args, needles = group(str(tiny["model"]), str(tiny["data"]), files)[i]
    if "--out" in args:
        out = Path(args[args.index("--out") + 1])
        before = _snapshot(out) if out.is_dir() else out.read_bytes()
    else:
        out = tmp_path / "out"
        args = [*args, "--out", str(out)]
        before = None
    try:
        code = main(["run", *RUN, *args])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    if os.environ.get("PRINT_MATRIX"):  # PRINT_MATRIX=1 pytest -s -k refuses: the matrix as a table
        with capsys.disabled():
            print(f"\nMATRIX | {group('m', 'd', files)[i][0]} | {code} | {err[0] if err else ''}")
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("keras-audit: error:"), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    if before is None:
        assert not out.exists(), "nothing may be written before the inputs are validated"
    else:
        assert (_snapshot(out) if out.is_dir() else out.read_bytes()) == before, "what was there must be untouched"


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["report", "{missing}"], ["missing", "does not exist"]),
        (["report", "{precious}"], ["precious", "not a keras-audit"]),
        (["tensorboard", "{missing}"], ["missing"]),
        (["compare", "{precious}", "{missing}"], ["precious"]),
        (["discover", "{precious}"], ["precious", "not a keras-audit"]),
        (["discover", "{precious}/thesis.tex"], ["thesis.tex", "is a file, not a results store"]),
        (["explain", "{precious}", "--indices", "1"], ["precious", "not a keras-audit"]),
        (["merge", "{missing}", "{precious}"], ["precious", "not a keras-audit"]),
        (["app", "a", "b", "c"], ["at most two"]),
        (["app", "--port", "70000"], ["--port", "65535"]),
        (["bogus"], ["bogus"]),
    ],
    ids=["report missing", "report not a store", "tensorboard missing", "compare not a store",
         "discover not a store", "discover a file", "explain not a store", "merge not a store", "app three runs",
         "app bad port", "unknown command"],
)
def test_other_commands_refuse_with_one_line(argv, needles, files, capsys):
    argv = [a.format(missing=files / "missing", precious=files / "precious") for a in argv]
    before = _snapshot(files / "precious")
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("keras-audit: error:"), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert _snapshot(files / "precious") == before
    assert not (files / "missing").exists()


def test_matrix_is_at_least_forty_cases():
    assert len(_all_run_cases()) >= 40


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    import audit

    assert capsys.readouterr().out.startswith(f"keras-audit {audit.__version__} (keras ")


def test_out_below_a_file_is_one_line(tiny, files, capsys):
    """An operating-system refusal to create --out is the user's to fix: one line, not a traceback."""
    out = files / "a_file" / "out"
    code = main(["run", str(tiny["model"]), str(tiny["data"]), "--out", str(out), *RUN])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "a_file" in err[0], err
    assert (files / "a_file").read_text() == "not a folder"


def test_out_as_a_url_is_one_line_and_creates_nothing(tiny, tmp_path, monkeypatch, capsys):
    """DATA may be a URL; --out may not: pathlib would turn s3://b/x into the local folder s3:/b/x."""
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(tiny["model"]), str(tiny["data"]), "--out", "s3://bucket/out", *RUN])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "s3://bucket/out" in err[0] and "URL" in err[0], err
    assert not any(tmp_path.iterdir())


def test_a_store_folder_whose_name_looks_like_a_uri_scheme_is_read_back(tiny, tmp_path, monkeypatch):
    """pandas and pyarrow parse a relative path 'run:1/x.parquet' as a URI of scheme 'run': the store
    reads its tables through open files, so such a folder works as any other (oracle: the same run
    into a plain folder name)."""
    from audit.store.reader import Reader

    monkeypatch.chdir(tmp_path)
    plain, odd = Path("plain"), Path("run:1")
    for out in (plain, odd):
        assert main(["run", str(tiny["model"]), str(tiny["data"]), "--out", str(out), *RUN]) == 0
    pd.testing.assert_frame_equal(Reader(odd).predictions, Reader(plain).predictions)
    assert main(["report", str(odd)]) == 0 and (odd / "report.html").is_file()
