"""End to end: ``keras-audit app`` served on loopback, driven in Debian's Chromium by Playwright.

No browser is downloaded: Playwright launches the system ``/usr/bin/chromium``
(``.ci/run`` installs it with apt). Missing Chromium or Playwright is a failure
with the fix in the message, not a skip, so CI cannot pass without this test.
Screenshots go to the test's tmp dir and are copied to ``/tmp/app_screens/``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import browser
from browser import DRAWN, WAIT_MS, healthy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_stores
from audit.store import schema

SCREENS = Path("/tmp/app_screens")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return app_stores.build_store(tmp_path_factory.mktemp("browser") / "run", n=600, explained=40, bootstrap=50)


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """``keras-audit app STORE --port P`` for this module's tests; stopped by its process id."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with browser.serve([store], log) as url:
        port = int(url.rsplit(":", 1)[1])
        yield port
    # The launcher passes the signal on: nothing may keep serving the port.
    deadline = time.monotonic() + 20
    while healthy(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not healthy(port), "the Streamlit server outlived the keras-audit process"


def _settle(page) -> None:
    page.wait_for_function(DRAWN, timeout=WAIT_MS)


def _shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)
    return path


@pytest.fixture(scope="module")
def chromium():
    with browser.chromium() as launched:
        yield launched


@pytest.fixture
def page(chromium):
    page = chromium.new_page(viewport={"width": 1400, "height": 2000})
    page.set_default_timeout(WAIT_MS)
    yield page
    page.close()


def test_gallery_filter_and_example_in_chromium(server, page, store, tmp_path):
    from playwright.sync_api import expect

    frame = pd.read_parquet(store / schema.PREDICTIONS)
    wrong = frame[~frame["correct"]].sort_values(["confidence", "index"], ascending=[False, True])
    first_wrong = int(wrong["index"].iloc[0])
    names = app_stores.CLASSES

    page.goto(f"http://127.0.0.1:{server}/gallery")
    expect(page.get_by_role("heading", name="Gallery")).to_be_visible()
    expect(page.get_by_text("600 of 600 examples match")).to_be_visible()
    expect(page.locator('[data-testid="stImage"]')).to_have_count(24)
    _settle(page)
    _shoot(page, tmp_path, "gallery")

    page.get_by_text("incorrect", exact=True).click()
    expect(page.get_by_text(f"{len(wrong)} of 600 examples match")).to_be_visible()
    expect(page.locator('[data-testid="stImage"]')).to_have_count(min(len(wrong), 24))
    _settle(page)
    captions = page.locator('[data-testid="stImage"]').all_inner_texts()
    assert captions and all(c.strip().startswith("✗") for c in captions), captions[:3]
    assert f"#{first_wrong} " in captions[0]
    _shoot(page, tmp_path, "gallery_incorrect")

    page.get_by_role("button", name=f"Open #{first_wrong}", exact=True).click()
    expect(page.get_by_role("heading", name="Example detail")).to_be_visible()
    row = frame.set_index("index").loc[first_wrong]
    expect(page.get_by_text(f"#{first_wrong} · true {names[row['label']]} · predicted {names[row['pred']]}")
           ).to_be_visible()
    expect(page.get_by_text("Probabilities")).to_be_visible()
    expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(2)  # probabilities, channels
    expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(2)  # annotations, channel stats
    _settle(page)
    # Tables draw on a canvas; their text is in the grid's accessible cells.
    annotations = page.locator('[data-testid="stDataFrame"]').first
    expect(annotations).to_contain_text(row["background"])
    expect(annotations).to_contain_text(row["path"].split("/")[0])
    assert f"example={first_wrong}" in page.url
    body = page.inner_text("body")
    for text in ("Grad-CAM", "Grad-CAM++", "Occlusion", "Activations", row["path"]):
        assert text in body
    shot = _shoot(page, tmp_path, "example")
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_clicking_a_confusion_cell_opens_its_examples(server, page, store, tmp_path):
    from playwright.sync_api import expect

    frame = pd.read_parquet(store / schema.PREDICTIONS)
    cell = int(((frame["label"] == 2) & (frame["pred"] == 0)).sum())
    page.goto(f"http://127.0.0.1:{server}/")
    expect(page.get_by_role("heading", name="Confusion matrix")).to_be_visible()
    _settle(page)
    _shoot(page, tmp_path, "overview")
    # Cells are drawn in data order, true class major: (triangle, circle) is the 7th.
    page.locator('[data-testid="stVegaLiteChart"]').first.locator("g.mark-rect path").nth(2 * 3 + 0).click()
    expect(page.get_by_role("heading", name="Gallery")).to_be_visible()
    expect(page.get_by_text(f"{cell} of 600 examples match")).to_be_visible()
    expect(page.locator('[data-testid="stImage"]')).to_have_count(min(cell, 24))
    _settle(page)
    captions = page.locator('[data-testid="stImage"]').all_inner_texts()
    assert captions and all("triangle → circle" in c for c in captions), captions[:3]
