"""LARS on the CPU: :func:`fastoptim.algorithms.lars.lars_reference` as one parallel loop.

The trust ratio of a matrix needs two norms of the whole tensor before any
element moves.  They are computed by torch while the parameters are gathered,
with the reference rule's own formula (:func:`fastoptim.algorithms.lars.lars_ratio_from_norms`),
so the ratios are the reference's bit for bit; each row of the table
carries its ratio in the FLAG column (a float64's bits; ``-0.0``, which no
ratio can be, marks a vector or 0-dim parameter: no weight decay, no ratio).
The kernel body then follows the reference rule section by section (same
comments); ``rounded`` marks where the reference materialises an intermediate
tensor (a no-op unless the parameters are bfloat16).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from fastoptim.algorithms._rules import scalar_value
from fastoptim.algorithms.lars import lars_ratio_from_norms

from ._launch import (
    FLAG,
    GRAD,
    PARAM,
    STORAGE,
    add_scalar,
    column,
    columns,
    gather,
    kernel,
    launch,
    load,
    plan,
    rounded,
    scalar,
    store,
)

BUFFERS = ("momentum_buffer",)
MOMENTUM_BUFFER = columns((), BUFFERS)["momentum_buffer"]
#: FLAG of a parameter without a trust ratio: the bits of -0.0
NO_RATIO = np.int64(np.float64(-0.0).view(np.int64))


@numba.njit(inline="always")
def _ratio(table, t):
    """The trust ratio a row carries in its FLAG column (a float64's bits)."""
    return table[t].view(np.float64)[FLAG]


@kernel
def _lars_kernel(table, hyper, witness, grain):
    neg_lr, weight_decay, momentum, one_minus_dampening = hyper[0], hyper[1], hyper[2], hyper[3]
    nesterov, maximize = hyper[4] != 0, hyper[5] != 0
    has_momentum = momentum > 0.0
    step = add_scalar(neg_lr, witness)
    lam = add_scalar(weight_decay, witness)
    mu = scalar(momentum, witness)
    mu_alpha = rounded(mu, witness)
    damp = add_scalar(one_minus_dampening, witness)
    segments, starts = plan(table, grain)
    for c in prange(starts.shape[0] - 1):
        for s in range(starts[c], starts[c + 1]):
            t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
            matrix = table[t, FLAG] != NO_RATIO
            ratio = scalar(_ratio(table, t), witness)
            param = column(table, t, PARAM, lo, n, witness)
            grad = column(table, t, GRAD, lo, n, witness)
            buf = column(table, t, MOMENTUM_BUFFER if has_momentum else GRAD, lo, n, witness)
            for i in range(n):
                # g ← −g if maximize
                g = load(grad, i)
                if maximize:
                    g = -g
                theta = load(param, i)
                if matrix:
                    # g ← r(g + λθ)
                    g = rounded(rounded(g + lam * theta, witness) * ratio, witness)
                if has_momentum:
                    # b ← μb + (1 − τ)g;  g ← g + μb (nesterov) or b
                    b = rounded(rounded(load(buf, i) * mu, witness) + damp * g, witness)
                    store(buf, i, b)
                    g = rounded(g + mu_alpha * b, witness) if nesterov else b
                # θ ← θ − γg
                store(param, i, theta + step * g)


def _ratios(params, options: dict) -> dict[int, float]:
    """The trust ratios of the matrices with a dense gradient of their dtype, by ``id``, from stacked norms.

    ``torch._foreach_norm`` gives each tensor's ``vector_norm`` bit for bit, and the ratio is
    element-wise: the reference rule's ratios, with a few torch calls per dtype instead of per tensor.
    (The norm of −g is the norm of g, so maximize needs no negation.)
    """
    by_dtype: dict[torch.dtype, list] = {}
    for p in params:
        g = p.grad
        dense = g is not None and g.layout is torch.strided and g.dtype is p.dtype
        if p.dim() > 1 and p.is_cpu and p.dtype in STORAGE and dense:
            by_dtype.setdefault(p.dtype, []).append(p)
    out: dict[int, float] = {}
    for group in by_dtype.values():
        param_norms = torch.stack(torch._foreach_norm(group))
        grad_norms = torch.stack(torch._foreach_norm([p.grad for p in group]))
        ratios = lars_ratio_from_norms(param_norms, grad_norms, options["weight_decay"], options["trust_coefficient"])
        out.update(zip(map(id, group), ratios.tolist()))
    return out


def gather_(params, state, options: dict, dry_run: bool = False):
    """Sort the parameters (kernel batches, and the ``rest`` left to the reference rule); matrices get their ratio."""
    buffers = BUFFERS if options["momentum"] > 0.0 else ()
    if dry_run:
        return gather(params, state, buffers=buffers, dry_run=True)
    ratios = _ratios(params, options)

    def flag(p, entry):
        if p.dim() <= 1:
            return NO_RATIO
        return np.float64(ratios[id(p)]).view(np.int64)

    return gather(params, state, buffers=buffers, flag=flag)


def run_(gathered, options: dict) -> None:
    """One LARS step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    hyper = (
        -float(scalar_value(options["lr"])),
        float(options["weight_decay"]),
        float(options["momentum"]),
        1.0 - float(options["dampening"]),
        bool(options["nesterov"]),
        bool(options["maximize"]),
    )
    for batch in gathered.batches.values():
        launch(_lars_kernel, batch, hyper)
