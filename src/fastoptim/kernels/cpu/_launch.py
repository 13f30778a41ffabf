"""The multi-tensor machinery every CPU kernel shares, written once.

A group's tensors are never copied or concatenated.  Python gathers, per
parameter, the addresses of the parameter, its gradient, its state buffers and
its ``step`` counter into one small ``int64`` *table* (one row per parameter).
One numba launch then updates every tensor of the group:

* :func:`bump_steps` adds 1 to each ``step`` tensor in place (as ``step += 1``
  does in the reference rules) and returns the new values, so per-tensor
  scalars (bias corrections) follow each tensor's own step;
* :func:`plan` cuts the group's elements into chunks of about ``grain``
  elements -- small tensors are packed together, big ones split -- and the
  threads take chunks one at a time from a shared counter (:func:`next_task`),
  so they finish together whatever the mix of sizes or a busy core;
* :func:`column` views a slice of one tensor (from its address) as a numpy
  array; :func:`load` / :func:`store` / :func:`scalar` read, write and convert
  in the compute precision (float32 for float32 and bfloat16 storage, float64
  for float64), so one kernel body serves every dtype.

Python side, :func:`gather` checks that each parameter is one a kernel covers
exactly (see :func:`why_not`) and builds the tables; :func:`launch` picks the
thread count (``torch.get_num_threads()``), runs the kernel and bumps the
autograd version counters of everything it wrote, as torch's in-place ops do.
"""

from __future__ import annotations

import contextlib
import operator
import os
import platform
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
import torch
from numba import types
from numba.core import cgutils
from llvmlite import ir as llvm_ir
from numba.extending import intrinsic, overload
from torch import Tensor

from . import _cache

try:  # numba's thread control (for :func:`_thread_setters`)
    from numba.np.ufunc import parallel as _numba_parallel
except ImportError:  # pragma: no cover - numba reorganised
    _numba_parallel = None

# OpenMP first: with torch loaded, numba's OpenMP layer runs on the very
# libgomp threads torch uses, so the two never compete for cores (a separate
# TBB or workqueue pool would, with torch's OpenMP threads still spinning after
# the backward pass).  Only when the user has not chosen a layer, and numba
# falls back to the others if OpenMP is missing.
if not (os.environ.get("NUMBA_THREADING_LAYER") or os.environ.get("NUMBA_THREADING_LAYER_PRIORITY")):
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

# ----------------------------------------------------------------------------- flags

#: fastmath flags of every kernel (see :data:`_cache.FASTMATH`).
FASTMATH = _cache.FASTMATH


def kernel(fn: Callable | None = None, *, fastmath: Sequence[str] | None = None) -> Any:
    """Compile ``fn`` as a parallel, cached CPU kernel (the one decorator all kernels use).

    ``@kernel(fastmath=())`` replaces :data:`FASTMATH` for one kernel (no flags:
    strict IEEE arithmetic, for a kernel that must match its reference rule bit
    for bit).
    """
    if fn is None:
        return lambda fn: kernel(fn, fastmath=fastmath)
    flags = set(FASTMATH if fastmath is None else fastmath)
    dispatcher = numba.njit(parallel=True, fastmath=flags or False, nogil=True, error_model="numpy")(fn)
    _cache.enable_cache(dispatcher)
    return dispatcher


def helper(fn: Callable) -> Any:
    """Compile a scalar helper *without* fastmath: per-tensor scalars follow Python's float64 arithmetic.

    A kernel calls it as a separate function; LLVM may inline it, but the
    fast-math flags stay on the kernel's own instructions.
    """
    # fastmath=False explicitly: a callee that leaves it unset inherits its caller's flags
    return numba.njit(fastmath=False, nogil=True, error_model="numpy")(fn)


# ----------------------------------------------------------------------------- table layout

#: fixed columns of a table row; then two per scalar state (address, is-float64), one per buffer
NUMEL, FLAG, PARAM, GRAD = range(4)


def columns(scalars: Sequence[str] = (), buffers: Sequence[str] = ()) -> dict[str, int]:
    """Column of each named scalar state (its address; the dtype flag follows) and state buffer."""
    where: dict[str, int] = {}
    col = 4
    for name in scalars:
        where[name] = col
        col += 2
    for name in buffers:
        where[name] = col
        col += 1
    return where


# ----------------------------------------------------------------------------- numba side


@intrinsic
def _as_pointer(typingctx, address):
    """An integer address as a ``void*`` (for :func:`numba.carray`)."""
    sig = types.voidptr(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


@intrinsic
def _prefetch_line(typingctx, address):
    """Ask for the cache line at an integer address (``llvm.prefetch``: a read, into every cache level).

    A hint: an address outside mapped memory does not fault.
    """
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        i32 = llvm_ir.IntType(32)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        read, keep, data = llvm_ir.Constant(i32, 0), llvm_ir.Constant(i32, 3), llvm_ir.Constant(i32, 1)
        builder.call(fn, [builder.inttoptr(args[0], cgutils.voidptr_t), read, keep, data])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(inline="always")
def prefetch(table, t, col, lo, n, witness):
    """Start fetching elements ``lo .. lo+n`` of the tensor whose address is ``table[t, col]`` (one hint per 64 bytes).

    For runs the hardware prefetchers find too late: a loop over several
    short streams at once sees each end before they have caught up.
    """
    start = table[t, col] + lo * witness.itemsize
    for offset in range(0, n * witness.itemsize, 64):
        _prefetch_line(start + offset)


@numba.njit(inline="always")
def column(table, t, col, lo, n, witness):
    """Elements ``lo .. lo+n`` of the tensor whose address is ``table[t, col]``."""
    return numba.carray(_as_pointer(table[t, col] + lo * witness.itemsize), (n,), witness.dtype)


@helper
def get_scalar(table, t, col):
    """The 0-dim state tensor at ``table[t, col]`` (float32 or float64) as float64."""
    if table[t, col + 1]:
        return numba.carray(_as_pointer(table[t, col]), (1,), np.float64)[0]
    return np.float64(numba.carray(_as_pointer(table[t, col]), (1,), np.float32)[0])


@helper
def in_scalar_dtype(table, t, col, value):
    """``value`` rounded to the dtype of the 0-dim state tensor at ``table[t, col]``."""
    if table[t, col + 1]:
        return value
    return np.float64(np.float32(value))


@helper
def set_scalar(table, t, col, value):
    """Write ``value`` into the 0-dim state tensor at ``table[t, col]`` (rounded to its dtype)."""
    if table[t, col + 1]:
        numba.carray(_as_pointer(table[t, col]), (1,), np.float64)[0] = value
    else:
        numba.carray(_as_pointer(table[t, col]), (1,), np.float32)[0] = np.float32(value)


@helper
def bump_steps(table, col):
    """``step += 1`` for every tensor (as ``step_t += 1`` on the counter's dtype); the new values as float64.

    Adding 1 in float64 and rounding once to float32 gives the float32 sum bit for bit.
    """
    count = table.shape[0]
    out = np.empty(count, np.float64)
    for t in range(count):
        step = in_scalar_dtype(table, t, col, get_scalar(table, t, col) + 1.0)
        set_scalar(table, t, col, step)
        out[t] = step
    return out


@numba.njit(inline="always")
def _cut(table, grain, segments, starts, fill):
    """Walk the tensors cutting chunks; write them when ``fill``.  Returns (segments, chunks)."""
    nseg = 0
    nchunk = 0
    room = grain
    for t in range(table.shape[0]):
        n = table[t, NUMEL]
        lo = 0
        while lo < n:
            take = n - lo
            if take > room:
                take = (room // 64) * 64  # split a tensor at whole cache lines
                if take == 0:  # not a cache line left: start the next chunk
                    if fill:
                        starts[nchunk + 1] = nseg
                    nchunk += 1
                    room = grain
                    continue
            if fill:
                segments[nseg, 0] = t
                segments[nseg, 1] = lo
                segments[nseg, 2] = take
            nseg += 1
            lo += take
            room -= take
            if room < 64:
                if fill:
                    starts[nchunk + 1] = nseg
                nchunk += 1
                room = grain
    if room < grain:  # the last, partly filled chunk
        if fill:
            starts[nchunk + 1] = nseg
        nchunk += 1
    return nseg, nchunk


@numba.njit(inline="always")
def plan(table, grain):
    """Chunks of about ``grain`` elements: returns ``(segments, starts)``.

    ``segments[s] = (t, lo, n)``: elements ``lo .. lo+n`` of tensor ``t``;
    chunk ``c`` is ``segments[starts[c] : starts[c+1]]``.  Small tensors share
    a chunk; a big tensor is split at multiples of 64 elements (whole cache
    lines); empty tensors get no segment.
    """
    grain = max(grain, 64)
    nseg, nchunk = _cut(table, grain, np.empty((0, 3), np.int64), np.empty(1, np.int64), False)
    segments = np.empty((nseg, 3), np.int64)
    starts = np.empty(nchunk + 1, np.int64)
    starts[0] = 0
    _cut(table, grain, segments, starts, True)
    return segments, starts


@numba.njit(inline="always")
def from_the_end(starts, c):
    """Chunk ``c`` of :func:`plan`'s ``starts``, counted from the last chunk.

    For a pass over data the previous pass has just streamed through: taken
    in reverse, its first chunks are the ones that pass read last, which the
    cache still holds when a tensor is not much bigger than it.
    """
    return starts.shape[0] - 2 - c


@numba.njit(inline="always")
def plan_rows(table, rows, grain):
    """:func:`plan` over the tensors ``rows`` of ``table`` only; the segments name them by their rows in ``table``."""
    segments, starts = plan(table[rows], grain)
    for s in range(segments.shape[0]):
        segments[s, 0] = rows[segments[s, 0]]
    return segments, starts


#: bytes a streaming store writes at once (one cache line)
LINE = 64


@intrinsic
def _stream_line(typingctx, dst, src):
    """Copy one cache line from address ``src`` to the line-aligned address ``dst`` with a non-temporal store."""
    sig = types.void(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        line = llvm_ir.VectorType(llvm_ir.IntType(32), LINE // 4)
        value = builder.load(builder.inttoptr(args[1], line.as_pointer()), align=4)
        written = builder.store(value, builder.inttoptr(args[0], line.as_pointer()), align=LINE)
        written.set_metadata("nontemporal", builder.module.add_metadata([llvm_ir.Constant(llvm_ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return sig, codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64")


@intrinsic
def store_fence(typingctx):
    """Order this thread's streaming stores before anything it does next (``sfence`` on x86)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:  # LLVM's seq_cst fence is a locked OR there, which x86 does not promise to order them
            sfence = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), []), "llvm.x86.sse.sfence")
            builder.call(sfence, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(inline="always")
def stream_copy(dst, src):
    """``dst[:] = src`` (two 1-D arrays of one dtype), bypassing the cache where ``dst`` is line-aligned.

    For a write-only buffer: an ordinary store first reads the line it writes
    (write-allocate), so a buffer that is only written costs twice its size in
    traffic; streaming stores write it once.  The caller issues
    :func:`store_fence` before its results are read elsewhere.
    """
    n = src.shape[0]
    done = 0
    if dst.ctypes.data % LINE == 0:
        lines = (n * src.itemsize) // LINE
        for k in range(lines):
            _stream_line(dst.ctypes.data + k * LINE, src.ctypes.data + k * LINE)
        done = lines * LINE // src.itemsize
    for i in range(done, n):
        dst[i] = src[i]


@intrinsic
def _fetch_increment(typingctx, counter):
    """``counter[0] += 1`` as one atomic operation; returns the value before (``counter``: a 1-D int64 array)."""
    sig = types.int64(counter)

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        first = cgutils.get_item_pointer(context, builder, array_type, array, [context.get_constant(types.intp, 0)], wraparound=False)
        return builder.atomic_rmw("add", first, llvm_ir.Constant(llvm_ir.IntType(64), 1), "monotonic")

    return sig, codegen


@intrinsic
def thread_count(typingctx):
    """The launch's thread count, as the ``prange`` loops read it.

    The call parfor lowering itself emits (numba's C ``get_num_threads``,
    linked by name): ``numba.get_num_threads()`` in a kernel would embed a
    function pointer and make the kernel uncachable.
    """
    sig = types.intp()

    def codegen(context, builder, signature, args):
        getter = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(llvm_ir.IntType(types.intp.bitwidth), []), "get_num_threads"
        )
        return builder.call(getter, [])

    return sig, codegen


def _width_hint(bits_of):
    """An intrinsic that sets LLVM's ``prefer-vector-width`` attribute, to ``bits_of()`` bits, on the function it is compiled into.

    The attribute is read by the loop vectoriser.  llvmlite lists no string
    attributes, so it goes into its set directly; should that ever fail, the
    loops keep LLVM's own width (same results, other speed).  ``bits_of()``
    of 0 sets nothing.
    """

    @intrinsic
    def hint(typingctx):
        def codegen(context, builder, signature, args):
            bits = bits_of()
            if bits:
                with contextlib.suppress(Exception):
                    set.add(builder.function.attributes, f'"prefer-vector-width"="{bits}"')
            return context.get_dummy_value()

        return types.void(), codegen

    return hint


#: Ask LLVM for SIMD loops no wider than :data:`_cache.VECTOR_BITS` (256) in the function being compiled.
#: Called first thing in a ``prange`` body (numba's outlined loop function).  Only the kernels it made
#: faster call it: SGD, ASGD and Adam (AdamW; its gain is at the edge of the noise).  It made the kernels
#: with a square root and a division per element, or float64 sums beside float32 loads (LAMB: 4 lanes
#: instead of 8), slower.  The paired measurements, with their A/A baseline: docs/kernels.md, "Vector width".
vector_width_hint = _width_hint(lambda: _cache.VECTOR_BITS)

#: Ask for 512-bit loops (:data:`_cache.WIDE_VECTOR_BITS`): Adafactor, LARS and LAMB, whose norms sum
#: float64 beside float32 loads, and which LLVM would give 256-bit loops on Intel's AVX-512 CPUs
#: (docs/kernels.md, "Vector width").
wide_vector_hint = _width_hint(lambda: _cache.WIDE_VECTOR_BITS)


@numba.njit(inline="always")
def task_counter():
    """A counter of handed-out tasks for :func:`next_task`, at 0."""
    counter = np.empty(1, np.int64)
    counter[0] = 0
    return counter


@numba.njit(inline="always")
def next_task(counter):
    """The next task's number: 0, 1, 2, ... across all threads, each number handed out once.

    numba's ``prange`` divides its iterations among the threads up front (the
    OpenMP layer does, whatever ``set_parallel_chunksize`` says: 24 long
    iterations before 76 short ones ran no faster on two threads than on
    one).  For tasks of very different sizes, each thread instead takes tasks
    from a shared counter until none is left::

        tasks = task_counter()
        for _ in prange(thread_count()):
            j = next_task(tasks)
            while j < count:
                ...  # task j
                j = next_task(tasks)
    """
    return _fetch_increment(counter)


@numba.njit(inline="always")
def zeros(rows, cols):
    """A ``(rows, cols)`` float64 array of zeros, filled by a serial loop.

    In a parallel kernel ``np.zeros`` is itself a parallel loop, which the
    launcher's chunk size of one hands out an element at a time: 0.8 ms for
    4 000 elements, against 5 µs this way.
    """
    out = np.empty((rows, cols), np.float64)
    for i in range(rows):
        for k in range(cols):
            out[i, k] = 0.0
    return out


#: A kernel that needs whole-tensor norms before the update (LARS, LAMB,
#: Adafactor) hands each tensor whose re-reads take at most this many bytes
#: to one thread, which makes all its passes over it back to back: the later
#: passes then read it from cache (L2/L3) instead of memory.  Larger tensors
#: are split over all threads and make each pass in turn.  On the 2-core VM a
#: second read of a 4-8 MB window ran 2.4-2.6x faster than the first, of a
#: 16 MB one 1.8x, of a 48 MB one not at all (docs/kernels.md).  Read through
#: the module (``_launch.WHOLE_TENSOR_BYTES``) at each launch, so tests can
#: move the cut.
WHOLE_TENSOR_BYTES = 8 << 20


def whole_tensor_limit(rereads: int, itemsize: int) -> int:
    """Elements of the largest tensor one thread takes whole (see :data:`WHOLE_TENSOR_BYTES`)."""
    return WHOLE_TENSOR_BYTES // (rereads * itemsize)


@numba.njit(inline="always")
def split_by_size(table, limit):
    """``(whole, rest)``: the rows of the tensors of at most ``limit`` elements, largest first, and of the others."""
    count = table.shape[0]
    nwhole = 0
    for t in range(count):
        if table[t, NUMEL] <= limit:
            nwhole += 1
    whole = np.empty(nwhole, np.int64)
    rest = np.empty(count - nwhole, np.int64)
    a = 0
    b = 0
    for t in np.argsort(-table[:, NUMEL], kind="mergesort"):
        if table[t, NUMEL] <= limit:
            whole[a] = t
            a += 1
        else:
            rest[b] = t
            b += 1
    return whole, rest


@numba.njit(inline="always")
def tensor_sums(partial, segments, count):
    """Per tensor, the sum of its segments' rows of ``partial`` (a reduction's per-segment partial sums).

    The second half of a norm: a pass fills ``partial[s]`` for each segment
    ``s`` of :func:`plan`; this adds them up for each of the ``count`` tensors.
    """
    sums = zeros(count, partial.shape[1])
    for s in range(segments.shape[0]):
        t = segments[s, 0]
        for k in range(partial.shape[1]):
            sums[t, k] += partial[s, k]
    return sums


@numba.njit(inline="always")
def quartered_sums(term, n, args):
    """Two sums in float64, ``Σ term(i, args)`` for ``i`` in ``0 .. n-1`` (``term`` gives a pair), each as four running sums.

    A pass that adds float64 terms in one running sum is bound by the
    latency of that chain of additions, not by memory: LLVM vectorizes it,
    but each vector add waits for the last.  Here each quarter of the range
    has its own running sums: four chains, and four contiguous runs that the
    prefetchers follow as streams.  Measured on one 8192² float32 tensor,
    two threads of an AVX-512 Xeon: Σθ² in one chain 13.5-17.3 ms, over
    quarters 10.0-11.2 ms (the pace of a read-only pass); Adafactor's Σu²
    21.3-21.6 and 11.6-11.7 ms (tools/sum_chains.py).

    ``term`` is an njit function of ``(i, args)``, inlined; it may also
    store (a pass that updates state and sums norms), and must not depend
    on the order in which the indices come.  A kernel that needs one sum
    returns ``(x, 0.0)``: the fast-math flags drop the zero additions.  The
    order of the additions is the kernel's own, as in any of its sums.
    """
    q = n // 4
    a0, a1, a2, a3 = 0.0, 0.0, 0.0, 0.0
    b0, b1, b2, b3 = 0.0, 0.0, 0.0, 0.0
    for i in range(q):
        x0, y0 = term(i, args)
        x1, y1 = term(q + i, args)
        x2, y2 = term(2 * q + i, args)
        x3, y3 = term(3 * q + i, args)
        a0 += x0
        a1 += x1
        a2 += x2
        a3 += x3
        b0 += y0
        b1 += y1
        b2 += y2
        b3 += y3
    for i in range(4 * q, n):
        x0, y0 = term(i, args)
        a0 += x0
        b0 += y0
    return (a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)


@intrinsic
def _f32_from_bits(typingctx, bits):
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.FloatType())

    return sig, codegen


@intrinsic
def _bits_from_f32(typingctx, value):
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(32))

    return sig, codegen


@numba.njit(inline="always")
def _bf16_bits(value):
    """float32 -> bfloat16 bits, rounding to nearest even; NaN -> 0x7FC0 (c10::BFloat16's rule)."""
    bits = _bits_from_f32(value)
    rounded = (bits + ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)) >> np.uint32(16)
    nan = np.uint32((bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000))
    # branch-free select (a conditional expression here upsets numba's SSA pass)
    return np.uint16(rounded * (np.uint32(1) - nan) + np.uint32(0x7FC0) * nan)


@numba.njit(inline="always")
def _bf16_value(bits):
    return _f32_from_bits(np.uint32(bits) << np.uint32(16))


def load(array, i):
    """``array[i]`` in the compute precision (bfloat16, stored as uint16, widens to float32)."""


def store(array, i, value):
    """``array[i] = value``, rounding to bfloat16 (to nearest even, as torch) for uint16 storage."""


def scalar(value, witness):
    """A float64 hyper-parameter in the compute precision of ``witness``'s storage."""


def rounded(value, witness):
    """``value`` rounded to the storage precision: where the reference materialises a tensor.

    The identity for float32 and float64; for bfloat16 it reproduces the
    rounding of each intermediate bfloat16 tensor of the reference rule.
    """


@overload(load, inline="always")
def _load(array, i):
    if array.dtype == types.uint16:
        return lambda array, i: _bf16_value(array[i])
    return lambda array, i: array[i]


@overload(store, inline="always")
def _store(array, i, value):
    if array.dtype == types.uint16:

        def store_bf16(array, i, value):
            array[i] = _bf16_bits(np.float32(value))

        return store_bf16

    def store_float(array, i, value):
        array[i] = value

    return store_float


@overload(scalar, inline="always")
def _scalar(value, witness):
    if witness.dtype == types.float64:
        return lambda value, witness: np.float64(value)
    return lambda value, witness: np.float32(value)


@overload(rounded, inline="always")
def _rounded(value, witness):
    if witness.dtype == types.uint16:
        return lambda value, witness: _bf16_value(_bf16_bits(np.float32(value)))
    return lambda value, witness: value


@numba.njit(inline="always")
def add_scalar(value, witness):
    """A scalar as torch's ``add``/``add_`` takes it (``alpha=``, or the number added).

    Unlike ``mul``, ``div``, ``addcmul``, ``addcdiv`` and ``lerp``, which compute
    with the scalar in float32 (opmath), ``add`` first rounds it to the tensor's
    dtype: for bfloat16 tensors that is one more rounding (measured on torch
    2.13); the identity for float32 and float64.
    """
    return rounded(scalar(value, witness), witness)


@numba.njit(inline="always")
def lerp(start, end, weight, one):
    """``torch.lerp``'s formula: ``start + w(end − start)``, or ``end − (end − start)(1 − w)`` when |w| ≥ 0.5.

    ``weight`` and ``one`` in the compute precision (:func:`scalar`), as torch takes the weight.
    """
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (one - weight)


@numba.njit(inline="always")
def signed_gradient(grad, param, i, maximize, l2, lam, witness):
    """Element ``i``: ``(g, θ)``, with g ← −g if ``maximize`` and g ← g + λθ if ``l2`` (``lam``: λ as ``add`` takes it).

    The first lines of most reference rules (``grad = -grad if maximize``,
    ``grad = grad.add(param, alpha=weight_decay)``), written once.
    """
    g = load(grad, i)
    if maximize:
        g = -g
    theta = load(param, i)
    if l2:
        g = rounded(g + lam * theta, witness)
    return g, theta


@numba.njit(inline="always")
def decoupled_gradient(grad, param, i, maximize, decays, keep, witness):
    """Element ``i``: ``(g, θ)``, with g ← −g if ``maximize`` and θ ← θ(1 − γλ) if ``decays`` (``keep``: 1 − γλ).

    The first lines of the rules with decoupled weight decay (Lion, LAMB,
    Adafactor): ``param.mul_(1 - lr * weight_decay)``, written once.
    """
    g = load(grad, i)
    if maximize:
        g = -g
    theta = load(param, i)
    if decays:
        theta = rounded(theta * keep, witness)
    return g, theta


# ----------------------------------------------------------------------------- Python side

_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
_STRIDED = torch.strided
#: parameter dtype -> the numpy dtype its elements are stored as (bfloat16 as raw uint16)
STORAGE = {torch.float32: np.float32, torch.float64: np.float64, torch.bfloat16: np.uint16}
_WITNESS = {dtype: np.empty(0, storage) for dtype, storage in STORAGE.items()}
_SCALAR_DTYPES = {torch.float32: 0, torch.float64: 1}

#: elements per chunk, at least: 256 KiB of each float32 array (well inside L2),
#: about 5 µs of work
GRAIN = 1 << 16
#: ... and at most four times that: a chunk costs a little (numba's per-piece
#: call was about 1.5 µs, which at GRAIN cost SGD 5 % of its step on 150 tensors)
MAX_GRAIN = 4 * GRAIN
#: chunks per thread a launch aims at between the two, so that a thread that
#: falls behind (another process took its core) leaves work to the others
CHUNKS_PER_THREAD = 8


def _dense_strides(t: Tensor) -> tuple[int, ...] | None:
    """The strides of a non-overlapping, dense tensor (size-1 dims ignored); None otherwise."""
    dims = sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return None
        expected *= sz
    return tuple(st for sz, st in zip(t.shape, t.stride()) if sz != 1)


def _same_layout(p: Tensor, others: Sequence[Tensor]) -> bool:
    """p and every other tensor hold their elements in the same order in one dense block."""
    if p.is_contiguous():
        for t in others:
            if not t.is_contiguous():
                return False
        return True
    layout = _dense_strides(p)
    if layout is None:
        return False
    for t in others:
        if t.shape != p.shape or _dense_strides(t) != layout:
            return False
    return True


def why_not(p: Tensor, grad: Tensor | None, buffers: Sequence[Any], scalars: Sequence[Any] = ()) -> str | None:
    """Why a kernel cannot update this parameter exactly as the reference rule does (None: it can).

    (``requires_grad`` on state does not matter: the reference updates it in
    place with grad mode off, as the kernel does.)
    """
    dtype = p.dtype
    if dtype not in STORAGE:
        return f"dtype {dtype}"
    if type(p) not in _PLAIN_TYPES:
        return f"tensor subclass {type(p).__name__}"
    if not p.is_cpu:
        return f"device {p.device}"
    if p.layout is not _STRIDED:
        return f"layout {p.layout}"
    if grad is None:
        return "no gradient"
    if type(grad) not in _PLAIN_TYPES or grad.layout is not _STRIDED or not grad.is_cpu:
        return "sparse, subclass or non-CPU gradient"
    if grad.dtype is not dtype or grad.shape != p.shape:
        return "gradient of another dtype or shape"
    for b in buffers:
        if type(b) not in _PLAIN_TYPES or b.dtype is not dtype or not b.is_cpu or b.layout is not _STRIDED:
            return "a state buffer of another dtype, device or layout"
        if b.shape != p.shape:
            return "a state buffer shaped unlike its parameter"
    for s in scalars:
        if type(s) not in _PLAIN_TYPES or s.dtype not in _SCALAR_DTYPES or not s.is_cpu or s.numel() != 1:
            return "a scalar state (step, ...) is not a 1-element float32/float64 CPU tensor"
    if not _same_layout(p, (grad, *buffers)):
        return "non-dense layout, or state/gradient strided differently from the parameter"
    return None


class Batch:
    """The parameters of one dtype, ready for one launch."""

    __slots__ = ("dtype", "rows", "written", "numel", "_table")

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.rows: list[list[int]] = []
        self.written: list[Tensor] = []
        self.numel = 0
        self._table: np.ndarray | None = None

    def table(self) -> np.ndarray:
        """The rows as one ``int64`` array (built once; a reused batch updates it in place)."""
        if self._table is None:
            self._table = np.array(self.rows, dtype=np.int64)
        return self._table

    @property
    def witness(self) -> np.ndarray:
        return _WITNESS[self.dtype]


class Gathered:
    """What :func:`gather` found: batches for the kernel, the rest for the reference rule."""

    __slots__ = ("batches", "rest", "reasons")

    def __init__(self) -> None:
        self.batches: dict[torch.dtype, Batch] = {}
        self.rest: list[Tensor] = []
        self.reasons: list[str] = []

    def leave(self, param: Tensor, reason: str) -> None:
        """Leave ``param`` to the reference rule, saying why."""
        self.rest.append(param)
        self.reasons.append(reason)


def all_to_reference_if_repeated(params: Sequence[Tensor]) -> Gathered:
    """An empty :class:`Gathered` -- or, when a parameter appears twice, one that leaves them all to the reference rule.

    (The reference updates a repeated parameter twice, one after the other.)
    """
    out = Gathered()
    if len(set(map(id, params))) != len(params):
        out.rest = list(params)
        out.reasons.append("a parameter appears twice in the group")
    return out


class Reuse:
    """One group's last table and what it was built from, reused while none of it has changed.

    Building a table checks every tensor of every parameter (about 3 µs per
    Adam parameter, in Python).  Recalling one checks per parameter only what
    can change between steps behind the table's back:

    * the parameter: its address, its shape, its element order (contiguity;
      the strides of one that is not contiguous) -- ``p.data = ...`` changes
      them without a trace -- and its version counter (every in-place change
      of its metadata -- ``resize_``, ``t_``, ``set_`` -- bumps it; the
      expected value counts the launch's own bump);
    * the state tensors: their identity (``load_state_dict`` replaces them)
      and address;
    * the gradient: identity, address, element order and version.  A new gradient (after
      ``zero_grad()``, the usual case) or a rewritten one is checked against
      its parameter as in :func:`gather`, and its address written into the
      table.  Gradients are held by weak reference, so a cleared gradient is
      freed when ``zero_grad()`` drops it.

    Each check runs over the whole list at once (``map`` of a C getter, then
    one list comparison): a step that follows a pass over hundreds of MB finds
    nothing in cache, and every Python operation per parameter costs there.
    Anything else -- another parameter list, a parameter falling back, several
    dtypes in one group -- builds a new table.  The optimizer owns one per
    group (see :func:`fastoptim.kernels.dispatch.update_group`); a kernel
    module whose gradients are not dense tensors names its own subclass as
    ``REUSE`` (SparseAdam's: :meth:`_remember_grads` and
    :meth:`_refresh_grads` are the gradient part).
    """

    __slots__ = (
        "names", "params", "addresses", "versions", "shapes", "strides", "contiguous", "dtypes",
        "grads", "grad_addresses", "grad_versions", "grad_strides", "grad_contiguous", "held", "held_addresses",
        "gathered",
    )

    def __init__(self) -> None:
        self.names: tuple[str, ...] | None = None
        self.params: list[Tensor] = []
        self.addresses: list[int] = []  # per parameter
        self.versions: list[int] = []  # per parameter: the version expected at the next step
        self.shapes: list[torch.Size] = []
        self.strides: list[tuple[int, ...]] = []
        self.contiguous: list[bool] = []
        self.dtypes: list[torch.dtype] = []
        self.grads: list[Any] = []  # weak references
        self.grad_addresses: list[int] = []
        self.grad_versions: list[int] = []
        self.grad_strides: list[tuple[int, ...]] = []
        self.grad_contiguous: list[bool] = []
        self.held: list[Tensor] = []  # the state tensors, parameter after parameter
        self.held_addresses: list[int] = []
        self.gathered: Gathered | None = None

    def remember(self, params: Sequence[Tensor], state: Any, names: tuple[str, ...], fetch: Callable, out: Gathered) -> None:
        """Keep what :func:`gather` built (only a single batch with no parameter left out)."""
        self.gathered = None
        if out.rest or len(out.batches) != 1:
            return
        self.names, self.params = names, list(params)
        self.addresses, self.shapes = list(map(_data_ptr, params)), list(map(_shape_of, params))
        self.strides, self.dtypes = list(map(_stride_of, params)), list(map(_dtype_of, params))
        self.contiguous = list(map(_is_contiguous, params))
        # the launch that follows bumps every parameter's version once
        self.versions = [version + 1 for version in map(_version_of, params)]
        self._remember_grads(list(map(_grad_of, params)))
        self.held = _held(params, state, fetch, len(names))
        self.held_addresses = list(map(_data_ptr, self.held))
        self.gathered = out

    def _remember_grads(self, grads: list[Tensor]) -> None:
        self.grads = list(map(weakref.ref, grads))
        self.grad_addresses, self.grad_versions = list(map(_data_ptr, grads)), list(map(_version_of, grads))
        self.grad_strides, self.grad_contiguous = list(map(_stride_of, grads)), list(map(_is_contiguous, grads))

    def recall(
        self, params: Sequence[Tensor], state: Any, names: tuple[str, ...], fetch: Callable, flag: Callable | None
    ) -> Gathered | None:
        """The remembered result, brought up to date; None when a new table must be built."""
        out = self.gathered
        if out is None or names != self.names or len(params) != len(self.params):
            return None
        (batch,) = out.batches.values()
        try:
            versions = list(map(_version_of, params))
            if (
                not all(map(operator.is_, params, self.params))
                or versions != self.versions
                or list(map(_data_ptr, params)) != self.addresses
                or list(map(_shape_of, params)) != self.shapes
                or _relaid(params, self.contiguous, self.strides)
            ):
                return None
            held = _held(params, state, fetch, len(names))
            if not all(map(operator.is_, held, self.held)) or list(map(_data_ptr, held)) != self.held_addresses:
                return None
            if not self._refresh_grads(params, state, batch):
                return None
        except (KeyError, TypeError, AttributeError, RuntimeError):  # state or gradient no longer fit the table
            return None
        self.versions = [version + 1 for version in versions]
        if flag is not None:
            state_get = state.get
            batch.table()[:, FLAG] = [flag(p, state_get(p)) for p in params]
        return out

    def _refresh_grads(self, params: Sequence[Tensor], state: Any, batch: Batch) -> bool:
        """Bring the table's gradient column up to date; False when a gradient no longer fits it.

        Nothing is changed unless it returns True (it may raise, as :meth:`recall` expects).
        """
        grads = list(map(_grad_of, params))
        grad_addresses, grad_versions = list(map(_data_ptr, grads)), list(map(_version_of, grads))
        if (
            all(map(operator.is_, grads, [ref() for ref in self.grads]))
            and grad_addresses == self.grad_addresses
            and grad_versions == self.grad_versions
            and not _relaid(grads, self.grad_contiguous, self.grad_strides)
        ):
            return True
        # new gradients (after zero_grad(), the usual case) or rewritten ones must still fit their rows
        grad_strides = self._fitting(params, grads)
        if grad_strides is None:
            return False
        batch.table()[:, GRAD] = grad_addresses
        self.grads = list(map(weakref.ref, grads))
        self.grad_addresses, self.grad_versions = grad_addresses, grad_versions
        self.grad_strides, self.grad_contiguous = grad_strides, list(map(_is_contiguous, grads))
        return True

    def _fitting(self, params: Sequence[Tensor], grads: list[Any]) -> list[tuple[int, ...]] | None:
        """The strides of new gradients that can take the old ones' places (as :func:`why_not` would judge
        them); None if one cannot.

        The usual case in one pass per property: plain CPU dense tensors with
        their parameters' dtypes, shapes and strides.  Otherwise each gradient
        is judged on its own (:func:`_grad_fits`: same order of elements).
        """
        if not (set(map(type, grads)) <= _PLAIN_TYPE_SET and set(map(_layout_of, grads)) <= {_STRIDED}):
            return None
        strides = list(map(_stride_of, grads))
        if (
            all(map(_is_cpu_of, grads))
            and list(map(_dtype_of, grads)) == self.dtypes
            and list(map(_shape_of, grads)) == self.shapes
            and strides == self.strides
        ):
            return strides
        return strides if all(map(_grad_fits, params, grads)) else None


def _relaid(tensors: Sequence[Tensor], contiguous: list[bool], strides: list[tuple[int, ...]]) -> bool:
    """Whether a tensor's elements lie in another order than ``contiguous`` / ``strides`` say they did."""
    now = list(map(_is_contiguous, tensors))
    if now != contiguous:
        return True
    return not all(now) and any(t.stride() != was for t, was, c in zip(tensors, strides, now) if not c)


_data_ptr = Tensor.data_ptr
_stride_of = Tensor.stride
_is_contiguous = Tensor.is_contiguous
_grad_of = operator.attrgetter("grad")
_shape_of = operator.attrgetter("shape")
_version_of = operator.attrgetter("_version")
_dtype_of = operator.attrgetter("dtype")
_layout_of = operator.attrgetter("layout")
_is_cpu_of = operator.attrgetter("is_cpu")
_PLAIN_TYPE_SET = frozenset(_PLAIN_TYPES)


def _held(params: Sequence[Tensor], state: Any, fetch: Callable | None, count: int) -> list[Tensor]:
    """The state tensors ``fetch`` picks from each parameter's state entry, parameter after parameter.

    Raises KeyError or TypeError when an entry or one of its tensors is missing.
    """
    if fetch is None:
        return []
    picked = list(map(fetch, map(state.get, params)))
    return picked if count == 1 else [tensor for tensors in picked for tensor in tensors]


def _grad_fits(p: Tensor, grad: Any) -> bool:
    """Whether a new gradient can take the old one's place in a table (as :func:`why_not` would judge it).

    The parameter's own metadata is unchanged (its version is), so its state
    still lies like it; only the gradient is compared with it.
    """
    return (
        type(grad) in _PLAIN_TYPES
        and grad.layout is _STRIDED
        and grad.is_cpu
        and grad.dtype is p.dtype
        and grad.shape == p.shape
        and _same_layout(p, (grad,))
    )


def gather(
    params: Sequence[Tensor],
    state: Any,
    *,
    scalars: Sequence[str] = (),
    buffers: Sequence[str] = (),
    flag: Callable[[Tensor, dict], int] | None = None,
    dry_run: bool = False,
    reuse: Reuse | None = None,
) -> Gathered:
    """Sort ``params`` into kernel batches (one per dtype) and those left to the reference rule.

    Each row holds the addresses laid out by :func:`columns`: ``scalars``
    names the 0-dim state tensors (``step``, ...) and ``buffers`` the
    per-element state tensors, in column order.  ``flag(param, state_entry)``
    fills the row's FLAG column (0 when not given).

    ``dry_run`` only sorts (no table is built): a parameter without state yet
    is judged on itself and its gradient (its state will be created like it),
    one without a gradient on itself.

    ``reuse`` (the group's :class:`Reuse`) returns the last result, brought up
    to date, when the tensors are those it was built from.
    """
    names = (*scalars, *buffers)
    fetch = operator.itemgetter(*names) if names else None
    if reuse is not None and not dry_run:
        recalled = reuse.recall(params, state, names, fetch, flag)
        if recalled is not None:
            return recalled
    out = all_to_reference_if_repeated(params)
    if out.rest:
        return out
    batches = out.batches
    nscal = len(scalars)
    state_get = state.get
    plain_types = _PLAIN_TYPES
    storage = STORAGE
    scalar_dtypes = _SCALAR_DTYPES
    batch = None
    for p in params:
        entry = state_get(p)
        grad = p.grad
        if fetch is None:
            held = ()
        else:
            try:
                held = fetch(entry)
            except (KeyError, TypeError):
                if not dry_run or entry:
                    out.leave(p, "state entry missing")
                    continue
                held = [None] * len(names)
            else:
                if len(names) == 1:
                    held = (held,)
        scals, bufs = held[:nscal], held[nscal:]
        if dry_run:
            if entry is None or not entry:
                scals, bufs = (), ()
            if grad is None:
                grad = p
        # The common case, checked inline (a subset of why_not() is None):
        # contiguous CPU tensors of one supported dtype and shape.
        dtype = p.dtype
        try:
            shape = p.shape
            ok = (
                dtype in storage
                and type(p) in plain_types
                and type(grad) in plain_types
                and grad.dtype is dtype
                and grad.shape == shape
                and p.is_cpu
                and grad.is_cpu
                and p.is_contiguous()
                and grad.is_contiguous()
            )
            if ok:
                for b in bufs:
                    if type(b) not in plain_types or b.dtype is not dtype or not b.is_cpu or b.shape != shape or not b.is_contiguous():
                        ok = False
                        break
            if ok:
                for v in scals:
                    if type(v) not in plain_types or v.dtype not in scalar_dtypes or not v.is_cpu or v.numel() != 1:
                        ok = False
                        break
        except (AttributeError, RuntimeError):  # not tensors; sparse tensors have no strides
            ok = False
        if not ok:
            reason = why_not(p, grad, bufs, scals)
            if reason is not None:
                out.leave(p, reason)
                continue
        if dry_run:
            continue
        try:
            row = [p.numel(), flag(p, entry) if flag is not None else 0, p.data_ptr(), grad.data_ptr()]
            for v in scals:
                row.append(v.data_ptr())
                row.append(scalar_dtypes[v.dtype])
            for b in bufs:
                row.append(b.data_ptr())
        except RuntimeError:  # a tensor without storage (functorch wrapper, meta, ...)
            out.leave(p, "a tensor without accessible storage")
            continue
        if batch is None or batch.dtype is not dtype:
            batch = batches.get(dtype)
            if batch is None:
                batch = batches[dtype] = Batch(dtype)
        batch.numel += row[NUMEL]
        batch.rows.append(row)
        written = batch.written
        written.append(p)
        written.extend(held)
    if reuse is not None and not dry_run:
        reuse.remember(params, state, names, fetch, out)
    return out


_launch_lock = threading.Lock()
_warm: set[tuple] = set()


#: a launch uses another thread only for this many more elements (~7 MB of
#: Adam traffic, ~150 µs): waking a thread costs 10-20 µs on an idle machine,
#: and milliseconds when its core is busy with another process
ELEMENTS_PER_THREAD = 4 * GRAIN


def _threads(numel: int, wanted: int) -> int:
    """Threads for a launch: torch's intra-op setting, but none idle or waking for too little work."""
    return max(1, min(wanted, numba.config.NUMBA_NUM_THREADS, numel // ELEMENTS_PER_THREAD))


def _grain(numel: int, threads: int) -> int:
    """Elements per chunk for a launch: :data:`CHUNKS_PER_THREAD` per thread, within ``GRAIN .. MAX_GRAIN``."""
    return max(GRAIN, min(MAX_GRAIN, numel // (threads * CHUNKS_PER_THREAD)))


def _thread_setters() -> tuple[Callable[[int], Any], Callable[[int], int]]:
    """numba's setters of this thread's thread count and chunk size.

    Once numba's threads are up, its C functions themselves: the public
    ``numba.set_num_threads`` / ``set_parallel_chunksize`` check that the
    threads are up under a process lock on every call, which costs about
    35 µs per launch when the step's own traffic has evicted that code.
    (The thread count is always in range: see :func:`_threads`.)
    """
    if _numba_parallel is not None and getattr(_numba_parallel, "_is_initialized", False):
        setters = getattr(_numba_parallel, "_set_num_threads", None), getattr(_numba_parallel, "_set_parallel_chunksize", None)
        if None not in setters:
            return setters
    return numba.set_num_threads, numba.set_parallel_chunksize


@contextlib.contextmanager
def _parallel(numel: int) -> Any:
    """numba's threads set up for one launch over ``numel`` elements, and put back after it.

    One launch at a time per process: numba's workqueue layer is not
    thread-safe, and two launches would only fight over the same cores.
    Yields the thread count.
    """
    wanted = torch.get_num_threads()
    with _launch_lock:
        threads = _threads(numel, wanted)
        set_num_threads, set_chunksize = _thread_setters()
        set_num_threads(threads)
        # The kernels' loops are prange(thread_count()), one iteration per thread (they take their
        # chunks from next_task): a chunk size of one keeps a caller's own setting from merging them.
        previous_chunksize = set_chunksize(1)
        try:
            yield threads
        finally:
            set_chunksize(previous_chunksize)
    if torch.get_num_threads() != wanted:
        # numba's OpenMP pool is torch's libgomp: starting it resets the
        # process-wide OpenMP thread count, which torch reports as its own.
        torch.set_num_threads(wanted)


def _call(kernel_fn: Any, key: tuple, *args: Any) -> Any:
    """``kernel_fn(*args)``; its first call for ``key`` (a signature) under the compile lock."""
    if key in _warm:
        return kernel_fn(*args)
    with _cache.compile_lock(f"{kernel_fn.py_func.__module__}.{kernel_fn.py_func.__qualname__}"):
        result = kernel_fn(*args)
    _warm.add(key)
    return result


def launch(kernel_fn: Any, batch: Batch, hyper: Sequence[float]) -> Any:
    """Run ``kernel_fn(table, hyper, witness, grain)`` over one batch, and bump the version counters.

    Returns what the kernel returns (None for most).
    """
    if not batch.rows:
        return None
    table = batch.table()
    scalars = np.array(hyper, dtype=np.float64)
    # Bumped before the launch, while the tensors are still in cache: the
    # kernel's own traffic evicts them (nothing reads the versions in between).
    torch._C._increment_version(batch.written)
    with _parallel(batch.numel) as threads:
        grain = _grain(batch.numel, threads)
        return _call(kernel_fn, (id(kernel_fn), batch.dtype), table, scalars, batch.witness, grain)


def launch_flat(kernel_fn: Any, numel: int, *arrays: np.ndarray) -> Any:
    """Run ``kernel_fn(*arrays)`` -- a kernel over whole 1-D arrays, which cuts its own chunks -- on torch's threads.

    The caller bumps the version counters of the tensors it writes.
    """
    key = (id(kernel_fn), *(a.dtype.str if isinstance(a, np.ndarray) else type(a).__name__ for a in arrays))
    with _parallel(numel):
        return _call(kernel_fn, key, *arrays)
