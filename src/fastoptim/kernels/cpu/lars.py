"""LARS on the CPU: :func:`fastoptim.algorithms.lars.lars_reference` as two parallel passes in one launch.

The trust ratio of a matrix needs two norms of the whole tensor before any
element moves, so one launch makes two passes over the group: the first sums
θ² and g² per chunk segment of every matrix (a row's FLAG is 1 for a matrix,
0 for a vector or 0-dim parameter, which gets neither weight decay nor a
ratio); the sums are added up per tensor and the ratios formed with the
reference's formula (:func:`fastoptim.algorithms.lars.lars_ratio_from_norms`)
in the tensor's precision; the second pass moves the weights.  The norms are
summed in float64 in the kernel's own order, not torch's, so they -- and
through the ratio, the weights -- agree with the reference rule to rounding.
(torch's own ``vector_norm`` runs at about half the memory bandwidth here:
two of them made a LARS step 25 % slower than the update itself.)

Both pass bodies follow the reference rule section by section (same
comments); ``rounded`` marks where the reference materialises an intermediate
tensor (a no-op unless the parameters are bfloat16).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastoptim.algorithms._rules import scalar_value

from ._launch import (
    FLAG,
    GRAD,
    PARAM,
    Reuse,
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
    tensor_sums,
    zeros,
)

BUFFERS = ("momentum_buffer",)
MOMENTUM_BUFFER = columns((), BUFFERS)["momentum_buffer"]


@numba.njit(inline="always")
def _ratio(weight_sq, grad_sq, weight_decay, trust_coefficient, witness):
    """r = η‖θ‖ / (‖g‖ + λ‖θ‖), or 1 unless ‖θ‖ > 0 and the denominator > 0 (NaN gives 1, as in the reference)."""
    one = scalar(1.0, witness)
    weight_norm = rounded(scalar(np.sqrt(weight_sq), witness), witness)
    grad_norm = rounded(scalar(np.sqrt(grad_sq), witness), witness)
    denominator = rounded(grad_norm + rounded(scalar(weight_decay, witness) * weight_norm, witness), witness)
    if weight_norm > 0.0 and denominator > 0.0:
        return rounded(rounded(scalar(trust_coefficient, witness) * weight_norm, witness) / denominator, witness)
    return one


@kernel
def _lars_kernel(table, hyper, witness, grain):
    neg_lr, weight_decay, momentum, one_minus_dampening = hyper[0], hyper[1], hyper[2], hyper[3]
    nesterov, maximize, trust_coefficient = hyper[4] != 0, hyper[5] != 0, hyper[6]
    has_momentum = momentum > 0.0
    step = add_scalar(neg_lr, witness)
    lam = add_scalar(weight_decay, witness)
    mu = scalar(momentum, witness)
    mu_alpha = rounded(mu, witness)
    damp = add_scalar(one_minus_dampening, witness)
    segments, starts = plan(table, grain)
    # pass 1: Σθ², Σg² per segment of every matrix (‖−g‖ = ‖g‖: maximize needs no sign)
    partial = zeros(segments.shape[0], 2)
    for c in prange(starts.shape[0] - 1):
        for s in range(starts[c], starts[c + 1]):
            t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
            if table[t, FLAG] == 0:
                continue
            param = column(table, t, PARAM, lo, n, witness)
            grad = column(table, t, GRAD, lo, n, witness)
            weights = 0.0
            grads = 0.0
            for i in range(n):
                theta = np.float64(load(param, i))
                g = np.float64(load(grad, i))
                weights += theta * theta
                grads += g * g
            partial[s, 0] = weights
            partial[s, 1] = grads
    # r per matrix, in the tensor's precision
    count = table.shape[0]
    sums = tensor_sums(partial, segments, count)
    ratios = np.empty(count, np.float64)
    for t in range(count):
        ratios[t] = 1.0
        if table[t, FLAG] != 0:
            ratios[t] = np.float64(_ratio(sums[t, 0], sums[t, 1], weight_decay, trust_coefficient, witness))
    # pass 2: the update
    for c in prange(starts.shape[0] - 1):
        for s in range(starts[c], starts[c + 1]):
            t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
            matrix = table[t, FLAG] != 0
            ratio = scalar(ratios[t], witness)
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


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters (kernel batches, and the ``rest`` left to the reference rule); FLAG marks matrices."""
    buffers = BUFFERS if options["momentum"] > 0.0 else ()
    return gather(params, state, buffers=buffers, flag=lambda p, entry: int(p.dim() > 1), dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One LARS step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    hyper = (
        -float(scalar_value(options["lr"])),
        float(options["weight_decay"]),
        float(options["momentum"]),
        1.0 - float(options["dampening"]),
        bool(options["nesterov"]),
        bool(options["maximize"]),
        float(options["trust_coefficient"]),
    )
    for batch in gathered.batches.values():
        launch(_lars_kernel, batch, hyper)
