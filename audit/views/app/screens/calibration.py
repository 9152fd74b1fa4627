"""Calibration: the reliability diagram of the model's top-label confidence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from audit.views.app import charts, store_cache

run, _ = store_cache.active()
cal = store_cache.metrics(run).get("calibration") or {}

st.title("Calibration")
if not cal.get("edges"):
    st.info("This run stored no calibration data.")
    st.stop()

edges = np.asarray(cal["edges"], float)
bins = pd.DataFrame({
    "lo": edges[:-1],
    "hi": edges[1:],
    "centre": (edges[:-1] + edges[1:]) / 2,
    "count": cal["count"],
    "accuracy": pd.array(cal["accuracy"], dtype="Float64").astype(float),
    "confidence": pd.array(cal["confidence"], dtype="Float64").astype(float),
})
bins["gap"] = bins["accuracy"] - bins["confidence"]

cols = st.columns(3)
cols[0].metric("Expected calibration error", f"{cal['ece']:.3f}", help="example-weighted mean |accuracy − confidence|")
cols[1].metric("Maximum calibration error", f"{cal['mce']:.3f}" if cal.get("mce") is not None else "n/a")
cols[2].metric("Bins", f"{cal.get('bins', len(bins))}")
st.caption("Bars: accuracy of the examples whose confidence falls in each bin; diamonds: their mean confidence; "
           "red lines: the gap. A calibrated model's bars reach the dashed diagonal; bars below it mean "
           "over-confidence.")
st.altair_chart(charts.reliability(bins), width="stretch", key="cal_diagram")
st.altair_chart(charts.confidence_histogram(bins), width="stretch", key="cal_histogram")
filled = bins[bins["count"] > 0]
st.dataframe(filled[["lo", "hi", "count", "accuracy", "confidence", "gap"]], hide_index=True, width="stretch",
             key="cal_table", column_config={c: st.column_config.NumberColumn(format="%.3f")
                                             for c in ("lo", "hi", "accuracy", "confidence", "gap")})
