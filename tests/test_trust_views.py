"""Views of a store whose user strings are markup, and links and hosts a user can get wrong.

The store (``app_stores.hostile_store``) has class names, annotation columns and values, paths,
a model name, a note and a layer name that are HTML or Markdown: script, an ``onerror`` image,
a Markdown image of a remote URL, a ``javascript:`` link, bold text and a table pipe. Each view
is rendered by the renderer its readers use (markdown-it for CommonMark/GitHub and Streamlit,
Python-Markdown plus TensorBoard's own sanitiser for TensorBoard, ``html.parser`` for the HTML
report), and the oracle is the rendered elements: no script, no image but our own pictures, no
link, and the names shown as their text.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_stores
from app_stores import HOSTILE, HOSTILE_CLASSES
from audit.store import schema
from audit.views.format import md_text
from audit.views.report import write_report

ENTRY = Path(__file__).resolve().parents[1] / "audit" / "views" / "app" / "main.py"
TIMEOUT = 90
# The store folder's own name is hostile too: it is shown as the run's path.
RUN_DIR = "[d](javascript:alert(1)) **run**"


class Elements(HTMLParser):
    """Start tags with their attributes, and the text between them."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.strong: list[str] = []
        self.text: list[str] = []
        self._in_strong = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_strong += tag == "strong"

    def handle_endtag(self, tag):
        self._in_strong -= tag == "strong"

    def handle_data(self, data):
        self.text.append(data)
        if self._in_strong:
            self.strong.append(data)

    def named(self, *names: str) -> list[dict]:
        return [attrs for tag, attrs in self.tags if tag in names]

    def all_text(self) -> str:
        return "".join(self.text)


def commonmark(text: str) -> Elements:
    """As GitHub or Streamlit would parse it: raw HTML passed through, and links of any scheme kept
    (markdown-it drops ``javascript:`` links itself, which would hide that the syntax got through)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    md.validateLink = lambda url: True
    return Elements(md.render(text))


def tensorboard_html(text: str) -> Elements:
    """As TensorBoard's text plugin and descriptions show it: Python-Markdown, then its sanitiser."""
    from tensorboard.plugin_util import markdown_to_safe_html

    return Elements(markdown_to_safe_html(text))


def assert_inert(shown: Elements, where: str, own_images: str | None = None) -> None:
    """No script, no link, no image other than ours, no handler attribute, and ``**bold**`` not made bold
    (our own bold around a name is fine: the name inside it is still its literal text)."""
    assert not shown.named("script", "a", "iframe"), (where, shown.tags)
    for attrs in shown.named("img"):
        assert own_images is not None and attrs.get("src", "").startswith(own_images), (where, attrs)
    assert not [a for _, attrs in shown.tags for a in attrs if a.startswith("on")], (where, shown.tags)
    assert "bold" not in [t.strip() for t in shown.strong], (where, shown.strong)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    plain = app_stores.build_store(root / "plain", n=300, explained=30, bootstrap=30)
    variant = app_stores.variant_store(plain, root / "plain_b")
    return {"a": app_stores.hostile_store(plain, root / RUN_DIR),
            "b": app_stores.hostile_store(variant, root / (RUN_DIR + " b")), "plain": plain}


# -- md_text ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [*HOSTILE.values(), "_emph_ and *emph*", "`code` \\ # C#", "- item", "12. item",
                                   "~~struck~~ $x$", "<b>&amp;</b>", "line\nbreak", "> quote", "tiny_cnn"])
def test_md_text_renders_as_exactly_its_text(value):
    expected = " ".join(value.split())
    for render in (commonmark, tensorboard_html):
        shown = render(md_text(value))
        assert [t for t, _ in shown.tags] == ["p"], (render.__name__, value, shown.tags)
        assert shown.all_text().strip() == expected, render.__name__
    assert md_text("tiny_cnn") == "tiny_cnn"  # an underscore inside a word is never emphasis


# -- report ----------------------------------------------------------------------------------------------
def test_markdown_report_shows_hostile_names_as_text(hostile, tmp_path):
    path = write_report(hostile["a"], "md", tmp_path / "my report (1).md")
    text = path.read_text(encoding="utf-8")
    assets = urllib.parse.quote("my report (1)_files/")
    for render in (commonmark, tensorboard_html):
        shown = render(text)
        assert_inert(shown, render.__name__, own_images=assets)
        for name in (*HOSTILE_CLASSES, HOSTILE["img"] + HOSTILE["md_img"], f"note {HOSTILE['md_img']}"):
            assert name in shown.all_text(), (render.__name__, name)
    pictures = commonmark(text).named("img")
    assert len(pictures) >= 6
    for attrs in pictures:  # the escaped links still reach the picture files
        assert (path.parent / urllib.parse.unquote(attrs["src"])).read_bytes()[:4] == b"\x89PNG"


def test_markdown_report_table_cells_keep_their_pipes(hostile, tmp_path):
    text = write_report(hostile["a"], "md", tmp_path / "r.md").read_text(encoding="utf-8")
    per_class = text[text.index("### Per class"):].split("\n\n")[1]
    rows = commonmark(per_class)
    cells = [t for t in rows.text if t.strip()]
    assert cells[:5] == ["class", "precision", "recall", "F1", "support"]
    assert len(rows.named("td")) == 5 * len(HOSTILE_CLASSES)  # "a|b" did not split a cell
    assert HOSTILE_CLASSES[2] in cells


def test_html_report_has_no_injected_elements(hostile, tmp_path):
    shown = Elements(write_report(hostile["a"], "html", tmp_path / "r.html").read_text(encoding="utf-8"))
    allowed = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "ul", "li", "table",
               "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption"}
    assert {t for t, _ in shown.tags} <= allowed
    assert_inert(shown, "html", own_images="data:image/png;base64,")
    for name in HOSTILE_CLASSES:
        assert name in shown.all_text()


def test_report_inside_the_store_is_listed_as_its_own(hostile, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(hostile["plain"], store)
    listed = lambda: set(json.loads((store / schema.MANIFEST).read_text()).get("files", []))  # noqa: E731
    before = listed()
    outside = write_report(store, "md", tmp_path / "elsewhere" / "r.md")
    assert outside.is_file() and listed() == before
    path = write_report(store, "md")
    pictures = {p.relative_to(store).as_posix() for p in (store / "report_files").iterdir()}
    assert path == store / "report.md" and len(pictures) >= 6
    assert listed() - before == {"report.md", *pictures}
    write_report(store, "html")
    assert "report.html" in listed()
    assert not list(store.rglob("*.partial-*"))  # written through temporary names, none left


# -- TensorBoard -----------------------------------------------------------------------------------------
def test_tensorboard_text_and_descriptions_are_escaped(hostile, tmp_path):
    from audit.views import tensorboard as tb
    from test_tensorboard import read_events

    events = read_events(tb.export(hostile["a"], tmp_path / "logs"))
    (_, report, _), = events["text"]["report"]
    report = report.item().decode()
    assert md_text(HOSTILE_CLASSES[1]) in report
    assert_inert(tensorboard_html(report), "text")
    descriptions = {tag: series[0][2] for plugin in ("pr_curves", "images") for tag, series in events[plugin].items()}
    assert len(descriptions) > len(HOSTILE_CLASSES)
    for tag, description in descriptions.items():
        assert_inert(tensorboard_html(description), tag)
    assert any(f"**{md_text(HOSTILE_CLASSES[1])}**" in d for d in descriptions.values())
    assert any(md_text(HOSTILE["md_img"]) in d for t, d in descriptions.items() if t.startswith("pr/"))  # a slice
    # Example paths (with a backtick) are listed as escaped text, not in a code span they could end.
    paths = pd.read_parquet(hostile["a"] / schema.PREDICTIONS)["path"]
    listed = [d for t, d in descriptions.items() if t.endswith("/mistakes")]
    assert listed and all(any(md_text(p) in d for p in paths) for d in listed)


# -- the app ---------------------------------------------------------------------------------------------
MARKDOWN_FIELDS = {"body", "label", "help", "caption", "content"}
PLAIN_ELEMENTS = {"Text", "Code", "Dataframe", "VegaLiteChart", "ArrowVegaLiteChart"}


def markdown_strings(message) -> list[str]:
    """Every string Streamlit renders as Markdown in one element's proto (labels, help, captions, bodies,
    radio options); selectbox and multiselect options render as plain text and are left out."""
    name = message.DESCRIPTOR.name
    if name in PLAIN_ELEMENTS:
        return []
    out = []
    for field, value in message.ListFields():
        values = list(value) if field.is_repeated else [value]
        if field.message_type is not None:
            out += [s for v in values for s in markdown_strings(v)]
        elif field.type == field.TYPE_STRING and (field.name in MARKDOWN_FIELDS
                                                 or (field.name == "options" and name == "Radio")):
            out += values
    return out


def page_strings(at: AppTest) -> list[str]:
    def walk(node):
        proto = getattr(node, "proto", None)
        found = markdown_strings(proto) if proto is not None else []
        for child in (getattr(node, "children", None) or {}).values():
            found += walk(child)
        return found

    return walk(at.main) + walk(at.sidebar)


def visit(at: AppTest, page: str | None = None) -> list[str]:
    if page:
        at.switch_page(f"screens/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    strings = page_strings(at)
    for s in strings:
        assert_inert(commonmark(s), f"{page}: {s!r}")
    return strings


def start(monkeypatch, *runs) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(ENTRY), *map(str, runs)])
    return AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)


def test_app_pages_show_hostile_strings_as_text(hostile, monkeypatch):
    at = start(monkeypatch, hostile["a"], hostile["b"])
    shown = visit(at)
    assert at.title[0].value == f"Overview · {md_text(HOSTILE['img'] + HOSTILE['md_img'])}"
    explained = json.loads((hostile["a"] / schema.MANIFEST).read_text())["explained"]
    frame = pd.read_parquet(hostile["a"] / schema.PREDICTIONS)
    explained_rows = set(np.load(hostile["a"] / schema.HEATMAP_INDEX).tolist())
    index = int(next(i for i in frame.loc[frame["label"] == 1, "index"] if i in explained_rows))
    at.session_state["ex_index"] = index
    for page in ("gallery", "example", "slices", "curves", "calibration", "compare"):
        shown += visit(at, page)
        if page == "example":
            assert at.selectbox(key="ex_layer").value == explained["layer"]
            texts = [commonmark(s).all_text() for s in shown]
            assert any(t.startswith(f"#{index} · true {HOSTILE_CLASSES[1]}") for t in texts)
            assert any(t.startswith(app_stores.HOSTILE_LAYER + ":") for t in texts)
    for column in app_stores.HOSTILE_COLUMNS.values():  # each hostile annotation on the slices page
        at.session_state["sl_annotation"] = column
        shown += visit(at, "slices")
    at.session_state["cv_class"] = 1
    shown += visit(at, "curves")
    assert any(md_text(HOSTILE_CLASSES[1]) in s for s in shown)
    assert any(md_text(HOSTILE["img"]) in s for s in shown)


def test_app_refusal_shows_a_hostile_path_as_text(monkeypatch, tmp_path):
    at = start(monkeypatch, tmp_path / HOSTILE["js_link"])
    visit(at)
    assert at.error and HOSTILE["js_link"] in commonmark(at.error[0].value).all_text()


# -- links -----------------------------------------------------------------------------------------------
BAD_LINKS = ["²", "-1", "3.0", "+3", " 3", "abc", "", "300", "9" * 5000, HOSTILE["md_img"], ["3", "4"]]


def test_malformed_example_links_are_ignored_with_a_notice(hostile, monkeypatch):
    at = start(monkeypatch, hostile["plain"])
    visit(at, "example")
    for value in BAD_LINKS:
        before = at.session_state["ex_index"]
        at.query_params["example"] = value
        visit(at)
        notices = [i.value for i in at.info if i.value.startswith("Ignored the link's example=")]
        assert notices, value
        assert "not an example index of this run" in notices[0] or "give one example index" in notices[0]
        assert at.session_state["ex_index"] == before, value
        assert at.subheader[0].value.startswith(f"#{before} ")
        assert at.query_params["example"] == str(before)  # the link now names what is shown
    at.query_params["example"] = ["7", "7"]  # the same value twice is one link
    visit(at)
    assert at.session_state["ex_index"] == 7 and not [i for i in at.info if "Ignored" in i.value]


def test_example_link_to_a_gap_in_the_indices(hostile, monkeypatch, tmp_path):
    store = tmp_path / "gap"
    shutil.copytree(hostile["plain"], store)
    frame = pd.read_parquet(store / schema.PREDICTIONS)
    from audit.store.writer import write_parquet

    write_parquet(store / schema.PREDICTIONS, frame[frame["index"] != 5].reset_index(drop=True))
    at = start(monkeypatch, store)
    at.query_params["example"] = "5"
    visit(at, "example")
    assert any("example=5: not an example index of this run" in i.value for i in at.info)
    at.session_state["ex_index"] = 5  # typed into the number box: the next stored example
    visit(at)
    assert at.subheader[0].value.startswith("#6 ")


# -- the launcher ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("192.168.1.20", True), ("::", True),
                                          ("lab-box.lan", True), ("127.0.0.1", False), ("localhost", False),
                                          ("::1", False), ("127.0.1.1", False)])
def test_binding_beyond_loopback_warns(host, warned):
    from audit.views.app.launch import exposure_warning

    warning = exposure_warning(host)
    assert bool(warning) == warned
    if warned:
        assert "\n" not in warning and host in warning and "no login" in warning


def test_launch_prints_the_warning_to_stderr(monkeypatch, capsys):
    import subprocess

    from audit.views.app import launch as app_launcher

    class Done:
        def __init__(self, cmd):
            self.cmd = cmd

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Done)
    assert app_launcher.launch([], host="0.0.0.0") == 0
    assert app_launcher.launch([], host="127.0.0.1") == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "0.0.0.0" in err[0]
