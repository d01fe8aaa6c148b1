"""The ``lipcheck`` command line: the only place that knows Typer, exit codes, and stdout vs stderr.

Exit codes: 0 a report was produced (an unbounded model included), 2 lipcheck could not run (bad
arguments, unreadable model, internal error), 130 interrupted. (1 is reserved for a future gate, e.g.
``--fail-above``.)

Heavy libraries (torch, onnx, onnxruntime, numpy, scipy) are imported inside the command only, so that
``lipcheck --help`` stays fast; ``tests/cli/test_imports.py`` checks it.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from lipcheck import __version__
from lipcheck.errors import InputShapeError, LipcheckError, UsageError
from lipcheck.report.formats import OutputFormat

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "app", "main", "parse_input_shapes", "parse_shape"]

EXIT_OK = 0
EXIT_FAILED = 1  # normalize: the written copy missed its target (nothing written)
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
_EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `lipcheck ... | head`

T = TypeVar("T")

InputShapes = dict[str, tuple[int, ...]] | tuple[int, ...]

app = typer.Typer(
    name="lipcheck",
    help="Certified Lipschitz bounds of neural networks (ONNX and PyTorch models).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# ------------------------------------------------------------------------------------- input shapes

_SHAPE_EXAMPLE = "e.g. 1,3,32,32 or input=1,3,32,32"
_DIM_SEPARATOR = re.compile(r"\s*[,x×]\s*")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` (also ``1x3x32x32``, ``[1, 3, 32, 32]``) -> ``(1, 3, 32, 32)``; dims must be > 0."""
    body = text.strip().strip("()[]").strip().removesuffix(",").strip()  # "(8,)" is a 1-d shape
    parts = _DIM_SEPARATOR.split(body) if body else []
    if not parts or not all(part.isdecimal() for part in parts):
        raise InputShapeError(f"invalid --input-shape {text!r}: expected positive integers, {_SHAPE_EXAMPLE}")
    dims = tuple(int(part) for part in parts)
    if any(d <= 0 for d in dims):
        raise InputShapeError(f"invalid --input-shape {text!r}: every dimension must be positive")
    return dims


def parse_input_shapes(values: Sequence[str]) -> InputShapes | None:
    """The ``--input-shape`` values: one bare shape (a model with one input) or ``NAME=SHAPE`` for each.

    Returns ``None`` (no values), a shape tuple, or ``{name: shape}``. Raises :class:`InputShapeError`.
    Whether the names exist in the model is checked by the loader, not here.
    """
    if not values:
        return None
    if not any("=" in value for value in values):
        if len(values) > 1:
            raise InputShapeError(
                "several --input-shape values: give each as NAME=SHAPE (one per model input), "
                + _SHAPE_EXAMPLE
            )
        return parse_shape(values[0])
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, sep, shape = value.rpartition("=")  # a shape never contains "=", a tensor name might
        name = name.strip()
        if not sep or not name:
            raise InputShapeError(
                f"invalid --input-shape {value!r}: with several values, each must be NAME=SHAPE, "
                + _SHAPE_EXAMPLE
            )
        if name in shapes:
            raise InputShapeError(f"--input-shape given twice for input {name!r}")
        shapes[name] = parse_shape(shape)
    return shapes


def parse_arch_kwargs(text: str | None) -> dict[str, object] | None:
    """``--arch-kwargs`` JSON → dict; one clear :class:`InputShapeError`-style error otherwise."""
    if text is None:
        return None
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--arch-kwargs is not valid JSON ({exc.msg} at position {exc.pos}): {text!r}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"--arch-kwargs must be a JSON object such as '{{\"num_classes\": 10}}', got {text!r}")
    return value


# ------------------------------------------------------------------------------------------- output


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One line on stderr (plain text: messages may contain brackets Rich would read as markup)."""
    sys.stderr.write(_one_line(message) + "\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): silence the final flush at interpreter exit, exit quietly.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(_EXIT_BROKEN_PIPE) from None


# ------------------------------------------------------------------------------------------ commands


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lipcheck {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Certified Lipschitz bounds of neural networks (ONNX and PyTorch models)."""


# ------------------------------------------------------------------------------ options shared by commands

ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Model file: ONNX (.onnx) or PyTorch (TorchScript, .pt2, state dict or checkpoint with --arch, "
        "pickled module with --trust-pickle).",
        show_default=False,
    ),
]
InputShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input-shape",
        "-s",
        metavar="[NAME=]SHAPE",
        help="Static input shape, e.g. 1,3,32,32; NAME=SHAPE once per input for several inputs.",
        show_default=False,
    ),
]
PowerIterationsOpt = Annotated[int, typer.Option(min=1, help="Power iterations per layer (the estimate).")]
ToleranceOpt = Annotated[
    float, typer.Option(min=0.0, help="Power iteration stops once σ changes by less than this (relative).")
]
SeedOpt = Annotated[int, typer.Option(help="Random seed (power iteration starts, lower-bound search).")]
ExactLimitOpt = Annotated[int, typer.Option(min=0, help="Largest operator size for which σ exact is computed.")]
NoExactOpt = Annotated[bool, typer.Option("--no-exact", help="Skip σ exact for every layer.")]
ProgressOpt = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Progress bar on stderr (default: only when stderr is a terminal).",
        show_default=False,
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        metavar="MODULE:FACTORY",
        help="PyTorch state dicts: the callable that builds the nn.Module, as package.module:factory or "
        "path/to/file.py:factory.",
        show_default=False,
    ),
]
ArchKwargsOpt = Annotated[
    str | None,
    typer.Option("--arch-kwargs", metavar="JSON", help="Keyword arguments for --arch, as a JSON object.",
                 show_default=False),
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", help="PyTorch checkpoints: the key that holds the state dict (default: found).",
                 show_default=False),
]
TrustPickleOpt = Annotated[
    bool, typer.Option("--trust-pickle", help="Allow unpickling a whole PyTorch module: runs code from the file.")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Debug logging and full tracebacks.")]


def _run(debug: bool, work: Callable[[], T]) -> T:
    """Run a command's work: typed errors become one line and exit 2, Ctrl-C exit 130, anything else is a
    lipcheck bug (one line; the traceback behind --debug)."""
    if debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        return work()
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except typer.Exit:
        raise
    except LipcheckError as exc:
        if debug:
            traceback.print_exc()
        _fail(f"error: {exc}", _exit_code(exc))
    except Exception as exc:  # anything else is a lipcheck bug
        if debug:
            traceback.print_exc()
            _fail(f"internal error: {type(exc).__name__}: {exc}")
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")


def _exit_code(exc: LipcheckError) -> int:
    from lipcheck.errors import GateFailure

    return EXIT_FAILED if isinstance(exc, GateFailure) else EXIT_ERROR


def _observer(progress: bool | None) -> Any:
    if progress is False:
        return None
    from lipcheck.cli.progress import RichProgress

    return RichProgress(force=bool(progress))


# ------------------------------------------------------------------------------------------ commands


@app.command()
def analyze(
    model: ModelArg,
    input_shape: InputShapeOpt = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", case_sensitive=False, help="Output format, written to stdout."),
    ] = OutputFormat.TABLE,
    power_iterations: PowerIterationsOpt = 100,
    tolerance: ToleranceOpt = 1e-6,
    seed: SeedOpt = 0,
    exact_limit: ExactLimitOpt = 2_000_000,
    no_exact: NoExactOpt = False,
    no_lower_bound: Annotated[
        bool, typer.Option("--no-lower-bound", help="Skip the empirical lower bound.")
    ] = False,
    lower_bound_seconds: Annotated[
        float, typer.Option(min=0.0, help="Time budget of the empirical lower bound, in seconds.")
    ] = 5.0,
    progress: ProgressOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    key: KeyOpt = None,
    trust_pickle: TrustPickleOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compute a certified Lipschitz bound (L2) of MODEL, with per-layer spectral norms."""

    def work() -> tuple[Any, str]:
        shapes = parse_input_shapes(input_shape or [])
        kwargs = parse_arch_kwargs(arch_kwargs)
        import lipcheck

        observer = _observer(progress)
        try:
            report = lipcheck.analyze(
                model,
                input_shape=shapes,
                power_iterations=power_iterations,
                tolerance=tolerance,
                seed=seed,
                exact_limit=0 if no_exact else exact_limit,
                lower_bound=not no_lower_bound,
                lower_bound_seconds=lower_bound_seconds,
                progress=observer,
                trust_pickle=trust_pickle,
                arch=arch,
                arch_kwargs=kwargs,
                key=key,
            )
        finally:
            if observer is not None:
                observer.finish()
        return report, output_format.render(report)

    report, text = _run(debug, work)
    if output_format is OutputFormat.TABLE and sys.stdout.isatty():
        from rich.console import Console

        from lipcheck.report.formats import print_table

        print_table(report, Console(highlight=False))  # styled; wider than the terminal rather than squeezed
    else:
        _write_stdout(text)


class NormalizeFormat(str, Enum):
    TABLE = "table"
    JSON = "json"


@app.command()
def normalize(
    model: ModelArg,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="OUT", help="Where to write the normalized model (same format as MODEL).",
                     show_default=False),
    ] = None,
    target: Annotated[
        float, typer.Option(help="Per-layer target: every weighted layer's certified σ ends at most this.")
    ] = 1.0,
    exact: Annotated[
        bool, typer.Option("--exact", help="Scale EVERY layer to the target (W / σ(W) at 1), not only those above.")
    ] = False,
    global_target: Annotated[
        float | None,
        typer.Option("--global-target", metavar="L", show_default=False,
                     help="Scale layers by one common factor so the whole model's certified bound is at most L."),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option("--layers", metavar="NAMES", show_default=False,
                     help="With --global-target: only scale these layers (comma-separated layer names or params)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Replace MODEL itself (only after the new copy is verified).")
    ] = False,
    output_format: Annotated[
        NormalizeFormat,
        typer.Option("--format", "-f", case_sensitive=False, help="Output format, written to stdout."),
    ] = NormalizeFormat.TABLE,
    input_shape: InputShapeOpt = None,
    power_iterations: PowerIterationsOpt = 100,
    tolerance: ToleranceOpt = 1e-6,
    seed: SeedOpt = 0,
    exact_limit: ExactLimitOpt = 2_000_000,
    no_exact: NoExactOpt = False,
    progress: ProgressOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    key: KeyOpt = None,
    trust_pickle: TrustPickleOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a copy of MODEL with spectrally normalized weights that provably meets a Lipschitz target.

    The copy is analysed again before it is put in place; if its certified numbers miss the target nothing
    is written and the exit code is 1.
    """

    def work() -> str:
        shapes = parse_input_shapes(input_shape or [])
        kwargs = parse_arch_kwargs(arch_kwargs)
        from lipcheck.normalize import normalize as run_normalize

        names = [n.strip() for n in layers.split(",") if n.strip()] if layers is not None else None
        observer = _observer(progress)
        try:
            result = run_normalize(
                model, out, target=target, exact=exact, global_target=global_target, layers=names,
                dry_run=dry_run, in_place=in_place, input_shape=shapes, power_iterations=power_iterations,
                tolerance=tolerance, seed=seed, exact_limit=0 if no_exact else exact_limit, progress=observer,
                trust_pickle=trust_pickle, arch=arch, arch_kwargs=kwargs, key=key,
            )
        finally:
            if observer is not None:
                observer.finish()
        from lipcheck.normalize.render import render_normalize_json, render_normalize_table

        return render_normalize_json(result) if output_format is NormalizeFormat.JSON else \
            render_normalize_table(result)

    _write_stdout(_run(debug, work))


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``lipcheck``, ``python -m lipcheck``)."""
    app(args=list(argv) if argv is not None else None, prog_name="lipcheck")
