"""Cold first step: run by file path in a fresh interpreter, prints one JSON line.

The clock starts after ``import torch`` and after the parameters are built
(both costs are the same whatever optimizer library is used) and stops when
the first ``step()`` returns, so it covers ``import fastoptim``, the
constructor, lazy state creation and any JIT compilation or loading of cached
kernels.  The parent runs this only after the main process has already run the
same kernels, so numba's on-disk cache is warm.

With several algorithms (``--quick`` does this to save interpreter starts) the
import is paid once, by the first; later algorithms are timed constructor +
first step in a process where fastoptim is already imported, which understates
their cold start.  The full bench starts one process per algorithm.

This file must not import fastoptim before the clock starts: it loads the
parameter-set builder and the bench's per-algorithm options and closures
(``variants.py``: L-BFGS's ``step`` takes the same closure as in the timed
cells) by path, not through the package.

    python cold.py LIBRARY SET QUICK SCALE DTYPE SEED THREADS ALGORITHM [ALGORITHM ...]

(THREADS 0: torch's default.)
"""

import importlib.util
import json
import sys
import time
from pathlib import Path


def main(argv):
    library, set_name, quick, scale, dtype, seed, threads, *algorithms = argv
    import torch

    if int(threads):
        torch.set_num_threads(int(threads))

    paramsets = _load_by_path("paramsets")
    variants = _load_by_path("variants")

    pset = paramsets.build(
        set_name, quick=quick == "1", scale=float(scale), dtype=getattr(torch, dtype), seed=int(seed)
    )
    work = []
    for algorithm in algorithms:
        params = pset.fresh_params()
        for p, g in zip(params, pset.grads):
            p.grad = paramsets.sparse_grad(g, seed=int(seed)) if algorithm == "SparseAdam" else g.clone()
        work.append((algorithm, params))
    assert "fastoptim" not in sys.modules, "fastoptim imported before the clock started"

    out = {}
    t0 = time.perf_counter()
    if library == "fastoptim":
        import fastoptim as module
    else:
        module = torch.optim
    import_s = time.perf_counter() - t0
    for i, (algorithm, params) in enumerate(work):
        t1 = time.perf_counter()
        optimizer = getattr(module, algorithm)(params, **variants.BENCH_OPTIONS.get(algorithm, {}))
        if callable(getattr(optimizer, "train", None)):
            optimizer.train()  # Schedule-Free steps in train mode only
        closure = variants.closure_for(algorithm, params)
        step_args = () if closure is None else (closure,)
        t2 = time.perf_counter()
        optimizer.step(*step_args)
        t3 = time.perf_counter()
        optimizer.step(*step_args)
        t4 = time.perf_counter()
        own_import = import_s if i == 0 else 0.0
        out[algorithm] = {
            "import_s": own_import,
            "construct_s": t2 - t1,
            "first_step_s": t3 - t2,
            "total_s": own_import + (t3 - t1),
            "second_step_s": t4 - t3,
            "fresh_process": i == 0,
        }
        del optimizer
    print(json.dumps(out))


def _load_by_path(name):
    """The bench module ``name`` (``paramsets``, ``variants``), loaded from this folder without importing fastoptim."""
    spec = importlib.util.spec_from_file_location(f"_fastoptim_bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main(sys.argv[1:])
