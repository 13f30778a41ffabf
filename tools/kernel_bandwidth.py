"""Bandwidth of fastoptim's default CPU path next to the copy ceiling and torch.optim (a developer's probe).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \\
        python tools/kernel_bandwidth.py [--sets many,big] [--only Adam,SGD] [--rounds 15] [--torch]

One process, interleaved rounds (the ceiling ``a.add_(b, alpha=s)`` over 256 MB,
the same read-modify-write over the optimizer's own parameters and gradients
(``torch._foreach_add_``), then each variant, then again): the minimum of each
is compared, so load from other processes hurts all columns alike.  Each
variant is given as a percentage of both ceilings: on a VM the pages behind one
256 MB buffer can be much slower than those behind another (host page size),
and the second ceiling runs on the very pages the step touches.  GB/s is the minimum traffic of the
algorithm's default configuration (``fastoptim.bench.bytemodel``) over the
minimum step time.  ``fastoptim bench`` is the full benchmark; this probe only
exists to check the kernels quickly (docs/kernels.md quotes it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import fastoptim
from fastoptim.bench.bytemodel import ceiling_bytes, step_bytes
from fastoptim.bench.paramsets import build
from fastoptim.kernels.dispatch import backend_for

ALGORITHMS = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop", "Adafactor"]
TORCH_FUSED = {"SGD", "Adam", "AdamW", "Adagrad"}


def make(lib, name, paramset, **kwargs):
    params = paramset.fresh_params()
    for p, g in zip(params, paramset.grads):
        p.grad = g.clone()
    opt = getattr(lib, name)(params, **kwargs)
    if hasattr(opt, "train"):  # Schedule-Free: steps only in train mode
        opt.train()
    opt.step()  # state created, kernels compiled or loaded
    return opt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="many,big")
    parser.add_argument("--only", default=",".join(ALGORITHMS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--torch", action="store_true", help="also time torch.optim fused (where it exists) and foreach")
    args = parser.parse_args()
    ceiling_n = 64 * 1024 * 1024
    a, b = torch.randn(ceiling_n), torch.randn(ceiling_n)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    for set_name in args.sets.split(","):
        paramset = build(set_name)
        print(f"\n{set_name}: {paramset.n_tensors} tensors, {paramset.n_elements / 1e6:.1f}M float32 elements")
        for name in args.only.split(","):
            variants = {"fastoptim": make(fastoptim, name, paramset)}
            assert backend_for(variants["fastoptim"]) == "numba", name
            if args.torch and hasattr(torch.optim, name):
                if name in TORCH_FUSED:
                    variants["torch fused"] = make(torch.optim, name, paramset, fused=True)
                variants["torch foreach"] = make(torch.optim, name, paramset, foreach=True)
            own = [p for g in variants["fastoptim"].param_groups for p in g["params"]]
            own_grads = [p.grad for p in own]
            times: dict[str, list[float]] = {"ceiling": [], "same-memory ceiling": [], **{k: [] for k in variants}}
            for _ in range(args.rounds):
                for _ in range(3):  # the yardsticks get the most chances to catch a quiet moment
                    t = time.perf_counter()
                    a.add_(b, alpha=1e-9)
                    times["ceiling"].append(time.perf_counter() - t)
                    with torch.no_grad():
                        t = time.perf_counter()
                        torch._foreach_add_(own, own_grads, alpha=1e-9)
                        times["same-memory ceiling"].append(time.perf_counter() - t)
                for key, opt in variants.items():
                    t = time.perf_counter()
                    opt.step()
                    times[key].append(time.perf_counter() - t)
            ceiling = ceiling_bytes(ceiling_n, 4) / min(times["ceiling"]) / 1e9
            same = ceiling_bytes(paramset.n_elements, 4) / min(times["same-memory ceiling"]) / 1e9
            moved = step_bytes(name, paramset.params, paramset.grads)
            cells = []
            for key in variants:
                gbs = moved / min(times[key]) / 1e9
                cells.append(
                    f"{key} {gbs:5.1f} GB/s = {100 * gbs / ceiling:3.0f}% / {100 * gbs / same:3.0f}% "
                    f"(min {1e3 * min(times[key]):.1f} ms, median {1e3 * statistics.median(times[key]):.1f})"
                )
            print(f"  {name:9s} ceiling {ceiling:5.1f} / same-memory {same:5.1f} GB/s | " + " | ".join(cells))
            sys.stdout.flush()
            del variants


if __name__ == "__main__":
    main()
