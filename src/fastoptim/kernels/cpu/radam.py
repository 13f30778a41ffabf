"""RAdam on the CPU: :func:`fastoptim.algorithms.radam.radam_reference` as one parallel loop.

The kernel body follows the reference rule section by section (same comments);
``rounded`` marks where the reference materialises an intermediate tensor
(a no-op unless the parameters are bfloat16).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fastoptim.algorithms._rules import scalar_value

from ._adam_moments import adam_moments
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
    next_task,
    plan,
    rounded,
    scalar,
    store,
    task_counter,
    thread_count,
)

SCALARS = ("step",)
BUFFERS = ("exp_avg", "exp_avg_sq")
_COL = columns(SCALARS, BUFFERS)
STEP, EXP_AVG, EXP_AVG_SQ = _COL["step"], _COL["exp_avg"], _COL["exp_avg_sq"]


@helper
def _rectification(steps, beta1, beta2):
    """Per tensor, in float64 as the reference computes them: ``1−β₁ᵗ``, ``√(1−β₂ᵗ)``, r_t, and ρ_t > 5."""
    out = np.empty((steps.shape[0], 4), np.float64)
    rho_inf = 2 / (1 - beta2) - 1
    for t in range(steps.shape[0]):
        step = steps[t]
        bias_correction2 = 1 - beta2**step
        rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
        out[t, 0] = 1 - beta1**step
        out[t, 1] = bias_correction2**0.5
        out[t, 3] = rho_t > 5.0
        if rho_t > 5.0:
            out[t, 2] = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        else:
            out[t, 2] = 0.0
    return out


@kernel
def _radam_kernel(table, hyper, witness, grain):
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2 = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    eps, weight_decay, decay = hyper[5], hyper[6], hyper[7]
    maximize, decoupled = hyper[8] != 0, hyper[9] != 0
    l2 = weight_decay != 0 and not decoupled
    per = _rectification(bump_steps(table, STEP), beta1, beta2)
    one = scalar(1.0, witness)
    gamma = scalar(lr, witness)
    lam = add_scalar(weight_decay, witness)  # grad.add(param, alpha=λ)
    keep = scalar(decay, witness)
    w1 = scalar(one_minus_beta1, witness)
    b2 = scalar(beta2, witness)
    w2 = scalar(one_minus_beta2, witness)
    e = add_scalar(eps, witness)  # .add_(ε)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                bias_correction1 = scalar(per[t, 0], witness)
                bias_correction2_sqrt = scalar(per[t, 1], witness)
                rect = scalar(per[t, 2], witness)
                rectified = per[t, 3] != 0
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                exp_avg = column(table, t, EXP_AVG, lo, n, witness)
                exp_avg_sq = column(table, t, EXP_AVG_SQ, lo, n, witness)
                for i in range(n):
                    # g ← ±g (+ λθ) or θ ← θ(1 − γλ);  m ← lerp(m, g, 1 − β₁);  v ← β₂v + (1 − β₂)g²
                    g, theta, m, v = adam_moments(
                        grad, param, exp_avg, exp_avg_sq, i, maximize, decoupled, l2, keep, lam, w1, one, b2, w2, witness
                    )
                    # m̂ ← m / (1 − β₁ᵗ)
                    update = rounded(rounded(rounded(m, witness) / bias_correction1, witness) * gamma, witness)
                    if rectified:
                        # θ ← θ − γ m̂ · √(1−β₂ᵗ)/(√v + ε) · r_t   (ρ_t > 5; number / tensor is
                        # reciprocal() * number in torch, two roundings)
                        root = rounded(rounded(np.sqrt(v), witness) + e, witness)
                        adaptive = rounded(rounded(one / root, witness) * bias_correction2_sqrt, witness)
                        update = rounded(rounded(update * adaptive, witness) * rect, witness)
                    # θ ← θ − γ m̂ otherwise
                    store(param, i, theta - update)
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, scalars=SCALARS, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One RAdam step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr = float(scalar_value(options["lr"]))
    beta1, beta2 = float(options["beta1"]), float(options["beta2"])
    weight_decay = float(options["weight_decay"])
    decoupled = bool(options["decoupled_weight_decay"])
    decay = 1 - lr * weight_decay if decoupled and weight_decay != 0 else 1.0
    hyper = (lr, beta1, 1 - beta1, beta2, 1 - beta2, float(options["eps"]), weight_decay, decay)
    hyper += (bool(options["maximize"]), decoupled)
    for batch in gathered.batches.values():
        launch(_radam_kernel, batch, hyper)
