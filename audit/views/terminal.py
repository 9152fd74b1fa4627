"""The terminal view: the summary after a run and the comparison of two runs, as rich tables.

Both read what the store holds (``metrics.json``, a comparison dict from
:func:`audit.metrics.paired.compare_runs`) and compute nothing; numbers go
through :mod:`audit.views.format`, and every string that came from the user's
files is added as plain text, never as rich markup.

A comparison of run B is kept in run A as one of A's own files
(:func:`comparison_file`), so a re-run into A removes it; the app reads it
through :func:`stored_comparison`, which refuses one made for another
version of either run.

Example:
    >>> from audit.metrics.paired import compare_runs              # doctest: +SKIP
    >>> print_summary(Path("audit_out"))                          # doctest: +SKIP
    >>> print_comparison(compare_runs(Path("a"), Path("b")))      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

from audit.store import schema
from audit.views.format import number, percent, with_interval

COMPARISON_DIR = "comparisons"
# Rendered by the terminal, which has no markup of its own for them.
_WINNER = {"a": ("A better", "bold cyan"), "b": ("B better", "bold magenta"), "tie": ("no clear winner", "dim"),
           None: ("", "")}


def _console(console=None):
    """The summary's console: soft wrap, so a long command or path is never broken over lines (a pipe
    or a file gets 80 columns from rich, and a hard-wrapped command cannot be pasted)."""
    from rich.console import Console

    return console if console is not None else Console(highlight=False, soft_wrap=True)


def _table(title: str | None, *columns: str):
    """A table whose first column is left-aligned and every other one right-aligned."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False)
    for k, name in enumerate(columns):
        table.add_column(name, justify="left" if k == 0 else "right")
    return table


def _winner(side):
    from rich.text import Text

    text, style = _WINNER[side]
    return Text(text, style=style)


# -- the summary of one run --------------------------------------------------------------------
def _finding_lines(finding) -> list:
    """The strongest finding first: its sentence, what it means, how it was found."""
    from rich.text import Text

    from audit.views.findings import meaning, source

    lines = [Text.assemble(("\nStrongest finding: ", "bold red"), (finding.sentence, "bold")),
             Text("  " + meaning(finding))]
    found = source(finding)
    if found:
        lines.append(Text(f"  {found[0].upper()}{found[1:]}."))
    return lines


def _worst_slices(run, finding) -> list:
    """The flagged slices table; under it, the worst slice in words when the finding is not that slice."""
    from rich.text import Text

    from audit.views.findings import drop_sentence, slice_label

    worst = run.worst_slices(k=5)
    if not worst:
        return [Text("No slice differs from the rest beyond its confidence interval.")]
    table = _table("Worst flagged slices (gap to the rest, 95% CI)", "slice", "n", "accuracy", "gap")
    for row in worst:
        table.add_row(Text(slice_label(run.metrics, row["column"], row["value"])), str(row["n"]),
                      number(row["accuracy"]),
                      with_interval(row["gap"], row["gap_ci"], is_signed=True))
    parts: list = [Text(), table]
    top = worst[0]
    repeated = finding is not None and finding.filter == {"column": top["column"], "value": top["value"]}
    if not repeated and None not in top["gap_ci"]:
        where = f"where {slice_label(run.metrics, top['column'], top['value'])}"
        parts.append(Text("  Worst slice: " + drop_sentence(top["gap"], top["gap_ci"], where, top["n"])))
    return parts


def _commands(store: Path) -> list[str]:
    """Where to look next, as commands that paste: the store path quoted for a shell."""
    where = shlex.quote(str(store))
    lines = [f"\nResults: {store}", f"  app:         keras-audit app {where}"]
    if (Path(store) / schema.TENSORBOARD_DIR).is_dir():
        logs = shlex.quote(str(Path(store) / schema.TENSORBOARD_DIR))
        lines.append(f"  TensorBoard: tensorboard --logdir {logs} --host 127.0.0.1")
    lines.append(f"  report:      keras-audit report {where}")
    return lines


def print_summary(store: Path, console=None) -> None:
    """Print the headline of a finished run: the strongest finding in words, accuracy, worst slices,
    where to look next."""
    from rich.text import Text

    from audit.store.reader import Reader
    from audit.views.findings import strongest_finding

    console = _console(console)
    run = Reader(store)
    m, model = run.metrics, run.model_info
    console.print(Text.assemble(
        "\n", (str(model["name"]), "bold"), f" on {m['num_examples']} examples: accuracy ",
        (number(m["accuracy"]), "bold"), f", balanced accuracy {number(m.get('balanced_accuracy'))}",
        " (logits: softmax applied)" if model.get("softmax_applied") else "",
    ))
    finding = strongest_finding(run)
    for part in (_finding_lines(finding) if finding is not None else []):
        console.print(part)
    for note in run.manifest.get("notes", []):
        console.print(Text.assemble(("note: ", "yellow"), str(note)))
    for part in _worst_slices(run, finding):
        console.print(part)
    for line in _commands(store):
        # soft_wrap: a command is one line whatever the width; the terminal may fold it, a pipe never does
        console.print(Text(line), soft_wrap=True)


# -- the comparison of two runs ----------------------------------------------------------------
def _difference(x, ci) -> str:
    return with_interval(x, ci, is_signed=True)


def _overall_tables(result: dict) -> list:
    from rich.text import Text

    o, g = result["overall"], result["agreement"]
    table = _table(None, "metric", "A", "B", "B - A [95% CI]", "")
    for name, key in (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy")):
        table.add_row(name, number(o[f"{key}_a"]), number(o[f"{key}_b"]),
                      _difference(o[f"{key}_difference"], o[f"{key}_difference_ci"]), _winner(o[f"{key}_winner"]))
    p = o.get("mcnemar_p")
    agreement = Text(
        f"Only A right: {g['only_a_right']}, only B right: {g['only_b_right']}, both right: {g['both_right']}, "
        f"both wrong: {g['both_wrong']}" + (f"; McNemar exact p = {p:.3g}" if p is not None else "")
        + f"\nPredictions differ on {g['predictions_differ']} examples ({percent(g['predictions_differ_rate'])})"
    )
    return [table, agreement]


def _class_table(result: dict, max_rows: int):
    table = _table("Recall per class", "class", "n", "A", "B", "B - A [95% CI]", "")
    for c in result["per_class"][: max(max_rows, 1) * 3]:
        table.add_row(str(c["class"]), str(c["support"]), number(c["recall_a"]), number(c["recall_b"]),
                      _difference(c["difference"], c["difference_ci"]), _winner(c["winner"]))
    return table


def _slice_parts(result: dict, max_rows: int) -> list:
    from rich.text import Text

    decided = sorted((s for s in result["slices"] if s["winner"] in ("a", "b")),
                     key=lambda s: -abs(s["difference"] or 0))
    if not decided:
        return [Text.assemble(("Slices where one model wins\n", "bold"),
                              f"  none of {len(result['slices'])} slices separates the models beyond its interval")]
    table = _table("Slices where one model wins", "slice", "n", "A", "B", "B - A [95% CI]", "")
    for s in decided[:max_rows]:
        table.add_row(Text(f"{s['column']} = {s['value']}"), str(s["n"]), number(s["accuracy_a"]),
                      number(s["accuracy_b"]), _difference(s["difference"], s["difference_ci"]), _winner(s["winner"]))
    more = [Text(f"  ... and {len(decided) - max_rows} more")] if len(decided) > max_rows else []
    return [table, *more]


def _disagreement_table(result: dict, max_rows: int):
    shown = result["disagreements"][:max_rows]
    table = _table(f"Examples where they disagree (first {len(shown)} of {result['agreement']['predictions_differ']})",
                   "example", "true", "A says", "B says", "right")
    for d in shown:
        table.add_row(f"#{d['index']} {d['path'] or ''}".strip(), str(d["label"]),
                      f"{d['pred_a']} ({number(d['confidence_a'])})", f"{d['pred_b']} ({number(d['confidence_b'])})",
                      {"a": "A", "b": "B"}.get(d["right"], d["right"]))
    return table


def render_comparison(result: dict, *, max_rows: int = 10):
    """The comparison as one rich renderable (print it with a ``rich.console.Console``)."""
    from rich.console import Group
    from rich.text import Text

    a, b = result["a"], result["b"]
    parts = [
        Text.assemble(("A ", "bold"), f"{a['model']} ({a['path']})"),
        Text.assemble(("B ", "bold"), f"{b['model']} ({b['path']})"),
        Text(f"{result['num_examples']} examples, paired bootstrap with {result['bootstrap']} resamples "
             "(95% CI of B - A)\n"),
        *_overall_tables(result), Text(), _class_table(result, max_rows), Text(), *_slice_parts(result, max_rows),
    ]
    if result["disagreements"]:
        parts += [Text(), _disagreement_table(result, max_rows)]
    parts += [Text.assemble(("note: ", "yellow"), str(note)) for note in result.get("notes", [])]
    return Group(*parts)


def print_comparison(result: dict, console=None, *, max_rows: int = 10) -> None:
    _console(console).print(render_comparison(result, max_rows=max_rows))


# -- a comparison kept in run A ----------------------------------------------------------------
def _identity(store: Path) -> dict:
    """What names one version of a run: where it is, its model file's hash, when it finished."""
    manifest = schema.read_manifest_file(store) or {}
    return {"path": str(Path(store).resolve()), "sha256": (manifest.get("model") or {}).get("sha256"),
            "finished_at": manifest.get("finished_at")}


def comparison_file(store_b: Path) -> str:
    """Where run A keeps its comparison with ``store_b``: named by B's model hash and B's path."""
    identity = _identity(store_b)
    where = hashlib.sha256(identity["path"].encode("utf-8")).hexdigest()[:12]
    return f"{COMPARISON_DIR}/{(identity['sha256'] or 'unhashed')[:16]}-{where}.json"


def comparison_bytes(store_a: Path, store_b: Path, *, result: dict | None = None,
                     refused: str | None = None) -> bytes:
    """The stored document: both runs' identities and the comparison, or why they cannot be compared."""
    document = {"runs": {"a": _identity(store_a), "b": _identity(store_b)},
                "comparison": result, "refused": refused}
    return json.dumps(schema.to_json(document), allow_nan=False).encode("utf-8")


def stored_comparison(store_a: Path, store_b: Path) -> dict | None:
    """The document kept in ``store_a`` for these exact versions of both runs, or None.

    It is ``{"runs", "comparison", "refused"}``: ``comparison`` is the dict of
    :func:`audit.metrics.paired.compare_runs`; ``refused`` the reason the runs
    cannot be compared. One made before either run was rewritten is None.
    """
    try:
        document = json.loads((Path(store_a) / comparison_file(store_b)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("runs") != {"a": _identity(store_a), "b": _identity(store_b)}:
        return None
    return document


def compare_command(store_a, store_b) -> str:
    """The command that computes the comparison and keeps it in run A."""
    return f"keras-audit compare {shlex.quote(str(store_a))} {shlex.quote(str(store_b))} --save"
