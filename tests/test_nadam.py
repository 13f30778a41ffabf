"""NAdam beyond optim_db: bit-exact parity, capturable, NaN/inf, sparse, pickling, old checkpoints.

Every comparison is element by element with ``rtol=atol=0`` against
torch.optim.NAdam's single-tensor path.  ``capturable=True`` is compared with
torch's capturable branch run on the CPU (torch only refuses CPU tensors there
by a device check, which the ``capturable_on_cpu`` fixture lifts).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import fastoptim
from algorithm_checks import (
    allow_capturable_on_cpu,
    assert_nonfinite_like_torch,
    assert_pickle_roundtrip,
    assert_signature_matches,
    assert_torch_refuses_capturable_on_cpu,
    run_exact,
)
from parity import EXACT, assert_same, assert_same_optimizer

# These tests hold the reference rule to torch's for-loop path bit for bit.
pytestmark = pytest.mark.reference_backend


CONFIGS = [
    {},
    {"lr": 0.05, "betas": (0.5, 0.9)},
    {"momentum_decay": 0.0},
    {"momentum_decay": 0.5, "eps": 1e-3},
    {"weight_decay": 0.3},
    {"weight_decay": 0.3, "decoupled_weight_decay": True},
    {"weight_decay": 0.1, "maximize": True},
    {"lr": torch.tensor(0.01)},
    {"capturable": True},
    {"capturable": True, "weight_decay": 0.9, "momentum_decay": 6e-3},
    {"capturable": True, "weight_decay": 0.9, "decoupled_weight_decay": True, "lr": torch.tensor(1e-3)},
    {"differentiable": True, "weight_decay": 0.1},
    {"differentiable": True, "lr": torch.tensor(0.01)},
]


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    allow_capturable_on_cpu(monkeypatch, "NAdam")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kwargs", CONFIGS, ids=repr)
def test_bit_exact_with_torch(kwargs, dtype, capturable_on_cpu):
    """Odd shapes, a non-contiguous, a 0-dim and a complex parameter, two groups, closures, a missing grad."""
    trial = run_exact("NAdam", {**kwargs, "foreach": False}, dtype, steps=12)
    if kwargs.get("differentiable"):
        trial.check_autograd_flows()


def test_capturable_on_cpu_runs_where_torch_refuses():
    assert_torch_refuses_capturable_on_cpu("NAdam", {})


def _grads_through_steps(cls, steps):
    """d(Σθ)/d(lr) and d(Σθ)/d(θ₀) through ``steps`` differentiable steps, or the error backward raises."""
    lr = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    leaf = torch.linspace(-1, 1, 7, dtype=torch.float64, requires_grad=True)
    param = leaf.clone()
    opt = cls([param], lr=lr, weight_decay=0.1, differentiable=True)
    for k in range(steps):
        param.grad = torch.cos(torch.arange(7, dtype=torch.float64) + k)
        opt.step()
    try:
        param.sum().backward()
    except RuntimeError as error:
        return type(error)
    return lr.grad, leaf.grad


@pytest.mark.parametrize("steps", [1, 3])
def test_gradient_reaches_a_tensor_lr_like_torch(steps):
    """One step is differentiable; after more, torch's in-place lerp_ breaks backward, and so does ours."""
    ours, theirs = _grads_through_steps(fastoptim.NAdam, steps), _grads_through_steps(torch.optim.NAdam, steps)
    assert_same(ours, theirs, EXACT, f"{steps} steps")


def test_mu_product_is_the_running_product_of_the_schedule():
    beta1, psi = 0.9, 0.04
    param = torch.zeros(3, requires_grad=True)
    opt = fastoptim.NAdam([param], betas=(beta1, 0.999), momentum_decay=psi)
    expected = 1.0
    for t in range(1, 8):
        param.grad = torch.ones(3)
        opt.step()
        expected *= beta1 * (1 - 0.5 * 0.96 ** (t * psi))
        product = opt.state[param]["mu_product"]
        assert product.dtype == torch.float32 and product.dim() == 0 and product.device.type == "cpu"
        assert math.isclose(product.item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize("capturable", [False, True])
def test_state_layout_like_torch(capturable, capturable_on_cpu):
    """Key order, dtype, shape, strides (of a transposed parameter) and device of every state entry."""
    layouts = []
    for cls in (fastoptim.NAdam, torch.optim.NAdam):
        param = torch.randn(4, 3).t().requires_grad_()
        opt = cls([param], capturable=capturable)
        param.grad = torch.ones_like(param)
        opt.step()
        layouts.append([(k, v.dtype, v.shape, v.stride(), v.device) for k, v in opt.state[param].items()])
    assert layouts[0] == layouts[1]


def test_nan_and_inf_propagate_like_torch():
    assert_nonfinite_like_torch("NAdam", {"weight_decay": 0.01, "foreach": False})


def test_sparse_gradient_is_rejected_before_anything_changes():
    """torch raises too, but only after creating state for the parameters before the sparse one."""
    dense, sparse = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    dense.grad, sparse.grad = torch.ones(3), torch.ones(3).to_sparse()
    opt = fastoptim.NAdam([dense, sparse])
    with pytest.raises(RuntimeError, match="^NAdam does not support sparse gradients$"):
        opt.step()
    assert not opt.state and torch.equal(dense.detach(), torch.ones(3))


def test_pickle_and_deepcopy_round_trip():
    assert_pickle_roundtrip("NAdam", {"weight_decay": 0.1, "foreach": False})


@pytest.mark.parametrize("capturable", [False, True])
def test_old_checkpoints_with_numeric_scalars_load_like_torch(capturable, capturable_on_cpu):
    """Old torch versions stored ``step`` and ``mu_product`` as Python numbers."""
    trial = run_exact("NAdam", {"capturable": capturable, "foreach": False}, torch.float64, steps=3, complex_param=False)
    saved = trial.theirs.state_dict()
    for entry in saved["state"].values():
        entry["step"], entry["mu_product"] = entry["step"].item(), entry["mu_product"].item()
    trial.ours.load_state_dict(copy.deepcopy(saved))
    trial.theirs.load_state_dict(saved)
    assert_same_optimizer(trial.ours, trial.theirs, EXACT, "after loading")
    trial.step(3)
    assert_same_optimizer(trial.ours, trial.theirs, EXACT, "after a step")


def test_constructor_matches_torch():
    assert_signature_matches("NAdam")
    param = [torch.zeros(2, requires_grad=True)]
    assert list(fastoptim.NAdam(param).defaults.items()) == list(torch.optim.NAdam(param).defaults.items())
    betas = [0.8, 0.9]  # kept as given (a list), as torch keeps it
    assert fastoptim.NAdam(param, betas=betas).param_groups[0]["betas"] is betas
    for bad, message in (
        ({"lr": -1.0}, "Invalid learning rate: -1.0"),
        ({"eps": -1e-8}, "Invalid epsilon value: -1e-08"),
        ({"betas": (0.9, 1.0)}, "Invalid beta parameter at index 1: 1.0"),
        ({"weight_decay": float("nan")}, "Invalid weight_decay value: nan"),
        ({"momentum_decay": -0.1}, "Invalid momentum_decay value: -0.1"),
    ):
        for cls in (fastoptim.NAdam, torch.optim.NAdam):
            with pytest.raises(ValueError, match=f"^{message}$"):
                cls(param, **bad)
