"""L-BFGS on the CPU: the passes of :mod:`fastoptim.algorithms.lbfgs` over its flat vectors, fused.

torch.optim.LBFGS runs every dot product and every ``add_`` of an iteration as
its own pass over n elements: the two-loop recursion alone makes 10m + 4
passes for m stored pairs, the new pair 8, and its ``abs().max()`` tests run
at a third of the memory's speed.  Here each pass does what can be done
before the next reduction must finish:

* :func:`abs_max` -- ``max|x|`` as the largest magnitude bit pattern (an
  integer max: exact, NaN wins as in torch, one read at memory speed);
* :func:`new_pair` -- ``y = g − g_prev``, ``s = t d`` and the sums ``yᵀs``,
  ``yᵀy`` in one pass (5 vectors instead of 8);
* :func:`two_loop_direction` -- the recursion in 2m + 1 passes, each
  ``q ← c (q + a v)`` fused with the dot product the next coefficient
  needs, the last one with ``gᵀd`` (8m + 2 vectors instead of 10m + 6).

The dot products are summed in float64 (four running sums per chunk, chunks
added in order) rather than in torch's order and precision, so the results
agree with the torch-op path to rounding, like the norms of LAMB and LARS.
They do not depend on the thread count: the chunks are fixed at
:data:`CHUNK` elements.  The scalars that come out (``ρ``, ``α``, ``β``,
``H_diag``, ``gᵀd``) are rounded to the vectors' dtype and combined as
torch combines them, so the state holds what torch's would, to rounding.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange
from torch import Tensor

from ._launch import FASTMATH, kernel, launch_flat, next_task, scalar, task_counter, thread_count

#: elements per chunk of a pass: a thread's unit of work, and of the partial sums
CHUNK = 1 << 16

#: a pass's loop over one chunk: a function of its own, compiled with the kernels' fast-math flags
_chunk_loop = numba.njit(fastmath=set(FASTMATH), nogil=True, error_model="numpy")


@numba.njit(inline="always")
def _chunk_bounds(j, n):
    lo = j * CHUNK
    return lo, min(n, lo + CHUNK)


@numba.njit(inline="always")
def _in_order(partial):
    total = 0.0
    for j in range(partial.shape[0]):
        total += partial[j]
    return total


# ----------------------------------------------------------------------------- max |x|


@numba.njit(inline="always")
def _magnitude_bits(bits, j, n, mask):
    lo, hi = _chunk_bounds(j, n)
    bits = bits[lo:hi]  # a loop from 0: see _chunked_sums
    top = bits[0] & mask
    for i in range(bits.shape[0]):
        magnitude = bits[i] & mask
        top = magnitude if magnitude > top else top
    return top


@kernel
def _abs_max_bits(bits, mask, partial):
    """The largest ``bits[i] & mask``: with the sign bit masked off, IEEE magnitudes order as integers, NaNs above inf."""
    n = bits.shape[0]
    count = (n + CHUNK - 1) // CHUNK
    partial = partial[0, :count].view(bits.dtype)[:count]  # float64 scratch seen as integers
    tasks = task_counter()
    for _ in prange(thread_count()):
        j = next_task(tasks)
        while j < count:
            partial[j] = _magnitude_bits(bits, j, n, mask)
            j = next_task(tasks)
    return partial.max()


def abs_max(x: Tensor) -> Tensor:
    """``x.abs().max()`` of a non-empty contiguous 1-D float32/float64 tensor, as a 0-dim tensor of its dtype."""
    x = x.detach()
    if x.dtype == torch.float32:
        bits, mask, as_float = x.view(torch.int32), np.int32(0x7FFFFFFF), np.int32
    else:
        bits, mask, as_float = x.view(torch.int64), np.int64(0x7FFFFFFFFFFFFFFF), np.int64
    top = launch_flat(_abs_max_bits, x.numel(), bits.numpy(), mask, _partials(x.numel()))
    return torch.from_numpy(np.array([as_float(top)])).view(x.dtype).reshape(())


# ----------------------------------------------------------------------------- fused passes


@_chunk_loop
def _pair_chunk(lo, hi, args):
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
    return ys, yy


@_chunk_loop
def _negate_chunk(lo, hi, args):
    q, g, z = args
    q, g, z = q[lo:hi], g[lo:hi], z[lo:hi]
    zq = 0.0
    for i in range(q.shape[0]):
        q[i] = -g[i]
        zq += np.float64(z[i]) * np.float64(q[i])
    return zq, 0.0


@_chunk_loop
def _axpy_chunk(lo, hi, args):
    q, a, v, c, z = args
    q, v, z = q[lo:hi], v[lo:hi], z[lo:hi]
    zq = 0.0
    for i in range(q.shape[0]):
        q[i] = (q[i] + a * v[i]) * c
        zq += np.float64(z[i]) * np.float64(q[i])
    return zq, 0.0


@numba.njit(inline="always")
def _chunked_sums(chunk_sums, n, args, partial):
    """Both sums ``chunk_sums(lo, hi, args)`` returns, over the chunks of ``0 .. n-1`` on all threads, added in chunk order.

    ``chunk_sums`` is a separate (not inlined) function whose loop runs from
    0 over ``array[lo:hi]`` slices: so LLVM vectorizes it.  (Inlined into the
    parallel loop, or indexing ``array[lo + i]``, which keeps numba's
    negative-index check in the loop, it ran 2-5x slower.)
    """
    count = (n + CHUNK - 1) // CHUNK
    first, second = partial[0, :count], partial[1, :count]
    tasks = task_counter()
    for _ in prange(thread_count()):
        j = next_task(tasks)
        while j < count:
            lo, hi = _chunk_bounds(j, n)
            first[j], second[j] = chunk_sums(lo, hi, args)
            j = next_task(tasks)
    return _in_order(first), _in_order(second)


@kernel
def _pair_pass(y, s, g, g_prev, d, t, partial):
    return _chunked_sums(_pair_chunk, y.shape[0], (y, s, g, g_prev, d, scalar(t, y)), partial)


@kernel
def _negate_pass(q, g, z, partial):
    return _chunked_sums(_negate_chunk, q.shape[0], (q, g, z), partial)[0]


@kernel
def _axpy_pass(q, a, v, c, z, partial):
    return _chunked_sums(_axpy_chunk, q.shape[0], (q, scalar(a, q), v, scalar(c, q), z), partial)[0]


_partial_sums: list[np.ndarray] = [np.empty((2, 0))]


def _partials(n: int) -> np.ndarray:
    """A ``(2, chunks)`` float64 scratch array for the per-chunk results of a pass over ``n`` elements.

    Kept between passes (the largest so far), so that a step allocates
    nothing: launches run one at a time (``launch_flat``'s lock), and each
    pass has reduced its partial results before it returns.
    """
    count = (n + CHUNK - 1) // CHUNK
    if _partial_sums[0].shape[1] < count:
        _partial_sums[0] = np.empty((2, count))
    return _partial_sums[0]


def _array(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def new_pair(y: Tensor, s: Tensor, g: Tensor, g_prev: Tensor, d: Tensor, t: float) -> tuple[float, float]:
    """``y ← g − g_prev``, ``s ← t d`` (into ``y``, ``s``) and ``(yᵀs, yᵀy)`` in float64, in one pass."""
    sums = launch_flat(_pair_pass, y.numel(), _array(y), _array(s), _array(g), _array(g_prev), _array(d), float(t), _partials(y.numel()))
    torch._C._increment_version([y, s])
    return sums


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
