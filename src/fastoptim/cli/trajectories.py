"""``fastoptim trajectories``: the paths of optimizers on classic 2-D test functions.

Each optimizer starts from the function's standard starting point (or
``--start``) and takes ``--steps`` steps on the function itself (the point
``(x, y)`` is the only parameter, float64); the visited points are drawn over
the function's contour plot, one panel per function, with the global minima
marked.  A path that diverges stops where it left the finite numbers and is
labelled so.  The functions live in :mod:`fastoptim.testfunctions`.
"""

from __future__ import annotations

import argparse
import math

from . import CLIError
from ._common import algorithm_class, one_line_errors, output_png, parse_optimizer_spec

DEFAULT_OPTIMIZERS = ["SGD:lr=1e-3,momentum=0.9", "Adam:lr=0.1", "RMSprop:lr=0.02", "Adagrad:lr=1.0"]
DEFAULT_FUNCTIONS = ["rosenbrock", "beale", "himmelblau", "rastrigin"]

DESCRIPTION = """\
Run several optimizers on classic 2-D test functions and draw their paths over
the contour plot (one panel per function), as a PNG."""


def _epilog() -> str:
    from ..testfunctions import FUNCTIONS

    functions = "\n".join(f"  {f.name:<11} {f.formula}" for f in FUNCTIONS.values())
    return f"""\
functions:
{functions}

optimizer specs:
  NAME[:key=value,...]   any optimizer fastoptim exports (any case) with its keyword
                         arguments; the same hyper-parameters are used on every function.
                         Default: {' '.join(DEFAULT_OPTIMIZERS)}

examples:
  fastoptim trajectories
  fastoptim trajectories --function rosenbrock --optim Adam:lr=0.05 --optim NAdam:lr=0.05 --steps 500
  fastoptim trajectories --function himmelblau --start 0,0 --optim "SGD:lr=0.01,momentum=0.9,nesterov=True"
  fastoptim trajectories --library torch --out reports/torch-paths.png
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "trajectories",
        help="draw optimizer paths on 2-D test functions (Rosenbrock, Beale, ...) over contour plots",
        description=DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    one_line_errors(parser)
    parser.add_argument(
        "--function",
        action="append",
        metavar="NAME",
        help=f"test function (repeatable; default: {', '.join(DEFAULT_FUNCTIONS)}; 'all' for every one)",
    )
    parser.add_argument("--optim", action="append", metavar="SPEC", help="optimizer, NAME[:key=value,...] (repeatable)")
    parser.add_argument("--steps", type=int, default=300, help="steps per optimizer (default: 300)")
    parser.add_argument("--start", metavar="X,Y", help="starting point instead of each function's standard one")
    parser.add_argument(
        "--library",
        choices=("fastoptim", "torch"),
        default="fastoptim",
        help="whose optimizers take the steps (default: fastoptim)",
    )
    parser.add_argument(
        "--out", default="reports/trajectories.png", metavar="FILE.png", help="output image (default: %(default)s)"
    )
    parser.set_defaults(func=run)


def _functions(names: list[str] | None):
    from ..testfunctions import FUNCTIONS

    if not names:
        return [FUNCTIONS[n] for n in DEFAULT_FUNCTIONS]
    if any(n.strip().lower() == "all" for n in names):
        return list(FUNCTIONS.values())
    chosen = []
    for name in names:
        function = FUNCTIONS.get(name.strip().lower())
        if function is None:
            raise CLIError(f"unknown function {name!r}; available: {', '.join(FUNCTIONS)}")
        if function not in chosen:
            chosen.append(function)
    return chosen


def _start(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    try:
        x, y = (float(p) for p in parts)
    except ValueError:
        raise CLIError(f"--start must be two numbers X,Y, got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise CLIError(f"--start must be finite, got {text!r}")
    return x, y


def draw(functions, specs, paths, out, library: str, steps: int) -> None:
    """One contour panel per function with every optimizer's path; saved as PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from matplotlib.colors import LogNorm

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    columns = min(2, len(functions))
    rows = math.ceil(len(functions) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.2 * columns, 5.4 * rows), squeeze=False)
    for ax in axes.flat[len(functions):]:
        ax.set_visible(False)
    for ax, function in zip(axes.flat, functions):
        xs = np.linspace(*function.xlim, 300)
        ys = np.linspace(*function.ylim, 300)
        gx, gy = np.meshgrid(xs, ys)
        with torch.no_grad():
            z = function(torch.from_numpy(gx), torch.from_numpy(gy)).numpy()
        if function.log_levels:
            positive = z[z > 0]
            levels = np.logspace(np.log10(max(positive.min(), 1e-3)), np.log10(z.max()), 30)
            ax.contourf(gx, gy, np.maximum(z, levels[0]), levels=levels, norm=LogNorm(), cmap="Greys", alpha=0.75)
            ax.contour(gx, gy, np.maximum(z, levels[0]), levels=levels, norm=LogNorm(), colors="grey",
                       linewidths=0.3, alpha=0.5)
        else:
            ax.contourf(gx, gy, z, levels=30, cmap="Greys", alpha=0.75)
        for mx, my in function.minima:
            ax.plot(mx, my, marker="*", markersize=15, color="gold", markeredgecolor="black", zorder=5)
        start = paths[(function.name, specs[0].text)][0]
        ax.plot(start[0], start[1], marker="o", markersize=8, color="white", markeredgecolor="black", zorder=5)
        for i, spec in enumerate(specs):
            points = paths[(function.name, spec.text)].numpy()
            diverged = len(points) < steps + 1
            label = spec.text + (f" (diverged after {len(points) - 1} steps)" if diverged else "")
            color = colors[i % len(colors)]
            ax.plot(points[:, 0], points[:, 1], color=color, linewidth=1.8, label=label, zorder=4)
            ax.plot(points[-1, 0], points[-1, 1], marker="X" if diverged else "o", markersize=7, color=color,
                    markeredgecolor="black", zorder=6)
        ax.set_xlim(function.xlim)
        ax.set_ylim(function.ylim)
        ax.set_title(f"{function.name}: {function.formula}", fontsize="medium")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend(fontsize="x-small", loc="lower left", framealpha=0.85)
    figure.suptitle(f"{steps} steps of {library} optimizers (○ start, ★ global minima)")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(out, dpi=100)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    functions = _functions(args.function)
    specs = [parse_optimizer_spec(text) for text in (args.optim or DEFAULT_OPTIMIZERS)]
    missing = [s.name for s in specs if algorithm_class(s.name, args.library) is None]
    if missing:
        raise CLIError(f"torch.optim has no {', '.join(missing)}; use --library fastoptim")
    start = _start(args.start)
    out = output_png(args.out)

    from ..testfunctions import path

    paths = {}  # (function, spec) -> visited points; steps + 1 of them unless the path diverged
    for function in functions:
        for spec in specs:
            try:
                paths[(function.name, spec.text)] = path(
                    function, lambda params: spec.build(params, args.library), args.steps, start
                )
            except (ValueError, TypeError, RuntimeError) as error:
                raise CLIError(f"{spec.text} on {function.name}: {error}") from None
    draw(functions, specs, paths, out, args.library, args.steps)
    for function in functions:
        finals = []
        for spec in specs:
            points = paths[(function.name, spec.text)]
            x, y = points[-1].tolist()
            value = function(points[-1][0], points[-1][1]).item()
            note = "" if len(points) == args.steps + 1 else f" (diverged at step {len(points)})"
            finals.append(f"{spec.name} f({x:.3g}, {y:.3g}) = {value:.3g}{note}")
        print(f"{function.name:<11} " + "; ".join(finals))
    print(f"wrote {out}")
    return 0
