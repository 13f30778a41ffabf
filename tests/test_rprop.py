"""Rprop beyond optim_db: bit-exact parity, sign-flip and clamping behaviour, complex step sizes, quirks.

Every comparison with torch is element by element with ``rtol=atol=0``
against torch.optim.Rprop's single-tensor path; ``capturable=True`` is compared
with torch's capturable branch run on the CPU (the fixture lifts its device check).
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
    {"lr": 2e-4},
    {"etas": (0.1, 3.0)},
    {"step_sizes": (2e-6, 100)},
    {"lr": 0.1, "step_sizes": (0.05, 0.2)},  # both bounds are hit within a few steps
    {"maximize": True},
    {"lr": torch.tensor(0.02)},
    {"capturable": True},
    {"capturable": True, "lr": torch.tensor(1e-3), "etas": (0.3, 1.7)},
    {"differentiable": True},
    {"differentiable": True, "maximize": True, "etas": (0.5, 1.5)},
]


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    allow_capturable_on_cpu(monkeypatch, "Rprop")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kwargs", CONFIGS, ids=repr)
def test_bit_exact_with_torch(kwargs, dtype, capturable_on_cpu):
    """Odd shapes, a non-contiguous, a 0-dim and a complex parameter, two groups, closures, a missing grad."""
    trial = run_exact("Rprop", {**kwargs, "foreach": False}, dtype, steps=12)
    if kwargs.get("differentiable"):
        trial.check_autograd_flows()


def test_capturable_on_cpu_runs_where_torch_refuses():
    assert_torch_refuses_capturable_on_cpu("Rprop", {})


@pytest.mark.parametrize("capturable", [False, True])
def test_sign_flips_shrink_the_step_and_skip_the_move(capturable, capturable_on_cpu):
    """Binary-exact numbers (lr 0.5, η = (0.5, 2), bounds (0.25, 1)) so every value is checked exactly."""
    param = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = fastoptim.Rprop([param], lr=0.5, etas=(0.5, 2.0), step_sizes=(0.25, 1.0), capturable=capturable)
    expected = [  # gradient, then Δ, prev and θ after the step
        ([1.0, -1.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5], [1.0, -1.0, 1.0, 0.0], [-0.5, 0.5, -0.5, 0.0]),
        ([3.0, 2.0, -1.0, 5.0], [1.0, 0.25, 0.25, 0.5], [3.0, 0.0, 0.0, 5.0], [-1.5, 0.5, -0.5, -0.5]),
        ([1.0, 2.0, -1.0, -5.0], [1.0, 0.25, 0.25, 0.25], [1.0, 2.0, -1.0, 0.0], [-2.5, 0.25, -0.25, -0.5]),
        ([-1.0, -2.0, 1.0, -1.0], [0.5, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, -1.0], [-2.5, 0.25, -0.25, -0.25]),
    ]
    for grad, step_size, prev, value in expected:
        param.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
        state = opt.state[param]
        assert state["step_size"].tolist() == step_size
        assert state["prev"].tolist() == prev
        assert param.tolist() == value


def test_complex_parts_get_their_own_step_sizes():
    param = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    opt = fastoptim.Rprop([param], lr=0.5, etas=(0.5, 2.0))
    param.grad = torch.tensor([1 - 1j, 0 + 2j])
    opt.step()
    assert opt.state[param]["step_size"].tolist() == [0.5 + 0.5j, 0.5 + 0.5j]
    param.grad = torch.tensor([1 + 1j, 0 - 2j])  # real part: same sign / zero; imaginary: flips
    opt.step()
    assert opt.state[param]["step_size"].tolist() == [1.0 + 0.25j, 0.5 + 0.25j]
    assert param.tolist() == [-1.5 + 0.5j, 0.0 - 0.5j]


@pytest.mark.parametrize("capturable", [False, True])
def test_state_layout_like_torch(capturable, capturable_on_cpu):
    """``step_size`` is laid out like the gradient (torch uses full_like(grad)), ``prev`` like the parameter."""
    layouts = []
    for cls in (fastoptim.Rprop, torch.optim.Rprop):
        param = torch.randn(4, 3).t().requires_grad_()
        opt = cls([param], capturable=capturable)
        param.grad = torch.ones(3, 4)
        opt.step()
        layouts.append([(k, v.dtype, v.shape, v.stride(), v.device) for k, v in opt.state[param].items()])
    assert layouts[0] == layouts[1]
    assert layouts[0][2][3] == (4, 1)


def test_nan_and_inf_propagate_like_torch():
    assert_nonfinite_like_torch("Rprop", {"foreach": False})


def test_a_nan_gradient_element_moves_nothing():
    """torch.sign(NaN) is 0: Δ and θ stay where they are; only ``prev`` takes the NaN."""
    param = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = fastoptim.Rprop([param], lr=0.5)
    for grad in ([1.0, 1.0], [float("nan"), 1.0], [1.0, 1.0]):
        param.grad = torch.tensor(grad)
        opt.step()
        if grad[0] != grad[0]:
            assert param[0].item() == 0.5 and opt.state[param]["prev"][0].isnan()
    assert opt.state[param]["step_size"][0].item() == 0.5  # neither grown nor shrunk across the NaN
    assert param[0].item() == 0.0


def test_sparse_gradient_is_rejected_before_anything_changes():
    dense, sparse = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    dense.grad, sparse.grad = torch.ones(3), torch.ones(3).to_sparse()
    opt = fastoptim.Rprop([dense, sparse])
    with pytest.raises(RuntimeError, match="^Rprop does not support sparse gradients$"):
        opt.step()
    assert not opt.state and torch.equal(dense.detach(), torch.ones(3))


def test_pickle_and_deepcopy_round_trip():
    assert_pickle_roundtrip("Rprop", {"etas": (0.4, 1.6), "foreach": False})


def test_checkpoint_with_numeric_step_loads_like_torch():
    assert_legacy_step_loads("Rprop", {"foreach": False})


def test_a_tensor_lr_that_requires_grad_fails_like_torch():
    """torch fills Δ₀ with full_like(grad, lr), which takes only a number."""
    for cls in (fastoptim.Rprop, torch.optim.Rprop):
        param = torch.ones(3, requires_grad=True)
        param.grad = torch.ones(3)
        opt = cls([param], lr=torch.tensor(0.01, requires_grad=True))
        with pytest.raises(TypeError, match="full_like"):
            opt.step()


def test_constructor_matches_torch():
    assert_signature_matches("Rprop")
    param = [torch.zeros(2, requires_grad=True)]
    assert list(fastoptim.Rprop(param).defaults.items()) == list(torch.optim.Rprop(param).defaults.items())
    for bad, message in (
        ({"lr": -1e-3}, "Invalid learning rate: -0.001"),
        ({"etas": (0.0, 1.2)}, "Invalid eta values: 0.0, 1.2"),
        ({"etas": (0.5, 1.0)}, "Invalid eta values: 0.5, 1.0"),
    ):
        for cls in (fastoptim.Rprop, torch.optim.Rprop):
            with pytest.raises(ValueError, match=f"^{message}$"):
                cls(param, **bad)
