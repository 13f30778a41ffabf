r"""``fastoptim explain NAME``: the update rule of an algorithm and its defaults.

The update rule is the math block of the algorithm module's docstring -- the
same text that documents the reference rule every kernel is tested against --
rendered as plain text (``\theta_{t-1} \leftarrow`` becomes ``θₜ₋₁ ←``;
``--latex`` prints it as written).  The defaults are read from the class
signature.  Without a name, the command lists every algorithm.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import textwrap

from . import CLIError
from ._common import algorithm_class, algorithm_names, constructor_options, one_line_errors, resolve_algorithm

DESCRIPTION = """\
Print an algorithm's update rule (the math of its reference implementation,
from the algorithm module's docstring) and its default hyper-parameters (from
the class signature).  Without NAME, list the algorithms."""

EPILOG = """\
examples:
  fastoptim explain Adam
  fastoptim explain sgd            (names are case-insensitive)
  fastoptim explain RMSprop --latex
  fastoptim explain                (list every algorithm)
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="print an algorithm's update rule and defaults",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    one_line_errors(parser)
    parser.add_argument("name", nargs="?", help="algorithm name, e.g. Adam (any case)")
    parser.add_argument("--latex", action="store_true", help="print the math as LaTeX, as written in the docstring")
    parser.set_defaults(func=run)


# ----------------------------------------------------------------------------- LaTeX to text

_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε", "zeta": "ζ",
    "eta": "η", "theta": "θ", "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ",
    "sigma": "σ", "tau": "τ", "phi": "φ", "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω",
    "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
    "leftarrow": "←", "gets": "←", "rightarrow": "→", "to": "→", "cdot": "·", "times": "×", "odot": "⊙",
    "neq": "≠", "ne": "≠", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "approx": "≈", "infty": "∞",
    "sum": "Σ", "prod": "Π", "lVert": "‖", "rVert": "‖", "Vert": "‖", "top": "ᵀ", "pm": "±", "in": "∈",
    "max": "max", "min": "min", "sign": "sign", "log": "log", "exp": "exp", "quad": "   ", "qquad": "      ",
    "ldots": "…", "dots": "…", "partial": "∂", "nabla": "∇", "circ": "∘", "mid": "|", "lvert": "|", "rvert": "|",
}
# commands that only size or space things
_DROP = {"left", "right", "bigl", "bigr", "Bigl", "Bigr", "big", "Big", "textstyle", "displaystyle"}
_ACCENTS = {"hat": "\u0302", "bar": "\u0304", "tilde": "\u0303", "dot": "\u0307", "vec": "\u20d7"}
_TEXT = {"text", "mathrm", "operatorname", "mathbf", "mathit", "textrm", "mathcal", "boldsymbol"}
_SUB = dict(zip("0123456789+-−=()aehijklmnoprstuvx", "₀₁₂₃₄₅₆₇₈₉₊₋₋₌₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ"))
_SUP = dict(zip("0123456789+-−=()abcdefghijklmnoprstuvwxyzT", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁻⁼⁽⁾ᵃᵇᶜᵈᵉᶠᵍʰⁱʲᵏˡᵐⁿᵒᵖʳˢᵗᵘᵛʷˣʸᶻᵀ"))


def _group(s: str, i: int) -> tuple[str, int]:
    """The argument at ``s[i:]``: a ``{...}`` group (braces matched) or one token; returns (text, end)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return s[i + 1 : j], j + 1
        return s[i + 1 :], len(s)
    if s[i] == "\\":
        match = re.match(r"\\[A-Za-z]+", s[i:])
        if match:
            return match.group(0), i + match.end()
    return s[i], i + 1


def _wrap(text: str) -> str:
    """Parenthesise a rendered fraction/root operand unless it is a single symbol."""
    return text if len(text) <= 1 or re.fullmatch(r"\w[\w\u0300-\u036f₀-₉ᵢₜ]*|\(.*\)", text) and " " not in text \
        and not any(op in text for op in "+−-*/·") else f"({text})"


def _script(text: str, table: dict[str, str], marker: str) -> str:
    if text and all(c in table for c in text):
        return "".join(table[c] for c in text)
    return f"{marker}({text})" if len(text) > 1 else f"{marker}{text}"


def latex_to_text(s: str) -> str:
    """Render one line of LaTeX math as plain Unicode text (good enough for update rules)."""
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            match = re.match(r"\\([A-Za-z]+)|\\(.)", s[i:])
            name = match.group(1) or match.group(2)
            i += match.end()
            if name in ("frac", "tfrac", "dfrac"):
                num, i = _group(s, i)
                den, i = _group(s, i)
                out.append(f"{_wrap(latex_to_text(num))}/{_wrap(latex_to_text(den))}")
            elif name == "sqrt":
                arg, i = _group(s, i)
                out.append("√" + _wrap(latex_to_text(arg)))
            elif name in _TEXT:
                arg, i = _group(s, i)
                out.append(arg.replace("\\_", "_").replace("\\ ", " ") if name != "operatorname" else arg)
            elif name in _ACCENTS:
                arg, i = _group(s, i)
                rendered = latex_to_text(arg)
                out.append(rendered + _ACCENTS[name] if len(rendered) == 1 else f"{_ACCENTS_WORD[name]}({rendered})")
            elif name in _DROP:
                continue
            elif name in _SYMBOLS:
                out.append(_SYMBOLS[name])
            elif name in (",", ";", " ", ":", "!"):
                out.append(" " if name != "!" else "")
            elif name in ("{", "}", "_", "%", "&", "#", "|"):
                out.append({"|": "‖"}.get(name, name))
            else:
                out.append(name)
        elif c in "_^":
            arg, i = _group(s, i + 1)
            rendered = latex_to_text(arg)
            out.append(_script(rendered, _SUB if c == "_" else _SUP, c))
        elif c in "{}":
            i += 1
        elif c == "-":
            out.append("−")
            i += 1
        else:
            out.append(c)
            i += 1
    return re.sub(r"[ \t]+", " ", "".join(out)).strip()


_ACCENTS_WORD = {"hat": "hat", "bar": "mean", "tilde": "tilde", "dot": "dot", "vec": "vec"}


def _math_rows(block: str) -> list[str]:
    """Split an aligned math block into its rows; cases environments become ``{ a (if b) | … }``."""

    def cases(match: re.Match) -> str:
        rows = [r.strip() for r in re.split(r"\\\\", match.group(1)) if r.strip()]
        parts = []
        for row in rows:
            value, _, condition = row.partition("&")
            parts.append(f"{value.strip()}  [{condition.strip()}]" if condition.strip() else value.strip())
        return "\\{ " + " \\mid ".join(parts) + " \\}"

    text = " ".join(line.strip() for line in block.splitlines())
    text = re.sub(r"\\begin\{cases\}(.*?)\\end\{cases\}", cases, text)
    text = re.sub(r"\\begin\{aligned\}|\\end\{aligned\}", "", text)
    return [row.replace("&", " ").strip() for row in re.split(r"\\\\", text) if row.strip()]


def _render_docstring(doc: str, latex: bool) -> str:
    """The module docstring with its math blocks rendered and reST markup softened."""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith(".. math::"):
            inline = line.split("::", 1)[1].strip()
            block = [inline] if inline else []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            body = textwrap.dedent("\n".join(block)).strip("\n")
            if latex:
                out += ["    " + row for row in body.splitlines()]
            else:
                out += ["    " + latex_to_text(row) for row in _math_rows(body)]
            out.append("")
            continue
        directive = re.match(r"\s*\.\. (warning|note|seealso)::\s*(.*)", line)
        if directive:
            out.append(f"{directive.group(1).capitalize()}: {directive.group(2)}".rstrip())
            i += 1
            while i < len(lines) and lines[i].startswith((" ", "\t")) and lines[i].strip():
                out.append(lines[i].strip())  # the directive's indented body
                i += 1
            continue
        out.append(line)
        i += 1
    text = "\n".join(out)
    if not latex:
        text = re.sub(r":math:`([^`]+)`", lambda m: latex_to_text(m.group(1)), text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r":(?:class|func|mod|meth|attr):`~?([^`]+)`", r"\1", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


# ----------------------------------------------------------------------------- the command


def _defaults(cls: type) -> list[str]:
    from ..optimizer import required

    lines = []
    for name, parameter in constructor_options(cls).items():
        if parameter.default is inspect.Parameter.empty or parameter.default is required:
            value = "(required)"
        else:
            value = repr(parameter.default)
        keyword = "  (keyword-only)" if parameter.kind is parameter.KEYWORD_ONLY else ""
        lines.append(f"    {name} = {value}{keyword}")
    return lines


def _kernel_note(cls: type) -> str | None:
    """What the fast-kernel table says about this algorithm, if it can be read."""
    try:
        from ..kernels.capabilities import capability_of
    except ImportError:
        return None
    rule = getattr(cls, "rule", None)
    try:
        capability = capability_of(rule) if rule is not None else None
    except Exception:  # the table is another module's business; explain must not fail on it
        return None
    if capability is None:
        return "Fast kernel: none; the reference rule runs (plain tensor ops)."
    covers = f" Covers: {capability.covers}." if getattr(capability, "covers", "") else ""
    return f"Fast kernel: numba CPU kernel ({capability.module}).{covers}"


def _summary(cls: type) -> str:
    doc = sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _list() -> str:
    names = algorithm_names()
    width = max(len(n) for n in names)
    lines = ["Algorithms (fastoptim explain NAME for the update rule and defaults):", ""]
    for name in names:
        cls = algorithm_class(name)
        torch_mark = "" if algorithm_class(name, "torch") is not None else "  [fastoptim only]"
        lines.append(f"  {name:<{width}}  {_summary(cls)}{torch_mark}")
    return "\n".join(lines)


def explain(name: str, latex: bool = False) -> str:
    """The text ``fastoptim explain NAME`` prints."""
    name = resolve_algorithm(name)
    cls = algorithm_class(name)
    module = sys.modules[cls.__module__]
    counterpart = (
        f"drop-in for torch.optim.{name}" if algorithm_class(name, "torch") is not None else "not in torch.optim"
    )
    parts = [f"fastoptim.{name}  ({counterpart}; reference rule in {cls.__module__})", ""]
    parts.append(_render_docstring(module.__doc__ or cls.__doc__ or "(no docstring)", latex))
    parts += ["", f"Defaults: fastoptim.{name}(params, ...)"]
    parts += _defaults(cls)
    note = _kernel_note(cls)
    if note:
        parts += ["", textwrap.fill(note, width=100)]
    return "\n".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.name is not None and not args.name.strip():
        raise CLIError("empty algorithm name")
    text = _list() if args.name is None else explain(args.name, latex=args.latex)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `fastoptim explain Adam | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
