"""Where the compiled CPU kernels live on disk, and how processes share them.

numba's own ``cache=True`` has two weaknesses for a library:

* it keys a cached function on *its own* source file only, so editing a helper
  in another file (``_launch.py``) would silently keep stale machine code;
* two processes compiling the same function at once can both pick the same
  data-file number for different signatures (index and data are written in
  two steps), leaving an index entry that points to another signature's code.

So the kernels use their own locator:

* the cache directory is ``$FASTOPTIM_CACHE_DIR``, else
  ``$NUMBA_CACHE_DIR/fastoptim``, else ``$XDG_CACHE_HOME/fastoptim`` (``~/.cache``),
  in a sub-directory named after the numba version, the Python version and a
  hash of every source file of ``fastoptim.kernels.cpu`` -- any edit gives a
  fresh directory, never a stale hit;
* the first call of each kernel signature in a process (the call that loads
  or compiles it) holds an exclusive ``flock`` on ``<dir>/.lock-<kernel>``:
  processes that start together on an empty cache compile a kernel one after
  another, and the later ones load what the first one wrote instead of
  compiling again.

A kernel missing from the cache is compiled in a **child process**, which
writes it to the cache; this process then loads it like any other.  So every
process runs the same, cached, machine code: a process that compiled a kernel
itself would run another copy of its parallel loop (numba finalises the
``prange`` gufunc on its own and again inside the kernel's module, and only the
second copy is cached), and under the ``contract`` flag LLVM may fuse a
different product into an FMA in each copy -- one ulp apart on ~10 % of SGD's
elements.  (``FASTOPTIM_COMPILE_IN_PROCESS=1``, or a failing child, compiles
in this process instead.)

When no directory is writable the kernels still work, compiled in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator

import numba
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

try:  # POSIX; elsewhere the in-process lock is all we take
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def source_hash() -> str:
    """SHA-256 over every ``.py`` file of this package (name and contents)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(_PACKAGE_DIR)):
        if name.endswith(".py"):
            digest.update(name.encode())
            with open(os.path.join(_PACKAGE_DIR, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


SOURCE_HASH = source_hash()

#: LLVM fast-math flags of every kernel.  Not numba's ``fastmath=True``: 'nnan'
#: and 'ninf' would let LLVM assume that no NaN or inf occurs, while torch
#: propagates them (a NaN gradient must give a NaN parameter, amsgrad's max must
#: keep a NaN).  Why these (measurements): docs/kernels.md.  For such
#: measurements ``FASTOPTIM_FASTMATH`` ("none" or a comma-separated list)
#: replaces them; the flags are part of the cache directory's name, since
#: numba's cache index does not record them.
_DEFAULT_FASTMATH = frozenset({"contract", "nsz", "arcp", "afn", "reassoc"})
FASTMATH = _DEFAULT_FASTMATH
_override = os.environ.get("FASTOPTIM_FASTMATH")
if _override is not None:
    FASTMATH = frozenset(f.strip() for f in _override.split(",") if f.strip() and f.strip() != "none")


#: The widest SIMD vector, in bits, of the loops whose kernels ask for one
#: (``_launch.vector_width_hint``; 0 leaves it to LLVM).  LLVM would give an
#: AVX-512 CPU such as Zen 4 512-bit loops; with 256-bit ones, streaming SGD
#: over one 8192² tensor went from 0.85x to 0.95x the speed of torch's ``add_``
#: when memory ran at 90 GB/s (docs/kernels.md, "Vector width").
#: ``FASTOPTIM_VECTOR_BITS`` changes it for measurements; like the flags, it
#: is part of the cache directory's name.
_DEFAULT_VECTOR_BITS = 256


def _vector_bits(setting: str | None) -> int:
    """``FASTOPTIM_VECTOR_BITS`` as a width: unset gives the default; anything but a whole number >= 0 is an error."""
    if setting is None:
        return _DEFAULT_VECTOR_BITS
    if not setting.strip().isdigit():
        raise ValueError(f"FASTOPTIM_VECTOR_BITS must be a whole number of bits (256, or 0 for LLVM's choice), got {setting!r}")
    return int(setting)


VECTOR_BITS = _vector_bits(os.environ.get("FASTOPTIM_VECTOR_BITS"))

#: The width the kernels with more arithmetic than memory traffic per element ask for
#: (``_launch.wide_vector_hint``): 512 bits, the widest any x86 CPU has.  LLVM tunes
#: Intel's AVX-512 Xeons for 256-bit loops; with 512-bit ones, on such a VM, Adafactor's
#: passes (float64 sums beside float32 loads, a product and a cap per element) ran
#: 8-13 % faster, LARS's and LAMB's 1 % on one 8192² tensor and 9 % / 5 % on the bench's
#: ``many`` set, whose tensors each stay in one thread's cache.  On Zen 4 it is LLVM's
#: own choice, and a CPU without AVX-512 keeps its widest.  ``FASTOPTIM_VECTOR_BITS=0``
#: (LLVM's width everywhere) drops it too.
WIDE_VECTOR_BITS = 512 if VECTOR_BITS else 0


def _base_dir() -> str:
    explicit = os.environ.get("FASTOPTIM_CACHE_DIR")
    if explicit:
        return explicit
    if numba.config.CACHE_DIR:
        return os.path.join(numba.config.CACHE_DIR, "fastoptim")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "fastoptim")


def _usable_dir() -> str | None:
    version = f"numba{numba.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{SOURCE_HASH[:16]}"
    if FASTMATH != _DEFAULT_FASTMATH:
        version += "-fm-" + "-".join(sorted(FASTMATH) or ["none"])
    if VECTOR_BITS != _DEFAULT_VECTOR_BITS:
        version += f"-vw{VECTOR_BITS}"
    path = os.path.join(_base_dir(), version)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK | os.X_OK) else None


#: the directory holding this version's compiled kernels (None: not cached)
CACHE_DIR: str | None = _usable_dir()


class _KernelLocator(_CacheLocator):
    """Every kernel of this package goes to :data:`CACHE_DIR`, stamped with :data:`SOURCE_HASH`."""

    def __init__(self, py_func, py_file):
        self._lineno = py_func.__code__.co_firstlineno

    def get_cache_path(self) -> str:
        assert CACHE_DIR is not None
        return CACHE_DIR

    def get_source_stamp(self) -> str:
        return SOURCE_HASH

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if CACHE_DIR is None or os.path.dirname(os.path.abspath(py_file)) != _PACKAGE_DIR:
            return None
        return cls(py_func, py_file)


class _KernelCacheImpl(CompileResultCacheImpl):
    _locator_classes = [_KernelLocator]


class KernelCache(FunctionCache):
    """numba's function cache, located and stamped by :class:`_KernelLocator`; a miss compiles in a child process."""

    _impl_class = _KernelCacheImpl

    def load_overload(self, sig, target_context):
        cres = super().load_overload(sig, target_context)
        if cres is None and os.environ.get(_IN_PROCESS) != "1" and _compile_in_child(self._py_func, sig):
            cres = super().load_overload(sig, target_context)
        return cres


#: set in the child (and by users who prefer it): compile here, do not spawn
_IN_PROCESS = "FASTOPTIM_COMPILE_IN_PROCESS"

_CHILD = """
import importlib, pickle, sys
module, qualname, sig = sys.argv[1], sys.argv[2], pickle.loads(bytes.fromhex(sys.argv[3]))
kernel = importlib.import_module(module)
for part in qualname.split("."):
    kernel = getattr(kernel, part)
kernel.compile(sig)
"""


def _compile_in_child(py_func, sig) -> bool:
    """Compile ``py_func``'s kernel for ``sig`` in a fresh interpreter that saves it to the cache; True if it did."""
    env = dict(os.environ)
    env[_IN_PROCESS] = "1"
    env["FASTOPTIM_CACHE_DIR"] = _base_dir()
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    command = [sys.executable, "-c", _CHILD, py_func.__module__, py_func.__qualname__, pickle.dumps(sig).hex()]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"fastoptim: compiling {py_func.__qualname__} in a child process failed ({exc}); compiling here", stacklevel=2)
        return False
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        warnings.warn(f"fastoptim: compiling {py_func.__qualname__} in a child process failed ({last}); compiling here", stacklevel=2)
        return False
    return True


def enable_cache(dispatcher) -> None:
    """Give a numba dispatcher the kernel cache (no-op when no directory is usable)."""
    if CACHE_DIR is not None:
        dispatcher._cache = KernelCache(dispatcher.py_func)


_thread_lock = threading.Lock()


@contextlib.contextmanager
def compile_lock(name: str) -> Iterator[None]:
    """Exclusive across threads, and across processes sharing :data:`CACHE_DIR`, for kernel ``name``.

    Held while a kernel signature is loaded or compiled.  One lock per kernel
    (numba keeps one index file per function): processes loading or compiling
    other kernels never wait for each other.
    """
    with _thread_lock:
        if CACHE_DIR is None or fcntl is None:
            yield
            return
        try:
            fd = os.open(os.path.join(CACHE_DIR, f".lock-{name}"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock
