"""ASGD on the CPU: :func:`fastoptim.algorithms.asgd.asgd_reference` as one parallel loop.

The kernel body follows the reference rule section by section (same comments);
``rounded`` marks where the reference materialises an intermediate tensor
(a no-op unless the parameters are bfloat16).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import prange

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
    load,
    next_task,
    plan,
    rounded,
    scalar,
    set_scalar,
    signed_gradient,
    store,
    store_fence,
    stream_copy,
    task_counter,
    thread_count,
    vector_width_hint,
)

SCALARS = ("step", "eta", "mu")
BUFFERS = ("ax",)
_COL = columns(SCALARS, BUFFERS)
STEP, ETA, MU, AX = (_COL[k] for k in (*SCALARS, *BUFFERS))
#: elements updated before their block of the average is copied (4 KiB of float32: still in L1).
#: Against 4096, with the arrays viewed once per segment and sliced per block (as now), a step on
#: one 8192² tensor took 0.87-0.93x the time, at both memory speeds (docs/kernels.md)
BLOCK = 1024


@helper
def _schedule(table, steps, lr, lambd, alpha, t0, default_f32):
    """Per tensor: this step's ``1 − λη``, ``−η``, ``μ`` and whether averaging has started (μ ≠ 1).

    Then η and μ are advanced in place, as the reference does after the
    update: through a tensor of the default dtype (``torch.as_tensor``), then
    into the state tensor's dtype.
    """
    out = np.empty((steps.shape[0], 4), np.float64)
    for t in range(steps.shape[0]):
        step = steps[t]
        eta = get_scalar(table, t, ETA)
        mu = get_scalar(table, t, MU)
        out[t, 0] = 1 - lambd * eta
        out[t, 1] = -eta
        out[t, 2] = mu
        out[t, 3] = mu != 1
        new_eta = lr / ((1 + lambd * lr * step) ** alpha)
        new_mu = 1 / max(1.0, step - t0)
        if default_f32:
            new_eta = np.float64(np.float32(new_eta))
            new_mu = np.float64(np.float32(new_mu))
        set_scalar(table, t, ETA, in_scalar_dtype(table, t, ETA, new_eta))
        set_scalar(table, t, MU, in_scalar_dtype(table, t, MU, new_mu))
    return out


@kernel
def _asgd_kernel(table, hyper, witness, grain):
    lr, lambd, alpha, t0, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    maximize, default_f32 = hyper[5] != 0, hyper[6] != 0
    l2 = weight_decay != 0
    per = _schedule(table, bump_steps(table, STEP), lr, lambd, alpha, t0, default_f32)
    lam = add_scalar(weight_decay, witness)  # grad.add(param, alpha=λ)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        vector_width_hint()
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                shrink = scalar(per[t, 0], witness)
                neg_eta = add_scalar(per[t, 1], witness)  # param.add_(grad, alpha=−η)
                mu = scalar(per[t, 2], witness)
                averaging = per[t, 3] != 0
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                ax = column(table, t, AX, lo, n, witness)
                # Before averaging starts the average only copies θ: that buffer is
                # written, never read, so it is streamed a block at a time.
                for b in range(0, n, BLOCK):
                    m = min(BLOCK, n - b)
                    param_b, grad_b, ax_b = param[b : b + m], grad[b : b + m], ax[b : b + m]
                    for i in range(m):
                        # g ← −g if maximize;  g ← g + λ_wd θ
                        g, theta = signed_gradient(grad_b, param_b, i, maximize, l2, lam, witness)
                        # θ ← θ(1 − λη) − ηg
                        theta = rounded(theta * shrink, witness)
                        theta = theta + neg_eta * g
                        store(param_b, i, theta)
                        # a ← a + μ(θ − a) once averaging has started (μ ≠ 1)
                        if averaging:
                            a = load(ax_b, i)
                            store(ax_b, i, a + rounded(rounded(rounded(theta, witness) - a, witness) * mu, witness))
                    # a ← θ before (μ = 1)
                    if not averaging:
                        stream_copy(ax_b, param_b)
            store_fence()
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    if torch.get_default_dtype() not in (torch.float32, torch.float64):
        # the new η and μ pass through a tensor of the default dtype (see the reference)
        out = gather((), state)
        out.rest, out.reasons = list(params), ["default dtype is neither float32 nor float64"]
        return out
    return gather(params, state, scalars=SCALARS, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One ASGD step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    hyper = (
        float(options["lr"]),
        float(options["lambd"]),
        float(options["alpha"]),
        float(options["t0"]),
        float(options["weight_decay"]),
        bool(options["maximize"]),
        torch.get_default_dtype() == torch.float32,
    )
    for batch in gathered.batches.values():
        launch(_asgd_kernel, batch, hyper)
