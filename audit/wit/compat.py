"""Making witwidget 1.8.1, its last release, work on TensorFlow 2.21, protobuf 7 and IPython 8 / 9.

Each fix below has a guard that looks at what is installed, and runs only where
that guard says it is needed:

=====================  ==================================================  ==========================================
fix                    needed when                                         what it changes, and for how long
=====================  ==================================================  ==========================================
rebuilt ``*_pb2``      protobuf >= 4 on its upb or C++ backend (they       a finder first on ``sys.meta_path``, for
                       refuse old protoc output); not on the pure-Python   witwidget's import only; the rebuilt files
                       backend or protobuf 3                               join protobuf's default descriptor pool,
                                                                           as any generated module's do
``display`` name       ``IPython.core.display`` has no ``display``         ``IPython.core.display.display``, lent for
                       (IPython 9)                                         witwidget's import only
JSON keyword           ``json_format.MessageToJson`` has no                ``witwidget._utils.inference_utils.
                       ``including_default_value_fields`` (protobuf        json_format``: a wrapper, from then on
                       >= 5.26 renamed it)
thumbnail sprite       witwidget <= 1.8.1 (it draws one image at a time    ``witwidget._utils.inference_utils.
                       in a TF1-style graph loop, quadratic in the         create_sprite_image``: numpy + PIL, same
                       examples: ~10 s for 540, after every edit)          layout, from then on
=====================  ==================================================  ==========================================

Nothing else outside witwidget changes; no environment variable is read or set.
Importing this module imports neither TensorFlow, protobuf nor witwidget.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import io
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from audit.errors import AuditError

INSTALL_HINT = "pip install 'keras-audit[wit]' && pip install --no-deps witwidget==1.8.1"
IMAGE_FEATURE = "image/encoded"  # the feature WIT draws thumbnails from
TESTED_WITWIDGET = (1, 8, 1)
_VENDORED_PROTOS = "witwidget._vendor."
_PROTO_FAILURE = "Descriptors cannot be created directly"


def _version(distribution: str) -> tuple[int, ...] | None:
    """The installed version of ``distribution`` as numbers (``(7, 36, 2)``), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version(distribution)
    except PackageNotFoundError:
        return None
    return tuple(int(p) for p in re.findall(r"\d+", found.split("+")[0])[:3])


# -- the guards --------------------------------------------------------------------------------
def needs_descriptor_rebuild() -> bool:
    """Old protoc output builds descriptors by hand, which protobuf >= 4 allows only on its Python backend."""
    from google.protobuf.internal import api_implementation

    version = _version("protobuf")
    return (version is None or version >= (4,)) and api_implementation.Type() != "python"


def needs_display_name() -> bool:
    """witwidget imports ``display`` from ``IPython.core.display``, which IPython 9 no longer has."""
    try:
        import IPython.core.display as core_display
    except ImportError:  # reported by the witwidget import itself, with the install hint
        return False
    return not hasattr(core_display, "display")


def needs_json_keyword() -> bool:
    """witwidget passes ``including_default_value_fields``, which protobuf 5.26 renamed."""
    from google.protobuf import json_format

    return "including_default_value_fields" not in inspect.signature(json_format.MessageToJson).parameters


def needs_fast_sprite() -> bool:
    """witwidget up to 1.8.1 (the last release) builds its thumbnail atlas in a quadratic graph loop."""
    version = _version("witwidget")
    return version is None or version <= TESTED_WITWIDGET


# -- rebuilt protobuf modules --------------------------------------------------------------------
class _DescriptorPoolLoader(importlib.abc.Loader):
    """Loads an old-style generated ``*_pb2`` module the way current protoc output does.

    Old protoc output builds every descriptor by hand, which protobuf's C and
    upb backends refuse. Its ``FileDescriptor(serialized_pb=...)`` call holds
    the whole file, so the module is rebuilt from that: its imports run (they
    register the files it depends on), the serialized file joins the default
    pool, and protobuf's builder makes the descriptors and message classes
    under the names the old module defined. Top-level functions (gRPC stub
    helpers) are kept. A module without that call is current protoc output
    and runs as it is.
    """

    def __init__(self, origin: str):
        self.origin = origin

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        from google.protobuf import descriptor_pool
        from google.protobuf.internal import builder

        source = Path(self.origin).read_text(encoding="utf-8")
        tree = ast.parse(source, self.origin)
        found = _serialized_file(tree)
        if found is None:
            exec(compile(source, self.origin, "exec"), module.__dict__)
            return
        file_name, serialized = found
        imports: list[ast.stmt] = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        helpers: list[ast.stmt] = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        namespace = module.__dict__
        exec(compile(ast.Module(body=imports, type_ignores=[]), self.origin, "exec"), namespace)
        pool = descriptor_pool.Default()
        try:
            # A failed plain import of this module may already have added the file.
            file_descriptor = pool.FindFileByName(file_name)
        except KeyError:
            file_descriptor = pool.AddSerializedFile(serialized)
        namespace["DESCRIPTOR"] = file_descriptor
        builder.BuildMessageAndEnumDescriptors(file_descriptor, namespace)
        builder.BuildTopDescriptorsAndMessages(file_descriptor, module.__name__, namespace)
        exec(compile(ast.Module(body=helpers, type_ignores=[]), self.origin, "exec"), namespace)


def _serialized_file(tree: ast.Module) -> tuple[str, bytes] | None:
    """(file name, serialized FileDescriptorProto) from ``DESCRIPTOR = _descriptor.FileDescriptor(...)``."""
    for node in tree.body:
        call = node.value if isinstance(node, ast.Assign) else None
        if not (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "FileDescriptor"):
            continue
        args = {k.arg: k.value for k in call.keywords}
        if "name" in args and "serialized_pb" in args:
            value = args["serialized_pb"]
            # Old protoc wraps the literal in _b(), which encodes a str as latin-1.
            if isinstance(value, ast.Call) and len(value.args) == 1:
                value = value.args[0]
            data = ast.literal_eval(value)
            return ast.literal_eval(args["name"]), data.encode("latin-1") if isinstance(data, str) else data
    return None


class _VendoredProtoFinder(importlib.abc.MetaPathFinder):
    """Routes witwidget's bundled ``*_pb2`` modules (and nothing else) to :class:`_DescriptorPoolLoader`."""

    def find_spec(self, fullname, path, target=None):
        if not (fullname.startswith(_VENDORED_PROTOS) and fullname.endswith("_pb2")):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin:
            return None
        return importlib.util.spec_from_file_location(fullname, spec.origin, loader=_DescriptorPoolLoader(spec.origin))


@contextlib.contextmanager
def _vendored_protos() -> Iterator[None]:
    if not needs_descriptor_rebuild():
        yield
        return
    finder = _VendoredProtoFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


# -- IPython 9 -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _ipython_display_name() -> Iterator[None]:
    """Lend ``IPython.core.display.display`` while witwidget imports it."""
    if not needs_display_name():
        yield
        return
    import IPython.core.display as core_display
    from IPython.display import display

    core_display.display = display
    try:
        yield
    finally:
        del core_display.display


# -- witwidget's inference module ------------------------------------------------------------------
class _JsonFormatCompat:
    """witwidget's view of ``google.protobuf.json_format``, with the keyword protobuf 5 renamed."""

    def __init__(self, json_format):
        self._json_format = json_format

    def __getattr__(self, name):
        return getattr(self._json_format, name)

    def MessageToJson(self, message, including_default_value_fields=False, **kwargs):  # noqa: N802 (protobuf's name)
        if including_default_value_fields:
            kwargs["always_print_fields_with_no_presence"] = True
        return self._json_format.MessageToJson(message, **kwargs)


def sprite_image(serialized_examples: list[bytes]) -> bytes:
    """PNG atlas of 32x32 thumbnails of ``image/encoded`` in witwidget's layout (a square grid, row by row)."""
    from PIL import Image
    from tensorflow.core.example import example_pb2

    side = 32
    per_row = max(1, math.ceil(math.sqrt(len(serialized_examples))))
    atlas = np.zeros((per_row * side, per_row * side, 3), np.uint8)
    for k, raw in enumerate(serialized_examples):
        values = example_pb2.Example.FromString(raw).features.feature[IMAGE_FEATURE].bytes_list.value
        if not values:
            continue
        with Image.open(io.BytesIO(values[0])) as img:
            thumb = np.asarray(img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR))
        top, left = (k // per_row) * side, (k % per_row) * side
        atlas[top : top + side, left : left + side] = thumb
    out = io.BytesIO()
    Image.fromarray(atlas).save(out, format="PNG")
    return out.getvalue()


def _patch_inference_utils() -> None:
    from google.protobuf import json_format
    from witwidget._utils import inference_utils

    if needs_json_keyword() and not isinstance(inference_utils.json_format, _JsonFormatCompat):
        inference_utils.json_format = _JsonFormatCompat(json_format)
    if needs_fast_sprite():
        inference_utils.create_sprite_image = sprite_image


# -- importing witwidget --------------------------------------------------------------------------
def _missing_extra(what: str) -> AuditError:
    return AuditError(
        f"the What-If Tool bridge needs the optional 'wit' extra ({what}); install it with: {INSTALL_HINT}"
    )


def load_witwidget():
    """witwidget's notebook API (``WitConfigBuilder``, ``WitWidget``), made to work on this stack.

    Raises:
        AuditError: the 'wit' extra is not installed, or witwidget's protobuf
            modules cannot be loaded; the message says what to run.
    """
    for name in ("witwidget", "ipywidgets", "googleapiclient", "oauth2client"):
        if sys.modules.get(name, ...) is None or (name not in sys.modules and importlib.util.find_spec(name) is None):
            raise _missing_extra(f"{name} is not installed")
    try:
        with _vendored_protos(), _ipython_display_name():
            visualization = importlib.import_module("witwidget.notebook.visualization")
    except ImportError as e:
        raise _missing_extra(f"importing witwidget failed: {str(e).splitlines()[0]}") from None
    except TypeError as e:
        if _PROTO_FAILURE not in str(e):
            raise
        from google.protobuf.internal import api_implementation

        raise AuditError(
            f"witwidget's bundled protobuf modules do not load under protobuf's {api_implementation.Type()!r} "
            "backend; restart Python with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python set before anything "
            f"imports protobuf, or reinstall the tested version: {INSTALL_HINT}"
        ) from None
    _patch_inference_utils()
    return visualization
