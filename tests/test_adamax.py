"""Adamax beyond optim_db: bit-exact runs, the capturable branch, betas as given, NaN/inf, pickling."""

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
    {"betas": (0.5, 0.9), "eps": 1e-3},
    {"betas": [0.8, 0.99]},  # a list stays a list in param_groups, as in torch
    {"maximize": True, "weight_decay": 0.2},
    {"betas": (0.0, 0.0)},
    {"lr": torch.tensor(0.01)},
    {"lr": torch.tensor([0.01]), "weight_decay": 0.1},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_torch_for_loop(kwargs, dtype):
    """Dense, complex, 0-dim and non-contiguous params: identical bits after every step."""
    run_exact("Adamax", {**kwargs, "foreach": False}, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", [{}, {"lr": torch.tensor(0.01), "maximize": True, "weight_decay": 0.1}], ids=str)
def test_capturable_bitwise_equal_to_torch(kwargs, dtype, monkeypatch):
    """The capturable branch (bias correction as tensor math) matches torch's capturable branch."""
    allow_capturable_on_cpu(monkeypatch, "Adamax")
    run_exact("Adamax", {**kwargs, "capturable": True, "foreach": False}, dtype)


def test_capturable_on_cpu_runs_where_torch_refuses():
    assert_torch_refuses_capturable_on_cpu("Adamax", {})


def test_exp_inf_never_drops_below_eps():
    p = torch.ones(3, requires_grad=True)
    opt = fastoptim.Adamax([p], eps=1e-3)
    for _ in range(5):
        p.grad = torch.zeros(3)
        opt.step()
    assert torch.equal(opt.state[p]["exp_inf"], torch.full((3,), 1e-3))


@pytest.mark.parametrize("betas", [(1.0, 0.9), (0.9, -0.1)])
def test_betas_outside_unit_interval_are_rejected(betas):
    index = 0 if betas[0] == 1.0 else 1
    with pytest.raises(ValueError, match=f"Invalid beta parameter at index {index}"):
        fastoptim.Adamax([torch.zeros(1, requires_grad=True)], betas=betas)


def test_nan_and_inf_propagate_like_torch():
    assert_nonfinite_like_torch("Adamax", {"weight_decay": 0.1, "foreach": False})


def test_pickle_and_deepcopy_round_trip():
    assert_pickle_roundtrip("Adamax", {"betas": (0.7, 0.9), "foreach": False})


def test_checkpoint_with_numeric_step_loads_like_torch():
    assert_legacy_step_loads("Adamax", {"foreach": False})


def test_signature_matches_torch():
    assert_signature_matches("Adamax")
