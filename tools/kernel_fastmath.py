"""What a fast-math flag set does to the kernels: speed, and distance from the reference rules.

    FASTOPTIM_FASTMATH=none python tools/kernel_fastmath.py      # or "contract", "contract,nsz", ...
    python tools/kernel_fastmath.py                              # the default set

(each flag set compiles into its own cache directory.)

* speed: Adam, Adadelta, RAdam and NAdam on one 8192×8192 float32 tensor, as
  GB/s relative to torch's fused Adam stepping the *same* parameter tensor in
  the same rounds (paired, median of 9) -- a yardstick that cancels the machine's
  load and the luck of page placement, which on a shared VM move absolute
  numbers by ±30 %;
* accuracy: every configuration of ``tests/test_kernels.py``, 10 steps on
  2 × 50 000 float32 elements, counting the elements where the kernel's result
  is not bit-identical to the reference rule's.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import fastoptim
from fastoptim.bench.bytemodel import step_bytes
from fastoptim.bench.paramsets import build
from fastoptim.kernels.dispatch import use_backend

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_kernels import CONFIGS, clone_kwargs  # noqa: E402


def speed() -> str:
    paramset = build("big")
    params = paramset.fresh_params()
    for p, g in zip(params, paramset.grads):
        p.grad = g
    yardstick = torch.optim.Adam(params, lr=1e-9, fused=True)
    yardstick.step()
    yard_bytes = step_bytes("Adam", paramset.params, paramset.grads)
    cells = []
    for name in ("Adam", "Adadelta", "RAdam", "NAdam"):
        opt = getattr(fastoptim, name)(params, lr=1e-9)
        opt.step()
        moved = step_bytes(name, paramset.params, paramset.grads)
        ratios = []
        for _ in range(9):
            t = time.perf_counter()
            yardstick.step()
            t_yard = time.perf_counter() - t
            t = time.perf_counter()
            opt.step()
            t_ours = time.perf_counter() - t
            ratios.append((moved / t_ours) / (yard_bytes / t_yard))
        cells.append(f"{name} {statistics.median(ratios):.2f}")
        del opt
    return ", ".join(cells)


def accuracy() -> str:
    differ = total = 0
    for name, kwargs in CONFIGS:
        gen = torch.Generator().manual_seed(0)
        values = [torch.randn(50_000, generator=gen) for _ in range(2)]
        ours = [v.clone().requires_grad_() for v in values]
        ref = [v.clone().requires_grad_() for v in values]
        opt_ours = getattr(fastoptim, name)(ours, **clone_kwargs(kwargs))
        opt_ref = getattr(fastoptim, name)(ref, **clone_kwargs(kwargs))
        for _ in range(10):
            for a, b in zip(ours, ref):
                g = torch.randn(50_000, generator=gen)
                a.grad, b.grad = g.clone(), g.clone()
            with use_backend("numba"):
                opt_ours.step()
            with use_backend("reference"):
                opt_ref.step()
        differ += sum(int((a != b).sum()) for a, b in zip(ours, ref))
        total += 100_000
    return f"{differ} of {total} elements not bit-identical to the reference ({100 * differ / total:.1f} %)"


if __name__ == "__main__":
    flags = os.environ.get("FASTOPTIM_FASTMATH", "default")
    print(f"FASTOPTIM_FASTMATH={flags}, load average {os.getloadavg()[0]:.1f}")
    print(f"  GB/s relative to torch fused Adam: {speed()}")
    print(f"  accuracy after 10 steps: {accuracy()}")
