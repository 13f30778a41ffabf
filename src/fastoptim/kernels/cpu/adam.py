"""Adam / AdamW on the CPU: :func:`fastoptim.algorithms.adam.adam_reference` as one parallel loop.

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
    load,
    next_task,
    plan,
    rounded,
    scalar,
    store,
    task_counter,
    thread_count,
    vector_width_hint,
)

SCALARS = ("step",)
BUFFERS = ("exp_avg", "exp_avg_sq")
AMSGRAD_BUFFERS = (*BUFFERS, "max_exp_avg_sq")
_COL = columns(SCALARS, AMSGRAD_BUFFERS)
STEP, EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ = (_COL[k] for k in ("step", *AMSGRAD_BUFFERS))


@helper
def _step_sizes(steps, lr, beta1, beta2):
    """Per tensor: ``γ/(1−β₁ᵗ)`` and ``√(1−β₂ᵗ)``, in float64 as the reference computes them."""
    out = np.empty((steps.shape[0], 2), np.float64)
    for t in range(steps.shape[0]):
        step = steps[t]
        out[t, 0] = lr / (1 - beta1**step)
        out[t, 1] = (1 - beta2**step) ** 0.5
    return out


@kernel
def _adam_kernel(table, hyper, witness, grain):
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2 = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    eps, weight_decay, decay = hyper[5], hyper[6], hyper[7]
    amsgrad, maximize, decoupled = hyper[8] != 0, hyper[9] != 0, hyper[10] != 0
    l2 = weight_decay != 0 and not decoupled
    sizes = _step_sizes(bump_steps(table, STEP), lr, beta1, beta2)
    one = scalar(1.0, witness)
    lam = add_scalar(weight_decay, witness)  # grad.add(param, alpha=λ)
    keep = scalar(decay, witness)
    w1 = scalar(one_minus_beta1, witness)  # lerp weight, in the tensor's precision as lerp_ takes it
    b2 = scalar(beta2, witness)
    w2 = scalar(one_minus_beta2, witness)
    e = add_scalar(eps, witness)  # .add_(ε)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        vector_width_hint()
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                neg_step_size = scalar(-sizes[t, 0], witness)
                bias_correction2_sqrt = scalar(sizes[t, 1], witness)
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                exp_avg = column(table, t, EXP_AVG, lo, n, witness)
                exp_avg_sq = column(table, t, EXP_AVG_SQ, lo, n, witness)
                max_exp_avg_sq = column(table, t, MAX_EXP_AVG_SQ if amsgrad else EXP_AVG_SQ, lo, n, witness)
                for i in range(n):
                    # g ← ±g (+ λθ) or θ ← θ(1 − γλ);  m ← lerp(m, g, 1 − β₁);  v ← β₂v + (1 − β₂)g²
                    g, theta, m, v = adam_moments(
                        grad, param, exp_avg, exp_avg_sq, i, maximize, decoupled, l2, keep, lam, w1, one, b2, w2, witness
                    )
                    # v̂ ← max(v̂, v) (amsgrad; NaN wins, as torch.maximum)
                    if amsgrad:
                        vmax = load(max_exp_avg_sq, i)
                        if v > vmax or v != v:
                            vmax = v
                        store(max_exp_avg_sq, i, vmax)
                        v = vmax
                    # θ ← θ − γ/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)
                    denom = rounded(rounded(rounded(np.sqrt(v), witness) / bias_correction2_sqrt, witness) + e, witness)
                    store(param, i, theta + neg_step_size * (m / denom))
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    buffers = AMSGRAD_BUFFERS if options["amsgrad"] else BUFFERS
    return gather(params, state, scalars=SCALARS, buffers=buffers, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One Adam step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr = float(scalar_value(options["lr"]))
    beta1, beta2 = float(options["beta1"]), float(options["beta2"])
    weight_decay = float(options["weight_decay"])
    decoupled = bool(options["decoupled_weight_decay"])
    # The reference's Python-float arithmetic, done once per group.
    decay = 1 - lr * weight_decay if decoupled and weight_decay != 0 else 1.0
    hyper = (lr, beta1, 1 - beta1, beta2, 1 - beta2, float(options["eps"]), weight_decay, decay)
    hyper += (bool(options["amsgrad"]), bool(options["maximize"]), decoupled)
    for batch in gathered.batches.values():
        launch(_adam_kernel, batch, hyper)
