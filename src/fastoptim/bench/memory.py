"""Peak extra memory of one optimizer step, from the kernel's resident-set counters.

Tensors are allocated by torch's C++ allocator, out of reach of tracemalloc, and
the CPU has no allocator statistics like ``torch.cuda.max_memory_allocated``.
So the bench asks Linux, which counts every resident page whoever allocated it:

1. ``malloc_trim(0)`` hands the memory glibc keeps cached from earlier frees
   back to the kernel.  Without it a temporary could reuse pages that are
   already resident and the step would look free.
2. Writing ``5`` to ``/proc/self/clear_refs`` resets the peak resident set
   (``VmHWM``) to the current one (Linux >= 4.0).
3. ``VmRSS`` is read, one step runs, ``VmHWM`` and ``VmRSS`` are read again.

Peak extra = max(VmHWM, VmRSS) after the step - VmRSS before it, page granular.
Other threads of the process (tqdm's monitor, an interpreter's small
allocations) can only add to it, so :func:`peak_extra` repeats the measure and
keeps the smallest.  The optimizer's state must already exist (run a step first):
state is memory the algorithm keeps, not memory a step needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

__all__ = ["MEMORY_METHOD", "peak_extra", "read_status", "supported"]

MEMORY_METHOD = (
    "peak RSS delta of one step after a warm-up: malloc_trim(0), reset VmHWM via "
    "/proc/self/clear_refs, max(VmHWM, VmRSS) after the step - VmRSS before; smallest of "
    "{trials} trials"
)

_libc = None


def _malloc_trim() -> None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def read_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def supported() -> bool:
    """Whether this kernel lets a process read and reset its peak resident set."""
    try:
        return "VmHWM" in read_status() and _reset_peak()
    except OSError:
        return False


def peak_extra(step: Callable[[], object], trials: int = 3, collect: bool = True) -> dict:
    """Peak extra resident bytes while ``step()`` runs (see the module docstring).

    ``collect``: run the garbage collector first (a full collection costs
    0.1-0.5 s with torch imported, so a caller measuring several steps in a
    row collects once itself and passes False).
    """
    samples = []
    if collect:
        gc.collect()
    for _ in range(trials):
        _malloc_trim()
        if not _reset_peak():
            return {"bytes": None, "trials": [], "error": "cannot reset VmHWM (/proc/self/clear_refs)"}
        before = read_status()["VmRSS"]
        step()
        after = read_status()
        samples.append(max(after["VmHWM"], after["VmRSS"]) - before)
    return {"bytes": max(0, min(samples)), "trials": samples}
