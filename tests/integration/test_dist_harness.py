"""The distributed test harness itself: a worker killed by a signal is retried once, an error never."""

from __future__ import annotations

import os

import pytest
import torch.multiprocessing as mp

from ._dist import run_script, run_workers

pytestmark = pytest.mark.distributed


def _abort_on_first_attempt(rank: int, world_size: int, marker: str) -> None:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.write(2, b"last words before the abort\n")
        os.abort()


def _abort_always(rank: int, world_size: int) -> None:
    os.abort()


def _fail_on_first_attempt(rank: int, world_size: int, marker: str) -> None:
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise AssertionError("a worker's own failure")


def test_a_worker_killed_by_a_signal_is_retried_once(tmp_path):
    with pytest.warns(UserWarning, match="SIGABRT") as caught:
        run_workers(_abort_on_first_attempt, str(tmp_path / "marker"), world_size=1)
    # the warning carries what the worker wrote to stderr, and faulthandler's stack of the abort
    (message,) = [str(w.message) for w in caught if "SIGABRT" in str(w.message)]
    assert "last words before the abort" in message
    assert "Fatal Python error: Aborted" in message


def test_a_second_death_fails(tmp_path):
    with pytest.warns(UserWarning, match="trying once more"), pytest.raises(mp.ProcessExitedException):
        run_workers(_abort_always, world_size=1)


def test_a_workers_exception_is_never_retried(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="a worker's own failure"):
        run_workers(_fail_on_first_attempt, str(tmp_path / "marker"), world_size=1)


ABORT_ONCE = """
import os, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    os.abort()
print("second attempt", sys.argv[2])
"""


def test_a_script_killed_by_a_signal_is_run_once_more(tmp_path):
    script = tmp_path / "abort_once.py"
    script.write_text(ABORT_ONCE)
    with pytest.warns(UserWarning, match=r"abort_once.py died \(rc=-6\)"):
        done = run_script(script, lambda attempt: [str(tmp_path / "marker"), str(attempt)])
    assert done.returncode == 0 and done.stdout.strip() == "second attempt 1"


def test_a_script_that_fails_is_not_run_again(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import sys; print('ran'); sys.exit(3)")
    done = run_script(script, lambda attempt: [])
    assert done.returncode == 3 and done.stdout.count("ran") == 1
