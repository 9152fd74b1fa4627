"""The ``keras-audit`` command line: a thin layer over the library.

User mistakes (``AuditError``) print one line and exit 2; anything else is a
bug and exits 1 with its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from fractions import Fraction
from pathlib import Path

from audit.errors import AuditError

# The bundled samples: sample_models/ in a checkout, packaged as `audit.samples` in the wheel.
SAMPLES = Path(__file__).resolve().parent / "samples"
if not SAMPLES.is_dir():
    SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
DEMO = {
    "model": SAMPLES / "shapes_bias.keras",
    "data": SAMPLES / "shapes_eval",
    "annotations": SAMPLES / "shapes_annotations.csv",
}


def _rescale(text: str) -> float:
    try:  # "1/127.5" too: Fraction alone takes only whole numbers on either side of the slash
        top, _, bottom = text.partition("/")
        value = float(Fraction(top)) / float(Fraction(bottom)) if bottom else float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or fraction like 1/255, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _int_at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}; received {value}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its messages
    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def _explainers(text: str) -> tuple[str, ...]:
    from audit.explain.registry import choices

    if text.strip().lower() == "none":
        return ()
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in choices()]
    if unknown:
        listed = ", ".join(choices())
        raise argparse.ArgumentTypeError(f"unknown explainer {unknown[0]!r}; choose from {listed} or none")
    return names


def _explain_help() -> str:
    """--explain's help: every registered method with its summary, then activations and none."""
    from audit.explain.registry import ACTIVATIONS, ACTIVATIONS_SUMMARY, METHODS

    items = [f"{m.name} ({m.summary})" for m in METHODS.values()] + [f"{ACTIVATIONS} ({ACTIVATIONS_SUMMARY})"]
    # argparse expands %-formats in help text; a summary must not be read as one
    return ("comma list of: " + "; ".join(items) + "; or none (default: gradcam,occlusion)").replace("%", "%%")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from audit.io.preprocess import PRESETS, RESIZES

    def numbers(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(Fraction(v.strip())) for v in text.split(","))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers, got {text!r}") from None

    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--preprocess", choices=PRESETS, default="none", metavar="NAME",
                   help="pixel preprocessing the model was trained with: none (0..255), unit (x/255), tf (x/127.5-1), "
                        "caffe (BGR, ImageNet mean), torch (x/255, ImageNet mean/std), or a keras.applications "
                        "module name (resnet50, mobilenet_v2, efficientnet, ...); default: none")
    p.add_argument("--rescale", type=_rescale, default=1.0,
                   help="multiply pixels (0..255) by this, e.g. 1/255 (default: none)")
    p.add_argument("--offset", type=float, default=0.0, help="add this after --rescale, e.g. -1 (default: 0)")
    p.add_argument("--mean", type=numbers, help="per-channel mean to subtract first, 0..255 units, e.g. 124,116,104")
    p.add_argument("--std", type=numbers, help="per-channel std to divide by after --mean, 0..255 units")
    p.add_argument("--resize", choices=RESIZES, default="stretch",
                   help="to the model's size: stretch (default), pad (keep aspect, zero padding) or "
                        "crop (central crop to the model's aspect ratio)")
    p.add_argument("--explain", type=_explainers, default=None, help=_explain_help())
    p.add_argument("--explain-limit", type=_count, default=500,
                   help="explain at most N examples, chosen to cover confident mistakes, classes and slices (0: all)")
    p.add_argument("--layer", help="layer for Grad-CAM (default: last layer with a 4-D output; "
                                   "'backbone/conv' reaches nested models)")
    p.add_argument("--occlusion-patch", type=_positive_int,
                   help="occlusion patch size in pixels (default: 1/8 of the shorter side)")
    p.add_argument("--bootstrap", type=_count, default=1000, help="bootstrap resamples for confidence intervals")
    p.add_argument("--min-slice-size", type=_positive_int, default=30)
    p.add_argument("--slice-pairs", action=argparse.BooleanOptionalAction, default=None,
                   help="also slice by pairs of annotation columns (default: on with at most 4 columns)")
    p.add_argument("--class-names", help="comma-separated class names in model output order")
    p.add_argument("--seed", type=_count, default=0)
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _options(args):
    from audit.engine import AuditOptions

    return AuditOptions(
        batch_size=args.batch_size,
        rescale=args.rescale,
        preprocess=args.preprocess,
        offset=args.offset,
        mean=args.mean,
        std=args.std,
        resize=args.resize,
        explain=args.explain,
        explain_limit=None if args.explain_limit <= 0 else args.explain_limit,
        layer=args.layer,
        occlusion_patch=args.occlusion_patch,
        bootstrap=args.bootstrap,
        min_slice_size=args.min_slice_size,
        slice_pairs=args.slice_pairs,
        class_names=[c.strip() for c in args.class_names.split(",")] if args.class_names else None,
        seed=args.seed,
        unsafe=getattr(args, "unsafe", False),
        tensorboard=not args.no_tensorboard,
        shard=getattr(args, "shard", None),
    )


def summary(out: Path) -> None:
    """Print the headline of a finished run: accuracy, worst slices, where to look next."""
    from audit.views.terminal import print_summary

    print_summary(out)


def _add_scale_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: actors of a Ray cluster (pip install 'keras-audit[ray]')")
    p.add_argument("--address", help="with --engine ray: the Ray cluster to join (default: start one for the run)")
    p.add_argument("--workers", type=_positive_int, help="with --engine ray: actors, one share each (default: 2)")
    p.add_argument("--gpus-per-worker", type=float, help="with --engine ray: GPUs each actor reserves (default: 0)")
    p.add_argument("--shard", metavar="I/N",
                   help="run share I (from 0) of the data cut into N, into its own store; "
                        "combine the N stores with keras-audit merge")


def _scale_arguments(args) -> dict:
    """The Ray engine's arguments; a Ray-only option without --engine ray is refused, not ignored."""
    given = [flag for flag, value in (("--address", args.address), ("--workers", args.workers),
                                      ("--gpus-per-worker", args.gpus_per_worker)) if value is not None]
    if args.engine != "ray":
        if given:
            raise AuditError(f"{given[0]} needs --engine ray")
        return {}
    if args.shard is not None:
        raise AuditError("--shard runs one share in this process; drop it with --engine ray (which shards itself)")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise AuditError(f"--gpus-per-worker must be 0 or more; received {args.gpus_per_worker:g}")
    return {"address": args.address, "workers": args.workers or 2, "gpus_per_worker": args.gpus_per_worker or 0.0}


def cmd_run(args) -> None:
    from audit.pipeline import run_audit, run_distributed

    scale = _scale_arguments(args)
    run = run_distributed if scale else run_audit
    out = run(args.model, args.data, args.out, annotations=args.annotations, options=_options(args),
              resume=args.resume, progress=not args.quiet, **scale)
    summary(out)


def cmd_merge(args) -> None:
    from audit.pipeline import merge

    out = merge(args.out, args.shards, tensorboard=False if args.no_tensorboard else None, progress=not args.quiet)
    summary(out)


def cmd_layers(args) -> None:
    """List the layers Grad-CAM and activations can use, marking the default and why."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from audit.io.models import load_model

    model = load_model(args.model, unsafe=args.unsafe)
    rows = model.describe_layers()
    console = Console(highlight=False)
    if not rows:
        console.print(f"{escape(model.name)} has no layer with a 4-D (batch, h, w, c) output; "
                      "Grad-CAM and activations cannot explain it (occlusion still can)")
        return
    table = Table(title=f"Layers of {escape(model.name)} for Grad-CAM and activations (choose one with --layer)",
                  title_justify="left")
    for column in ("layer", "type", "output shape", "Grad-CAM default"):
        table.add_column(column)
    for row in rows:
        shape = "(" + ", ".join("batch" if d is None else str(d) for d in row["output_shape"]) + ")"
        why = escape(f"default: {row['why']}") if row["default"] else ""
        table.add_row(escape(row["name"]), escape(row["class"]), shape, why)
    console.print(table)


def cmd_demo(args) -> None:
    from audit.pipeline import run_audit

    missing = [str(p) for p in DEMO.values() if not p.exists()]
    if missing:
        raise AuditError(f"bundled sample files are missing ({', '.join(missing)}); run python sample_models/build.py")
    out = run_audit(DEMO["model"], DEMO["data"], args.out, annotations=DEMO["annotations"], options=_options(args),
                    resume=args.resume, progress=not args.quiet)
    summary(out)


def _discovery_summary(found: dict, out: Path) -> None:
    """What discovery found, in plain lines (no view, no TensorFlow: `discover` runs without it)."""
    groups = found.get("discovered") or []
    significant = [g for g in groups if g.get("significant")]
    print(f"{out}: {len(groups)} discovered groups, {len(significant)} significant (q < 0.05, gap interval off zero)")
    for g in significant[:5]:
        print(f"  {g['method']} {g['group']}: {g.get('description', '')} "
              f"(accuracy {g['accuracy']:.3f} vs {g['rest_accuracy']:.3f}, q {g['q_value']:.2g})")
    for note in (found.get("discovery") or {}).get("notes") or []:
        print(f"  note: {note}")


def cmd_discover(args) -> None:
    from audit.engine.discovery import rediscover
    from audit.store import schema

    out = Path(args.store)
    found = rediscover(out)
    _discovery_summary(found, out)
    if (schema.read_manifest_file(out) or {}).get("tensorboard") == schema.TENSORBOARD_WRITTEN:
        print(f"TensorBoard logs were written before this pass; to refresh them: keras-audit tensorboard {out}")


def _indices(text: str) -> list[int]:
    """``--indices 3,17,40``: example indices, whole numbers from 0."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts or not all(t.isdigit() for t in parts):
        raise argparse.ArgumentTypeError(f"must be example indices separated by commas, such as 3,17,40; got {text!r}")
    return [int(t) for t in parts]


def _explain_targets(args) -> list[int]:
    """The examples `keras-audit explain` was asked for: --indices, every mistake, or one slice."""
    from audit.store.reader import Reader

    if args.indices is not None:
        return args.indices
    run = Reader(args.store)
    if args.mistakes:
        return run.predictions["index"][~run.predictions["correct"]].tolist()
    column, eq, value = args.slice.partition("=")
    if not eq or not column.strip():
        raise AuditError(f"--slice must be COLUMN=VALUE, such as cue_agrees=no; received {args.slice!r}")
    return run.slice_rows(column.strip(), value.strip()).tolist()


def cmd_explain(args) -> None:
    from audit.pipeline import explain_more
    from audit.store.reader import Reader

    wanted = _explain_targets(args)
    if not wanted:
        print(f"{args.store}: no examples to explain (the run has no mistakes)")
        return
    added = explain_more(args.store, wanted, progress=not args.quiet)
    total = len(Reader(args.store).heatmap_index)
    if not added.size:
        print(f"{args.store}: all {len(wanted)} examples asked for already have maps ({total} explained)")
        return
    shown = ", ".join(map(str, added[:10].tolist())) + (", ..." if len(added) > 10 else "")
    print(f"{args.store}: maps added for {len(added)} examples ({shown}); {total} explained; "
          "discoveries and TensorBoard logs redone")


def cmd_report(args) -> None:
    from audit.views.report import write_report

    path = write_report(Path(args.store), args.format, Path(args.output) if args.output else None)
    print(path)


# The app pages through the examples the two models disagree on, so a kept comparison lists them all.
STORED_DISAGREEMENTS = 2000


def _compare(store_a: Path, store_b: Path, *, bootstrap: int = 1000) -> dict:
    from audit.metrics.paired import compare_runs

    return compare_runs(store_a, store_b, bootstrap=bootstrap, max_disagreements=STORED_DISAGREEMENTS)


def _keep_comparison(store_a: Path, store_b: Path, **kept) -> Path:
    """Keep a comparison (``result=``) or why there is none (``refused=``) in run A, as one of its files."""
    from audit.store.writer import write_owned_file
    from audit.views.terminal import comparison_bytes, comparison_file

    return write_owned_file(store_a, comparison_file(store_b), comparison_bytes(store_a, store_b, **kept))


def cmd_compare(args) -> None:
    from audit.views.terminal import compare_command, print_comparison

    a, b = Path(args.store_a), Path(args.store_b)
    result = _compare(a, b, bootstrap=args.bootstrap)
    print_comparison(result)
    if args.save:
        print(f"\nKept in {_keep_comparison(a, b, result=result)}; the app shows it: keras-audit app {a} {b}")
    else:
        print(f"\nTo keep it for the app: {compare_command(a, b)}")


def cmd_tensorboard(args) -> None:
    from audit.store import schema

    store = Path(args.store)
    if args.run is not None and args.logdir is None:
        raise AuditError("--run names a run in another log folder: pass --logdir too (inside the store, "
                         "the run is named after the model)")
    if args.logdir is None and schema.is_marked(schema.read_manifest_file(store)):
        from audit.pipeline import rewrite_tensorboard

        print(rewrite_tensorboard(store))  # inside the store: listed as its own files
        return
    from audit.views.tensorboard import export

    print(export(store, Path(args.logdir) if args.logdir else None, name=args.run))


def prepare_comparison(store_a: Path, store_b: Path) -> None:
    """Compute the comparison the app shows, once, unless run A already keeps it for these two runs."""
    from audit.errors import StoreError
    from audit.store.reader import Reader
    from audit.views.terminal import stored_comparison

    try:
        Reader(store_a), Reader(store_b)
    except StoreError:
        return  # a run that does not open: the app says why
    if stored_comparison(store_a, store_b) is not None:
        return
    print("keras-audit: comparing the two runs (paired bootstrap) before the app starts", file=sys.stderr)
    try:
        kept: dict[str, object] = {"result": _compare(store_a, store_b)}
    except StoreError as e:  # not comparable: the app shows why
        kept = {"refused": str(e)}
    try:
        _keep_comparison(store_a, store_b, **kept)
    except (StoreError, OSError) as e:  # e.g. run A is read-only: the app shows the command to run
        print(f"keras-audit: note: the comparison could not be kept in {store_a}: {e}", file=sys.stderr)


def cmd_app(args) -> None:
    from audit.views.app.launch import launch

    stores = [Path(s) for s in args.stores]
    if len(stores) == 2:
        prepare_comparison(*stores)
    sys.exit(launch(stores, host=args.host, port=args.port))


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported as the same one line as every other user error."""

    def error(self, message: str):
        self.exit(2, f"keras-audit: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    """This package's version and the libraries that shape results, without importing them."""
    import audit
    from audit.engine.session import library_versions

    found = library_versions(("keras", "tensorflow-cpu", "tensorflow"))
    python = found.pop("python")
    return f"keras-audit {audit.__version__} ({', '.join(f'{k} {v}' for k, v in found.items())}, python {python})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="keras-audit", description="Explain and audit a trained Keras image classifier.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="audit MODEL on DATA and write a results store")
    p.add_argument("model", help=".keras / .h5 file or SavedModel directory")
    p.add_argument("data", help="class-folder directory, directory with labels.csv, a labels .csv, or an .npz; "
                                "local, or a URL fsspec resolves (s3://bucket/prefix with s3fs installed, ...)")
    p.add_argument("--out", required=True, help="results store directory")
    p.add_argument("--annotations", help="CSV keyed by path (or index for .npz) with columns to slice by")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--unsafe", action="store_true",
                   help="allow models whose loading can run code (Lambda or TFSMLayer layers, "
                        "any TensorFlow SavedModel); only for trusted files")
    _add_run_options(p)
    _add_scale_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("merge", help="combine the stores of `run --shard i/n` into one store")
    p.add_argument("out", help="results store directory to write")
    p.add_argument("shards", nargs="+", metavar="SHARD_OUT", help="the shard stores, every share once")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("layers", help="list MODEL's layers for Grad-CAM and activations (--layer), and the default")
    p.add_argument("model", help=".keras / .h5 file (a SavedModel exposes no layers)")
    p.add_argument("--unsafe", action="store_true",
                   help="allow models whose loading can run code (Lambda or TFSMLayer layers); only for trusted files")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("demo", help="audit the bundled planted-bias sample model")
    p.add_argument("--out", default="audit_demo", help="results store directory (default: audit_demo)")
    p.add_argument("--resume", action="store_true")
    _add_run_options(p)
    # 200 maps: the quota per class and confusion cell (audit.engine.selection) plus every one of the
    # sample's 102 mistakes, for any --seed (120 left 29 mistakes without a map).
    p.set_defaults(func=cmd_demo, explain_limit=200)

    p = sub.add_parser("discover", help="recompute discovered groups of a finished store (no TensorFlow needed)")
    p.add_argument("store", help="results store directory")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("explain", help="add maps for chosen examples to a finished store (a saved follow-up run)")
    p.add_argument("store", help="results store directory")
    chosen = p.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--indices", type=_indices, help="example indices, such as 3,17,40")
    chosen.add_argument("--mistakes", action="store_true", help="every mistake without a map")
    chosen.add_argument("--slice", metavar="COLUMN=VALUE", help="every example of one slice, such as cue_agrees=no")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("report", help="write a Markdown or self-contained HTML report of a run")
    p.add_argument("store")
    p.add_argument("--format", choices=("md", "html"), default="html")
    p.add_argument("--output", help="file to write (default: OUT/report.html or report.md)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="compare two runs on the same examples")
    p.add_argument("store_a")
    p.add_argument("store_b")
    p.add_argument("--bootstrap", type=_count, default=1000)
    p.add_argument("--save", action="store_true", help="keep the comparison in STORE_A, where the app reads it")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tensorboard", help="(re)write TensorBoard logs from a results store")
    p.add_argument("store")
    p.add_argument("--logdir", help="TensorBoard's log folder (default: OUT/tensorboard); the run is a folder in it")
    p.add_argument("--run", help="the run's name (default: the model file's name without extension)")
    p.set_defaults(func=cmd_tensorboard)

    p = sub.add_parser("app", help="browse runs in the Streamlit app")
    p.add_argument("stores", nargs="*", help="one run, or two to compare (default: pick from runs under .)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_int_at_least(1), default=8501)
    p.set_defaults(func=cmd_app)
    return parser


# Operating-system refusals a user fixes (permissions, a file where a folder should be, a full
# disk); any other OSError is a bug and keeps its traceback.
_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOSPC, errno.EROFS,
                   errno.EDQUOT}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AuditError as e:
        print(f"keras-audit: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in _USER_OS_ERRORS:
            raise
        print(f"keras-audit: error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keras-audit: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
