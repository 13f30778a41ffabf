"""``fastoptim plot-schedule``: draw learning-rate schedules into a PNG.

A schedule is given on the command line as a scheduler name followed by its
constructor arguments, spelt as options (``max_lr`` → ``--max-lr``; ``T_max``
→ ``--T-max`` or ``--t-max``).  Repeat the pattern to draw several schedules on
one figure.  The options are read from each scheduler's signature, so every
argument that has a command-line form is available, with the scheduler's own
defaults and validation.

The curves come from the closed forms in :mod:`fastoptim.schedules` (through
the schedulers' ``lr_at`` / ``momentum_at``); a scheduler without a closed form
(SWALR) is stepped on a throwaway optimizer instead.  Momentum (or Adam's
beta1) is drawn in a second panel for the schedulers that cycle it.
"""

from __future__ import annotations

import argparse
import inspect
import re

from . import CLIError

DESCRIPTION = "Draw the learning rate (and cycled momentum) of LR schedulers against the step."

EPILOG = """\
schedule specs:
  SCHEDULER [--ARG VALUE ...]   a scheduler of fastoptim.lr_scheduler (any case) and
                                its constructor arguments; repeat to compare several.
                                Extra option per spec: --label TEXT (legend entry).
  fastoptim plot-schedule SCHEDULER --help   lists a scheduler's options.

drawable schedulers:
  StepLR MultiStepLR ConstantLR LinearLR ExponentialLR PolynomialLR
  CosineAnnealingLR CosineAnnealingWarmRestarts CyclicLR OneCycleLR
  WarmupDecayLR SWALR
  (LambdaLR and MultiplicativeLR take Python functions, ReduceLROnPlateau a
  metric, SequentialLR and ChainedScheduler other schedulers: build those in
  Python.)

examples:
  fastoptim plot-schedule OneCycleLR --max-lr 0.1 --total-steps 1000 -o onecycle.png
  fastoptim plot-schedule CosineAnnealingLR --T-max 100 \\
      WarmupDecayLR --warmup-steps 10 --total-steps 100 \\
      StepLR --step-size 30 --gamma 0.5 --steps 120 -o compare.png
  fastoptim plot-schedule CyclicLR --base-lr 0.01 --max-lr 0.1 --step-size-up 20 \\
      --mode triangular2 --steps 200 --log-y -o cyclic.png
"""

USAGE = "fastoptim plot-schedule SCHEDULER [--ARG VALUE ...] [SCHEDULER ...] [figure options]"

# Not drawable from the command line, and why.
NEEDS_PYTHON = {
    "LambdaLR": "takes a Python function (lr_lambda)",
    "MultiplicativeLR": "takes a Python function (lr_lambda)",
    "ReduceLROnPlateau": "follows a metric, which a plot does not have",
    "SequentialLR": "combines scheduler objects",
    "ChainedScheduler": "combines scheduler objects",
    "LRScheduler": "is the abstract base class",
}

DEFAULT_STEPS = 100


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become :class:`CLIError` (one line, exit 2)."""

    def __init__(self, *args, context="", **kwargs):
        super().__init__(*args, **kwargs)
        self.context = context  # what the message is about, e.g. "StepLR: "

    def error(self, message):
        raise CLIError(f"{self.context}{message}")


def _add_figure_options(parser: argparse.ArgumentParser, defaults=True) -> None:
    """The options of the figure; ``defaults=False`` leaves unset ones out of the namespace."""

    def default(value):
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("figure options (anywhere on the line)")
    group.add_argument("-o", "--output", default=default("schedule.png"), metavar="PNG",
                       help="where to write the image (default: schedule.png)")
    group.add_argument("--steps", type=int, default=default(None),
                       help=f"steps to draw (default: the schedule's total_steps, else {DEFAULT_STEPS})")
    group.add_argument("--lr", type=float, default=default(0.1),
                       help="the optimizer's lr, i.e. base_lr (default: 0.1)")
    group.add_argument("--title", default=default(None), help="figure title")
    group.add_argument("--width", type=int, default=default(900), help="image width in pixels (default: 900)")
    group.add_argument("--height", type=int, default=default(500), help="image height in pixels (default: 500)")
    group.add_argument("--dpi", type=int, default=default(100), help="resolution (default: 100)")
    group.add_argument("--log-y", action="store_true", default=default(False), help="log scale for the lr")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot-schedule",
        help="draw LR schedules into a PNG",
        description=DESCRIPTION,
        epilog=EPILOG,
        usage=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_figure_options(parser)
    parser.add_argument("spec", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------
# Schedule specs: "Name --arg value ..." → (class, kwargs, label)
# --------------------------------------------------------------------------


def _scheduler_classes() -> dict[str, type]:
    from fastoptim import lr_scheduler, swa_utils

    classes = {name: getattr(lr_scheduler, name) for name in lr_scheduler.__all__}
    classes["SWALR"] = swa_utils.SWALR
    return classes


def _option_type(param: inspect.Parameter) -> dict:
    """argparse keywords for a constructor parameter, from its annotation or default."""
    annotation = param.annotation if isinstance(param.annotation, str) else ""
    if annotation.startswith("Literal"):
        return {"choices": re.findall(r"['\"]([^'\"]+)['\"]", annotation)}
    if annotation.startswith(("list[int]", "Iterable[int]")):
        return {"type": int, "nargs": "+"}
    if annotation == "bool" or isinstance(param.default, bool):
        return {"action": argparse.BooleanOptionalAction}
    if annotation.startswith("int") or (not annotation and isinstance(param.default, int)):
        return {"type": int}
    return {"type": float}


def _spec_parser(name: str, cls: type) -> _Parser:
    parser = _Parser(prog=f"fastoptim plot-schedule {name}", context=f"{name}: ", allow_abbrev=False,
                     description=(inspect.getdoc(cls) or "").split("\n")[0])
    for param in list(inspect.signature(cls.__init__).parameters.values())[2:]:
        if param.name == "last_epoch" or "Callable" in str(param.annotation):
            continue
        flags = [f"--{param.name.replace('_', '-')}"]
        if flags[0].lower() != flags[0]:
            flags.append(flags[0].lower())
        required = param.default is inspect.Parameter.empty
        parser.add_argument(*flags, dest=param.name, required=required,
                            default=argparse.SUPPRESS, **_option_type(param),
                            help="required" if required else f"default: {param.default}")
    parser.add_argument("--label", default=None, help="legend entry (default: the spec)")
    return parser


def parse_specs(tokens: list[str]) -> list[tuple[type, dict, str]]:
    """Split ``tokens`` at scheduler names; parse each piece with that scheduler's options."""
    classes = _scheduler_classes()
    by_lower = {name.lower(): name for name in classes}
    pieces: list[list[str]] = []
    for token in tokens:
        if token.lower() in by_lower:
            pieces.append([by_lower[token.lower()]])
        elif pieces:
            pieces[-1].append(token)
        else:
            raise CLIError(f"expected a scheduler name, got {token!r} (see --help)")
    if not pieces:
        raise CLIError("name at least one scheduler, e.g. 'OneCycleLR --max-lr 0.1 --total-steps 100'")

    specs = []
    for name, *args in pieces:
        if name in NEEDS_PYTHON:
            raise CLIError(f"{name} {NEEDS_PYTHON[name]}; it cannot be drawn from the command line")
        kwargs = vars(_spec_parser(name, classes[name]).parse_args(args))
        label = kwargs.pop("label") or _default_label(name, kwargs)
        specs.append((classes[name], kwargs, label))
    return specs


def _default_label(name, kwargs) -> str:
    return f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"


# --------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------


def build_scheduler(cls, kwargs, lr):
    """The scheduler on a throwaway one-parameter SGD (with momentum, so it can be cycled)."""
    import warnings

    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(optimizer, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise CLIError(f"{cls.__name__}: {exc}") from None


def natural_length(scheduler) -> int | None:
    """How many steps a schedule lasts (OneCycleLR, WarmupDecayLR), where it says so."""
    total = getattr(scheduler, "total_steps", None)
    return total if isinstance(total, int) else None


def _closed_form_curve(value_at, steps) -> list[float]:
    """``value_at(t)[0]`` for ``t < steps``, up to where the schedule is defined."""
    values = []
    for t in range(steps):
        try:
            values.append(float(value_at(t)[0]))
        except ValueError:  # OneCycleLR ends at total_steps
            break
    return values


def curves(scheduler, steps: int) -> dict[str, list[float]]:
    """``{"lr": [...], "momentum": [...]}`` (momentum only where it is cycled)."""
    if hasattr(scheduler, "lr_at"):
        out = {"lr": _closed_form_curve(scheduler.lr_at, steps)}
        if getattr(scheduler, "cycle_momentum", False):
            out["momentum"] = _closed_form_curve(scheduler.momentum_at, steps)
        return out
    optimizer, lrs = scheduler.optimizer, []
    for _ in range(steps):  # no closed form: step it
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return {"lr": lrs}


# --------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------


def draw(series, path, *, width, height, dpi, title=None, log_y=False) -> None:
    """Write ``series`` (a list of (label, curves)) as a ``width``×``height`` PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    with_momentum = any("momentum" in c for _, c in series)
    if with_momentum:
        lr_ax, momentum_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    else:
        lr_ax, momentum_ax = fig.subplots(), None
    for label, c in series:
        (line,) = lr_ax.plot(range(len(c["lr"])), c["lr"], label=label)
        if "momentum" in c:
            momentum_ax.plot(range(len(c["momentum"])), c["momentum"], color=line.get_color())
    lr_ax.set_ylabel("learning rate")
    if log_y:
        lr_ax.set_yscale("log")
    # Below the axes, so that no curve hides behind it.
    fig.legend(loc="outside lower center", ncols=min(len(series), 2), fontsize="small", frameon=False)
    (momentum_ax or lr_ax).set_xlabel("step")
    if momentum_ax is not None:
        momentum_ax.set_ylabel("momentum / β₁")
    for ax in filter(None, (lr_ax, momentum_ax)):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=dpi, format="png")  # no bbox_inches="tight": the size stays width×height


def run(args) -> int:
    figure = _Parser(prog="fastoptim plot-schedule", allow_abbrev=False, add_help=False)
    _add_figure_options(figure, defaults=False)
    args, spec_tokens = figure.parse_known_args(args.spec, namespace=args)
    specs = parse_specs(spec_tokens)
    for name in ("width", "height", "dpi"):
        if getattr(args, name) <= 0:
            raise CLIError(f"--{name} must be positive")

    schedulers = [(build_scheduler(cls, kwargs, args.lr), label) for cls, kwargs, label in specs]
    steps = args.steps
    if steps is None:
        lengths = [n for s, _ in schedulers if (n := natural_length(s))]
        steps = max(lengths, default=DEFAULT_STEPS)
    if steps <= 0:
        raise CLIError("--steps must be positive")

    series = [(label, curves(s, steps)) for s, label in schedulers]
    try:
        draw(series, args.output, width=args.width, height=args.height, dpi=args.dpi,
             title=args.title, log_y=args.log_y)
    except OSError as exc:
        raise CLIError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {args.output} ({args.width}x{args.height}, {len(series)} schedule(s), {steps} steps)")
    return 0
