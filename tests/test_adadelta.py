"""Adadelta beyond optim_db: bit-exact runs, ρ at its bounds, capturable, NaN/inf, pickling."""

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
    {"rho": 0.0},
    {"rho": 1.0, "eps": 1e-3},
    {"maximize": True, "weight_decay": 0.3, "rho": 0.5},
    {"lr": torch.tensor(0.5)},
    {"lr": torch.tensor([0.5]), "weight_decay": 0.1},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_torch_for_loop(kwargs, dtype):
    """Dense, complex, 0-dim and non-contiguous params: identical bits after every step."""
    run_exact("Adadelta", {**kwargs, "foreach": False}, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", [{}, {"lr": torch.tensor(0.5), "weight_decay": 0.1}], ids=str)
def test_capturable_bitwise_equal_to_torch(kwargs, dtype, monkeypatch):
    allow_capturable_on_cpu(monkeypatch, "Adadelta")
    run_exact("Adadelta", {**kwargs, "capturable": True, "foreach": False}, dtype)


def test_capturable_on_cpu_runs_where_torch_refuses():
    assert_torch_refuses_capturable_on_cpu("Adadelta", {})


@pytest.mark.parametrize("rho", [-0.1, 1.01, float("nan")])
def test_rho_outside_unit_interval_is_rejected(rho):
    with pytest.raises(ValueError, match="Invalid rho value"):
        fastoptim.Adadelta([torch.zeros(1, requires_grad=True)], rho=rho)


def test_first_step_size_is_sqrt_eps_ratio():
    """With u₀ = 0 the first step is γ·√ε/√((1−ρ)g² + ε)·g: Adadelta's slow start."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    p.grad = torch.ones(1, dtype=torch.float64)
    fastoptim.Adadelta([p], lr=1.0, rho=0.9, eps=1e-6).step()
    expected = -(1e-6 ** 0.5) / (0.1 + 1e-6) ** 0.5
    assert p.item() == pytest.approx(expected, rel=1e-12)


def test_nan_and_inf_propagate_like_torch():
    assert_nonfinite_like_torch("Adadelta", {"weight_decay": 0.1, "foreach": False})


def test_pickle_and_deepcopy_round_trip():
    assert_pickle_roundtrip("Adadelta", {"rho": 0.8, "foreach": False})


def test_checkpoint_with_numeric_step_loads_like_torch():
    assert_legacy_step_loads("Adadelta", {"foreach": False})


def test_signature_matches_torch():
    assert_signature_matches("Adadelta")
