"""The report: self-contained HTML, Markdown with its pictures, the planted slice first, bad stores refused."""

from __future__ import annotations

import json
import re

import pytest

from audit.errors import AuditError, StoreError
from audit.store import schema
from audit.views.report import write_report
from metrics_data import planted_predictions, write_store

NAMES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    frame = planted_predictions(600, 3, seed=31)
    path = write_store(tmp_path_factory.mktemp("report") / "run", frame, NAMES, model_name="tiny_cnn")
    metrics = json.loads((path / schema.METRICS).read_text())
    metrics["explanations"] = {"gradcam": {"deletion_auc": 0.21, "insertion_auc": 0.74, "n": 20}}
    (path / schema.METRICS).write_text(json.dumps(metrics))
    return path


@pytest.fixture(scope="module")
def html(store):
    path = write_report(store)
    assert path == store / "report.html"
    return path.read_text(encoding="utf-8")


def first_table_after(text: str, heading: str) -> str:
    return text[text.index(heading):].split("</table>")[0]


def test_html_is_self_contained(html):
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert links and all(link.startswith("data:") for link in links)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "@import" not in html and "url(" not in html


def test_html_has_pictures_and_sections(html):
    assert html.count("data:image/png;base64,") >= 6
    for section in ("Headline", "Where the model is worse", "Disparity per annotation", "Curves and calibration",
                    "Per class", "Thresholds", "Explanation quality", "Most confident mistakes"):
        assert f">{section}<" in html
    assert "tiny_cnn" in html
    assert "gradcam" in html  # the overlay of a mistake that has a heatmap
    assert "0.210" in html and "0.740" in html  # explanation quality from metrics.json


def test_planted_slice_comes_first(html):
    table = first_table_after(html, "Where the model is worse")
    first_row = table.split("<tbody>")[1].split("</tr>")[0]
    assert "background = dark" in first_row
    assert "<td>1</td>" in first_row


def test_markdown_report_writes_its_pictures(store, tmp_path):
    path = write_report(store, "md", tmp_path / "out" / "audit.md")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# keras-audit report: tiny_cnn")
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(pictures) >= 6
    for rel in pictures:
        assert rel.startswith("audit_files/")
        assert (path.parent / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line for line in text.splitlines() if line.startswith("| 1 |")]
    assert rows and "background = dark" in rows[0]


def test_out_may_be_a_directory(store, tmp_path):
    assert write_report(store, "html", tmp_path) == tmp_path / "report.html"


def test_run_without_images_or_heatmaps(tmp_path):
    frame = planted_predictions(300, 2, seed=32, builtins=False)
    path = write_store(tmp_path / "bare", frame, ["no", "yes"], images=False, heatmaps=False, bootstrap=50)
    text = write_report(path, "html").read_text(encoding="utf-8")
    assert "stored no images" in text
    assert "Equal-opportunity thresholds" in text  # binary model: per-slice thresholds shown
    assert "Explanation quality" not in text


def test_bad_stores_and_formats_are_refused(store, tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(AuditError, match="format"):
        write_report(store, "pdf")
    frame = planted_predictions(100, 2, seed=33, builtins=False)
    unfinished = write_store(tmp_path / "unfinished", frame, ["no", "yes"], bootstrap=0)
    manifest = json.loads((unfinished / schema.MANIFEST).read_text())
    (unfinished / schema.MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(StoreError, match="incomplete"):
        write_report(unfinished)
    (unfinished / schema.MANIFEST).write_text(json.dumps(manifest))
    (unfinished / schema.METRICS).unlink()
    with pytest.raises(StoreError, match="metrics.json is missing"):
        write_report(unfinished)
