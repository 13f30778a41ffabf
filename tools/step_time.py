"""Median ``optimizer.step()`` time of one fastoptim algorithm on one of the bench's sets (a developer's probe).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        PYTHONPATH=<a checkout>/src python tools/step_time.py Adafactor big [--steps 20]

The parameters and gradients are the bench's (``fastoptim.bench.paramsets``),
the optimizer built as the bench builds fastoptim's (its options, L-BFGS's
closure, Schedule-Free's ``train()``); three
steps warm up, then ``--steps`` are timed one by one and the median printed
in ms.  For an A/B of two versions of a kernel, run it on two ``git archive``s
alternately, each with its own ``FASTOPTIM_CACHE_DIR``: much quicker than
``fastoptim bench --only``, which also times torch's variants.  docs/kernels.md
("Vector width") quotes such runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch  # noqa: F401  (imported before fastoptim, as a user would)

from fastoptim.bench import paramsets, variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algorithm")
    parser.add_argument("param_set", choices=["many", "big", "tiny"])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    built = paramsets.build(args.param_set)
    params = built.params
    for p, g in zip(params, built.grads):  # SparseAdam's as the bench makes them: 10 % of the rows
        p.grad = paramsets.sparse_grad(g) if args.algorithm == "SparseAdam" else g.clone()
    closure = variants.closure_for(args.algorithm, params)
    (ours,) = [v for v in variants.variants_for(args.algorithm)[0] if v.library == "fastoptim"]
    optimizer = ours.make(params)  # the bench's own constructor: its options, Schedule-Free's train()

    def step() -> None:
        optimizer.step(closure) if closure else optimizer.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(f"{statistics.median(times) * 1e3:.2f}")


if __name__ == "__main__":
    main()
