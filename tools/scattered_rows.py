"""How fast this machine updates scattered rows, next to the same rows side by side (a developer's probe).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/scattered_rows.py [--rows-of 384 1536 8192] [--rounds 15]

A sparse gradient (SparseAdam's) touches a random tenth of a parameter's rows,
so its step reads and writes parameter, ``exp_avg`` and ``exp_avg_sq`` at
scattered addresses.  This probe times a minimal Adam-like update (no
rounding rules, float32 scalars, fast-math: as cheap as the arithmetic gets)
over one tenth of the rows of three ``rows × width`` float32 matrices of
about 25M elements, once at random sorted rows and once at the first rows,
and ``a.add_(b)`` over 256 MB (the bench's ceiling) in the same rounds.
GB/s counts 7 × 4 bytes per updated element, as the bench's byte model does
for SparseAdam (its 8 bytes per row index left out).  docs/kernels.md quotes
it: how far the `many` set's rows (384 and 1536 wide) can go.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import torch
from numba import prange


@numba.njit(parallel=True, fastmath=True)
def _update_rows(param, exp_avg, exp_avg_sq, grad, rows, chunks):
    """Adam's moments and step on ``param[rows[r]]`` from ``grad[r]``, for every ``r``."""
    per = (rows.shape[0] + chunks - 1) // chunks
    for c in prange(chunks):
        for r in range(c * per, min(rows.shape[0], (c + 1) * per)):
            p, m, v, g = param[rows[r]], exp_avg[rows[r]], exp_avg_sq[rows[r]], grad[r]
            for i in range(p.shape[0]):
                m[i] += np.float32(0.1) * (g[i] - m[i])
                v[i] += np.float32(0.001) * (g[i] * g[i] - v[i])
                p[i] -= np.float32(1e-3) * m[i] / (np.sqrt(v[i]) + np.float32(1e-8))


def measure(width: int, rounds: int, numel: int = 25_000_000) -> dict[str, float]:
    """Median GB/s of the scattered and the side-by-side rows, and of the ceiling, in the same rounds."""
    height = numel // width
    param, exp_avg, exp_avg_sq = (torch.rand(height, width).numpy() for _ in range(3))
    touched = height // 10
    generator = np.random.default_rng(0)
    order = {
        "scattered rows": np.sort(generator.choice(height, touched, replace=False)).astype(np.int64),
        "side-by-side rows": np.arange(touched, dtype=np.int64),
    }
    grad = torch.rand(touched, width).numpy()
    a, b = torch.rand(64 << 20), torch.rand(64 << 20)
    update_bytes = touched * width * 4 * 7
    runs = {name: (lambda rows=rows: _update_rows(param, exp_avg, exp_avg_sq, grad, rows, 64)) for name, rows in order.items()}
    runs["ceiling: a.add_(b)"] = lambda: a.add_(b, alpha=1e-9)
    moved = {name: update_bytes for name in order} | {"ceiling: a.add_(b)": 3 * a.numel() * 4}
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: moved[name] / statistics.median(samples) / 1e9 for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-of", type=int, nargs="+", default=[384, 1536, 8192], help="row widths (elements)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    numba.set_num_threads(torch.get_num_threads())
    for width in args.rows_of:
        result = measure(width, args.rounds)
        print(f"rows of {width} float32: " + " | ".join(f"{name} {gbps:.1f} GB/s" for name, gbps in result.items()))


if __name__ == "__main__":
    main()
