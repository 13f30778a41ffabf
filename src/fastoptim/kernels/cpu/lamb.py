"""LAMB on the CPU: :func:`fastoptim.algorithms.lamb.lamb_reference` as two passes in one launch.

The trust ratio needs the norms of the (decayed) weights and of the Adam
update u before any weight moves, so each tensor gets two passes: the first
updates the moments and sums θ² and u²; the ratio is formed (in the tensor's
precision, as the reference does with 0-dim tensors) and written to the
``weight_norm`` / ``adam_norm`` / ``trust_ratio`` state; the second pass
recomputes u from the stored moments and moves the weights.  A tensor small
enough for the cache (``_launch.WHOLE_TENSOR_BYTES``, counting θ, m and v) is
one thread's task, both passes back to back, so the second reads from cache;
on the bench's ``many`` set that took the step to 0.80x the time (paired
runs).  Larger tensors are split into chunk segments over all threads, pass
by pass, with the sums added up per tensor in between.  The norms are
summed in float64 in the kernel's own order, not torch's, so they -- and
through the ratio, the weights -- agree with the reference rule to rounding.

Both pass bodies follow the reference rule section by section (same
comments); ``rounded`` marks where the reference materialises an intermediate
tensor.  bfloat16 parameters are left to the reference rule (their 0-dim
state is bfloat16, which the scalar columns do not take).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from fastoptim.algorithms._rules import scalar_value

from ._launch import (
    GRAD,
    NUMEL,
    PARAM,
    Reuse,
    add_scalar,
    column,
    columns,
    decoupled_gradient,
    from_the_end,
    gather,
    kernel,
    launch,
    load,
    next_task,
    plan_rows,
    quartered_sums,
    rounded,
    scalar,
    set_scalar,
    split_by_size,
    store,
    task_counter,
    tensor_sums,
    thread_count,
    whole_tensor_limit,
    wide_vector_hint,
    zeros,
)

SCALARS = ("weight_norm", "adam_norm", "trust_ratio")
BUFFERS = ("exp_avg", "exp_avg_sq")
_COL = columns(SCALARS, BUFFERS)
WEIGHT_NORM, ADAM_NORM, TRUST_RATIO, EXP_AVG, EXP_AVG_SQ = (_COL[k] for k in (*SCALARS, *BUFFERS))


@numba.njit(inline="always")
def _update(m, v, theta, e, lam, coupled, witness):
    """u ← m · 1/(√v + ε)  (+ λθ: coupled decay), rounded as the reference's tensors are."""
    denom = rounded(rounded(np.sqrt(v), witness) + e, witness)
    u = rounded(rounded(scalar(1.0, witness) / denom, witness) * m, witness)
    if coupled:
        u = rounded(u + lam * theta, witness)
    return u


@numba.njit(inline="always")
def _moment_step(i, args):
    """Element ``i`` of pass 1: the moments stored, and ``(θ², u²)`` (the terms of the norms)."""
    param, grad, exp_avg, exp_avg_sq, maximize, decays, keep, b1, w1, b2, w2, e, lam, coupled, witness = args
    # g ← −g if maximize;  θ ← θ(1 − γλ), or θ(1 − λ) with fixed_decay
    g, theta = decoupled_gradient(grad, param, i, maximize, decays, keep, witness)
    # m ← β₁m + β₃g;  v ← β₂v + (1 − β₂)g²
    m = rounded(rounded(load(exp_avg, i) * b1, witness) + w1 * g, witness)
    store(exp_avg, i, m)
    v = rounded(rounded(load(exp_avg_sq, i) * b2, witness) + w2 * g * g, witness)
    store(exp_avg_sq, i, v)
    u = _update(m, v, theta, e, lam, coupled, witness)
    return np.float64(theta) * np.float64(theta), np.float64(u) * np.float64(u)


@numba.njit(inline="always")
def _moments(table, t, lo, n, hyper, witness):
    """Pass 1 over elements ``lo .. lo+n`` of tensor ``t``: the moments, and ``(Σθ², Σu²)``."""
    # every scalar read before the loop: hyper is an array the loop's stores might alias, so LLVM would reload it
    decay, coupled, maximize = hyper[5], hyper[9] != 0, hyper[13] != 0
    decays = decay != 1.0
    keep = scalar(decay, witness)
    b1, w1 = scalar(hyper[0], witness), add_scalar(hyper[1], witness)
    b2, w2 = scalar(hyper[2], witness), scalar(hyper[3], witness)
    e, lam = add_scalar(hyper[4], witness), add_scalar(hyper[6], witness)
    param = column(table, t, PARAM, lo, n, witness)
    grad = column(table, t, GRAD, lo, n, witness)
    exp_avg = column(table, t, EXP_AVG, lo, n, witness)
    exp_avg_sq = column(table, t, EXP_AVG_SQ, lo, n, witness)
    args = (param, grad, exp_avg, exp_avg_sq, maximize, decays, keep, b1, w1, b2, w2, e, lam, coupled, witness)
    return quartered_sums(_moment_step, n, args)


@numba.njit(inline="always")
def _trust_ratio(table, t, weights, updates, hyper, witness):
    """r ← φ(‖θ‖)/(‖u‖ + ε) in the tensor's precision, written to its state; returns the r its update uses."""
    eps, clamp = hyper[4], hyper[8]
    has_clamp, trust_clip, adam = hyper[10] != 0, hyper[11] != 0, hyper[12] != 0
    zero, one = scalar(0.0, witness), scalar(1.0, witness)
    weight_norm = scalar(np.sqrt(weights), witness)
    if has_clamp and weight_norm > scalar(clamp, witness):
        weight_norm = scalar(clamp, witness)
    adam_norm = scalar(np.sqrt(updates), witness)
    ratio = one
    if weight_norm != zero and adam_norm != zero:
        ratio = weight_norm / (adam_norm + scalar(eps, witness))
    if trust_clip and ratio > one:
        ratio = one
    set_scalar(table, t, WEIGHT_NORM, np.float64(weight_norm))
    set_scalar(table, t, ADAM_NORM, np.float64(adam_norm))
    set_scalar(table, t, TRUST_RATIO, np.float64(ratio))
    return one if adam else ratio


@numba.njit(inline="always")
def _move(table, t, lo, n, r, hyper, witness):
    """Pass 2 over elements ``lo .. lo+n`` of tensor ``t``: θ ← θ − γ/(1 − β₁ᵗ) · r u, u rebuilt from m and v."""
    decay, coupled, adam = hyper[5], hyper[9] != 0, hyper[12] != 0
    decays = decay != 1.0
    keep = scalar(decay, witness)
    e, lam = add_scalar(hyper[4], witness), add_scalar(hyper[6], witness)
    step = add_scalar(hyper[7], witness)
    param = column(table, t, PARAM, lo, n, witness)
    exp_avg = column(table, t, EXP_AVG, lo, n, witness)
    exp_avg_sq = column(table, t, EXP_AVG_SQ, lo, n, witness)
    for i in range(n):
        theta = load(param, i)
        if decays:
            theta = rounded(theta * keep, witness)
        u = _update(load(exp_avg, i), load(exp_avg_sq, i), theta, e, lam, coupled, witness)
        if not adam:
            u = rounded(u * r, witness)
        store(param, i, theta + step * u)


@kernel
def _lamb_kernel(table, hyper, witness, grain):
    whole, rest = split_by_size(table, np.int64(hyper[14]))
    # Tensors that fit in cache: one thread each (largest first, to whichever thread is free), both passes back to back.
    tasks = task_counter()
    for _ in prange(thread_count()):
        wide_vector_hint()
        j = next_task(tasks)
        while j < whole.shape[0]:
            t = whole[j]
            n = table[t, NUMEL]
            weights, updates = _moments(table, t, 0, n, hyper, witness)
            _move(table, t, 0, n, _trust_ratio(table, t, weights, updates, hyper, witness), hyper, witness)
            j = next_task(tasks)
    # The others, split over the threads: pass 1 per segment, r per tensor, then pass 2.
    segments, starts = plan_rows(table, rest, grain)
    partial = zeros(segments.shape[0], 2)
    tasks = task_counter()
    for _ in prange(thread_count()):
        wide_vector_hint()
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                partial[s, 0], partial[s, 1] = _moments(table, t, lo, n, hyper, witness)
            c = next_task(tasks)
    sums = tensor_sums(partial, segments, table.shape[0])
    ratios = np.empty(table.shape[0], np.float64)
    for t in rest:
        ratios[t] = np.float64(_trust_ratio(table, t, sums[t, 0], sums[t, 1], hyper, witness))
    # pass 2, last chunk first: pass 1 read it last
    tasks = task_counter()
    for _ in prange(thread_count()):
        wide_vector_hint()
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            k = from_the_end(starts, c)
            for s in range(starts[k], starts[k + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                _move(table, t, lo, n, scalar(ratios[t], witness), hyper, witness)
            c = next_task(tasks)


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters: kernel batches, and the ``rest`` left to the reference rule."""
    return gather(params, state, scalars=SCALARS, buffers=BUFFERS, dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One LAMB step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr = float(scalar_value(options["lr"]))
    beta1, beta2 = float(options["beta1"]), float(options["beta2"])
    weight_decay = float(options["weight_decay"])
    decoupled = bool(options["weight_decouple"])
    # The reference's Python-float arithmetic, done once per group.
    decay = 1.0 - weight_decay * (1.0 if options["fixed_decay"] else lr) if decoupled and weight_decay != 0.0 else 1.0
    clamp = options["clamp"]
    hyper = [
        beta1,
        1.0 - beta1 if options["grad_averaging"] else 1.0,
        beta2,
        1.0 - beta2,
        float(options["eps"]),
        decay,
        weight_decay,
        -(lr / (1.0 - math.pow(beta1, options["step"]))),
        0.0 if clamp is None else float(clamp),
        not decoupled and weight_decay > 0.0,
        clamp is not None,
        bool(options["trust_clip"]),
        bool(options["adam"]),
        bool(options["maximize"]),
        0.0,  # the elements of the largest tensor one thread takes whole (per batch)
    ]
    for batch in gathered.batches.values():
        # pass 2 reads θ, m and v again
        hyper[-1] = whole_tensor_limit(3, batch.witness.itemsize)
        launch(_lamb_kernel, batch, hyper)
