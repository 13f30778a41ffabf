"""Schedule-Free AdamW and SGD on the CPU: :func:`fastoptim.algorithms.schedule_free.adamw_schedule_free_reference`
and :func:`~fastoptim.algorithms.schedule_free.sgd_schedule_free_reference` as one parallel loop.

The two rules share their last three lines (y and z move with the normalised
gradient ĝ), so one kernel serves both: AdamW first updates its second moment
and divides the gradient by the denominator, SGD takes the gradient as it is.
The kernel body follows the reference rules section by section (same
comments); ``rounded`` marks where they materialise an intermediate tensor (a
no-op unless the parameters are bfloat16).  γₜ, c and the bias correction are
the group's, computed once per group in Python.
"""

from __future__ import annotations

import numpy as np
from numba import prange

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

_COL = columns((), ("z", "exp_avg_sq"))
Z, EXP_AVG_SQ = _COL["z"], _COL["exp_avg_sq"]


@kernel
def _schedule_free_kernel(table, hyper, witness, grain):
    lr, ckp1, y_step, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3]
    adaptive, beta2, one_minus_beta2, bias_correction2, eps = hyper[4] != 0, hyper[5], hyper[6], hyper[7], hyper[8]
    one = scalar(1.0, witness)
    lam = add_scalar(weight_decay, witness)
    decays = weight_decay != 0
    c = scalar(ckp1, witness)
    a_y = add_scalar(y_step, witness)
    a_z = add_scalar(lr, witness)
    b2, w2 = scalar(beta2, witness), scalar(one_minus_beta2, witness)
    bc2 = scalar(bias_correction2, witness)
    e = add_scalar(eps, witness)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        ch = next_task(tasks)
        while ch < starts.shape[0] - 1:
            for s in range(starts[ch], starts[ch + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                z_col = column(table, t, Z, lo, n, witness)
                exp_avg_sq = column(table, t, EXP_AVG_SQ if adaptive else Z, lo, n, witness)
                for i in range(n):
                    g = load(grad, i)
                    y = load(param, i)
                    if adaptive:
                        # v ← β₂v + (1 − β₂)g²;  ĝ ← g / (√(v/(1 − β₂ᵏ)) + ε)
                        v = rounded(rounded(load(exp_avg_sq, i) * b2, witness) + w2 * g * g, witness)
                        store(exp_avg_sq, i, v)
                        denom = rounded(rounded(np.sqrt(rounded(v / bc2, witness)), witness) + e, witness)
                        g = rounded(g / denom, witness)
                    # ĝ ← ĝ + λy
                    if decays:
                        g = rounded(g + lam * y, witness)
                    # y ← lerp(y, z, c) + γ(β(1 − c) − 1)ĝ;  z ← z − γĝ
                    z = load(z_col, i)
                    y = rounded(lerp(y, z, c, one), witness)
                    store(param, i, y + a_y * g)
                    store(z_col, i, z - a_z * g)
            ch = next_task(tasks)


def _is_adamw(options: dict) -> bool:
    return "beta2" in options


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    buffers = ("z", "exp_avg_sq") if _is_adamw(options) else ("z",)
    return gather(params, state, buffers=buffers, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One Schedule-Free step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr, ckp1 = float(options["lr"]), float(options["ckp1"])
    if _is_adamw(options):
        beta, beta2 = float(options["beta1"]), float(options["beta2"])
        adaptive = (True, beta2, 1 - beta2, 1 - beta2 ** options["step"], float(options["eps"]))
    else:
        beta = float(options["momentum"])
        adaptive = (False, 0.0, 0.0, 1.0, 0.0)
    # The reference's Python-float arithmetic, done once per group.
    hyper = (lr, ckp1, lr * (beta * (1 - ckp1) - 1), float(options["weight_decay"]), *adaptive)
    for batch in gathered.batches.values():
        launch(_schedule_free_kernel, batch, hyper)
