"""The ``lipcheck`` command line: the only place that knows Typer, exit codes, and stdout vs stderr.

Exit codes: 0 a report was produced (an unbounded model included), 2 lipcheck could not run (bad
arguments, unreadable model, internal error), 130 interrupted. 1: a gate failed (``check``, ``analyze`` with a
threshold, ``diff --max-increase``; ``--exit-zero`` turns it into 0) or normalize missed its target.

Heavy libraries (torch, onnx, onnxruntime, numpy, scipy) are imported inside the command only, so that
``lipcheck --help`` stays fast; ``tests/cli/test_imports.py`` checks it.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from lipcheck import __version__
from lipcheck.errors import InputShapeError, LipcheckError, UsageError
from lipcheck.report.ci_formats import CheckFormat
from lipcheck.report.diff_formats import DiffFormat
from lipcheck.report.formats import OutputFormat

if TYPE_CHECKING:
    from lipcheck.gate.baseline import Snapshot
    from lipcheck.gate.run import CheckRun, Target

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
    """``"1,3,32,32"`` (also ``1x3x32x32``, ``[1, 3, 32, 32]``) -> ``(1, 3, 32, 32)``; dims must be > 0, each at
    most :data:`~lipcheck.readlimits.MAX_DIM` and together at most :data:`~lipcheck.readlimits.MAX_INPUT_ELEMENTS`
    elements (a C long or int64 holds them; anything larger could never be allocated)."""
    from lipcheck.readlimits import MAX_DIM, MAX_INPUT_ELEMENTS

    body = text.strip().strip("()[]").strip().removesuffix(",").strip()  # "(8,)" is a 1-d shape
    parts = _DIM_SEPARATOR.split(body) if body else []
    if not parts or not all(part.isdecimal() for part in parts):
        raise InputShapeError(f"invalid --input-shape {_clip(repr(text), 80)}: expected positive integers, "
                              + _SHAPE_EXAMPLE)
    if any(len(part.lstrip("0")) > 10 for part in parts):  # before int(): no 4300-digit conversions
        raise InputShapeError(f"invalid --input-shape {_clip(repr(text), 80)}: a dimension is larger than "
                              f"{MAX_DIM} (2^31-1)")
    dims = tuple(int(part) for part in parts)
    if any(d <= 0 for d in dims):
        raise InputShapeError(f"invalid --input-shape {text!r}: every dimension must be positive")
    if any(d > MAX_DIM for d in dims):
        raise InputShapeError(f"invalid --input-shape {text!r}: a dimension is larger than {MAX_DIM} (2^31-1)")
    elements = math.prod(dims)
    if elements > MAX_INPUT_ELEMENTS:
        raise InputShapeError(f"invalid --input-shape {text!r}: {elements} elements, more than the "
                              f"{MAX_INPUT_ELEMENTS} (2^40) any machine could hold")
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


def _require_paths(options: dict[str, str | None]) -> None:
    """An option that names a file or folder and is given as ``''`` (e.g. an unset shell variable): one line."""
    for option, value in options.items():
        if value is not None and not value.strip():
            raise UsageError(f"{option} is empty: give a file path")


def _one_line(text: str) -> str:
    """Whitespace runs joined into one space; any other control or bidi character (a model's node name in
    an error message) escaped for display, e.g. ``\\x1b``."""
    from lipcheck.report.text import safe_text

    return safe_text(" ".join(str(text).split()))


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
SeedOpt = Annotated[int, typer.Option(min=0, help="Random seed (power iteration starts, lower-bound search).")]
ExactLimitOpt = Annotated[int, typer.Option(min=0, help="Largest operator size for which σ exact is computed.")]
NoExactOpt = Annotated[bool, typer.Option("--no-exact", help="Skip σ exact for every layer.")]
TightWorkOpt = Annotated[
    float,
    typer.Option(
        "--tight-work", min=0.0, metavar="GFLOP",
        help="Work per conv for tighter certificates, with σ exact: the circular bound again on the smallest "
        "valid grid where it is over 1e-3 above σ exact, and the zero-padded certificate (a banded Cholesky: "
        "certified σ within ~1e-6 of σ exact). 0 turns both off.",
    ),
]


class Method(str, Enum):
    """``--method``: the composition methods (lipcheck.bound.methods.choose)."""

    AUTO = "auto"
    PRODUCT = "product"
    LIPSDP = "lipsdp"
    BLOCKS = "blocks"


_METHOD_HELP = ("How the certified bound is composed: product (AutoLip, per-layer norms multiplied), lipsdp (also "
                "LipSDP-Neuron on an MLP chain, verified), blocks (also block by block: composed linear operators, "
                "lipsdp on conv chains, residual-block LMIs), auto (lipsdp on chains of at most 1024 hidden "
                "neurons, blocks within smaller limits on other models). The report shows every method's value; "
                "the bound is the least.")
MethodOpt = Annotated[Method, typer.Option("--method", case_sensitive=False, help=_METHOD_HELP)]
_DOMAIN_HELP = ("Also bound the model on an input region: LO,HI for every float input, or NAME=LO,HI per input "
                "(repeat the option; integer inputs need their own range). Reports a certified local bound and a "
                "lower bound measured inside the region.")
DomainOpt = Annotated[list[str] | None, typer.Option("--domain", metavar="[NAME=]LO,HI", help=_DOMAIN_HELP)]
AroundOpt = Annotated[str | None, typer.Option(
    "--around", metavar="POINTS", help="A .npy / .npz of points (one per row): certified local bounds on the ball of "
    "--radius around each, ‖J‖ at each and at interpolates, and a classifier's certified radius.")]
RadiusOpt = Annotated[float | None, typer.Option("--radius", help="Radius of the balls of --around.")]
NormOpt = Annotated[str, typer.Option("--norm", metavar="2|inf", help="Norm of the --around balls (default 2).")]
_FORCE_HELP = ("Lift the resource limits: analyse inputs above 2^31 elements and run every stage however much "
               "memory or time it is estimated to take (default: such stages are skipped with the reason).")
ForceOpt = Annotated[bool, typer.Option("--force", "--no-resource-limits", help=_FORCE_HELP)]
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
_TRUST_HELP = ("Trust the model file to run its own code: unpickling a whole module, TorchScript or .pt2 "
               "code with side effects.")
TrustPickleOpt = Annotated[
    bool, typer.Option("--trust-pickle", envvar="LIPCHECK_TRUST_PICKLE", help=_TRUST_HELP)
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Debug logging and full tracebacks.")]
_JOBS_HELP = ("Bound the weighted layers (Conv, Gemm, MatMul) in N processes; 0 or auto: one per CPU; size: one "
              "per usable CPU for models with over 5e8 multiply-adds in those layers (ResNet-50), else 1. Same "
              "numbers as 1.")
_CACHE_HELP = ("Keep per-layer results in DIR (created if missing), keyed by a hash of weights, shapes and "
               "settings: a re-run on unchanged layers computes no norm.")
JobsOpt = Annotated[
    str, typer.Option("--jobs", "-j", metavar="N", envvar="LIPCHECK_JOBS", help=_JOBS_HELP)
]
CacheOpt = Annotated[
    str | None,
    typer.Option("--cache", metavar="DIR", envvar="LIPCHECK_CACHE", show_default=False, help=_CACHE_HELP),
]
_THREADS_HELP = ("Threads for BLAS, torch and onnxruntime (default: the CPUs not already busy, from the load "
                 "average; an OMP_NUM_THREADS you set is kept).")
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", metavar="N", min=1, envvar="LIPCHECK_THREADS", show_default=False,
                 help=_THREADS_HELP),
]


def _limit_threads(requested: int | None) -> None:
    """Size the thread pools (:mod:`lipcheck.threads`) before a command imports numpy, torch or onnxruntime."""
    from lipcheck.threads import choose_threads, limit_threads

    limit_threads(choose_threads(requested))


# ---------------------------------------------------------------------------- gate options (check, analyze)

_GATE_PANEL = "Gate"
_OUTPUT_PANEL = "Output"
_ANALYSIS_PANEL = "Analysis"
_TORCH_PANEL = "PyTorch files"
_MAX_LIPSCHITZ_HELP = "Fail when the certified upper bound, rounded as printed (4 significant digits), is above X."
_MAX_LAYER_SIGMA_HELP = "Fail when a layer's certified σ (σ upper, rounded as printed) is above Y."
_ALLOW_UNCERTIFIED_HELP = "Do not fail when the bound is unbounded (no certificate): warn instead."
_PLOT_HELP = ("Draw per-layer σ and the bound along depth to FILE (.png, .svg or .pdf), and with analyze "
              "--around a histogram of the per-point bounds and ‖J‖; needs pip install 'lipcheck\\[plot]'.")
_EXIT_ZERO_HELP = "Exit 0 when the gate fails (still 2 when lipcheck cannot run)."

MaxLipschitzOpt = Annotated[
    float | None,
    typer.Option("--max-lipschitz", metavar="X", min=0.0, show_default=False, help=_MAX_LIPSCHITZ_HELP,
                 rich_help_panel=_GATE_PANEL),
]
MaxLayerSigmaOpt = Annotated[
    float | None,
    typer.Option("--max-layer-sigma", metavar="Y", min=0.0, show_default=False, help=_MAX_LAYER_SIGMA_HELP,
                 rich_help_panel=_GATE_PANEL),
]
AllowUncertifiedOpt = Annotated[
    bool, typer.Option("--allow-uncertified", help=_ALLOW_UNCERTIFIED_HELP, rich_help_panel=_GATE_PANEL)
]
ExitZeroOpt = Annotated[bool, typer.Option("--exit-zero", help=_EXIT_ZERO_HELP, rich_help_panel=_GATE_PANEL)]
PlotOpt = Annotated[
    str | None, typer.Option("--plot", metavar="FILE", show_default=False, help=_PLOT_HELP)
]


def _run(debug: bool, work: Callable[[], T], doing: str = "analysing the model") -> T:
    """Run a command's work: typed errors become one line and exit 2, Ctrl-C exit 130; running out of memory,
    of recursion depth or of float range, and an OS error (a full disk, a read-only folder) are one line and
    exit 2 too (``doing`` says what was running); anything else is a lipcheck bug (one line). ``--debug``
    adds the traceback (and numpy's overflow warnings, silenced otherwise: the report says what overflowed)."""
    import warnings

    if debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.filterwarnings("ignore", category=RuntimeWarning,
                                        message=r"(overflow|invalid value|divide by zero|underflow) encountered")
            return work()
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - every error ends here as one line
        if debug:
            traceback.print_exc()
        cause = _known_cause(exc)
        if isinstance(cause, LipcheckError):
            _fail(f"error: {cause}", _exit_code(cause))
        if cause is not None:
            _fail(f"error: {_describe(cause, doing)}")
        hint = "" if debug else " (run with --debug for the traceback)"
        _fail(f"internal error: {type(exc).__name__}: {_clip(str(exc))}{hint}")


def _known_cause(exc: BaseException) -> BaseException | None:
    """``exc``, or the first exception in its ``__cause__`` chain (a rule's error wrapped by the walker), that is a
    user-facing error: a :class:`LipcheckError`, running out of memory / recursion depth / float range, or an
    OS error. ``None``: a lipcheck bug."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, LipcheckError | MemoryError | RecursionError | OverflowError | OSError):
            return current
        current = current.__cause__
    return None


def _jobs_option(n_jobs: int) -> int | str:
    """A resolved ``--jobs`` as ``lipcheck.analyze`` takes it (``"size"`` stays a word: decided per model)."""
    from lipcheck.bound.parallel import BY_SIZE

    return "size" if n_jobs == BY_SIZE else n_jobs


def _describe(exc: BaseException, doing: str) -> str:
    """One line for an exception :func:`_known_cause` accepts (not a :class:`LipcheckError`)."""
    if isinstance(exc, MemoryError):
        return (f"out of memory while {doing}; try --no-exact (σ exact needs the largest arrays), a smaller "
                "--input-shape, or --jobs 1")
    if isinstance(exc, RecursionError):
        return f"nesting too deep while {doing} (a model graph or a file nested deeper than Python can follow)"
    if isinstance(exc, OverflowError):
        return f"a number too large for float64 or a C integer while {doing} ({_clip(str(exc))})"
    import os

    assert isinstance(exc, OSError)
    what = exc.strerror or _clip(str(exc)) or type(exc).__name__
    names = [os.fsdecode(n) for n in (exc.filename, exc.filename2) if n is not None and not isinstance(n, int)]
    return f"{' -> '.join(names)}: {what} (while {doing})" if names else f"{what} (while {doing})"


def _clip(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    tight_work: TightWorkOpt = 50.0,
    method: MethodOpt = Method.AUTO,
    domain: DomainOpt = None,
    around: AroundOpt = None,
    radius: RadiusOpt = None,
    norm: NormOpt = "2",
    no_lower_bound: Annotated[
        bool, typer.Option("--no-lower-bound", help="Skip the empirical lower bound.")
    ] = False,
    lower_bound_seconds: Annotated[
        float, typer.Option(min=0.0, help="Time budget of the empirical lower bound, in seconds.")
    ] = 5.0,
    force: ForceOpt = False,
    progress: ProgressOpt = None,
    jobs: JobsOpt = "size",
    cache: CacheOpt = None,
    threads: ThreadsOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    key: KeyOpt = None,
    trust_pickle: TrustPickleOpt = False,
    debug: DebugOpt = False,
    plot: PlotOpt = None,
    max_lipschitz: MaxLipschitzOpt = None,
    max_layer_sigma: MaxLayerSigmaOpt = None,
    allow_uncertified: AllowUncertifiedOpt = False,
    exit_zero: ExitZeroOpt = False,
) -> None:
    """Compute a certified Lipschitz bound (L2) of MODEL, with per-layer spectral norms.

    With --max-lipschitz / --max-layer-sigma it is also a gate (exit 1 when the model fails; see lipcheck check).
    """
    _limit_threads(threads)
    from lipcheck.gate.decision import Thresholds

    thresholds = Thresholds(max_lipschitz=max_lipschitz, max_layer_sigma=max_layer_sigma,
                            allow_uncertified=allow_uncertified)

    def work() -> tuple[Any, str]:
        _require_paths({"--plot": plot, "--cache": cache})
        shapes = parse_input_shapes(input_shape or [])
        kwargs = parse_arch_kwargs(arch_kwargs)
        from lipcheck.bound.parallel import resolve_jobs

        n_jobs = resolve_jobs(jobs)
        if cache is not None:
            from lipcheck.bound.cache import open_cache

            open_cache(cache)  # a path that is a file: one line, exit 2, before loading the model
        if plot is not None:
            _require_plot(plot)
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
                tight_work=tight_work,
                lower_bound=not no_lower_bound,
                lower_bound_seconds=lower_bound_seconds,
                method=method.value,
                domain=";".join(domain) if domain else None,
                around=around,
                radius=radius,
                norm=norm,
                progress=observer,
                trust_pickle=trust_pickle,
                arch=arch,
                arch_kwargs=kwargs,
                key=key,
                jobs=_jobs_option(n_jobs),
                cache_dir=cache,
                force=force,
            )
        finally:
            if observer is not None:
                observer.finish()
        if plot is not None:
            from lipcheck.report.plot import save_plot

            save_plot(report, plot, max_lipschitz=max_lipschitz, max_layer_sigma=max_layer_sigma)
        return report, output_format.render(report)

    report, text = _run(debug, work)
    if output_format is OutputFormat.TABLE and sys.stdout.isatty():
        from rich.console import Console

        from lipcheck.report.formats import print_table

        print_table(report, Console(highlight=False))  # styled; wider than the terminal rather than squeezed
    else:
        _write_stdout(text)
    if thresholds.any:
        _gate_single_report(report, model, thresholds, exit_zero)


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
    method: MethodOpt = Method.AUTO,
    progress: ProgressOpt = None,
    threads: ThreadsOpt = None,
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
    _limit_threads(threads)

    def work() -> str:
        _require_paths({"--out": out})
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
                trust_pickle=trust_pickle, arch=arch, arch_kwargs=kwargs, key=key, method=method.value,
            )
        finally:
            if observer is not None:
                observer.finish()
        from lipcheck.normalize.render import render_normalize_json, render_normalize_table

        return render_normalize_json(result) if output_format is NormalizeFormat.JSON else \
            render_normalize_table(result)

    _write_stdout(_run(debug, work, "normalizing the model"))


# ------------------------------------------------------------------------------------- check (the CI gate)


def _require_plot(path: str) -> None:
    """Before any analysis: the plot's file type, and matplotlib (exit 2 with the install hint)."""
    from lipcheck.report.plot import check_plot_path, require_matplotlib

    check_plot_path(path)
    require_matplotlib()


def _write_stderr(lines: Sequence[str]) -> None:
    """Each line escaped for display (names from a model cannot add lines or ANSI sequences)."""
    from lipcheck.report.text import safe_text

    try:
        sys.stderr.write("".join(safe_text(line) + "\n" for line in lines))
        sys.stderr.flush()
    except BrokenPipeError:  # pragma: no cover - nobody is listening
        pass


def _gate_single_report(report: Any, model: str, thresholds: Any, exit_zero: bool) -> None:
    """``lipcheck analyze`` with thresholds: the verdict on stderr, exit 1 when it fails (0 with --exit-zero)."""
    from lipcheck.gate.decision import evaluate
    from lipcheck.gate.run import AnalysisOptions, CheckRun, ModelCheck, Target
    from lipcheck.report.ci_formats import summary_lines

    verdict = evaluate(report, thresholds)
    target = Target(path=model, name=model, input_shape=None, thresholds=thresholds, baseline=None, plot=None,
                    analysis=AnalysisOptions())
    lines = summary_lines(CheckRun((ModelCheck(target, report, verdict, 0.0),)), command="analyze")
    if not verdict.passed and exit_zero:
        lines[-1] += " (exit code 0: --exit-zero)"
    _write_stderr(lines)
    if not verdict.passed and not exit_zero:
        raise typer.Exit(EXIT_FAILED)


CheckModelsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="MODEL",
        help="Model files to check (ONNX or PyTorch). Default: every model in the configuration "
        "(\\[tool.lipcheck] in pyproject.toml, or lipcheck.toml).",
        show_default=False,
    ),
]


@app.command()
def check(
    models: CheckModelsArg = None,
    max_lipschitz: Annotated[
        float | None,
        typer.Option("--max-lipschitz", metavar="X", min=0.0, show_default=False, envvar="LIPCHECK_MAX_LIPSCHITZ",
                     help=_MAX_LIPSCHITZ_HELP, rich_help_panel=_GATE_PANEL),
    ] = None,
    max_layer_sigma: Annotated[
        float | None,
        typer.Option("--max-layer-sigma", metavar="Y", min=0.0, show_default=False,
                     envvar="LIPCHECK_MAX_LAYER_SIGMA", help=_MAX_LAYER_SIGMA_HELP, rich_help_panel=_GATE_PANEL),
    ] = None,
    allow_uncertified: Annotated[
        bool,
        typer.Option("--allow-uncertified", envvar="LIPCHECK_ALLOW_UNCERTIFIED", help=_ALLOW_UNCERTIFIED_HELP,
                     rich_help_panel=_GATE_PANEL),
    ] = False,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", metavar="FILE", show_default=False, envvar="LIPCHECK_BASELINE",
                     help="A saved JSON report (lipcheck analyze/check --format json): fail when the certified "
                     "bound grew by more than --max-increase, and list the layers that grew.",
                     rich_help_panel=_GATE_PANEL),
    ] = None,
    max_increase: Annotated[
        float | None,
        typer.Option("--max-increase", metavar="PCT", min=0.0, show_default=False, envvar="LIPCHECK_MAX_INCREASE",
                     help="Largest allowed growth of the certified bound over the baseline, in percent "
                     "(default 0: any growth of the printed bound fails).", rich_help_panel=_GATE_PANEL),
    ] = None,
    update_baseline: Annotated[
        bool,
        typer.Option("--update-baseline", help="Write this run's report as the baseline (the comparison is shown "
                     "but does not gate).", rich_help_panel=_GATE_PANEL),
    ] = False,
    exit_zero: Annotated[
        bool, typer.Option("--exit-zero", envvar="LIPCHECK_EXIT_ZERO", help=_EXIT_ZERO_HELP,
                           rich_help_panel=_GATE_PANEL),
    ] = False,
    config: Annotated[
        str | None,
        typer.Option("--config", metavar="FILE", show_default=False, envvar="LIPCHECK_CONFIG",
                     help="Configuration file (default: the nearest lipcheck.toml, or pyproject.toml with "
                     "\\[tool.lipcheck], from the current folder up).", rich_help_panel=_GATE_PANEL),
    ] = None,
    output_format: Annotated[
        CheckFormat,
        typer.Option("--format", "-f", metavar="FORMAT", case_sensitive=False, envvar="LIPCHECK_FORMAT",
                     help="table, json, markdown, github (workflow annotations) or junit (JUnit XML); written "
                     "to stdout, or to --output.", rich_help_panel=_OUTPUT_PANEL),
    ] = CheckFormat.TABLE,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", metavar="FILE", show_default=False, envvar="LIPCHECK_OUTPUT",
                     help="Write the report to FILE instead of stdout, only when the run completes (exit 0 or 1).",
                     rich_help_panel=_OUTPUT_PANEL),
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option("--plot", metavar="FILE", show_default=False,
                     help=_PLOT_HELP + " Several models: FILE-<model>.png.", rich_help_panel=_OUTPUT_PANEL),
    ] = None,
    step_summary: Annotated[
        bool | None,
        typer.Option("--step-summary/--no-step-summary", envvar="LIPCHECK_STEP_SUMMARY", show_default=False,
                     help="Append the markdown report to $GITHUB_STEP_SUMMARY (default: with --format github "
                     "when that variable is set).", rich_help_panel=_OUTPUT_PANEL),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No summary on stderr (errors are still printed).",
                           rich_help_panel=_OUTPUT_PANEL),
    ] = False,
    progress: ProgressOpt = None,
    input_shape: Annotated[
        list[str] | None,
        typer.Option("--input-shape", "-s", metavar="[NAME=]SHAPE", show_default=False,
                     help="Static input shape, e.g. 1,3,32,32; NAME=SHAPE once per input for several inputs.",
                     rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    lower_bound: Annotated[
        bool | None,
        typer.Option("--lower-bound/--no-lower-bound", show_default=False,
                     help="Also measure the empirical lower bound (off by default: the gate is on the certified "
                     "bound, and the lower bound costs seconds per model).", rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    lower_bound_seconds: Annotated[
        float | None,
        typer.Option(min=0.0, show_default=False, help="Time budget of the lower bound, in seconds (default 5).",
                     rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    power_iterations: Annotated[
        int | None,
        typer.Option(min=1, show_default=False, help="Power iterations per layer (default 100).",
                     rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(min=0.0, show_default=False, help="Power-iteration tolerance, relative (default 1e-6).",
                     rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, show_default=False, help="Random seed (default 0).", rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    exact_limit: Annotated[
        int | None,
        typer.Option(min=0, show_default=False, help="Largest operator size for σ exact (default 2000000).",
                     rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    no_exact: Annotated[
        bool, typer.Option("--no-exact", help="Skip σ exact for every layer.", rich_help_panel=_ANALYSIS_PANEL)
    ] = False,
    tight_work: Annotated[
        float | None,
        typer.Option("--tight-work", min=0.0, metavar="GFLOP", show_default=False,
                     help="Work per conv for tighter certificates (default 50; 0: off).",
                     rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    method: Annotated[
        Method | None,
        typer.Option("--method", case_sensitive=False, show_default=False, rich_help_panel=_ANALYSIS_PANEL,
                     help=_METHOD_HELP + " Default auto."),
    ] = None,
    domain: Annotated[
        list[str] | None,
        typer.Option("--domain", metavar="[NAME=]LO,HI", show_default=False, rich_help_panel=_ANALYSIS_PANEL,
                     help=_DOMAIN_HELP + " The gate stays on the global bound."),
    ] = None,
    jobs: Annotated[
        str | None,
        typer.Option("--jobs", "-j", metavar="N", envvar="LIPCHECK_JOBS", show_default=False,
                     help=_JOBS_HELP + " Default 1.", rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option("--cache", metavar="DIR", envvar="LIPCHECK_CACHE", show_default=False, help=_CACHE_HELP,
                     rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", metavar="N", min=1, envvar="LIPCHECK_THREADS", show_default=False,
                     help=_THREADS_HELP, rich_help_panel=_ANALYSIS_PANEL),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option("--arch", metavar="MODULE:FACTORY", show_default=False, rich_help_panel=_TORCH_PANEL,
                     help="State dicts: the callable that builds the nn.Module (package.module:factory or "
                     "path/to/file.py:factory)."),
    ] = None,
    arch_kwargs: Annotated[
        str | None,
        typer.Option("--arch-kwargs", metavar="JSON", show_default=False, rich_help_panel=_TORCH_PANEL,
                     help="Keyword arguments for --arch, as a JSON object."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", show_default=False, rich_help_panel=_TORCH_PANEL,
                     help="Checkpoints: the key that holds the state dict (default: found)."),
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", envvar="LIPCHECK_TRUST_PICKLE", rich_help_panel=_TORCH_PANEL,
                           help=_TRUST_HELP + " Also trusts an arch factory named in the configuration (code under "
                           "review). Never read from the configuration."),
    ] = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """CI gate: exit 1 when a certified Lipschitz bound or layer σ is above its threshold, or grew.

    Fails when the certified upper bound is above --max-lipschitz, a layer's certified σ above
    --max-layer-sigma, the bound is unbounded (unless --allow-uncertified), or the bound grew over
    --baseline by more than --max-increase. Numbers are compared as printed (4 significant digits).

    Models and thresholds come from \\[tool.lipcheck] in pyproject.toml, or lipcheck.toml;
    flags and LIPCHECK_* environment variables override them.
    Exit codes: 0 passed, 1 gate failed, 2 could not run (--exit-zero turns 1 into 0, never 2).
    The summary goes to stderr; the report (--format) to stdout, or to --output.
    The empirical lower bound is off unless --lower-bound.
    """
    _limit_threads(threads)
    from lipcheck.gate.config import ModelOptions

    def prepare() -> tuple[list[Target], dict[str, Snapshot | None]]:
        from lipcheck.bound.cache import open_cache
        from lipcheck.bound.parallel import resolve_jobs
        from lipcheck.gate.config import load_config
        from lipcheck.gate.run import check_targets, load_baselines, resolve_targets

        _require_paths({"--output": output, "--plot": plot, "--baseline": baseline, "--config": config,
                        "--cache": cache})
        flags = ModelOptions(
            input_shape=parse_input_shapes(input_shape or []),
            max_lipschitz=max_lipschitz,
            max_layer_sigma=max_layer_sigma,
            allow_uncertified=True if allow_uncertified else None,
            baseline=baseline,
            max_increase=max_increase,
            plot=plot,
            power_iterations=power_iterations,
            tolerance=tolerance,
            seed=seed,
            exact_limit=exact_limit,
            exact=False if no_exact else None,
            tight_work=tight_work,
            method=method.value if method is not None else None,
            domain=";".join(domain) if domain else None,
            lower_bound=lower_bound,
            lower_bound_seconds=lower_bound_seconds,
            arch=arch,
            arch_kwargs=parse_arch_kwargs(arch_kwargs),
            key=key,
            trust_pickle=True if trust_pickle else None,
            jobs=_jobs_option(resolve_jobs(jobs)) if jobs is not None else None,
            cache=cache,
            force=True if force else None,
        )
        targets = resolve_targets(models or [], load_config(config), flags)
        check_targets(targets, updating_baseline=update_baseline, max_increase_flag=max_increase is not None)
        for target in targets:
            if target.plot is not None:
                _require_plot(target.plot)
            if target.analysis.cache_dir is not None:
                open_cache(target.analysis.cache_dir)  # not a folder: one line, exit 2, before any analysis
        return targets, load_baselines(targets, updating=update_baseline)

    targets, baselines = _run(debug, prepare, "reading the configuration and baselines")

    def analyse() -> CheckRun:
        from lipcheck.gate.run import run_check

        return run_check(targets, baselines, updating_baseline=update_baseline, observer=lambda: _observer(progress))

    result = _run(debug, analyse)
    from lipcheck.report.ci_formats import summary_lines

    if not result.complete:
        _write_stderr(summary_lines(result))  # the error lines, and what the other models gave
        raise typer.Exit(EXIT_ERROR)

    def publish() -> tuple[CheckRun, str | None]:
        """Only for a complete run: plots, baselines, the report (stdout text, or --output), the step summary."""
        import os

        from lipcheck.gate.baseline import write_atomically
        from lipcheck.gate.run import write_artifacts

        run = write_artifacts(result, update_baseline=update_baseline)
        text = output_format.render(run)
        summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
        wants_summary = step_summary if step_summary is not None else output_format is CheckFormat.GITHUB
        if wants_summary and summary_file:
            _append(summary_file, CheckFormat.MARKDOWN.render(run))
        if output is not None:
            write_atomically(output, text)
            return run, None
        return run, text

    run, text = _run(debug, publish, "writing the outputs")
    if text is not None:
        _write_stdout(text)
    failed = not run.passed
    if not quiet:
        lines = summary_lines(run)
        if output is not None:
            lines.insert(-1, f"report ({output_format.value}) written to {output}")
        if failed and exit_zero:
            lines[-1] += " (exit code 0: --exit-zero)"
        _write_stderr(lines)
    if failed and not exit_zero:
        raise typer.Exit(EXIT_FAILED)


def _append(path: str, text: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:
        raise LipcheckError(f"cannot append to $GITHUB_STEP_SUMMARY ({path}): {exc.strerror or exc}") from exc


# ------------------------------------------------------------------------------------------------- diff


def _is_json_report(path: str) -> bool:
    """A JSON report (``.json``, or a file whose first non-blank byte is ``{``) rather than a model."""
    if path.lower().endswith(".json"):
        return True
    import os
    import stat

    try:  # non-blocking, regular files only: a FIFO or /dev/zero is left to the loader's error
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False  # the model loader gives the error
    try:
        head = os.read(fd, 64).lstrip() if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return False
    finally:
        os.close(fd)
    return head.startswith(b"{")


@app.command()
def diff(
    a: Annotated[str, typer.Argument(metavar="A", help="Model file or JSON report: the old side.", show_default=False)],
    b: Annotated[str, typer.Argument(metavar="B", help="Model file or JSON report: the new side.", show_default=False)],
    output_format: Annotated[
        DiffFormat,
        typer.Option("--format", "-f", case_sensitive=False, help="Output format, written to stdout."),
    ] = DiffFormat.TABLE,
    max_increase: Annotated[
        float | None,
        typer.Option("--max-increase", metavar="PCT", min=0.0, show_default=False,
                     help="Exit 1 when B's certified bound is more than PCT percent above A's (or unbounded)."),
    ] = None,
    input_shape: InputShapeOpt = None,
    power_iterations: PowerIterationsOpt = 100,
    tolerance: ToleranceOpt = 1e-6,
    seed: SeedOpt = 0,
    exact_limit: ExactLimitOpt = 2_000_000,
    no_exact: NoExactOpt = False,
    method: MethodOpt = Method.AUTO,
    progress: ProgressOpt = None,
    threads: ThreadsOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    key: KeyOpt = None,
    trust_pickle: TrustPickleOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare two models, or two saved JSON reports, layer by layer (certified σ, by layer name).

    Growth is computed from the printed values (4 significant digits).
    Exit 0; 1 with --max-increase when B's bound grew more; 2 when a side cannot be read.
    """
    _limit_threads(threads)

    def work() -> tuple[Any, str]:
        shapes = parse_input_shapes(input_shape or [])
        kwargs = parse_arch_kwargs(arch_kwargs)
        from lipcheck.gate.baseline import Snapshot, compare, load_snapshot

        def side(path: str) -> Snapshot:
            if _is_json_report(path):
                return load_snapshot(path, what="report")
            import lipcheck

            observer = _observer(progress)
            try:
                report = lipcheck.analyze(
                    path, input_shape=shapes, power_iterations=power_iterations, tolerance=tolerance, seed=seed,
                    exact_limit=0 if no_exact else exact_limit, lower_bound=False, progress=observer,
                    trust_pickle=trust_pickle, arch=arch, arch_kwargs=kwargs, key=key, method=method.value,
                )
            finally:
                if observer is not None:
                    observer.finish()
            return Snapshot.from_report(report)

        comparison = compare(side(a), side(b))
        return comparison, output_format.render(comparison)

    comparison, text = _run(debug, work, "comparing the models")
    _write_stdout(text)
    if max_increase is not None:
        from lipcheck.gate.decision import CheckKind, Outcome, check_growth

        result = check_growth(comparison, max_increase)
        tag = "FAIL" if result.outcome is Outcome.FAILED else "PASS"
        _write_stderr([f"{tag} {CheckKind.MAX_INCREASE.value}: {result.message}"])
        if result.failed:
            raise typer.Exit(EXIT_FAILED)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``lipcheck``, ``python -m lipcheck``). A usage error (unknown option, a value
    out of range such as ``--seed -1``) is one line on stderr and exit 2, like every other bad input."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        code = app(args=args, prog_name="lipcheck", standalone_mode=False)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        _exit(EXIT_INTERRUPTED)
    except Exception as exc:
        # typer's (click's) UsageError / BadParameter / NoSuchOption; duck-typed: the class moved between versions
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        if type(exc).__name__ == "Abort":
            sys.stderr.write("interrupted\n")
            _exit(EXIT_INTERRUPTED)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `lipcheck` alone: the help is printed already
            sys.exit(EXIT_ERROR)
        command = next((a for a in args if not a.startswith("-")), "")
        hint = f"lipcheck {command} -h" if command in _COMMANDS else "lipcheck -h"
        sys.stderr.write(f"error: {_one_line(exc.format_message())} (see {hint})\n")
        sys.exit(int(getattr(exc, "exit_code", EXIT_ERROR)) or EXIT_ERROR)
    _exit(code if isinstance(code, int) else EXIT_OK)


def _exit(code: int) -> NoReturn:
    """``sys.exit(code)``, so that an interrupted run ends with exit code 130, always.

    Under ``python -m`` CPython (3.11, 3.12) ends the process by SIGINT, whatever the exit code, when a
    KeyboardInterrupt once left code run by a string ``exec`` (``run_eval_code_obj`` sets a runtime flag
    that nothing clears but the next string ``exec``), even though it was caught later. ``dataclasses``
    builds its methods that way: a Ctrl-C during an import that defines a dataclass killed the process by
    the signal (returncode -2) after it printed "interrupted". A string ``exec`` that completes resets it."""
    if code == EXIT_INTERRUPTED:
        exec("pass", {})  # noqa: S102 - resets CPython's unhandled-KeyboardInterrupt flag (see above)
    sys.exit(code)


_COMMANDS = ("analyze", "normalize", "check", "diff")
