"""Calibration: the reliability diagram of the model's top-label confidence.

Drawn over the reachable range only (a top-label confidence is at least 1 / classes), with
each bin's size; the bins' 95% intervals are drawn where the run stored them
(``calibration.accuracy_ci``): the view computes no statistics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from audit.views.app import charts, store_cache
from audit.views.format import md_text


def bins_of(cal: dict) -> pd.DataFrame:
    edges = np.asarray(cal["edges"], float)
    bins = pd.DataFrame({
        "lo": edges[:-1],
        "hi": edges[1:],
        "centre": (edges[:-1] + edges[1:]) / 2,
        "count": cal["count"],
        "accuracy": pd.array(cal["accuracy"], dtype="Float64").astype(float),
        "confidence": pd.array(cal["confidence"], dtype="Float64").astype(float),
    })
    ci = cal.get("accuracy_ci")
    if ci and len(ci) == len(bins):
        bins["accuracy_lo"] = [c[0] if c else np.nan for c in ci]
        bins["accuracy_hi"] = [c[1] if c else np.nan for c in ci]
    bins["gap"] = bins["accuracy"] - bins["confidence"]
    return bins


def reachable(bins: pd.DataFrame, classes: int) -> float:
    """Left end of the axis: the edge of the bin holding 1 / classes (or the first non-empty bin)."""
    floor = 1.0 / max(classes, 1)
    holding = bins[bins["hi"] > floor]["lo"]
    used = bins[bins["count"] > 0]["lo"]
    return float(min(holding.iloc[0] if len(holding) else 0.0, used.iloc[0] if len(used) else 1.0))


def one_run(run: store_cache.RunRef, letter: str, *, narrow: bool = False) -> None:
    m = store_cache.metrics(run)
    cal = m.get("calibration") or {}
    if letter:
        st.subheader(f"Run {letter} · {md_text(run.name)}")
    if not cal.get("edges"):
        st.info("This run stored no calibration data.")
        return
    bins = bins_of(cal)
    start = reachable(bins, len(m.get("class_names") or []))
    cols = st.columns(3)
    # Half a page wide (two runs side by side), the short names fit where the long ones are cut.
    cols[0].metric("ECE" if narrow else "Expected calibration error", f"{cal['ece']:.3f}",
                   help="expected calibration error: example-weighted mean |accuracy − confidence|")
    cols[1].metric("MCE" if narrow else "Maximum calibration error",
                   f"{cal['mce']:.3f}" if cal.get("mce") is not None else "n/a",
                   help="maximum calibration error: the largest |accuracy − confidence| of a bin")
    cols[2].metric("Bins", f"{cal.get('bins', len(bins))}")
    has_ci = "accuracy_lo" in bins
    st.caption("Bars: accuracy of the examples whose confidence falls in each bin (n: how many)"
               + ("; black lines: its 95% interval" if has_ci else "") + "; diamonds: their mean confidence; "
               "red lines: the gap. A calibrated model's bars reach the dashed diagonal; bars below it mean "
               f"over-confidence. The axis starts at {start:.2f}: a top-class probability is never below "
               "1 / classes." + ("" if has_ci else " This run stored no per-bin intervals."))
    st.altair_chart(charts.reliability(bins, start), width="stretch", key=f"cal_diagram{letter}")
    st.altair_chart(charts.confidence_histogram(bins, start), width="stretch", key=f"cal_histogram{letter}")
    filled = bins[bins["count"] > 0]
    shown = ["lo", "hi", "count", "accuracy", *(["accuracy_lo", "accuracy_hi"] if has_ci else []), "confidence", "gap"]
    headers = {"lo": "from", "hi": "to", "count": "examples", "accuracy": "accuracy",
               "accuracy_lo": "accuracy 95% low", "accuracy_hi": "accuracy 95% high",
               "confidence": "mean confidence", "gap": "accuracy − confidence"}
    st.dataframe(filled[shown], hide_index=True, width="stretch", key=f"cal_table{letter}",
                 column_config={c: (st.column_config.NumberColumn(headers[c]) if c == "count" else
                                    st.column_config.NumberColumn(headers[c], format="%.3f")) for c in shown})


st.title("Calibration")
shown_runs = store_cache.shown()
if len(shown_runs) > 1:
    for col, run, letter in zip(st.columns(2), shown_runs, ("A", "B")):
        with col:
            one_run(run, letter, narrow=True)
else:
    one_run(shown_runs[0], store_cache.run_letter(shown_runs[0]))
