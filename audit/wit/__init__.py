"""What-If Tool bridge: open an audited model and its annotated data in ``witwidget``.

:func:`what_if` turns a results store (or a model plus a dataset) into the
What-If Tool's examples and configuration (:mod:`audit.wit.bridge`); the tool
re-scores edited datapoints live through the audit's own input pipeline.

witwidget 1.8.1, its last release, predates TensorFlow 2.21 and protobuf 7.
It is an optional extra, installed in two steps because its metadata asks for
the full ``tensorflow`` wheel (see :data:`INSTALL_HINT`). It is imported
through :mod:`audit.wit.compat`, which applies only the fixes the installed
protobuf, IPython and witwidget need; its docstring lists each one, its guard,
and exactly what it changes for how long.

``import audit.wit`` imports neither TensorFlow nor witwidget.

A map that puts all its weight in the top-left corner, as WIT's features see it:

>>> import numpy as np
>>> m = np.zeros((8, 8)); m[0, 0] = 1.0
>>> heatmap_features(m)
{'centre_mass': 0.0, 'border_mass': 1.0, 'peak_x': 0.0625, 'peak_y': 0.0625}

Example:
    >>> from audit.wit import what_if
    >>> tool = what_if("audit_out")                    # doctest: +SKIP
    >>> tool  # in a notebook, shows the What-If Tool    # doctest: +SKIP
    >>> tool.config_builder.build()["label_vocab"]     # doctest: +SKIP
    ['circle', 'square', 'triangle']
"""

from audit.wit.bridge import PREDICT_BATCH, TARGET_FEATURE, ModelPredictFn, WhatIf, heatmap_features, what_if
from audit.wit.compat import IMAGE_FEATURE, INSTALL_HINT, load_witwidget

__all__ = ["IMAGE_FEATURE", "INSTALL_HINT", "PREDICT_BATCH", "TARGET_FEATURE", "ModelPredictFn", "WhatIf",
           "heatmap_features", "load_witwidget", "what_if"]
