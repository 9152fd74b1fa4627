"""DATA on an object store: an S3 server on 127.0.0.1 (moto) read through s3fs, as a user's bucket is.

The oracle is the same files on local disk: a remote dataset lists the examples the local one lists,
in the same order, and a run on it writes the local run's predictions, stored images and embeddings
byte for byte (only the manifest's source and fingerprint differ); its unreadable files are skipped
with the local reasons; its shards merge into the single local run's store. Refusals are one line,
exit 2, nothing written.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from audit.io.data import open_dataset
from audit.store import schema
from conftest import CLASSES, free_port, write_folder_dataset
from test_shards import assert_equivalent_stores, run_args

BUCKET = "audit-data"
RUN = ("--explain", "none", "--no-tensorboard", "--quiet", "--bootstrap", "10")
SAME = (schema.PREDICTIONS, schema.IMAGES, schema.EMBEDDINGS)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 filesystem on a moto server of this process, reached as any S3 is: AWS_* variables."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nowhere = tmp_path_factory.mktemp("aws") / "none"  # no ~/.aws of this machine's user takes part
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_CONFIG_FILE": str(nowhere),
           "AWS_SHARED_CREDENTIALS_FILE": str(nowhere), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            s3fs.S3FileSystem.clear_instance_cache()  # none made before, for another endpoint
            fs = s3fs.S3FileSystem()
            fs.mkdir(BUCKET)
            yield fs
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        server.stop()


def upload(fs, local: Path, prefix: str) -> str:
    """Every file under ``local`` (or ``local`` itself) to ``BUCKET/prefix``; the s3:// URL of it."""
    files = [local] if local.is_file() else [p for p in sorted(local.rglob("*")) if p.is_file()]
    fs.pipe({f"{BUCKET}/{prefix}" + ("" if p == local else f"/{p.relative_to(local).as_posix()}"): p.read_bytes()
             for p in files})
    return f"s3://{BUCKET}/{prefix}"


def run(model: Path, data, out: Path, *extra: str) -> dict:
    assert main(["run", str(model), str(data), "--out", str(out), *RUN, *extra]) == 0
    return json.loads((out / schema.MANIFEST).read_text())


def assert_same_store(local: Path, remote: Path, url: str) -> None:
    for rel in SAME:
        assert (remote / rel).read_bytes() == (local / rel).read_bytes(), rel
    a, b = (json.loads((s / schema.MANIFEST).read_text())["dataset"] for s in (local, remote))
    assert b["source"] == url and a["source"] != url
    assert {k: v for k, v in b.items() if k not in ("source", "fingerprint")} == \
        {k: v for k, v in a.items() if k not in ("source", "fingerprint")}


def assert_one_line(code: int, capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("keras-audit: error:"), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


# -- listing -----------------------------------------------------------------------------------
def test_listing_follows_the_local_rules(s3, tiny, tmp_path):
    """Every sub-folder a class (an empty one too, hidden ones not), images at any depth in pathlib's
    order (c/sub/1.png before c/sub.png), suffixes in any case, stray files left out."""
    import boto3

    root = tmp_path / "odd"
    shutil.copytree(tiny["data"], root)
    png = next(tiny["data"].rglob("*.png")).read_bytes()
    for rel in ("c1_mid/sub/1.png", "c1_mid/sub.png", "c2_light/UPPER.PNG", "c2_light/.hidden.png",
                ".cache/c.png", "c0_dark/notes.txt", "stray.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png)
    (root / "c3_empty").mkdir()
    url = upload(s3, root, "odd")
    boto3.client("s3").put_object(Bucket=BUCKET, Key="odd/c3_empty/", Body=b"")  # a console's folder marker
    here, there = open_dataset(root), open_dataset(url)
    assert there.kind == here.kind == "folders"
    assert there.class_names == here.class_names == [*CLASSES, "c3_empty"]
    assert there.paths == here.paths and there.paths.index("c1_mid/sub/1.png") < there.paths.index("c1_mid/sub.png")
    np.testing.assert_array_equal(there.labels, here.labels)
    assert there.describe() == {**here.describe(), "source": url}
    # A rewritten object changes the print (its ETag), as a touched local file does: --resume refuses it.
    before = there.fingerprint()
    assert open_dataset(url).fingerprint() == before
    s3.pipe(f"{BUCKET}/odd/{there.paths[0]}", png + b"\0")
    assert open_dataset(url).fingerprint() != before
    # file:// is a local path, read by the local reader
    assert open_dataset(f"file://{root}").paths == here.paths


# -- runs equal the local runs -------------------------------------------------------------------
@pytest.mark.slow
def test_class_folders_on_s3_give_the_local_store(s3, tiny, tmp_path):
    url = upload(s3, tiny["data"], "folders")
    run(tiny["model"], tiny["data"], tmp_path / "local")
    manifest = run(tiny["model"], url, tmp_path / "remote")
    assert manifest["dataset"]["count"] == 30 and manifest["complete"]
    assert_same_store(tmp_path / "local", tmp_path / "remote", url)


@pytest.mark.slow
def test_labels_csv_and_npz_on_s3_give_the_local_stores(s3, tiny, tmp_path):
    # labels.csv, with a listed file that is not there (skipped as "file not found", here and there)
    csv_dir = tmp_path / "csv"
    shutil.copytree(tiny["data"], csv_dir)
    rows = [(p, CLASSES[k]) for p, k in zip(tiny["paths"], tiny["labels"])][::-1] + [("c0_dark/gone.png", CLASSES[0])]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(csv_dir / "labels.csv", index=False)
    url = upload(s3, csv_dir, "csv")
    local = run(tiny["model"], csv_dir, tmp_path / "csv_local")
    remote = run(tiny["model"], url, tmp_path / "csv_remote")
    assert_same_store(tmp_path / "csv_local", tmp_path / "csv_remote", f"{url}/labels.csv")
    assert remote["dataset"]["skipped"] == local["dataset"]["skipped"] == [
        {"index": 30, "path": "c0_dark/gone.png", "reason": "file not found"}]
    assert open_dataset(f"{url}/labels.csv").paths == open_dataset(csv_dir).paths  # the CSV itself as DATA

    npz = tmp_path / "data.npz"
    buf = io.BytesIO()
    np.savez(buf, x=tiny["x"], y=np.asarray(tiny["labels"]), class_names=np.array(CLASSES))
    npz.write_bytes(buf.getvalue())
    url = upload(s3, npz, "arrays/data.npz")
    run(tiny["model"], npz, tmp_path / "npz_local")
    run(tiny["model"], url, tmp_path / "npz_remote")
    assert_same_store(tmp_path / "npz_local", tmp_path / "npz_remote", url)


@pytest.mark.slow
def test_a_corrupt_object_is_skipped_with_the_local_reason(s3, tiny, tmp_path):
    from conftest import brightness_images

    x, labels = brightness_images(9, seed=3)
    data = write_folder_dataset(tmp_path / "broken", x, labels)
    (data / CLASSES[1] / "zz_broken.png").write_bytes(b"\x89PNG broken")
    url = upload(s3, data, "broken")
    local = run(tiny["model"], data, tmp_path / "local")
    remote = run(tiny["model"], url, tmp_path / "remote")
    skipped = remote["dataset"]["skipped"]
    assert skipped == local["dataset"]["skipped"]
    assert [(s["path"], s["reason"].split(":")[0]) for s in skipped] == [(f"{CLASSES[1]}/zz_broken.png",
                                                                           "cannot decode")]
    assert_same_store(tmp_path / "local", tmp_path / "remote", url)


# -- refusals -----------------------------------------------------------------------------------
def test_missing_bucket_or_prefix_is_one_line_and_writes_nothing(s3, tiny, tmp_path, capsys):
    for url in (f"s3://{BUCKET}/no/such/prefix", "s3://no-such-bucket-here/data"):
        out = tmp_path / "out"
        code = main(["run", str(tiny["model"]), url, "--out", str(out), *RUN])
        assert_one_line(code, capsys, url, "does not exist")
        assert not out.exists()


def test_a_protocol_without_its_package_names_what_to_install(s3, tiny, tmp_path, capsys, monkeypatch):
    import importlib

    registry = importlib.import_module("fsspec.registry")  # the module; fsspec.registry is its mapping
    out = tmp_path / "out"
    code = main(["run", str(tiny["model"]), "nosuchfs://bucket/data", "--out", str(out), *RUN])
    assert_one_line(code, capsys, "nosuchfs://bucket/data", "pip install")
    # s3:// as where s3fs is not installed: fsspec knows the protocol, the import fails
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(registry._registry, "s3", raising=False)  # the s3fs class imported
    code = main(["run", str(tiny["model"]), f"s3://{BUCKET}/data", "--out", str(out), *RUN])
    assert_one_line(code, capsys, f"s3://{BUCKET}/data", "pip install s3fs")
    assert not out.exists()


def test_annotations_must_be_local(s3, tiny, tmp_path, capsys):
    url = upload(s3, tiny["annotations"], "ann.csv")
    code = main(["run", str(tiny["model"]), str(tiny["data"]), "--out", str(tmp_path / "out"), *RUN,
                 "--annotations", url])
    assert_one_line(code, capsys, url, "--annotations", "local")
    assert not (tmp_path / "out").exists()


def test_ray_actors_are_handed_the_url_as_given():
    from audit.engine.distributed import _abs

    assert _abs(f"s3://{BUCKET}/data") == f"s3://{BUCKET}/data"
    assert _abs("relative/data") == str(Path("relative/data").resolve())


# -- shards ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shards_of_s3_data_merge_into_the_single_local_store(s3, shard_data, single_store, tmp_path):
    url = upload(s3, shard_data["data"], "scale")
    remote = {**shard_data, "data": url}
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, out in enumerate(shards):
        assert main([*run_args(remote, out), "--shard", f"{i}/2"]) == 0
    merged = tmp_path / "merged"
    assert main(["merge", str(merged), *map(str, shards), "--no-tensorboard", "--quiet"]) == 0
    # The two differences a remote DATA makes, then every other byte as test_shards compares them.
    manifest = json.loads((merged / schema.MANIFEST).read_text())
    local = json.loads((single_store / schema.MANIFEST).read_text())["dataset"]
    assert manifest["dataset"]["source"] == url and manifest["dataset"]["fingerprint"] != local["fingerprint"]
    manifest["dataset"].update(source=local["source"], fingerprint=local["fingerprint"])
    (merged / schema.MANIFEST).write_text(json.dumps(manifest))
    assert_equivalent_stores(single_store, merged)
