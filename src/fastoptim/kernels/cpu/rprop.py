"""Rprop on the CPU: :func:`fastoptim.algorithms.rprop.rprop_reference` as one parallel loop.

The kernel body follows the reference rule section by section (same comments);
``rounded`` marks where the reference materialises an intermediate tensor
(a no-op unless the parameters are bfloat16).
"""

from __future__ import annotations

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

SCALARS = ("step",)
BUFFERS = ("prev", "step_size")
_COL = columns(SCALARS, BUFFERS)
STEP, PREV, STEP_SIZE = _COL["step"], _COL["prev"], _COL["step_size"]


@kernel
def _rprop_kernel(table, hyper, witness, grain):
    etaminus, etaplus, step_size_min, step_size_max, maximize = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4] != 0
    bump_steps(table, STEP)  # counted, unused by the update
    zero = scalar(0.0, witness)
    one = scalar(1.0, witness)
    minus = add_scalar(etaminus, witness)  # written into a tensor of the parameter's dtype
    plus = add_scalar(etaplus, witness)
    lo_clamp = scalar(step_size_min, witness)
    hi_clamp = scalar(step_size_max, witness)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                prev = column(table, t, PREV, lo, n, witness)
                step_size = column(table, t, STEP_SIZE, lo, n, witness)
                for i in range(n):
                    # g ← −g if maximize
                    g = load(grad, i)
                    if maximize:
                        g = -g
                    # s ← sign(g_t g_{t−1}) (torch's sign: 0 for NaN), then the factor for Δ
                    product = rounded(g * load(prev, i), witness)
                    if product > zero:
                        factor = plus
                    elif product < zero:
                        factor = minus
                    else:
                        factor = one
                    # Δ ← clamp(Δ · factor, Γ_min, Γ_max)  (NaN stays NaN)
                    delta = rounded(load(step_size, i) * factor, witness)
                    if delta < lo_clamp:
                        delta = lo_clamp
                    if delta > hi_clamp:
                        delta = hi_clamp
                    store(step_size, i, delta)
                    # g ← 0 where the sign flipped (the factor equals η₋)
                    if factor == minus:
                        g = zero
                    # θ ← θ − sign(g) Δ
                    direction = (one if g > zero else zero) - (one if g < zero else zero)
                    store(param, i, load(param, i) - direction * rounded(delta, witness))
                    store(prev, i, g)
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, scalars=SCALARS, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One Rprop step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    hyper = (
        float(options["etaminus"]),
        float(options["etaplus"]),
        float(options["step_size_min"]),
        float(options["step_size_max"]),
        bool(options["maximize"]),
    )
    for batch in gathered.batches.values():
        launch(_rprop_kernel, batch, hyper)
