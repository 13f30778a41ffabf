"""How fast a read-only float64 sum runs as one chain of additions and as four (a developer's probe).

    python tools/sum_chains.py [--size 8192] [--rounds 10]

Two sums over one ``size × size`` float32 tensor, each parallel over its rows
(two threads by default, as numba's ``prange`` gives them): Σθ² and
Adafactor's Σu² (u = min(r·c, cap)·g, from a row scale and a position scale).
Each is timed with the terms added in one running float64 sum per row and with
:func:`fastoptim.kernels.cpu._launch.quartered_sums` (four running sums, one per
quarter of the row), next to a single pass of ``a.add_(b)`` over the same
tensor (the bench's ceiling: three tensors' worth of traffic, not one).
quartered_sums' docstring quotes it.
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

_FASTMATH = set(FASTMATH) - {"arcp"}  # Adafactor's kernel flags


@numba.njit(inline="always")
def _square_term(i, args):
    (x,) = args
    return np.float64(x[i] * x[i]), 0.0


@numba.njit(inline="always")
def _update_term(i, args):
    g, scale, scales, cap = args
    root = scale * scales[i]
    if root > cap:
        root = cap
    u = root * g[i]
    return np.float64(u * u), 0.0


@numba.njit(parallel=True, fastmath=_FASTMATH)
def _squares_one_chain(x):
    total = 0.0
    for r in prange(x.shape[0]):
        row = x[r]
        s = 0.0
        for i in range(row.shape[0]):
            s += _square_term(i, (row,))[0]
        total += s
    return total


@numba.njit(parallel=True, fastmath=_FASTMATH)
def _squares_quartered(x):
    total = 0.0
    for r in prange(x.shape[0]):
        row = x[r]
        total += quartered_sums(_square_term, row.shape[0], (row,))[0]
    return total


@numba.njit(parallel=True, fastmath=_FASTMATH)
def _updates_one_chain(g, line_scale, pos_scale, cap):
    total = 0.0
    for r in prange(g.shape[0]):
        row = g[r]
        s = 0.0
        for i in range(row.shape[0]):
            s += _update_term(i, (row, line_scale[r], pos_scale, cap))[0]
        total += s
    return total


@numba.njit(parallel=True, fastmath=_FASTMATH)
def _updates_quartered(g, line_scale, pos_scale, cap):
    total = 0.0
    for r in prange(g.shape[0]):
        row = g[r]
        total += quartered_sums(_update_term, row.shape[0], (row, line_scale[r], pos_scale, cap))[0]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    n = args.size
    x = torch.randn(n, n).numpy()
    line_scale, pos_scale = np.ones(n, np.float32), np.ones(n, np.float32)
    cap = np.float32(1e30)
    a, b = torch.randn(n, n), torch.randn(n, n)
    cases = {
        "Σθ², one chain": lambda: _squares_one_chain(x),
        "Σθ², quartered": lambda: _squares_quartered(x),
        "Σu², one chain": lambda: _updates_one_chain(x, line_scale, pos_scale, cap),
        "Σu², quartered": lambda: _updates_quartered(x, line_scale, pos_scale, cap),
        "a.add_(b)": lambda: a.add_(b, alpha=1e-9),
    }
    for run in cases.values():  # compile, and warm the pages
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    gb = x.nbytes / 1e9
    for name, samples in times.items():
        t = statistics.median(samples)
        moved = 3 * gb if name == "a.add_(b)" else gb
        print(f"{name:16s} {t * 1e3:7.1f} ms  {moved / t:5.1f} GB/s")


if __name__ == "__main__":
    main()
