"""L-BFGS on the CPU: the passes of :mod:`fastoptim.algorithms.lbfgs` over its flat vectors, fused.

torch.optim.LBFGS runs every dot product and every ``add_`` of an iteration as
its own pass over n elements: the two-loop recursion alone makes 10m + 4
passes for m stored pairs, the new pair 8, and its ``abs().max()`` tests run
at a third of the memory's speed.  Here:

* :func:`abs_max` -- ``max|x|`` as the largest magnitude bit pattern (an
  integer max: exact, NaN wins as in torch, one read at memory speed);
* :func:`pair_with_dots` -- ``y = g − g_prev``, ``s = t d`` (written over
  ``g_prev`` and ``d``), ``yᵀs``, ``yᵀy``, ``gᵀg`` and every dot product of
  ``y``, ``s`` and ``g`` with the stored pairs that stay, in one pass
  (:class:`PairGram` keeps the pairs' products with each other);
* :class:`PairGram`'s :meth:`~PairGram.coefficients` -- the two-loop
  recursion on those k² + 2k numbers, :meth:`~PairGram.slope` -- ``gᵀd``
  from them, and :func:`combine` -- the direction ``−h g + Σ (a_j y_j + b_j s_j)``
  and ``max|d|`` in one more pass, which with a fixed step also moves the
  parameters by ``t d`` (the slope says beforehand whether the step goes
  ahead).  Two passes an iteration, 4m + 5 vectors with a full history
  (4m + 7 with the step's θ), where torch's ops make 4m + 7 passes and
  10m + 14 vectors;
* :func:`new_pair` and :func:`two_loop_direction` -- the same without the
  products among the pairs, for a history that came from a state_dict
  (the recursion in 2m + 1 passes, each ``q ← c (q + a v)`` fused with the
  dot product the next coefficient needs).

The dot products are float64 sums over fixed chunks of :data:`CHUNK`
elements, added in chunk order, rather than torch's order and precision: the
results agree with the torch-op path to rounding, like the norms of LAMB and
LARS, and do not depend on the thread count.  The scalars that come out
(``ρ``, ``α``, ``β``, ``H_diag``, ``gᵀd``) are rounded to the vectors' dtype
and combined as torch combines them, so the state holds what torch's would,
to rounding.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir as llvm_ir
from numba import prange, types
from numba.extending import intrinsic, overload
from torch import Tensor

from ._launch import FASTMATH, column, kernel, launch_flat, next_task, scalar, task_counter, thread_count

#: elements per chunk of a pass: a thread's unit of work, and of the partial sums
CHUNK = 1 << 16

#: a pass's loop over one chunk: a function of its own, compiled with the kernels' fast-math flags
_chunk_loop = numba.njit(fastmath=set(FASTMATH), nogil=True, error_model="numpy")


@numba.njit(inline="always")
def _chunk_bounds(j, n):
    lo = j * CHUNK
    return lo, min(n, lo + CHUNK)


# ----------------------------------------------------------------------------- max |x|


def _magnitude(x, mask):
    """``x & mask`` in ``x``'s own integer type (numba widens int32 arithmetic to int64: half the lanes per vector)."""


@overload(_magnitude, inline="always")
def _magnitude_overload(x, mask):
    if x == types.int32:
        return lambda x, mask: np.int32(x & mask)
    return lambda x, mask: x & mask


@numba.njit(inline="always")
def _largest_magnitude_bits(bits, mask):
    """The largest ``bits[i] & mask`` (an integer max: LLVM vectorizes it, where a float max that keeps NaN it does not)."""
    top = _magnitude(bits[0], mask)
    for i in range(bits.shape[0]):
        top = max(top, _magnitude(bits[i], mask))
    return top


@numba.njit(inline="always")
def _magnitude_bits(bits, j, n, mask):
    lo, hi = _chunk_bounds(j, n)
    return _largest_magnitude_bits(bits[lo:hi], mask)  # a loop from 0: see _chunked_sums


@intrinsic
def _float_from_bits(typingctx, bits, witness):
    """The float whose bit pattern is ``bits``: float32 for an int32 ``witness`` array, float64 for int64."""
    if witness.dtype == types.int32:
        sig, width, float_type = types.float32(bits, witness), 32, llvm_ir.FloatType()
    elif witness.dtype == types.int64:
        sig, width, float_type = types.float64(bits, witness), 64, llvm_ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if value.type.width != width:
            value = builder.trunc(value, llvm_ir.IntType(width))
        return builder.bitcast(value, float_type)

    return sig, codegen


@kernel
def _abs_max_bits(bits, mask, partial):
    """The largest ``bits[i] & mask``: with the sign bit masked off, IEEE magnitudes order as integers, NaNs above inf."""
    n = bits.shape[0]
    count = (n + CHUNK - 1) // CHUNK
    partial = partial.view(bits.dtype)[:count]  # float64 scratch seen as integers
    tasks = task_counter()
    for _ in prange(thread_count()):
        j = next_task(tasks)
        while j < count:
            partial[j] = _magnitude_bits(bits, j, n, mask)
            j = next_task(tasks)
    return partial.max()


def abs_max(x: Tensor) -> Tensor:
    """``x.abs().max()`` of a non-empty contiguous 1-D float32/float64 tensor, as a 0-dim tensor of its dtype."""
    bits, mask = _bits(x)
    top = launch_flat(_abs_max_bits, x.numel(), bits, mask, _partials(x.numel())[:, 0])
    return _as_float(top, bits.dtype, x.dtype)


@_chunk_loop
def _copy_from(piece, out, unused):
    """``out ← piece`` (a tensor's elements into their place in the flat vector)."""
    for i in range(out.shape[0]):
        out[i] = piece[i]


@numba.njit(inline="always")
def _over_pieces(tensors, starts, lo, hi, flat, apply, arg):
    """``apply(piece, flat[k:end], arg)`` for each run of ``flat[lo:hi]`` that lies in one tensor.

    Tensor ``p`` (its address ``tensors[0, p]``) holds elements
    ``starts[p] .. starts[p+1]-1`` of the flat vector; ``piece`` is its part
    of the run (:func:`pieces` builds the table).
    """
    p = np.searchsorted(starts, lo, side="right") - 1  # the tensor holding element lo
    k = lo
    while k < hi:
        end = min(hi, starts[p + 1])
        apply(column(tensors, 0, p, k - starts[p], end - k, flat), flat[k:end], arg)
        k = end
        p += 1


def pieces(tensors: list[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(1, T)`` table of the tensors' addresses and their ``starts`` in a flat vector they fill one after another."""
    starts = np.zeros(len(tensors) + 1, np.int64)
    np.cumsum([t.numel() for t in tensors], out=starts[1:])
    return np.array([[t.data_ptr() for t in tensors]], dtype=np.int64).reshape(1, len(tensors)), starts


@kernel
def _gather_abs_max_bits(out, sources, starts, bits, mask, partial):
    """Source ``t`` (its address ``sources[0, t]``) into ``out[starts[t] : starts[t + 1]]``, and the largest ``bits[i] & mask`` of ``out``.

    Each chunk of ``out`` is copied from the sources it spans, then its max
    is taken from its bits while they are in cache.
    """
    n = out.shape[0]
    count = (n + CHUNK - 1) // CHUNK
    partial = partial.view(bits.dtype)[:count]
    tasks = task_counter()
    for _ in prange(thread_count()):
        j = next_task(tasks)
        while j < count:
            lo, hi = _chunk_bounds(j, n)
            _over_pieces(sources, starts, lo, hi, out, _copy_from, 0)
            partial[j] = _magnitude_bits(bits, j, n, mask)
            j = next_task(tasks)
    return partial.max()


def gather_abs_max(out: Tensor, sources: list[Tensor]) -> Tensor:
    """Copy the contiguous ``sources`` one after another into the 1-D ``out`` (same dtype, as many elements) and return ``out.abs().max()``.

    One pass: each chunk's max is taken while the chunk is in cache (exact,
    NaN wins, as :func:`abs_max`).
    """
    addresses, starts = pieces(sources)
    bits, mask = _bits(out)
    top = launch_flat(_gather_abs_max_bits, out.numel(), _array(out), addresses, starts, bits, mask, _partials(out.numel())[:, 0])
    torch._C._increment_version([out])
    return _as_float(top, bits.dtype, out.dtype)


def _as_float(top, bits_dtype, dtype: torch.dtype) -> Tensor:
    """The magnitude bits ``top`` as a 0-dim tensor of ``dtype``."""
    return torch.from_numpy(np.array([top], dtype=bits_dtype)).view(dtype).reshape(())


def _bits(x: Tensor) -> tuple[np.ndarray, np.integer]:
    """``x``'s elements as integers, and the mask that clears their sign bit."""
    if x.dtype == torch.float32:
        return x.detach().view(torch.int32).numpy(), np.int32(0x7FFFFFFF)
    return x.detach().view(torch.int64).numpy(), np.int64(0x7FFFFFFFFFFFFFFF)


# ----------------------------------------------------------------------------- fused passes


@_chunk_loop
def _pair_chunk(lo, hi, args, sums):
    y, s, g, g_prev, d, t = args
    y, s, g, g_prev, d = y[lo:hi], s[lo:hi], g[lo:hi], g_prev[lo:hi], d[lo:hi]
    ys = 0.0
    yy = 0.0
    for i in range(y.shape[0]):
        y[i] = g[i] - g_prev[i]
        s[i] = d[i] * t
        yi = np.float64(y[i])
        ys += yi * np.float64(s[i])
        yy += yi * yi
    sums[0] = ys
    sums[1] = yy


@_chunk_loop
def _negate_chunk(lo, hi, args, sums):
    q, g, z = args
    q, g, z = q[lo:hi], g[lo:hi], z[lo:hi]
    zq = 0.0
    for i in range(q.shape[0]):
        q[i] = -g[i]
        zq += np.float64(z[i]) * np.float64(q[i])
    sums[0] = zq


@_chunk_loop
def _axpy_chunk(lo, hi, args, sums):
    q, a, v, c, z = args
    q, v, z = q[lo:hi], v[lo:hi], z[lo:hi]
    zq = 0.0
    for i in range(q.shape[0]):
        q[i] = (q[i] + a * v[i]) * c
        zq += np.float64(z[i]) * np.float64(q[i])
    sums[0] = zq


@numba.njit(inline="always")
def _pair_terms(y, s, g, y_j, s_j):
    """One element's terms of s_newᵀy_j, y_newᵀs_j, y_newᵀy_j, gᵀs_j and gᵀy_j, in float64."""
    u, v = np.float64(y_j), np.float64(s_j)
    return s * u, y * v, y * u, g * v, g * u


@numba.njit(inline="always")
def _added(totals, terms):
    """Five running sums, each with its term of one element added (as separate sums: LLVM vectorizes each)."""
    return (totals[0] + terms[0], totals[1] + terms[1], totals[2] + terms[2], totals[3] + terms[3], totals[4] + terms[4])


@numba.njit(inline="always")
def _new_pair_element(y_over_g_prev, s_over_d, g, t, i, own):
    """Element ``i`` of ``y = g − g_prev`` and ``s = t d`` written over ``g_prev`` and ``d``; ``own`` (yᵀs, yᵀy, gᵀs, gᵀy, gᵀg) with its terms added.

    Returns ``(y_i, s_i, g_i)`` in float64 and the new ``own``.
    """
    y_over_g_prev[i] = g[i] - y_over_g_prev[i]
    s_over_d[i] = s_over_d[i] * t
    yi, si, gi = np.float64(y_over_g_prev[i]), np.float64(s_over_d[i]), np.float64(g[i])
    return yi, si, gi, (own[0] + yi * si, own[1] + yi * yi, own[2] + gi * si, own[3] + gi * yi, own[4] + gi * gi)


@_chunk_loop
def _new_pair_and_one(y_over_g_prev, s_over_d, g, t, y_a, s_a, sums):
    """The new pair (:func:`_new_pair_element`) and its five dot products with one stored pair (``sums[0:10]``).

    ``y`` is written over ``g_prev`` and ``s`` over ``d``: no memory is
    fetched only to be overwritten, and each array has one name (LLVM runs a
    loop over arrays it finds overlapping at run time unvectorized).
    """
    own = (0.0, 0.0, 0.0, 0.0, 0.0)
    a = (0.0, 0.0, 0.0, 0.0, 0.0)
    for i in range(g.shape[0]):
        yi, si, gi, own = _new_pair_element(y_over_g_prev, s_over_d, g, t, i, own)
        a = _added(a, _pair_terms(yi, si, gi, y_a[i], s_a[i]))
    sums[0], sums[1], sums[2], sums[3], sums[4] = own
    sums[5], sums[6], sums[7], sums[8], sums[9] = a


@_chunk_loop
def _new_pair_and_two(y_over_g_prev, s_over_d, g, t, y_a, s_a, y_b, s_b, sums):
    """:func:`_new_pair_and_one` with two stored pairs (``sums[0:15]``): one loop, the new pair's values used from registers."""
    own = (0.0, 0.0, 0.0, 0.0, 0.0)
    a = b = (0.0, 0.0, 0.0, 0.0, 0.0)
    for i in range(g.shape[0]):
        yi, si, gi, own = _new_pair_element(y_over_g_prev, s_over_d, g, t, i, own)
        a = _added(a, _pair_terms(yi, si, gi, y_a[i], s_a[i]))
        b = _added(b, _pair_terms(yi, si, gi, y_b[i], s_b[i]))
    sums[0], sums[1], sums[2], sums[3], sums[4] = own
    sums[5], sums[6], sums[7], sums[8], sums[9] = a
    sums[10], sums[11], sums[12], sums[13], sums[14] = b


@_chunk_loop
def _one_pair(y, s, g, y_a, s_a, sums):
    """The five dot products of the new ``y``, ``s`` and ``g`` with one stored pair (``sums[0:5]``)."""
    a = (0.0, 0.0, 0.0, 0.0, 0.0)
    for i in range(y.shape[0]):
        a = _added(a, _pair_terms(np.float64(y[i]), np.float64(s[i]), np.float64(g[i]), y_a[i], s_a[i]))
    sums[0], sums[1], sums[2], sums[3], sums[4] = a


@_chunk_loop
def _two_pairs(y, s, g, y_a, s_a, y_b, s_b, sums):
    """The five dot products of the new ``y``, ``s`` and ``g`` with each of two stored pairs (``sums[0:10]``)."""
    a = b = (0.0, 0.0, 0.0, 0.0, 0.0)
    for i in range(y.shape[0]):
        yi, si, gi = np.float64(y[i]), np.float64(s[i]), np.float64(g[i])
        a = _added(a, _pair_terms(yi, si, gi, y_a[i], s_a[i]))
        b = _added(b, _pair_terms(yi, si, gi, y_b[i], s_b[i]))
    sums[0], sums[1], sums[2], sums[3], sums[4] = a
    sums[5], sums[6], sums[7], sums[8], sums[9] = b


@_chunk_loop
def _pair_dots_chunk(lo, hi, args, sums):
    """The new pair with the first two stored pairs in one loop, then the others two at a time (an odd one alone).

    ``sums``: yᵀs, yᵀy, gᵀs, gᵀy, gᵀg, then per stored pair j s_newᵀy_j,
    y_newᵀs_j, y_newᵀy_j, gᵀs_j, gᵀy_j.  Each loop reads several streams
    at once, which runs closer to the memory's speed than one pass per pair,
    and the new pair's values are used from registers where they are made;
    the loops after the first read the chunk's ``y``, ``s`` and ``g`` from
    cache.  With no stored pair the first loop reads ``g`` as its pair; those
    sums land past the ``5 + 5k`` that are used (``sums`` has room for one
    more pair).  ``y`` and ``s`` are written over ``g_prev`` and ``d``.
    """
    y, s, g, t, old = args
    y, s, g = y[lo:hi], s[lo:hi], g[lo:hi]
    n = hi - lo
    k = old.shape[1]

    def pair(j):
        return column(old, 0, j, lo, n, g), column(old, 1, j, lo, n, g)

    y_0, s_0 = pair(0) if k else (g, g)
    if k >= 2:
        _new_pair_and_two(y, s, g, t, y_0, s_0, *pair(1), sums[0:15])
    else:
        _new_pair_and_one(y, s, g, t, y_0, s_0, sums[0:10])
    for j in range(2, k - 1, 2):
        _two_pairs(y, s, g, *pair(j), *pair(j + 1), sums[5 + 5 * j : 15 + 5 * j])
    if k > 2 and k % 2:
        _one_pair(y, s, g, *pair(k - 1), sums[5 + 5 * (k - 1) : 10 + 5 * (k - 1)])


@_chunk_loop
def _start_one_pair(out, g, c, y_a, s_a, a_a, b_a):
    """``out = c g + a_a y_a + b_a s_a``."""
    for i in range(out.shape[0]):
        out[i] = c * g[i] + a_a * y_a[i] + b_a * s_a[i]


@_chunk_loop
def _start_two_pairs(out, g, c, y_a, s_a, a_a, b_a, y_b, s_b, a_b, b_b):
    """``out = c g + a_a y_a + b_a s_a + a_b y_b + b_b s_b``, the terms added in that order."""
    for i in range(out.shape[0]):
        out[i] = c * g[i] + a_a * y_a[i] + b_a * s_a[i] + a_b * y_b[i] + b_b * s_b[i]


@_chunk_loop
def _add_two_pairs(out, y_a, s_a, a_a, b_a, y_b, s_b, a_b, b_b):
    """``out += a_a y_a + b_a s_a + a_b y_b + b_b s_b``, the terms added to ``out`` in that order.

    In place, not :func:`_start_two_pairs` with ``out`` as its ``g``: LLVM
    checks at run time whether the arrays overlap, and runs the loop
    unvectorized when they do.
    """
    for i in range(out.shape[0]):
        out[i] = out[i] + a_a * y_a[i] + b_a * s_a[i] + a_b * y_b[i] + b_b * s_b[i]


@numba.njit(inline="always")
def _direction_chunk(lo, hi, out, g, old, a, b, minus_h):
    """``out = −h g + Σ_j (a_j y_j + b_j s_j)`` over elements ``lo .. hi-1``.

    The terms are added in pair order, as one pass per pair would; the pairs
    are read two at a time (an odd count: the first alone, with ``−h g``).
    """
    out, g = out[lo:hi], g[lo:hi]
    n = hi - lo
    k = old.shape[1]

    def pair(j):
        return column(old, 0, j, lo, n, g), column(old, 1, j, lo, n, g), a[j], b[j]

    if k % 2:
        _start_one_pair(out, g, minus_h, *pair(0))
    else:
        _start_two_pairs(out, g, minus_h, *pair(0), *pair(1))
    for j in range(2 - k % 2, k, 2):
        _add_two_pairs(out, *pair(j), *pair(j + 1))


@numba.njit(inline="always")
def _largest_magnitude(bits, lo, hi, mask):
    """max|x| over ``lo .. hi-1`` of the float array whose bits are ``bits`` (exact, NaN if any), as float64."""
    chunk = bits[lo:hi]
    return np.float64(_float_from_bits(_largest_magnitude_bits(chunk, mask), chunk))


@_chunk_loop
def _add_scaled(theta, d, t):
    """``θ ← θ + t d`` (a parameter's piece moved by its part of the direction)."""
    for i in range(theta.shape[0]):
        theta[i] = theta[i] + t * d[i]


@_chunk_loop
def _combine_chunk(lo, hi, args, sums):
    """:func:`_direction_chunk`, then the chunk's max|out| (``sums[0]``) from its bits, still in cache."""
    out, g, old, a, b, minus_h, out_bits, mask = args
    _direction_chunk(lo, hi, out, g, old, a, b, minus_h)
    sums[0] = _largest_magnitude(out_bits, lo, hi, mask)


@_chunk_loop
def _combine_and_step_chunk(lo, hi, args, sums):
    """:func:`_combine_chunk`, then the parameters the chunk covers move by ``t`` times it: ``θ ← θ + t d``.

    Parameter ``p`` (its address ``params[0, p]``) holds elements
    ``starts[p] .. starts[p+1]-1`` of the flat vector; the chunk's direction
    is read from cache, so the step costs θ's read and write only.
    """
    out, g, old, a, b, minus_h, out_bits, mask, params, starts, t = args
    _direction_chunk(lo, hi, out, g, old, a, b, minus_h)
    sums[0] = _largest_magnitude(out_bits, lo, hi, mask)
    _over_pieces(params, starts, lo, hi, out, _add_scaled, t)


@numba.njit(inline="always")
def _chunked_sums(chunk_sums, n, args, partial):
    """The sums ``chunk_sums(lo, hi, args, row)`` writes into ``row``, over the chunks of ``0 .. n-1`` on all threads, added in chunk order.

    ``chunk_sums`` is a separate (not inlined) function whose loops run from
    0 over ``array[lo:hi]`` slices: so LLVM vectorizes them.  (Inlined into the
    parallel loop, or indexing ``array[lo + i]``, which keeps numba's
    negative-index check in the loop, they ran 2-5x slower.)  ``partial`` is
    scratch with a row per chunk.
    """
    count = (n + CHUNK - 1) // CHUNK
    tasks = task_counter()
    for _ in prange(thread_count()):
        j = next_task(tasks)
        while j < count:
            lo, hi = _chunk_bounds(j, n)
            chunk_sums(lo, hi, args, partial[j])
            j = next_task(tasks)
    totals = np.zeros(partial.shape[1])
    for j in range(count):
        for w in range(partial.shape[1]):
            totals[w] += partial[j, w]
    return totals


@kernel
def _pair_pass(y, s, g, g_prev, d, t, partial):
    return _chunked_sums(_pair_chunk, y.shape[0], (y, s, g, g_prev, d, scalar(t, y)), partial)


@kernel
def _negate_pass(q, g, z, partial):
    return _chunked_sums(_negate_chunk, q.shape[0], (q, g, z), partial)[0]


@kernel
def _axpy_pass(q, a, v, c, z, partial):
    return _chunked_sums(_axpy_chunk, q.shape[0], (q, scalar(a, q), v, scalar(c, q), z), partial)[0]


@kernel
def _pair_dots_pass(y_over_g_prev, s_over_d, g, t, old, partial):
    return _chunked_sums(_pair_dots_chunk, g.shape[0], (y_over_g_prev, s_over_d, g, scalar(t, g), old), partial)


@kernel
def _combine_pass(out, g, old, a, b, minus_h, out_bits, mask, params, starts, t, partial):
    n = out.shape[0]
    direction = (out, g, old, a, b, scalar(minus_h, out), out_bits, mask)
    if params.shape[1]:
        _chunked_sums(_combine_and_step_chunk, n, direction + (params, starts, scalar(t, out)), partial)
    else:
        _chunked_sums(_combine_chunk, n, direction, partial)  # rows: each chunk's max
    top = partial[0, 0]
    for j in range(1, (n + CHUNK - 1) // CHUNK):
        magnitude = partial[j, 0]
        if magnitude > top or magnitude != magnitude:  # a NaN stays (numba's max() skips NaN)
            top = magnitude
    return top


_scratch: list[np.ndarray] = [np.empty(0)]


def _partials(n: int, width: int = 1) -> np.ndarray:
    """A ``(chunks, width)`` float64 scratch array for the per-chunk sums of a pass over ``n`` elements.

    Its memory is kept between passes (the largest so far), so that a step
    allocates nothing of size n: launches run one at a time
    (``launch_flat``'s lock), and each pass adds up its rows before it returns.
    """
    size = (n + CHUNK - 1) // CHUNK * width
    if _scratch[0].size < size:
        _scratch[0] = np.empty(size)
    return _scratch[0][:size].reshape(-1, width)


def _array(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def new_pair(y: Tensor, s: Tensor, g: Tensor, g_prev: Tensor, d: Tensor, t: float) -> tuple[float, float]:
    """``y ← g − g_prev``, ``s ← t d`` (into ``y``, ``s``) and ``(yᵀs, yᵀy)`` in float64, in one pass."""
    ys, yy = launch_flat(_pair_pass, y.numel(), _array(y), _array(s), _array(g), _array(g_prev), _array(d), float(t), _partials(y.numel(), 2))
    torch._C._increment_version([y, s])
    return ys, yy


def two_loop_direction(g: Tensor, old_dirs: list[Tensor], old_stps: list[Tensor], ro: list[Tensor], H_diag, al: list, out: Tensor) -> Tensor:
    r"""``out ← −H g`` by the two-loop recursion in 2m + 1 fused passes; returns ``gᵀ out`` (a 0-dim tensor).

    The same recursion as :func:`fastoptim.algorithms.lbfgs.two_loop_direction`
    (``al`` gets the α's, as 0-dim tensors of the vectors' dtype), the passes
    cut so that each finishes one dot product:

    ========================  =========================================  =========
    pass                      writes                                     then sums
    ========================  =========================================  =========
    first                     q = −g                                     s_{m−1}ᵀq
    k = 1 .. m−1              q ← q − α_{m−k} y_{m−k}                    s_{m−1−k}ᵀq
    m                         r = h (q − α₀ y₀)                          y₀ᵀr
    m + 1 + i, i < m − 1      r ← r + (αᵢ − βᵢ) sᵢ                       y_{i+1}ᵀr
    2m                        r ← r + (α_{m−1} − β_{m−1}) s_{m−1}        gᵀr
    ========================  =========================================  =========

    At least one pair must be stored.
    """
    count = len(old_dirs)
    dtype = g.dtype
    q, grad = _array(out), _array(g)
    dirs, stps = [_array(y) for y in old_dirs], [_array(s) for s in old_stps]
    n = out.numel()
    partial = _partials(n)

    def rounded(value: float) -> Tensor:
        return torch.tensor(value, dtype=dtype)

    dot = launch_flat(_negate_pass, n, q, grad, stps[-1], partial)
    for i in range(count - 1, 0, -1):
        al[i] = rounded(dot) * ro[i]
        dot = launch_flat(_axpy_pass, n, q, -float(al[i]), dirs[i], 1.0, stps[i - 1], partial)
    al[0] = rounded(dot) * ro[0]
    dot = launch_flat(_axpy_pass, n, q, -float(al[0]), dirs[0], float(H_diag), dirs[0], partial)
    for i in range(count):
        be_i = rounded(dot) * ro[i]
        following = dirs[i + 1] if i + 1 < count else grad
        dot = launch_flat(_axpy_pass, n, q, float(al[i] - be_i), stps[i], 1.0, following, partial)
    torch._C._increment_version([out])
    return rounded(dot)


# ----------------------------------------------------------------------------- the direction from dot products


def _addresses(old_dirs: list[Tensor], old_stps: list[Tensor]) -> np.ndarray:
    """The ``(2, k)`` table of the stored pairs' addresses (row 0: y, row 1: s) that the passes read them through."""
    return np.array([[y.data_ptr() for y in old_dirs], [s.data_ptr() for s in old_stps]], dtype=np.int64).reshape(2, len(old_dirs))


def pair_with_dots(y, s, g, g_prev, d, t, old_dirs, old_stps) -> tuple[float, float, float, float, float, np.ndarray]:
    """:func:`new_pair` and, in the same pass, every dot product the next direction and its slope need.

    Returns ``(yᵀs, yᵀy, gᵀs, gᵀy, gᵀg, dots)``, ``dots[j]`` being
    ``(sᵀy_j, yᵀs_j, yᵀy_j, gᵀs_j, gᵀy_j)`` for the stored pair j (float64).
    ``y`` may be ``g_prev`` itself and ``s`` be ``d`` (both, or neither):
    the pair is then written over them.  Otherwise ``g_prev`` and ``d`` are
    first copied into ``y`` and ``s`` (two more passes; the optimizer does
    this only with buffers it must not write into: exported or loaded ones).
    """
    k = len(old_dirs)
    if (y is g_prev) != (s is d):
        raise ValueError("pair_with_dots writes y over g_prev and s over d together, or neither")
    if y is not g_prev:
        y.copy_(g_prev)
        s.copy_(d)
    sums = launch_flat(
        _pair_dots_pass, y.numel(), _array(y), _array(s), _array(g), float(t),
        _addresses(old_dirs, old_stps), _partials(y.numel(), 5 + 5 * (k + 1)),
    )
    torch._C._increment_version([y, s])
    return sums[0], sums[1], sums[2], sums[3], sums[4], sums[5 : 5 + 5 * k].reshape(k, 5)


def combine(out: Tensor, g: Tensor, old_dirs, old_stps, a: np.ndarray, b: np.ndarray, h: float, step=None) -> float:
    """``out ← −h g + Σ_j (a_j y_j + b_j s_j)`` (coefficients rounded to ``out``'s dtype) in one pass.

    Returns ``max|out|`` (exact; NaN if ``out`` holds one), which the step's
    "does the step still move θ" test needs.  The slope ``gᵀout`` comes
    from the dot products instead (:meth:`PairGram.slope`).  With ``step =
    (params, t)`` -- contiguous tensors of ``out``'s dtype that fill it, in
    order -- the same pass also moves them: ``θ ← θ + t·out``, the
    parameter update of a fixed step, without reading ``out`` again.
    """
    dtype = _array(out).dtype
    bits, mask = _bits(out)
    params, t = step if step is not None else ((), 0.0)
    addresses, starts = pieces(params)
    top = launch_flat(
        _combine_pass, out.numel(), _array(out), _array(g), _addresses(old_dirs, old_stps), a.astype(dtype), b.astype(dtype),
        -float(h), bits, mask, addresses, starts, float(t), _partials(out.numel()),
    )
    torch._C._increment_version([out, *params])
    return top


class PairGram:
    """The stored pairs' dot products ``S_ij = s_iᵀy_j`` and ``Y_ij = y_iᵀy_j``, kept as pairs come and go.

    With them and the gradient's ``gᵀs_j``, ``gᵀy_j``, the two-loop
    recursion becomes a recursion on k numbers (:meth:`coefficients`) and the
    direction one pass over the pairs (:func:`combine`) -- instead of 2k + 1
    passes.  Each new pair's row comes from the pass that forms it
    (:func:`pair_with_dots`).  Entries not known yet (a history loaded from a
    state_dict) are NaN until those pairs have left the history.
    """

    def __init__(self, old_dirs, old_stps) -> None:
        self.keys = self._keys(old_dirs, old_stps)
        k = len(old_dirs)
        self.S = np.full((k, k), np.nan)
        self.Y = np.full((k, k), np.nan)
        # the gradient the last pair's pass read, its gᵀs_j, gᵀy_j for the pairs now stored, and gᵀg
        self.gradient: Tensor | None = None
        self.g_s = self.g_y = np.empty(0)
        self.g_g = np.nan

    @staticmethod
    def _keys(old_dirs, old_stps) -> list:
        return [(id(y), y._version, id(s), s._version) for y, s in zip(old_dirs, old_stps)]

    def follows(self, old_dirs, old_stps) -> bool:
        """Whether this is the Gram of exactly these pairs, unchanged since."""
        return self.keys == self._keys(old_dirs, old_stps)

    def update(self, sums: tuple, gradient: Tensor, kept: bool, dropped: bool, old_dirs, old_stps, left_out: int = 0) -> None:
        """Take in the new pair's pass (``sums`` from :func:`pair_with_dots` over ``gradient``).

        The pair's row joins if it was ``kept``, and the oldest pair's leaves
        if ``dropped``; ``old_dirs``, ``old_stps`` are the history after that.
        ``left_out``: how many of the oldest stored pairs the pass did not
        read (their products are then unknown: NaN).
        """
        ys, yy, g_s, g_y, self.g_g, dots = sums
        if left_out:
            dots = np.concatenate([np.full((left_out, 5), np.nan), dots])
        self.g_s, self.g_y = dots[:, 3], dots[:, 4]
        if kept:
            k = self.S.shape[0]
            S = np.empty((k + 1, k + 1))
            Y = np.empty((k + 1, k + 1))
            S[:k, :k], Y[:k, :k] = self.S, self.Y
            S[k, :k], S[:k, k], S[k, k] = dots[:, 0], dots[:, 1], ys
            Y[k, :k] = Y[:k, k] = dots[:, 2]
            Y[k, k] = yy
            self.g_s, self.g_y = np.append(self.g_s, g_s), np.append(self.g_y, g_y)
            if dropped:
                S, Y = S[1:, 1:], Y[1:, 1:]
                self.g_s, self.g_y = self.g_s[1:], self.g_y[1:]
            self.S, self.Y = S, Y
        self.gradient = gradient
        self.keys = self._keys(old_dirs, old_stps)

    def ready_for(self, gradient: Tensor, old_dirs, old_stps) -> bool:
        """Whether :meth:`coefficients` can give the direction for ``gradient`` and these pairs."""
        return (
            self.gradient is gradient
            and self.follows(old_dirs, old_stps)
            and self.complete()
            and not (np.isnan(self.g_s).any() or np.isnan(self.g_y).any())
        )

    def complete(self) -> bool:
        """Whether every product among the stored pairs is known."""
        return not (np.isnan(self.S).any() or np.isnan(self.Y).any())

    def coefficients(self, ro: list[Tensor], h, al: list, dtype) -> tuple[np.ndarray, np.ndarray]:
        r"""The two-loop recursion on the dot products; returns ``(a, b)`` with ``d = −h g + Σ a_j y_j + b_j s_j``.

        With :math:`q_k = -g`, :math:`q_i = q_{i+1} - \alpha_i y_i` and
        :math:`r_0 = h q_0`, :math:`r_{i+1} = r_i + (\alpha_i - \beta_i) s_i`:

        .. math::

            s_i^\top q_{i+1} &= -g^\top s_i - \textstyle\sum_{j>i} \alpha_j\, s_i^\top y_j \\
            y_i^\top r_i &= h\,(-g^\top y_i - \textstyle\sum_j \alpha_j\, y_i^\top y_j)
                + \textstyle\sum_{j<i} (\alpha_j - \beta_j)\, s_j^\top y_i

        and :math:`\alpha_i = \rho_i\, s_i^\top q_{i+1}`, :math:`\beta_i = \rho_i\, y_i^\top r_i`,
        each dot rounded to the vectors' dtype and multiplied by ρ as torch
        does (``al`` gets the α's as 0-dim tensors).  Then ``a_j = −h α_j``,
        ``b_j = α_j − β_j``.
        """
        g_s, g_y = self.g_s, self.g_y
        k = len(g_s)
        h = float(h)
        alpha = np.zeros(k)
        for i in range(k - 1, -1, -1):
            al[i] = torch.tensor(-g_s[i] - alpha[i + 1 :] @ self.S[i, i + 1 :], dtype=dtype) * ro[i]
            alpha[i] = float(al[i])
        y_r = h * (-g_y - self.Y @ alpha)
        b = np.empty(k)
        for i in range(k):
            be_i = torch.tensor(y_r[i] + b[:i] @ self.S[:i, i], dtype=dtype) * ro[i]
            b[i] = float(al[i] - be_i)
        return -h * alpha, b

    def slope(self, a: np.ndarray, b: np.ndarray, h, dtype: torch.dtype) -> float:
        r"""``gᵀd`` for the direction :func:`combine` forms from ``(a, b)`` and ``h``, from the dot products.

        :math:`g^\top d = -h\, g^\top g + \sum_j (a_j\, g^\top y_j + b_j\, g^\top s_j)`, with
        ``a``, ``b`` and ``h`` rounded to the vectors' ``dtype`` as :func:`combine`
        uses them: it differs from the dot product of ``g`` with the stored
        direction by that direction's rounding, as a dot product summed in
        another order would (torch sums float32 in float32).
        """
        rounded = torch.empty(0, dtype=dtype).numpy().dtype
        a, b, minus_h = (np.asarray(v, rounded).astype(np.float64) for v in (a, b, -float(h)))
        return float(minus_h * self.g_g + a @ self.g_y + b @ self.g_s)
