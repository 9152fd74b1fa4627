"""The options of one audit run, and their validation (done before any input is read)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Real

import numpy as np

from audit.errors import AuditError, optional_whole_number, positive_number, whole_number
from audit.store import schema

DEFAULT_EXPLAIN = ("gradcam", "occlusion", "activations")
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
    explain: tuple[str, ...] | None = None  # None: DEFAULT_EXPLAIN (without layers: occlusion, activations off)
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
    preprocess: str = "none"  # a preset of audit.io.preprocess.PRESETS; "none": pixels 0..255 (times rescale)
    offset: float = 0.0  # added after --rescale: x * rescale + offset
    mean: tuple[float, ...] | None = None  # per channel (1 or 3 values, 0..255 units), subtracted first
    std: tuple[float, ...] | None = None  # per channel, divided by after the mean
    resize: str = "stretch"  # stretch | pad | crop
    shard: str | None = None  # "i/n": this run is share i of n of the data (audit.engine.shard); None: all of it

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
        self._validate_preprocessing()
        self._validate_names()
        if self.shard is not None:
            parse_shard(self.shard)
        if self.slice_pairs is not None and not isinstance(self.slice_pairs, (bool, np.bool_)):
            raise AuditError(f"--slice-pairs must be true, false or None; received {self.slice_pairs!r}")
        for name in ("unsafe", "tensorboard"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise AuditError(f"{option_flag(name)} must be true or false; received {getattr(self, name)!r}")
        return self

    def _custom_flags(self) -> list[str]:
        """The affine flags given (not at their defaults), as typed."""
        given = [("--rescale", self.rescale != 1.0, self.rescale), ("--offset", self.offset != 0.0, self.offset),
                 ("--mean", self.mean is not None, self.mean), ("--std", self.std is not None, self.std)]
        return [f"{flag} {_spelled(v)}" for flag, on, v in given if on]

    def _validate_preprocessing(self) -> None:
        """preprocess, resize, offset, mean, std: known names, finite numbers, one way of scaling."""
        from audit.io.preprocess import PRESETS, RESIZES

        for name, choices in (("preprocess", PRESETS), ("resize", RESIZES)):
            if getattr(self, name) not in choices:
                raise AuditError(f"--{name}: unknown choice {getattr(self, name)!r}; choose from {', '.join(choices)}")
        if not (isinstance(self.offset, Real) and math.isfinite(self.offset)):
            raise AuditError(f"--offset must be a number; received {self.offset!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            ok = isinstance(values, (list, tuple)) and len(values) in (1, 3)
            if not ok or not all(isinstance(v, Real) and math.isfinite(v) for v in values):
                raise AuditError(
                    f"--{name} must be 1 or 3 numbers (one per channel, 0..255 units); received {values!r}")
            if name == "std" and min(values) <= 0:
                raise AuditError(f"--std must be positive numbers; received {_spelled(values)}")
        custom = self._custom_flags()
        if self.preprocess != "none" and custom:
            raise AuditError(f"--preprocess {self.preprocess} sets the pixel scaling itself; drop {custom[0]} "
                             "or use --preprocess none")

    def preprocessing(self):
        """The :class:`audit.io.preprocess.Preprocessing` these (validated) options ask for."""
        from audit.io.preprocess import Preprocessing, preset

        if self.preprocess != "none" or not self._custom_flags():
            return preset(self.preprocess, self.resize)
        return Preprocessing("custom", scale=float(self.rescale), offset=float(self.offset),
                             mean=_floats(self.mean), std=_floats(self.std), resize=self.resize)

    def scaling_flags(self) -> str | None:
        """How the options rescale pixels, as typed (e.g. "--preprocess tf"), or None if they do not."""
        if self.preprocess != "none":
            return f"--preprocess {self.preprocess}" if self.preprocessing().rescales else None
        return " ".join(self._custom_flags()) or None

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
        d["mean"], d["std"] = (None if v is None else [float(x) for x in v] for v in (self.mean, self.std))
        return d


def parse_shard(text) -> tuple[int, int]:
    """``"i/n"`` as (i, n) with 0 <= i < n: share i of the data cut into n (``--shard``).

    Raises:
        AuditError: one line naming --shard, e.g. "--shard 3/3: i must be 0 to n-1 (0 to 2)".
    """
    top, slash, bottom = str(text).partition("/")
    if not (slash and top.strip().isdigit() and bottom.strip().isdigit()):
        raise AuditError(f"--shard must be i/n, share i (from 0) of n, such as 0/4; received {text!r}")
    i, n = int(top), int(bottom)
    if n < 1:
        raise AuditError(f"--shard {text}: n must be at least 1")
    if i >= n:
        raise AuditError(f"--shard {text}: i must be 0 to n-1 (0 to {n - 1})")
    return i, n


def _floats(values) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _spelled(value) -> str:
    """A number or list as the CLI takes it: 0.5, or 1,2,3."""
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}"


# The options that decide how pixels reach the model, as a store records them.
PREPROCESSING_OPTIONS = ("preprocess", "rescale", "offset", "mean", "std", "resize")


def recorded_preprocessing(recorded: dict):
    """The Preprocessing of a run from its recorded options (a store's ``manifest["options"]``);
    options a store from before them lacks take their defaults."""
    fields = {k: recorded[k] for k in PREPROCESSING_OPTIONS if recorded.get(k) is not None}
    for k in ("mean", "std"):
        if k in fields:
            fields[k] = tuple(fields[k])
    return AuditOptions(**fields).validate().preprocessing()
