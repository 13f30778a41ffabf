"""Adan against ``pytorch_optimizer.Adan`` (default foreach path; the per-parameter one computes the same)."""

from __future__ import annotations

import copy

import pytest
import torch

import fastoptim
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

# The reference keeps maximize on the optimizer; fastoptim has no max_grad_norm or foreach.
OUR_ONLY = ("maximize",)
THEIR_ONLY = ("max_grad_norm", "foreach")
SIDES = dict(our_only=OUR_ONLY, their_only=THEIR_ONLY)

CONFIGS = [
    {},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": True},
    {"lr": 3e-3, "betas": (0.9, 0.5, 0.999), "eps": 1e-3},
    {"lr": 1e-2, "betas": (0.0, 0.0, 0.0)},
    {"lr": 1e-2, "maximize": True, "weight_decay": 0.05},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_pytorch_optimizer(kwargs, dtype):
    """Parameters (complex, 0-dim, transposed included), all four buffers and the group step, 12 steps."""
    run_against_reference(
        fastoptim.Adan, pytorch_optimizer.Adan, kwargs, dtype, complex_param=True, **SIDES
    )


@pytest.mark.parametrize("kwargs", [{}, {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": True}], ids=str)
def test_parameter_joining_late_uses_the_group_step(kwargs):
    assert_late_parameter_matches_reference(
        fastoptim.Adan, pytorch_optimizer.Adan, kwargs, **SIDES
    )


def test_defaults_are_pytorch_optimizers():
    assert_defaults_match(fastoptim.Adan, pytorch_optimizer.Adan, THEIR_ONLY)


def test_first_step_sees_no_gradient_difference():
    p = torch.ones(4, requires_grad=True)
    opt = fastoptim.Adan([p], lr=0.1)
    p.grad = torch.tensor([1.0, -2.0, 3.0, 0.5])
    opt.step()
    state = opt.state[p]
    assert torch.equal(state["exp_avg_diff"], torch.zeros(4))
    assert torch.equal(state["previous_grad"], -p.grad)
    assert opt.param_groups[0]["step"] == 1


def test_grad_is_left_untouched():
    assert_grad_untouched(fastoptim.Adan, {"maximize": True, "weight_decay": 0.1})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lr": -1.0}, "Invalid learning rate"),
        ({"betas": (1.0, 0.9, 0.9)}, "Invalid beta parameter at index 0"),
        ({"betas": (0.9, 1.0, 0.9)}, "Invalid beta parameter at index 1"),
        ({"betas": (0.9, 0.9, 1.5)}, "Invalid beta parameter at index 2"),
        ({"betas": (0.9, 0.9)}, "three betas"),
        ({"weight_decay": -1.0}, "Invalid weight_decay value"),
        ({"eps": -1.0}, "Invalid epsilon value"),
    ],
)
def test_invalid_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        fastoptim.Adan([torch.zeros(2, requires_grad=True)], **bad)


@pytest.mark.parametrize("unsupported", [{"max_grad_norm": 1.0}, {"foreach": True}, {"use_gc": True}], ids=str)
def test_unsupported_reference_options_are_type_errors(unsupported):
    with pytest.raises(TypeError):
        fastoptim.Adan([torch.zeros(2, requires_grad=True)], **unsupported)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_round_trip(dtype):
    assert_state_dict_roundtrip(fastoptim.Adan, {"lr": 1e-2, "weight_decay": 0.1}, dtype, complex_param=True)


def test_reference_state_dict_loads_and_continues_identically():
    """A checkpoint of pytorch_optimizer.Adan resumes in fastoptim.Adan exactly where the reference goes on."""
    trial = run_against_reference(
        fastoptim.Adan, pytorch_optimizer.Adan, {"lr": 1e-2}, torch.float64, steps=4, **SIDES
    )
    fresh_params = [[p.detach().clone().requires_grad_() for p in g["params"]] for g in trial.theirs.param_groups]
    resumed = fastoptim.Adan([{"params": fresh_params[0]}, {"params": fresh_params[1], "lr": 5e-3}], lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(trial.theirs.state_dict()))  # loading aliases tensors, as in torch
    trial.ours = resumed
    trial.run(steps=6)


def test_fastoptim_scheduler_drives_the_lr():
    kwargs = {"lr": 1e-2, "weight_decay": 0.1}
    assert_follows_scheduler(fastoptim.Adan, kwargs, lambda opt: CosineAnnealingLR(opt, T_max=6))


def test_grad_scaler_skips_nonfinite_steps():
    assert_grad_scaler_skips_nonfinite(fastoptim.Adan, {"lr": 1e-2})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 1e-2},
        {"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
        {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": True, "betas": (0.3, 0.6, 0.9)},  # lerp weights ≥ 0.5
    ],
    ids=str,
)
def test_kernel_matches_reference_rule(kwargs, dtype):
    pytest.importorskip("numba")
    assert_kernel_matches_reference(fastoptim.Adan, kwargs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_backend_matches_pytorch_optimizer_to_rounding(dtype):
    """What users run by default (the fast kernel where it applies) against the reference package."""
    run_against_reference(
        fastoptim.Adan, pytorch_optimizer.Adan, {"lr": 1e-2, "weight_decay": 0.1}, dtype, backend="auto",
        tol=TOLERANCE[dtype], complex_param=True, **SIDES,
    )
