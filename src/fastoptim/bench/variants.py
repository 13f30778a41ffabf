"""What the bench runs: the algorithms both libraries have, and each one's variants.

Everything is discovered, nothing listed by hand: an algorithm is benched when
fastoptim exports an optimizer class that torch.optim also has; torch's
variants are read off its constructor's signature (``foreach``, ``fused``) and
``fused=True`` is kept only where a probe step on a CPU tensor succeeds.

The algorithms torch.optim lacks (Lion, LAMB, ...) are benched against the
reference package their tests match (:data:`REFERENCE_PACKAGES`, the one
hand-written list), in that package's default configuration and, where it has
one, its for-loop path; they are skipped, with the reason, when the package is
not installed.

Every algorithm runs in its default configuration except those in
:data:`BENCH_OPTIONS` (L-BFGS: its work per step is set by ``max_iter`` and
``history_size``, fixed there), and ``step()`` gets no argument except for the
algorithms that need a closure (L-BFGS), which get :func:`closure_for`'s.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "BENCH_OPTIONS",
    "ORDER",
    "REFERENCE_PACKAGES",
    "SKIP_REASONS",
    "Variant",
    "closure_for",
    "discover_algorithms",
    "variants_for",
]

#: report order for the algorithms torch.optim has (others follow alphabetically)
ORDER = [
    "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax",
    "NAdam", "RAdam", "ASGD", "Rprop", "SparseAdam", "Adafactor", "LBFGS", "Muon",
    "Lion", "Lamb", "LARS", "Adan", "AdamWScheduleFree", "SGDScheduleFree",
]  # fmt: skip

#: algorithms beyond torch.optim -> (module, class, {variant key: (label, constructor kwargs)}) of the
#: reference package their tests compare with; "reference" is the package's default configuration
_PO_VARIANTS = {"reference_forloop": ("reference for-loop", {"foreach": False}), "reference": ("reference default", {})}
REFERENCE_PACKAGES: dict[str, tuple[str, str, dict[str, tuple[str, dict]]]] = {
    "Lion": ("lion_pytorch", "Lion", {"reference": ("reference default", {})}),
    "Lamb": ("pytorch_optimizer", "Lamb", _PO_VARIANTS),
    "LARS": ("pytorch_optimizer", "LARS", _PO_VARIANTS),
    "Adan": ("pytorch_optimizer", "Adan", _PO_VARIANTS),
    "AdamWScheduleFree": ("schedulefree", "AdamWScheduleFree", _PO_VARIANTS),
    "SGDScheduleFree": ("schedulefree", "SGDScheduleFree", _PO_VARIANTS),
}

#: algorithms exported by both libraries that the bench does not time, and why
SKIP_REASONS = {
    "Muon": (
        "orthogonalises the momentum with ns_steps=5 Newton-Schulz iterations, i.e. matrix products "
        "of O(rows * cols * min(rows, cols)) flops per step: compute-bound, not bandwidth-bound, so the "
        "byte model does not apply; and it takes 2-D parameters only, while the many/tiny sets hold "
        "1-D tensors (and one 8192x8192 step would take minutes here)"
    ),
}


#: constructor options the bench gives (both libraries alike) instead of the defaults
BENCH_OPTIONS: dict[str, dict] = {
    # L-BFGS's work per step is set by max_iter and the history: fixed small, so that a
    # step has a known amount of work (4 closures, a full history of 3 pairs from the
    # second step on: max_iter - 1 >= history_size fills it during the first step) and a
    # full-size cell takes seconds, not minutes.  lr = 1e-3 shrinks the quadratic's
    # parameters by ~0.1 % per iteration, and tolerances of 0 keep every stopping test from
    # firing, so every step runs all max_iter iterations whatever ran before it.
    "LBFGS": dict(lr=1e-3, max_iter=4, history_size=3, tolerance_grad=0.0, tolerance_change=0.0),
}


def _quadratic_closure(params: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """f(θ) = ½‖θ‖² with its gradient θ copied into the existing ``p.grad`` buffers (no autograd).

    Deterministic, the same for every variant, and cheap: one foreach copy
    (read θ, write the gradient) and one foreach norm (read θ) per evaluation;
    it allocates nothing of parameter size.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]

    def closure() -> torch.Tensor:
        with torch.no_grad():  # the optimizers call closures with grad enabled
            torch._foreach_copy_(grads, params)
            norms = torch._foreach_norm(params)
            return 0.5 * torch.stack(norms).square().sum()

    return closure


#: algorithms whose step() needs a closure -> the closure the bench passes (built per cell)
_CLOSURES: dict[str, Callable[[list[torch.Tensor]], Callable[[], torch.Tensor]]] = {"LBFGS": _quadratic_closure}


def closure_for(algorithm: str, params: list[torch.Tensor]) -> Callable[[], torch.Tensor] | None:
    """The closure every variant's ``step`` gets for ``algorithm`` on ``params`` (None: ``step()``)."""
    make = _CLOSURES.get(algorithm)
    return make(params) if make else None


@dataclass(frozen=True)
class Variant:
    """One way to run one algorithm: a library and the flags its constructor gets."""

    key: str  # stable id in the JSON: torch_forloop, torch_foreach, torch_fused, reference(_forloop), fastoptim
    label: str  # column title in the report
    library: str  # "torch", "reference" (a reference package) or "fastoptim"
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]

    @property
    def is_torch(self) -> bool:
        return self.library == "torch"


def _is_optimizer_class(obj, base) -> bool:
    return isinstance(obj, type) and issubclass(obj, base) and obj is not base


def discover_algorithms() -> tuple[list[str], dict[str, str]]:
    """(algorithms to bench in report order, {algorithm: reason} for those skipped)."""
    import fastoptim

    both = []
    missing: dict[str, str] = {}
    for name in dir(fastoptim):
        if name.startswith("_"):
            continue
        ours, theirs = getattr(fastoptim, name), getattr(torch.optim, name, None)
        if not _is_optimizer_class(ours, fastoptim.Optimizer):
            continue
        if _is_optimizer_class(theirs, torch.optim.Optimizer):
            both.append(name)
        elif name in REFERENCE_PACKAGES:
            both.append(name)
            module = REFERENCE_PACKAGES[name][0]
            if importlib.util.find_spec(module) is None:
                missing[name] = f"its reference package {module} is not installed (pip install 'fastoptim[test]')"
    both.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    skipped = {n: SKIP_REASONS.get(n) or missing[n] for n in both if n in SKIP_REASONS or n in missing}
    return [n for n in both if n not in skipped], skipped


def _fused_works_on_cpu(cls) -> str | None:
    """None if ``cls(..., fused=True)`` steps a CPU tensor, else why not."""
    p = torch.zeros(4, requires_grad=True)
    p.grad = torch.ones(4)
    try:
        cls([p], fused=True).step()
    except Exception as exc:  # noqa: BLE001 - any failure means "no fused CPU variant"
        return f"{type(exc).__name__}: {exc}"
    return None


def variants_for(algorithm: str) -> tuple[list[Variant], dict[str, str]]:
    """The variants of ``algorithm`` (torch's, then fastoptim's default) and notes on absent ones."""
    import fastoptim

    if algorithm in REFERENCE_PACKAGES and not hasattr(torch.optim, algorithm):
        return _reference_variants(algorithm)
    torch_cls, ours = getattr(torch.optim, algorithm), getattr(fastoptim, algorithm)
    accepted = inspect.signature(torch_cls).parameters
    options = BENCH_OPTIONS.get(algorithm, {})
    out: list[Variant] = []
    notes: dict[str, str] = {}
    if options:
        notes["options"] = "both libraries: " + ", ".join(f"{k}={v}" for k, v in options.items())
    if algorithm in _CLOSURES:
        notes["closure"] = (_CLOSURES[algorithm].__doc__ or "").strip().splitlines()[0]
    if "foreach" in accepted:
        out.append(Variant("torch_forloop", "torch for-loop", "torch", lambda ps: torch_cls(ps, foreach=False)))
        out.append(Variant("torch_foreach", "torch foreach", "torch", lambda ps: torch_cls(ps, foreach=True)))
    else:
        # SparseAdam, LBFGS: one implementation, a loop over the parameters
        out.append(Variant("torch_forloop", "torch for-loop", "torch", lambda ps: torch_cls(ps, **options)))
        notes["torch_foreach"] = (
            "torch has no foreach implementation: its only one works on one flat vector and loops over "
            "the parameters to update them"
            if algorithm == "LBFGS"
            else "torch has no foreach implementation: its only one loops over the parameters"
        )
    if "fused" in accepted:
        why_not = _fused_works_on_cpu(torch_cls)
        if why_not is None:
            out.append(Variant("torch_fused", "torch fused", "torch", lambda ps: torch_cls(ps, fused=True)))
        else:
            notes["torch_fused"] = f"fused=True fails on CPU: {why_not}"
    else:
        notes["torch_fused"] = "torch has no fused implementation"
    out.append(Variant("fastoptim", "fastoptim", "fastoptim", lambda ps: ours(ps, **options)))
    return out, notes


def _training(cls, kwargs: dict) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    """A constructor that also puts a Schedule-Free optimizer in train mode (it refuses to step otherwise)."""

    def make(params):
        optimizer = cls(params, **kwargs)
        if callable(getattr(optimizer, "train", None)):
            optimizer.train()
        return optimizer

    return make


def _reference_variants(algorithm: str) -> tuple[list[Variant], dict[str, str]]:
    """The reference package's variants of an algorithm torch.optim lacks, then fastoptim's default."""
    import fastoptim

    module_name, class_name, variants = REFERENCE_PACKAGES[algorithm]
    module = importlib.import_module(module_name)
    version = getattr(module, "__version__", None) or importlib.metadata.version(module_name.replace("_", "-"))
    cls = getattr(module, class_name)
    out = [Variant(key, label, "reference", _training(cls, kwargs)) for key, (label, kwargs) in variants.items()]
    out.append(Variant("fastoptim", "fastoptim", "fastoptim", _training(getattr(fastoptim, algorithm), {})))
    notes = {"reference": f"{module_name}.{class_name} {version}"}
    return out, notes
