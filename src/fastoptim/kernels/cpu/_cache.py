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

When no directory is writable the kernels still work, compiled in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
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
    """numba's function cache, located and stamped by :class:`_KernelLocator`."""

    _impl_class = _KernelCacheImpl


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
