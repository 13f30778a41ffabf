"""Per-tensor cost of a step on many tiny tensors: fastoptim next to torch's fused (or foreach) variant.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/tiny_overhead.py [Adam AdamW Adagrad SGD ...] [--new-grads] [--profile]

The bench's ``tiny`` set (2 000 tensors of ~100 elements, gradients kept
between steps); 7 rounds of 50 steps per side, the median round in µs per
tensor.  ``--new-grads`` gives every step new gradient tensors, as training
does (``zero_grad()``, then a backward pass, outside the timed step).
``--profile`` adds a cProfile of fastoptim's step (the first name).  A
developer's probe: ``fastoptim bench`` holds the reference figures.
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


def per_tensor_us(library, name, paramset, new_grads=False, **kwargs):
    """Median µs per tensor of a step; with ``new_grads`` every step gets new gradient tensors from a
    backward pass after ``zero_grad()`` (outside the step's time)."""
    params = [p.requires_grad_() for p in paramset.fresh_params()]
    for p, g in zip(params, paramset.grads):
        p.grad = g.clone()
    optimizer = getattr(library, name)(params, lr=1e-3, **kwargs)
    for _ in range(20):
        optimizer.step()
    rounds = []
    for _ in range(7):
        elapsed = 0.0
        for _ in range(50):
            if new_grads:  # as in training: autograd makes them, Python sees them first in the step
                optimizer.zero_grad(set_to_none=True)
                torch.stack([p.sum() for p in params]).sum().backward()
            start = time.perf_counter()
            optimizer.step()
            elapsed += time.perf_counter() - start
        rounds.append(elapsed / 50 / len(params) * 1e6)
    return statistics.median(rounds), optimizer


def main(argv):
    names = [a for a in argv if not a.startswith("--")] or ["Adam", "AdamW", "Adagrad", "SGD"]
    paramset = build("tiny")
    for name in names:
        kwargs = {"fused": True} if name in TORCH_FUSED else {"foreach": True}
        new_grads = "--new-grads" in argv
        ours, optimizer = per_tensor_us(fastoptim, name, paramset, new_grads)
        theirs, _ = per_tensor_us(torch.optim, name, paramset, new_grads, **kwargs) if hasattr(torch.optim, name) else (float("nan"), None)
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
