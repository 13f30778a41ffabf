"""LAMB on the CPU: :func:`fastoptim.algorithms.lamb.lamb_reference` as two parallel passes in one launch.

The trust ratio needs the norms of the (decayed) weights and of the Adam
update u before any weight moves, so one launch makes two passes over the
group: the first updates the moments and sums θ² and u² per chunk segment;
the sums are added up per tensor, the ratios formed (in the tensor's
precision, as the reference does with 0-dim tensors) and written to the
``weight_norm`` / ``adam_norm`` / ``trust_ratio`` state; the second pass
recomputes u from the stored moments and moves the weights.  The norms are
summed in float64 in the kernel's own order, not torch's, so they -- and
through the ratio, the weights -- agree with the reference rule to rounding.

Both pass bodies follow the reference rule section by section (same
comments); ``rounded`` marks where the reference materialises an intermediate
tensor.  bfloat16 parameters are left to the reference rule (their 0-dim
state is bfloat16, which the scalar columns do not take).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from fastoptim.algorithms._rules import scalar_value

from ._launch import (
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
    set_scalar,
    store,
    tensor_sums,
    zeros,
)

SCALARS = ("weight_norm", "adam_norm", "trust_ratio")
BUFFERS = ("exp_avg", "exp_avg_sq")
_COL = columns(SCALARS, BUFFERS)
WEIGHT_NORM, ADAM_NORM, TRUST_RATIO, EXP_AVG, EXP_AVG_SQ = (_COL[k] for k in (*SCALARS, *BUFFERS))


@numba.njit(inline="always")
def _update(m, v, theta, e, lam, coupled, witness):
    """u ← m · 1/(√v + ε)  (+ λθ: coupled decay), rounded as the reference's tensors are."""
    denom = rounded(rounded(np.sqrt(v), witness) + e, witness)
    u = rounded(rounded(scalar(1.0, witness) / denom, witness) * m, witness)
    if coupled:
        u = rounded(u + lam * theta, witness)
    return u


@kernel
def _lamb_kernel(table, hyper, witness, grain):
    beta1, beta1_grad, beta2, one_minus_beta2, eps = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    decay, weight_decay, neg_step_size, clamp = hyper[5], hyper[6], hyper[7], hyper[8]
    coupled, has_clamp, trust_clip = hyper[9] != 0, hyper[10] != 0, hyper[11] != 0
    adam, maximize = hyper[12] != 0, hyper[13] != 0
    decays = decay != 1.0
    keep = scalar(decay, witness)
    b1, w1 = scalar(beta1, witness), add_scalar(beta1_grad, witness)
    b2, w2 = scalar(beta2, witness), scalar(one_minus_beta2, witness)
    e = add_scalar(eps, witness)
    lam = add_scalar(weight_decay, witness)
    step = add_scalar(neg_step_size, witness)
    zero, one = scalar(0.0, witness), scalar(1.0, witness)
    segments, starts = plan(table, grain)
    partial = zeros(segments.shape[0], 2)
    # pass 1: moments, and Σθ², Σu² per segment
    for c in prange(starts.shape[0] - 1):
        for s in range(starts[c], starts[c + 1]):
            t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
            param = column(table, t, PARAM, lo, n, witness)
            grad = column(table, t, GRAD, lo, n, witness)
            exp_avg = column(table, t, EXP_AVG, lo, n, witness)
            exp_avg_sq = column(table, t, EXP_AVG_SQ, lo, n, witness)
            weights = 0.0
            updates = 0.0
            for i in range(n):
                # g ← −g if maximize
                g = load(grad, i)
                if maximize:
                    g = -g
                # θ ← θ(1 − γλ), or θ(1 − λ) with fixed_decay
                theta = load(param, i)
                if decays:
                    theta = rounded(theta * keep, witness)
                # m ← β₁m + β₃g;  v ← β₂v + (1 − β₂)g²
                m = rounded(rounded(load(exp_avg, i) * b1, witness) + w1 * g, witness)
                store(exp_avg, i, m)
                v = rounded(rounded(load(exp_avg_sq, i) * b2, witness) + w2 * g * g, witness)
                store(exp_avg_sq, i, v)
                u = _update(m, v, theta, e, lam, coupled, witness)
                weights += np.float64(theta) * np.float64(theta)
                updates += np.float64(u) * np.float64(u)
            partial[s, 0] = weights
            partial[s, 1] = updates
    # r ← φ(‖θ‖)/(‖u‖ + ε) per tensor, in the tensor's precision
    count = table.shape[0]
    sums = tensor_sums(partial, segments, count)
    ratios = np.empty(count, np.float64)
    for t in range(count):
        weight_norm = scalar(np.sqrt(sums[t, 0]), witness)
        if has_clamp and weight_norm > scalar(clamp, witness):
            weight_norm = scalar(clamp, witness)
        adam_norm = scalar(np.sqrt(sums[t, 1]), witness)
        ratio = one
        if weight_norm != zero and adam_norm != zero:
            ratio = weight_norm / (adam_norm + scalar(eps, witness))
        if trust_clip and ratio > one:
            ratio = one
        set_scalar(table, t, WEIGHT_NORM, np.float64(weight_norm))
        set_scalar(table, t, ADAM_NORM, np.float64(adam_norm))
        set_scalar(table, t, TRUST_RATIO, np.float64(ratio))
        ratios[t] = one if adam else ratio
    # pass 2: θ ← θ − γ/(1 − β₁ᵗ) · r u
    for c in prange(starts.shape[0] - 1):
        for s in range(starts[c], starts[c + 1]):
            t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
            r = scalar(ratios[t], witness)
            param = column(table, t, PARAM, lo, n, witness)
            exp_avg = column(table, t, EXP_AVG, lo, n, witness)
            exp_avg_sq = column(table, t, EXP_AVG_SQ, lo, n, witness)
            for i in range(n):
                theta = load(param, i)
                if decays:
                    theta = rounded(theta * keep, witness)
                u = _update(load(exp_avg, i), load(exp_avg_sq, i), theta, e, lam, coupled, witness)
                if not adam:
                    u = rounded(u * r, witness)
                store(param, i, theta + step * u)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, scalars=SCALARS, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One LAMB step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr = float(scalar_value(options["lr"]))
    beta1, beta2 = float(options["beta1"]), float(options["beta2"])
    weight_decay = float(options["weight_decay"])
    decoupled = bool(options["weight_decouple"])
    # The reference's Python-float arithmetic, done once per group.
    decay = 1.0 - weight_decay * (1.0 if options["fixed_decay"] else lr) if decoupled and weight_decay != 0.0 else 1.0
    clamp = options["clamp"]
    hyper = (
        beta1,
        1.0 - beta1 if options["grad_averaging"] else 1.0,
        beta2,
        1.0 - beta2,
        float(options["eps"]),
        decay,
        weight_decay,
        -(lr / (1.0 - math.pow(beta1, options["step"]))),
        0.0 if clamp is None else float(clamp),
        not decoupled and weight_decay > 0.0,
        clamp is not None,
        bool(options["trust_clip"]),
        bool(options["adam"]),
        bool(options["maximize"]),
    )
    for batch in gathered.batches.values():
        launch(_lamb_kernel, batch, hyper)
