"""RAdam beyond optim_db: bit-exact parity, the ρ_t > 5 switch, capturable, NaN/inf, sparse, pickling.

Every comparison is element by element with ``rtol=atol=0`` against
torch.optim.RAdam's single-tensor path; ``capturable=True`` is compared with
torch's capturable branch run on the CPU (the fixture lifts torch's device check).
"""

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
    {"lr": 2e-2, "eps": 1e-6},
    {"betas": (0.5, 0.9)},  # ρ∞ = 19: the rectified branch from step 6 on
    {"betas": (0.9, 0.5)},  # ρ∞ = 3: never rectified
    {"weight_decay": 0.3},
    {"weight_decay": 0.3, "decoupled_weight_decay": True},
    {"weight_decay": 0.1, "maximize": True},
    {"lr": torch.tensor(0.01)},
    {"capturable": True},
    {"capturable": True, "weight_decay": 0.1},
    {"capturable": True, "weight_decay": 0.1, "decoupled_weight_decay": True, "lr": torch.tensor(1e-3)},
    {"differentiable": True, "weight_decay": 0.1},
    {"differentiable": True, "lr": torch.tensor(0.01)},
]


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    allow_capturable_on_cpu(monkeypatch, "RAdam")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kwargs", CONFIGS, ids=repr)
def test_bit_exact_with_torch(kwargs, dtype, capturable_on_cpu):
    """Odd shapes, a non-contiguous, a 0-dim and a complex parameter, two groups, closures, a missing grad."""
    trial = run_exact("RAdam", {**kwargs, "foreach": False}, dtype, steps=12)
    if kwargs.get("differentiable"):
        trial.check_autograd_flows()


def test_capturable_on_cpu_runs_where_torch_refuses():
    assert_torch_refuses_capturable_on_cpu("RAdam", {})


@pytest.mark.parametrize("capturable", [False, True])
def test_rectification_switches_on_when_rho_exceeds_five(capturable, capturable_on_cpu):
    """Steps 1-5 (ρ_t ≤ 5) are bias-corrected momentum SGD; from step 6 the update is scaled by l_t·r_t."""
    lr, beta1, beta2, eps = 0.1, 0.9, 0.999, 1e-8
    rho_inf = 2 / (1 - beta2) - 1
    param = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = fastoptim.RAdam([param], lr=lr, betas=(beta1, beta2), eps=eps, capturable=capturable)
    m = v = torch.zeros(5, dtype=torch.float64)
    for t in range(1, 9):
        grad = torch.linspace(-2, 3, 5, dtype=torch.float64) * t
        before = param.detach().clone()
        param.grad = grad
        opt.step()
        m, v = beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad**2
        step = lr * m / (1 - beta1**t)
        rho = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
        assert (rho > 5) == (t >= 6)
        if rho > 5:
            rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
            step = step * rect * (1 - beta2**t) ** 0.5 / (v.sqrt() + eps)
        # capturable computes ρ_t from the float32 ``step`` tensor: ρ∞ − 2tβ₂ᵗ/(1−β₂ᵗ) ≈ 999 − 993
        # cancels, leaving ~1e-3 relative error in r_t (torch's too) - still far from the unrectified step.
        torch.testing.assert_close(before - param.detach(), step, rtol=1e-2 if capturable else 1e-12, atol=0)


def test_capturable_hides_the_nan_rectifier_of_early_steps(capturable_on_cpu):
    """While ρ_t ≤ 5, r_t is the root of a negative number; torch.where must keep it out of θ."""
    param = torch.ones(4, requires_grad=True)
    opt = fastoptim.RAdam([param], capturable=True)
    param.grad = torch.tensor([1.0, -2.0, 0.0, 3.0])
    opt.step()
    assert torch.isfinite(param).all()
    assert opt.state[param]["step"].device == param.device


@pytest.mark.parametrize("capturable", [False, True])
def test_state_layout_like_torch(capturable, capturable_on_cpu):
    layouts = []
    for cls in (fastoptim.RAdam, torch.optim.RAdam):
        param = torch.randn(4, 3).t().requires_grad_()
        opt = cls([param], capturable=capturable)
        param.grad = torch.ones_like(param)
        opt.step()
        layouts.append([(k, v.dtype, v.shape, v.stride(), v.device) for k, v in opt.state[param].items()])
    assert layouts[0] == layouts[1]


def test_nan_and_inf_propagate_like_torch():
    """β₂ = 0.9 reaches the rectified branch (ρ_t > 5) at step 6 of the 8."""
    assert_nonfinite_like_torch("RAdam", {"betas": (0.5, 0.9), "foreach": False}, steps=8)


def test_sparse_gradient_is_rejected_before_anything_changes():
    dense, sparse = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    dense.grad, sparse.grad = torch.ones(3), torch.ones(3).to_sparse()
    opt = fastoptim.RAdam([dense, sparse])
    with pytest.raises(RuntimeError, match="^RAdam does not support sparse gradients$"):
        opt.step()
    assert not opt.state and torch.equal(dense.detach(), torch.ones(3))


def test_pickle_and_deepcopy_round_trip():
    assert_pickle_roundtrip("RAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True, "foreach": False})


def test_checkpoint_with_numeric_step_loads_like_torch():
    assert_legacy_step_loads("RAdam", {"betas": (0.5, 0.9), "foreach": False})


def test_constructor_matches_torch():
    assert_signature_matches("RAdam")
    param = [torch.zeros(2, requires_grad=True)]
    assert list(fastoptim.RAdam(param).defaults.items()) == list(torch.optim.RAdam(param).defaults.items())
    for bad, message in (
        ({"lr": torch.tensor([1.0, 2.0])}, "Tensor lr must be 1-element"),
        ({"eps": -1.0}, "Invalid epsilon value: -1.0"),
        ({"betas": (-0.1, 0.9)}, "Invalid beta parameter at index 0: -0.1"),
        ({"weight_decay": -1e-3}, "Invalid weight_decay value: -0.001"),
    ):
        for cls in (fastoptim.RAdam, torch.optim.RAdam):
            with pytest.raises(ValueError, match=f"^{message}$"):
                cls(param, **bad)
