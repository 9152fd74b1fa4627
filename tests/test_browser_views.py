"""The app's charts, two-run views and shareable addresses, checked in Chromium at 1400×1000.

A real ``keras-audit app A B`` (the synthetic planted-bias run, with discovered groups, and a
second model on the same examples) and a binary run on their own loopback ports. Chart order is
read from what Vega drew (axis labels in screen order); the oracles are the stores' own files.
Screenshots: ``build/screenshots/views_*.png`` (paths printed).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_stores
import browser
from audit.store import schema

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    a = app_stores.build_store(root / "run_a", n=600, explained=40, bootstrap=50)
    b = app_stores.variant_store(a, root / "run_b")
    return {"a": a, "b": b, "binary": app_stores.binary_store(root / "binary"), "root": root,
            "ma": json.loads((a / schema.METRICS).read_text()), "mb": json.loads((b / schema.METRICS).read_text())}


@pytest.fixture(scope="module")
def app(stores):
    with browser.serve([stores["a"], stores["b"]], stores["root"] / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def chromium():
    with browser.chromium() as b:
        yield b


@pytest.fixture
def page(chromium):
    page = browser.new_page(chromium)
    yield page
    page.close()


# -- oracles, from metrics.json ------------------------------------------------------------------
def label(row: dict) -> str:
    if len(row["columns"]) == 1:
        return f"{row['column']} = {row['value']}"
    return " & ".join(f"{c}={v}" for c, v in zip(row["columns"], row["values"]))


def expected_flagged(metrics: dict, *, pairs: bool) -> tuple[list[str], int]:
    """Labels of the flagged slices worst first, one side per two-valued annotation; and the tested count."""
    rows = [r for r in metrics["slices"]["rows"] if not r["too_small"] and (pairs or len(r["columns"]) == 1)]
    values: dict[str, int] = {}
    for r in rows:
        values[r["column"]] = values.get(r["column"], 0) + 1
    kept = [r for r in rows if not (values[r["column"]] == 2 and r["gap"] > 0)]
    flagged = sorted((r for r in kept if r["flagged"]), key=lambda r: (r["gap"], -r["n"]))
    return [label(r) for r in flagged], len(kept)


# -- page helpers ------------------------------------------------------------------------------------
def chart(page, axis_title: str):
    """The one chart whose drawing has an axis titled ``axis_title``."""
    found = browser.charts(page).filter(has=page.locator("g.role-axis-title text", has_text=axis_title))
    found.first.wait_for()
    return found.first


def choose(page, box: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``box``."""
    combo = page.get_by_role("combobox", name=box, exact=True)
    item = page.get_by_role("option", name=option, exact=True)
    for _ in range(5):  # the list closes when the page scrolls under it: scroll first, then open
        combo.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        combo.click()
        try:
            item.wait_for(timeout=3000)
            break
        except Exception:  # noqa: BLE001 - Playwright's TimeoutError: open it again
            page.keyboard.press("Escape")
    item.click()
    browser.settle(page)


def box_text(page, box: str) -> str:
    """What the selectbox labelled ``box`` shows ("" when it shows its placeholder)."""
    return page.get_by_role("combobox", name=box, exact=True).input_value()


def open_page(page, url: str, heading: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    browser.settle(page)


def scroll_to(page, locator) -> None:
    locator.scroll_into_view_if_needed()
    page.wait_for_timeout(200)


def url_says(page, part: str, present: bool = True) -> bool:
    """Whether the address comes to hold ``part`` (or to lose it): Streamlit rewrites it after the run."""
    for _ in range(40):
        if (part in page.url) == present:
            return True
        page.wait_for_timeout(250)
    return False


def wait_for_labels(chart_locator, expected: list[str], which: str = "y") -> list[str]:
    """The chart's drawn labels once they equal ``expected`` (a rerun redraws a moment later), else as drawn."""
    drawn: list[str] = []
    for _ in range(40):
        drawn = browser.axis_labels(chart_locator, which)
        if drawn == expected:
            break
        chart_locator.page.wait_for_timeout(250)
    return drawn


# -- 1. order after each toggle ------------------------------------------------------------------
def test_overview_gap_chart_follows_the_pairs_toggle(app, page, stores):
    open_page(page, app + "/", "Flagged slices")
    m = stores["ma"]
    for step, pairs in enumerate((False, True, False)):
        if step:
            page.get_by_text("Include pairs of annotations").click()
            browser.settle(page)
        expected, tested = expected_flagged(m, pairs=pairs)
        forest = chart(page, "accuracy gap vs the rest")
        drawn = wait_for_labels(forest, expected[:25])
        assert drawn == expected[:25], (pairs, drawn[:6], expected[:6])  # ranked from the worst gap
        two_valued = [c["column"] for c in m["slices"]["columns"] if len(c["values"]) == 2]
        for column in two_valued:  # one side of a yes/no annotation, never both
            assert sum(x.startswith(f"{column} = ") for x in drawn) <= 1, (column, drawn)
        body = page.inner_text("body")
        assert f"{len(expected)} of {tested} slices" in body, (pairs, len(expected), tested)
        scroll_to(page, forest)
        browser.shoot(page, f"views_overview_pairs_{'on' if pairs else 'off'}_{step}")


def test_compare_chart_follows_the_annotation_filter(app, page, stores):
    from audit.views.terminal import stored_comparison

    result = stored_comparison(stores["a"], stores["b"])["comparison"]
    every = [f"{r['column']} = {r['value']}" for r in result["slices"]]
    open_page(page, app + "/compare", "Compare A and B")
    difference = chart(page, "accuracy of B minus A")
    assert wait_for_labels(difference, every) == every
    for column in ("cue", "background", "(all)"):
        choose(page, "Annotation", column)
        expected = every if column == "(all)" else [x for x in every if x.startswith(f"{column} = ")]
        assert wait_for_labels(chart(page, "accuracy of B minus A"), expected) == expected, column
        assert url_says(page, f"annotation={column}", present=column != "(all)"), page.url
    page.get_by_text("Only slices one model wins").click()
    browser.settle(page)
    won = [f"{r['column']} = {r['value']}" for r in result["slices"] if r["winner"] in ("a", "b")]
    assert won and wait_for_labels(chart(page, "accuracy of B minus A"), won) == won
    scroll_to(page, chart(page, "accuracy of B minus A"))
    browser.shoot(page, "views_compare_filtered")


# -- 2. slices page ------------------------------------------------------------------------------------
def test_slices_page_opens_on_the_worst_annotation_and_names_crossed_values(app, page, stores):
    m = stores["ma"]
    worst = min((r for r in m["slices"]["rows"] if r["flagged"] and not r["too_small"] and len(r["columns"]) == 1),
                key=lambda r: r["gap"])
    open_page(page, app + "/slices", "Slices")
    assert box_text(page, "Annotation") == worst["column"]
    bars = chart(page, "accuracy (95% interval)")
    assert browser.axis_titles(bars, "x") == [worst["column"]]  # the x axis says what its values are
    own = [r["value"] for r in m["slices"]["rows"] if r["column"] == worst["column"]]
    assert browser.axis_labels(bars, "x") == own
    assert url_says(page, f"annotation={worst['column']}") and url_says(page, f"slice={worst['value']}"), page.url
    grid = page.locator('[data-testid="stDataFrame"]').first
    scroll_to(page, grid)  # the grid writes its accessible cells once it is on screen
    grid.locator('[role="columnheader"]').first.wait_for(state="attached")
    headers = [h.strip() for h in grid.locator('[role="columnheader"]').all_text_contents()]
    assert "accuracy 95% interval" in headers and "gap to the rest" in headers, headers
    assert not [h for h in headers if "_" in h], headers  # words, not stored field names
    browser.shoot(page, "views_slices_worst")

    choose(page, "Annotation", "cue_agrees")
    choose(page, "Crossed with", "background")
    crossed = [label(r) for r in m["slices"]["rows"] if r["column"] == "cue_agrees & background"]
    assert crossed and all(re.fullmatch(r"cue_agrees=\w+ & background=\w+", x) for x in crossed)
    drawn = wait_for_labels(chart(page, "accuracy (95% interval)"), crossed, "x")
    assert drawn == crossed
    assert browser.axis_titles(chart(page, "accuracy (95% interval)"), "x") == ["cue_agrees & background"]
    assert url_says(page, "crossed=background"), page.url
    browser.shoot(page, "views_slices_crossed")

    choose(page, "Crossed with", "(nothing: one annotation)")
    assert box_text(page, "Crossed with") == "(nothing: one annotation)"
    assert url_says(page, "crossed=", present=False), page.url
    assert browser.axis_labels(chart(page, "accuracy (95% interval)"), "x") == ["yes", "no"] or \
        browser.axis_labels(chart(page, "accuracy (95% interval)"), "x") == [
            r["value"] for r in m["slices"]["rows"] if r["column"] == "cue_agrees"]


# -- 5. the address holds the view ---------------------------------------------------------------------
def test_addresses_open_the_view_they_name_and_ignore_nonsense(app, page, stores):
    m = stores["ma"]
    open_page(page, app + "/slices?annotation=background&slice=light", "Slices")
    assert box_text(page, "Annotation") == "background"
    n_light = next(r["n"] for r in m["slices"]["rows"] if r["column"] == "background" and r["value"] == "light")
    assert box_text(page, "Slice") == f"background = light ({n_light} examples)"

    groups = [f"group {g['group']}: {g['description']}" for g in m["discovered"] if g["method"] == "errors"]
    open_page(page, app + "/slices?annotation=found_errors", "Slices")
    assert box_text(page, "Annotation") == "found_errors (discovered groups)"
    assert browser.axis_labels(chart(page, "accuracy (95% interval)"), "x") == groups
    browser.shoot(page, "views_slices_discovered")

    open_page(page, app + "/slices?annotation=%3Cb%3Enope", "Slices")
    assert "Ignored the link's annotation=<b>nope: not an annotation of this run." in page.inner_text("body")
    assert box_text(page, "Annotation") in {c["column"] for c in m["slices"]["columns"]}

    open_page(page, app + "/curves?class=2", "Curves & thresholds")
    assert box_text(page, "Class (one against the rest)") == app_stores.CLASSES[2]
    open_page(page, app + "/curves?class=9", "Curves & thresholds")
    assert "Ignored the link's class=9" in page.inner_text("body")
    assert url_says(page, "class=0"), page.url  # the view in the address again: the headline class

    open_page(page, app + "/calibration?run=b", "Calibration")
    assert "Run B · shapes_synthetic_v2" in page.inner_text("body")
    assert f"{stores['mb']['calibration']['ece']:.3f}" in page.inner_text("body")
    assert url_says(page, "run=b"), page.url
    open_page(page, app + "/calibration?run=c", "Calibration")
    assert "Ignored the link's run=c: it takes a, b or both." in page.inner_text("body")


# -- 3. two runs on every page -------------------------------------------------------------------------
def test_two_runs_side_by_side_and_run_b_alone(app, page, stores):
    open_page(page, app + "/slices?run=both&annotation=cue", "Slices")
    body = page.inner_text("body")
    assert "Run A · shapes_synthetic" in body and "Run B · shapes_synthetic_v2" in body
    assert browser.charts(page).filter(has=page.locator("g.role-axis-title text", has_text="accuracy (95% interval)")
                                       ).count() == 2
    for key in ("ma", "mb"):
        present = next(r for r in stores[key]["slices"]["rows"] if r["column"] == "cue" and r["value"] == "present")
        assert f"accuracy {present['accuracy']:.1%} on {present['n']} examples" in body or present["gap"] >= 0
    browser.shoot(page, "views_slices_both")

    open_page(page, app + "/calibration?run=both", "Calibration")
    body = page.inner_text("body")
    for key in ("ma", "mb"):
        assert f"{stores[key]['calibration']['ece']:.3f}" in body
    browser.shoot(page, "views_calibration_both")

    open_page(page, app + "/curves?run=both", "Curves & thresholds")
    legend = browser.legend_labels(chart(page, "recall"))
    assert legend == [f"{r}: {c}" for r in "AB" for c in app_stores.CLASSES], legend
    browser.shoot(page, "views_curves_both")

    # The sidebar's choice carries to every page, the overview (another screen's code) included.
    open_page(page, app + "/", "Flagged slices")
    page.locator('[data-testid="stSidebar"]').get_by_text("B · shapes_synthetic_v2").click()
    browser.settle(page)
    assert url_says(page, "run=b"), page.url
    page.get_by_role("heading", name=re.compile("shapes_synthetic_v2")).first.wait_for()
    browser.shoot(page, "views_overview_run_b")


# -- 4. curves and calibration ---------------------------------------------------------------------------
def test_curves_and_calibration_show_every_curve_and_the_reachable_range(app, page, stores):
    m = stores["ma"]
    open_page(page, app + "/curves", "Curves & thresholds")
    pr = chart(page, "recall")
    assert browser.legend_labels(pr) == list(app_stores.CLASSES)
    circle = next(c for c in m["curves"]["per_class"] if c["index"] == 0)
    prevalence = circle["positives"] / m["num_examples"]
    assert f"no skill: precision {prevalence:.2f} (prevalence)" in browser.texts(pr)
    top_of_frame, one = browser.frame_top(pr), browser.tick_y(pr, "y", "1.0")
    assert one - top_of_frame >= 4, (one, top_of_frame)  # a curve at precision 1 is not on the frame
    scroll_to(page, pr)
    browser.shoot(page, "views_curves")

    open_page(page, app + "/calibration", "Calibration")
    diagram = chart(page, "accuracy")
    ticks = [float(t) for t in browser.axis_labels(diagram, "x")]
    assert min(ticks) >= 1 / 3 - 0.01, ticks  # a top-class probability is never below 1 / classes
    sizes = [t for t in browser.texts(diagram) if t.startswith("n=")]
    assert sizes == [f"n={c}" for c in m["calibration"]["count"] if c], sizes
    browser.shoot(page, "views_calibration")


# -- 6. binary models ------------------------------------------------------------------------------------
def test_binary_run_headlines_the_positive_class_and_draws_every_stored_curve(page, stores):
    m = json.loads((stores["binary"] / schema.METRICS).read_text())
    positive = m["curves"]["positive_class"]
    stored = [c["class"] for c in m["curves"]["per_class"] if c.get("pr")]
    with browser.serve([stores["binary"]], stores["root"] / "binary.log") as url:
        open_page(page, url + "/curves", "Curves & thresholds")
        assert box_text(page, "Class (one against the rest)") == positive
        pr = chart(page, "recall")
        assert browser.legend_labels(pr) == stored  # whole names, every class the run stored a curve for
        browser.shoot(page, "views_curves_binary")

        # The overview's per-class table has each class's areas wherever the run stored them.
        open_page(page, url + "/", "Per class")
        grid = page.locator('[data-testid="stDataFrame"]').filter(has_text="average precision").first
        scroll_to(page, grid)
        grid.locator('[role="gridcell"]').first.wait_for(state="attached")
        table = browser.grid_rows(grid)  # the columns on screen (the grid draws no others)
        assert "average precision" in table[0], table[0]
        shown = {row["class"]: row for row in table[1:]}
        for entry in m["curves"]["per_class"]:
            if entry["average_precision"] is not None:
                for key, header in (("average_precision", "average precision"), ("roc_auc", "ROC AUC")):
                    if header in shown[entry["class"]]:
                        assert float(shown[entry["class"]][header]) == pytest.approx(entry[key]), (entry, header)
        browser.shoot(page, "views_overview_binary")
