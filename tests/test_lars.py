"""LARS against ``pytorch_optimizer.LARS`` (default foreach path; the per-parameter one computes the same)."""

from __future__ import annotations

import pytest
import torch

import fastoptim
from fastoptim.algorithms.lars import lars_trust_ratio
from fastoptim.lr_scheduler import CosineAnnealingLR
from parity import TOLERANCE
from reference_checks import (
    assert_kernel_matches_reference,
    assert_defaults_match,
    assert_grad_untouched,
    assert_follows_scheduler,
    assert_grad_scaler_skips_nonfinite,
    assert_late_parameter_matches_reference,
    assert_state_dict_roundtrip,
    run_against_reference,
)

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

OUR_ONLY = ("maximize",)  # the reference keeps maximize on the optimizer
THEIR_ONLY = ("foreach",)
SIDES = dict(our_only=OUR_ONLY, their_only=THEIR_ONLY)

CONFIGS = [
    {},
    {"lr": 0.5, "weight_decay": 0.1},
    {"lr": 0.5, "weight_decay": 0.1, "nesterov": True, "trust_coefficient": 0.02},
    {"lr": 0.5, "momentum": 0.0, "weight_decay": 0.01},
    {"lr": 0.5, "momentum": 0.5, "dampening": 0.3},
    {"lr": 0.5, "maximize": True, "weight_decay": 0.05},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_pytorch_optimizer(kwargs, dtype):
    """Matrices (trust ratio), vectors and 0-dim (plain momentum SGD), a complex matrix; 12 steps."""
    run_against_reference(
        fastoptim.LARS, pytorch_optimizer.LARS, kwargs, dtype, complex_param=True, **SIDES
    )


def test_parameter_joining_late():
    assert_late_parameter_matches_reference(
        fastoptim.LARS, pytorch_optimizer.LARS, {"lr": 0.3, "weight_decay": 0.1}, **SIDES
    )


def test_defaults_are_pytorch_optimizers():
    assert_defaults_match(fastoptim.LARS, pytorch_optimizer.LARS, THEIR_ONLY)


def test_trust_ratio_values():
    p = torch.tensor([[3.0, 4.0]])  # ‖θ‖ = 5
    g = torch.tensor([[0.0, 2.0]])  # ‖g‖ = 2
    assert lars_trust_ratio(p, g, weight_decay=0.2, trust_coefficient=0.1).item() == pytest.approx(0.1 * 5 / (2 + 1))
    # a zero weight or a zero denominator: ratio 1
    assert lars_trust_ratio(torch.zeros(2, 2), g, weight_decay=0.2, trust_coefficient=0.1).item() == 1.0
    assert lars_trust_ratio(p, torch.zeros(1, 2), weight_decay=0.0, trust_coefficient=0.1).item() == 1.0


def test_vectors_get_neither_decay_nor_trust_ratio():
    w = torch.ones(2, 2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    opt = fastoptim.LARS([w, b], lr=1.0, momentum=0.0, weight_decay=0.5)
    w.grad, b.grad = torch.ones(2, 2), torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.zeros(2))  # plain SGD: 1 − 1·1
    ratio = 1e-3 * 2.0 / (2.0 + 0.5 * 2.0)
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 1.0 - ratio * 1.5), rtol=0, atol=1e-7)


def test_grad_is_left_untouched():
    assert_grad_untouched(fastoptim.LARS, {"weight_decay": 0.1, "maximize": True})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lr": -1.0}, "Invalid learning rate"),
        ({"momentum": 1.0}, "Invalid momentum value"),
        ({"momentum": -0.1}, "Invalid momentum value"),
        ({"dampening": 1.0}, "Invalid dampening value"),
        ({"weight_decay": -1.0}, "Invalid weight_decay value"),
        ({"trust_coefficient": -1.0}, "Invalid trust_coefficient value"),
    ],
)
def test_invalid_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        fastoptim.LARS([torch.zeros(2, requires_grad=True)], **bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_round_trip(dtype):
    kwargs = {"lr": 0.5, "weight_decay": 0.1, "nesterov": True}
    assert_state_dict_roundtrip(fastoptim.LARS, kwargs, dtype, complex_param=True)


def test_fastoptim_scheduler_drives_the_lr():
    kwargs = {"lr": 0.5, "weight_decay": 0.1}
    assert_follows_scheduler(fastoptim.LARS, kwargs, lambda opt: CosineAnnealingLR(opt, T_max=6))


def test_grad_scaler_skips_nonfinite_steps():
    assert_grad_scaler_skips_nonfinite(fastoptim.LARS, {"lr": 0.5, "weight_decay": 0.1})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_backend_matches_pytorch_optimizer_to_rounding(dtype):
    """What users run by default (the fast kernel where it applies) against the reference package."""
    run_against_reference(
        fastoptim.LARS, pytorch_optimizer.LARS, {"lr": 0.5, "weight_decay": 0.1}, dtype, backend="auto",
        tol=TOLERANCE[dtype], complex_param=True, **SIDES,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.1},
        {"lr": 0.1, "weight_decay": 0.1, "nesterov": True, "maximize": True, "trust_coefficient": 0.02},
        {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01},
    ],
    ids=str,
)
def test_kernel_matches_reference_rule(kwargs, dtype, tensor_cut):
    assert_kernel_matches_reference(fastoptim.LARS, kwargs, dtype)

