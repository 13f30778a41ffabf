"""Each kernel with its loops' vector width hint against the same kernel with LLVM's own width (a developer's probe).

    FASTOPTIM_CACHE_DIR=/proc/nope FASTOPTIM_COMPILE_IN_PROCESS=1 \\
        python tools/vector_width.py SGD,ASGD,Adam --set big [--seconds 150]

``_launch.vector_width_hint`` asks LLVM for loops no wider than
``_cache.VECTOR_BITS`` (256) in the parallel loop bodies of the kernels that
call it; this probe needs a version of a kernel where it is called in each
``prange`` body (add the call to a kernel that lacks it to try it there).  For
each algorithm it compiles the kernel twice in this process -- as it is, and
with ``VECTOR_BITS = 0`` (no attribute: LLVM's own choice, 512-bit on an
AVX-512 CPU) -- which is why the on-disk cache must be off.  Then the two run
alternately on the same parameters with the bench's ``many`` or ``big`` set,
beside ``torch._foreach_add_(params, grads, alpha=0)`` on those parameters,
and every 4 s a row gives that yardstick's GB/s (the memory's phase) and, per
algorithm, the time with LLVM's width divided by the time with the hint (> 1:
the hint is faster).  Two compilations of one kernel can differ by a few per
cent by themselves: run it with ``FASTOPTIM_VECTOR_BITS=0`` (neither copy
hinted) for the A/A baseline.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

import fastoptim
from fastoptim.bench import paramsets
from fastoptim.kernels.cpu import _cache, _launch

#: algorithm -> (kernel module, kernel name, constructor kwargs)
KERNELS = {
    "SGD": ("sgd", "_sgd_kernel", {}),
    "SGD-momentum": ("sgd", "_sgd_kernel", {"momentum": 0.9}),
    "ASGD": ("asgd", "_asgd_kernel", {}),
    "Adam": ("adam", "_adam_kernel", {}),
    "AdamW": ("adam", "_adam_kernel", {}),
    "Adagrad": ("adagrad", "_adagrad_kernel", {}),
    "RMSprop": ("rmsprop", "_rmsprop_kernel", {}),
    "Adadelta": ("adadelta", "_adadelta_kernel", {}),
    "Adamax": ("adamax", "_adamax_kernel", {}),
    "NAdam": ("nadam", "_nadam_kernel", {}),
    "RAdam": ("radam", "_radam_kernel", {}),
    "Rprop": ("rprop", "_rprop_kernel", {}),
    "Lion": ("lion", "_lion_kernel", {}),
    "Lamb": ("lamb", "_lamb_kernel", {}),
    "LARS": ("lars", "_lars_kernel", {}),
    "Adan": ("adan", "_adan_kernel", {}),
    "AdamWScheduleFree": ("schedule_free", "_schedule_free_kernel", {}),
    "SGDScheduleFree": ("schedule_free", "_schedule_free_kernel", {}),
}


def _pair(name: str, params: list[torch.Tensor]):
    """``(step with the hint, step with LLVM's width)`` for a fresh optimizer of ``name`` over ``params``."""
    module_name, kernel_name, kwargs = KERNELS[name]
    module = importlib.import_module(f"fastoptim.kernels.cpu.{module_name}")
    cls = getattr(fastoptim, name.split("-")[0])
    optimizer = cls(params, **kwargs)
    if hasattr(optimizer, "train"):
        optimizer.train()
    optimizer.step()  # compiles the kernel as it is
    hinted = getattr(module, kernel_name)
    saved = _cache.VECTOR_BITS
    _cache.VECTOR_BITS = 0
    try:
        plain = _launch.kernel(hinted.py_func)

        def llvm_width_step() -> None:
            setattr(module, kernel_name, plain)
            try:
                optimizer.step()
            finally:
                setattr(module, kernel_name, hinted)

        llvm_width_step()  # compiles the copy while VECTOR_BITS is 0
    finally:
        _cache.VECTOR_BITS = saved
    return optimizer.step, llvm_width_step


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algorithms", help="comma-separated: " + ", ".join(KERNELS))
    parser.add_argument("--set", default="big", choices=("many", "big"))
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if _cache.CACHE_DIR is not None:
        parser.error("run with FASTOPTIM_CACHE_DIR=/proc/nope FASTOPTIM_COMPILE_IN_PROCESS=1 (see the docstring)")
    torch.set_num_threads(args.threads)
    pristine = paramsets.build(args.set)
    names = args.algorithms.split(",")
    steps, first = {}, None
    for name in names:
        params = [torch.nn.Parameter(p.clone()) for p in pristine.params]
        for p, g in zip(params, pristine.grads):
            p.grad = g.clone()
        steps[name] = _pair(name, params)
        first = first or params
    data, grads = [p.data for p in first], [p.grad for p in first]
    yard_bytes = 3 * sum(p.numel() * p.element_size() for p in data)

    def yardstick() -> None:
        torch._foreach_add_(data, grads, alpha=0)

    print("yardstick GB/s | LLVM-width time / hinted time, per algorithm", flush=True)
    end = time.time() + args.seconds
    while time.time() < end:
        samples: dict[str, list[float]] = {"yard": []}
        samples.update({f"{n} {k}": [] for n in names for k in ("hint", "llvm")})
        window_end = time.time() + 4
        while time.time() < window_end:
            samples["yard"].append(min(_seconds(yardstick) for _ in range(2)))
            for name, (hinted, llvm_width) in steps.items():
                samples[f"{name} hint"].append(min(_seconds(hinted) for _ in range(2)))
                samples[f"{name} llvm"].append(min(_seconds(llvm_width) for _ in range(2)))
        median = {k: statistics.median(v) for k, v in samples.items()}
        ratios = " ".join(f"{n}: {median[f'{n} llvm'] / median[f'{n} hint']:.3f}" for n in names)
        print(f"{yard_bytes / median['yard'] / 1e9:6.1f} | {ratios}", flush=True)


if __name__ == "__main__":
    main()
