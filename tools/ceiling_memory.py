"""Does the bench's ceiling run on memory as fast as the optimizers' own? (a developer's probe)

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/ceiling_memory.py [--sets big,many] [--seconds 12]

tools/memory_pages.py showed that on this VM two 256 MiB pairs can run
``a.add_(b)`` at different speeds at the same moment, depending on the memory
each was given.  The bench measures its ceiling on one pair, allocated once
after the parameter sets; a cell's tensors are allocated later.  This probe
allocates in the bench's order (the sets, then the ceiling exactly as
:class:`fastoptim.bench.runner.Ceiling` does), then for each set clones its
parameters and gradients as a cell does, adds two zero-filled state tensors
per parameter (Adam's), allocates a second, fresh ceiling pair after them,
and times in interleaved rounds:

* the bench's pair;
* the fresh pair (what a ceiling allocated per cell would measure);
* ``p.add_(g, alpha=0)`` over the set's own parameters and gradients (on
  ``big`` the ceiling's very operation on the optimizer's memory; on ``many``
  it also pays one call per tensor).

It prints the median GB/s of each.  docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from fastoptim.bench import paramsets
from fastoptim.bench.runner import Ceiling


def median_gbps(seconds: float, timed: dict, moved: dict) -> dict[str, float]:
    """Run every entry of ``timed`` in turn for ``seconds``; the median GB/s of each."""
    taken: dict[str, list[float]] = {name: [] for name in timed}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, step in timed.items():
            start = time.perf_counter()
            step()
            taken[name].append(time.perf_counter() - start)
    return {name: moved[name] / statistics.median(times) / 1e9 for name, times in taken.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="big,many")
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    names = args.sets.split(",")
    sets = {name: paramsets.build(name) for name in names}  # the bench builds its sets first
    bench_pair = Ceiling(256.0, torch.float32, seed=0)
    for name in names:
        params = sets[name].fresh_params()
        grads = [g.clone() for g in sets[name].grads]
        state = [torch.zeros_like(p) for p in params for _ in range(2)]  # noqa: F841 - occupies memory as a cell's does
        fresh_pair = Ceiling(256.0, torch.float32, seed=1)

        @torch.no_grad()
        def own() -> None:
            for p, g in zip(params, grads):
                p.add_(g, alpha=0.0)

        own_bytes = 3 * sum(p.numel() * p.element_size() for p in params)
        rates = median_gbps(
            args.seconds,
            {"bench's pair": bench_pair.step, "fresh pair": fresh_pair.step, "own p, g": own},
            {"bench's pair": bench_pair.bytes, "fresh pair": fresh_pair.bytes, "own p, g": own_bytes},
        )
        print(f"{name:5s} " + " | ".join(f"{k} {v:5.1f} GB/s" for k, v in rates.items()), flush=True)
        fresh_pair.release()
        del params, grads, state, fresh_pair, own
        gc.collect()


if __name__ == "__main__":
    main()
