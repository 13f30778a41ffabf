"""Run a function in 2 real processes joined by torch.distributed (gloo, CPU, localhost).

``run_workers(fn, *args)`` spawns ``world_size`` processes with
``torch.multiprocessing.spawn``; each joins a process group over TCP on a free
localhost port, calls ``fn(rank, world_size, *args)`` and leaves the group.
An exception in any worker (a failed ``assert`` included) fails the calling
test with the worker's traceback.  ``fn`` must be a module-level function.
``run_script(script, argv)`` runs a worker script in its own process.  Both
try once more when a signal kills a worker (:func:`_once_more`).
"""

from __future__ import annotations

import faulthandler
import os
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stderr_file(log_dir: str, rank: int) -> str:
    return os.path.join(log_dir, f"rank{rank}.stderr")


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, log_dir: str) -> None:
    # The worker's stderr (C++ runtime messages included) goes to a file, so that a
    # death by signal can be reported with what the worker printed before it.
    log = open(_stderr_file(log_dir, rank), "w")
    os.dup2(log.fileno(), 2)
    # A crash in C++ (SIGABRT, SIGSEGV) prints every thread's Python stack there.
    faulthandler.enable(all_threads=True)
    # Two processes share two cores: one intra-op thread each.
    torch.set_num_threads(1)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _once_more(death: str) -> None:
    """The harness's policy for a worker killed by a signal, said out loud: one more try.

    Seen rarely (2026-11, about 1 run in 15 on a fresh kernel cache, once in
    CI): a worker dies by SIGABRT, "terminate called without an active
    exception", a C++ ``std::terminate`` with no Python error.  Its cause is
    not found yet (docs/kernels.md, "Known issues").  The warning carries the
    end of the dead worker's stderr, where faulthandler has printed every
    thread's stack.  A second death fails the test, and a worker's own
    exception is never retried.
    """
    warnings.warn(f"{death}; trying once more", stacklevel=3)


def run_workers(fn: Callable, *args: Any, world_size: int = 2) -> None:
    """Run ``fn`` in ``world_size`` processes; one more try if a signal killed one of them (:func:`_once_more`)."""
    for attempt in range(2):
        port = free_port()
        with tempfile.TemporaryDirectory() as log_dir:
            try:
                mp.spawn(_worker, args=(world_size, port, fn, args, log_dir), nprocs=world_size, join=True)
                return
            except mp.ProcessExitedException as exc:
                if attempt or not exc.signal_name:
                    raise
                printed = Path(_stderr_file(log_dir, exc.error_index)).read_text(errors="replace")
                _once_more(f"distributed worker died: {exc}; its stderr ended with {printed[-2000:]!r}")


def run_script(script: Path, argv: Callable[[int], list[str]]) -> subprocess.CompletedProcess:
    """Run ``python script *argv(attempt)``, its output captured; one more try if a signal killed it (:func:`_once_more`)."""
    def attempt(n: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *argv(n)], capture_output=True, text=True, timeout=600)

    done = attempt(0)
    if done.returncode < 0:
        _once_more(f"worker {script.name} died (rc={done.returncode}): {done.stderr[-300:]!r}")
        done = attempt(1)
    return done


def all_equal_across_ranks(tensors: list[torch.Tensor]) -> bool:
    """True when every rank holds the same values (compared bit for bit)."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])
