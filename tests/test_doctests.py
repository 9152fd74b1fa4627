"""The examples in the docstrings: the runnable ones run, and the skipped ones have not rotted.

``RUNNABLE`` lists the modules whose examples run (no ``# doctest: +SKIP``). A module under audit/
that gains a runnable example must be added to it, which a test checks by reading the source
(without importing it). Skipped examples (they need a model or a store) are not run, but every
import in them must resolve, every call of a keras-audit function or class in them must fit its
signature, and every ``sample_models/`` path in them must exist, so a rename cannot leave them behind.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "audit"
RUNNABLE = [
    "audit",
    "audit.discover.attention",
    "audit.discover.fdr",
    "audit.engine.selection",
    "audit.engine.shard",
    "audit.errors",
    "audit.explain.activations",
    "audit.explain.base",
    "audit.explain.gradcam",
    "audit.explain.gradients",
    "audit.explain.occlusion",
    "audit.explain.quality",
    "audit.explain.registry",
    "audit.explain.scorecam",
    "audit.metrics.intervals",
    "audit.pipeline",
    "audit.progress",
    "audit.viz",
    "audit.views.findings",
    "audit.views.format",
    "audit.views.tensorboard",
    "audit.views.app.example_filter",
    "audit.views.app.operating_point",
    "audit.views.app.store_cache",
    "audit.wit",
]
# Streamlit scripts: importing one runs the page, so their examples are neither run nor resolved.
SCRIPTS = ("audit.views.app.main", "audit.views.app.screens.")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
SKIP = doctest.OPTIONFLAGS_BY_NAME["SKIP"]
_parser = doctest.DocTestParser()


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _examples(path: Path):
    """(docstring's line, example) for every example in the module's docstrings, read from the source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            for example in _parser.get_examples(doc or ""):
                yield getattr(node, "lineno", 1), example


def _modules() -> dict[str, list]:
    """Module name -> its examples, for every module under audit/ that has any."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        examples = list(_examples(path))
        if examples:
            found[_module_name(path)] = (path, examples)
    return found


MODULES = _modules()


def test_every_module_with_runnable_examples_is_listed():
    runnable = sorted(name for name, (_, examples) in MODULES.items()
                      if any(not ex.options.get(SKIP, False) for _, ex in examples))
    scripts = [name for name in runnable if name.startswith(SCRIPTS)]
    assert not scripts, f"examples in Streamlit scripts cannot run (importing one runs the page): {scripts}"
    assert sorted(RUNNABLE) == runnable, (
        f"add to RUNNABLE: {sorted(set(runnable) - set(RUNNABLE))}; "
        f"remove (no runnable example left): {sorted(set(RUNNABLE) - set(runnable))}")


@pytest.mark.parametrize("name", RUNNABLE)
def test_examples_run(name):
    module = importlib.import_module(name)
    out = io.StringIO()
    with redirect_stdout(out):
        result = doctest.testmod(module, optionflags=FLAGS, report=True)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0, out.getvalue()


def _resolve(names: dict, node: ast.expr):
    """The object an example's ``f`` or ``module.f`` names, or None."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        owner = names.get(node.value.id)
        if inspect.ismodule(owner):
            if not hasattr(owner, node.attr):
                raise AttributeError(f"{node.value.id}.{node.attr} does not exist")
            return getattr(owner, node.attr)
    return None


def _call_problem(names: dict, call: ast.Call) -> str | None:
    """Why ``call`` cannot bind to the keras-audit callable it names, or None."""
    func, args = call.func, list(call.args)
    try:
        if isinstance(func, ast.Call):  # Explainer(model, ...)(images, targets=...)
            cls = _resolve(names, func.func)
            target = cls.__call__ if inspect.isclass(cls) else None
            args = [ast.Constant(None), *args]  # self
        else:
            target = _resolve(names, func)
    except AttributeError as e:
        return str(e)
    if target is None or not callable(target) or not getattr(target, "__module__", "").startswith("audit"):
        return None
    if any(isinstance(a, ast.Starred) for a in args) or any(k.arg is None for k in call.keywords):
        return None
    try:
        inspect.signature(target).bind(*args, **{k.arg: None for k in call.keywords})
    except TypeError as e:
        return f"{ast.unparse(call)}: {e}"
    except ValueError:  # no signature to read
        return None
    return None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith(SCRIPTS)))
def test_skipped_examples_have_not_rotted(name):
    path, examples = MODULES[name]
    names = dict(vars(importlib.import_module(name)))
    problems = []
    for line, example in examples:
        where = f"{path.relative_to(REPO)}:{line + example.lineno} (docstring at line {line})"
        try:
            tree = ast.parse(example.source)
        except SyntaxError as e:
            problems.append(f"{where}: not Python: {e.msg}")
            continue
        for node in ast.walk(tree):  # imports first, so calls below see their names
            if isinstance(node, ast.Import):
                for alias in node.names:
                    try:
                        module = importlib.import_module(alias.name)
                    except ImportError as e:
                        problems.append(f"{where}: import {alias.name}: {e}")
                        continue
                    names[alias.asname or alias.name.split(".")[0]] = (
                        module if alias.asname else importlib.import_module(alias.name.split(".")[0]))
            elif isinstance(node, ast.ImportFrom) and node.module:
                try:
                    module = importlib.import_module(node.module)
                except ImportError as e:
                    problems.append(f"{where}: from {node.module} import ...: {e}")
                    continue
                for alias in node.names:
                    if hasattr(module, alias.name):
                        names[alias.asname or alias.name] = getattr(module, alias.name)
                        continue
                    try:
                        names[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        problems.append(f"{where}: {node.module} has no {alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                problem = _call_problem(names, node)
                if problem:
                    problems.append(f"{where}: {problem}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("sample_models/") and not (REPO / node.value).exists():
                problems.append(f"{where}: {node.value!r} does not exist")
    assert not problems, "rotted examples:\n" + "\n".join(problems)
