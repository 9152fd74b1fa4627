"""The wheel, installed on its own: every package and sample ships, and the demo and the app run from it.

The wheel is built from the checkout's files (``git ls-files``: tracked plus untracked, not ignored),
copied to a temporary folder first. Building in place would let setuptools' ``build/lib`` leak modules
that no longer exist in the checkout into the wheel (``pip wheel`` copies the whole of ``build/lib``),
and would write into a checkout that others are using.

It is installed into a fresh virtual environment outside the checkout, which reuses the
dependencies already installed (TensorFlow and the rest: nothing is downloaded) through a ``.pth``
file that lists the interpreter's site-packages folders as plain paths. A plain path line adds the
folder to ``sys.path`` without running the ``.pth`` files inside it, so the editable install's hook
(setuptools' ``__editable__*.pth``, which installs a finder mapping ``audit`` onto the checkout) never
runs. ``--system-site-packages`` would run it: the finder is appended to ``sys.meta_path``, so the
wheel's ``audit`` wins, but any module *missing* from the wheel would be silently imported from the
checkout, hiding exactly the packaging mistakes this test is for. pip in the venv leaves the
system's keras-audit alone ("outside environment").
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from browser import healthy
from conftest import REPO, free_port, stop

pytestmark = pytest.mark.slow

HEALTH_WAIT_S = 90  # the cores are shared: Streamlit can take tens of seconds to come up
# Where the checkout's folders land in the wheel (pyproject's package-dir).
INSTALLED_AS = {"audit": "audit", "sample_models": "audit/samples"}


def _checkout_files() -> list[PurePosixPath]:
    """The checkout's files: tracked and untracked ones that git does not ignore (all files without git)."""
    if shutil.which("git") and (REPO / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
        names = sorted({n for n in listed if n})
    else:
        skip = {".git", "build", "dist", "__pycache__", ".pytest_cache", ".venv", "tmp"}
        names = sorted(str(p.relative_to(REPO)) for p in REPO.rglob("*")
                       if p.is_file() and not skip & set(p.relative_to(REPO).parts)
                       and not any(part.endswith(".egg-info") for part in p.relative_to(REPO).parts))
    # A tracked file deleted in the working tree is still listed by git.
    return [PurePosixPath(n) for n in names if (REPO / n).is_file()]


def _in_wheel(path: PurePosixPath) -> str | None:
    """Where a checkout file lands inside the wheel, for the folders that ship."""
    top, rest = path.parts[0], path.parts[1:]
    return str(PurePosixPath(INSTALLED_AS[top], *rest)) if top in INSTALLED_AS and rest else None


def _env() -> dict[str, str]:
    """The environment for the installed commands: nothing that points back into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(cmd, *, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def checkout_files():
    return _checkout_files()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, checkout_files) -> Path:
    """``pip wheel`` of a clean copy of the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in checkout_files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
          "-q", "-w", root / "dist"], cwd=root)
    (built,) = (root / "dist").glob("keras_audit-*.whl")
    return built


def _dependency_paths() -> list[str]:
    """This interpreter's site-packages folders (where TensorFlow and the rest are), never the checkout.

    A site-packages folder inside the checkout (a ``.venv`` made in the clone, as many make it) is
    kept: it holds the dependencies, and the editable install's finder there is a .pth, which a
    path listed in a .pth does not run."""
    found = [*site.getsitepackages(), *(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))]
    paths = []
    for p in found:
        path = Path(p).resolve()
        if path.is_dir() and path != REPO and str(path) not in paths:
            paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv reusing the installed dependencies, with the wheel installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("venv") / "env"
    assert REPO not in root.parents, "the venv must lie outside the checkout"
    # No pip of its own (ensurepip is slow): the system's pip, run by the venv's python, installs into the venv.
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    bin_dir = root / "bin"
    purelib = _run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=root.parent).stdout.strip()
    # Sorted after the wheel's own files in sys.path; plain paths, so no .pth inside them runs.
    (Path(purelib) / "zz_dependencies.pth").write_text("\n".join(_dependency_paths()) + "\n")
    _run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index",
          "--disable-pip-version-check", "-q", wheel], cwd=root.parent)
    return bin_dir


def test_wheel_ships_every_package_module_and_sample(wheel, checkout_files):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted({str(p.parent) for p in checkout_files
                       if p.name == "__init__.py" and p.parts[0] == "audit"}) + ["sample_models"]
    missing = [p for p in packages if _in_wheel(PurePosixPath(p, "__init__.py")) not in names]
    assert not missing, f"packages missing from the wheel (add them to [tool.setuptools] packages): {missing}"
    # A module in a folder without __init__.py would be left out silently: every module must ship.
    modules = [p for p in checkout_files if p.suffix == ".py" and p.parts[0] in INSTALLED_AS]
    missing = [str(p) for p in modules if _in_wheel(p) not in names]
    assert not missing, f"modules missing from the wheel: {missing}"
    # Nothing in the wheel that the checkout no longer has (a stale build/lib would add it).
    shipped = {_in_wheel(p) for p in checkout_files}
    stale = sorted(n for n in names if n.startswith("audit/") and n not in shipped)
    assert not stale, f"files in the wheel that are not in the checkout: {stale}"
    pngs = [p for p in checkout_files if p.parts[:2] == ("sample_models", "shapes_eval") and p.suffix == ".png"]
    expected = json.loads((REPO / "sample_models" / "expected.json").read_text())["shapes_bias"]["num_examples"]
    assert len(pngs) == expected, (len(pngs), expected)
    missing = [str(p) for p in pngs if _in_wheel(p) not in names]
    assert not missing, f"{len(missing)} sample images missing from the wheel, e.g. {missing[:3]}"
    for sample in ("shapes_bias.keras", "shapes_annotations.csv", "digits.keras", "digits_eval.npz", "expected.json"):
        assert f"audit/samples/{sample}" in names, sample
    assert "audit/views/app/main.py" in names  # the app's entry script, which launch() runs


# Imports every module the wheel installed (the Streamlit pages run when imported, so not those)
# and reports where each came from and whether any editable-install finder is active.
PROBE = """
import json, pkgutil, sys
import audit, audit.cli, audit.views.app.launch as launch
names = [m.name for m in pkgutil.walk_packages(audit.__path__, "audit.")
         if not m.name.startswith(("audit.views.app.screens.", "audit.views.app.main"))]
for name in names:
    __import__(name)
print(json.dumps({
    "modules": {n: getattr(m, "__file__", None) for n, m in sys.modules.items()
                if n == "audit" or n.startswith("audit.")},
    "samples": str(audit.cli.SAMPLES), "app": str(launch.app_entry()),
    "finders": [repr(f) for f in sys.meta_path if "editable" in repr(f).lower()],
}))
"""


def test_installed_package_is_the_wheel_not_the_checkout(venv, tmp_path):
    env_root = venv.parent.resolve()
    found = json.loads(_run([venv / "python", "-c", PROBE], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert not found["finders"], f"an editable install's finder is active in the venv: {found['finders']}"
    assert "audit.cli" in found["modules"] and "audit.samples" in found["modules"]
    outside = {n: f for n, f in found["modules"].items() if f is None or not Path(f).resolve().is_relative_to(env_root)}
    assert not outside, f"modules imported from outside the venv: {outside}"
    for what in ("samples", "app"):
        assert Path(found[what]).resolve().is_relative_to(env_root), f"{what}: {found[what]} is not in the venv"
    assert Path(found["samples"]).name == "samples"
    version = _run([venv / "keras-audit", "--version"], cwd=tmp_path).stdout
    assert version.startswith("keras-audit 0.1.0 (") and "keras " in version, version


def test_demo_and_app_run_from_the_wheel(venv, tmp_path):
    out = tmp_path / "audit_demo"
    done = _run([venv / "keras-audit", "demo", "--out", out, "--quiet"], cwd=tmp_path, timeout=420)
    assert "cue_agrees" in done.stdout, done.stdout[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["store"] == "keras-audit" and manifest["complete"] is True
    assert manifest["tensorboard"] == "written"
    # The demo audited the samples that ship in the wheel.
    assert Path(manifest["model"]["path"]).resolve().is_relative_to(venv.parent.resolve()), manifest["model"]["path"]
    for name in ("predictions.parquet", "metrics.json", "images.npy", "heatmaps/index.npy"):
        assert (out / name).is_file(), name

    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([str(venv / "keras-audit"), "app", str(out), "--port", str(port)], cwd=tmp_path,
                                env=_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + HEALTH_WAIT_S
        while not healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"keras-audit app (from the wheel) did not answer on port {port} within "
                            f"{HEALTH_WAIT_S} s (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            stop(proc, timeout=30)
    deadline = time.monotonic() + 20
    while healthy(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not healthy(port), "the Streamlit server outlived the keras-audit process"
