"""LAMB against ``pytorch_optimizer.Lamb`` (its default path for real parameters: foreach)."""

from __future__ import annotations

import copy

import pytest
import torch

import fastoptim
from fastoptim.kernels.dispatch import backend_for
from fastoptim.algorithms.lamb import lamb_trust_ratio
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

# float32 norms: torch accumulates the squares in float32 (relative error ~2e-5 on 70000 elements)
NORM_TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: TOLERANCE[torch.float64]}

OUR_ONLY = ("maximize", "clamp", "trust_clip")  # the reference keeps maximize and clamp on the optimizer
THEIR_ONLY = ("rectify", "max_grad_norm", "foreach")
SIDES = dict(our_only=OUR_ONLY, their_only=THEIR_ONLY)

CONFIGS = [
    {},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": False},
    {"lr": 1e-2, "weight_decay": 0.1, "fixed_decay": True},
    {"lr": 1e-2, "betas": (0.5, 0.9), "eps": 1e-3, "grad_averaging": False},
    {"lr": 1e-2, "adam": True, "weight_decay": 0.05},
    {"lr": 1e-2, "maximize": True},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_pytorch_optimizer(kwargs, dtype):
    """Parameters, exp_avg, exp_avg_sq, weight_norm, adam_norm, trust_ratio and the group step, 12 steps."""
    run_against_reference(fastoptim.Lamb, pytorch_optimizer.Lamb, kwargs, dtype, **SIDES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_complex_parameters_agree_to_rounding(dtype):
    """With a complex parameter the reference takes its per-parameter path (division instead of a reciprocal)."""
    run_against_reference(
        fastoptim.Lamb, pytorch_optimizer.Lamb, {"lr": 1e-2, "weight_decay": 0.1}, dtype, complex_param=True,
        **SIDES, tol=TOLERANCE[dtype],
    )


def test_weight_norm_clip_matches_the_reference_class_attribute(monkeypatch):
    """``clamp`` is the reference's class attribute ``Lamb.clamp``: both at 2 (below most weight norms) agree."""
    monkeypatch.setattr(pytorch_optimizer.Lamb, "clamp", 2.0)
    trial_kwargs = {"lr": 1e-2, "clamp": 2.0}
    run_against_reference(
        fastoptim.Lamb, pytorch_optimizer.Lamb, trial_kwargs, torch.float64, their_kwargs={"lr": 1e-2},
        **SIDES,
    )


def test_parameter_joining_late_uses_the_group_step():
    assert_late_parameter_matches_reference(
        fastoptim.Lamb, pytorch_optimizer.Lamb, {"lr": 1e-2, "weight_decay": 0.1}, **SIDES
    )


def test_defaults_are_pytorch_optimizers():
    assert_defaults_match(fastoptim.Lamb, pytorch_optimizer.Lamb, THEIR_ONLY)
    assert fastoptim.Lamb([torch.zeros(1, requires_grad=True)]).defaults["clamp"] == pytorch_optimizer.Lamb.clamp


def test_trust_clip_caps_the_ratio_at_one():
    weight_norm, adam_norm = torch.tensor(8.0), torch.tensor(2.0)
    assert lamb_trust_ratio(weight_norm, adam_norm, 0.0).item() == 4.0
    assert lamb_trust_ratio(weight_norm, adam_norm, 0.0, trust_clip=True).item() == 1.0
    assert lamb_trust_ratio(torch.tensor(0.5), adam_norm, 0.0, trust_clip=True).item() == 0.25
    assert lamb_trust_ratio(torch.tensor(0.0), adam_norm, 0.0).item() == 1.0


def test_trust_clip_and_no_clamp_in_a_step():
    """Big weights (‖θ‖ = 40): clamp=None keeps 40; trust_clip caps r at 1."""
    results = {}
    for name, options in {"plain": {}, "no clamp": {"clamp": None}, "trust clip": {"trust_clip": True}}.items():
        # on the first step every |u| ≈ (1 − β₁)/√(1 − β₂) ≈ 3.16
        p = torch.full((2, 2), 20.0, requires_grad=True)
        opt = fastoptim.Lamb([p], lr=0.1, **options)
        p.grad = torch.ones(2, 2)
        opt.step()
        results[name] = opt.state[p]
    assert results["plain"]["weight_norm"].item() == 10.0
    assert results["no clamp"]["weight_norm"].item() == pytest.approx(40.0)
    assert results["trust clip"]["trust_ratio"].item() == 1.0
    assert results["plain"]["trust_ratio"].item() > 1.0


def test_reference_state_dict_loads_and_continues_identically():
    trial = run_against_reference(
        fastoptim.Lamb, pytorch_optimizer.Lamb, {"lr": 1e-2}, torch.float64, steps=4, **SIDES
    )
    fresh = [[p.detach().clone().requires_grad_() for p in g["params"]] for g in trial.theirs.param_groups]
    resumed = fastoptim.Lamb([{"params": fresh[0]}, {"params": fresh[1], "lr": 5e-3}], lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(trial.theirs.state_dict()))
    assert resumed.param_groups[0]["clamp"] == 10.0 and resumed.param_groups[0]["trust_clip"] is False
    trial.ours = resumed
    trial.run(steps=6)


def test_grad_is_left_untouched():
    assert_grad_untouched(fastoptim.Lamb, {"maximize": True, "weight_decay": 0.1})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lr": -1.0}, "Invalid learning rate"),
        ({"betas": (1.0, 0.9)}, "Invalid beta parameter at index 0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
        ({"weight_decay": -1.0}, "Invalid weight_decay value"),
        ({"eps": -1.0}, "Invalid epsilon value"),
        ({"clamp": -1.0}, "Invalid clamp value"),
    ],
)
def test_invalid_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        fastoptim.Lamb([torch.zeros(2, requires_grad=True)], **bad)


@pytest.mark.parametrize("unsupported", [{"rectify": True}, {"pre_norm": True}, {"foreach": True}], ids=str)
def test_unsupported_reference_options_are_type_errors(unsupported):
    with pytest.raises(TypeError):
        fastoptim.Lamb([torch.zeros(2, requires_grad=True)], **unsupported)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_round_trip(dtype):
    kwargs = {"lr": 1e-2, "weight_decay": 0.1, "trust_clip": True}
    assert_state_dict_roundtrip(fastoptim.Lamb, kwargs, dtype, complex_param=True)


def test_fastoptim_scheduler_drives_the_lr():
    kwargs = {"lr": 1e-2, "weight_decay": 0.1}
    assert_follows_scheduler(fastoptim.Lamb, kwargs, lambda opt: CosineAnnealingLR(opt, T_max=6))


def test_grad_scaler_skips_nonfinite_steps():
    assert_grad_scaler_skips_nonfinite(fastoptim.Lamb, {"lr": 1e-2, "weight_decay": 0.1})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_backend_matches_pytorch_optimizer_to_rounding(dtype):
    """What users run by default (the fast kernel where it applies) against the reference package."""
    run_against_reference(
        fastoptim.Lamb, pytorch_optimizer.Lamb, {"lr": 1e-2, "weight_decay": 0.1}, dtype, backend="auto",
        tol=NORM_TOLERANCE[dtype], **SIDES,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 1e-2},
        {"lr": 1e-2, "weight_decay": 0.1, "weight_decouple": False, "maximize": True},
        {"lr": 1e-2, "weight_decay": 0.1, "fixed_decay": True, "grad_averaging": False, "betas": (0.5, 0.9)},
        {"lr": 1e-2, "adam": True, "clamp": None},
        {"lr": 1e-2, "trust_clip": True, "clamp": 2.0, "eps": 1e-3},
    ],
    ids=str,
)
def test_kernel_matches_reference_rule(kwargs, dtype, tensor_cut):
    """The kernel sums the norms in float64, torch in float32 (its error on 70000 like-sized squares is
    about 2e-5 relative): the norms and ratios agree to that, the weights to the usual tolerance."""
    pytest.importorskip("numba")
    assert_kernel_matches_reference(fastoptim.Lamb, kwargs, dtype, tol=NORM_TOLERANCE[dtype])


def test_bfloat16_falls_back_to_the_reference_rule():
    p = torch.ones(3, 3, dtype=torch.bfloat16, requires_grad=True)
    opt = fastoptim.Lamb([p])
    p.grad = torch.ones(3, 3, dtype=torch.bfloat16)
    opt.step()
    assert backend_for(opt) == "reference"
    assert opt.state[p]["trust_ratio"].dtype == torch.bfloat16
