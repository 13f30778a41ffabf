"""RMSprop on the CPU: :func:`fastoptim.algorithms.rmsprop.rmsprop_reference` as one parallel loop.

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
_COL = columns(SCALARS, ("square_avg", "momentum_buffer", "grad_avg"))
STEP, SQUARE_AVG = _COL["step"], _COL["square_avg"]


def _buffers(options: dict) -> tuple[str, ...]:
    buffers = ("square_avg",)
    if options["momentum"] > 0:
        buffers += ("momentum_buffer",)
    if options["centered"]:
        buffers += ("grad_avg",)
    return buffers


@kernel
def _rmsprop_kernel(table, hyper, witness, grain):
    neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    centered, maximize = hyper[6] != 0, hyper[7] != 0
    has_momentum = momentum > 0
    l2 = weight_decay != 0
    bump_steps(table, STEP)  # counted, unused by the update
    step = scalar(neg_lr, witness)  # addcdiv_(value=−γ)
    step_alpha = add_scalar(neg_lr, witness)  # add_(buf, alpha=−γ)
    a = scalar(alpha, witness)
    w = scalar(one_minus_alpha, witness)  # ema weights, in the tensor's precision as torch takes them
    one = scalar(1.0, witness)
    mu = scalar(momentum, witness)
    lam = add_scalar(weight_decay, witness)  # grad.add(param, alpha=λ)
    e = add_scalar(eps, witness)  # .add_(ε)
    # momentum_buffer and grad_avg follow square_avg when present
    buf_col = SQUARE_AVG + 1 if has_momentum else SQUARE_AVG
    avg_col = SQUARE_AVG + 1 + has_momentum if centered else SQUARE_AVG
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
                buf = column(table, t, buf_col, lo, n, witness)
                grad_avg = column(table, t, avg_col, lo, n, witness)
                for i in range(n):
                    # g ← −g if maximize;  g ← g + λθ
                    g, theta = signed_gradient(grad, param, i, maximize, l2, lam, witness)
                    # v ← αv + (1 − α)g²
                    v = rounded(load(square_avg, i) * a, witness)
                    v = rounded(v + w * g * g, witness)
                    store(square_avg, i, v)
                    if centered:
                        # ḡ ← lerp(ḡ, g, 1 − α);  d ← √(v − ḡ²) + ε
                        ga = load(grad_avg, i)
                        ga = lerp(ga, g, w, one)
                        store(grad_avg, i, ga)
                        ga = rounded(ga, witness)
                        avg = rounded(np.sqrt(rounded(v - ga * ga, witness)), witness)
                    else:
                        # d ← √v + ε
                        avg = rounded(np.sqrt(v), witness)
                    avg = rounded(avg + e, witness)
                    if has_momentum:
                        # b ← μb + g/d;  θ ← θ − γb
                        b = rounded(load(buf, i) * mu, witness) + g / avg
                        store(buf, i, b)
                        store(param, i, theta + step_alpha * rounded(b, witness))
                    else:
                        # θ ← θ − γ g/d
                        store(param, i, theta + step * (g / avg))
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, scalars=SCALARS, buffers=_buffers(options), dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One RMSprop step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    alpha = float(options["alpha"])
    hyper = (
        -float(scalar_value(options["lr"])),
        alpha,
        1 - alpha,
        float(options["eps"]),
        float(options["weight_decay"]),
        float(options["momentum"]),
        bool(options["centered"]),
        bool(options["maximize"]),
    )
    for batch in gathered.batches.values():
        launch(_rmsprop_kernel, batch, hyper)
