"""DTensor parameters run the numba kernels on their local shards (fastoptim/kernels/shards.py).

One gloo process (tests/integration/dtensor_kernel_worker.py) steps a DTensor
parameter and a plain one in the same group, with the default backend and with
the reference rules: the kernels must be chosen (``explain``), agree with the
reference, leave the state with the same keys and tensor types (a momentum
buffer the kernel creates becomes a DTensor placed like its parameter) and bump
the parameter's version counter; an algorithm whose kernel takes whole-tensor
norms (LARS) keeps the reference rule.  The two-rank runs in
test_fsdp_dtensor.py and test_dtensor_algorithms.py check uneven shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("numba")
pytest.importorskip("torch.distributed.tensor")

from ._dist import run_script

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    def argv(attempt):
        return [str(tmp_path_factory.mktemp(f"dtensor-kernels-{attempt}") / "rendezvous")]

    done = run_script(HERE / "dtensor_kernel_worker.py", argv)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("algorithm", ["SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "ASGD", "Lion"])
def test_shards_take_the_kernels_and_match_the_reference(results, algorithm):
    r = results[algorithm]
    assert r["backends"] == ["numba"] * 4, r
    assert r["max_difference"] <= 1e-6, r
    assert r["same_state_types"], r
    assert r["versions_moved"], r


def test_created_momentum_buffer_is_a_dtensor(results):
    assert results["SGD"]["state_types"]["momentum_buffer"] == "DTensor"


def test_whole_tensor_norms_keep_the_reference_rule(results):
    r = results["LARS"]
    assert r["backends"] == ["mixed"] * 4, r  # the plain bias takes the kernel, the DTensor does not
    assert r["max_difference"] == 0.0, r
