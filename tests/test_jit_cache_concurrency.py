"""Processes starting together (as DDP ranks do) share the kernels' on-disk JIT cache safely.

fastoptim's numba kernels are cached in ``$FASTOPTIM_CACHE_DIR`` (else
``$NUMBA_CACHE_DIR/fastoptim``, else ``~/.cache/fastoptim``), in a
sub-directory named after numba, Python and a hash of the kernel sources; the
first call of each kernel signature holds an ``flock`` while it loads or
compiles (fastoptim/kernels/cpu/_cache.py).

Round 1: four processes (tests/jit_cache_worker.py) start on an *empty* cache
directory and are released at the same instant.  Each steps SGD, AdamW and
RMSprop with the kernels (strict backend: no fallback) and with the reference
rules.  Every process must match the reference, all four must produce the
same bits, and each kernel signature must have been compiled exactly once in
total (by a child process; every worker loaded it from disk).  Round 2: four more processes on the
now-filled cache compile nothing, load everything, and produce the same bits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("numba")
_cache = pytest.importorskip("fastoptim.kernels.cpu._cache")

HERE = Path(__file__).resolve().parent
PROCESSES = 4

pytestmark = pytest.mark.slow


def _round(cache_dir: Path, work: Path, label: str) -> list[dict]:
    env = dict(os.environ, FASTOPTIM_CACHE_DIR=str(cache_dir), NUMBA_CACHE_DIR=str(cache_dir / "numba"))
    env.pop("FASTOPTIM_BACKEND", None)
    go = work / f"{label}-go"
    workers = []
    for i in range(PROCESSES):
        ready = work / f"{label}-ready-{i}"
        workers.append((ready, subprocess.Popen(
            [sys.executable, str(HERE / "jit_cache_worker.py"), str(ready), str(go)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )))
    deadline = time.monotonic() + 300
    while not all(ready.exists() for ready, _ in workers):
        if time.monotonic() > deadline or any(p.poll() is not None for _, p in workers):
            break
        time.sleep(0.01)
    go.touch()  # release them together
    reports = []
    for _, process in workers:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{label}: a worker failed:\n{stderr[-3000:]}"
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    return reports


def _check_results(reports: list[dict], label: str) -> list[dict[str, str]]:
    for report in reports:
        for name, result in report["results"].items():
            assert result["matches_reference"], f"{label}: {name}'s kernel steps differ from the reference rule"
    return [{name: r["digest"] for name, r in report["results"].items()} for report in reports]


def _loaded_everything(report: dict) -> bool:
    return all(stats["misses"] == 0 for stats in report["stats"].values())


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """Both rounds, run once for the tests below."""
    work = tmp_path_factory.mktemp("jit")
    cache_dir = work / "cache"
    cache_dir.mkdir()
    assert not any(cache_dir.iterdir())
    first = _round(cache_dir, work, "round1")
    version_dir = Path(first[0]["cache_dir"])
    files = sorted(p.name for p in version_dir.iterdir())
    second = _round(cache_dir, work, "round2")
    return cache_dir, first, second, files


def test_concurrent_start_on_an_empty_cache(rounds):
    cache_dir, first, second, files = rounds
    _check_results(first, "round 1")
    kernels = sorted({key for report in first for key in report["stats"]})
    assert kernels, "no cached kernel was used: the test would prove nothing"
    for kernel in kernels:
        misses = sum(report["stats"].get(kernel, {}).get("misses", 0) for report in first)
        hits = sum(report["stats"].get(kernel, {}).get("hits", 0) for report in first)
        # A signature missing from the cache is compiled in a child process (by whichever worker
        # holds the lock) and written to disk; every worker, that one included, then loads it.
        assert misses == 0 and hits == PROCESSES, f"round 1, {kernel}: {misses} compilations here, {hits} loads"
    (version_dir,) = {report["cache_dir"] for report in first}
    assert Path(version_dir).parent == cache_dir
    assert all(name.startswith(".lock") or name.endswith((".nbi", ".nbc")) for name in files), f"stray files: {files}"
    # ... and compiled exactly once: one data file per signature (a second compilation writes another)
    signatures = sum(stats["hits"] for stats in first[0]["stats"].values())
    assert sum(name.endswith(".nbc") for name in files) == signatures, f"{signatures} signatures, files {files}"


def test_second_round_reuses_the_cache(rounds):
    cache_dir, first, second, files = rounds
    digests = _check_results(second, "round 2")
    for report in second:
        for kernel, stats in report["stats"].items():
            assert stats["misses"] == 0 and stats["hits"] == 1, f"round 2, {kernel}: {stats} (expected a load)"
    assert sorted(p.name for p in Path(second[0]["cache_dir"]).iterdir()) == files, "round 2 rewrote the cache"
    # Every process that loaded the kernels (all of round 2, all but one of round 1) computed the same bits.
    loaded = digests + [d for d, r in zip(_check_results(first, "round 1"), first) if _loaded_everything(r)]
    assert all(d == loaded[0] for d in loaded), f"processes that loaded the same kernels disagree: {loaded}"


def test_compiling_and_loading_processes_compute_the_same_bits(rounds):
    """Every process runs the cached machine code, also the one whose start filled the cache.

    (A process that compiled a kernel itself ran another copy of its parallel loop, which LLVM
    could fuse differently under 'contract': ~10 % of SGD's elements one ulp apart.)
    """
    _, first, _, _ = rounds
    digests = _check_results(first, "round 1")
    assert all(d == digests[0] for d in digests), f"round 1 processes disagree: {digests}"
