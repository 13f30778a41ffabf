"""Lion on the CPU: :func:`fastoptim.algorithms.lion.lion_reference` as one parallel loop.

The kernel body follows the reference rule section by section (same comments);
``rounded`` marks where the reference materialises an intermediate tensor
(a no-op unless the parameters are bfloat16).
"""

from __future__ import annotations

from numba import prange

from fastoptim.algorithms._rules import scalar_value

from ._launch import (
    GRAD,
    PARAM,
    Reuse,
    add_scalar,
    column,
    columns,
    decoupled_gradient,
    gather,
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
)

BUFFERS = ("exp_avg",)
EXP_AVG = columns((), BUFFERS)["exp_avg"]


@kernel
def _lion_kernel(table, hyper, witness, grain):
    neg_lr, beta1, one_minus_beta1, beta2, one_minus_beta2 = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    decay, maximize = hyper[5], hyper[6] != 0
    decays = decay != 1.0
    step = add_scalar(neg_lr, witness)
    keep = scalar(decay, witness)
    b1, w1 = scalar(beta1, witness), add_scalar(one_minus_beta1, witness)
    b2, w2 = scalar(beta2, witness), add_scalar(one_minus_beta2, witness)
    one, zero = scalar(1.0, witness), scalar(0.0, witness)
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
                for i in range(n):
                    # g ← −g if maximize;  θ ← θ(1 − γλ)
                    g, theta = decoupled_gradient(grad, param, i, maximize, decays, keep, witness)
                    # c ← sign(β₁m + (1 − β₁)g);  θ ← θ − γc  (torch.sgn: NaN and ±0 give 0)
                    m = load(exp_avg, i)
                    u = rounded(rounded(m * b1, witness) + w1 * g, witness)
                    sign = one if u > zero else (-one if u < zero else zero)
                    store(param, i, theta + step * sign)
                    # m ← β₂m + (1 − β₂)g
                    store(exp_avg, i, rounded(m * b2, witness) + w2 * g)
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One Lion step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr = float(scalar_value(options["lr"]))
    beta1, beta2 = float(options["beta1"]), float(options["beta2"])
    weight_decay = float(options["weight_decay"])
    # The reference's Python-float arithmetic, done once per group.
    decay = 1 - lr * weight_decay if weight_decay != 0 else 1.0
    hyper = (-lr, beta1, 1 - beta1, beta2, 1 - beta2, decay, bool(options["maximize"]))
    for batch in gathered.batches.values():
        launch(_lion_kernel, batch, hyper)
