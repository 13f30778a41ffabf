"""NAdam on the CPU: :func:`fastoptim.algorithms.nadam.nadam_reference` as one parallel loop.

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
    get_scalar,
    helper,
    in_scalar_dtype,
    kernel,
    launch,
    next_task,
    plan,
    rounded,
    scalar,
    set_scalar,
    store,
    task_counter,
    thread_count,
)

SCALARS = ("step", "mu_product")
BUFFERS = ("exp_avg", "exp_avg_sq")
_COL = columns(SCALARS, BUFFERS)
STEP, MU_PRODUCT, EXP_AVG, EXP_AVG_SQ = (_COL[k] for k in (*SCALARS, *BUFFERS))


@helper
def _momentum_scalars(table, steps, lr, beta1, beta2, momentum_decay):
    """Per tensor, in float64 as the reference computes them: ``1−β₂ᵗ`` and the two addcdiv factors.

    Also ``P ← P·μ_t`` in place, in the dtype of the ``mu_product`` tensor.
    """
    out = np.empty((steps.shape[0], 3), np.float64)
    for t in range(steps.shape[0]):
        step = steps[t]
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
        product = in_scalar_dtype(table, t, MU_PRODUCT, get_scalar(table, t, MU_PRODUCT) * in_scalar_dtype(table, t, MU_PRODUCT, mu))
        set_scalar(table, t, MU_PRODUCT, product)
        out[t, 0] = 1 - beta2**step
        out[t, 1] = -lr * (1.0 - mu) / (1.0 - product)
        out[t, 2] = (-lr * mu_next) / (1.0 - product * mu_next)
    return out


@kernel
def _nadam_kernel(table, hyper, witness, grain):
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2 = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    eps, weight_decay, decay, momentum_decay = hyper[5], hyper[6], hyper[7], hyper[8]
    maximize, decoupled = hyper[9] != 0, hyper[10] != 0
    l2 = weight_decay != 0 and not decoupled
    per = _momentum_scalars(table, bump_steps(table, STEP), lr, beta1, beta2, momentum_decay)
    one = scalar(1.0, witness)
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
                bias_correction2 = scalar(per[t, 0], witness)
                grad_factor = scalar(per[t, 1], witness)
                momentum_factor = scalar(per[t, 2], witness)
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                exp_avg = column(table, t, EXP_AVG, lo, n, witness)
                exp_avg_sq = column(table, t, EXP_AVG_SQ, lo, n, witness)
                for i in range(n):
                    # g ← ±g (+ λθ) or θ ← θ(1 − γλ);  m ← lerp(m, g, 1 − β₁);  v ← β₂v + (1 − β₂)g²
                    g, theta, m, v = adam_moments(
                        grad, param, exp_avg, exp_avg_sq, i, maximize, decoupled, l2, keep, lam, w1, one, b2, w2, witness
                    )
                    # d ← √(v / (1 − β₂ᵗ)) + ε
                    denom = rounded(rounded(np.sqrt(rounded(v / bias_correction2, witness)), witness) + e, witness)
                    # θ ← θ − γ(1−μ_t)/(1−P_t) · g/d, then θ ← θ − γμ_{t+1}/(1−P_tμ_{t+1}) · m/d
                    theta = rounded(theta + grad_factor * (g / denom), witness)
                    store(param, i, theta + momentum_factor * (m / denom))
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, scalars=SCALARS, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One NAdam step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr = float(scalar_value(options["lr"]))
    beta1, beta2 = float(options["beta1"]), float(options["beta2"])
    weight_decay = float(options["weight_decay"])
    decoupled = bool(options["decoupled_weight_decay"])
    decay = 1 - lr * weight_decay if decoupled and weight_decay != 0 else 1.0
    hyper = (lr, beta1, 1 - beta1, beta2, 1 - beta2, float(options["eps"]), weight_decay, decay)
    hyper += (float(options["momentum_decay"]), bool(options["maximize"]), decoupled)
    for batch in gathered.batches.values():
        launch(_nadam_kernel, batch, hyper)
