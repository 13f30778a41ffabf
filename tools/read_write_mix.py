"""How fast this machine reads, next to the bench's read-modify-write ceiling (a developer's probe).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/read_write_mix.py [--mib 1024] [--rounds 9]

The bench's ceiling, ``a.add_(b, alpha=s)``, reads two tensors and writes one.
A step that mostly reads (Adafactor's norm passes, L-BFGS's dot products,
LARS's and LAMB's trust ratios) can only keep up with it if reads alone run
as fast, per byte, as that mix.  This times, in interleaved rounds over
tensors of ``--mib`` MiB each (medians):

* ``a.add_(b)``: 2 reads, 1 write (the ceiling);
* ``a.mul_(s)``: 1 read, 1 write in place;
* ``b.copy_(a)``: 1 read, 1 write to another tensor (which the CPU first
  fetches: a write to memory not in cache reads it);
* ``a.dot(b)``: 2 reads, nothing written;
* ``a.sum()``: 1 read;
* Σa² in float64 over four running sums (``_launch.quartered_sums``, the
  kernels' norms).

GB/s counts the bytes each operation must move (reads + writes, not the fetch
before a write); "read GB/s" counts its reads only.  The default size keeps
the tensors out of the VM's last-level cache (it reports 480 MiB: at 256 MiB
``a.mul_(s)`` and ``a.sum()`` ran from it).  docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import torch
from numba import prange

from fastoptim.kernels.cpu._launch import FASTMATH, quartered_sums


@numba.njit(inline="always")
def _square(i, args):
    return np.float64(args[0][i] * args[0][i]), 0.0


@numba.njit(parallel=True, fastmath=set(FASTMATH))
def _squares_float64(x):
    """Σx² in float64, four running sums per 1 Mi-element block, blocks over all threads."""
    block = 1 << 20
    count = (x.shape[0] + block - 1) // block
    partial = np.empty(count)
    for j in prange(count):
        lo = j * block
        hi = min(x.shape[0], lo + block)
        partial[j] = quartered_sums(_square, hi - lo, (x[lo:hi],))[0]
    return partial.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=1024.0)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    n = int(args.mib * 2**20) // 4
    a, b = torch.randn(n), torch.randn(n)
    x = a.numpy()
    # name -> (run, reads, writes) in tensors of n float32 elements
    cases = {
        "a.add_(b)": (lambda: a.add_(b, alpha=1e-9), 2, 1),
        "a.mul_(s)": (lambda: a.mul_(1.0), 1, 1),
        "b.copy_(a)": (lambda: b.copy_(a), 1, 1),
        "a.dot(b)": (lambda: a.dot(b), 2, 0),
        "a.sum()": (lambda: a.sum(), 1, 0),
        "Σa² float64, 4 sums": (lambda: _squares_float64(x), 1, 0),
    }
    for run, _, _ in cases.values():  # compile, and touch every page
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (run, _, _) in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    vector = 4 * n / 1e9
    ceiling = None
    print(f"{torch.get_num_threads()} threads, tensors of {args.mib:g} MiB; medians of {args.rounds} rounds")
    print(f"{'operation':22s} {'ms':>7s} {'GB/s':>6s} {'read GB/s':>9s} {'% of add_ GB/s':>14s}")
    for name, (_, reads, writes) in cases.items():
        t = statistics.median(times[name])
        gbps = (reads + writes) * vector / t
        ceiling = ceiling or gbps
        print(f"{name:22s} {t * 1e3:7.1f} {gbps:6.1f} {reads * vector / t:9.1f} {100 * gbps / ceiling:13.0f}%")


if __name__ == "__main__":
    main()
