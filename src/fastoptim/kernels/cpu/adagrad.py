"""Adagrad on the CPU: :func:`fastoptim.algorithms.adagrad.adagrad_reference` (dense path) as one parallel loop.

The kernel body follows the reference rule section by section (same comments);
``rounded`` marks where the reference materialises an intermediate tensor
(a no-op unless the parameters are bfloat16).  Sparse gradients take the
reference rule.
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
BUFFERS = ("sum",)
_COL = columns(SCALARS, BUFFERS)
STEP, SUM = _COL["step"], _COL["sum"]


@helper
def _decayed_lrs(steps, lr, lr_decay):
    """Per tensor: ``−γ / (1 + (t−1)η)``, in float64 as the reference computes it."""
    out = np.empty(steps.shape[0], np.float64)
    for t in range(steps.shape[0]):
        out[t] = -(lr / (1 + (steps[t] - 1) * lr_decay))
    return out


@kernel
def _adagrad_kernel(table, hyper, witness, grain):
    lr, lr_decay, weight_decay, eps, maximize = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4] != 0
    l2 = weight_decay != 0
    neg_lrs = _decayed_lrs(bump_steps(table, STEP), lr, lr_decay)
    lam = add_scalar(weight_decay, witness)  # grad.add(param, alpha=λ)
    e = add_scalar(eps, witness)  # .add_(ε)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                neg_decayed_lr = scalar(neg_lrs[t], witness)
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                state_sum = column(table, t, SUM, lo, n, witness)
                for i in range(n):
                    # g ← −g if maximize;  g ← g + λθ
                    g, theta = signed_gradient(grad, param, i, maximize, l2, lam, witness)
                    # s ← s + g²
                    acc = load(state_sum, i) + g * g
                    store(state_sum, i, acc)
                    # θ ← θ − γ/(1 + (t−1)η) · g / (√s + ε)
                    std = rounded(rounded(np.sqrt(rounded(acc, witness)), witness) + e, witness)
                    store(param, i, theta + neg_decayed_lr * (g / std))
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, scalars=SCALARS, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One Adagrad step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    hyper = (
        float(scalar_value(options["lr"])),
        float(options["lr_decay"]),
        float(options["weight_decay"]),
        float(options["eps"]),
        bool(options["maximize"]),
    )
    for batch in gathered.batches.values():
        launch(_adagrad_kernel, batch, hyper)
