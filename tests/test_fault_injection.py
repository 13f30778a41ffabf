"""Kill a training run with SIGKILL at random moments; every resume must end bit-identical.

The training script is ``tests/fault_train.py`` (a small MLP on generated data,
drawing from the torch, numpy and ``random`` generators every step, saving a
checkpoint every 3 steps with ``fastoptim.checkpoint``).  For SGD with
Nesterov momentum, AdamW (amsgrad) and LBFGS (strong Wolfe), with the default
backend (fast kernels where they apply):

1. the script runs once, uninterrupted, as a real ``python`` subprocess: the
   reference;
2. ten trials per optimizer start it, SIGKILL it at a random step, or in the
   middle of a save (the save is made to pause either after its first bytes
   reach the temporary file or just before the rename), start it again
   (sometimes killing it a second time), and let it finish.

Each resume must start from the last checkpoint whose save completed, and the
final parameters and optimizer state must equal the reference bit for bit.
No temporary file may be left behind.

Starting a Python process that imports torch takes seconds on a busy 2-core
machine, so the trials fork from a ``forkserver`` that has imported torch and
fastoptim and loaded the kernels once (from a private cache that a throwaway
process fills first); each run is still a separate process that dies by SIGKILL and
shares nothing in memory with the run before it.  The reference run, a fresh
interpreter, proves that the forked runs compute what a plain script does.

``FASTOPTIM_FAULT_SEED`` picks other random kill points (the seed is in every
failure message).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fastoptim
import fault_train
from fastoptim.checkpoint import CorruptCheckpointError, read_checkpoint
from reliability import assert_identical

HERE = Path(__file__).resolve().parent
SEED = int(os.environ.get("FASTOPTIM_FAULT_SEED", "20240607"))
TRIALS = 10  # per optimizer
STEPS, EVERY = 18, 3
RUN_TIMEOUT = 120.0  # seconds for one run, generous for a loaded machine

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    """A private kernel cache, filled by a throwaway process before any run starts.

    A process that compiles a kernel computes other bits than one that loads it
    from the cache (test_jit_cache_concurrency's xfail), so the reference run
    and the forkserver must both *load* the kernels.
    """
    path = tmp_path_factory.mktemp("kernel-cache")
    env = dict(os.environ, FASTOPTIM_CACHE_DIR=str(path), PYTHONPATH=os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    env.pop("FASTOPTIM_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", "import fault_warmup"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, kernel_cache):
    """Final states of uninterrupted runs, from a fresh interpreter running the script itself.

    Started first and collected when first needed, so it runs while the forkserver warms up.
    """
    root = tmp_path_factory.mktemp("reference")
    env = {k: v for k, v in os.environ.items() if k not in ("FASTOPTIM_CHECKPOINT_TEST_DELAY", "FASTOPTIM_BACKEND")}
    env["FASTOPTIM_CACHE_DIR"] = str(kernel_cache)
    process = subprocess.Popen(
        [sys.executable, str(HERE / "fault_train.py"), "--dir", str(root / "ckpt"), "--out", str(root / "out"),
         "--steps", str(STEPS), "--every", str(EVERY)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    results = {}

    def get(name):
        if not results:
            stdout, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr[-3000:]
            for line in stdout.splitlines():
                parts = line.split()
                if parts[1] == "backend":
                    results[f"{parts[0]}-backend"] = parts[2]
            for optimizer in fault_train.OPTIMIZERS:
                results[optimizer] = torch.load(root / "out" / f"{optimizer}.pt", weights_only=True)
        return results[name]

    yield get
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def forkserver(reference, kernel_cache):
    """A forkserver that has imported torch and fastoptim and loaded the kernels (tests/fault_warmup.py)."""
    context = multiprocessing.get_context("forkserver")
    saved = {k: os.environ.get(k) for k in
             ("FASTOPTIM_CHECKPOINT_TEST_DELAY", "FASTOPTIM_BACKEND", "PYTHONPATH", "FASTOPTIM_CACHE_DIR")}
    os.environ.pop("FASTOPTIM_CHECKPOINT_TEST_DELAY", None)
    os.environ.pop("FASTOPTIM_BACKEND", None)
    os.environ["FASTOPTIM_CACHE_DIR"] = str(kernel_cache)
    # The forkserver is a fresh interpreter: it finds tests/fault_warmup.py through PYTHONPATH
    # (it silently skips a preload module it cannot import; test_killed_runs checks it did not).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), saved["PYTHONPATH"]]))
    context.set_forkserver_preload(["__main__", "fault_warmup"])
    try:
        starter = context.Process(target=int)  # starts the forkserver, which warms up
        starter.start()
        starter.join()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return context


def _expected_backend(name):
    """The fast kernels for SGD and AdamW whenever fastoptim has kernels for their rules."""
    try:
        from fastoptim.kernels.capabilities import capability_of
    except ImportError:
        return "reference"
    optimizer = {"sgd": fastoptim.SGD, "adamw": fastoptim.AdamW, "lbfgs": fastoptim.LBFGS}[name]
    has_kernel = capability_of(getattr(optimizer, "rule", None)) is not None
    return "numba" if has_kernel else "reference"


def _run(context, name, directory, out, *, kill_at=None, slow_save=None):
    """Start one run; SIGKILL it right after it reports ``kill_at``. Returns (events, exit code)."""
    receiver, sender = context.Pipe(duplex=False)
    options = {"steps": STEPS, "every": EVERY, "slow_save": slow_save}
    process = context.Process(target=fault_train.child, args=(sender, name, str(directory), str(out), options))
    process.start()
    sender.close()
    events = []
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not receiver.poll(0.05):
                if not process.is_alive() and not receiver.poll(0):
                    break
                continue
            try:
                event = receiver.recv()
            except (EOFError, OSError):
                break
            events.append(event)
            if kill_at is not None and event == kill_at:
                if slow_save is not None:
                    _wait_until_paused(directory, slow_save[1], deadline)
                os.kill(process.pid, signal.SIGKILL)
                break
            if event[0] in ("done", "error"):
                break
        else:
            os.kill(process.pid, signal.SIGKILL)
            raise AssertionError(f"run of {name} did not finish in {RUN_TIMEOUT} s; events {events}")
        process.join(RUN_TIMEOUT)  # reaped: its pid is free, as after a real crash
        # What the run sent before it died is still in the pipe.
        while receiver.poll(0):
            try:
                events.append(receiver.recv())
            except (EOFError, OSError):
                break
    finally:
        receiver.close()
    errors = [event[1] for event in events if event[0] == "error"]
    assert not errors, f"{name} run failed:\n{errors[0]}"
    return events, process.exitcode


def _temp_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(".checkpoint-*.tmp")) if directory.is_dir() else []


def _wait_until_paused(directory: Path, phase: str, deadline: float) -> None:
    """Wait until the save is inside its pause: after its first bytes ("write"), or with the file
    complete, fsync-ed and verified, before the rename ("rename")."""
    while time.monotonic() < deadline:
        temps = _temp_files(directory)
        if temps and temps[0].stat().st_size > 0:
            break
        time.sleep(0.001)
    if phase == "rename":
        time.sleep(0.3)  # writing, fsync and the read-back of this small file take milliseconds


def _plan(rng, name):
    """Kill points for TRIALS trials: distinct first-kill steps, some during a save, some twice."""
    saves = list(range(EVERY, STEPS, EVERY))  # the final save is not worth a kill: nothing follows it
    kill_steps = rng.sample(range(1, STEPS), k=min(TRIALS, STEPS - 1))
    plans = []
    for trial in range(TRIALS):
        kills = []
        if trial % 3 == 0:  # during a save: after its first bytes, or just before the rename
            save = rng.choice(saves)
            kills.append((("saving", save), (save, rng.choice(["write", "rename"]), 30.0)))
        else:
            kills.append((("step", kill_steps[trial]), None))
        if trial % 2 == 1:  # and once more after the resume
            later = rng.randrange(kills[0][0][1], STEPS) + 1
            kills.append(((("saving" if later in saves else "step"), later), None))
        plans.append(kills)
    return plans


@pytest.mark.parametrize("name", fault_train.OPTIMIZERS)
def test_killed_runs_resume_bit_identical(name, reference, forkserver, tmp_path):
    rng = random.Random(f"{SEED}-{name}")
    expected_backend = _expected_backend(name)
    plans = _plan(rng, name)
    kills_during_save = 0
    for trial, kills in enumerate(plans):
        where = f"{name} trial {trial} (FASTOPTIM_FAULT_SEED={SEED}, kills {[k for k, _ in kills]})"
        directory, out = tmp_path / f"t{trial}" / "ckpt", tmp_path / f"t{trial}" / "final.pt"
        last_saved, in_flight = 0, None
        for kill_at, slow_save in [*kills, (None, None)]:
            events, code = _run(forkserver, name, directory, out, kill_at=kill_at, slow_save=slow_save)
            assert events[0] == ("preloaded", True), f"{where}: the run did not fork from a warm forkserver"
            resumed = events[1]
            assert resumed[0] == "resumed", f"{where}: first events {events[:2]}"
            # The resume starts from the last save that completed.  A kill that lands between
            # the rename and the "saved" report is a save that completed, too.
            allowed = {last_saved} | ({in_flight} if in_flight is not None else set())
            assert resumed[1] in allowed, f"{where}: resumed from {resumed[1]}, expected one of {allowed}"
            last_saved, in_flight = resumed[1], None
            for kind, step in events[2:]:
                if kind == "backend":
                    assert step == expected_backend, f"{where}: the steps ran on {step!r}, not {expected_backend!r}"
                elif kind == "saved":
                    last_saved, in_flight = step, None
                elif kind == "saving":
                    in_flight = step
            if kill_at is None:
                assert code == 0 and events[-1] == ("done", STEPS), f"{where}: final run ended with {events[-3:]}"
            else:
                assert code == -signal.SIGKILL, f"{where}: exit code {code}, events {events[-3:]}"
                if slow_save is not None:
                    kills_during_save += 1
                    # The kill came during the pause: that save never completed, and left its
                    # temporary file (partial, or complete but not renamed) for the resume to ignore.
                    temps = _temp_files(directory)
                    assert len(temps) == 1 and temps[0].stat().st_size > 0, f"{where}: temporary files {temps}"
                    if slow_save[1] == "rename":
                        read_checkpoint(temps[0])  # complete and intact, yet never became a checkpoint
                    else:
                        with pytest.raises(CorruptCheckpointError):  # cut after its first bytes
                            read_checkpoint(temps[0])
                    in_flight = None
        final = torch.load(out, weights_only=True)
        assert reference(f"{name}-backend") == expected_backend, "the reference run used another backend"
        assert_identical(final["model"], reference(name)["model"], f"{where}: parameters")
        assert_identical(final["optimizer"], reference(name)["optimizer"], f"{where}: optimizer state")
        leftovers = sorted(p.name for p in directory.iterdir())
        assert all(n.startswith("checkpoint-") and n.endswith(".pt") for n in leftovers), f"{where}: {leftovers}"
        assert len(leftovers) <= 2, f"{where}: keep_last=2 but {leftovers}"
    assert kills_during_save >= 3
