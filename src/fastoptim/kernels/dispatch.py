"""Choose how a group of parameters is updated: a fast kernel or the reference rule.

This is the only place that decides *how* an update runs.  Algorithms never
branch on ``foreach``/``fused``/``capturable``: those flags are accepted for
compatibility and read here (through the options the optimizer hands its
reference rule).  The reference rule is always correct; a kernel is used only
when the capability table (:mod:`fastoptim.kernels.capabilities`) says it
covers the case exactly, and then only for the parameters it covers -- the
others of the same group take the reference rule.

The backend can be forced, for tests, debugging and benchmarks:

``FASTOPTIM_BACKEND=reference`` (environment) or ``with use_backend("reference"):``
    every update runs the reference rule;
``FASTOPTIM_BACKEND=numba`` / ``use_backend("numba")``
    strict: an update that the kernels do not cover raises ``RuntimeError``
    (with the reason) instead of falling back;
``auto`` (the default)
    kernels where they cover the case, the reference rule elsewhere.

:func:`backend_for` and :func:`explain` say which backend each group would
use, without stepping.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .capabilities import Capability, capability_of, group_reason
from .shards import local_view

if TYPE_CHECKING:  # the kernels (and numba) are imported on first use
    from .cpu._launch import Reuse

__all__ = ["BACKENDS", "backend_for", "explain", "requested_backend", "run_reference", "update_group", "use_backend"]

#: what ``FASTOPTIM_BACKEND`` / :func:`use_backend` accept
BACKENDS = ("auto", "reference", "numba")
KERNEL = "numba"
REFERENCE = "reference"

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastoptim_backend", default=None)


def _dispatch_mode_active() -> bool:
    """Whether a ``TorchDispatchMode`` is on the stack (one C call)."""
    return torch._C._len_torch_dispatch_stack() > 0


def requested_backend() -> str:
    """The backend asked for: :func:`use_backend` if active, else ``$FASTOPTIM_BACKEND``, else ``auto``.

    Under ``torch.compile`` the reference rules run: they are plain tensor ops
    that dynamo traces into the graph, whereas a numba call is opaque to it
    (and reading the context variable would break the graph every step).
    So they do under a ``TorchDispatchMode`` (``make_fx``, ``FakeTensorMode``,
    ``FlopCounterMode``, ...): a kernel writes the tensors' memory behind the
    dispatcher, so the mode would never see the update (make_fx would trace a
    step without it, as if the optimizer did nothing).
    """
    if torch.compiler.is_compiling() or _dispatch_mode_active():
        return REFERENCE
    name = _forced.get() or os.environ.get("FASTOPTIM_BACKEND") or "auto"
    if name not in BACKENDS:
        raise ValueError(f"FASTOPTIM_BACKEND must be one of {BACKENDS}, not {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend (``"auto"``, ``"reference"`` or ``"numba"``) inside the ``with`` block."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def run_reference(optimizer: Any, group: dict[str, Any], params: list[Tensor], options: dict | None = None) -> None:
    """Apply the algorithm's reference rule to each parameter, one at a time."""
    if options is None:
        options = optimizer._rule_options(group)
    rule = type(optimizer).rule
    state = optimizer.state
    for p in params:
        entry = state.get(p)
        if entry is None:
            entry = {}
        rule(p, p.grad, entry, **options)
        if entry and p not in state:
            state[p] = entry


_modules: dict[str, Any] = {}
_import_errors: dict[str, str] = {}


def _kernel_module(cap: Capability) -> Any | None:
    """The kernel module (importing numba on first use); None if it cannot be imported."""
    module = _modules.get(cap.module)
    if module is None and cap.module not in _import_errors:
        try:
            module = _modules[cap.module] = importlib.import_module(cap.module)
        except ImportError as exc:  # numba missing or broken: the reference rule still works
            _import_errors[cap.module] = f"kernel unavailable ({exc})"
    return module


def _group_plan(optimizer: Any, options: dict) -> tuple[Any | None, str | None]:
    """The kernel module for this group, or the reason there is none."""
    rule = getattr(type(optimizer), "rule", None)
    cap = capability_of(rule)
    if cap is None:
        return None, f"no kernel for {getattr(rule, '__qualname__', type(optimizer).__name__)}"
    reason = group_reason(cap, options)
    if reason is not None:
        return None, reason
    if torch.compiler.is_compiling():
        return None, "torch.compile is tracing the step"
    if _dispatch_mode_active():
        return None, "a TorchDispatchMode (make_fx, FakeTensorMode, ...) is active: the update must go through the dispatcher"
    module = _kernel_module(cap)
    if module is None:
        return None, _import_errors[cap.module]
    return module, None


def _kernel_step(
    module: Any, params: list[Tensor], state: Any, options: dict, strict: bool, reuse: Reuse | None = None
) -> list[Tensor]:
    """Run the kernel over the parameters it covers; returns those it left to the reference rule."""
    if strict:
        dry = module.gather_(params, state, options, dry_run=True)
        if dry.rest:
            raise RuntimeError(f"FASTOPTIM_BACKEND=numba, but {len(dry.rest)} parameter(s) fall back: {dry.reasons[0]}")
    gathered = module.gather_(params, state, options, reuse=reuse)
    module.run_(gathered, options)
    return gathered.rest


def _reuse_of(optimizer: Any, group: dict[str, Any], module: Any) -> Reuse:
    """The group's :class:`Reuse` (its last kernel table; ``module.REUSE`` if the module names one), kept on the optimizer.

    Keyed by the group's identity; ``_kernel_tables`` is dropped when the
    optimizer is pickled or copied, and replaced groups (``load_state_dict``)
    get fresh entries.
    """
    tables = optimizer.__dict__.get("_kernel_tables")
    if tables is None:
        tables = optimizer.__dict__["_kernel_tables"] = {}
    found = tables.get(id(group))
    if found is None or found[0] is not group:
        if len(tables) > 2 * len(optimizer.param_groups):  # groups replaced: forget the old ones
            live = {id(g) for g in optimizer.param_groups}
            for key in [k for k in tables if k not in live]:
                del tables[key]
        from .cpu._launch import Reuse  # numba is imported on the first kernel step, not with fastoptim

        found = tables[id(group)] = (group, getattr(module, "REUSE", Reuse)())
    return found[1]


def update_group(optimizer: Any, group: dict[str, Any], params: list[Tensor]) -> None:
    """Update ``params`` (all with gradients, all with initialised state) of one group."""
    requested = requested_backend()
    options = optimizer._rule_options(group)
    if requested == REFERENCE:
        run_reference(optimizer, group, params, options)
        return
    module, reason = _group_plan(optimizer, options)
    if module is None:
        if requested == KERNEL:
            raise RuntimeError(f"FASTOPTIM_BACKEND=numba, but {type(optimizer).__name__} falls back: {reason}")
        run_reference(optimizer, group, params, options)
        return
    strict = requested == KERNEL
    # DTensor parameters (FSDP2) run on their local shards where the update is per element.
    view, params, rejected = local_view(params, optimizer.state, capability_of(type(optimizer).rule).per_element)
    if strict and rejected:
        raise RuntimeError(f"FASTOPTIM_BACKEND=numba, but {len(rejected)} parameter(s) fall back: {rejected[0][1]}")
    rest = [p for p, _ in rejected]
    if view is not None:
        left = _kernel_step(module, view.params, view.state, options, strict)
        left_ids = set(map(id, left))
        view.write_back(optimizer.state, [a for a in view.params if id(a) not in left_ids])
        rest += view.original(left)
    if params:
        rest += _kernel_step(module, params, optimizer.state, options, strict, _reuse_of(optimizer, group, module))
    if rest:
        run_reference(optimizer, group, rest, options)


def explain(optimizer: Any) -> list[dict[str, Any]]:
    """Per group: the backend its next step would use, and why parameters fall back.

    Each entry is ``{"backend": "numba" | "reference" | "mixed", "kernel": n,
    "reference": m, "reasons": [...]}``, counting the parameters that have a
    gradient now (all of the group's parameters when none has one).
    """
    requested = requested_backend()
    out = []
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None] or list(group["params"])
        if not hasattr(optimizer, "_rule_options"):
            reason = f"{type(optimizer).__name__} is not an element-wise optimizer"
            out.append({"backend": REFERENCE, "kernel": 0, "reference": len(params), "reasons": [reason]})
            continue
        options = optimizer._rule_options(group)
        if requested == REFERENCE:
            out.append({"backend": REFERENCE, "kernel": 0, "reference": len(params), "reasons": ["backend forced"]})
            continue
        module, reason = _group_plan(optimizer, options)
        if module is None:
            out.append({"backend": REFERENCE, "kernel": 0, "reference": len(params), "reasons": [reason]})
            continue
        view, plain, rejected = local_view(params, optimizer.state, capability_of(type(optimizer).rule).per_element)
        reasons = [reason for _, reason in rejected]
        n_ref = len(rejected)
        subsets = [(plain, optimizer.state)] + ([(view.params, view.state)] if view is not None else [])
        for subset, state in subsets:
            if subset:
                dry = module.gather_(subset, state, options, dry_run=True)
                n_ref += len(dry.rest)
                reasons += dry.reasons
        n_kernel = len(params) - n_ref
        backend = KERNEL if n_ref == 0 else REFERENCE if n_kernel == 0 else "mixed"
        out.append({"backend": backend, "kernel": n_kernel, "reference": n_ref, "reasons": sorted(set(reasons))})
    return out


def backend_for(optimizer: Any, group: int | dict | None = None) -> str:
    """``"numba"``, ``"reference"`` or ``"mixed"``: the backend of one group (index or dict), or of all groups."""
    plans = explain(optimizer)
    if group is not None:
        index = group if isinstance(group, int) else next(i for i, g in enumerate(optimizer.param_groups) if g is group)
        return plans[index]["backend"]
    backends = {p["backend"] for p in plans}
    return backends.pop() if len(backends) == 1 else "mixed"
