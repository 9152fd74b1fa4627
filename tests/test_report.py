"""The report: self-contained HTML, Markdown with its pictures, the planted slice first, bad stores refused."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from audit.errors import AuditError, StoreError
from audit.store import schema
from audit.store.reader import Reader
from audit.views.findings import strongest_finding
from audit.views.report import slices_figure, write_report
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
    assert '<td class="num">1</td>' in first_row


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


# -- the strongest finding first, one row per example, charts that draw what they sort by ---------
class _Rows(HTMLParser):
    """The pictures (alt texts) and "no map" cells of each ``li.example`` of a report, in order."""

    def __init__(self):
        super().__init__()
        self.rows, self._inside, self._missing = [], False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "li" and attrs.get("class") == "example":
            self.rows.append([])
            self._inside = True
        elif tag == "p" and self._inside:
            self._missing = attrs.get("class") == "missing"
        elif tag == "img" and self._inside:
            self.rows[-1].append(attrs["alt"])

    def handle_endtag(self, tag):
        if tag == "li":
            self._inside = False
        elif tag == "p":
            self._missing = False

    def handle_data(self, data):
        if self._missing:
            self.rows[-1].append(data)


@pytest.fixture(scope="module")
def two_maps(tmp_path_factory):
    """A store with Grad-CAM and occlusion maps of 20 mistakes, and its report."""
    import numpy as np

    frame = planted_predictions(600, 3, seed=31)
    path = write_store(tmp_path_factory.mktemp("grid") / "run", frame, NAMES, model_name="tiny_cnn", bootstrap=0)
    explained = np.load(path / schema.HEATMAP_INDEX)
    rng = np.random.default_rng(1)
    np.save(path / schema.heatmap_file("occlusion"), rng.random((len(explained), 16, 16)).astype(np.float16))
    return path, write_report(path).read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    start = text.index(f">{heading}<")
    end = text.find("<h2>", start)
    return text[start:] if end < 0 else text[start:end]


def test_every_grid_row_holds_one_example_with_its_image_and_both_maps(two_maps):
    import numpy as np

    path, text = two_maps
    reader = Reader(path)
    explained = set(np.load(path / schema.HEATMAP_INDEX).tolist())
    parser = _Rows()
    parser.feed(_section(text, "Most confident mistakes"))
    wrong = reader.predictions[~reader.predictions["correct"]].sort_values("confidence", ascending=False,
                                                                           kind="stable")
    expected = wrong["index"].head(12).tolist()
    assert [int(re.match(r"#(\d+):", row[0])[1]) for row in parser.rows] == expected
    for i, row in zip(expected, parser.rows):
        assert len(row) == 3, row
        assert row[0].startswith(f"#{i}: true ") and row[0].endswith(", wrong)")
        if i in explained:
            assert row[1:] == [f"#{i}: gradcam", f"#{i}: occlusion"]
        else:
            assert row[1:] == ["gradcam: no map", "occlusion: no map"]
    assert any(i in explained for i in expected) and any(i not in explained for i in expected)


def test_report_leads_with_the_strongest_finding(two_maps):
    path, text = two_maps
    finding = strongest_finding(Reader(path))
    assert finding is not None and finding.label == "background = dark"
    assert text.index(">Strongest finding<") < text.index(">Headline<")
    section = _section(text, "Strongest finding")
    assert f"<p>{finding.sentence}.</p>" in section
    parser = _Rows()
    parser.feed(section)
    assert [int(re.match(r"#(\d+):", row[0])[1]) for row in parser.rows] == finding.worst.tolist()
    assert "mean map of the" in section


def test_gap_chart_draws_what_the_table_sorts_by(store):
    import numpy as np

    reader = Reader(store)
    worst = reader.worst_slices(k=15)
    assert len(worst) >= 2
    fig = slices_figure(worst, reader.metrics)
    ax = fig.axes[0]
    bars = sorted(ax.patches, key=lambda b: b.get_y())
    if ax.yaxis_inverted():  # the first row is drawn on top
        drawn_order = bars
    else:
        drawn_order = bars[::-1]
    widths = [b.get_width() for b in drawn_order]
    assert widths == sorted(widths), "top to bottom, the worst gap first"
    np.testing.assert_allclose(widths, [r["gap"] for r in worst])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [f"{r['column']} = {r['value']}" for r in worst]
    # the error bars span each gap's interval
    segments = [c for c in ax.collections if hasattr(c, "get_segments")][0].get_segments()
    spans = sorted((float(s[0][1]), float(s[0][0]), float(s[1][0])) for s in segments)
    np.testing.assert_allclose([(lo, hi) for _, lo, hi in spans], [r["gap_ci"] for r in worst], atol=1e-9)


def test_pictures_scale_with_the_page(html):
    css = html[html.index("<style>"):html.index("</style>")]
    assert re.search(r"figure img \{[^}]*max-width: 100%", css)


def test_hostile_slice_value_in_the_finding_is_text(tmp_path):
    frame = planted_predictions(600, 3, seed=31)
    frame["background"] = frame["background"].replace("dark", "<img src=x onerror=alert(1)>*dark*")
    path = write_store(tmp_path / "run", frame, NAMES, bootstrap=0)
    html_text = write_report(path).read_text(encoding="utf-8")
    assert "<img src=x" not in html_text
    assert "where background = &lt;img src=x onerror=alert(1)&gt;*dark*:" in html_text
    md = write_report(path, "md", tmp_path / "r.md").read_text(encoding="utf-8")
    assert "where background = &lt;img src=x onerror=alert(1)&gt;\\*dark\\*:" in md


def test_markdown_grid_keeps_each_example_on_one_table_row(two_maps, tmp_path):
    import numpy as np

    path, _ = two_maps
    explained = set(np.load(path / schema.HEATMAP_INDEX).tolist())
    text = write_report(path, "md", tmp_path / "r.md").read_text(encoding="utf-8")
    mistakes = text[text.index("## Most confident mistakes"):]
    rows = [line for line in mistakes.splitlines() if line.startswith("| \\#")]  # md_text escapes "#"
    assert len(rows) == 12
    for line in rows:
        i = int(re.match(r"\| \\#(\d+):", line)[1])
        pictures = re.findall(r"!\[((?:\\.|[^\]\\])*)\]\(([^)]+)\)", line)
        expected = 3 if i in explained else 1
        assert len(pictures) == expected and all(alt.startswith(f"\\#{i}") for alt, _ in pictures), line


def test_a_discovered_group_can_lead_the_report(two_maps, tmp_path):
    import shutil

    path, _ = two_maps
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    metrics = json.loads((copy / schema.METRICS).read_text())
    metrics["discovered"] = [{
        # 160 examples at least 40 points worse (64 mistakes surely added) beat the dark slice (48)
        "method": "search", "group": 0, "n": 160, "errors": 107, "accuracy": 0.33, "accuracy_ci": [0.22, 0.46],
        "rest_accuracy": 0.86, "gap": -0.53, "gap_ci": [-0.66, -0.4], "p_value": 1e-9, "q_value": 3e-7,
        "description": "site = b and dark", "predicate": {"site": "b", "background": "dark"}, "heatmap": None,
        "significant": True}]
    metrics["attention"] = [{"scope": "class", "name": "cat", "method": "gradcam", "n": 9,
                             "flag": "'cat' predictions put 61% of Grad-CAM mass in the top-left cell"}]
    (copy / schema.METRICS).write_text(json.dumps(metrics))
    text = write_report(copy).read_text(encoding="utf-8")
    section = _section(text, "Strongest finding")
    assert "<p>Accuracy drops 53 points (95% CI 40–66) where site = b &amp; background = dark: 160 examples.</p>" \
        in section
    assert "searching conjunctions" in section and "q = 3e-07" in section
    table = first_table_after(text, "Discovered groups")
    assert "site = b and dark" in table and '<td class="num">3e-07</td>' in table and "<td>yes</td>" in table
    assert "61% of Grad-CAM mass in the top-left cell" in text
