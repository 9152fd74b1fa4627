"""Lead with the finding (issue 14) and the discoveries (issue 12), in a real browser.

A real ``keras-audit app`` serves the synthetic planted-bias store (discovery included) on
loopback; Debian's Chromium, driven by Playwright, opens it at 1400×1000 (tests/browser.py).
Oracles: the store itself, read back here (predictions, heatmap index, discovered groups) and the
strongest finding of ``audit.views.findings`` for the headline's choice. Screenshots go to
``build/screenshots/`` and their paths, with the time to first useful paint, are printed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_stores
from audit.store import schema
from audit.store.reader import Reader
from audit.views.findings import strongest_finding
from audit.views.format import number, percent
from browser import VIEWPORT, chromium, new_page, serve, settle, shoot

pytestmark = pytest.mark.slow
IMAGES = '[data-testid="stImage"]'


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return app_stores.build_store(tmp_path_factory.mktemp("lead") / "run", n=600, explained=40, bootstrap=50)


@pytest.fixture(scope="module")
def slice_store(store, tmp_path_factory):
    """The same run with error-slice discovery's groups not significant: an annotated slice heads it."""
    out = tmp_path_factory.mktemp("lead_slice") / "run"
    shutil.copytree(store, out)
    metrics = json.loads((out / schema.METRICS).read_text())
    for g in metrics["discovered"]:
        if g["method"] == "errors":
            g["significant"] = False
    (out / schema.METRICS).write_text(json.dumps(metrics))
    return out


@pytest.fixture(scope="module", autouse=True)
def _this_checkout():
    """Servers import ``audit`` from this checkout, whatever an editable install elsewhere points at."""
    root = str(Path(__file__).resolve().parents[1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        yield


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def app(store, tmp_path_factory, browser):
    """The server, and the cold then warm time to the headline sentence (the first useful paint)."""
    sentence = strongest_finding(Reader(store)).sentence
    with serve([store], tmp_path_factory.mktemp("lead_server") / "server.log") as url:
        for label in ("cold", "warm", "warm"):  # cold: the server's first session fills every cache
            page = new_page(browser)
            start = time.monotonic()
            page.goto(url + "/")
            page.get_by_role("heading", name="Overview").wait_for(state="visible")
            title = time.monotonic() - start
            page.get_by_text(sentence, exact=True).wait_for(state="visible")
            print(f"time to first useful paint ({label}): headline sentence visible after "
                  f"{time.monotonic() - start:.2f} s (page title after {title:.2f} s)")
            page.close()
        yield url


@pytest.fixture
def page(browser):
    page = new_page(browser)
    yield page
    page.close()


def _on_first_screen(locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"]


def _links(locator) -> list[str]:
    return [a.get_attribute("href") for a in locator.locator(f"{IMAGES} a").all()]


def _worst(frame: pd.DataFrame, members, k: int) -> list[int]:
    """Mistakes first, then the most confident first, then by index: recomputed from the predictions."""
    keep = set(int(i) for i in members)
    rows = [(bool(c), -float(p), int(i)) for c, p, i in zip(frame["correct"], frame["confidence"], frame["index"])
            if int(i) in keep]
    return [i for _, _, i in sorted(rows)[:k]]


def _q(q: float) -> str:
    return "< 0.0001" if q < 0.0001 else f"= {number(q, 4)}"


def test_headline_states_the_strongest_finding_on_the_first_screen(app, page, store):
    from playwright.sync_api import expect

    reader = Reader(store)
    found = strongest_finding(reader)
    errors = [g for g in reader.discovered("errors") if g["group"] == 0][0]
    frame = reader.predictions
    members = frame.loc[frame["found_errors"] == 0, "index"].to_numpy()
    # The planted error slice (cue-marked triangles) beats every annotated slice's interval.
    assert found.kind == "discovered" and found.filter == {"column": "found_errors", "value": 0}
    assert found.n == errors["n"] == len(members)

    page.goto(app + "/")
    headline = page.locator(".st-key-headline")
    sentence = headline.get_by_text(found.sentence, exact=True)
    expect(sentence).to_be_visible()
    settle(page)
    assert _on_first_screen(sentence), sentence.bounding_box()
    thumbs = headline.locator(f"{IMAGES} a")
    expect(thumbs).to_have_count(8)
    assert _links(headline) == [f"example?example={i}" for i in _worst(frame, members, 8)]
    assert all(_on_first_screen(t) for t in thumbs.all())
    expect(headline.get_by_text(f"mean heatmap of its {found.n} examples")).to_be_visible()
    expect(headline).to_contain_text(f"Accuracy {percent(found.accuracy)} there against "
                                     f"{percent(found.rest_accuracy)} in the rest")
    expect(headline).to_contain_text(f"q {_q(found.q_value)}")
    # The worst annotated slices, as words: the stored row of the worst single annotation.
    rows = [r for r in reader.metrics["slices"]["rows"] if r["flagged"] and not r["too_small"]
            and len(r["columns"]) == 1 and r["gap"] < 0]
    worst = min(rows, key=lambda r: (r["gap"], -r["n"]))
    expect(page.get_by_text("Worst annotated slices")).to_be_visible()
    expect(page.locator("body")).to_contain_text(
        f"{worst['column']} = {worst['value']}: accuracy {percent(worst['accuracy'])}")
    # The discoveries section, on the first screen, names each method's groups and points back at the headline.
    expect(page.get_by_role("heading", name="Discoveries")).to_be_visible()
    assert _on_first_screen(page.get_by_role("heading", name="Discoveries"))
    for words in ("Error slices", "Heatmap strategies", "Slice search"):
        expect(page.get_by_text(words, exact=False).first).to_be_visible()
    # The headline is discovery's strongest group, so the section shows the strongest of another method.
    best = page.locator(".st-key-discovery_best")
    expect(best).to_contain_text("The strongest discovered group is the finding above; the strongest found by "
                                 "slice search over the annotations:")
    search = reader.discovered("search")[0]
    expect(best.get_by_text("Accuracy drops", exact=False).first).to_contain_text(
        "where cue_agrees = no & background = dark")
    expect(best.locator(f"{IMAGES} a")).to_have_count(8)
    assert _links(best) == [f"example?example={i}" for i in _worst(frame, reader.discovered_members(search), 8)]
    shoot(page, "lead_overview_first_screen")

    headline.get_by_role("button", name=f"Show its {found.n} examples in the gallery").click()
    expect(page.get_by_role("heading", name="Gallery")).to_be_visible()
    expect(page.get_by_text(f"{len(members)} of {len(frame)} examples match")).to_be_visible()
    settle(page)
    captions = page.locator(IMAGES).all_inner_texts()
    assert captions and all("triangle → " in c for c in captions), captions[:3]


def test_an_annotated_slice_heads_and_the_discovery_shows_below(browser, slice_store, tmp_path):
    from playwright.sync_api import expect

    reader = Reader(slice_store)
    found = strongest_finding(reader)
    assert found.kind == "slice"
    search = reader.discovered("search")[0]
    frame = reader.predictions
    members = reader.discovered_members(search)
    with serve([slice_store], tmp_path / "server.log") as url:
        page = new_page(browser)
        page.goto(url + "/")
        expect(page.locator(".st-key-headline").get_by_text(found.sentence, exact=True)).to_be_visible()
        best = page.locator(".st-key-discovery_best")
        expect(best.get_by_text("cue_agrees = no & background = dark", exact=False).first).to_be_visible()
        settle(page)
        expect(best.locator(f"{IMAGES} a")).to_have_count(8)
        assert _links(best) == [f"example?example={i}" for i in _worst(frame, members, 8)]
        expect(best.get_by_text(f"mean heatmap of its {search['n']} examples")).to_be_visible()
        assert _on_first_screen(page.get_by_role("heading", name="Discoveries"))
        shoot(page, "lead_overview_slice_headline", full_page=True)
        best.get_by_role("button", name=f"Show its {search['n']} examples").click()
        expect(page.get_by_text(f"{len(members)} of {len(frame)} examples match")).to_be_visible()
        page.close()


def test_discoveries_page_shows_each_group_as_a_gallery(app, page, store):
    from playwright.sync_api import expect

    reader = Reader(store)
    frame = reader.predictions
    groups = reader.discovered("errors")
    page.goto(app + "/discoveries_errors")
    expect(page.get_by_role("heading", name="Discoveries · Error slices")).to_be_visible()
    settle(page)
    for g in groups:
        box = page.locator(f".st-key-d_errors_{g['group']}")
        expect(box).to_contain_text(f"n = {g['n']} ({g['errors']} mistakes)")
        expect(box).to_contain_text(f"accuracy {percent(g['accuracy'])}")
        expect(box).to_contain_text(f"q {_q(g['q_value'])}")
        expect(box.get_by_text("mean heatmap")).to_be_visible()
        members = frame.loc[frame["found_errors"] == g["group"], "index"].to_numpy()
        assert _links(box) == [f"example?example={i}" for i in _worst(frame, members, 12)]
    expect(page.locator(".ka-legend").first).to_contain_text("low high relevance")
    shoot(page, "lead_discoveries_errors", full_page=True)

    page.locator(".st-key-d_errors_0").get_by_role("button", name=f"Show all {groups[0]['n']} in the gallery").click()
    expect(page.get_by_text(f"{groups[0]['n']} of {len(frame)} examples match")).to_be_visible()

    page.goto(app + "/discoveries_strategy")
    expect(page.get_by_role("heading", name="Discoveries · Heatmap strategies")).to_be_visible()
    expect(page.locator(".st-key-d_strategy_0")).to_contain_text("top-left")
    settle(page)
    shoot(page, "lead_discoveries_strategy", full_page=True)


def test_overlay_modes_legend_and_clickable_thumbnails(app, page, store):
    from playwright.sync_api import expect

    frame = pd.read_parquet(store / schema.PREDICTIONS)
    explained = set(np.load(store / schema.HEATMAP_INDEX).tolist())
    order = frame.assign(key=np.where(frame["correct"], 1 + frame["confidence"], -frame["confidence"].astype(float)))
    first_page = order.sort_values(["key", "index"])["index"].head(24).astype(int).tolist()
    page.goto(app + "/gallery")
    expect(page.get_by_role("heading", name="Gallery")).to_be_visible()
    settle(page)
    expect(page.locator(".ka-legend")).to_contain_text("low high relevance")
    expect(page.locator(".ka-legend")).to_contain_text("colour grows with relevance")
    assert _links(page.locator("body")) == [f"example?example={i}" for i in first_page]
    # Coverage: the exact follow-up command for the examples on the page that have no map.
    missing = sorted(i for i in first_page if i not in explained)
    assert missing, "the store explains every example on the first page; the check would be empty"
    expect(page.get_by_text(f"keras-audit explain {store} --indices {','.join(map(str, missing))}")).to_be_visible()
    before = page.locator(f"{IMAGES} img").first.get_attribute("src")
    shoot(page, "lead_gallery_heat", full_page=True)

    page.get_by_role("radio", name="jet", exact=True).click()
    expect(page.locator(".ka-legend")).to_contain_text("the classic jet blend")
    settle(page)
    assert page.locator(f"{IMAGES} img").first.get_attribute("src") != before
    shoot(page, "lead_gallery_jet", full_page=True)
    page.get_by_role("radio", name="side by side", exact=True).click()
    settle(page)
    shoot(page, "lead_gallery_side_by_side")

    # A thumbnail is a link to its example (it opens in a new tab, the address carries the example).
    with page.context.expect_page() as opened:
        page.locator(f"{IMAGES} a").first.click(force=True)
    detail = opened.value
    detail.set_default_timeout(90_000)
    expect(detail.get_by_role("heading", name="Example detail")).to_be_visible()
    expect(detail.get_by_text(f"#{first_page[0]} · true", exact=False)).to_be_visible()
    detail.close()


def test_example_detail_sizes_coverage_and_formatting(app, page, store):
    from playwright.sync_api import expect

    frame = pd.read_parquet(store / schema.PREDICTIONS)
    explained = np.load(store / schema.HEATMAP_INDEX)
    plain = int(next(i for i in frame["index"] if i not in set(explained.tolist())))
    page.goto(app + f"/example?example={plain}")
    expect(page.get_by_role("heading", name="Example detail")).to_be_visible()
    expect(page.get_by_text(f"keras-audit explain {store} --indices {plain}", exact=True)).to_be_visible()
    settle(page)
    width = page.locator(f"{IMAGES} img").first.evaluate("i => i.getBoundingClientRect().width")
    assert width <= 260, width  # a 64 px input shown at 256 px, not stretched to the page's width
    row = frame.set_index("index").loc[plain]
    annotations = page.locator('[data-testid="stDataFrame"]').first
    expect(annotations).to_contain_text(number(float(row["brightness"])))
    shoot(page, "lead_example_unexplained")

    index = int(explained[0])
    page.goto(app + f"/example?example={index}")
    expect(page.get_by_role("heading", name="Example detail")).to_be_visible()
    # Only the pictures measured here: waiting for every chart too times out on a loaded machine.
    expect(page.locator(IMAGES).nth(len(app_stores.METHODS))).to_be_visible()  # the image, then one per method
    page.wait_for_function("""() => [...document.querySelectorAll('[data-testid="stImage"] img')].slice(0, 4)
        .every(i => i.complete && i.naturalWidth > 0)""")
    slider = page.get_by_text("Heatmap opacity").bounding_box()
    first_overlay = page.locator(IMAGES).nth(1).bounding_box()
    assert 0 < first_overlay["y"] - slider["y"] < 200, (slider, first_overlay)  # right above the overlays
    expect(page.locator(".ka-legend")).to_contain_text("low high relevance")
    shoot(page, "lead_example_explained")
