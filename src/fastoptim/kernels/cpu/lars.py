"""LARS on the CPU: :func:`fastoptim.algorithms.lars.lars_reference` as two parallel passes in one launch.

The trust ratio of a matrix needs two norms of the whole tensor before any
element moves, so each matrix gets two passes: the first sums θ² and g² (a
row's FLAG is 1 for a matrix, 0 for a vector or 0-dim parameter, which gets
neither weight decay nor a ratio), the ratio is formed with the reference's
formula (:func:`fastoptim.algorithms.lars.lars_ratio_from_norms`) in the
tensor's precision, and the second pass moves the weights.  A tensor small
enough for the cache (``_launch.WHOLE_TENSOR_BYTES``) is one thread's task,
both passes back to back, so the second reads θ and g from cache; on the
bench's ``many`` set (148 tensors, all but one below the cut) that made the
step about 5 % faster in paired runs.  Larger tensors are split into chunk
segments over all threads: the first pass sums per segment, the sums are
added up per tensor, then the second pass runs.  The norms are
summed in float64 in the kernel's own order, not torch's, so they -- and
through the ratio, the weights -- agree with the reference rule to rounding.
(torch's own ``vector_norm`` runs at about half the memory bandwidth here:
two of them made a LARS step 25 % slower than the update itself.)

Both pass bodies follow the reference rule section by section (same
comments); ``rounded`` marks where the reference materialises an intermediate
tensor (a no-op unless the parameters are bfloat16).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastoptim.algorithms._rules import scalar_value

from . import _launch
from ._launch import (
    FLAG,
    GRAD,
    NUMEL,
    PARAM,
    Reuse,
    add_scalar,
    column,
    columns,
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
    split_by_size,
    store,
    task_counter,
    tensor_sums,
    thread_count,
    wide_vector_hint,
    zeros,
)

BUFFERS = ("momentum_buffer",)
MOMENTUM_BUFFER = columns((), BUFFERS)["momentum_buffer"]


@numba.njit(inline="always")
def _ratio(weight_sq, grad_sq, weight_decay, trust_coefficient, witness):
    """r = η‖θ‖ / (‖g‖ + λ‖θ‖), or 1 unless ‖θ‖ > 0 and the denominator > 0 (NaN gives 1, as in the reference)."""
    one = scalar(1.0, witness)
    weight_norm = rounded(scalar(np.sqrt(weight_sq), witness), witness)
    grad_norm = rounded(scalar(np.sqrt(grad_sq), witness), witness)
    denominator = rounded(grad_norm + rounded(scalar(weight_decay, witness) * weight_norm, witness), witness)
    if weight_norm > 0.0 and denominator > 0.0:
        return rounded(rounded(scalar(trust_coefficient, witness) * weight_norm, witness) / denominator, witness)
    return one


@numba.njit(inline="always")
def _squares(i, args):
    """θᵢ², gᵢ² in float64 (the terms of :func:`_square_sums`)."""
    param, grad = args
    theta = np.float64(load(param, i))
    g = np.float64(load(grad, i))
    return theta * theta, g * g


@numba.njit(inline="always")
def _square_sums(table, t, lo, n, witness):
    """Σθ², Σg² over elements ``lo .. lo+n`` of tensor ``t`` (‖−g‖ = ‖g‖: maximize needs no sign)."""
    return quartered_sums(_squares, n, (column(table, t, PARAM, lo, n, witness), column(table, t, GRAD, lo, n, witness)))


@numba.njit(inline="always")
def _move(table, t, lo, n, ratio, hyper, witness):
    """The update of elements ``lo .. lo+n`` of tensor ``t``, whose trust ratio is ``ratio``."""
    has_momentum, nesterov, maximize = hyper[2] > 0.0, hyper[4] != 0, hyper[5] != 0
    step = add_scalar(hyper[0], witness)
    lam = add_scalar(hyper[1], witness)
    mu = scalar(hyper[2], witness)
    mu_alpha = rounded(mu, witness)
    damp = add_scalar(hyper[3], witness)
    matrix = table[t, FLAG] != 0
    param = column(table, t, PARAM, lo, n, witness)
    grad = column(table, t, GRAD, lo, n, witness)
    buf = column(table, t, MOMENTUM_BUFFER if has_momentum else GRAD, lo, n, witness)
    for i in range(n):
        # g ← −g if maximize
        g = load(grad, i)
        if maximize:
            g = -g
        theta = load(param, i)
        if matrix:
            # g ← r(g + λθ)
            g = rounded(rounded(g + lam * theta, witness) * ratio, witness)
        if has_momentum:
            # b ← μb + (1 − τ)g;  g ← g + μb (nesterov) or b
            b = rounded(rounded(load(buf, i) * mu, witness) + damp * g, witness)
            store(buf, i, b)
            g = rounded(g + mu_alpha * b, witness) if nesterov else b
        # θ ← θ − γg
        store(param, i, theta + step * g)


@kernel
def _lars_kernel(table, hyper, witness, grain):
    weight_decay, trust_coefficient = hyper[1], hyper[6]
    whole, rest = split_by_size(table, np.int64(hyper[7]))
    # Tensors that fit in cache: one thread each (largest first, to whichever thread is free), both passes back to back.
    tasks = task_counter()
    for _ in prange(thread_count()):
        wide_vector_hint()
        j = next_task(tasks)
        while j < whole.shape[0]:
            t = whole[j]
            n = table[t, NUMEL]
            ratio = scalar(1.0, witness)
            if table[t, FLAG] != 0:
                weights, grads = _square_sums(table, t, 0, n, witness)
                ratio = _ratio(weights, grads, weight_decay, trust_coefficient, witness)
            _move(table, t, 0, n, ratio, hyper, witness)
            j = next_task(tasks)
    # The others, split over the threads: pass 1, Σθ² and Σg² per segment of every matrix ...
    segments, starts = plan_rows(table, rest, grain)
    partial = zeros(segments.shape[0], 2)
    tasks = task_counter()
    for _ in prange(thread_count()):
        wide_vector_hint()
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                if table[t, FLAG] != 0:
                    partial[s, 0], partial[s, 1] = _square_sums(table, t, lo, n, witness)
            c = next_task(tasks)
    # ... r per matrix, in the tensor's precision ...
    sums = tensor_sums(partial, segments, table.shape[0])
    ratios = np.empty(table.shape[0], np.float64)
    for t in rest:
        ratios[t] = 1.0
        if table[t, FLAG] != 0:
            ratios[t] = np.float64(_ratio(sums[t, 0], sums[t, 1], weight_decay, trust_coefficient, witness))
    # ... pass 2, the update (last chunk first: pass 1 read it last).
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
    """Sort the parameters (kernel batches, and the ``rest`` left to the reference rule); FLAG marks matrices."""
    buffers = BUFFERS if options["momentum"] > 0.0 else ()
    return gather(params, state, buffers=buffers, flag=lambda p, entry: int(p.dim() > 1), dry_run=dry_run, reuse=reuse)


def run_(gathered, options: dict) -> None:
    """One LARS step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    hyper = [
        -float(scalar_value(options["lr"])),
        float(options["weight_decay"]),
        float(options["momentum"]),
        1.0 - float(options["dampening"]),
        bool(options["nesterov"]),
        bool(options["maximize"]),
        float(options["trust_coefficient"]),
        0.0,  # the elements of the largest tensor one thread takes whole (per batch)
    ]
    for batch in gathered.batches.values():
        # pass 2 reads θ and g again
        hyper[-1] = _launch.whole_tensor_limit(2, batch.witness.itemsize)
        launch(_lars_kernel, batch, hyper)
