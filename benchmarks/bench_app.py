"""Time the app's pages on a large run through AppTest (issue 6: a 10k-image gallery's first page in < 2 s).

Run: ``python benchmarks/bench_app.py [--examples 10000] [--explained 500] [--size 64] [--store DIR]``.

Builds a synthetic planted-bias store (``tests/app_stores.py``; reused when
``--store`` already holds one), then, in one process as a server would:

* ``open``: the first script run of a new session (the overview), which reads
  the predictions and metrics of the run into the cache;
* ``gallery first page``: switching to the gallery (filter, sort, read and
  blend the page's images);
* ``gallery next page``, ``gallery filter``: the reruns a user triggers;
* ``example page``: an explained example (every heatmap, activations).

Each is measured for a cold server (nothing cached) and again for a second
session on the warm server, and printed one per line with the median of
``--repeat`` warm sessions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
ENTRY = REPO / "audit" / "views" / "app" / "main.py"


def session(store: Path, example: int) -> dict[str, float]:
    """One user's visit: overview, gallery, next page, a filter, an example; seconds per step."""
    from streamlit.testing.v1 import AppTest

    sys.argv = [str(ENTRY), str(store)]
    at = AppTest.from_file(str(ENTRY), default_timeout=300)
    steps = {
        "open (overview)": lambda: at.run(),
        "gallery first page": lambda: at.switch_page("screens/gallery.py").run(),
        "gallery next page": lambda: at.number_input(key="g_page").set_value(2).run(),
        "gallery filter (incorrect)": lambda: at.radio(key="g_outcome").set_value("incorrect").run(),
        "example page": lambda: _example(at, example),
    }
    times = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        times[name] = time.perf_counter() - start
        if at.exception:
            raise RuntimeError(f"{name}: {at.exception[0].value}")
    assert len(at.image) >= 4, "the example page did not show the image and its heatmaps"
    return times


def _example(at, index: int):
    at.session_state["ex_index"] = index
    return at.switch_page("screens/example.py").run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--explained", type=int, default=500)
    parser.add_argument("--size", type=int, default=64, help="stored image side (the store keeps at most 128)")
    parser.add_argument("--store", type=Path, help="where to build (or reuse) the store; default: a temp dir")
    parser.add_argument("--repeat", type=int, default=3, help="warm sessions to take the median of")
    args = parser.parse_args()

    import numpy as np

    import app_stores
    from audit.store import schema

    store = args.store or Path(tempfile.mkdtemp(prefix="bench_app_")) / "run"
    if schema.is_store(store):
        print(f"reusing {store}")
    else:
        start = time.perf_counter()
        app_stores.build_store(store, n=args.examples, explained=args.explained, size=args.size, bootstrap=200)
        print(f"built {store} ({args.examples} examples, {args.explained} explained, {args.size} px) "
              f"in {time.perf_counter() - start:.1f} s")
    example = int(np.load(store / schema.HEATMAP_INDEX)[0])

    import streamlit  # noqa: F401  (imports are not what a page costs)

    import audit.metrics.slices  # noqa: F401

    cold = session(store, example)
    warm = [session(store, example) for _ in range(args.repeat)]
    print(f"{'step':28s} {'cold s':>8s} {'warm s':>8s}")
    for name in cold:
        print(f"{name:28s} {cold[name]:8.3f} {statistics.median(w[name] for w in warm):8.3f}")


if __name__ == "__main__":
    main()
