"""Shared harness of the browser tests: a real ``keras-audit app`` on loopback, Debian's Chromium.

The one home of the browser tests' health check, "drawn" condition and Chromium flags.
Screenshots go to ``build/screenshots/`` (gitignored), and
each path is printed so it shows in the test output (``pytest -s`` or the captured stdout).

Charts are read from what Vega drew: the SVG renderer writes axis labels as ``<text>`` and every
mark with an ``aria-label`` ("label: cue = no; gap: -0.31"), so a test reads the order a user sees.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, stop

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "build" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 90_000  # the cores are shared: a rerun can take tens of seconds

# Streamlit is done when no rerun is running, every image has loaded and every
# chart and table has drawn (they load lazily and show a placeholder first).
DRAWN = """() => !document.querySelector('[data-testid="stStatusWidget"], [data-testid="stSkeleton"]')
    && [...document.querySelectorAll('[data-testid="stImage"] img')].every(i => i.complete && i.naturalWidth > 0)
    && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].every(e => e.querySelector('svg, canvas'))
    && [...document.querySelectorAll('[data-testid="stDataFrame"]')].every(e => e.querySelector('canvas'))"""


def healthy(port: int) -> bool:
    """Whether a Streamlit server answers its health check on ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serve(stores, log: Path):
    """``keras-audit app STORES --port P`` until the block ends; yields the base URL."""
    cli = shutil.which("keras-audit")
    if cli is None:
        pytest.fail("the keras-audit command is not on PATH; install the package (pip install -e '.[test]')")
    port = free_port()
    # This checkout's code, whatever checkout the installed command was installed from.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:
        proc = subprocess.Popen([cli, "app", *map(str, stores), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"keras-audit app did not come up on port {port} (exit {proc.poll()}):\n"
                            + log.read_text()[-3000:])
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            stop(proc, timeout=30)


@contextlib.contextmanager
def chromium():
    """Debian's Chromium through Playwright (no browser download); missing either is a failure."""
    if not CHROMIUM.is_file():
        pytest.fail(f"Debian's Chromium is not installed at {CHROMIUM}; run .ci/run "
                    "(it runs: apt-get install -y chromium) and try again")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing; run .ci/run (pip install playwright)")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(WAIT_MS)
    return page


def settle(page) -> None:
    """Wait until no rerun is running and every image, chart and table has drawn."""
    page.wait_for_timeout(300)  # let a click's rerun start before asking whether it finished
    page.wait_for_function(DRAWN, timeout=WAIT_MS)


def shoot(page, name: str, *, full_page: bool = False) -> Path:
    """Screenshot to ``build/screenshots/NAME.png``; the path is printed for the test output."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path


# Axis labels of one chart in drawing order: top to bottom for a vertical band axis, left to
# right for a horizontal one (Vega places each label with a translate() transform).
_AXIS_LABELS = """(chart, which) => {
    const axes = [...chart.querySelectorAll('g.role-axis')].filter(a =>
        a.getAttribute('aria-label') && a.getAttribute('aria-label').toLowerCase().includes(which));
    const out = [];
    for (const axis of axes) {
        for (const t of axis.querySelectorAll('g.role-axis-label text')) {
            const r = t.getBoundingClientRect();
            out.push({text: t.textContent, x: r.left + r.width / 2, y: r.top + r.height / 2});
        }
    }
    return out;
}"""

# Every mark with an accessible description, with where it is drawn.
_MARKS = """(chart) => [...chart.querySelectorAll('g.mark-symbol path, g.mark-rect path, g.mark-rule line,'
    + ' g.mark-line path, g.mark-text text')].filter(e => e.getAttribute('aria-label')).map(e => {
        const r = e.getBoundingClientRect();
        return {label: e.getAttribute('aria-label'), x: r.left + r.width / 2, y: r.top + r.height / 2,
                mark: e.closest('g[class^="mark-"]').getAttribute('class')};
    })"""


def axis_labels(chart, which: str = "y") -> list[str]:
    """The labels of ``chart``'s ``which`` ("x" or "y") axis as drawn, in screen order."""
    found = chart.evaluate(_AXIS_LABELS, f"{which}-axis")
    key = "y" if which == "y" else "x"
    return [f["text"] for f in sorted(found, key=lambda f: f[key])]


def marks(chart) -> list[dict]:
    """Marks of ``chart`` with their ``aria-label`` parsed into fields, and their screen centre."""
    out = []
    for m in chart.evaluate(_MARKS):
        fields = dict(part.split(": ", 1) for part in m["label"].split("; ") if ": " in part)
        out.append({**fields, "_x": m["x"], "_y": m["y"], "_mark": m["mark"]})
    return out


def charts(page):
    return page.locator('[data-testid="stVegaLiteChart"]')


def _axes_js(part: str) -> str:
    return f"""(chart, which) => [...chart.querySelectorAll('g.role-axis')].filter(a =>
        (a.getAttribute('aria-label') || '').toLowerCase().includes(which)).flatMap(a =>
        [...a.querySelectorAll('g.{part} text')].map(t => t.textContent))"""


def axis_titles(chart, which: str = "x") -> list[str]:
    """The titles drawn on ``chart``'s ``which`` axes."""
    return chart.evaluate(_axes_js("role-axis-title"), f"{which}-axis")


def legend_labels(chart) -> list[str]:
    """Every legend entry's text as drawn (a cut label would end in an ellipsis)."""
    return chart.evaluate("c => [...c.querySelectorAll('g.role-legend-label text')].map(t => t.textContent)")


def texts(chart) -> list[str]:
    """Text marks of ``chart`` (not its axes or legends), in data order."""
    return chart.evaluate("c => [...c.querySelectorAll('g.mark-text.role-mark text')].map(t => t.textContent)")


def frame_top(chart) -> float:
    """Screen y of the top edge of the plotting area."""
    return chart.evaluate("""c => c.querySelector('g.role-frame.root > g > path.background')
        .getBoundingClientRect().top""")


def tick_y(chart, which: str, text: str) -> float:
    """Screen y of the centre of the ``which`` axis label reading ``text``."""
    found = [f for f in chart.evaluate(_AXIS_LABELS, f"{which}-axis") if f["text"] == text]
    assert found, f"no {which} axis label {text!r}"
    return found[0]["y"]


def grid_rows(grid) -> list[dict]:
    """A dataframe's accessible rows as dicts by header (the header row first, as {header: header}).

    The grid writes cells only for what is on screen: scroll it into view first; columns past
    its right edge are absent.
    """
    headers = [h.strip() for h in grid.locator('[role="columnheader"]').all_text_contents()]
    rows = [{h: h for h in headers}]
    for row in grid.locator('[role="row"]').all()[1:]:
        cells = [c.strip() for c in row.locator('[role="gridcell"]').all_text_contents()]
        rows.append(dict(zip(headers, cells)))
    return rows
