"""Schedule-Free AdamW and SGD against Meta's ``schedulefree`` (``AdamWScheduleFree``, ``SGDScheduleFree``)."""

from __future__ import annotations

import copy

import pytest
import torch

import fastoptim
from fastoptim.lr_scheduler import LambdaLR
from parity import EXACT, TOLERANCE, Problem, assert_same
from reference_checks import (
    assert_kernel_matches_reference,
    assert_grad_untouched,
    ReferenceTrial,
    assert_follows_scheduler,
    assert_grad_scaler_skips_nonfinite,
    assert_late_parameter_matches_reference,
    assert_matches_reference,
    assert_state_dict_roundtrip,
)

schedulefree = pytest.importorskip("schedulefree")

PAIRS = {
    "AdamW": (fastoptim.AdamWScheduleFree, schedulefree.AdamWScheduleFree),
    "SGD": (fastoptim.SGDScheduleFree, schedulefree.SGDScheduleFree),
}
CONFIGS = {
    "AdamW": [
        {},
        {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "warmup_steps": 5, "r": 1.0, "weight_lr_power": 1.0},
        {"lr": 1e-2, "betas": (0.5, 0.9), "eps": 1e-3, "warmup_steps": 20},
        {"lr": 1e-2, "weight_lr_power": 0.0, "foreach": False},
    ],
    "SGD": [
        {"lr": 0.1},
        {"lr": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.5, "warmup_steps": 5, "r": 2.0},
        {"lr": 0.05, "weight_lr_power": 0.0, "foreach": False},
        {},
    ],
}
CASES = [(name, kwargs) for name, configs in CONFIGS.items() for kwargs in configs]


def train(opt):
    opt.train()


def make_trial(name, kwargs, dtype, *, complex_param=True, tol=EXACT, backend="reference"):
    ours, theirs = PAIRS[name]
    problem = Problem.make(dtype, complex_param=complex_param)
    return ReferenceTrial(ours, theirs, kwargs, dtype, problem=problem, prepare=train, tol=tol, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, kwargs", CASES, ids=str)
def test_bitwise_equal_to_schedulefree(name, kwargs, dtype):
    """12 steps in train mode, then eval (x), train again (y) and 6 more: every value identical, groups too."""
    trial = make_trial(name, kwargs, dtype)
    trial.run(12)
    for opt in (trial.ours, trial.theirs):
        opt.eval()
    trial.check("eval")
    for opt in (trial.ours, trial.theirs):
        opt.train()
    trial.check("train again")
    trial.run(6)


@pytest.mark.parametrize("name", PAIRS)
def test_parameter_joining_late(name):
    assert_late_parameter_matches_reference(*PAIRS[name], {"lr": 0.05, "weight_decay": 0.1}, prepare=train)


@pytest.mark.parametrize("name", PAIRS)
def test_defaults_and_group_layout_are_schedulefrees(name):
    ours_cls, theirs_cls = PAIRS[name]
    p = torch.zeros(2, requires_grad=True)
    ours, theirs = ours_cls([p]), theirs_cls([p])
    assert list(ours.defaults) == list(theirs.defaults)
    assert ours.defaults == theirs.defaults
    assert list(ours.param_groups[0]) == list(theirs.param_groups[0])


@pytest.mark.parametrize("name", PAIRS)
def test_step_outside_train_mode_raises(name):
    ours_cls, theirs_cls = PAIRS[name]
    p = torch.ones(3, requires_grad=True)
    opt = ours_cls([p])
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step()
    with pytest.raises(Exception, match="not in train mode"):
        theirs_cls([p]).step()
    assert not opt.state and opt.param_groups[0]["k"] == 0
    opt.train()
    opt.step()
    opt.eval()
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step()


@pytest.mark.parametrize("name", PAIRS)
def test_switching_twice_is_a_no_op(name):
    ours_cls, _ = PAIRS[name]
    p = torch.ones(3, requires_grad=True)
    opt = ours_cls([p], lr=0.1)
    opt.train()
    for g in ([1.0, -2.0, 3.0], [0.5, 1.0, -1.0]):  # after one step x = y = z (c₁ = 1)
        p.grad = torch.tensor(g)
        opt.step()
    y = p.detach().clone()
    opt.train()
    assert torch.equal(p.detach(), y)
    opt.eval()
    x = p.detach().clone()
    opt.eval()
    assert torch.equal(p.detach(), x)
    assert not torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eval_mode_holds_the_average_of_the_paper_reference(dtype):
    """Cross-check of the semantics: in eval mode SGD's parameters are x, as held explicitly by
    ``schedulefree.SGDScheduleFreeReference`` (a different formulation, so equal to rounding)."""
    kwargs = {"lr": 0.1, "weight_decay": 0.05, "warmup_steps": 3}
    trial = ReferenceTrial(
        fastoptim.SGDScheduleFree, schedulefree.SGDScheduleFreeReference, kwargs, dtype,
        problem=Problem.make(dtype, complex_param=False), prepare=train, tol=TOLERANCE[dtype],
    )
    trial.run(10, check=False)
    trial.ours.eval()
    trial.theirs.eval()
    for a, b in zip(trial.flat(trial.ours), trial.flat(trial.theirs)):
        assert_same(a, b, dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10), "x")


@pytest.mark.parametrize("name", PAIRS)
def test_checkpoints_move_between_the_libraries(name):
    """The state_dict layouts are the same: each library resumes from the other's checkpoint, in eval mode."""
    trial = make_trial(name, {"lr": 0.05, "weight_decay": 0.1}, torch.float64, complex_param=False)
    trial.run(5)
    for opt in (trial.ours, trial.theirs):
        opt.eval()
    ours_cls, theirs_cls = PAIRS[name]
    for target_cls, source in ((ours_cls, trial.theirs), (theirs_cls, trial.ours)):
        fresh = [[p.detach().clone().requires_grad_() for p in g["params"]] for g in source.param_groups]
        resumed = target_cls([{"params": fresh[0]}, {"params": fresh[1]}], lr=0.05)
        resumed.load_state_dict(copy.deepcopy(source.state_dict()))
        assert resumed.param_groups[0]["train_mode"] is False
        assert_matches_reference(resumed, source, EXACT, f"{target_cls.__module__} loaded")
    resumed_ours = ours_cls([{"params": [p.detach().clone().requires_grad_() for p in g["params"]]}
                             for g in trial.theirs.param_groups])
    resumed_ours.load_state_dict(copy.deepcopy(trial.theirs.state_dict()))
    for p, q in zip(trial.flat(resumed_ours), trial.flat(trial.theirs)):
        p.data.copy_(q)
    trial.ours = resumed_ours
    for opt in (trial.ours, trial.theirs):
        opt.train()
    trial.run(6)


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_round_trip(name, dtype):
    assert_state_dict_roundtrip(PAIRS[name][0], {"lr": 0.05, "weight_decay": 0.1}, dtype, prepare=train)


@pytest.mark.parametrize("name", PAIRS)
def test_fastoptim_scheduler_drives_the_lr(name):
    make = lambda opt: LambdaLR(opt, lambda e: 1 / (1 + e))  # noqa: E731
    assert_follows_scheduler(PAIRS[name][0], {"lr": 0.05}, make, prepare=train)


@pytest.mark.parametrize("name", PAIRS)
def test_grad_scaler_skips_nonfinite_steps(name):
    assert_grad_scaler_skips_nonfinite(PAIRS[name][0], {"lr": 0.05, "weight_decay": 0.1}, prepare=train)


@pytest.mark.parametrize("name", PAIRS)
def test_grad_is_left_untouched(name):
    assert_grad_untouched(PAIRS[name][0], {"weight_decay": 0.1}, prepare=train)


@pytest.mark.parametrize(
    "cls, bad, message",
    [
        (fastoptim.AdamWScheduleFree, {"lr": -1.0}, "Invalid learning rate"),
        (fastoptim.AdamWScheduleFree, {"betas": (0.0, 0.9)}, "Invalid beta parameter at index 0"),
        (fastoptim.AdamWScheduleFree, {"betas": (0.9, 1.0)}, "Invalid beta parameter at index 1"),
        (fastoptim.AdamWScheduleFree, {"eps": -1.0}, "Invalid epsilon value"),
        (fastoptim.AdamWScheduleFree, {"warmup_steps": -1}, "Invalid warmup_steps value"),
        (fastoptim.SGDScheduleFree, {"momentum": 0.0}, "Momentum must be between 0 and 1 exclusive"),
        (fastoptim.SGDScheduleFree, {"momentum": 1.0}, "Momentum must be between 0 and 1 exclusive"),
        (fastoptim.SGDScheduleFree, {"weight_decay": -1.0}, "Invalid weight_decay value"),
        (fastoptim.SGDScheduleFree, {"weight_lr_power": -1.0}, "Invalid weight_lr_power value"),
    ],
)
def test_invalid_arguments(cls, bad, message):
    with pytest.raises(ValueError, match=message):
        cls([torch.zeros(2, requires_grad=True)], **bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("AdamW", {"lr": 1e-2}),
        ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "warmup_steps": 3, "betas": (0.6, 0.9)}),
        ("SGD", {"lr": 0.1}),
        ("SGD", {"lr": 0.1, "weight_decay": 0.1, "momentum": 0.5, "r": 1.0}),
    ],
    ids=str,
)
def test_kernel_matches_reference_rule(name, kwargs, dtype):
    pytest.importorskip("numba")
    assert_kernel_matches_reference(PAIRS[name][0], kwargs, dtype, prepare=train)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", PAIRS)
def test_default_backend_matches_schedulefree_to_rounding(name, dtype):
    """What users run by default (the fast kernel where it applies) against the reference package."""
    trial = make_trial(name, {"lr": 0.05, "weight_decay": 0.1}, dtype, tol=TOLERANCE[dtype], backend="auto")
    trial.run(12)


@pytest.mark.parametrize("name", PAIRS)
def test_trajectories_step_in_train_mode_and_draw_the_average(name):
    """``fastoptim trajectories`` (testfunctions.path) switches Schedule-Free to train mode to step, and records x."""
    from fastoptim.testfunctions import FUNCTIONS, path

    function = FUNCTIONS["rosenbrock"]
    points = path(function, lambda params: PAIRS[name][0](params, lr=0.01), steps=5)
    point = torch.nn.Parameter(torch.tensor(function.start, dtype=torch.float64))
    opt = PAIRS[name][0]([point], lr=0.01)
    expected = [point.detach().clone()]
    for _ in range(5):
        opt.train()
        opt.zero_grad()
        function(point[0], point[1]).backward()
        opt.step()
        opt.eval()
        expected.append(point.detach().clone())
    assert torch.equal(points, torch.stack(expected))
