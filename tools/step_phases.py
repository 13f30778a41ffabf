"""Where a kernel step's time goes when its memory traffic has just evicted everything (a developer's probe).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/step_phases.py [SGD Adam ...] [--set many] [--rounds 20]

Before every timed ``step()`` a 256 MB ``add_`` runs, as the previous step (or
the forward and backward passes) would: the step's Python then finds neither
its objects nor its code in cache.  The step is cut at the dispatcher
(``update_group``), the kernel module's ``gather_`` (the table) and its
``launch`` (version bumps, thread setup and the kernel); the medians of each
phase are printed in µs.  docs/kernels.md quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastoptim
from fastoptim.algorithms import _elementwise
from fastoptim.bench.paramsets import build, sparse_grad
from fastoptim.kernels import dispatch

PHASES = ("step entry -> dispatcher", "dispatcher -> gather_", "gather_ (table)", "gather_ -> launch", "launch (kernel)", "after the launch")


def phases(name: str, set_name: str, rounds: int) -> dict[str, float]:
    paramset = build(set_name)
    params = paramset.fresh_params()
    for p, g in zip(params, paramset.grads):
        p.grad = sparse_grad(g) if name == "SparseAdam" else g.clone()
    opt = getattr(fastoptim, name)(params)
    opt.step()
    module = dispatch._kernel_module(dispatch.capability_of(type(opt).rule))
    marks: dict[str, float] = {}
    clock = time.perf_counter

    def timed(fn, start: str, end: str):
        def wrapper(*args, **kwargs):
            marks[start] = clock()
            out = fn(*args, **kwargs)
            marks[end] = clock()
            return out

        return wrapper

    update_group = dispatch.update_group
    dispatch_module = _elementwise._dispatch()
    originals = (dispatch_module.update_group, module.gather_, module.launch)
    dispatch_module.update_group = timed(update_group, "dispatch", "dispatched")
    module.gather_ = timed(originals[1], "gather", "gathered")
    module.launch = timed(originals[2], "launch", "launched")
    try:
        opt.step()
        a, b = torch.randn(64 << 20), torch.randn(64 << 20)
        samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
        for _ in range(rounds):
            a.add_(b, alpha=1e-9)
            start = clock()
            opt.step()
            end = clock()
            cuts = [start, marks["dispatch"], marks["gather"], marks["gathered"], marks["launch"], marks["launched"], end]
            for phase, t0, t1 in zip(PHASES, cuts, cuts[1:]):
                samples[phase].append(t1 - t0)
    finally:
        dispatch_module.update_group, module.gather_, module.launch = originals
    return {phase: statistics.median(values) * 1e6 for phase, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algorithms", nargs="*", default=["SGD", "Adam", "ASGD"])
    parser.add_argument("--set", default="many")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    for name in args.algorithms:
        result = phases(name, args.set, args.rounds)
        outside = sum(v for k, v in result.items() if k != "launch (kernel)")
        print(f"{name} on {args.set} (median µs): " + " | ".join(f"{k} {v:.0f}" for k, v in result.items()) + f" | outside the launch {outside:.0f}")


if __name__ == "__main__":
    main()
