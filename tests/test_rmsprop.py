"""RMSprop beyond optim_db: bit-exact runs over its branches, capturable, NaN/inf, pickling."""

from __future__ import annotations

import pytest
import torch

import fastoptim
from algorithm_checks import (

    allow_capturable_on_cpu,
    assert_legacy_step_loads,
    assert_nonfinite_like_torch,
    assert_pickle_roundtrip,
    assert_signature_matches,
    assert_torch_refuses_capturable_on_cpu,
    run_exact,
)

# These tests hold the reference rule to torch's for-loop path bit for bit.
pytestmark = pytest.mark.reference_backend

CONFIGS = [
    {},
    {"momentum": 0.9},
    {"centered": True, "alpha": 0.9},
    {"centered": True, "momentum": 0.5, "maximize": True, "weight_decay": 0.1},
    {"alpha": 0.0, "eps": 1e-3},
    {"lr": torch.tensor(0.02), "momentum": 0.3},
    {"lr": torch.tensor([0.02]), "centered": True},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_torch_for_loop(kwargs, dtype):
    """Dense, complex, 0-dim and non-contiguous params: identical bits after every step."""
    run_exact("RMSprop", {**kwargs, "foreach": False}, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", [{}, {"centered": True, "momentum": 0.5, "lr": torch.tensor(0.01)}], ids=str)
def test_capturable_bitwise_equal_to_torch(kwargs, dtype, monkeypatch):
    """capturable keeps ``step`` on the parameter's device; the update is torch's capturable one."""
    allow_capturable_on_cpu(monkeypatch, "RMSprop")
    run_exact("RMSprop", {**kwargs, "capturable": True, "foreach": False}, dtype)


def test_capturable_on_cpu_runs_where_torch_refuses():
    assert_torch_refuses_capturable_on_cpu("RMSprop", {})


@pytest.mark.parametrize("momentum,centered,keys", [
    (0, False, {"step", "square_avg"}),
    (0.9, False, {"step", "square_avg", "momentum_buffer"}),
    (0, True, {"step", "square_avg", "grad_avg"}),
])
def test_state_holds_only_the_buffers_in_use(momentum, centered, keys):
    p = torch.ones(2, requires_grad=True)
    p.grad = torch.ones(2)
    opt = fastoptim.RMSprop([p], momentum=momentum, centered=centered)
    opt.step()
    assert set(opt.state[p]) == keys


def test_every_argument_may_be_positional_like_torch():
    p = torch.ones(2, requires_grad=True)
    opt = fastoptim.RMSprop([p], 0.1, 0.8, 1e-6, 0.01, 0.5, True, False, None, True, False)
    group = opt.param_groups[0]
    chosen = (group["lr"], group["alpha"], group["momentum"], group["centered"], group["maximize"])
    assert chosen == (0.1, 0.8, 0.5, True, True)


def test_nan_and_inf_propagate_like_torch():
    assert_nonfinite_like_torch("RMSprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "foreach": False})


def test_pickle_and_deepcopy_round_trip():
    assert_pickle_roundtrip("RMSprop", {"centered": True, "momentum": 0.5, "foreach": False})


def test_checkpoint_with_numeric_step_loads_like_torch():
    assert_legacy_step_loads("RMSprop", {"momentum": 0.5, "foreach": False})


def test_signature_matches_torch():
    assert_signature_matches("RMSprop")
