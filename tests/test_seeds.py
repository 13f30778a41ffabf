"""The seeds' tutorial code prints exactly the same with ``fastoptim`` as with ``torch.optim``."""

import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "seeds", "seed_scenarios.py")


def _run(module):
    result = subprocess.run([sys.executable, SCRIPT, module], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_seed_code_prints_the_same_with_fastoptim():
    pytest.importorskip("fastoptim.lr_scheduler")
    expected = _run("torch.optim")
    actual = _run("fastoptim")
    assert actual.splitlines() == expected.splitlines()
    assert "weight after step" in actual and "lbfgs loss" in actual
