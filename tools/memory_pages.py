"""Whether this machine's memory speed depends on where a tensor lands (a developer's probe).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/memory_pages.py [--pairs 6] [--seconds 60]

Allocates several pairs of 256 MiB float32 tensors, one after another, then
times ``a.add_(b, alpha=s)`` (the bench's ceiling) on every pair in turn,
round after round, printing each pair's median GB/s every 40 rounds.  If
the speed were a property of the moment (the host's load), the pairs would
move together; if it is a property of the memory a pair was given (how the
VM's pages are backed), some pairs stay slower than others for the whole
run.  docs/performance.md quotes it: why one cell's ceiling and another's
can differ by half.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

#: elements of each tensor (256 MiB of float32)
NUMEL = 64 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    pairs, spacers = [], []
    for _ in range(args.pairs):
        pairs.append((torch.randn(NUMEL), torch.randn(NUMEL)))
        spacers.append(torch.randn(NUMEL // 4))  # kept alive, so the next pair starts elsewhere
    rates: list[list[float]] = [[] for _ in pairs]
    moved = 3 * NUMEL * 4  # read a and b, write a
    deadline = time.monotonic() + args.seconds
    rounds = 0
    print("median GB/s of a.add_(b) per pair (in allocation order), every 40 rounds:")
    while time.monotonic() < deadline:
        for pair, (a, b) in enumerate(pairs):
            start = time.perf_counter()
            a.add_(b, alpha=1e-9)
            rates[pair].append(moved / (time.perf_counter() - start) / 1e9)
        rounds += 1
        if rounds % 40 == 0:
            print("  ".join(f"{statistics.median(r[-40:]):5.1f}" for r in rates), flush=True)
    print("whole run: " + "  ".join(f"{statistics.median(r):5.1f}" for r in rates))


if __name__ == "__main__":
    main()
