"""How close to the ceiling an algorithm's minimum traffic can come on this machine (a developer's probe).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/traffic_bound.py [--side 8192] [--rounds 7]

The bench's % of the ceiling divides an algorithm's byte model (the minimum
it must read and write, ``fastoptim.bench.bytemodel``) by ``a.add_(b)``'s
rate, which reads two tensors and writes one.  Where a machine reads slower
than it writes back -- a write to a line just read costs little, a read
waits on memory -- an algorithm that must read more per byte it writes
cannot reach that rate, however its kernel is written.

This times, for each algorithm below, plain numba loops that make the
passes of its byte model and nothing else: the same tensors read and
written, float32 arithmetic just heavy enough to keep every access (a
``prange`` over all threads, as the kernels).  Their time is what the
traffic alone costs; the model's bytes over it, as a % of the ceiling, is
the most the algorithm can show in the bench.  fastoptim's own step on the
same elements (the bench's ``big`` set: one ``--side``² float32 matrix, or a
vector as long for the ``< 2-D`` rows) runs in the same interleaved rounds,
with ``a.add_(b)`` on tensors as large, and ``a.dot(b)`` next to the patterns'
read-only pass (torch's fastest read; medians).  docs/performance.md
quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np
import torch
from numba import prange

import fastoptim
from fastoptim.bench import bytemodel, variants

_FLAGS = {"nsz", "contract", "reassoc", "arcp", "afn"}
_S = np.float32(0.999)
_T = np.float32(1e-6)


@numba.njit(parallel=True, fastmath=_FLAGS)
def _r2(a, b):
    """Read a and b (a dot product): a pass that only finds norms."""
    total = np.float32(0.0)
    for i in prange(a.shape[0]):
        total += a[i] * b[i]
    return total


@numba.njit(parallel=True, fastmath=_FLAGS)
def _r2w1(a, b):
    """a ← s·a + t·b."""
    for i in prange(a.shape[0]):
        a[i] = _S * a[i] + _T * b[i]
    return np.float32(0.0)


@numba.njit(parallel=True, fastmath=_FLAGS)
def _r3w1(a, b, c):
    """a ← s·a + t·b·c, and Σa·c (the first pass of an unfactored Adafactor updates its variance so)."""
    total = np.float32(0.0)
    for i in prange(a.shape[0]):
        x = _S * a[i] + _T * b[i] * c[i]
        a[i] = x
        total += x * c[i]
    return total


@numba.njit(parallel=True, fastmath=_FLAGS)
def _r3w2(a, b, c):
    """c ← s·c + b, a ← a − t·c."""
    for i in prange(a.shape[0]):
        m = _S * c[i] + b[i]
        c[i] = m
        a[i] = a[i] - _T * m
    return np.float32(0.0)


@numba.njit(inline="always", fastmath=_FLAGS)
def _moments(b, c, d, i):
    """c ← s·c + t·b, d ← s·d + t·b² at ``i``; returns the new pair."""
    g = b[i]
    m = _S * c[i] + _T * g
    v = _S * d[i] + _T * g * g
    c[i] = m
    d[i] = v
    return m, v


@numba.njit(parallel=True, fastmath=_FLAGS)
def _r4w2(a, b, c, d):
    """c, d from b (:func:`_moments`), and Σa² + Σc·d."""
    total = np.float32(0.0)
    for i in prange(a.shape[0]):
        m, v = _moments(b, c, d, i)
        total += a[i] * a[i] + m * v
    return total


@numba.njit(parallel=True, fastmath=_FLAGS)
def _r4w3(a, b, c, d):
    """An Adam-shaped pass: c, d from b, then a from c and d."""
    for i in prange(a.shape[0]):
        m, v = _moments(b, c, d, i)
        a[i] = a[i] - _T * m / (np.sqrt(v) + _T)
    return np.float32(0.0)


#: algorithm (a byte-model row) -> its passes, each (kernel, which of the four pattern tensors it takes)
PASSES: dict[str, list[tuple[Callable, tuple[int, ...]]]] = {
    "SGD": [(_r2w1, (0, 1))],
    "Adam": [(_r4w3, (0, 1, 2, 3))],
    "Adafactor": [(_r2, (0, 1)), (_r2w1, (0, 1))],
    "Adafactor (<2-D)": [(_r3w1, (2, 1, 0)), (_r3w1, (0, 1, 2))],
    "Lamb": [(_r4w2, (0, 1, 2, 3)), (_r3w1, (0, 2, 3))],
    "LARS": [(_r2, (0, 1)), (_r3w2, (0, 1, 2))],
}


def _reads_writes(kernel: Callable) -> tuple[int, int]:
    """A pattern kernel's tensors read and written, from its name (``_r4w2``: 4 and 2)."""
    reads, _, writes = kernel.__name__[2:].partition("w")
    return int(reads), int(writes or 0)


def _model_vectors(name: str) -> int:
    if name.endswith("(<2-D)"):
        return bytemodel.VECTOR_BYTE_MODEL[name.split()[0]].tensors_per_element
    return bytemodel.BYTE_MODEL[name].tensors_per_element


def _fastoptim_step(name: str, n: int, side: int) -> Callable[[], object]:
    """fastoptim's step on one matrix (or vector) of ``n`` elements, built as the bench builds it."""
    algorithm = name.split()[0]
    shape = (n,) if name.endswith("(<2-D)") else (side, side)
    p = torch.randn(shape)
    p.grad = torch.randn(shape)
    (ours,) = [v for v in variants.variants_for(algorithm)[0] if v.library == "fastoptim"]
    optimizer = ours.make([p])
    assert isinstance(optimizer, getattr(fastoptim, algorithm))
    return optimizer.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.side < 16 or args.rounds < 1:
        parser.error(f"--side must be at least 16 and --rounds at least 1, got {args.side} and {args.rounds}")
    n = args.side * args.side
    tensors = [torch.randn(n) for _ in range(4)]
    arrays = [t.numpy() for t in tensors]
    a, b = tensors[0].clone(), tensors[1].clone()
    runs: dict[str, Callable[[], object]] = {
        "ceiling a.add_(b)": lambda: a.add_(b, alpha=1e-9),
        "read a.dot(b)": lambda: a.dot(b),
        "read _r2(a, b)": lambda: _r2(arrays[0], arrays[1]),
    }
    for name, passes in PASSES.items():
        runs[f"{name}: traffic"] = lambda passes=passes: [kernel(*(arrays[i] for i in which)) for kernel, which in passes]
        runs[f"{name}: fastoptim"] = _fastoptim_step(name, n, args.side)
    for run in runs.values():  # compile, build state, touch every page
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    vector = 4 * n / 1e9
    ceiling = 3 * vector / median["ceiling a.add_(b)"]
    print(f"{numba.get_num_threads()} threads, {args.side}² float32; medians of {args.rounds} rounds")
    print(f"ceiling a.add_(b): {median['ceiling a.add_(b)'] * 1e3:.1f} ms, {ceiling:.1f} GB/s")
    for name in ("read a.dot(b)", "read _r2(a, b)"):  # a pass that only reads, torch's and the patterns'
        print(f"{name}: {median[name] * 1e3:.1f} ms, {2 * vector / median[name]:.1f} GB/s")
    print(f"{'algorithm':18s} {'passes (R/W)':>13s} {'model':>5s} {'traffic ms':>10s} {'bound':>6s} {'fastoptim ms':>12s} {'% ceiling':>9s} {'% bound':>7s}")
    for name, passes in PASSES.items():
        counts = [_reads_writes(kernel) for kernel, _ in passes]
        shape = " + ".join(f"{r}/{w}" for r, w in counts)
        model = _model_vectors(name)
        assert model == sum(r + w for r, w in counts), f"{name}: the passes do not move the byte model's tensors"
        traffic, ours = median[f"{name}: traffic"], median[f"{name}: fastoptim"]
        bound = 100 * model * vector / traffic / ceiling
        reached = 100 * model * vector / ours / ceiling
        print(f"{name:18s} {shape:>13s} {model:5d} {traffic * 1e3:10.1f} {bound:5.0f}% {ours * 1e3:12.1f} {reached:8.0f}% {100 * traffic / ours:6.0f}%")


if __name__ == "__main__":
    main()
