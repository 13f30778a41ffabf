"""ASGD beyond optim_db: the averaging branch (optim_db never reaches t0), η/μ schedules, capturable, quirks.

Every comparison with torch is element by element with ``rtol=atol=0``
against torch.optim.ASGD's single-tensor path; ``capturable=True`` is compared
with torch's capturable branch run on the CPU (the fixture lifts its device check).
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
from parity import EXACT, Trial, assert_same_optimizer
from reliability import assert_identical, assert_unchanged, snapshot

# These tests hold the reference rule to torch's for-loop path bit for bit.
pytestmark = pytest.mark.reference_backend


CONFIGS = [
    {},
    {"t0": 0},
    {"t0": 3, "lambd": 0.1, "lr": 0.05},
    {"t0": 2, "alpha": 1.0, "weight_decay": 0.2},
    {"t0": 1, "weight_decay": 0.1, "maximize": True},
    {"t0": 2, "lr": torch.tensor(0.02)},
    {"capturable": True},
    {"capturable": True, "t0": 2, "lambd": 0.1},
    {"capturable": True, "t0": 3, "lr": torch.tensor(1e-3), "weight_decay": 0.1, "maximize": True},
    {"differentiable": True, "t0": 2},
    {"differentiable": True, "t0": 2, "lr": torch.tensor(0.01)},
]


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    allow_capturable_on_cpu(monkeypatch, "ASGD")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kwargs", CONFIGS, ids=repr)
def test_bit_exact_with_torch(kwargs, dtype, capturable_on_cpu):
    """Odd shapes, a non-contiguous, a 0-dim and a complex parameter, two groups, closures, a missing grad."""
    trial = run_exact("ASGD", {**kwargs, "foreach": False}, dtype, steps=12)
    if kwargs.get("differentiable"):
        trial.check_autograd_flows()


def test_capturable_on_cpu_runs_where_torch_refuses():
    assert_torch_refuses_capturable_on_cpu("ASGD", {})


@pytest.mark.parametrize("t0", [0, 3])
def test_ax_is_the_mean_of_the_iterates_from_t0_plus_2(t0):
    """μ used at step k is 1/max(1, k−1−t0): ax tracks θ until step t0+2, then averages θ_{t0+2..k}."""
    param = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = fastoptim.ASGD([param], lr=0.1, lambd=0.01, t0=t0)
    iterates = []
    for k in range(1, 11):
        param.grad = torch.sin(torch.arange(6, dtype=torch.float64) * k)
        opt.step()
        iterates.append(param.detach().clone())
        expected = torch.stack(iterates[t0 + 1 : k] if k > t0 + 2 else iterates[-1:]).mean(0)
        # μ = 1/n is held in float32, so the running mean is only float32-accurate
        torch.testing.assert_close(opt.state[param]["ax"], expected, rtol=1e-6, atol=1e-9)


def test_eta_and_mu_follow_their_schedules():
    lr, lambd, alpha, t0 = 0.3, 0.2, 0.75, 4
    param = torch.zeros(2, requires_grad=True)
    opt = fastoptim.ASGD([param], lr=lr, lambd=lambd, alpha=alpha, t0=t0)
    for t in range(1, 9):
        param.grad = torch.ones(2)
        opt.step()
        state = opt.state[param]
        assert state["eta"].item() == torch.tensor(lr / (1 + lambd * lr * t) ** alpha).item()
        assert state["mu"].item() == torch.tensor(1 / max(1, t - t0)).item()


def test_float64_eta_and_mu_are_rounded_through_the_default_dtype_like_torch():
    """After loading into float64 params, η and μ are float64, yet each new value passes through a float32 tensor."""
    kwargs = {"lr": 0.1, "lambd": 0.3, "t0": 1, "foreach": False}
    trial = run_exact("ASGD", kwargs, torch.float64, steps=2, complex_param=False)
    saved = trial.theirs.state_dict()
    trial.ours.load_state_dict(copy.deepcopy(saved))
    trial.theirs.load_state_dict(saved)
    for i in range(2, 7):  # t = 6 for the first parameter (it skips one step): μ = 1/5
        trial.step(i)
        assert_same_optimizer(trial.ours, trial.theirs, EXACT, f"step {i}")
    state = trial.ours.state[Trial.flat(trial.ours)[0]]  # group 0: lr = 0.1
    t = state["step"].item()
    assert state["eta"].dtype == state["mu"].dtype == torch.float64
    assert state["eta"].item() == torch.tensor(0.1 / (1 + 0.3 * 0.1 * t) ** 0.75, dtype=torch.float32).item()
    assert state["mu"].item() == torch.tensor(1 / (t - 1), dtype=torch.float32).item() != 1 / (t - 1)


def test_float64_default_dtype_like_torch():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        trial = run_exact("ASGD", {"t0": 2, "lambd": 0.3, "foreach": False}, torch.float64, steps=6)
        assert trial.ours.state[Trial.flat(trial.ours)[0]]["eta"].dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("capturable", [False, True])
def test_state_layout_like_torch(capturable, capturable_on_cpu):
    layouts = []
    for cls in (fastoptim.ASGD, torch.optim.ASGD):
        param = torch.randn(4, 3).t().requires_grad_()
        opt = cls([param], capturable=capturable)
        param.grad = torch.ones_like(param)
        opt.step()
        layouts.append([(k, v.dtype, v.shape, v.stride(), v.device) for k, v in opt.state[param].items()])
    assert layouts[0] == layouts[1]


def test_nan_and_inf_propagate_like_torch():
    """t0 = 1: the later steps run the averaging branch."""
    assert_nonfinite_like_torch("ASGD", {"t0": 1, "weight_decay": 0.1, "foreach": False})


def test_sparse_gradient_is_rejected_before_anything_changes():
    dense, sparse = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    dense.grad, sparse.grad = torch.ones(3), torch.ones(3).to_sparse()
    opt = fastoptim.ASGD([dense, sparse])
    with pytest.raises(RuntimeError, match="^ASGD does not support sparse gradients$"):
        opt.step()
    assert not opt.state and torch.equal(dense.detach(), torch.ones(3))


def test_pickle_and_deepcopy_round_trip():
    assert_pickle_roundtrip("ASGD", {"t0": 1, "foreach": False})


def test_old_checkpoints_with_numeric_scalars_load_like_torch():
    trial = run_exact("ASGD", {"t0": 2, "foreach": False}, torch.float32, steps=3, complex_param=False)
    saved = trial.theirs.state_dict()
    for entry in saved["state"].values():
        for key in ("step", "eta", "mu"):
            entry[key] = entry[key].item()
    trial.ours.load_state_dict(copy.deepcopy(saved))
    trial.theirs.load_state_dict(saved)
    assert_same_optimizer(trial.ours, trial.theirs, EXACT, "after loading")
    trial.step(3)
    assert_same_optimizer(trial.ours, trial.theirs, EXACT, "after a step")


def test_constructor_matches_torch():
    """All options are positional in ASGD (no keyword-only marker), as in torch."""
    assert_signature_matches("ASGD")
    param = [torch.zeros(2, requires_grad=True)]
    positional = (0.1, 1e-3, 0.5, 10.0, 0.01, None, True, False, False)
    ours, theirs = fastoptim.ASGD(param, *positional), torch.optim.ASGD(param, *positional)
    assert list(ours.defaults.items()) == list(theirs.defaults.items())
    for bad, message in (({"lr": -0.5}, "Invalid learning rate: -0.5"), ({"weight_decay": -1}, "Invalid weight_decay value: -1")):
        for cls in (fastoptim.ASGD, torch.optim.ASGD):
            with pytest.raises(ValueError, match=f"^{message}$"):
                cls(param, **bad)


# ----------------------------------------------------------------------------- η updates Python cannot compute
#: (options, the step at which torch's for-loop raises, the exception): torch computes the next η in Python
#: floats *after* updating each parameter, so 1 / (1 + λγt)^α raises where IEEE arithmetic gives inf
RAISING = [
    ({"alpha": -math.inf}, 1, ZeroDivisionError),  # (1 + λγ)^-inf = 0
    ({"lr": 1.0, "lambd": -0.5}, 2, ZeroDivisionError),  # 1 - 0.5·2 = 0, 0^0.75 = 0
    ({"lr": 1.0, "lambd": -0.5, "alpha": -0.75}, 2, ZeroDivisionError),  # 0.0 to a negative power
    ({"lr": 1.0, "lambd": 1e200, "alpha": 2.0}, 1, OverflowError),  # (1e200)^2
]


def _asgd_pair(kwargs):
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(s, generator=gen) for s in ((4, 3), (5,))]
    grads = [torch.randn(s, generator=gen) for s in ((4, 3), (5,))]
    pair = []
    for cls in (fastoptim.ASGD, torch.optim.ASGD):
        params = [d.clone().requires_grad_() for d in data]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        pair.append((cls(params, **kwargs), params))
    return pair


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("kwargs, at, error", RAISING, ids=repr)
def test_eta_errors_raised_like_torch_before_anything_changes(kwargs, at, error, foreach, backend):
    """Same exception (type and message) at the same step as torch; fastoptim's optimizer is left untouched."""
    (ours, our_params), (theirs, their_params) = _asgd_pair({**kwargs, "foreach": foreach})
    with fastoptim.kernels.dispatch.use_backend(backend), torch.no_grad():
        for _ in range(at - 1):
            ours.step()
            theirs.step()
        if backend == "reference":  # the kernel is held to the reference in test_kernels.py
            for a, b in zip(our_params, their_params):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        with pytest.raises(error) as theirs_raised:
            theirs.step()
        before = snapshot(ours)
        with pytest.raises(error) as ours_raised:
            ours.step()
    assert str(ours_raised.value) == str(theirs_raised.value)
    assert_unchanged(ours, before, f"{kwargs} after the rejected step {at}")


@pytest.mark.parametrize(
    "kwargs",
    [{"foreach": True}, {"foreach": False, "lr": torch.tensor(0.01)}, {"foreach": False, "capturable": True}],
    ids=repr,
)
def test_alpha_minus_inf_where_torch_computes_in_tensors(kwargs):
    """foreach=True, a tensor lr or capturable=True: torch's η arithmetic is in tensors, η becomes inf and
    nothing raises; fastoptim too, with the kernel and the reference rule agreeing bit for bit."""
    kwargs = {**kwargs, "alpha": -math.inf}
    results = []
    for backend in ("reference", "auto"):
        (ours, params), (theirs, their_params) = _asgd_pair(kwargs)
        with fastoptim.kernels.dispatch.use_backend(backend), torch.no_grad():
            ours.step()
            if not kwargs.get("capturable"):  # torch refuses capturable on the CPU
                theirs.step()
                assert all(torch.isinf(theirs.state[p]["eta"]) for p in their_params)
        assert all(torch.isinf(ours.state[p]["eta"]) for p in params)
        results.append(snapshot(ours))
    assert_identical(results[0]["params"], results[1]["params"], "params")
    assert_identical(results[0]["state"], results[1]["state"], "state")
