"""The annotations table: extra columns to slice the results by.

Rows are matched to examples by ``path`` (relative to DATA) for file datasets,
or by an ``index`` column (else row order) for ``.npz`` datasets. Numeric
columns stay numeric; metrics bin them. Rows that match no example and
examples with no row are counted and reported, not fatal, unless nothing
matches at all (then the table is surely for another dataset).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from audit.errors import DataError
from audit.io.data import Dataset, normalise_path
from audit.store import schema

RESERVED = set(schema.PREDICTION_COLUMNS)


def load_annotations(csv: str | Path, dataset: Dataset):
    """Annotations aligned to the dataset: (DataFrame with N rows, report dict)."""
    import pandas as pd

    from audit.io.remote import is_url

    if is_url(csv):
        raise DataError("--annotations must be a local CSV file; only DATA may be a URL (copy the table here)", csv)
    csv = Path(csv)
    if not csv.is_file():
        raise DataError("annotations file does not exist", csv)
    try:
        raw = csv.read_bytes()  # read once: the hash (for --resume checks) is of exactly what was parsed
        table = pd.read_csv(io.BytesIO(raw))
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read annotations CSV ({str(e).splitlines()[0]})", csv) from None

    if dataset.paths is not None:
        if "path" not in table.columns:
            raise DataError(f"annotations CSV needs a 'path' column (has: {', '.join(table.columns)})", csv)
        keys = table["path"].astype(str).map(normalise_path)
        position = {p: i for i, p in enumerate(dataset.paths)}
        rows = keys.map(position)
        key_cols = ["path"]
    elif "index" in table.columns:
        rows = pd.to_numeric(table["index"], errors="coerce").where(lambda s: s.between(0, dataset.count - 1))
        key_cols = ["index"]
    else:
        if len(table) != dataset.count:
            raise DataError(
                f"annotations CSV has {len(table)} rows but the .npz has {dataset.count} examples; "
                "add an 'index' column to match rows explicitly",
                csv,
            )
        rows = pd.Series(np.arange(len(table)))
        key_cols = []

    extra = int(rows.isna().sum())
    if extra == len(table):
        example = table[key_cols[0]].iloc[0] if key_cols else ""
        raise DataError(f"no annotation row matches an example of {dataset.source} (e.g. {example!r} is unknown)", csv)
    dup = rows.dropna().duplicated()
    if dup.any():
        raise DataError(f"{int(dup.sum())} annotation rows name an example that already has a row", csv)

    values = table.drop(columns=key_cols).loc[rows.notna()]
    clash = [c for c in values.columns if c in RESERVED or c.startswith(schema.PROB_PREFIX)]
    if clash:
        raise DataError(f"annotation columns {clash} clash with reserved prediction columns; rename them", csv)
    values.index = rows.dropna().astype(np.int64).to_numpy()
    aligned = values.reindex(np.arange(dataset.count))
    # Strings stay strings (pandas may store them as object or string dtype); numbers stay numbers.
    for c in aligned.columns:
        if not pd.api.types.is_numeric_dtype(aligned[c]):
            aligned[c] = aligned[c].astype("string")
    report = {
        "path": str(csv),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "columns": list(aligned.columns),
        "missing_rows": int(dataset.count - len(values)),
        "extra_rows": extra,
    }
    return aligned, report
