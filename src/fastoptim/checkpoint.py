"""Training checkpoints that survive crashes: atomic saves, rotation, and resume.

A checkpoint holds everything needed to continue a run *exactly*: the model,
the optimizer, the LR scheduler, a ``GradScaler``, the random number
generators (torch CPU and CUDA, numpy's global generator, Python's
``random``), the step, and a dict of your own.  It is a plain
``torch.save`` file that loads with ``torch.load(path, weights_only=True)``.

Typical use::

    from fastoptim.checkpoint import load_latest_checkpoint, save_checkpoint

    ckpt = load_latest_checkpoint("ckpt", model=model, optimizer=opt, scheduler=sched)
    start = ckpt.step if ckpt is not None else 0       # steps already done
    for step in range(start, total_steps):
        train_one_step()
        if (step + 1) % 100 == 0:
            save_checkpoint("ckpt", step + 1, model=model, optimizer=opt, scheduler=sched)

Guarantees (docs/reliability.md names the test that proves each):

* **Atomic.**  A checkpoint is written to a temporary file in the same
  directory, flushed and ``fsync``-ed, renamed over its final name with
  ``os.replace`` and the directory is ``fsync``-ed.  A crash at any moment
  leaves either the previous checkpoints or the new one, never a partial file
  under a checkpoint's name.  Temporary files left by a crashed save are
  removed by the next save.
* **Verified.**  Every checkpoint carries a CRC-32 of its whole content
  (``torch.load`` itself does not notice a flipped bit in tensor data).  The
  loader checks it; :func:`load_latest_checkpoint` skips, with a warning, any
  file that is truncated, corrupt or not a checkpoint and takes the newest
  valid one.
* **Safe to load.**  Everything is stored as tensors and plain Python values,
  so ``weights_only=True`` loads it; a value that would not load that way
  (a numpy array in ``extra``, say) is refused *before* anything is written.
* **Nothing half-loaded.**  If the checkpoint does not fit the objects it is
  loaded into (another model, another optimizer class), an error is raised and
  the model, optimizer and scheduler are left as they were.
* **Rotation.**  The newest ``keep_last`` checkpoints are kept.  Saving step
  *s* also removes checkpoints of steps after *s*: they belong to a run that
  was abandoned when this one resumed from an earlier step, and would
  otherwise be picked as "latest".

The model, optimizer, scheduler and scaler arguments take one object each, or
a mapping ``{name: object}`` (a GAN's two optimizers, say); what is loaded must
have the same layout as what was saved.
"""

from __future__ import annotations

import copy
import errno
import os
import random
import re
import secrets
import socket
import time
import warnings
import zlib
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Checkpoint",
    "CorruptCheckpointError",
    "capture_rng_state",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "read_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

FORMAT = "fastoptim.checkpoint"
VERSION = 1

#: Testing aid: ``"write:SECONDS"`` pauses a save once after its first bytes
#: reach the temporary file, ``"rename:SECONDS"`` pauses it after the file is
#: complete and fsync-ed but before the rename.  A test kills the process
#: during the pause to prove that a crash mid-save loses nothing.
FAULT_DELAY_ENV = "FASTOPTIM_CHECKPOINT_TEST_DELAY"

_COMPONENTS = ("model", "optimizer", "scheduler", "scaler")


class CorruptCheckpointError(RuntimeError):
    """A file that is not a complete, intact fastoptim checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns once everything is restored."""

    path: Path
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- file names
def _checkpoint_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-(\d+)\.pt$")


def _temp_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(prefix)}-\d+\.pt\.(?P<host>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not prefix or "/" in prefix or os.sep in prefix or prefix.startswith("."):
        raise ValueError(f"Invalid checkpoint prefix: {prefix!r} (a non-empty file-name part, not starting with '.')")


def list_checkpoints(directory: str | os.PathLike[str], prefix: str = "checkpoint") -> list[tuple[int, Path]]:
    """``(step, path)`` of every file named like a checkpoint, oldest step first.

    Names only: the files are not opened (see :func:`read_checkpoint`).
    """
    _check_prefix(prefix)
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = _checkpoint_re(prefix)
    found = []
    for entry in directory.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


# ---------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """The state of every global random number generator, as tensors and plain values."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _python_rng_state(),
    }
    numpy_state = _numpy_rng_state()
    if numpy_state is not None:
        state["numpy"] = numpy_state
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        python = state["python"]
        random.setstate((python["version"], tuple(int(word) for word in python["internal"].tolist()), python["gauss_next"]))
    if "numpy" in state:
        import numpy as np

        saved = state["numpy"]
        np.random.set_state(
            (
                saved["bit_generator"],
                saved["keys"].numpy().astype(np.uint32),
                int(saved["pos"]),
                int(saved["has_gauss"]),
                float(saved["cached_gaussian"]),
            )
        )
    if "cuda" in state:
        cuda_states = state["cuda"]
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn(
                f"the checkpoint holds the RNG state of {len(cuda_states)} CUDA device(s), but "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} are available: "
                "the CUDA generators are not restored",
                stacklevel=2,
            )


def _python_rng_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    # 625 words below 2**32: one int64 tensor pickles, loads and hashes far
    # faster than 625 Python ints.
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def _numpy_rng_state() -> dict[str, Any] | None:
    try:
        import numpy as np
    except ImportError:  # numpy is a dependency, but the checkpoint does not need it
        return None
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    # numpy arrays do not load with weights_only=True; a tensor does.
    return {
        "bit_generator": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


# ---------------------------------------------------------------- integrity
def _digest(obj: Any) -> int:
    """CRC-32 over the values and structure of a checkpoint payload.

    Tensors contribute dtype, shape and every byte of their (logical, i.e.
    contiguous) data; containers their type and length; other values their
    ``repr``.  The same content gives the same digest before ``torch.save``
    and after ``torch.load``.
    """
    return _feed(obj, 0)


def _feed(obj: Any, crc: int) -> int:
    if isinstance(obj, torch.Tensor):
        crc = zlib.crc32(f"T{obj.dtype}{tuple(obj.shape)}{obj.layout}".encode(), crc)
        if obj.is_sparse:
            obj = obj.detach().coalesce()
            return _feed(obj.values(), _feed(obj.indices(), crc))
        if obj.device.type == "meta" or obj.numel() == 0:
            return crc
        data = obj.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
        try:
            raw = data.view(torch.uint8).numpy()
        except (RuntimeError, TypeError):  # quantized and other exotic tensors
            return zlib.crc32(repr(data.tolist()).encode(), crc)
        return zlib.crc32(raw, crc)
    if isinstance(obj, dict):
        crc = zlib.crc32(f"D{len(obj)}".encode(), crc)
        for key, value in obj.items():
            crc = _feed(value, _feed(key, crc))
        return crc
    if isinstance(obj, (list, tuple)):
        crc = zlib.crc32(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode(), crc)
        for value in obj:
            crc = _feed(value, crc)
        return crc
    if isinstance(obj, set):
        return zlib.crc32(("S" + repr(sorted(map(repr, obj)))).encode(), crc)
    return zlib.crc32(f"{type(obj).__name__}:{obj!r}".encode(), crc)


# ---------------------------------------------------------------- weights_only check
_PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.device, torch.dtype)


def _skeleton(obj: Any) -> Any:
    """``obj`` with every tensor replaced by an empty one: cheap to pickle, same globals."""
    if type(obj) is torch.nn.Parameter:
        return torch.nn.Parameter(torch.empty(0, dtype=obj.dtype), requires_grad=obj.requires_grad)
    if type(obj) is torch.Tensor:
        try:
            empty = torch.empty(0, dtype=obj.dtype)
            return empty.to_sparse() if obj.is_sparse else empty
        except RuntimeError:  # quantized and other exotic dtypes: check the real thing
            return obj
    if type(obj) in (dict, OrderedDict, Counter):
        return type(obj)((_skeleton(k), _skeleton(v)) for k, v in obj.items())
    if type(obj) in (list, tuple, set):
        return type(obj)(_skeleton(v) for v in obj)
    return obj


def _first_unsafe(obj: Any, where: str) -> str | None:
    """Where the first value that ``weights_only`` may refuse sits, for the error message."""
    # Exact types: a str or int subclass (torch.__version__ is one) is a global to the unpickler.
    if type(obj) in _PLAIN_TYPES or type(obj) in (torch.Tensor, torch.nn.Parameter):
        return None
    if type(obj) in (dict, OrderedDict, Counter):
        for key, value in obj.items():
            found = _first_unsafe(key, f"{where} (a key)") or _first_unsafe(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if type(obj) in (list, tuple, set):
        for index, value in enumerate(obj):
            found = _first_unsafe(value, f"{where}[{index}]")
            if found:
                return found
        return None
    return f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}"


def _check_weights_only(payload: dict[str, Any]) -> None:
    """Refuse, before writing, a payload that ``torch.load(weights_only=True)`` would not load."""
    import io

    buffer = io.BytesIO()
    torch.save(_skeleton(payload), buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as exc:
        culprit = _first_unsafe(payload, "checkpoint")
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[-1] if lines else type(exc).__name__)
        reason = reason.split(". Please use")[0]
        raise TypeError(
            "the checkpoint would not load with torch.load(weights_only=True)"
            + (f": {culprit}" if culprit else "")
            + f" ({reason}); store tensors and plain Python values only"
        ) from None


# ---------------------------------------------------------------- saving
def _state_of(name: str, obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return {"mapping": True, "state": {str(key): _state_dict(f"{name}[{key!r}]", value) for key, value in obj.items()}}
    return {"mapping": False, "state": _state_dict(name, obj)}


def _state_dict(name: str, obj: Any) -> Any:
    if not callable(getattr(obj, "state_dict", None)):
        raise TypeError(f"{name} must have a state_dict() method, but got {type(obj).__name__}")
    return obj.state_dict()


class _FaultInjectingWriter:
    """File wrapper that pauses once after the first write (see :data:`FAULT_DELAY_ENV`)."""

    def __init__(self, file: Any, delay: float) -> None:
        self._file, self._delay = file, delay

    def write(self, data: Any) -> int:
        written = self._file.write(data)
        if self._delay:
            self._file.flush()
            time.sleep(self._delay)
            self._delay = 0.0
        return written

    def flush(self) -> None:
        self._file.flush()


def _fault_delay(phase: str) -> float:
    setting = os.environ.get(FAULT_DELAY_ENV, "")
    if not setting:
        return 0.0
    which, _, seconds = setting.partition(":")
    try:
        delay = float(seconds)
    except ValueError:
        raise ValueError(f"{FAULT_DELAY_ENV} must look like 'write:0.5' or 'rename:0.5', got {setting!r}") from None
    if which not in ("write", "rename"):
        raise ValueError(f"{FAULT_DELAY_ENV} must look like 'write:0.5' or 'rename:0.5', got {setting!r}")
    return delay if which == phase else 0.0


def _fsync_directory(directory: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems do not support fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume it is alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_stale_temp_files(directory: Path, prefix: str) -> None:
    """Delete temporary files of saves that crashed (on this host, by a process now gone)."""
    pattern = _temp_re(prefix)
    host = socket.gethostname()
    for entry in directory.iterdir():
        match = pattern.match(entry.name)
        if not match or match.group("host") != host:
            continue
        pid = int(match.group("pid"))
        # Saves within one process run one after another, so a temporary file
        # carrying our own pid was left by an earlier process that had it.
        if pid == os.getpid() or not _pid_alive(pid):
            try:
                entry.unlink()
            except FileNotFoundError:
                pass


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    extra: Mapping[str, Any] | None = None,
    rng: bool = True,
    keep_last: int | None = 3,
    prefix: str = "checkpoint",
    verify: bool = True,
) -> Path:
    """Write ``<directory>/<prefix>-<step>.pt`` atomically and return its path.

    Args:
        directory: where checkpoints live (created if missing).
        step: a non-negative int, typically the number of completed steps;
            checkpoints are ordered by it.
        model, optimizer, scheduler, scaler: objects with ``state_dict()``,
            or mappings ``{name: object}`` of them; any may be ``None``.
        extra: your own values (tensors and plain Python values), returned
            by the loader as ``Checkpoint.extra``.
        rng: also save the global random generators (torch, CUDA, numpy, random).
        keep_last: how many checkpoints to keep (``None``: all).
        prefix: file-name prefix, so several runs can share a directory.
        verify: read the file back and check it before it replaces anything.

    Raises:
        TypeError: a value would not load with ``torch.load(weights_only=True)``.
        ValueError: a bad ``step``, ``keep_last`` or ``prefix``.
        OSError: the file system failed; the previous checkpoints are intact.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"Invalid step: {step!r} (a non-negative int)")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(f"Invalid keep_last value: {keep_last!r} (a positive int or None)")
    _check_prefix(prefix)
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a mapping, but got {type(extra).__name__}")

    payload: dict[str, Any] = {"format": FORMAT, "version": VERSION, "step": step}
    for name, obj in zip(_COMPONENTS, (model, optimizer, scheduler, scaler)):
        payload[name] = _state_of(name, obj)
    payload["rng"] = capture_rng_state() if rng else None
    payload["extra"] = dict(extra) if extra is not None else {}
    payload["versions"] = {"torch": str(torch.__version__), "fastoptim": _fastoptim_version()}
    _check_weights_only(payload)
    payload["crc32"] = _digest(payload)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(directory, prefix)
    final = directory / f"{prefix}-{step:09d}.pt"
    temp = directory / f".{final.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(temp, "wb") as file:
            delay = _fault_delay("write")
            torch.save(payload, _FaultInjectingWriter(file, delay) if delay else file)
            file.flush()
            os.fsync(file.fileno())
        if verify:
            _read(temp, "cpu", mmap=True)  # mapped: checking a large file does not need its size in memory
        delay = _fault_delay("rename")
        if delay:
            time.sleep(delay)
        os.replace(temp, final)
    except BaseException:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    _rotate(directory, prefix, final, step, keep_last)
    return final


def _rotate(directory: Path, prefix: str, final: Path, step: int, keep_last: int | None) -> None:
    later = [path for s, path in list_checkpoints(directory, prefix) if s > step]
    if later:
        warnings.warn(
            f"removing {len(later)} checkpoint(s) of steps after {step} ({', '.join(p.name for p in later)}): "
            "they belong to a run that was abandoned when this one resumed from an earlier step",
            stacklevel=3,
        )
    kept = [path for s, path in list_checkpoints(directory, prefix) if s <= step and path != final]
    doomed = later + (kept[: max(0, len(kept) - (keep_last - 1))] if keep_last is not None else [])
    for path in doomed:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _fastoptim_version() -> str:
    try:
        from . import __version__
    except ImportError:
        return "unknown"
    return __version__


# ---------------------------------------------------------------- loading
def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read and check one checkpoint file; restores nothing.

    Returns the payload (``step``, ``model``, ``optimizer``, ..., ``extra``).
    Raises :class:`CorruptCheckpointError` if the file is truncated, corrupt,
    or not a fastoptim checkpoint, and ``FileNotFoundError`` if it is absent.
    """
    return _read(Path(path), map_location)


def _read(path: Path, map_location: Any, mmap: bool = False) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated zip, garbled pickle, ...: every failure means "unreadable"
        raise CorruptCheckpointError(f"{path} cannot be read: {type(exc).__name__}: {exc}".strip()) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path} is not a fastoptim checkpoint")
    if payload.get("version") != VERSION:
        raise CorruptCheckpointError(f"{path} has checkpoint format version {payload.get('version')!r}; expected {VERSION}")
    stored = payload.pop("crc32", None)
    actual = _digest(payload)
    if stored != actual:
        raise CorruptCheckpointError(f"{path} is corrupt: its content does not match its CRC-32 ({stored!r} != {actual})")
    return payload


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
    strict: bool = True,
    map_location: Any = "cpu",
) -> Checkpoint:
    """Restore the given objects (and the RNGs) from one checkpoint file.

    Each object given must have been saved; one left as ``None`` is not
    restored.  The file is checked completely first.  If an object then
    rejects its state (a model with other parameter names, an optimizer of
    another class, ...), the error is raised and every object is put back as
    it was, so nothing is left half-loaded.  ``strict`` is passed to the
    model's ``load_state_dict``.

    Raises:
        CorruptCheckpointError: the file is not an intact checkpoint.
        KeyError: an object was asked for that the checkpoint does not hold.
        ValueError, RuntimeError: an object rejected its state.
    """
    payload = read_checkpoint(path, map_location=map_location)
    return _restore(Path(path), payload, (model, optimizer, scheduler, scaler), restore_rng, strict)


def _restore(path: Path, payload: dict[str, Any], objects: tuple, restore_rng: bool, strict: bool) -> Checkpoint:
    pairs = []
    for name, obj in zip(_COMPONENTS, objects):
        if obj is None:
            continue
        saved = payload.get(name)
        if saved is None:
            raise KeyError(f"{path} holds no {name} state, but a {name} was given to restore")
        pairs.extend(_pair(name, obj, saved))

    # Optimizers validate everything before they change anything, but a
    # model copies tensor by tensor and may fail half-way, and a scheduler
    # may fail after an optimizer has loaded: take a snapshot of each object
    # and put them all back if any load fails.
    done: list[tuple[Any, Any, bool]] = []
    try:
        for _, obj, state in pairs:
            is_module = isinstance(obj, torch.nn.Module)
            done.append((obj, _snapshot(obj), is_module))
            if is_module:
                obj.load_state_dict(state, strict=strict)
            else:
                obj.load_state_dict(state)
    except BaseException:
        for obj, previous, is_module in reversed(done):
            if is_module:
                obj.load_state_dict(previous, strict=False)
            else:
                obj.load_state_dict(previous)
        raise
    if restore_rng and payload.get("rng"):
        restore_rng_state(payload["rng"])
    return Checkpoint(path=path, step=int(payload["step"]), extra=payload.get("extra") or {})


def _pair(name: str, obj: Any, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    if isinstance(obj, Mapping) != bool(saved["mapping"]):
        layout = "a mapping of objects" if saved["mapping"] else "a single object"
        raise ValueError(f"the checkpoint's {name} was saved as {layout}; give the same layout to restore it")
    if not saved["mapping"]:
        return [(name, obj, saved["state"])]
    given = {str(key): value for key, value in obj.items()}
    if set(given) != set(saved["state"]):
        raise ValueError(f"the checkpoint's {name} has entries {sorted(saved['state'])}, but {sorted(given)} were given")
    return [(f"{name}[{key!r}]", given[key], saved["state"][key]) for key in given]


def _snapshot(obj: Any) -> Any:
    """What to load to put ``obj`` back if a later load fails."""
    state = obj.state_dict()
    if isinstance(obj, torch.nn.Module):
        # A module loads by copying into its tensors: keep copies (on the CPU,
        # so a GPU model does not need twice its memory to resume).
        return OrderedDict(
            (key, value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value)
            for key, value in state.items()
        )
    if isinstance(obj, torch.optim.Optimizer):
        # An optimizer replaces its state dicts on load instead of writing into
        # them, so shallow copies keep the current tensors alive and intact.
        return {
            "state": {k: dict(v) if isinstance(v, dict) else v for k, v in state["state"].items()},
            "param_groups": [dict(group) for group in state["param_groups"]],
        }
    return copy.deepcopy(state)


def load_latest_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
    strict: bool = True,
    map_location: Any = "cpu",
    prefix: str = "checkpoint",
) -> Checkpoint | None:
    """Restore from the newest valid checkpoint in ``directory``; ``None`` if there is none.

    Files that are truncated or corrupt are skipped with a warning (and left
    in place for inspection).  Errors from the objects themselves (the
    checkpoint is intact but belongs to another model) are raised, not
    skipped: falling back to an older file would hide them.
    """
    for _, path in reversed(list_checkpoints(directory, prefix)):
        try:
            payload = read_checkpoint(path, map_location=map_location)
        except CorruptCheckpointError as exc:
            warnings.warn(f"skipping a checkpoint that cannot be used: {exc}", stacklevel=2)
            continue
        except FileNotFoundError:  # removed by a concurrent rotation
            continue
        return _restore(path, payload, (model, optimizer, scheduler, scaler), restore_rng, strict)
    return None
