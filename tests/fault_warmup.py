"""Imported by test_fault_injection's forkserver: get the kernels into memory before any run is forked.

Each forked run then starts with the kernels in memory instead of loading
them from the disk cache (about a second per kernel on a busy machine).  The
test first imports this module in a throwaway process, which fills a private
kernel cache, so that the forkserver and the reference run both *load* the
kernels (a process that compiles one computes other bits: see
test_jit_cache_concurrency).
numba's GNU OpenMP threading layer refuses to run in a process forked after it
started, so this process, and every run forked from it, uses numba's
``workqueue`` layer.  The runs use one thread (``torch.set_num_threads(1)``,
which the kernels follow), so the arithmetic is the same under every layer;
the reference run in a fresh interpreter, with the default layer, checks it.
"""

import os

os.environ["NUMBA_THREADING_LAYER"] = "workqueue"

import numba  # noqa: E402

numba.config.THREADING_LAYER = "workqueue"

import tempfile  # noqa: E402

import fault_train  # noqa: E402

with tempfile.TemporaryDirectory() as _scratch:
    for _name in fault_train.OPTIMIZERS:
        fault_train.train(_name, os.path.join(_scratch, _name), os.path.join(_scratch, f"{_name}.pt"),
                          steps=2, every=1, report=lambda *event: None)
