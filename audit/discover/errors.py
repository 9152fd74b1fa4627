"""Error slices found in the embeddings, after Domino (Eyuboglu et al., ICLR 2022).

Recipe
    1. PCA of the stored penultimate-layer embeddings to at most ``PCA_DIMS``
       dimensions, whitened (so the mixture's variance floor means the same in
       every direction). The projection is fitted on at most ``FIT_ROWS`` rows
       drawn with the seed (randomised SVD): 20k rows pin 64 directions of a
       512-d embedding as well as 100k do, in a fifth of the time. The
       mixtures are fitted (and scored by BIC) on the same rows, then assign
       every row: a slice of 0.5% of 100k rows still has about 100 rows in the
       fit, and the benchmark's 500-row planted slice is found.
    2. Domino's mixture: the reduced embedding concatenated with the one-hot
       prediction scaled by ``prediction_weight`` (and, optionally, the one-hot
       label scaled by ``label_weight``). Scaling a one-hot block raises the
       likelihood a component gains by being pure in it, which is how Domino's
       weighted log-likelihood terms for y and y-hat act here.
    3. A Gaussian mixture with diagonal covariance for each k = C + extra,
       extra in ``K_EXTRA`` (C classes; at most one component per
       ``min_slice_size`` rows), fitted on the same rows; the k with the lowest
       BIC is kept (every BIC is recorded). The weighted prediction block makes
       components nearly pure in prediction, so C is the count with no slice
       beyond the classes, and the extras are candidate slices inside them;
       powers of two keep the grid short. Rows are assigned to their most
       likely component (hard assignment).
    4. Each component with ``n >= min_slice_size`` is a candidate group, tested
       against the rest within predicted class (:mod:`audit.discover.fdr`),
       with BH q-values over every candidate.

Departure from Domino: the label is left out by default (``label_weight=0``).
Correctness is a function of label and prediction, so a mixture that sees both
can make a component of one confusion cell ("labelled cat, predicted dog"),
which is 100% wrong by construction and would come out "significant" with any
test on the same rows: the permutation null (correct permuted within predicted
class) produces such groups at will. Without the label nothing before the test
looks at correctness, so the stratified p-values are exact under that null,
and the q-values mean what they say. A group is then a region of embedding
space (and of predictions) where the model fails more than its predicted class
does elsewhere.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from audit.discover import fdr

PCA_DIMS = 64
FIT_ROWS = 20_000
MIXTURE_ROWS = 20_000  # rows each mixture is fitted and scored (BIC) on; 10k lost a 0.5% slice
K_EXTRA = (0, 1, 2, 4, 8, 16)
REG_COVAR = 1e-2  # variance floor, in whitened units: a pure one-hot column cannot collapse to a point
MAX_ITER = 200
N_INIT = 2  # EM restarts per k: one k-means++ start often merges a small slice into a big component


def reduce_embeddings(embeddings: np.ndarray, fit_rows: np.ndarray, *, dims: int = PCA_DIMS,
                      seed: int = 0) -> np.ndarray:
    """Whitened PCA scores ``(N, d)`` float32, ``d <= dims``, the projection fitted on ``fit_rows``."""
    x = np.asarray(embeddings, dtype=np.float32)
    d = int(min(dims, x.shape[1], len(fit_rows) - 1))
    pca = PCA(n_components=d, whiten=True, svd_solver="randomized", random_state=seed)
    pca.fit(x[np.sort(fit_rows)])
    return pca.transform(x).astype(np.float32)


def mixture_features(reduced: np.ndarray, pred: np.ndarray, label: np.ndarray, num_classes: int, *,
                     prediction_weight: float, label_weight: float) -> np.ndarray:
    """Reduced embedding, then the weighted one-hot prediction (and label) blocks."""
    blocks = [reduced]
    for codes, weight in ((pred, prediction_weight), (label, label_weight)):
        if weight > 0:
            blocks.append(np.eye(num_classes, dtype=np.float32)[codes] * np.float32(weight))
    return np.concatenate(blocks, axis=1)


def k_grid(num_classes: int, n: int, min_slice_size: int) -> list[int]:
    """Component counts to try: C + extra, at least 2, at most one per ``min_slice_size`` rows."""
    grid = sorted({max(2, num_classes + extra) for extra in K_EXTRA})
    return [k for k in grid if k * min_slice_size <= n] or [2]


def fit_mixture(features: np.ndarray, fit_rows: np.ndarray, grid: list[int], *,
                seed: int) -> tuple[GaussianMixture, dict[int, float]]:
    """The lowest-BIC diagonal mixture over ``grid``, and the BIC of every k tried."""
    fitted, bic = {}, {}
    for k in grid:
        gm = GaussianMixture(k, covariance_type="diag", reg_covar=REG_COVAR, max_iter=MAX_ITER,
                             random_state=seed, init_params="k-means++", n_init=N_INIT)
        gm.fit(features[fit_rows])
        fitted[k], bic[k] = gm, float(gm.bic(features[fit_rows]))
    best = min(bic, key=lambda k: bic[k])
    return fitted[best], bic


def _describe(members: np.ndarray, pred: np.ndarray, label: np.ndarray, class_names: list[str],
              group: int) -> str:
    top_pred = np.bincount(pred[members], minlength=len(class_names))
    top_label = np.bincount(label[members], minlength=len(class_names))
    p, t = int(top_pred.argmax()), int(top_label.argmax())
    n = len(members)
    return (f"embedding cluster {group}: {n} examples, {top_pred[p] / n:.0%} predicted {class_names[p]!r}, "
            f"{top_label[t] / n:.0%} labelled {class_names[t]!r}")


def error_slices(embeddings: np.ndarray, label: np.ndarray, pred: np.ndarray, class_names: list[str], *,
                 min_slice_size: int = 30, seed: int = 0, prediction_weight: float = 1.0,
                 label_weight: float = 0.0) -> tuple[list[dict], np.ndarray, dict]:
    """Domino-style error slices of labelled rows.

    Args:
        embeddings: ``(N, D)`` features of the rows (any float dtype).
        label, pred: ``(N,)`` int class indices.

    Returns:
        ``discovered`` entries (method "errors", group = component number,
        strongest first), the component of every row (int64 ``(N,)``, -1 for
        rows of components too small to test), and the method's parameters,
        chosen k and BIC values.
    """
    label, pred = np.asarray(label, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    n, num_classes = len(label), len(class_names)
    rng = np.random.default_rng(seed)
    fit_rows = rng.choice(n, size=min(n, FIT_ROWS), replace=False)  # a random order: any prefix is a sample
    reduced = reduce_embeddings(embeddings, fit_rows, seed=seed)
    features = mixture_features(reduced, pred, label, num_classes, prediction_weight=prediction_weight,
                                label_weight=label_weight)
    mixture_rows = fit_rows[:MIXTURE_ROWS] if len(fit_rows) > MIXTURE_ROWS else fit_rows
    grid = k_grid(num_classes, len(mixture_rows), min_slice_size)
    mixture, bic = fit_mixture(features, np.sort(mixture_rows), grid, seed=seed)
    component = mixture.predict(features).astype(np.int64)
    wrong = label != pred
    sizes = np.bincount(component, minlength=mixture.n_components)
    tested = np.flatnonzero(sizes >= min_slice_size)
    entries = _test_components(component, tested, wrong, pred, label, class_names, min_slice_size)
    kept = np.where(np.isin(component, tested), component, -1)
    info = {"parameters": {"pca_dims": int(reduced.shape[1]), "pca_rows": int(len(fit_rows)),
                           "mixture_rows": int(len(mixture_rows)),
                           "k_grid": sorted(bic), "covariance": "diag", "reg_covar": REG_COVAR,
                           "prediction_weight": prediction_weight, "label_weight": label_weight,
                           "test": "Mantel-Haenszel score test within predicted class", "seed": seed},
            "chosen_k": int(mixture.n_components), "criterion": "bic",
            "criterion_values": {str(k): v for k, v in bic.items()}, "tested": int(len(tested))}
    return entries, kept, info


def _test_components(component: np.ndarray, tested: np.ndarray, wrong: np.ndarray, pred: np.ndarray,
                     label: np.ndarray, class_names: list[str], min_slice_size: int) -> list[dict]:
    if len(tested) == 0:
        return []
    num_classes = len(class_names)
    k = int(component.max()) + 1
    cells = component * num_classes + pred
    group_n = np.bincount(cells, minlength=k * num_classes).reshape(k, num_classes)[tested]
    group_err = np.bincount(cells, weights=wrong, minlength=k * num_classes).reshape(k, num_classes)[tested]
    p = fdr.mantel_haenszel_p(group_err, group_n, np.bincount(pred, weights=wrong, minlength=num_classes),
                              np.bincount(pred, minlength=num_classes))
    q = fdr.bh_qvalues(p)
    stats = fdr.group_statistics(group_err.sum(1), group_n.sum(1), int(wrong.sum()), len(wrong))
    descriptions = [_describe(np.flatnonzero(component == g), pred, label, class_names, int(g)) for g in tested]
    entries = fdr.group_entries(stats, p, q, method="errors", groups=tested, descriptions=descriptions,
                                min_slice_size=min_slice_size)
    return fdr.strongest_first(entries)
