"""The one list of heatmap methods: name, file stem, title, whether it needs the model's layers,
and how to build it. The CLI's choices and help, the engine, the callbacks, the store's vocabulary
(``audit.store.schema.EXPLAINERS``; a test checks they agree), the views' titles (written into the
manifest, since views never import the engine) and the What-If features all come from here.

Adding a method is one file with its math and one entry below (plus its name in the store's
literal ``schema.EXPLAINERS``, which tests/test_registry.py pins to this list).

>>> from audit.explain.registry import METHODS
>>> [m.name for m in METHODS.values()][:2]
['gradcam', 'gradcam++']
>>> METHODS["gradcam++"].stem, METHODS["gradcam++"].title
('gradcam_pp', 'Grad-CAM++')
>>> titles(["scorecam"])
{'scorecam': 'Score-CAM'}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audit.explain.base import Explainer, as_model
from audit.explain.gradcam import GradCAM, GradCAMPlusPlus
from audit.explain.occlusion import OcclusionSensitivity, default_patch
from audit.explain.scorecam import ScoreCAM
from audit.store.schema import file_stem

# Not a heatmap method: ``--explain activations`` stores per-layer activations instead of maps.
ACTIVATIONS = "activations"
ACTIVATIONS_SUMMARY = "per-layer activations and their statistics (not a heatmap)"


@dataclass(frozen=True)
class Method:
    """One heatmap method as every part of keras-audit sees it."""

    name: str  # on the command line and in the store: "gradcam++"
    title: str  # shown to people: "Grad-CAM++"
    needs_layers: bool  # False: works on a SavedModel, which exposes no layers
    build: _Builder  # (model, *, layer, occlusion_patch) -> explainer
    summary: str  # one line for the CLI help

    @property
    def stem(self) -> str:
        """The name made safe for file names: 'gradcam++' is stored as 'gradcam_pp' (the store's rule)."""
        return file_stem(self.name)


@dataclass(frozen=True)
class _Builder:
    """Builds ``cls`` from the run's options; keeps ``cls`` so ``audit.explain.EXPLAINERS`` derives from here."""

    cls: type[Explainer]
    options: Callable[[Any, str | None, int | None], dict]  # (LoadedModel, layer, occlusion_patch) -> kwargs

    def __call__(self, model, *, layer: str | None = None, occlusion_patch: int | None = None):
        loaded = as_model(model)  # once, so the options and the explainer share one compiled cache
        make: Callable[..., Explainer] = self.cls  # each method's constructor takes its own options
        return make(loaded, **self.options(loaded, layer, occlusion_patch))


def _layer_options(model, layer, occlusion_patch) -> dict:
    return {"layer": layer}


def _occlusion_options(model, layer, occlusion_patch) -> dict:
    h, w = model.input_shape[:2]
    # A model of any input size (None) keeps the class default; a fixed size gets 1/8 of its side.
    patch = occlusion_patch or (default_patch((h, w)) if h and w else None)
    return {"patch_size": patch} if patch else {}


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("gradcam", "Grad-CAM", True, _Builder(GradCAM, _layer_options),
               "class-weighted activations of a conv layer (Selvaraju et al. 2017)"),
        Method("gradcam++", "Grad-CAM++", True, _Builder(GradCAMPlusPlus, _layer_options),
               "Grad-CAM with pixel-wise weights (Chattopadhay et al. 2018)"),
        Method("occlusion", "Occlusion", False, _Builder(OcclusionSensitivity, _occlusion_options),
               "probability drop when a grey patch covers each place"),
        Method("scorecam", "Score-CAM", True, _Builder(ScoreCAM, _layer_options),
               "conv channels weighted by the class probability of the image they mask; gradient-free, "
               "one forward pass per channel (Wang et al. 2020)"),
    )
}


def get(name: str) -> Method:
    """The method called ``name``; KeyError names the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown explainer {name!r}; choose from {', '.join(METHODS)}") from None


def build_explainer(name: str, model, *, layer: str | None = None, occlusion_patch: int | None = None):
    """The explainer ``name`` on ``model`` (a LoadedModel or keras.Model), with the run's options."""
    return get(name).build(model, layer=layer, occlusion_patch=occlusion_patch)


def choices() -> tuple[str, ...]:
    """Every name ``--explain`` accepts, in order: the heatmap methods, then "activations"."""
    return (*METHODS, ACTIVATIONS)


def titles(names) -> dict[str, str]:
    """``{name: title}`` of heatmap methods, for ``manifest["explained"]["titles"]`` (views read it there)."""
    return {name: get(name).title for name in names}
