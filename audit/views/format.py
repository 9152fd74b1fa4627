r"""How views write numbers and user strings: one home for each, shared by the report, the
TensorBoard export, the terminal and the app.

>>> md_text("![x](http://example.invalid/p.png)")
'!\\[x\\](http://example.invalid/p.png)'
>>> with_interval(0.5, [0.25, 0.75])
'0.500 [0.250, 0.750]'
"""

from __future__ import annotations

import re

# -- escaping ----------------------------------------------------------------------------------
# Class names, annotations, paths and notes come from the user's files, and a Markdown view
# (GitHub, TensorBoard's text plugin, Streamlit) would turn `![x](http://…)` into a fetch of a
# remote image or `<script>` into script. HTML's own characters become entities (never markup in
# CommonMark or Python-Markdown); `~` and `$` too, because Python-Markdown, which TensorBoard
# uses, would show a backslash before them. The rest are backslash-escaped, as both accept.
_MD_TABLE = str.maketrans({
    "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&#x27;", "~": "&#126;", "$": "&#36;",
    **{c: "\\" + c for c in "\\`*[]{}|#"},
})
# `_` inside a word is never emphasis (so `tiny_cnn` stays readable); elsewhere it may be.
_MD_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
# List markers count only at the start of a line, and every escaped string may start one.
_MD_LEADING = re.compile(r"^([-+])|^(\d+)([.)])")


def md_text(value) -> str:
    """``value`` as Markdown that renders as exactly its text, on one line: no links, images or HTML."""
    text = re.sub(r"\s+", " ", str(value)).translate(_MD_TABLE)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    return _MD_LEADING.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", text)


def _format(x, digits: int | None, is_signed: bool, as_percent: bool) -> str:
    if x is None:  # stored for NaN
        return "n/a"
    if digits is None:
        digits = 1 if as_percent else 3
    return format(x, f"{'+' if is_signed else ''}.{digits}{'%' if as_percent else 'f'}")


def number(x, digits: int = 3) -> str:
    """A number to ``digits`` decimals; ``None`` (stored for NaN) reads "n/a"."""
    return _format(x, digits, False, False)


def signed(x, digits: int = 3) -> str:
    """A difference, always with its sign."""
    return _format(x, digits, True, False)


def percent(x, digits: int = 1, *, is_signed: bool = False) -> str:
    """A share as a percentage: ``0.125`` reads "12.5%"; ``is_signed`` for a difference ("+2.0%")."""
    return _format(x, digits, is_signed, True)


def interval(ci, is_signed: bool = False, *, digits: int | None = None, as_percent: bool = False,
             missing: str = "") -> str:
    """``[lo, hi]``, or ``missing`` when the interval is unknown.

    >>> interval([0.1, 0.25], as_percent=True), interval(None, missing="no interval")
    ('[10.0%, 25.0%]', 'no interval')
    """
    if not ci or ci[0] is None or ci[1] is None:
        return missing
    return f"[{_format(ci[0], digits, is_signed, as_percent)}, {_format(ci[1], digits, is_signed, as_percent)}]"


def with_interval(x, ci, is_signed: bool = False, *, digits: int | None = None, as_percent: bool = False) -> str:
    """A value followed by its interval: ``0.500 [0.250, 0.750]``."""
    text = _format(x, digits, is_signed, as_percent)
    bounds = interval(ci, is_signed, digits=digits, as_percent=as_percent)
    return f"{text} {bounds}" if bounds else text
