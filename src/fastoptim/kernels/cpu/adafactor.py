"""Adafactor on the CPU: :func:`fastoptim.algorithms.adafactor.adafactor_reference` as parallel passes in one launch.

A matrix's update needs its whole gradient's row and column means (the
factored variance), and every update is scaled by the RMS of the parameter
and clipped by the RMS of the update itself, so no weight can move before
three reductions are done.  Two of them can share a pass: once a whole
line's Σg² is known so is its new factor R, and the line, still in cache, is
read again to add g²/R per position; where no element's root is capped,
u² = g²·r̄/(R·C) makes Σu² = r̄ · Σ_positions (Σ_lines g²/R) / C.  So each
tensor goes through two passes over its elements, and one over its factors:

1. per chunk segment, Σθ²; for a vector, the EMA of g² (stored) and Σu²
   (its update needs nothing else); for a matrix, the sums of g² along each
   line of memory and each position across lines, and per position Σ g²/R
   over the segment's whole lines (:func:`_first_pass`);
2. per matrix, the line and position sums completed, turned into means
   (``norm².div(size)`` as the reference does), the EMAs ``row_var`` /
   ``col_var`` updated and ``r̄ = max(mean(row_var), ε₁)`` formed; then one
   scale per line and per position, so that V̂^(−½) = (r̄/R)^½ · C^(−½) costs
   a product per element instead of a division and a root (the clamp at ε₁²
   becomes a cap on the root, the reference's own rsqrt of ε₁²); and Σu²
   from the sums of (1) (:func:`_factored_update_squares`).  A line or
   position of factor 0 (an embedding's unseen rows: zero gradient) is
   capped along its length, which the sum takes in; where any other root
   would reach the cap, or a factor is not finite (a NaN or inf gradient),
   it answers −1 and
3. Σu² is summed element by element, u rebuilt from g and the two scales,
   as the reference forms it -- for such a tensor only; otherwise this pass
   sums the lines a segment shares with its neighbours (at most two);

then, per tensor, α = max(ε₂, RMS(θ))·ρ and the clip max(1, RMS(u)/d) (in
float64, as the reference's Python floats), and

4. the weights move: θ ← θ(1 − γλ) − α/clip · u, u rebuilt once more.

A vector reads θ, g and V̂ twice and writes V̂ and θ; a matrix reads θ and g
twice and writes θ: the least traffic that finds both norms before any weight
moves, for a tensor larger than the caches.  (Σu² summed element by element,
in a pass of its own, had the matrix read g a third time: one 8192² float32
step took 55 ms that way.)

A tensor whose θ and g fit in ``_launch.WHOLE_TENSOR_BYTES`` is one thread's
task: the thread makes the passes over it back to back, so the last reads it
from cache (threads take such tensors from a task counter, largest first).
On the bench's ``many`` set (148 tensors, all but the embedding below the
cut) that took the step to 0.69-0.72x the time of splitting every tensor.
Larger tensors are split into chunk segments over all threads, and each pass
runs over all of them before the next starts.  The pass bodies
(:func:`_first_pass`, :func:`_factors`, :func:`_update_squares`,
:func:`_step_segment`) serve both paths.

The row and column sums are parallel over the same chunks as everything
else.  A matrix is walked in memory order, line by line (a line is a row, or
for a transposed matrix a column): a line wholly inside a segment writes its
sum where it belongs, and so does a whole matrix its position sums (a batch
of small matrices, such as a convolution's 3×3 kernels).  What a segment
holds of a matrix it shares with other segments -- at most one partial line
at each end, and the positions of at most one partial matrix at each end --
goes to the segment's own slots, which the segment holding the matrix's
first element adds in (2) before it uses the sums.  Chunks are at least 256
lines long, so those slots cost at most a few per cent of the traffic.  The
sums are taken in float64 in the kernel's own order, not torch's, of squares
rounded as torch's (so they overflow where torch's do), and V̂^(−½) is
factored as above: the factors -- and through them the weights -- agree with
the reference rule to rounding (a few units in the last place of u).  Σu²
from (2) sums r̄·g²/(R·C), u² of unrounded scales: the clip agrees to
rounding too.

Each pass body follows the reference rule section by section (same
comments); ``rounded`` marks where the reference materialises an
intermediate tensor (a no-op unless the parameters are bfloat16).  Empty
parameters (the reference raises), layouts other than contiguous or
transposed in the last two dimensions, and a tensor ``lr`` of a dtype other
than float32 / float64 are left to the reference rule.
"""

from __future__ import annotations

import operator

import numba
import numpy as np
import torch
from numba import prange, types
from numba.extending import overload
from torch import Tensor

from fastoptim.algorithms._rules import as_scalar

from ._launch import (
    FASTMATH,
    FLAG,
    GRAD,
    NUMEL,
    PARAM,
    Reuse,
    add_scalar,
    bump_steps,
    column,
    columns,
    decoupled_gradient,
    gather,
    helper,
    kernel,
    launch,
    lerp,
    load,
    next_task,
    plan_rows,
    prefetch,
    quartered_sums,
    rounded,
    scalar,
    split_by_size,
    store,
    task_counter,
    tensor_sums,
    thread_count,
    whole_tensor_limit,
    why_not,
    wide_vector_hint,
)

SCALARS = ("step",)
#: address columns this module adds to gather's rows: a vector's variance; a matrix's
#: factor along its lines of memory and its factor across them (row_var and col_var,
#: swapped for a transposed matrix)
ADDRESSES = ("variance", "line_var", "pos_var")
_COL = columns(SCALARS, ADDRESSES)
STEP, VARIANCE, LINE_VAR, POS_VAR = (_COL[k] for k in (*SCALARS, *ADDRESSES))
#: then a matrix's shape in memory order: lines per matrix, elements per line
LINES, INNER = POS_VAR + 1, POS_VAR + 2
#: FLAG: how the parameter is factored
VECTOR, MATRIX, TRANSPOSED = 0, 1, 2
#: a chunk spans at least this many lines of its widest matrix (see the module docstring); 256
#: rather than 64: one 8192² step 45.0 -> 42.5 ms, as the segment holding a matrix's first element adds
#: every other segment's position sums alone, and the slots took 16 MiB (now 4)
LINES_PER_CHUNK = 256
#: whole lines summed together in the first pass (:func:`_block_square_sums`, written out for four)
BLOCK = 4
#: a block of lines up to this many bytes has the next one prefetched (:func:`_prefetch_next_block`)
PREFETCHED_BLOCK_BYTES = 16 << 10


# ----------------------------------------------------------------------------- scalars


@helper
def _lerp_weights(steps, beta2_decay):
    """Per tensor: ``1 − β̂₂ₜ = t^τ``, the weight of the new g² (float64, as the reference)."""
    out = np.empty(steps.shape[0], np.float64)
    for t in range(steps.shape[0]):
        out[t] = steps[t] ** beta2_decay
    return out


@helper
def _step_scale(numel, step, weight_squares, update_squares, lr, lr_f32, eps2, d, witness):
    """One tensor's ``−α/clip``: the reference's Python-float arithmetic on its norms.

    ρ = min(γ, 1/√t), α = max(ε₂, RMS(θ))·ρ, clip = max(1, RMS(u)/d); the
    norms are rounded to the tensor's dtype first (``norm(2).item()``).  A
    float32 tensor ``lr`` makes ρ, and then α, 0-dim float32 tensors: their
    arithmetic is float32's.
    """
    root = numel**0.5
    rms = np.float64(_norm(weight_squares, witness)) / root
    # max(ε₂, RMS(θ)) and max(1, RMS(u)/d): Python's max keeps the first unless the second is larger (NaN is not)
    floor = rms if rms > eps2 else eps2
    ratio = np.float64(_norm(update_squares, witness)) / (root * d)
    clip = ratio if ratio > 1.0 else 1.0
    # ρ = min(γ, 1/√t): γ unless 1/√t is smaller
    inverse = 1 / (step**0.5)
    if lr_f32:
        if np.float32(inverse) < np.float32(lr):
            return -(floor * inverse) / clip
        alpha = np.float32(np.float32(floor) * np.float32(lr))
        return np.float64(np.float32(-alpha / np.float32(clip)))
    rho = inverse if inverse < lr else lr
    return -(floor * rho) / clip


# ----------------------------------------------------------------------------- elements


@numba.njit(inline="always")
def _square(x):
    """x² in the compute precision, widened to be summed in float64.

    As torch's norms square: in float32 for float32 and bfloat16, so a square
    overflows to inf, or underflows to 0, where theirs does.
    """
    return np.float64(x * x)


@helper
def _norm(total, witness):
    """‖x‖ as torch's ``norm`` returns it, from Σx² (of :func:`_square`).

    The sum is rounded to the compute precision first: past float32's range it
    is inf, as torch's float32 accumulator is; the root is rounded to the dtype.
    """
    return rounded(np.sqrt(scalar(total, witness)), witness)


@numba.njit(inline="always")
def _mean_square(total, size, witness):
    """``norm(g, dim).square_().div_(size)`` from the sum of squares along ``dim``."""
    norm = _norm(total, witness)
    return rounded(rounded(norm * norm, witness) / scalar(size, witness), witness)


@numba.njit(inline="always")
def _root(var, floor, witness):
    """``V̂.clamp_(min=ε₁²).rsqrt_()``, one element of a vector's V̂ (the clamp keeps NaN, as torch's).

    The clamp comes first, as in the reference.
    """
    if var < floor:
        var = floor
    return rounded(scalar(1.0, witness) / rounded(np.sqrt(var), witness), witness)


@numba.njit(inline="always")
def _factored_root(line_scale, pos_scale, cap, witness):
    """The same for an element of a matrix, from its two scales: min((r̄/R)^½ · C^(−½), ε₁^(−1)).

    1/√x does not increase with x, so the clamp can come after the root;
    ``cap`` is the reference's own rsqrt of ε₁².  The min keeps NaN, as the clamp.
    """
    root = line_scale * pos_scale
    if root > cap:
        root = cap
    return rounded(root, witness)


@numba.njit(inline="always")
def _piece(k, end, inner, lines):
    """The run of elements from ``k`` on that stays in one line: ``(line, offset in it, length, matrix)``."""
    line = k // inner
    offset = k - line * inner
    return line, offset, min(end - k, inner - offset), line // lines


@numba.njit(inline="always")
def _ends(lo, n, size):
    """The first and last block of ``size`` elements a segment touches, and whether the segment holds only part of each.

    Blocks are lines (size: a line's length) or matrices (size: lines × length).
    """
    first, last = lo // size, (lo + n - 1) // size
    first_partial = lo != first * size or lo + n < (first + 1) * size
    last_partial = last != first and lo + n != (last + 1) * size
    return first, first_partial, last, last_partial


@numba.njit(inline="always")
def _block_lines(table, t, k, inner, witness, col=GRAD):
    """Column ``col`` (the gradient) of the ``BLOCK`` whole lines of tensor ``t`` from element ``k``, one view per line."""
    return (
        column(table, t, col, k, inner, witness),
        column(table, t, col, k + inner, inner, witness),
        column(table, t, col, k + 2 * inner, inner, witness),
        column(table, t, col, k + 3 * inner, inner, witness),
    )


@numba.njit(inline="always")
def _prefetch_next_block(table, t, k, inner, with_param, witness):
    """Start fetching the gradient (and the parameter) of the block of lines after the one at ``k``, if blocks are short.

    The loop over a block reads ``BLOCK`` lines side by side: short ones end
    before the hardware prefetchers have caught up with the four streams.
    """
    if BLOCK * inner * witness.itemsize <= PREFETCHED_BLOCK_BYTES:
        prefetch(table, t, GRAD, k + BLOCK * inner, BLOCK * inner, witness)
        if with_param:
            prefetch(table, t, PARAM, k + BLOCK * inner, BLOCK * inner, witness)


@numba.njit(inline="always")
def _squares(lines, i):
    """g² at position ``i`` of each of ``BLOCK`` lines (views from :func:`_block_lines`)."""
    g0, g1, g2, g3 = lines
    return _square(load(g0, i)), _square(load(g1, i)), _square(load(g2, i)), _square(load(g3, i))


@numba.njit(inline="always")
def _plus(totals, terms):
    """Four running sums, each with its term added."""
    return totals[0] + terms[0], totals[1] + terms[1], totals[2] + terms[2], totals[3] + terms[3]


@numba.njit(inline="always")
def _weighted_square(lines, weights, i):
    """Σ g²/R at position ``i`` over ``BLOCK`` lines (``weights``: their 1/R)."""
    s0, s1, s2, s3 = _squares(lines, i)
    w0, w1, w2, w3 = weights
    return (s0 * w0 + s1 * w1) + (s2 * w2 + s3 * w3)


@numba.njit(inline="always")
def _block_square_sums(table, t, k, inner, sums, line_sums, witness):
    """Σg² of the ``BLOCK`` whole lines of tensor ``t`` from element ``k``: into ``line_sums``, and added to ``sums`` (per position)."""
    lines = _block_lines(table, t, k, inner, witness)
    _prefetch_next_block(table, t, k, inner, False, witness)
    totals = (0.0, 0.0, 0.0, 0.0)
    for i in range(inner):
        s0, s1, s2, s3 = squares = _squares(lines, i)
        totals = _plus(totals, squares)
        sums[i] += (s0 + s1) + (s2 + s3)
    line_sums[0], line_sums[1], line_sums[2], line_sums[3] = totals


@numba.njit(inline="always")
def _block_weighted_sums(table, t, k, inner, weighted, weights, witness):
    """Σ g²/R of the same ``BLOCK`` lines (``weights``: their 1/R), added to ``weighted`` per position; they are still in cache."""
    lines = _block_lines(table, t, k, inner, witness)
    for i in range(inner):
        weighted[i] += _weighted_square(lines, weights, i)


@numba.njit(inline="always")
def _block_sums_after(table, t, k, inner, sums, line_sums, before, weighted, weights, witness):
    """:func:`_block_square_sums` of the block at ``k`` and, in the same loop, :func:`_block_weighted_sums` of the block at ``before``; returns the block's Σθ².

    The block before is still in cache; reading it while this one's θ and g
    stream in keeps memory busy through the loop that re-reads it.
    """
    lines = _block_lines(table, t, k, inner, witness)
    lines_before = _block_lines(table, t, before, inner, witness)
    params = _block_lines(table, t, k, inner, witness, PARAM)
    _prefetch_next_block(table, t, k, inner, True, witness)
    totals = (0.0, 0.0, 0.0, 0.0)
    weight_totals = (0.0, 0.0, 0.0, 0.0)
    for i in range(inner):
        s0, s1, s2, s3 = squares = _squares(lines, i)
        totals = _plus(totals, squares)
        sums[i] += (s0 + s1) + (s2 + s3)
        weight_totals = _plus(weight_totals, _squares(params, i))
        weighted[i] += _weighted_square(lines_before, weights, i)
    line_sums[0], line_sums[1], line_sums[2], line_sums[3] = totals
    q0, q1, q2, q3 = weight_totals
    return (q0 + q1) + (q2 + q3)


@numba.njit(inline="always")
def _new_factor(old, total, size, w, one, witness):
    """A factor's new value, ``lerp(old, norm(g, dim)².div(size), t^τ)``, from the Σg² along ``dim`` (as pass 2 writes it)."""
    return rounded(lerp(old, _mean_square(total, size, witness), w, one), witness)


@numba.njit(inline="always")
def _capped_squares(total, cap):
    """Σu² of elements whose root is capped: u = g·``cap``, from their Σg²."""
    return total * np.float64(cap) * np.float64(cap)


@numba.njit(inline="always")
def _line_weight(line_var, line, total, inner, w, one, witness):
    """``(1/R, 0)`` for a whole line of new factor R > 0, else ``(0, Σg²)``: its u is g·ε₁^(−1) (capped), or pass 2 finds the factors unfit."""
    var = np.float64(_new_factor(load(line_var, line), total, inner, w, one, witness))
    if var > 0:
        return 1.0 / var, 0.0
    return 0.0, total


@numba.njit(inline="always")
def _sharing(segments, s, t, end):
    """One past the last segment, from ``s`` on, that holds elements of tensor ``t`` before element ``end``."""
    s2 = s
    while s2 < segments.shape[0] and segments[s2, 0] == t and segments[s2, 1] < end:
        s2 += 1
    return s2


def _empty(n, witness):
    """An uninitialised array of ``n`` numbers in the compute precision of ``witness``'s storage."""


@overload(_empty, inline="always")
def _empty_overload(n, witness):
    if witness.dtype == types.float64:
        return lambda n, witness: np.empty(n, np.float64)
    return lambda n, witness: np.empty(n, np.float32)


# ----------------------------------------------------------------------------- the kernel


#: the shared flags but ``arcp``: with it LLVM computes 1/√x as a reciprocal-root estimate and a Newton
#: step, which gives NaN for x = 0 and x = inf where the reference's rsqrt gives inf and 0
_FASTMATH = FASTMATH - {"arcp"}
#: a pass over one segment: compiled once as its own function (not inlined), since both the whole-tensor
#: loop and the split passes call it -- inlined twice, the kernel took twice as long to compile.  Each
#: asks for 512-bit loops (``wide_vector_hint``): on an AVX-512 Xeon, where LLVM picks 256-bit ones,
#: one 8192² step took 44.9 ms against 48.6, the ``many`` set 17.8 against 20.3 (alternated runs)
_segment_pass = numba.njit(fastmath=set(_FASTMATH) or False, nogil=True, error_model="numpy")


@numba.njit(inline="always")
def _weight_square(i, args):
    """θᵢ² (a term of Σθ², for :func:`quartered_sums`)."""
    param, witness = args
    return _square(load(param, i)), 0.0


@numba.njit(inline="always")
def _update_square(i, args):
    """uᵢ² of a run of one line of a matrix, u = V̂^(-1/2)·G from the line's scale and the positions' (a term of Σu²)."""
    grads, scale, scales, cap, maximize, witness = args
    g = load(grads, i)
    if maximize:
        g = -g
    return _square(rounded(_factored_root(scale, scales[i], cap, witness) * g, witness)), 0.0


@numba.njit(inline="always")
def _move(param, grad, i, root, maximize, decays, keep, step, witness):
    """Element ``i`` of the step: θ ← θ(1 − γλ) − α/clip · u, with u = V̂^(-1/2)·g (``root`` is V̂^(-1/2))."""
    g, theta = decoupled_gradient(grad, param, i, maximize, decays, keep, witness)
    u = rounded(root * g, witness)
    store(param, i, theta + step * u)


@_segment_pass
def _first_pass(table, t, lo, n, w, one, var_floor, cap, maximize, sums, slots, line_part, overlap, witness):
    """Pass 1 over elements ``lo .. lo+n`` of tensor ``t``: returns ``(Σθ², Σu²)``, for a matrix Σu² of its capped lines only.

    A vector's V̂ is updated here, and its Σu² summed.  A matrix's g² is
    summed along its lines (into ``line_sq``) and across them (into
    ``pos_sq``); once a whole line's sum is known, so is its new factor R,
    and the line -- still in cache -- is read once more to add g²/R per
    position (into ``pos_wsq``), from which pass 2 gets Σu² (see
    :func:`_factored_update_squares`).  A line whose new R is 0 is capped:
    its u is g·ε₁^(−1), its Σu² is returned.  What the segment holds of a
    line or matrix it shares with other segments goes to ``line_part`` (its
    two partial lines) and ``slots`` (its two partial matrices' positions,
    plain sums then weighted ones); its partial lines' Σu² is left to
    :func:`_update_squares`.

    With ``overlap`` (a tensor split over all threads) a block of lines is
    read again in the loop over the next block's Σg², not in a loop of its
    own, so the reads from memory never pause, and Σθ² is summed in the same
    loop, θ and g streaming in together (:func:`_block_sums_after`): one
    8192² float32 step took 43.9-44.2 ms against 46.3-46.4 with the first,
    42.1-44.0 against 43.3-44.9 with the second as well (alternated runs).
    A tensor one thread takes whole keeps the plain order, Σθ² in a loop
    before the rest: the first made the bench's ``many`` set slower there
    (19.5-19.6 ms against 18.0-19.1).
    """
    wide_vector_hint()
    line_sq, pos_sq, pos_wsq, line_at, pos_at = sums
    param = column(table, t, PARAM, lo, n, witness)
    grad = column(table, t, GRAD, lo, n, witness)
    weights = 0.0
    if table[t, FLAG] == VECTOR or not overlap:
        weights, _ = quartered_sums(_weight_square, n, (param, witness))
    if table[t, FLAG] == VECTOR:
        variance = column(table, t, VARIANCE, lo, n, witness)
        updates = 0.0
        for i in range(n):
            # G ← −g if maximize
            g = load(grad, i)
            if maximize:
                g = -g
            # V̂ ← lerp(V̂, G², t^τ)
            v = rounded(lerp(load(variance, i), rounded(g * g, witness), w, one), witness)
            store(variance, i, v)
            # U ← max(V̂, ε₁²)^(−½) G
            u = rounded(_root(v, var_floor, witness) * g, witness)
            updates += _square(u)
        return weights, updates
    lines, inner = table[t, LINES], table[t, INNER]
    size = lines * inner
    line_var = column(table, t, LINE_VAR, 0, table[t, NUMEL] // inner, witness)
    line_first, _, _, _ = _ends(lo, n, inner)
    head, head_partial, tail, tail_partial = _ends(lo, n, size)
    for j in range(inner):
        if head_partial:
            slots[j] = 0.0
            slots[2 * inner + j] = 0.0
        if tail_partial:
            slots[inner + j] = 0.0
            slots[3 * inner + j] = 0.0
    capped = 0.0
    # the last block of whole lines: its Σ g²/R is summed in the loop over the next block's Σg², or at the end (-1: none)
    pending, pending_weighted, pending_weights = -1, pos_wsq[:0], (0.0, 0.0, 0.0, 0.0)
    k = lo
    while k < lo + n:
        line, offset, m, b = _piece(k, lo + n, inner, lines)
        grads = column(table, t, GRAD, k, m, witness)
        # a matrix held whole sums its positions in place; a partial one, in this segment's slots
        if b == head and head_partial:
            position_sums = slots[offset : offset + m]
            weighted_sums = slots[2 * inner + offset : 2 * inner + offset + m]
        elif b == tail and tail_partial:
            position_sums = slots[inner + offset : inner + offset + m]
            weighted_sums = slots[3 * inner + offset : 3 * inner + offset + m]
        else:
            start = pos_at[t] + b * inner
            if k == b * size:
                for j in range(inner):
                    pos_sq[start + j] = 0.0
                    pos_wsq[start + j] = 0.0
            position_sums = pos_sq[start + offset : start + offset + m]
            weighted_sums = pos_wsq[start + offset : start + offset + m]
        if m == inner and k + BLOCK * inner <= lo + n and (line + BLOCK - 1) // lines == b:
            # BLOCK whole lines of one matrix at once: the position sums are read and written once for all
            totals = line_sq[line_at[t] + line : line_at[t] + line + BLOCK]
            if overlap and pending >= 0:
                weights += _block_sums_after(table, t, k, inner, position_sums, totals, pending, pending_weighted, pending_weights, witness)
            else:
                _block_square_sums(table, t, k, inner, position_sums, totals, witness)
                if overlap:
                    weights += quartered_sums(_weight_square, BLOCK * inner, (param[k - lo : k - lo + BLOCK * inner], witness))[0]
            w0, c0 = _line_weight(line_var, line, totals[0], inner, w, one, witness)
            w1, c1 = _line_weight(line_var, line + 1, totals[1], inner, w, one, witness)
            w2, c2 = _line_weight(line_var, line + 2, totals[2], inner, w, one, witness)
            w3, c3 = _line_weight(line_var, line + 3, totals[3], inner, w, one, witness)
            capped += (c0 + c1) + (c2 + c3)
            if overlap:
                pending, pending_weighted, pending_weights = k, weighted_sums, (w0, w1, w2, w3)
            else:
                _block_weighted_sums(table, t, k, inner, weighted_sums, (w0, w1, w2, w3), witness)
            k += BLOCK * inner
            continue
        total = 0.0
        for i in range(m):
            square = _square(load(grads, i))
            total += square
            position_sums[i] += square
        if overlap:
            weights += quartered_sums(_weight_square, m, (param[k - lo : k - lo + m], witness))[0]
        if m == inner:
            line_sq[line_at[t] + line] = total
            weight, lost = _line_weight(line_var, line, total, inner, w, one, witness)
            capped += lost
            for i in range(m):
                weighted_sums[i] += _square(load(grads, i)) * weight
        elif line == line_first:
            line_part[0] = total
        else:
            line_part[1] = total
        k += m
    if pending >= 0:
        _block_weighted_sums(table, t, pending, inner, pending_weighted, pending_weights, witness)
    return weights, _capped_squares(capped, cap)


@numba.njit(inline="always")
def _factored_update_squares(line_var, line_scale, pos_var, pos_scale, pos_sums, weighted, row_mean, cap, witness):
    """Σu² of a matrix's whole lines not capped (u = V̂^(−½)·G) from pass 1's Σ g²/R per position, or −1 where that would not be u's.

    Where no element's root is capped, u² = g²·r̄/(R·C) factors:
    Σu² = r̄ · Σ_positions (Σ_lines g²/R) / C, with no pass of its own.  A
    position of C = 0 is capped along its whole length (adding ε₁^(−2)·Σg²),
    as pass 1 took the lines of R = 0.  The rest must not reach the cap --
    the largest line scale times the largest position scale, rounded as
    :func:`_factored_root` rounds, is at most ``cap`` -- and every factor must
    be finite (a NaN or inf gradient is then summed element by element, as
    the reference does).  The sum is the reference's to rounding: its terms
    are u² from the unrounded scales.
    """
    if not (row_mean > 0 and row_mean < np.inf):
        return -1.0
    top_line = scalar(0.0, witness)
    for j in range(line_var.shape[0]):
        v = load(line_var, j)
        if not (v >= 0 and v < np.inf):
            return -1.0
        if v > 0 and not line_scale[j] <= top_line:
            top_line = line_scale[j]
    top_position = scalar(0.0, witness)
    spread = 0.0
    capped = 0.0
    for j in range(pos_var.shape[0]):
        v = load(pos_var, j)
        if not (v >= 0 and v < np.inf):
            return -1.0
        if v == 0:
            capped += pos_sums[j]
        else:
            if not pos_scale[j] <= top_position:
                top_position = pos_scale[j]
            spread += weighted[j] / np.float64(v)
    if not rounded(top_line * top_position, witness) <= cap:
        return -1.0
    return np.float64(row_mean) * spread + _capped_squares(capped, cap)


@_segment_pass
def _factors(table, t, b, line_sums, pos_sums, weighted, w, one, row_floor, cap, line_scale, pos_scale, witness):
    """Pass 2 for matrix ``b`` of tensor ``t``, from its finished Σg² along and across lines, and Σ g²/R per position.

    Updates the factors and writes one scale per line and per position
    (``line_scale``, ``pos_scale``: this matrix's slices).  Returns the Σu²
    of its whole lines but capped ones (:func:`_factored_update_squares`),
    or −1: then pass 3 sums the tensor's Σu² element by element.
    """
    wide_vector_hint()
    lines, inner = table[t, LINES], table[t, INNER]
    # R ← lerp(R, mean_cols G², t^τ);  C ← lerp(C, mean_rows G², t^τ)
    line_var = column(table, t, LINE_VAR, b * lines, lines, witness)
    for j in range(lines):
        store(line_var, j, _new_factor(load(line_var, j), line_sums[j], inner, w, one, witness))
    pos_var = column(table, t, POS_VAR, b * inner, inner, witness)
    for j in range(inner):
        store(pos_var, j, _new_factor(load(pos_var, j), pos_sums[j], lines, w, one, witness))
    # r̄ ← max(mean_rows R, ε₁)  (R lies along the lines, or across them when transposed)
    row_var = pos_var if table[t, FLAG] == TRANSPOSED else line_var
    total = 0.0
    for j in range(row_var.shape[0]):
        total += np.float64(load(row_var, j))
    row_mean = rounded(scalar(total / row_var.shape[0], witness), witness)
    if row_mean < row_floor:
        row_mean = row_floor
    # V̂ = R ⊗ C / r̄, so V̂^(−½) = (r̄ / line factor)^½ · (position factor)^(−½): one scale per line and per position
    for j in range(lines):
        line_scale[j] = scalar(np.sqrt(np.float64(row_mean) / np.float64(load(line_var, j))), witness)
    for j in range(inner):
        pos_scale[j] = scalar(1.0 / np.sqrt(np.float64(load(pos_var, j))), witness)
    return _factored_update_squares(line_var, line_scale, pos_var, pos_scale, pos_sums, weighted, row_mean, cap, witness)


@_segment_pass
def _update_squares(table, t, lo, n, line_scale, pos_scale, line_at, pos_at, cap, maximize, partial_only, witness):
    """Pass 3: Σu² over elements ``lo .. lo+n`` of matrix tensor ``t``, u from the new factors' scales (of its partial lines only, if ``partial_only``)."""
    wide_vector_hint()
    lines, inner = table[t, LINES], table[t, INNER]
    updates = 0.0
    k = lo
    while k < lo + n:
        line, offset, m, b = _piece(k, lo + n, inner, lines)
        if m < inner or not partial_only:
            grads = column(table, t, GRAD, k, m, witness)
            scale = line_scale[line_at[t] + line]
            scales = pos_scale[pos_at[t] + b * inner + offset : pos_at[t] + b * inner + offset + m]
            u, _ = quartered_sums(_update_square, m, (grads, scale, scales, cap, maximize, witness))
            updates += u
        k += m
    return updates


@_segment_pass
def _step_segment(table, t, lo, n, step, line_scale, pos_scale, line_at, pos_at, var_floor, cap, maximize, decays, keep, witness):
    """Pass 4 over elements ``lo .. lo+n`` of tensor ``t``: θ ← θ(1 − γλ) + step · u (``step`` = −α/clip)."""
    wide_vector_hint()
    if table[t, FLAG] == VECTOR:
        param = column(table, t, PARAM, lo, n, witness)
        grad = column(table, t, GRAD, lo, n, witness)
        variance = column(table, t, VARIANCE, lo, n, witness)
        for i in range(n):
            _move(param, grad, i, _root(load(variance, i), var_floor, witness), maximize, decays, keep, step, witness)
        return
    lines, inner = table[t, LINES], table[t, INNER]
    k = lo
    while k < lo + n:
        line, offset, m, b = _piece(k, lo + n, inner, lines)
        param = column(table, t, PARAM, k, m, witness)
        grads = column(table, t, GRAD, k, m, witness)
        scale = line_scale[line_at[t] + line]
        scales = pos_scale[pos_at[t] + b * inner + offset : pos_at[t] + b * inner + offset + m]
        for i in range(m):
            _move(param, grads, i, _factored_root(scale, scales[i], cap, witness), maximize, decays, keep, step, witness)
        k += m


@numba.njit(inline="always")
def _matrices(table, t):
    """How many matrices tensor ``t`` holds (0 for a vector)."""
    if table[t, FLAG] == VECTOR:
        return 0
    return table[t, NUMEL] // (table[t, LINES] * table[t, INNER])


@kernel(fastmath=_FASTMATH)
def _adafactor_kernel(table, hyper, witness, grain):
    lr, lr_f32, beta2_decay, eps1, eps2 = hyper[0], hyper[1] != 0, hyper[2], hyper[3], hyper[4]
    d, decay, maximize = hyper[5], hyper[6], hyper[7] != 0
    decays = decay != 1.0
    keep = scalar(decay, witness)
    one = scalar(1.0, witness)
    row_floor = rounded(scalar(eps1, witness), witness)  # clamp_(min=ε₁)
    var_floor = rounded(scalar(eps1 * eps1, witness), witness)  # clamp_(min=ε₁²)
    cap = _root(var_floor, var_floor, witness)
    steps = bump_steps(table, STEP)
    lerp_weights = _lerp_weights(steps, beta2_decay)
    count = table.shape[0]
    # Arrays are made with np.empty and filled by the passes: np.zeros and np.full would be
    # parallel loops of their own, scheduled one element at a time (the launcher's chunk size).
    # where each matrix's line and position sums (and their scales, below) go
    line_at = np.empty(count + 1, np.int64)
    pos_at = np.empty(count + 1, np.int64)
    line_at[0], pos_at[0] = 0, 0
    for t in range(count):
        line_at[t + 1] = line_at[t] + _matrices(table, t) * table[t, LINES]
        pos_at[t + 1] = pos_at[t] + _matrices(table, t) * table[t, INNER]
    line_sq = np.empty(line_at[count], np.float64)
    pos_sq = np.empty(pos_at[count], np.float64)
    pos_wsq = np.empty(pos_at[count], np.float64)  # Σ g²/R per position (whole lines)
    sums = (line_sq, pos_sq, pos_wsq, line_at, pos_at)
    line_scale = _empty(line_at[count], witness)
    pos_scale = _empty(pos_at[count], witness)
    whole, rest = split_by_size(table, np.int64(hyper[8]))
    unshared = np.empty(2, np.float64)  # a whole tensor has no partial line or matrix: never written

    # Tensors that fit in cache: one thread each (largest first, to whichever thread is free), the passes
    # back to back (the last reads from cache).
    tasks = task_counter()
    for _ in prange(thread_count()):
        j = next_task(tasks)
        while j < whole.shape[0]:
            t = whole[j]
            n = table[t, NUMEL]
            weights, updates = _first_pass(
                table, t, 0, n, scalar(lerp_weights[t], witness), one, var_floor, cap, maximize, sums, pos_sq[:0], unshared, False, witness
            )  # fmt: skip
            if table[t, FLAG] != VECTOR:
                lines, inner = table[t, LINES], table[t, INNER]
                factored = True
                for b in range(_matrices(table, t)):
                    at, pat = line_at[t] + b * lines, pos_at[t] + b * inner
                    squares = _factors(
                        table, t, b, line_sq[at : at + lines], pos_sq[pat : pat + inner], pos_wsq[pat : pat + inner],
                        scalar(lerp_weights[t], witness), one, row_floor, cap, line_scale[at : at + lines], pos_scale[pat : pat + inner], witness,
                    )  # fmt: skip
                    factored = factored and squares >= 0
                    updates += squares
                if not factored:
                    updates = _update_squares(table, t, 0, n, line_scale, pos_scale, line_at, pos_at, cap, maximize, False, witness)
            step = add_scalar(_step_scale(n, steps[t], weights, updates, lr, lr_f32, eps2, d, witness), witness)
            _step_segment(table, t, 0, n, step, line_scale, pos_scale, line_at, pos_at, var_floor, cap, maximize, decays, keep, witness)
            j = next_task(tasks)

    # The others, split into chunk segments over all threads, pass by pass.
    widest = 0
    for t in rest:
        if table[t, FLAG] != VECTOR:
            widest = max(widest, table[t, INNER])
    segments, starts = plan_rows(table, rest, max(grain, LINES_PER_CHUNK * widest))
    nseg = segments.shape[0]
    # each matrix segment's slots: the positions of a partial matrix at either end, plain sums then weighted
    slot_at = np.empty(nseg + 1, np.int64)
    slot_at[0] = 0
    for s in range(nseg):
        t = segments[s, 0]
        slot_at[s + 1] = slot_at[s] + (4 * table[t, INNER] if table[t, FLAG] != VECTOR else 0)
    line_part = np.empty((nseg, 2), np.float64)
    pos_part = np.empty(slot_at[nseg], np.float64)
    partial = np.empty((nseg, 2), np.float64)

    # pass 1: Σθ²; vectors: V̂ and Σu²; matrices: Σg² along lines and across them, Σ g²/R across them
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                partial[s, 0], partial[s, 1] = _first_pass(
                    table, t, lo, n, scalar(lerp_weights[t], witness), one, var_floor, cap, maximize,
                    sums, pos_part[slot_at[s] : slot_at[s + 1]], line_part[s], True, witness,
                )  # fmt: skip
            c = next_task(tasks)

    # pass 2: per matrix (taken by the segment holding its first element); its Σu² but of partial lines, or −1
    factored_squares = np.empty(line_at[count], np.float64)  # at the matrix's first line
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                if table[t, FLAG] == VECTOR:
                    continue
                lines, inner = table[t, LINES], table[t, INNER]
                size = lines * inner
                for b in range((lo + size - 1) // size, (lo + n - 1) // size + 1):
                    at, pat = line_at[t] + b * lines, pos_at[t] + b * inner
                    line_sums = line_sq[at : at + lines]
                    pos_sums = pos_sq[pat : pat + inner]
                    weighted = pos_wsq[pat : pat + inner]
                    if (b + 1) * size > lo + n:
                        # shared with the next segments: the sums of the lines and positions they hold part of
                        for j in range(inner):
                            pos_sums[j] = 0.0
                            weighted[j] = 0.0
                        for s2 in range(s, _sharing(segments, s, t, (b + 1) * size)):
                            first, first_partial, last, last_partial = _ends(segments[s2, 1], segments[s2, 2], inner)
                            if first_partial and first // lines == b:
                                line_sums[first - b * lines] = 0.0
                            if last_partial and last // lines == b:
                                line_sums[last - b * lines] = 0.0
                        for s2 in range(s, _sharing(segments, s, t, (b + 1) * size)):
                            first, first_partial, last, last_partial = _ends(segments[s2, 1], segments[s2, 2], inner)
                            if first_partial and first // lines == b:
                                line_sums[first - b * lines] += line_part[s2, 0]
                            if last_partial and last // lines == b:
                                line_sums[last - b * lines] += line_part[s2, 1]
                            head, head_partial, tail, tail_partial = _ends(segments[s2, 1], segments[s2, 2], size)
                            slots = pos_part[slot_at[s2] : slot_at[s2 + 1]]
                            if head_partial and head == b:
                                for j in range(inner):
                                    pos_sums[j] += slots[j]
                                    weighted[j] += slots[2 * inner + j]
                            if tail_partial and tail == b:
                                for j in range(inner):
                                    pos_sums[j] += slots[inner + j]
                                    weighted[j] += slots[3 * inner + j]
                    factored_squares[at] = _factors(
                        table, t, b, line_sums, pos_sums, weighted, scalar(lerp_weights[t], witness), one, row_floor, cap,
                        line_scale[at : at + lines], pos_scale[pat : pat + inner], witness,
                    )  # fmt: skip
            c = next_task(tasks)

    # per matrix tensor: the Σu² pass 2 found, or −1 if a matrix of it left Σu² to pass 3
    factored = np.empty(count, np.float64)
    for t in rest:
        lines = table[t, LINES]
        factored[t] = 0.0
        for b in range(_matrices(table, t)):
            squares = factored_squares[line_at[t] + b * lines]
            factored[t] = -1.0 if factored[t] < 0 or squares < 0 else factored[t] + squares

    # pass 3: the Σu² of every partial line, or of every element of a matrix left to it
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                if table[t, FLAG] == VECTOR:
                    continue
                if factored[t] >= 0:
                    partial[s, 1] += _update_squares(table, t, lo, n, line_scale, pos_scale, line_at, pos_at, cap, maximize, True, witness)
                else:
                    partial[s, 1] = _update_squares(table, t, lo, n, line_scale, pos_scale, line_at, pos_at, cap, maximize, False, witness)
            c = next_task(tasks)

    # α/clip per tensor
    totals = tensor_sums(partial, segments, count)
    step_scales = np.empty(count, np.float64)
    for t in rest:
        if factored[t] > 0:
            totals[t, 1] += factored[t]
        step_scales[t] = _step_scale(table[t, NUMEL], steps[t], totals[t, 0], totals[t, 1], lr, lr_f32, eps2, d, witness)

    # pass 4: θ ← θ(1 − γλ) − α/clip · u
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                step = add_scalar(step_scales[t], witness)
                _step_segment(table, t, lo, n, step, line_scale, pos_scale, line_at, pos_at, var_floor, cap, maximize, decays, keep, witness)
            c = next_task(tasks)


# ----------------------------------------------------------------------------- Python side


def _layout(p: Tensor, entry) -> int:
    """FLAG: a vector (fewer than two dimensions), a matrix stored row by row, or one stored column by column."""
    if p.dim() < 2:
        return VECTOR
    return MATRIX if p.is_contiguous() else TRANSPOSED


_PLAIN = (Tensor, torch.nn.Parameter)


def _factor_fits(factor, p: Tensor, shape: tuple) -> bool:
    return (
        type(factor) in _PLAIN
        and factor.dtype is p.dtype
        and factor.is_cpu
        and factor.layout is torch.strided
        and factor.shape == shape
        and factor.is_contiguous()
    )


def _own_columns(p: Tensor, entry, dry_run: bool):
    """This module's columns of ``p``'s row and the state tensors they point to -- or why the kernel cannot take ``p``."""
    if p.numel() == 0:
        return "an empty parameter (the reference rule raises, as torch's does)"
    if p.dim() < 2:
        if dry_run and not entry:
            return [0, 0, 0, 1, p.numel()], ()
        variance = entry.get("variance")
        reason = why_not(p, p.grad if p.grad is not None else p, (variance,))
        if reason is not None:
            return reason
        return [variance.data_ptr(), 0, 0, 1, p.numel()], (variance,)
    transposed = not p.is_contiguous()
    if transposed and not p.transpose(-1, -2).is_contiguous():
        return "a layout other than contiguous, or contiguous but for the last two dimensions swapped"
    lines, inner = (p.shape[-1], p.shape[-2]) if transposed else (p.shape[-2], p.shape[-1])
    if dry_run and not entry:
        return [0, 0, 0, lines, inner], ()
    row_var, col_var = entry.get("row_var"), entry.get("col_var")
    if not (_factor_fits(row_var, p, (*p.shape[:-1], 1)) and _factor_fits(col_var, p, (*p.shape[:-2], 1, p.shape[-1]))):
        return "row_var / col_var are not contiguous tensors of the parameter's dtype, shaped as Adafactor makes them"
    line_var, pos_var = (col_var, row_var) if transposed else (row_var, col_var)
    return [0, line_var.data_ptr(), pos_var.data_ptr(), lines, inner], (row_var, col_var)


def _lr_reason(options: dict) -> str | None:
    lr = options["lr"]
    if isinstance(lr, Tensor) and lr.dtype not in (torch.float32, torch.float64):
        return f"lr is a {lr.dtype} tensor (the reference's scalar arithmetic runs in that dtype)"
    return None


def _own_state(entry) -> tuple:
    """The state tensors this module's columns point to: a vector's ``variance``, a matrix's two factors."""
    variance = entry.get("variance")
    return (variance,) if variance is not None else (entry.get("row_var"), entry.get("col_var"))


def _own_addresses(rows: list) -> list[int]:
    """What :func:`_own_state` gave, as a table's rows hold it: one address per vector, ``row_var``'s then ``col_var``'s per matrix."""
    out: list[int] = []
    for row in rows:
        if row[FLAG] == VECTOR:
            out.append(row[VARIANCE])
        elif row[FLAG] == MATRIX:
            out += (row[LINE_VAR], row[POS_VAR])
        else:  # transposed: row_var lies across the lines
            out += (row[POS_VAR], row[LINE_VAR])
    return out


def _unchanged(out, params, state) -> bool:
    """Whether a recalled table's own columns still hold: the same state tensors, at the same addresses.

    The check :class:`Reuse` makes of other kernels' state buffers, whose
    columns ``gather`` lays out; without it every step would judge every
    factor afresh (about 7 µs per parameter with cold caches).
    """
    (batch,) = out.batches.values()
    if len(batch.rows[0]) == VARIANCE:  # built this step: no columns of ours yet (and no table to read)
        return False
    held = [tensor for entry in map(state.get, params) for tensor in _own_state(entry)]
    before = batch.written[2 * len(params) :]
    return (
        len(held) == len(before)
        and all(map(operator.is_, held, before))
        and list(map(Tensor.data_ptr, held)) == _own_addresses(batch.table().tolist())
    )


def gather_(params, state, options: dict, dry_run: bool = False, reuse: Reuse | None = None):
    """Sort the parameters (kernel batches, and the ``rest`` left to the reference rule); FLAG is the layout.

    gather() checks each parameter, its gradient and its step; this adds each
    row's state addresses and matrix shape.  A recalled table keeps them while
    the state tensors are the same (:func:`_unchanged`); otherwise they are
    judged and written afresh (``load_state_dict`` replaces them).
    """
    reason = _lr_reason(options)
    if reason is not None:
        out = gather((), state)
        out.rest, out.reasons = list(params), [reason]
        return out
    out = gather(params, state, scalars=SCALARS, flag=_layout, dry_run=dry_run, reuse=reuse)
    if reuse is not None and out is reuse.gathered and not out.rest and _unchanged(out, params, state):
        return out
    left = set(map(id, out.rest))
    taken = [p for p in params if id(p) not in left]
    found = [_own_columns(p, state.get(p) or {}, dry_run) for p in taken]
    failed = [(p, why) for p, why in zip(taken, found) if isinstance(why, str)]
    if failed:
        if dry_run:
            for p, why in failed:
                out.leave(p, why)
            return out
        if reuse is not None:
            reuse.gathered = None  # not a table to recall
        bad = {id(p) for p, _ in failed}
        out = gather([p for p in params if id(p) not in bad], state, scalars=SCALARS, flag=_layout)
        for p, why in failed:
            out.leave(p, why)
        left = set(map(id, out.rest))
        pairs = [(p, cols) for p, cols in zip(taken, found) if id(p) not in left and not isinstance(cols, str)]
    else:
        pairs = list(zip(taken, found))
    if dry_run:
        return out
    for dtype, batch in out.batches.items():
        mine = [cols for p, cols in pairs if p.dtype is dtype]
        if len(batch.rows[0]) == VARIANCE:  # built this step
            for row, (cols, _) in zip(batch.rows, mine):
                row.extend(cols)
        else:  # recalled: gather wrote each parameter and its step into ``written`` first
            batch.table()[:, VARIANCE:] = [cols for cols, _ in mine]
            del batch.written[2 * len(batch.rows) :]
        for _, held in mine:
            batch.written.extend(held)
    return out


def run_(gathered, options: dict) -> None:
    """One Adafactor step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr = as_scalar(options["lr"])
    weight_decay = options["weight_decay"]
    # θ ← θ(1 − γλ): the reference's own arithmetic (a float32 tensor when lr is one)
    decay = float(1 - lr * weight_decay) if weight_decay != 0 else 1.0
    hyper = [
        float(lr),
        isinstance(lr, Tensor) and lr.dtype == torch.float32,
        float(options["beta2_decay"]),
        float(options["eps1"]),
        float(options["eps2"]),
        float(options["d"]),
        decay,
        bool(options["maximize"]),
        0.0,  # the elements of the largest tensor one thread takes whole (per batch)
    ]
    for batch in gathered.batches.values():
        # pass 4 reads θ and g again
        hyper[-1] = whole_tensor_limit(2, batch.witness.itemsize)
        launch(_adafactor_kernel, batch, hyper)
