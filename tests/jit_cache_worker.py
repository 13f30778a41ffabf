"""One process of test_jit_cache_concurrency: wait for the start signal, step with the kernels, report.

Usage: ``python jit_cache_worker.py <ready-file> <go-file>``.  The kernel cache
directory comes from the environment (``FASTOPTIM_CACHE_DIR``).  Prints one
JSON line: per algorithm, whether the kernel steps matched the reference rule
and a digest of the resulting parameters; and the numba cache statistics of
every kernel (hits and misses, i.e. loaded from disk or compiled).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch

import fastoptim
from fastoptim.kernels import dispatch

CASES = {
    "SGD": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "AdamW": dict(lr=1e-2, amsgrad=True),
    "RMSprop": dict(lr=1e-2, centered=True, momentum=0.5),
}
STEPS = 3


def run(name: str, backend: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=gen).requires_grad_() for shape in ((257, 3), (1001,), (5, 7))]
    optimizer = getattr(fastoptim, name)(params, **CASES[name])
    with dispatch.use_backend(backend):
        for _ in range(STEPS):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            optimizer.step()
    return [p.detach() for p in params]


def kernel_stats() -> dict[str, dict[str, int]]:
    """numba's cache statistics of every kernel dispatcher that fastoptim has loaded."""
    from numba.core.registry import CPUDispatcher

    stats = {}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("fastoptim.kernels.") or module is None:
            continue
        for attr, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.stats.cache_path is not None:
                key = f"{module_name}.{attr}"
                stats[key] = {"hits": sum(value.stats.cache_hits.values()), "misses": sum(value.stats.cache_misses.values())}
    return stats


def main(ready: str, go: str) -> None:
    torch.set_num_threads(1)
    Path(ready).touch()
    deadline = time.monotonic() + 300
    while not Path(go).exists():  # everyone starts stepping at the same moment
        if time.monotonic() > deadline:
            raise SystemExit("no start signal")
        time.sleep(0.005)
    results = {}
    for name in CASES:
        fast = run(name, "numba")  # strict: raises if the kernel does not run
        reference = run(name, "reference")
        close = all(torch.allclose(a, b, rtol=1.3e-6, atol=1e-5) for a, b in zip(fast, reference))
        digest = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in fast)).hexdigest()
        results[name] = {"matches_reference": close, "digest": digest}
    from fastoptim.kernels.cpu import _cache

    print(json.dumps({"results": results, "stats": kernel_stats(), "cache_dir": _cache.CACHE_DIR}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
