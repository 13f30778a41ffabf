"""Per-tensor cost of a step on many tiny tensors: fastoptim next to torch's fused (or foreach) variant.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/tiny_overhead.py [Adam AdamW Adagrad SGD ...] [--profile]

The bench's ``tiny`` set (2 000 tensors of ~100 elements, gradients kept
between steps); 7 rounds of 50 steps per side, the median round in µs per
tensor.  ``--profile`` adds a cProfile of fastoptim's step (the first name).
A developer's probe: ``fastoptim bench`` holds the reference figures.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import time

import torch

import fastoptim
from fastoptim.bench.paramsets import build

TORCH_FUSED = {"SGD", "Adam", "AdamW", "Adagrad"}


def per_tensor_us(library, name, paramset, **kwargs):
    params = paramset.fresh_params()
    for p, g in zip(params, paramset.grads):
        p.grad = g.clone()
    optimizer = getattr(library, name)(params, lr=1e-3, **kwargs)
    for _ in range(20):
        optimizer.step()
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(50):
            optimizer.step()
        rounds.append((time.perf_counter() - start) / 50 / len(params) * 1e6)
    return statistics.median(rounds), optimizer


def main(argv):
    names = [a for a in argv if not a.startswith("--")] or ["Adam", "AdamW", "Adagrad", "SGD"]
    paramset = build("tiny")
    for name in names:
        kwargs = {"fused": True} if name in TORCH_FUSED else {"foreach": True}
        ours, optimizer = per_tensor_us(fastoptim, name, paramset)
        theirs, _ = per_tensor_us(torch.optim, name, paramset, **kwargs) if hasattr(torch.optim, name) else (float("nan"), None)
        print(f"{name:10s} fastoptim {ours:5.2f} µs/tensor   torch {kwargs} {theirs:5.2f}")
        if "--profile" in argv and name == names[0]:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(200):
                optimizer.step()
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main(sys.argv[1:])
