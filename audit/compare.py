"""Compare two runs of different models on the same examples.

Both models answered the same examples, so every difference is paired: the
bootstrap resamples *examples*, keeping each example's pair of outcomes
together. As in :mod:`audit.metrics.intervals`, that is done by drawing the
counts of (true class x A correct x B correct) cells from a multinomial, once
for the whole data and once per slice (slice sizes fixed), and taking 2.5 /
97.5 percentiles of ``B - A``. A model *wins* an overall metric, a class or a
slice when the whole interval of ``B - A`` is on its side of zero. The overall
accuracy difference also gets McNemar's exact test on the examples exactly one
model gets right.

Slices come from run A's annotation columns (single columns, binned as in
:mod:`audit.metrics.slices`); the runs hold the same examples, so the
annotations describe both.

Example:
    >>> result = compare_runs(Path("run_small"), Path("run_big"))    # doctest: +SKIP
    >>> print(render_comparison(result))                              # doctest: +SKIP
"""

from __future__ import annotations

from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd

from audit.errors import AuditError, StoreError
from audit.metrics.classification import mean_recall
from audit.metrics.intervals import bootstrap_statistic, percentile_interval, rng_for
from audit.metrics.slices import slice_columns
from audit.store import schema
from audit.store.reader import Reader

DISAGREEMENTS = 50


def _same_examples(a: Reader, b: Reader) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both predictions tables ordered by example index, or StoreError when they differ."""
    if a.class_names != b.class_names:
        raise StoreError(
            f"runs have different classes ({', '.join(a.class_names[:5])} vs {', '.join(b.class_names[:5])}); "
            "compare needs two models of the same classes",
            b.path,
        )
    fa = a.predictions.sort_values("index", kind="stable").reset_index(drop=True)
    fb = b.predictions.sort_values("index", kind="stable").reset_index(drop=True)
    if len(fa) != len(fb):
        raise StoreError(
            f"runs are not on the same examples: {len(fa)} predictions in {a.path}, {len(fb)} here", b.path
        )
    ia, ib = fa["index"].to_numpy(), fb["index"].to_numpy()
    if not np.array_equal(ia, ib):
        k = int(np.flatnonzero(ia != ib)[0])
        raise StoreError(f"runs are not on the same examples: example {ia[k]} in {a.path} is {ib[k]} here", b.path)
    both = fa["path"].notna().to_numpy() & fb["path"].notna().to_numpy()
    differ = both & (fa["path"].astype(object).to_numpy() != fb["path"].astype(object).to_numpy())
    if differ.any():
        k = int(np.flatnonzero(differ)[0])
        raise StoreError(
            f"runs are not on the same examples: example {ia[k]} is {fa['path'][k]} in {a.path} "
            f"but {fb['path'][k]} here", b.path,
        )
    la, lb = fa["label"].to_numpy(), fb["label"].to_numpy()
    if not np.array_equal(la, lb):
        k = int(np.flatnonzero(la != lb)[0])
        raise StoreError(
            f"runs are not on the same examples: example {ia[k]} has label {la[k]} in {a.path} but {lb[k]} here",
            b.path,
        )
    return fa, fb


def _winner(ci) -> str | None:
    if ci is None or not np.all(np.isfinite(ci)):
        return None
    return "b" if ci[0] > 0 else "a" if ci[1] < 0 else "tie"


def _paired_overall(y, ca, cb, names: list[str], bootstrap: int, seed: int) -> tuple[dict, list[dict]]:
    """Accuracy and balanced accuracy of both runs, and recall per class, with paired intervals of B - A."""
    num_classes = len(names)
    counts = np.bincount(y * 4 + ca * 2 + cb, minlength=num_classes * 4).reshape(num_classes, 2, 2)

    def recall_of(right: np.ndarray) -> np.ndarray:
        support = right.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(support > 0, right[..., 1] / np.maximum(support, 1), np.nan)

    def differences(cells: np.ndarray):
        """B - A of accuracy, balanced accuracy and per-class recall from (..., C, A right, B right) counts."""
        right_a, right_b = cells.sum(-1), cells.sum(-2)  # (..., C, [wrong, right])
        n = cells.sum((-3, -2, -1))
        accuracy = (right_b[..., 1].sum(-1) - right_a[..., 1].sum(-1)) / n
        return accuracy, mean_recall(right_b) - mean_recall(right_a), recall_of(right_b) - recall_of(right_a)

    right_a, right_b = counts.sum(2), counts.sum(1)
    accuracy, balanced, recall = differences(counts)
    cis = [None, None, np.full((num_classes, 2), np.nan)]
    if bootstrap:
        samples = bootstrap_statistic(counts.reshape(-1), bootstrap, rng_for(seed, "compare:overall"),
                                      lambda d: differences(d.reshape(len(d), num_classes, 2, 2)))
        cis = [list(percentile_interval(s)) for s in samples[:2]]
        cis.append(np.stack(percentile_interval(samples[2]), axis=-1))
    overall = {
        "accuracy_a": right_a[:, 1].sum() / len(y),
        "accuracy_b": right_b[:, 1].sum() / len(y),
        "accuracy_difference": accuracy,
        "accuracy_difference_ci": cis[0],
        "accuracy_winner": _winner(cis[0]),
        "balanced_accuracy_a": mean_recall(right_a),
        "balanced_accuracy_b": mean_recall(right_b),
        "balanced_accuracy_difference": balanced,
        "balanced_accuracy_difference_ci": cis[1],
        "balanced_accuracy_winner": _winner(cis[1]),
    }
    recall_a, recall_b = recall_of(right_a), recall_of(right_b)
    per_class = [
        {"class": name, "support": int(counts[k].sum()), "recall_a": recall_a[k], "recall_b": recall_b[k],
         "difference": recall[k], "difference_ci": cis[2][k].tolist() if bootstrap else None,
         "winner": _winner(cis[2][k]) if bootstrap else None}
        for k, name in enumerate(names)
    ]
    return overall, per_class


def _mcnemar(only_a: int, only_b: int) -> float | None:
    from scipy.stats import binomtest

    discordant = only_a + only_b
    return binomtest(only_a, discordant, 0.5).pvalue if discordant else None


def _slice_rows(frame: pd.DataFrame, ca: np.ndarray, cb: np.ndarray, *, min_slice_size: int,
                bootstrap: int, seed: int, notes: list[str]) -> list[dict]:
    columns, _ = slice_columns(frame, schema.annotation_columns(frame.columns), min_slice_size=min_slice_size,
                               notes=notes)
    rows = []
    for column in columns:
        k = len(column.labels)
        counts = np.bincount(column.codes * 4 + ca * 2 + cb, minlength=k * 4).reshape(k, 4)
        n = counts.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc_a = (counts[:, 2] + counts[:, 3]) / n
            acc_b = (counts[:, 1] + counts[:, 3]) / n
        ci = np.full((k, 2), np.nan)
        if bootstrap:
            (diff,) = bootstrap_statistic(
                counts, bootstrap, rng_for(seed, f"compare:{column.name}"),
                lambda d: (d[..., 1] - d[..., 2]) / np.maximum(d.sum(-1), 1),
            )
            ci = np.stack(percentile_interval(diff), axis=-1)
        for s, label in enumerate(column.labels):
            rows.append({
                "column": column.name, "value": label, "n": int(n[s]), "accuracy_a": acc_a[s],
                "accuracy_b": acc_b[s], "difference": acc_b[s] - acc_a[s],
                "difference_ci": ci[s].tolist() if bootstrap else None,
                "winner": _winner(ci[s]) if bootstrap else None, "too_small": bool(n[s] < min_slice_size),
            })
    return rows


def _disagreements(fa: pd.DataFrame, fb: pd.DataFrame, names: list[str], limit: int) -> list[dict]:
    differ = np.flatnonzero(fa["pred"].to_numpy() != fb["pred"].to_numpy())
    ca, cb = fa["correct"].to_numpy(bool), fb["correct"].to_numpy(bool)
    conf_a, conf_b = fa["confidence"].to_numpy(float), fb["confidence"].to_numpy(float)
    right = np.where(ca, "a", np.where(cb, "b", "neither"))
    # Most telling first: one model right while the other was confidently wrong.
    wrong_conf = np.where(ca, conf_b, np.where(cb, conf_a, np.maximum(conf_a, conf_b)))
    order = differ[np.lexsort((-wrong_conf[differ], right[differ] == "neither"))][:limit]
    return [
        {"index": int(fa["index"][i]), "path": None if pd.isna(fa["path"][i]) else str(fa["path"][i]),
         "label": names[int(fa["label"][i])], "pred_a": names[int(fa["pred"][i])],
         "pred_b": names[int(fb["pred"][i])], "confidence_a": conf_a[i], "confidence_b": conf_b[i],
         "right": str(right[i])}
        for i in order
    ]


def compare_runs(store_a: Path, store_b: Path, *, bootstrap: int = 1000, seed: int = 0,
                 min_slice_size: int = 30, max_disagreements: int = DISAGREEMENTS) -> dict:
    """Overall, per-class and per-slice differences ``B - A`` of two runs on the same examples.

    Returns a JSON-ready dict: ``a``/``b`` (path, model), ``num_examples``,
    ``overall`` (accuracies, differences, intervals, winners, McNemar p),
    ``agreement`` (counts of who is right), ``per_class``, ``slices``,
    ``disagreements`` (examples whose predictions differ, most telling first),
    ``wins`` (what each model wins) and ``notes``.

    Raises:
        StoreError: a store is missing or incomplete, or the runs are not on the same examples.
        AuditError: an option is out of range.
    """
    for name, value, minimum in (("--bootstrap", bootstrap, 0), ("seed", seed, 0),
                                 ("--min-slice-size", min_slice_size, 1), ("max_disagreements", max_disagreements, 0)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
            raise AuditError(f"compare option {name} must be an integer >= {minimum}, got {value!r}")
    a, b = Reader(store_a), Reader(store_b)
    fa, fb = _same_examples(a, b)
    names = a.class_names
    y = fa["label"].to_numpy(np.int64)
    ca = fa["correct"].to_numpy(bool).astype(np.int64)
    cb = fb["correct"].to_numpy(bool).astype(np.int64)
    notes: list[str] = []

    overall, per_class = _paired_overall(y, ca, cb, names, bootstrap, seed)
    only_a, only_b = int(((ca == 1) & (cb == 0)).sum()), int(((ca == 0) & (cb == 1)).sum())
    overall["mcnemar_p"] = _mcnemar(only_a, only_b)
    differ = int((fa["pred"].to_numpy() != fb["pred"].to_numpy()).sum())
    agreement = {
        "both_right": int(((ca == 1) & (cb == 1)).sum()), "only_a_right": only_a, "only_b_right": only_b,
        "both_wrong": int(((ca == 0) & (cb == 0)).sum()), "predictions_differ": differ,
        "predictions_differ_rate": differ / len(y),
    }
    slices = _slice_rows(fa, ca, cb, min_slice_size=min_slice_size, bootstrap=bootstrap, seed=seed, notes=notes)
    if not bootstrap:
        notes.append("bootstrap is off (--bootstrap 0): differences have no intervals and no winners")
    wins = {
        side: [f"class {c['class']}" for c in per_class if c["winner"] == side]
        + [f"{s['column']} = {s['value']}" for s in slices if s["winner"] == side]
        for side in ("a", "b")
    }
    return schema.to_json({
        "a": {"path": str(a.path), "model": a.model_info.get("name")},
        "b": {"path": str(b.path), "model": b.model_info.get("name")},
        "num_examples": len(y),
        "class_names": names,
        "bootstrap": bootstrap,
        "seed": seed,
        "overall": overall,
        "agreement": agreement,
        "per_class": per_class,
        "slices": slices,
        "disagreements": _disagreements(fa, fb, names, max_disagreements),
        "wins": wins,
        "notes": notes,
    })


# -- terminal rendering ---------------------------------------------------------------------------
def _f(x, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _diff(x, ci) -> str:
    return _f(x, True) + (f" [{_f(ci[0], True)}, {_f(ci[1], True)}]" if ci else "")


_MARK = {"a": "[bold cyan]A better[/]", "b": "[bold magenta]B better[/]", "tie": "[dim]no clear winner[/]", None: ""}


def _table(headers: list[str], rows: list[list[str]], marks: list[str]) -> list[str]:
    """Fixed-width rows (plain text measured before markup is added)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return ["  [bold]" + _escape(line(headers)) + "[/]"] + [
        "  " + _escape(line(r)) + ("  " + m if m else "") for r, m in zip(rows, marks)
    ]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def render_comparison(result: dict, *, max_rows: int = 10) -> str:
    """The comparison as rich-markup text for the terminal (print it with ``rich.console.Console``)."""
    o, g = result["overall"], result["agreement"]
    a, b = result["a"], result["b"]
    out = [
        f"[bold]A[/] {_escape(str(a['model']))} ({_escape(a['path'])})",
        f"[bold]B[/] {_escape(str(b['model']))} ({_escape(b['path'])})",
        f"{result['num_examples']} examples, paired bootstrap with {result['bootstrap']} resamples (95% CI of B - A)",
        "",
    ]
    out += _table(
        ["metric", "A", "B", "B - A [95% CI]"],
        [["accuracy", _f(o["accuracy_a"]), _f(o["accuracy_b"]),
          _diff(o["accuracy_difference"], o["accuracy_difference_ci"])],
         ["balanced accuracy", _f(o["balanced_accuracy_a"]), _f(o["balanced_accuracy_b"]),
          _diff(o["balanced_accuracy_difference"], o["balanced_accuracy_difference_ci"])]],
        [_MARK[o["accuracy_winner"]], _MARK[o["balanced_accuracy_winner"]]],
    )
    p = o.get("mcnemar_p")
    out += [
        "",
        f"Only A right: {g['only_a_right']}, only B right: {g['only_b_right']}, both right: {g['both_right']}, "
        f"both wrong: {g['both_wrong']}" + (f"; McNemar exact p = {p:.3g}" if p is not None else ""),
        f"Predictions differ on {g['predictions_differ']} examples ({100 * g['predictions_differ_rate']:.1f}%)",
        "",
        "[bold]Recall per class[/]",
    ]
    classes = result["per_class"][: max(max_rows, 1) * 3]
    out += _table(["class", "n", "A", "B", "B - A [95% CI]"],
                  [[c["class"], str(c["support"]), _f(c["recall_a"]), _f(c["recall_b"]),
                    _diff(c["difference"], c["difference_ci"])] for c in classes],
                  [_MARK[c["winner"]] for c in classes])
    decided = [s for s in result["slices"] if s["winner"] in ("a", "b")]
    decided.sort(key=lambda s: -abs(s["difference"] or 0))
    out += ["", "[bold]Slices where one model wins[/]"]
    if decided:
        shown = decided[:max_rows]
        out += _table(["slice", "n", "A", "B", "B - A [95% CI]"],
                      [[f"{s['column']} = {s['value']}", str(s["n"]), _f(s["accuracy_a"]), _f(s["accuracy_b"]),
                        _diff(s["difference"], s["difference_ci"])] for s in shown],
                      [_MARK[s["winner"]] for s in shown])
        if len(decided) > max_rows:
            out.append(f"  ... and {len(decided) - max_rows} more")
    else:
        out.append(f"  none of {len(result['slices'])} slices separates the models beyond its interval")
    if result["disagreements"]:
        shown = result["disagreements"][:max_rows]
        out += ["", f"[bold]Examples where they disagree[/] (first {len(shown)} of {g['predictions_differ']})"]
        out += _table(["example", "true", "A says", "B says", "right"],
                      [[f"#{d['index']} {d['path'] or ''}".strip(), d["label"],
                        f"{d['pred_a']} ({_f(d['confidence_a'])})", f"{d['pred_b']} ({_f(d['confidence_b'])})",
                        {"a": "A", "b": "B"}.get(d["right"], d["right"])] for d in shown],
                      ["" for _ in shown])
    for note in result.get("notes", []):
        out.append(f"[yellow]note:[/] {_escape(note)}")
    return "\n".join(out)
