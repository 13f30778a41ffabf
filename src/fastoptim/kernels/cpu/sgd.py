"""SGD on the CPU: :func:`fastoptim.algorithms.sgd.sgd_reference` as one parallel loop.

The kernel body follows the reference rule section by section (same comments);
``rounded`` marks where the reference materialises an intermediate tensor
(a no-op unless the parameters are bfloat16).
"""

from __future__ import annotations

import torch
from numba import prange

from fastoptim.algorithms._rules import scalar_value

from ._launch import (
    FLAG,
    GRAD,
    PARAM,
    Reuse,
    add_scalar,
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
    vector_width_hint,
    why_not,
)

BUFFERS = ("momentum_buffer",)
MOMENTUM_BUFFER = columns((), BUFFERS)["momentum_buffer"]


@kernel
def _sgd_kernel(table, hyper, witness, grain):
    neg_lr, momentum, one_minus_dampening, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3]
    nesterov, maximize = hyper[4] != 0, hyper[5] != 0
    has_momentum = momentum != 0
    l2 = weight_decay != 0
    step = add_scalar(neg_lr, witness)
    mu = scalar(momentum, witness)  # buf.mul_(μ)
    mu_alpha = add_scalar(momentum, witness)  # grad.add(buf, alpha=μ)
    damp = add_scalar(one_minus_dampening, witness)
    lam = add_scalar(weight_decay, witness)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        vector_width_hint()
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                fresh = table[t, FLAG] != 0  # the buffer was just created: b ← g
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                buf = column(table, t, MOMENTUM_BUFFER if has_momentum else GRAD, lo, n, witness)
                for i in range(n):
                    # g ← −g if maximize;  g ← g + λθ (L2 weight decay)
                    g, theta = signed_gradient(grad, param, i, maximize, l2, lam, witness)
                    if has_momentum:
                        # b ← g on the first step, else b ← μb + (1 − τ)g
                        if fresh:
                            b = g
                        else:
                            b = rounded(load(buf, i) * mu, witness) + damp * g
                        store(buf, i, b)
                        b = rounded(b, witness)
                        # g ← g + μb (nesterov) or b
                        g = rounded(g + mu_alpha * b, witness) if nesterov else b
                    # θ ← θ − γg
                    store(param, i, theta + step * g)
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule.

    With momentum, a parameter without a buffer gets one here (laid out like
    its gradient, as the reference's ``grad.clone()``); the kernel fills it.
    """
    if options["momentum"] == 0:
        return gather(params, state, dry_run=dry_run, reuse=reuse)
    fresh: set[int] = set()
    if not dry_run:
        for p in params:
            entry = state.get(p)
            if (entry is None or entry.get("momentum_buffer") is None) and why_not(p, p.grad, ()) is None:
                buf = torch.empty_like(p.grad, memory_format=torch.preserve_format)
                if entry is None:
                    state[p] = {"momentum_buffer": buf}
                else:
                    entry["momentum_buffer"] = buf
                fresh.add(id(p))
    return gather(params, state, buffers=BUFFERS, flag=lambda p, entry: id(p) in fresh, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One SGD step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    hyper = (
        -float(scalar_value(options["lr"])),
        float(options["momentum"]),
        1 - float(options["dampening"]),
        float(scalar_value(options["weight_decay"])),
        bool(options["nesterov"]),
        bool(options["maximize"]),
    )
    for batch in gathered.batches.values():
        launch(_sgd_kernel, batch, hyper)
