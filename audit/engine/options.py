"""The options of one audit run, and their validation (done before any input is read)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Real

import numpy as np

from audit.errors import AuditError, optional_whole_number, positive_number, whole_number
from audit.store import schema

DEFAULT_EXPLAIN = ("gradcam", "occlusion")
# Option fields spelled as the CLI spells them, so a message names what the user typed.
_CLI_FLAGS = {"tensorboard": "--no-tensorboard"}


def option_flag(name: str) -> str:
    """The CLI option of an :class:`AuditOptions` field: ``min_slice_size`` is ``--min-slice-size``."""
    return _CLI_FLAGS.get(name, "--" + name.replace("_", "-"))


def _whole(name: str, value, minimum: int, *, none_means: str = "") -> None:
    if none_means:
        optional_whole_number(option_flag(name), value, minimum, none_means=none_means)
    else:
        whole_number(option_flag(name), value, minimum)


@dataclass
class AuditOptions:
    """Options of one audit run (recorded in the manifest).

    A run only reads its options: one object may serve any number of runs, and
    what a run adds (notes, the methods it settled on) lives in its session.
    """

    batch_size: int = 64
    rescale: float = 1.0
    explain: tuple[str, ...] | None = None  # None: gradcam + occlusion (occlusion only without layers)
    explain_limit: int | None = 500  # None: explain every example
    layer: str | None = None  # Grad-CAM layer; None: last 4-D layer
    occlusion_patch: int | None = None  # None: about 1/8 of the shorter side
    bootstrap: int = 1000
    min_slice_size: int = 30
    slice_pairs: bool | None = None
    class_names: list[str] | None = None
    seed: int = 0
    unsafe: bool = False
    tensorboard: bool = True

    def validate(self) -> AuditOptions:
        """Check every option (run_audit does, before reading any input or writing anything).

        Raises:
            AuditError: one line naming the CLI option, e.g. "--seed must be 0 or more; received -1".
        """
        for name, minimum in (("batch_size", 1), ("bootstrap", 0), ("min_slice_size", 1), ("seed", 0)):
            _whole(name, getattr(self, name), minimum)
        _whole("explain_limit", self.explain_limit, 1, none_means="explain every example")
        _whole("occlusion_patch", self.occlusion_patch, 1, none_means="about 1/8 of the shorter side")
        if not (isinstance(self.rescale, Real) and math.isfinite(self.rescale)):
            raise AuditError(f"--rescale must be a positive number; received {self.rescale!r}")
        positive_number("--rescale", self.rescale)
        self._validate_names()
        if self.slice_pairs is not None and not isinstance(self.slice_pairs, (bool, np.bool_)):
            raise AuditError(f"--slice-pairs must be true, false or None; received {self.slice_pairs!r}")
        for name in ("unsafe", "tensorboard"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise AuditError(f"{option_flag(name)} must be true or false; received {getattr(self, name)!r}")
        return self

    def _validate_names(self) -> None:
        """explain, layer and class_names: known, non-empty, distinct names."""
        if self.explain is not None:
            if not isinstance(self.explain, (list, tuple)) or not all(isinstance(m, str) for m in self.explain):
                raise AuditError(f"--explain must be a list of explainer names (or None); received {self.explain!r}")
            unknown = [m for m in self.explain if m not in schema.EXPLAINERS]
            if unknown:
                choices = ", ".join(schema.EXPLAINERS)
                raise AuditError(f"--explain: unknown explainer {unknown[0]!r}; choose from {choices}")
            if len(set(self.explain)) < len(self.explain):
                raise AuditError(f"--explain names an explainer twice; received {','.join(self.explain)}")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer.strip()):
            raise AuditError(f"--layer must be a layer name; received {self.layer!r}")
        if self.class_names is not None:
            from audit.io.data import _checked_names  # the one home of "no empty or repeated name"

            if not isinstance(self.class_names, (list, tuple)) or not all(isinstance(n, str) for n in self.class_names):
                raise AuditError(f"--class-names must be a list of names (or None); received {self.class_names!r}")
            _checked_names(self.class_names, "--class-names", None)

    def recorded(self) -> dict:
        """The options as the manifest records them: plain JSON values, copies (never aliases)."""
        d = asdict(self)
        d["explain"] = None if self.explain is None else list(self.explain)
        d["class_names"] = None if self.class_names is None else list(self.class_names)
        return d
