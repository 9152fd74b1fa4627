"""Explainers for Keras image classifiers: where in the image does the class come from?

Every explainer takes a ``keras.Model`` or a LoadedModel from
:func:`audit.load_model` (Sequential models loaded from disk, functional
models and nested backbones alike), is called on preprocessed images and
returns one ``(N, H, W)`` float32 map per image in [0, 1], at the input's size:

>>> from audit.explain import GradCAM, OcclusionSensitivity, quality  # doctest: +SKIP
>>> maps = GradCAM(model, layer="backbone/conv_last")(images)        # doctest: +SKIP
>>> occ = OcclusionSensitivity(model, patch_size=8)(images, targets=labels)  # doctest: +SKIP
>>> quality.deletion_insertion(model, images, maps)["insertion"].mean()     # doctest: +SKIP

``EXPLAINERS`` maps the command-line names to the map explainers' classes,
derived from :data:`audit.explain.registry.METHODS` (names, titles, how the
run's options build each one). The
gradient family (``VanillaGradients``, ``GradientsInputs``, ``SmoothGrad``,
``IntegratedGradients``) needs the optional extra ``keras-audit[explain]``.

Importing this package does not import TensorFlow; the explainers do when built.
"""

from __future__ import annotations

from audit.explain import quality
from audit.explain.activations import Activations
from audit.explain.base import CAMExplainer, Explainer, as_model, normalize_maps
from audit.explain.gradcam import GradCAM, GradCAMPlusPlus
from audit.explain.gradients import GradientsInputs, IntegratedGradients, SmoothGrad, VanillaGradients
from audit.explain.occlusion import OcclusionSensitivity
from audit.explain.registry import METHODS
from audit.explain.scorecam import ScoreCAM

EXPLAINERS: dict[str, type[Explainer]] = {name: method.build.cls for name, method in METHODS.items()}

GRADIENT_EXPLAINERS: dict[str, type[Explainer]] = {
    "vanilla_gradients": VanillaGradients,
    "gradients_inputs": GradientsInputs,
    "smoothgrad": SmoothGrad,
    "integrated_gradients": IntegratedGradients,
}

__all__ = [
    "EXPLAINERS",
    "GRADIENT_EXPLAINERS",
    "Activations",
    "CAMExplainer",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientsInputs",
    "IntegratedGradients",
    "OcclusionSensitivity",
    "ScoreCAM",
    "SmoothGrad",
    "VanillaGradients",
    "as_model",
    "normalize_maps",
    "quality",
]
