"""Time one Muon step: torch.optim.Muon against fastoptim.Muon (batched Newton–Schulz).

    python tools/bench_muon.py                       # 24 × 1024×1024 and 24 × 1024×4096, float32, CPU
    python tools/bench_muon.py --shape 256x256:64 --device cuda --steps 20

Both optimizers get the same parameters and the same gradients every step;
steps alternate between the two libraries so that a change in machine load
hits both alike.  The median step time of each is printed with their ratio,
and the parameters are compared at the end (bit for bit on CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import fastoptim


def parse_shape(text: str) -> tuple[int, int, int]:
    """``ROWSxCOLS:COUNT`` → (rows, cols, count)."""
    dims, _, count = text.partition(":")
    rows, cols = (int(d) for d in dims.lower().split("x"))
    return rows, cols, int(count or 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", type=parse_shape, metavar="ROWSxCOLS:COUNT",
                        help="matrices to optimise (repeatable; default 1024x1024:24 and 1024x4096:24)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per library (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per library first (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args()
    shapes = args.shape or [(1024, 1024, 24), (1024, 4096, 24)]
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    initial = [torch.randn(r, c, generator=gen) for r, c, n in shapes for _ in range(n)]
    grads = [[torch.randn(p.shape, generator=gen).to(device) for p in initial] for _ in range(2)]
    params = {lib: [p.to(device).requires_grad_() for p in initial] for lib in ("torch", "fastoptim")}
    opts = {"torch": torch.optim.Muon(params["torch"], lr=0.02),
            "fastoptim": fastoptim.Muon(params["fastoptim"], lr=0.02)}
    times: dict[str, list[float]] = {lib: [] for lib in opts}

    for step in range(args.warmup + args.steps):
        for lib, opt in opts.items():
            for p, g in zip(params[lib], grads[step % 2]):
                p.grad = g  # the same gradient tensors for both (Muon only reads them)
            sync(device)
            start = time.perf_counter()
            opt.step()
            sync(device)
            if step >= args.warmup:
                times[lib].append(time.perf_counter() - start)

    median = {lib: statistics.median(t) for lib, t in times.items()}
    diff = max((a - b).abs().max().item() for a, b in zip(params["fastoptim"], params["torch"]))
    described = ", ".join(f"{n} × {r}×{c}" for r, c, n in shapes)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Muon step on {described} float32, {device}, {torch.get_num_threads()} threads, load {load:.1f}")
    for lib in opts:
        print(f"  {lib:10s} median {median[lib]:8.3f} s   (steps: {', '.join(f'{t:.3f}' for t in times[lib])})")
    ratio = median["torch"] / median["fastoptim"]
    print(f"  speed-up   {ratio:.2f}x   max |Δparam| after {args.warmup + args.steps} steps: {diff:.3g}")


if __name__ == "__main__":
    main()
