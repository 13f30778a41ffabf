"""``fastoptim compare``: train one small model with fastoptim and torch.optim side by side.

The data set is scikit-learn's bundled *digits* (1,797 8×8 images of
handwritten digits, shipped inside scikit-learn: nothing is downloaded),
split 80/20 into train and test sets.  The model is an MLP
(64 → hidden → 10, ReLU).  For every optimizer given with ``--optim`` the
command trains the model twice from the same initial weights on the same
mini-batches, once with ``fastoptim.<Name>`` and once with
``torch.optim.<Name>`` (an optimizer torch.optim does not have runs with
fastoptim only), records the training loss, test loss and test accuracy after
every epoch and the time of every ``optimizer.step()``, and writes a report
directory:

``compare.png``   the loss and accuracy curves and the step times, in one figure
``loss.png``, ``accuracy.png``   the curves on their own
``summary.md``    the final metrics as a table
``summary.json``  everything, curves included

It prints the final losses of the two libraries side by side with their
relative difference; they agree to rounding (the update rules are the same
arithmetic), and the exit status is 1 when a pair differs by more than
``--rtol``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import CLIError
from ._common import OptimizerSpec, algorithm_class, one_line_errors, output_dir, parse_optimizer_spec

DEFAULT_OPTIMIZERS = [
    "SGD:lr=0.1,momentum=0.9",
    "Adam:lr=1e-3",
    "AdamW:lr=3e-3,weight_decay=0.05",
    "RMSprop:lr=1e-3",
    "Adagrad:lr=0.05",
]
LIBRARIES = ("fastoptim", "torch")

DESCRIPTION = """\
Train a small MLP on scikit-learn's bundled digits data set with several
optimizers, each from fastoptim and from torch.optim (same seed, same batches),
and write a report: loss and accuracy curves (PNG), final metrics, step time
per optimizer, summary.md and summary.json.  Prints the final losses of both
libraries side by side; exit status 1 if a pair disagrees beyond --rtol."""

EPILOG = f"""\
optimizer specs:
  NAME[:key=value,...]   any optimizer fastoptim exports (any case), with its
                         keyword arguments as Python literals; repeat --optim
                         to compare several.  Default: {' '.join(DEFAULT_OPTIMIZERS)}

examples:
  fastoptim compare
  fastoptim compare --optim Adam:lr=1e-3 --optim SGD:lr=0.1,momentum=0.9,nesterov=True
  fastoptim compare --optim "AdamW:lr=3e-3,betas=(0.9,0.95)" --epochs 30 --out reports/adamw
  fastoptim compare --optim Lion:lr=1e-4 --libraries fastoptim --no-progress
"""


@dataclass
class Run:
    """One optimizer trained with one library."""

    spec: str
    library: str
    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.train_loss[-1]

    @property
    def median_step_us(self) -> float:
        return statistics.median(self.step_seconds) * 1e6 if self.step_seconds else math.nan


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train a small model with fastoptim and torch.optim side by side and write a report",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    one_line_errors(parser)
    parser.add_argument(
        "--optim",
        action="append",
        metavar="SPEC",
        help="optimizer to compare, NAME[:key=value,...] (repeatable; default: five common ones)",
    )
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training set (default: 20)")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    parser.add_argument("--hidden", type=int, default=64, help="width of the hidden layer (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initial weights and batches")
    parser.add_argument(
        "--libraries",
        default="fastoptim,torch",
        metavar="LIST",
        help="comma-separated: fastoptim, torch or both (default: fastoptim,torch)",
    )
    parser.add_argument(
        "--out", default="reports/compare", metavar="DIR", help="report directory (default: reports/compare)"
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=1e-5,
        help="largest relative difference of final losses counted as agreement (default: 1e-5)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch (and kernel) threads; the model is tiny, so 1 is fastest and steadiest (default: 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


# ----------------------------------------------------------------------------- data and model


def load_digits_split(seed: int):
    """The digits data as float32 tensors in [0, 1]: ``(x_train, y_train, x_test, y_test)``."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype("float32") / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.2, random_state=seed, stratify=data.target
    )
    return (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train).long(),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test).long(),
    )


def make_model(hidden: int, seed: int):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def _evaluate(model, x, y) -> tuple[float, float]:
    import torch

    with torch.no_grad():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy


def train_one(spec: OptimizerSpec, library: str, data, args, progress) -> Run:
    """Train from the seed's initial weights; the batches depend only on the seed."""
    import torch

    x_train, y_train, x_test, y_test = data
    model = make_model(args.hidden, args.seed)
    optimizer = spec.build(model.parameters(), library)
    needs_closure = spec.name == "LBFGS"
    # Schedule-free optimizers evaluate at their averaged point: eval()/train() switch it.
    switch = callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))
    generator = torch.Generator().manual_seed(args.seed)
    result = Run(spec.text, library)
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(x_train), generator=generator)
        if switch:
            optimizer.train()
        for start in range(0, len(order), args.batch_size):
            index = order[start : start + args.batch_size]
            xb, yb = x_train[index], y_train[index]

            def closure():
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
                return loss

            if needs_closure:  # the closure runs inside step(): its time is counted
                began = time.perf_counter()
                optimizer.step(closure)
            else:
                closure()
                began = time.perf_counter()
                optimizer.step()
            result.step_seconds.append(time.perf_counter() - began)
            progress.update(1)
        if switch:
            optimizer.eval()
        train_loss, _ = _evaluate(model, x_train, y_train)
        test_loss, test_accuracy = _evaluate(model, x_test, y_test)
        result.epochs.append(epoch)
        result.train_loss.append(train_loss)
        result.test_loss.append(test_loss)
        result.test_accuracy.append(test_accuracy)
    return result


# ----------------------------------------------------------------------------- report


def relative_difference(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def _plot(runs: dict[tuple[str, str], Run], specs: list[OptimizerSpec], libraries, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # fastoptim: a wide coloured line; torch.optim: black dashes drawn on top of it, so where the
    # two libraries agree the line is coloured with black dashes.
    styles = {
        "fastoptim": dict(linestyle="-", linewidth=3.0, alpha=0.85, zorder=2),
        "torch": dict(linestyle=(0, (3, 3)), linewidth=1.1, color="black", zorder=3),
    }

    def curves(ax, attribute, ylabel, log=False):
        for i, spec in enumerate(specs):
            for library in libraries:
                run = runs.get((spec.text, library))
                if run is None:
                    continue
                values = getattr(run, attribute)
                if attribute == "test_accuracy":
                    values = [100 * v for v in values]
                style = dict(styles[library])
                style.setdefault("color", colors[i % len(colors)])
                ax.plot(run.epochs, values, **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)

    def legend_handles():
        handles = [Line2D([], [], color=colors[i % len(colors)], linewidth=3.0, label=spec.text)
                   for i, spec in enumerate(specs)]
        if "fastoptim" in libraries:
            handles.append(Line2D([], [], color="grey", linewidth=3.0, alpha=0.85, label="fastoptim (solid)"))
        if "torch" in libraries:
            handles.append(Line2D([], [], color="black", linewidth=1.1, linestyle=(0, (3, 3)),
                                  label="torch.optim (dashed)"))
        return handles

    def step_times(ax):
        width = 0.8 / len(libraries)
        for j, library in enumerate(libraries):
            xs, heights, bar_colors = [], [], []
            for i, spec in enumerate(specs):
                run = runs.get((spec.text, library))
                if run is not None:
                    xs.append(i + (j - (len(libraries) - 1) / 2) * width)
                    heights.append(run.median_step_us)
                    bar_colors.append(colors[i % len(colors)])
            ax.bar(xs, heights, width=width * 0.95, color=bar_colors, edgecolor="black", linewidth=0.6,
                   hatch="//" if library == "torch" else None, alpha=0.85 if library == "fastoptim" else 0.45)
        ax.set_xticks(range(len(specs)), [s.name for s in specs], rotation=30, ha="right")
        ax.set_ylabel("median optimizer.step() time (µs)")
        ax.grid(True, axis="y", alpha=0.3)
        if len(libraries) == 2:
            ax.set_title("Step time (left: fastoptim, right hatched: torch.optim)")
        else:
            ax.set_title(f"Step time ({libraries[0]})")

    written = []
    figure, axes = plt.subplots(1, 3, figsize=(16, 5.4))
    curves(axes[0], "train_loss", "training loss (cross-entropy)", log=True)
    axes[0].set_title("Training loss")
    curves(axes[1], "test_accuracy", "test accuracy (%)")
    axes[1].set_title("Test accuracy")
    step_times(axes[2])
    handles = legend_handles()
    figure.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize="small", frameon=False)
    figure.suptitle("fastoptim vs torch.optim: MLP on scikit-learn digits, same seed")
    rows = (len(handles) + 3) // 4
    figure.tight_layout(rect=(0, 0.03 + 0.045 * rows, 1, 0.96))
    written.append(out / "compare.png")
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)

    for attribute, filename, ylabel, log in (
        ("train_loss", "loss.png", "training loss (cross-entropy)", True),
        ("test_accuracy", "accuracy.png", "test accuracy (%)", False),
    ):
        figure, ax = plt.subplots(figsize=(8, 5))
        curves(ax, attribute, ylabel, log=log)
        ax.legend(handles=legend_handles(), fontsize="small")
        ax.set_title(f"MLP on scikit-learn digits: {ylabel}")
        figure.tight_layout()
        written.append(out / filename)
        figure.savefig(written[-1], dpi=110)
        plt.close(figure)
    return written


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _summary_rows(specs, runs, libraries):
    rows = [["optimizer"]]
    for library in libraries:
        rows[0].append(f"final loss ({library})")
    if len(libraries) == 2:
        rows[0].append("rel. diff")
    rows[0] += [f"test acc ({'/'.join(libraries)})", f"step µs ({'/'.join(libraries)})"]
    differences = {}
    for spec in specs:
        present = [runs.get((spec.text, lib)) for lib in libraries]
        row = [spec.text]
        row += [f"{r.final_loss:.9g}" if r else "—" for r in present]
        if len(libraries) == 2:
            if all(present):
                differences[spec.text] = relative_difference(present[0].final_loss, present[1].final_loss)
                row.append(f"{differences[spec.text]:.1e}")
            else:
                row.append("—")
        row.append(" / ".join(f"{100 * r.test_accuracy[-1]:.1f}%" if r else "—" for r in present))
        row.append(" / ".join(f"{r.median_step_us:.0f}" if r else "—" for r in present))
        rows.append(row)
    return rows, differences


# ----------------------------------------------------------------------------- command


def _parse_libraries(text: str) -> tuple[str, ...]:
    chosen = []
    for item in (part.strip().lower() for part in text.split(",")):
        if item in ("both", "all"):
            chosen += list(LIBRARIES)
        elif item in ("torch", "torch.optim"):
            chosen.append("torch")
        elif item == "fastoptim":
            chosen.append("fastoptim")
        else:
            raise CLIError(f"--libraries: unknown library {item!r}; use fastoptim, torch or both")
    return tuple(lib for lib in LIBRARIES if lib in chosen)


def run(args: argparse.Namespace) -> int:
    for name in ("epochs", "batch_size", "hidden", "threads"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.rtol >= 0:
        raise CLIError(f"--rtol must be non-negative, got {args.rtol}")
    libraries = _parse_libraries(args.libraries)
    specs = [parse_optimizer_spec(text) for text in (args.optim or DEFAULT_OPTIMIZERS)]
    texts = [s.text for s in specs]
    if len(set(texts)) != len(texts):
        raise CLIError("the same --optim is given twice")
    out = output_dir(args.out)

    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    data = load_digits_split(args.seed)
    steps_per_epoch = math.ceil(len(data[0]) / args.batch_size)
    jobs = [(spec, lib) for spec in specs for lib in libraries if algorithm_class(spec.name, lib) is not None]
    only_fastoptim = [spec.name for spec in specs if algorithm_class(spec.name, "torch") is None]
    print(
        f"fastoptim compare: {len(specs)} optimizer(s) × {'/'.join(libraries)}, {args.epochs} epochs of "
        f"scikit-learn digits ({len(data[0])} train / {len(data[2])} test), MLP 64-{args.hidden}-10, "
        f"seed {args.seed}, {torch.get_num_threads()} thread(s)"
    )
    if only_fastoptim and "torch" in libraries:
        print(f"  (torch.optim has no {', '.join(only_fastoptim)}: fastoptim only)")

    runs: dict[tuple[str, str], Run] = {}
    with tqdm(
        total=len(jobs) * args.epochs * steps_per_epoch,
        unit="step",
        disable=True if args.no_progress else None,  # None: only on a terminal
        file=sys.stderr,
        dynamic_ncols=True,
    ) as progress:
        for spec, library in jobs:
            progress.set_description(f"{spec.name} [{library}]")
            try:
                runs[(spec.text, library)] = train_one(spec, library, data, args, progress)
            except (ValueError, TypeError, RuntimeError) as error:
                raise CLIError(f"{spec.text} [{library}]: {error}") from None

    rows, differences = _summary_rows(specs, runs, libraries)
    disagree = [text for text, d in differences.items() if d > args.rtol]
    print()
    print(_table(rows))
    print()
    if differences:
        if disagree:
            print(f"final losses DISAGREE beyond rtol={args.rtol:g}: {', '.join(disagree)}")
        else:
            worst = max(differences.values())
            print(f"fastoptim and torch.optim agree: largest relative difference of final losses {worst:.1e} "
                  f"(rtol={args.rtol:g})")

    pictures = _plot(runs, specs, libraries, out)
    summary = {
        "config": {
            "optimizers": texts,
            "libraries": list(libraries),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "hidden": args.hidden,
            "seed": args.seed,
            "rtol": args.rtol,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "data": "sklearn.datasets.load_digits, 80/20 stratified split",
        },
        "runs": [
            dict(asdict(r), final_loss=r.final_loss, final_test_accuracy=r.test_accuracy[-1],
                 median_step_us=r.median_step_us)
            for r in runs.values()
        ],
        "relative_difference": differences,
        "agree": not disagree,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    markdown = [
        "# fastoptim compare",
        "",
        f"MLP 64-{args.hidden}-10 on scikit-learn digits, {args.epochs} epochs, batch {args.batch_size}, "
        f"seed {args.seed}, torch {torch.__version__}, {torch.get_num_threads()} thread(s).",
        "",
        _markdown_table(rows),
        "",
        "![loss, accuracy and step time](compare.png)",
        "",
    ]
    (out / "summary.md").write_text("\n".join(markdown))
    print(f"report: {out / 'summary.md'}  (figures: {', '.join(p.name for p in pictures)}; data: summary.json)")
    return 1 if disagree else 0


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)
