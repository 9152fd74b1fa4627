"""Layering: who may import whom inside ``audit/`` (see /work/shared/DESIGN.md, "One direction of flow").

Every ``import`` and ``from ... import`` is read from the source with ``ast``,
wherever it sits (module level, inside a function, under ``if TYPE_CHECKING``),
relative imports resolved. The rules:

* views (``audit/views``) import of ``audit`` only the store, ``audit.viz``,
  ``audit.errors`` and other views, and never TensorFlow, Keras or
  scikit-learn, at any level. One exception: ``audit/views/tensorboard.py``
  writes TensorBoard's own summaries (``tf.summary`` writers), so it may import
  ``tensorflow``, inside the functions that write them (importing the module
  stays TensorFlow-free, which the app relies on).
* the engine side (engine, explain, io, metrics, store, viz, discover,
  progress) never imports ``audit.views``.
* the store imports nothing of ``audit`` but ``audit.errors``; ``audit.errors``
  imports nothing of ``audit``.
* adapters (``audit/__init__.py``, ``audit/cli.py``, ``audit/callbacks.py``,
  ``audit/pipeline.py``, ``audit/wit``) wire both sides and may import anything.
* every module is one of these, so a new module has to be placed before it lands.

Each test lists every violation it finds, not just the first.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

AUDIT = Path(__file__).resolve().parents[1] / "audit"

VIEWS = ("audit.views",)
VIEW_MAY_IMPORT = ("audit.store", "audit.viz", "audit.errors", "audit.views")
ENGINE = ("audit.engine", "audit.explain", "audit.io", "audit.metrics", "audit.store", "audit.viz",
          "audit.discover", "audit.progress")
STORE = ("audit.store",)
STORE_MAY_IMPORT = ("audit.store", "audit.errors")
ADAPTERS = ("audit", "audit.cli", "audit.callbacks", "audit.pipeline", "audit.wit")  # "audit": the __init__
SHARED = ("audit.errors",)
HEAVY = ("tensorflow", "keras", "sklearn")
# (module, third-party package) pairs allowed in views despite HEAVY; see the module docstring.
VIEW_HEAVY_ALLOWED = {("audit.views.tensorboard", "tensorflow")}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "audit.views.report"
    target: str  # what it imports, resolved: "audit.metrics.slices", "numpy", "audit" (the root)
    line: int
    top_level: bool  # at module level (runs on import), not inside a function
    file: str = ""  # path from the repository root, for the message

    def __str__(self) -> str:
        where = "" if self.top_level else " (inside a function)"
        return f"{self.file or self.module}:{self.line} imports {self.target}{where}"


def module_name(path: Path, root: Path = AUDIT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split("."))
    base = root.parent / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _function_spans(tree: ast.AST) -> list[tuple[int, int]]:
    return [(n.lineno, n.end_lineno) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]


def imports_of(source: str, module: str, *, is_package: bool, root: Path = AUDIT, file: str = "") -> list[Import]:
    """Every import in ``source`` (the code of ``module``), resolved to the names it loads."""
    tree = ast.parse(source)
    spans = _function_spans(tree)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        top = not any(a <= getattr(node, "lineno", 0) <= b for a, b in spans)
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno, top, file) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                # "from audit.store import schema" loads the module audit.store.schema;
                # "from audit import Reader" loads the package audit (its __init__).
                sub = f"{base}.{alias.name}"
                target = sub if alias.name != "*" and _is_module(sub, root) else base
                found.append(Import(module, target, node.lineno, top, file))
    # One entry per name loaded per line ("from m import a, b" loads m once); ast.walk is
    # breadth-first, so sort to make the messages read in file order.
    return sorted({(i.target, i.line): i for i in found}.values(), key=lambda i: (i.line, i.target))


def all_imports(root: Path = AUDIT) -> list[Import]:
    out = []
    for path in sorted(root.rglob("*.py")):
        out += imports_of(path.read_text(), module_name(path, root), is_package=path.name == "__init__.py", root=root,
                          file=path.relative_to(root.parent).as_posix())
    return out


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _audit(name: str) -> bool:
    return within(name, ("audit",))


def view_violations(imports: list[Import]) -> list[str]:
    bad = []
    for i in imports:
        if not within(i.module, VIEWS):
            continue
        top = i.target.split(".")[0]
        if _audit(i.target) and not within(i.target, VIEW_MAY_IMPORT):
            bad.append(f"{i}: a view may import only {', '.join(VIEW_MAY_IMPORT)}")
        elif top in HEAVY and (i.module, top) not in VIEW_HEAVY_ALLOWED:
            bad.append(f"{i}: views never import {top}")
        elif top in HEAVY and i.top_level:
            bad.append(f"{i}: only inside the functions that write summaries, so importing the view stays light")
    return bad


def engine_violations(imports: list[Import]) -> list[str]:
    return [f"{i}: the engine never imports views" for i in imports
            if within(i.module, ENGINE) and within(i.target, VIEWS)]


def store_violations(imports: list[Import]) -> list[str]:
    bad = [f"{i}: the store imports nothing of audit but audit.errors" for i in imports
           if within(i.module, STORE) and _audit(i.target) and not within(i.target, STORE_MAY_IMPORT)]
    bad += [f"{i}: audit.errors imports nothing of audit" for i in imports
            if within(i.module, SHARED) and _audit(i.target)]
    return bad


def unplaced_modules(root: Path = AUDIT) -> list[str]:
    placed = (*VIEWS, *ENGINE, *SHARED)
    names = [module_name(p, root) for p in sorted(root.rglob("*.py"))]
    return [n for n in names if not within(n, placed) and n not in ADAPTERS and not within(n, ADAPTERS[1:])]


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return all_imports()


def _report(rule: str, violations: list[str]) -> None:
    for v in violations:
        print(f"LAYERING [{rule}] {v}")
    assert not violations, f"{len(violations)} {rule} violation(s):\n" + "\n".join(violations)


def test_views_import_only_store_viz_errors_and_views(imports):
    _report("views", view_violations(imports))


def test_engine_never_imports_views(imports):
    _report("engine", engine_violations(imports))


def test_store_imports_only_errors(imports):
    _report("store", store_violations(imports))


def test_every_module_has_a_layer():
    _report("unplaced", unplaced_modules())


# -- the scanner itself: these are what make the rules above able to fail ----------------------------
def _fake_tree(tmp_path: Path) -> Path:
    root = tmp_path / "audit"
    for rel in ("__init__.py", "errors.py", "metrics/__init__.py", "metrics/slices.py", "store/__init__.py",
                "store/schema.py", "views/__init__.py", "views/report.py", "views/tensorboard.py", "engine/__init__.py",
                "engine/run.py", "oddity.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    (root / "views/report.py").write_text(
        "import numpy as np\n"
        "from audit.store import schema\n"
        "from ..metrics.slices import worst_slices\n"       # relative, resolved
        "def f():\n    from audit.metrics import compute_metrics\n    import sklearn.metrics\n"
        "from audit import Reader\n"                          # the root package, not a module
    )
    (root / "views/tensorboard.py").write_text(
        "import tensorflow as tf\ndef g():\n    import tensorflow\n    import keras\n")
    (root / "store/schema.py").write_text(
        "from audit.errors import AuditError\nfrom . import schema\nfrom audit.metrics import x\n")
    (root / "engine/run.py").write_text("def h():\n    from audit.views.tensorboard import export\n")
    return root


def test_scanner_finds_imports_everywhere_and_resolves_them(tmp_path):
    root = _fake_tree(tmp_path)
    found = {(i.module, i.target, i.top_level) for i in all_imports(root)}
    assert ("audit.views.report", "audit.metrics.slices", True) in found
    assert ("audit.views.report", "audit.metrics", False) in found
    assert ("audit.views.report", "sklearn.metrics", False) in found
    assert ("audit.views.report", "audit.store.schema", True) in found
    assert ("audit.views.report", "audit", True) in found
    assert ("audit.store.schema", "audit.store.schema", True) in found
    assert ("audit.engine.run", "audit.views.tensorboard", False) in found


def test_rules_report_every_violation(tmp_path):
    root = _fake_tree(tmp_path)
    found = all_imports(root)
    views = view_violations(found)
    assert [v.split(":")[1].split(" imports ")[1] for v in views] == [
        "audit.metrics.slices", "audit.metrics (inside a function)", "sklearn.metrics (inside a function)",
        "audit", "tensorflow", "keras (inside a function)",
    ]
    assert len(engine_violations(found)) == 1 and "engine/run.py:2" in engine_violations(found)[0]
    assert [v.split(" imports ")[1].split(":")[0] for v in store_violations(found)] == ["audit.metrics"]
    assert unplaced_modules(root) == ["audit.oddity"]
