"""The one list of heatmap methods: name, file stem, title, whether it needs the model's layers,
and how to build it. The CLI's choices and help, the engine, the callbacks, the store's vocabulary
(``audit.store.schema.EXPLAINERS``; a test checks they agree), the views' titles (written into the
manifest, since views never import the engine) and the What-If features all come from here.

Adding a method is one file with its math and one entry below.

>>> from audit.explain.registry import METHODS
>>> [m.name for m in METHODS.values()][:2]
['gradcam', 'gradcam++']
>>> METHODS["gradcam++"].stem, METHODS["gradcam++"].title
('gradcam_pp', 'Grad-CAM++')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Method:
    """One heatmap method as every part of keras-audit sees it."""

    name: str  # on the command line and in the store: "gradcam++"
    title: str  # shown to people: "Grad-CAM++"
    needs_layers: bool  # False: works on a SavedModel, which exposes no layers
    build: Callable[..., Any]  # (model, *, layer, occlusion_patch) -> explainer
    summary: str  # one line for the CLI help

    @property
    def stem(self) -> str:
        """The name made safe for file names: 'gradcam++' is stored as 'gradcam_pp'."""
        return self.name.replace("++", "_pp")


def _gradcam(model, *, layer=None, occlusion_patch=None):
    from audit.explain.gradcam import GradCAM

    return GradCAM(model, layer=layer)


def _gradcam_pp(model, *, layer=None, occlusion_patch=None):
    from audit.explain.gradcam import GradCAMPlusPlus

    return GradCAMPlusPlus(model, layer=layer)


def _occlusion(model, *, layer=None, occlusion_patch=None):
    from audit.explain.occlusion import OcclusionSensitivity, default_patch

    base = model.input_shape if hasattr(model, "input_shape") and len(model.input_shape) == 3 else None
    patch = occlusion_patch or (default_patch(base) if base else None)
    return OcclusionSensitivity(model, patch_size=patch) if patch else OcclusionSensitivity(model)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("gradcam", "Grad-CAM", True, _gradcam, "class-weighted activations of a conv layer (Selvaraju et al. 2017)"),
        Method("gradcam++", "Grad-CAM++", True, _gradcam_pp, "Grad-CAM with pixel-wise weights (Chattopadhay et al. 2018)"),
        Method("occlusion", "Occlusion", False, _occlusion, "probability drop when a grey patch covers each place"),
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
