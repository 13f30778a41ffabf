"""Adan on the CPU: :func:`fastoptim.algorithms.adan.adan_reference` as one parallel loop.

The kernel body follows the reference rule section by section (same comments);
``rounded`` marks where the reference materialises an intermediate tensor
(a no-op unless the parameters are bfloat16).  The bias corrections depend on
the group's step only, so they are computed once per group, in Python.
"""

from __future__ import annotations

import math

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
    lerp,
    load,
    next_task,
    plan,
    rounded,
    scalar,
    store,
    task_counter,
    thread_count,
)

BUFFERS = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad")
_COL = columns((), BUFFERS)
EXP_AVG, EXP_AVG_SQ, EXP_AVG_DIFF, PREVIOUS_GRAD = (_COL[k] for k in BUFFERS)


@kernel
def _adan_kernel(table, hyper, witness, grain):
    one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3 = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    bias_correction3_sqrt, eps, neg_step_size, neg_diff_step_size = hyper[5], hyper[6], hyper[7], hyper[8]
    decay, shrink, maximize = hyper[9], hyper[10], hyper[11] != 0
    one = scalar(1.0, witness)
    w1, b2, w2 = scalar(one_minus_beta1, witness), scalar(beta2, witness), scalar(one_minus_beta2, witness)
    b3, w3 = scalar(beta3, witness), scalar(one_minus_beta3, witness)
    bc3 = scalar(bias_correction3_sqrt, witness)
    e = add_scalar(eps, witness)
    step1, step2 = scalar(neg_step_size, witness), scalar(neg_diff_step_size, witness)
    keep, divisor = scalar(decay, witness), scalar(shrink, witness)
    decays, shrinks = decay != 1.0, shrink != 1.0
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                exp_avg = column(table, t, EXP_AVG, lo, n, witness)
                exp_avg_sq = column(table, t, EXP_AVG_SQ, lo, n, witness)
                exp_avg_diff = column(table, t, EXP_AVG_DIFF, lo, n, witness)
                previous_grad = column(table, t, PREVIOUS_GRAD, lo, n, witness)
                for i in range(n):
                    # g ← −g if maximize
                    g = load(grad, i)
                    if maximize:
                        g = -g
                    # Δ ← g − g_prev  (previous_grad holds −g_prev)
                    diff = rounded(load(previous_grad, i) + g, witness)
                    # m ← lerp(m, g, 1 − β₁);  d ← lerp(d, Δ, 1 − β₂)
                    m = rounded(lerp(load(exp_avg, i), g, w1, one), witness)
                    store(exp_avg, i, m)
                    d = rounded(lerp(load(exp_avg_diff, i), diff, w2, one), witness)
                    store(exp_avg_diff, i, d)
                    # u ← g + β₂Δ;  n ← β₃n + (1 − β₃)u²
                    u = rounded(rounded(diff * b2, witness) + g, witness)
                    v = rounded(rounded(load(exp_avg_sq, i) * b3, witness) + w3 * u * u, witness)
                    store(exp_avg_sq, i, v)
                    # ρ ← √n / √(1 − β₃ᵗ) + ε
                    denom = rounded(rounded(rounded(np.sqrt(v), witness) / bc3, witness) + e, witness)
                    # θ ← θ(1 − γλ) (decoupled), the two momentum steps, then θ ← θ/(1 + γλ) (proximal)
                    theta = load(param, i)
                    if decays:
                        theta = rounded(theta * keep, witness)
                    theta = rounded(theta + step1 * (m / denom), witness)
                    theta = theta + step2 * (d / denom)
                    if shrinks:
                        theta = rounded(theta, witness) / divisor
                    store(param, i, theta)
                    # previous_grad ← −g
                    store(previous_grad, i, -g)
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One Adan step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr = float(scalar_value(options["lr"]))
    beta1, beta2, beta3 = float(options["beta1"]), float(options["beta2"]), float(options["beta3"])
    weight_decay, step = float(options["weight_decay"]), options["step"]
    decoupled = bool(options["weight_decouple"])
    # The reference's Python-float arithmetic, done once per group.
    decay = 1.0 - lr * weight_decay if weight_decay != 0.0 and decoupled else 1.0
    shrink = 1.0 + lr * weight_decay if weight_decay != 0.0 and not decoupled else 1.0
    hyper = (
        1 - beta1,
        beta2,
        1 - beta2,
        beta3,
        1 - beta3,
        math.sqrt(1.0 - math.pow(beta3, step)),
        float(options["eps"]),
        -(lr / (1.0 - math.pow(beta1, step))),
        -(lr * beta2 / (1.0 - math.pow(beta2, step))),
        decay,
        shrink,
        bool(options["maximize"]),
    )
    for batch in gathered.batches.values():
        launch(_adan_kernel, batch, hyper)
