"""Adamax on the CPU: :func:`fastoptim.algorithms.adamax.adamax_reference` as one parallel loop.

The kernel body follows the reference rule section by section (same comments);
``rounded`` marks where the reference materialises an intermediate tensor
(a no-op unless the parameters are bfloat16).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fastoptim.algorithms._rules import scalar_value

from ._launch import (
    GRAD,
    PARAM,
    Reuse,
    add_scalar,
    bump_steps,
    column,
    columns,
    gather,
    helper,
    kernel,
    launch,
    lerp,
    load,
    next_task,
    plan,
    rounded,
    scalar,
    signed_gradient,
    store,
    task_counter,
    thread_count,
)

SCALARS = ("step",)
BUFFERS = ("exp_avg", "exp_inf")
_COL = columns(SCALARS, BUFFERS)
STEP, EXP_AVG, EXP_INF = _COL["step"], _COL["exp_avg"], _COL["exp_inf"]


@helper
def _neg_step_sizes(steps, lr, beta1):
    """Per tensor: ``−γ/(1−β₁ᵗ)``, in float64 as the reference computes it."""
    out = np.empty(steps.shape[0], np.float64)
    for t in range(steps.shape[0]):
        out[t] = -(lr / (1 - beta1 ** steps[t]))
    return out


@kernel
def _adamax_kernel(table, hyper, witness, grain):
    lr, beta1, one_minus_beta1, beta2, eps, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    maximize = hyper[6] != 0
    l2 = weight_decay != 0
    sizes = _neg_step_sizes(bump_steps(table, STEP), lr, beta1)
    one = scalar(1.0, witness)
    w1 = scalar(one_minus_beta1, witness)
    b2 = scalar(beta2, witness)
    lam = add_scalar(weight_decay, witness)  # grad.add(param, alpha=λ)
    e = add_scalar(eps, witness)  # .add_(ε)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                neg_step_size = scalar(sizes[t], witness)
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                exp_avg = column(table, t, EXP_AVG, lo, n, witness)
                exp_inf = column(table, t, EXP_INF, lo, n, witness)
                for i in range(n):
                    # g ← −g if maximize;  g ← g + λθ
                    g, theta = signed_gradient(grad, param, i, maximize, l2, lam, witness)
                    # m ← lerp(m, g, 1 − β₁)
                    m = load(exp_avg, i)
                    m = lerp(m, g, w1, one)
                    store(exp_avg, i, m)
                    m = rounded(m, witness)
                    # u ← max(β₂u, |g| + ε)  (NaN wins, as torch.maximum)
                    decayed = rounded(load(exp_inf, i) * b2, witness)
                    floor = rounded(abs(g) + e, witness)
                    u = decayed if decayed > floor or decayed != decayed else floor
                    store(exp_inf, i, u)
                    u = rounded(u, witness)
                    # θ ← θ − γ/(1−β₁ᵗ) · m/u
                    store(param, i, theta + neg_step_size * (m / u))
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, scalars=SCALARS, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One Adamax step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    beta1 = float(options["beta1"])
    hyper = (
        float(scalar_value(options["lr"])),
        beta1,
        1 - beta1,
        float(options["beta2"]),
        float(options["eps"]),
        float(options["weight_decay"]),
        bool(options["maximize"]),
    )
    for batch in gathered.batches.values():
        launch(_adamax_kernel, batch, hyper)
