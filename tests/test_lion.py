"""Lion against lucidrains' lion-pytorch (``lion_pytorch.Lion``, its default non-Triton update)."""

from __future__ import annotations

import pickle

import pytest
import torch

import fastoptim
from fastoptim.kernels.dispatch import use_backend
from fastoptim.lr_scheduler import CosineAnnealingLR, LambdaLR
from parity import TOLERANCE
from reference_checks import (
    assert_kernel_matches_reference,
    assert_follows_scheduler,
    assert_grad_scaler_skips_nonfinite,
    assert_state_dict_roundtrip,
    run_against_reference,
)

lion_pytorch = pytest.importorskip("lion_pytorch")

# lion-pytorch keeps decoupled_weight_decay on the optimizer, not in the groups; maximize is ours.
OUR_ONLY = ("decoupled_weight_decay", "maximize")

CONFIGS = [
    {},
    {"lr": 1e-2, "weight_decay": 0.5},
    {"lr": 3e-3, "betas": (0.95, 0.98), "weight_decay": 0.1},
    {"lr": 1e-3, "betas": (0.0, 0.0)},
    {"lr": 1e-3, "betas": (1.0, 1.0), "weight_decay": 0.2},
    {"lr": 1e-2, "weight_decay": 0.3, "decoupled_weight_decay": True},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_lion_pytorch(kwargs, dtype):
    """Every parameter (complex, 0-dim, transposed included) and exp_avg identical after each of 12 steps."""
    run_against_reference(fastoptim.Lion, lion_pytorch.Lion, kwargs, dtype, complex_param=True, our_only=OUR_ONLY)


def test_defaults_are_lion_pytorchs():
    p = torch.zeros(2, requires_grad=True)
    ours, theirs = fastoptim.Lion([p]), lion_pytorch.Lion([p])
    for key, value in theirs.defaults.items():
        assert ours.defaults[key] == value


def test_maximize_equals_minimizing_the_negated_gradient():
    a = torch.linspace(-1, 1, 9, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    ours = fastoptim.Lion([a], lr=0.1, weight_decay=0.2, maximize=True)
    theirs = lion_pytorch.Lion([b], lr=0.1, weight_decay=0.2)
    for step in range(5):
        g = torch.randn(9, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), -g
        with use_backend("reference"):
            ours.step()
        theirs.step()
        assert torch.equal(a, b)
        assert torch.equal(ours.state[a]["exp_avg"], theirs.state[b]["exp_avg"])  # both averaged −g


def test_every_coordinate_moves_by_lr():
    p = torch.zeros(6, requires_grad=True)
    opt = fastoptim.Lion([p], lr=0.25)
    p.grad = torch.tensor([3.0, -1e-6, 1e6, -2.0, 0.0, 5.0])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([-0.25, 0.25, -0.25, 0.25, 0.0, -0.25]))


def test_nonfinite_gradients_propagate_like_lion_pytorch():
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1e30, -1e-30])
    a = torch.linspace(-1, 1, 12, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    ours, theirs = fastoptim.Lion([a], lr=0.1, weight_decay=0.1), lion_pytorch.Lion([b], lr=0.1, weight_decay=0.1)
    for step in range(6):
        g = torch.linspace(-2, 2, 12)
        g[step] = specials[step]
        a.grad, b.grad = g.clone(), g.clone()
        with use_backend("reference"):
            ours.step()
        theirs.step()
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
        assert torch.equal(ours.state[a]["exp_avg"].nan_to_num(7.0), theirs.state[b]["exp_avg"].nan_to_num(7.0))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lr": -1e-3}, "Invalid learning rate"),
        ({"betas": (1.5, 0.9)}, "Invalid beta parameter at index 0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
        ({"weight_decay": -0.1}, "Invalid weight_decay value"),
        ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
    ],
)
def test_invalid_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        fastoptim.Lion([torch.zeros(2, requires_grad=True)], **bad)


def test_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError):
        fastoptim.Lion([torch.zeros(2, requires_grad=True)], use_triton=True)


def test_sparse_gradients_are_rejected_before_anything_changes():
    p = torch.ones(3, requires_grad=True)
    q = torch.ones(3, requires_grad=True)
    opt = fastoptim.Lion([q, p])
    q.grad = torch.ones(3)
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(q.detach(), torch.ones(3)) and not opt.state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_round_trip(dtype):
    assert_state_dict_roundtrip(fastoptim.Lion, {"lr": 1e-2, "weight_decay": 0.1}, dtype, complex_param=True)


def test_decoupled_weight_decay_survives_pickling():
    p = torch.ones(3, requires_grad=True)
    opt = fastoptim.Lion([p], lr=0.5, weight_decay=0.1, decoupled_weight_decay=True)
    copied = pickle.loads(pickle.dumps(opt))
    assert copied._rule_options(copied.param_groups[0])["weight_decay"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    "make_scheduler",
    [lambda opt: CosineAnnealingLR(opt, T_max=7), lambda opt: LambdaLR(opt, lambda epoch: 0.8**epoch)],
    ids=["cosine", "lambda"],
)
def test_fastoptim_schedulers_drive_the_lr(make_scheduler):
    assert_follows_scheduler(fastoptim.Lion, {"lr": 1e-2, "weight_decay": 0.1}, make_scheduler)


def test_grad_scaler_skips_nonfinite_steps():
    assert_grad_scaler_skips_nonfinite(fastoptim.Lion, {"lr": 1e-2, "weight_decay": 0.1})
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "kwargs", [{"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.3, "maximize": True, "betas": (0.8, 0.95)}], ids=str
)
def test_kernel_matches_reference_rule(kwargs, dtype):
    pytest.importorskip("numba")
    assert_kernel_matches_reference(fastoptim.Lion, kwargs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_backend_matches_lion_pytorch_to_rounding(dtype):
    """What users run by default (the fast kernel where it applies) against the reference package."""
    run_against_reference(
        fastoptim.Lion, lion_pytorch.Lion, {"lr": 1e-2, "weight_decay": 0.1}, dtype, backend="auto",
        tol=TOLERANCE[dtype], complex_param=True, our_only=OUR_ONLY,
    )
