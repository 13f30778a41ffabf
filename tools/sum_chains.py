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
    x, _, _, _ = args
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
def _one_chain(term, x, line_scale, pos_scale, cap):
    """Σ term over the rows of ``x``, one running sum per row."""
    total = 0.0
    for r in prange(x.shape[0]):
        args = (x[r], line_scale[r], pos_scale, cap)
        s = 0.0
        for i in range(x.shape[1]):
            s += term(i, args)[0]
        total += s
    return total


@numba.njit(parallel=True, fastmath=_FASTMATH)
def _quartered(term, x, line_scale, pos_scale, cap):
    """The same sum, four running sums per row (:func:`quartered_sums`)."""
    total = 0.0
    for r in prange(x.shape[0]):
        total += quartered_sums(term, x.shape[1], (x[r], line_scale[r], pos_scale, cap))[0]
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
        "Σθ², one chain": lambda: _one_chain(_square_term, x, line_scale, pos_scale, cap),
        "Σθ², quartered": lambda: _quartered(_square_term, x, line_scale, pos_scale, cap),
        "Σu², one chain": lambda: _one_chain(_update_term, x, line_scale, pos_scale, cap),
        "Σu², quartered": lambda: _quartered(_update_term, x, line_scale, pos_scale, cap),
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
