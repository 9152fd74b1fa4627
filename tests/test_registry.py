"""The method registry is the one list: the store's literal, the CLI, the explain package and the app agree with it."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import audit.explain
from audit.cli import build_parser
from audit.errors import ModelError
from audit.explain import registry
from audit.explain.base import as_model
from audit.explain.registry import METHODS
from audit.store import schema
from explain_models import H, W, functional_model, planted_images


@pytest.fixture(scope="module")
def model():
    return functional_model("softmax")


# -- the store's vocabulary -------------------------------------------------------------
def test_store_literal_is_the_registry_plus_activations():
    # schema.EXPLAINERS stays a literal (views never import the engine); this pins it to the registry
    assert (*METHODS, "activations") == schema.EXPLAINERS
    assert registry.choices() == schema.EXPLAINERS


def test_file_stems_are_the_stores_and_are_safe_distinct_file_names():
    stems = {name: method.stem for name, method in METHODS.items()}
    assert stems == {name: schema.file_stem(name) for name in METHODS}
    assert {name: schema.heatmap_file(name) for name in METHODS} == {n: f"heatmaps/{s}.npy" for n, s in stems.items()}
    assert all(re.fullmatch(r"[a-z0-9_]+", s) for s in stems.values()), stems
    assert len(set(stems.values())) == len(stems)  # two methods must never share a file
    # heatmaps/index.npy is the row index of every heatmap file: no method may be stored over it
    assert schema.HEATMAP_INDEX not in {schema.heatmap_file(n) for n in METHODS}
    assert METHODS["gradcam++"].stem == "gradcam_pp"  # the name stores have always used
    assert schema.heatmap_file("scorecam") == "heatmaps/scorecam.npy"


def test_titles_come_from_the_registry():
    assert registry.titles(["gradcam", "scorecam"]) == {"gradcam": "Grad-CAM", "scorecam": "Score-CAM"}
    with pytest.raises(KeyError, match="choose from gradcam"):
        registry.titles(["lime"])


# -- building --------------------------------------------------------------------------
def test_explain_package_maps_every_method_to_the_class_it_builds(model):
    assert list(audit.explain.EXPLAINERS) == list(METHODS)
    x = planted_images(2, seed=4)[0]
    for name in METHODS:
        explainer = registry.build_explainer(name, model, layer=None, occlusion_patch=6)
        assert type(explainer) is audit.explain.EXPLAINERS[name]
        maps = explainer(x)
        assert maps.shape == (2, H, W) and np.isfinite(maps).all()
    assert registry.build_explainer("occlusion", model, occlusion_patch=6).patch_size == 6
    assert registry.build_explainer("occlusion", model).patch_size == min(H, W) // 8  # default_patch of the input
    assert registry.build_explainer("scorecam", model, layer="conv1").layer_name == "conv1"


def test_needs_layers_says_which_methods_fail_without_layers(model):
    # a LoadedModel with a call function but no layers is what a SavedModel gives
    layerless = dataclasses.replace(as_model(model), keras_model=None, _call=model, compiled={})
    x = planted_images(1, seed=5)[0]
    for name, method in METHODS.items():
        if method.needs_layers:
            with pytest.raises(ModelError, match="needs the model's layers"):
                registry.build_explainer(name, layerless)
        else:
            assert registry.build_explainer(name, layerless)(x).shape == (1, H, W)


def test_get_names_the_choices():
    assert registry.get("scorecam").needs_layers
    with pytest.raises(KeyError, match="choose from gradcam, gradcam\\+\\+, occlusion, scorecam"):
        registry.get("lime")


# -- the command line -------------------------------------------------------------------
def _run_args(*explain):
    return build_parser().parse_args(["run", "m", "d", "--out", "o", "--explain", *explain])


def test_cli_accepts_every_registered_name_and_activations():
    assert _run_args(",".join(schema.EXPLAINERS)).explain == schema.EXPLAINERS
    assert _run_args("ScoreCAM, activations").explain == ("scorecam", "activations")
    assert _run_args("none").explain == ()


def test_cli_refuses_an_unknown_name_listing_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        _run_args("gradcam,lime")
    assert exit_.value.code == 2
    assert "unknown explainer 'lime'; choose from gradcam, gradcam++, occlusion, scorecam, activations or none" in (
        capsys.readouterr().err
    )


def test_cli_help_lists_each_method_with_its_summary():
    sub = build_parser()._subparsers._group_actions[0].choices["run"]
    text = " ".join(sub.format_help().split())  # argparse wraps lines anywhere
    for method in METHODS.values():
        assert f"{method.name} ({' '.join(method.summary.split())})" in text
    assert "activations (per-layer activations" in text


# -- the app's titles ---------------------------------------------------------------------
def test_app_titles_are_read_from_the_manifest_and_fall_back_to_the_name():
    from audit.views.app.store_cache import title_of

    manifest = {"explained": {"methods": ["gradcam", "scorecam"], "titles": registry.titles(["gradcam", "scorecam"])}}
    assert [title_of(manifest, m) for m in ("gradcam", "scorecam")] == ["Grad-CAM", "Score-CAM"]
    assert title_of(manifest, "occlusion") == "occlusion"  # not in this run's titles
    assert title_of({"explained": {"methods": ["gradcam"]}}, "gradcam") == "gradcam"  # a store from before titles
    assert title_of({"explained": {"titles": ["Grad-CAM"]}}, "gradcam") == "gradcam"  # malformed: ignored
    assert title_of({}, "gradcam") == "gradcam"
