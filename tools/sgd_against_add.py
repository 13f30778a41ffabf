"""fastoptim's SGD step against torch's ``p.add_(g)`` on the same tensors, window by window (a developer's probe).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/sgd_against_add.py [--seconds 240] [--threads 2]

SGD with torch's defaults moves what the bench's ceiling moves: it reads θ and
g and writes θ.  The two alternate step by step on one 8192 × 8192 parameter
for ``--seconds``, and every 3 s the median GB/s of each over that window is
printed, so that the memory's slow and fast phases (docs/performance.md) show
up as rows.  In the session-10 full bench, whose SGD cells fell in a fast
phase, fastoptim's SGD moved 70 GB/s against 86 for torch's; this probe is
how to look for that gap when the memory is fast again.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastoptim

NUMEL = 8192 * 8192


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    param = torch.randn(NUMEL, requires_grad=True)
    param.grad = torch.randn(NUMEL)
    optimizer = fastoptim.SGD([param], lr=1e-3)
    optimizer.step()  # compile or load the kernel

    @torch.no_grad()
    def torch_add() -> None:
        param.add_(param.grad, alpha=-1e-3)

    contenders = {"torch add_": torch_add, "fastoptim SGD": optimizer.step}
    moved = 3 * NUMEL * param.element_size()
    start = last = time.monotonic()
    window: dict[str, list[float]] = {name: [] for name in contenders}
    ratios = []
    while time.monotonic() - start < args.seconds:
        for name, step in contenders.items():
            t0 = time.perf_counter()
            step()
            window[name].append(time.perf_counter() - t0)
        if time.monotonic() - last > 3:
            rates = {name: moved / statistics.median(times) / 1e9 for name, times in window.items()}
            ratios.append(rates["fastoptim SGD"] / rates["torch add_"])
            print(f"{time.monotonic() - start:6.1f} s  " + " | ".join(f"{k} {v:5.1f} GB/s" for k, v in rates.items()),
                  flush=True)  # fmt: skip
            window = {name: [] for name in contenders}
            last = time.monotonic()
    if ratios:
        print(f"fastoptim / torch per window: median {statistics.median(ratios):.3f}, "
              f"range {min(ratios):.3f}–{max(ratios):.3f} over {len(ratios)} windows")  # fmt: skip


if __name__ == "__main__":
    main()
