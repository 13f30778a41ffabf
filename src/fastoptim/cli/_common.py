"""Pieces shared by the ``compare``, ``trajectories`` and ``explain`` subcommands.

* :func:`algorithm_names` / :func:`resolve_algorithm` -- the optimizers
  fastoptim exports, looked up by name in any case;
* :func:`parse_optimizer_spec` -- ``"Adam:lr=1e-3,betas=(0.9,0.99)"`` into an
  :class:`OptimizerSpec`, validated by building the optimizer once, so a bad
  value gives the optimizer's own message (``Invalid learning rate: -1.0``);
* :func:`output_dir` / :func:`output_png` -- create and check where a
  subcommand writes;
* :func:`one_line_errors` -- argparse errors as one line (no usage block).

Every user error is raised as :class:`fastoptim.cli.CLIError`.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import CLIError

# Optimizers that a dense training loop cannot run, and why.
UNSUITABLE = {"SparseAdam": "needs sparse gradients (nn.Embedding(sparse=True)); this command trains dense models"}


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report a bad argument as ``PROG: error: MESSAGE`` alone, exit status 2."""

    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def algorithm_names() -> list[str]:
    """Every optimizer class fastoptim exports (``fastoptim.__all__``), in that order."""
    import fastoptim

    names = []
    for name in getattr(fastoptim, "__all__", dir(fastoptim)):
        obj = getattr(fastoptim, name, None)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and name != "Optimizer":
            names.append(name)
    return names


def resolve_algorithm(name: str) -> str:
    """The exported name for ``name`` (case-insensitive); CLIError with suggestions if unknown."""
    names = algorithm_names()
    by_lower = {n.lower(): n for n in names}
    found = by_lower.get(name.strip().lower())
    if found is not None:
        return found
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(by_lower[c] for c in close)}?)" if close else ""
    raise CLIError(f"unknown optimizer {name!r}{hint}; available: {', '.join(names)}")


def algorithm_class(name: str, library: str = "fastoptim") -> type | None:
    """The class ``name`` of ``fastoptim`` or ``torch.optim`` (None if that library has none)."""
    import fastoptim

    module = fastoptim if library == "fastoptim" else torch.optim
    return getattr(module, name, None)


def constructor_options(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword options of an optimizer's constructor (everything but ``self`` and ``params``)."""
    parameters = inspect.signature(cls.__init__).parameters
    return {
        n: p
        for n, p in parameters.items()
        if n not in ("self", "params") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on ``separator`` outside parentheses and brackets: ``betas=(0.9,0.99),lr=1`` -> 2 parts."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


_WORDS = {"true": True, "false": False, "none": None}


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in _WORDS:
        return _WORDS[lowered]
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()  # a bare word, e.g. a mode name; the optimizer validates it


@dataclass
class OptimizerSpec:
    """An optimizer chosen on the command line: its exported name and keyword options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # as the user wrote it (for labels)

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in self.options.items()) + ")"

    def build(self, params, library: str = "fastoptim") -> torch.optim.Optimizer:
        cls = algorithm_class(self.name, library)
        if cls is None:
            raise CLIError(f"torch.optim has no {self.name}")
        return cls(params, **self.options)


def parse_optimizer_spec(text: str) -> OptimizerSpec:
    """``NAME[:key=value,...]`` -> a validated :class:`OptimizerSpec`.

    Values are Python literals (``1e-3``, ``(0.9, 0.99)``, ``True``; ``true``,
    ``false`` and ``none`` in any case too).  Unknown names, unknown options
    and values the optimizer rejects raise CLIError with one line.
    """
    name_part, _, options_part = text.partition(":")
    if not name_part.strip():
        raise CLIError(f"bad optimizer spec {text!r}: expected NAME[:key=value,...], e.g. Adam:lr=1e-3")
    name = resolve_algorithm(name_part)
    if name in UNSUITABLE:
        raise CLIError(f"{name} {UNSUITABLE[name]}")
    cls = algorithm_class(name)
    known = constructor_options(cls)
    options: dict[str, Any] = {}
    for item in _split_top_level(options_part):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise CLIError(f"{name}: bad option {item!r}: expected key=value, e.g. lr=1e-3")
        if key not in known:
            raise CLIError(f"{name}: unknown option {key!r}; {name} takes: {', '.join(known)}")
        options[key] = _parse_value(value)
    spec = OptimizerSpec(name, options, text)
    try:  # let the optimizer validate the values, with its own messages
        spec.build([torch.nn.Parameter(torch.zeros(2, 2))])
    except (ValueError, TypeError, RuntimeError) as error:
        raise CLIError(f"{text}: {error}") from None
    return spec


def output_dir(path: str | os.PathLike) -> Path:
    """Create (if needed) and return a writable output directory; CLIError otherwise."""
    directory = Path(path).expanduser()
    if directory.exists() and not directory.is_dir():
        raise CLIError(f"output path {str(directory)!r} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(f"cannot create output directory {str(directory)!r}: {error.strerror or error}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CLIError(f"output directory {str(directory)!r} is not writable")
    return directory


def output_png(path: str | os.PathLike) -> Path:
    """Check a ``.png`` output file path (its directory is created); CLIError otherwise."""
    file = Path(path).expanduser()
    if file.suffix.lower() != ".png":
        raise CLIError(f"output file {str(file)!r} must end in .png")
    if file.is_dir():
        raise CLIError(f"output path {str(file)!r} is a directory")
    output_dir(file.parent if str(file.parent) else ".")
    return file


def float_option(name: str, value: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """Parse a float given on the command line (CLIError if it is not one or is out of range)."""
    try:
        number = float(value)
    except ValueError:
        raise CLIError(f"{name} must be a number, got {value!r}") from None
    if positive and not number > 0:
        raise CLIError(f"{name} must be positive, got {value}")
    if minimum is not None and number < minimum:
        raise CLIError(f"{name} must be at least {minimum}, got {value}")
    return number
