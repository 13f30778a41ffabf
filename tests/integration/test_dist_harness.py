"""The distributed test harness itself: a worker killed by a signal is retried once, an error never."""

from __future__ import annotations

import os

import pytest
import torch.multiprocessing as mp

from ._dist import run_workers

pytestmark = pytest.mark.distributed


def _abort_on_first_attempt(rank: int, world_size: int, marker: str) -> None:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.abort()


def _abort_always(rank: int, world_size: int) -> None:
    os.abort()


def _fail_on_first_attempt(rank: int, world_size: int, marker: str) -> None:
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise AssertionError("a worker's own failure")


def test_a_worker_killed_by_a_signal_is_retried_once(tmp_path):
    with pytest.warns(UserWarning, match="SIGABRT"):
        run_workers(_abort_on_first_attempt, str(tmp_path / "marker"), world_size=1)


def test_a_second_death_fails(tmp_path):
    with pytest.warns(UserWarning, match="trying once more"), pytest.raises(mp.ProcessExitedException):
        run_workers(_abort_always, world_size=1)


def test_a_workers_exception_is_never_retried(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="a worker's own failure"):
        run_workers(_fail_on_first_attempt, str(tmp_path / "marker"), world_size=1)
