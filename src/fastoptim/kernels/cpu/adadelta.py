"""Adadelta on the CPU: :func:`fastoptim.algorithms.adadelta.adadelta_reference` as one parallel loop.

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
    kernel,
    launch,
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
BUFFERS = ("square_avg", "acc_delta")
_COL = columns(SCALARS, BUFFERS)
STEP, SQUARE_AVG, ACC_DELTA = _COL["step"], _COL["square_avg"], _COL["acc_delta"]


@kernel
def _adadelta_kernel(table, hyper, witness, grain):
    neg_lr, rho, one_minus_rho, eps, weight_decay, maximize = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5] != 0
    l2 = weight_decay != 0
    bump_steps(table, STEP)  # counted, unused by the update
    step = add_scalar(neg_lr, witness)
    r = scalar(rho, witness)
    w = scalar(one_minus_rho, witness)
    lam = add_scalar(weight_decay, witness)  # grad.add(param, alpha=λ)
    e = add_scalar(eps, witness)  # .add_(ε)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                square_avg = column(table, t, SQUARE_AVG, lo, n, witness)
                acc_delta = column(table, t, ACC_DELTA, lo, n, witness)
                for i in range(n):
                    # g ← −g if maximize;  g ← g + λθ
                    g, theta = signed_gradient(grad, param, i, maximize, l2, lam, witness)
                    # v ← ρv + (1 − ρ)g²
                    v = rounded(load(square_avg, i) * r, witness)
                    v = rounded(v + w * g * g, witness)
                    store(square_avg, i, v)
                    # Δ ← √(u + ε) / √(v + ε) · g
                    std = rounded(np.sqrt(rounded(v + e, witness)), witness)
                    u = load(acc_delta, i)
                    delta = rounded(np.sqrt(rounded(u + e, witness)), witness)
                    delta = rounded(rounded(delta / std, witness) * g, witness)
                    # u ← ρu + (1 − ρ)Δ²
                    u = rounded(u * r, witness)
                    store(acc_delta, i, u + w * delta * delta)
                    # θ ← θ − γΔ
                    store(param, i, theta + step * delta)
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, scalars=SCALARS, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One Adadelta step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    rho = float(options["rho"])
    hyper = (
        -float(scalar_value(options["lr"])),
        rho,
        1 - rho,
        float(options["eps"]),
        float(options["weight_decay"]),
        bool(options["maximize"]),
    )
    for batch in gathered.batches.values():
        launch(_adadelta_kernel, batch, hyper)
