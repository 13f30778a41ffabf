"""Adafactor beyond optim_db: bit-exact runs, factored state layout, ε₁ resolution, errors, copies.

The bit-exact tests run fastoptim's reference rule (the kernel is held to it
in tests/test_kernels.py); the last ones run the default backend -- the
kernel -- against torch, to torch's tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fastoptim
from algorithm_checks import (
    assert_legacy_step_loads,
    assert_nonfinite_like_torch,
    assert_pickle_roundtrip,
    assert_signature_matches,
)
from extra_checks import (
    assert_complex_rejected_before_any_change,
    assert_sparse_gradient_rejected_like_torch,
    problem_of,
)
from fastoptim.kernels.dispatch import backend_for, use_backend
from parity import EXACT, TOLERANCE, Problem, Trial, assert_same, assert_same_optimizer

pytestmark = pytest.mark.reference_backend

CONFIGS = [
    {},
    {"lr": 0.1, "weight_decay": 0.1},
    {"weight_decay": 0.1, "maximize": True},
    {"beta2_decay": -1.0, "d": 1.5},
    {"eps": (1e-30, 1e-2), "lr": 0.5},
    {"eps": (0.0, 0.0)},
    {"lr": torch.tensor(0.05), "weight_decay": 0.2},  # tensor lr: torch's scalar math runs in float32
    {"lr": torch.tensor([0.05])},  # 1-element, not 0-dim
]


def exact_trial(kwargs, dtype, problem=None, steps=10):
    problem = problem or Problem.make(dtype, complex_param=False)
    trial = Trial(fastoptim.Adafactor, torch.optim.Adafactor, kwargs, dtype, problem=problem, tol=EXACT)
    trial.run(steps=steps)
    return trial


def test_signature_matches_torch():
    assert_signature_matches("Adafactor")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_torch_for_loop(kwargs, dtype):
    """Matrices (one non-contiguous), a vector and a 0-dim param: identical bits after every step."""
    exact_trial({**kwargs, "foreach": False}, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_higher_rank_params_factor_over_last_two_dims(dtype):
    """3-D and 4-D params (batched row/col factors), degenerate 1-wide matrices: bit-exact."""
    shapes = [[(2, 3, 4), (3, 1, 5)], [(4, 1), (1, 4), (2, 2, 3, 3)]]
    trial = exact_trial({"weight_decay": 0.1, "foreach": False}, dtype, problem_of(shapes, dtype))
    state = trial.ours.state[trial.ours.param_groups[0]["params"][0]]
    assert state["row_var"].shape == (2, 3, 1) and state["col_var"].shape == (2, 1, 4)
    assert "variance" not in state


def test_state_layout_and_laziness():
    matrix = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    vector = torch.randn(7, requires_grad=True)
    opt = fastoptim.Adafactor([matrix, vector])
    assert len(opt.state) == 0
    matrix.grad = torch.ones_like(matrix)
    opt.step()
    assert vector not in opt.state  # no gradient yet: no state
    entry = opt.state[matrix]
    assert sorted(entry) == ["col_var", "row_var", "step"]
    assert entry["step"].dtype == torch.float32 and entry["step"].device.type == "cpu" and entry["step"].item() == 1
    assert entry["row_var"].shape == (5, 1) and entry["col_var"].shape == (1, 3)
    assert entry["row_var"].dtype == torch.float64
    vector.grad = torch.ones_like(vector)
    opt.step()
    assert sorted(opt.state[vector]) == ["step", "variance"]
    assert opt.state[vector]["variance"].shape == (7,)


@pytest.mark.parametrize("first_has_grad", [True, False])
def test_eps1_none_comes_from_the_first_param_with_a_gradient(first_has_grad):
    """torch resolves ε₁ once per group: a float64 param after a float32 one uses float32's epsilon."""
    made = []
    for cls in (fastoptim.Adafactor, torch.optim.Adafactor):
        params = [
            torch.full((3, 4), 1e-4, dtype=torch.float32, requires_grad=True),
            torch.full((4, 3), 1e-4, dtype=torch.float64, requires_grad=True),
            torch.full((5,), 1e-4, dtype=torch.float64, requires_grad=True),
        ]
        opt = cls(params, foreach=False)
        for step in range(4):
            for k, p in enumerate(params):
                # tiny gradients, so that ε₁ (float32's 1.2e-7 vs float64's 2.2e-16) decides the update
                p.grad = None if (k == 0 and not first_has_grad) else torch.full_like(p, 1e-9 * (step + 1))
            opt.step()
        made.append(opt)
    assert_same_optimizer(made[0], made[1], EXACT)


def test_foreach_flag_runs_the_for_loop_arithmetic():
    """foreach=True: bit-identical to foreach=False here, and within rounding of torch's multi-tensor path."""
    dtype = torch.float32
    problem = Problem.make(dtype, complex_param=False)
    looped = Trial(fastoptim.Adafactor, torch.optim.Adafactor, {"weight_decay": 0.1}, dtype, problem=problem)
    multi = Trial(fastoptim.Adafactor, torch.optim.Adafactor, {"weight_decay": 0.1, "foreach": True}, dtype,
                  problem=problem, tol=TOLERANCE[dtype])
    multi.run(steps=10)  # vs torch foreach=True, torch's own float32 tolerance
    looped.run(steps=10, check=False)
    for a, b in zip(Trial.flat(multi.ours), Trial.flat(looped.ours)):
        assert_same(a, b, EXACT, "foreach=True vs foreach=False")


def test_nan_and_inf_propagate_like_torch():
    assert_nonfinite_like_torch("Adafactor", {"foreach": False})
    assert_nonfinite_like_torch("Adafactor", {"foreach": False, "weight_decay": 0.1, "maximize": True}, torch.float64)


def test_complex_param_is_rejected_before_any_change():
    assert_complex_rejected_before_any_change("Adafactor")


def test_sparse_gradient_raises_like_torch():
    assert_sparse_gradient_rejected_like_torch("Adafactor")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"lr": -1.0}, "Learning rate should be >= 0 but is: -1.0"),
        ({"lr": float("nan")}, "Learning rate should be >= 0 but is: nan"),
        ({"beta2_decay": 0.1}, "beta2_decay should be <= 0 but is: 0.1"),
        ({"eps": (-1.0, 1e-3)}, "epsilon1 should be >= 0 but is: -1.0"),
        ({"eps": (None, -1.0)}, "epsilon2 should be >= 0 but is: -1.0"),
        ({"d": 0.5}, "Clipping threshold d should be >= 1 but is: 0.5"),
        ({"weight_decay": -0.1}, "weight_decay should be >= 0 but is: -0.1"),
    ],
)
def test_constructor_errors_have_torchs_messages(kwargs, message):
    for cls in (fastoptim.Adafactor, torch.optim.Adafactor):
        with pytest.raises(ValueError) as info:
            cls([torch.zeros(2, requires_grad=True)], **kwargs)
        assert str(info.value) == message


def test_pickle_and_deepcopy_step_on_identically():
    assert_pickle_roundtrip("Adafactor", {"weight_decay": 0.1}, complex_param=False)


def test_numeric_step_of_old_checkpoints_loads_like_torch():
    assert_legacy_step_loads("Adafactor", {}, complex_param=False)


def test_loading_a_state_without_either_layout_is_rejected_and_changes_nothing():
    trial = exact_trial({}, torch.float32, steps=2)
    before = copy.deepcopy(trial.ours.state_dict())
    broken = copy.deepcopy(before)
    del broken["state"][0]["col_var"]
    with pytest.raises(ValueError, match="either 'row_var' and 'col_var' or 'variance'"):
        trial.ours.load_state_dict(broken)
    assert_same(trial.ours.state_dict(), before, EXACT)


# ---------------------------------------------------------------- the default backend (the kernel) against torch

#: the kernel sums the norms in float64 in its own order (torch: float32) and factors V̂^(−½):
#: a few units in the last place of the update, which the clip and α carry into every weight
KERNEL_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: TOLERANCE[torch.float64]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_default_backend_matches_torch_to_rounding(kwargs, dtype):
    """What users run by default (the kernel) against torch's for-loop, matrices and vectors, for ten steps."""
    pytest.importorskip("numba")
    problem = Problem.make(dtype, complex_param=False)
    trial = Trial(fastoptim.Adafactor, torch.optim.Adafactor, {**kwargs, "foreach": False}, dtype, problem=problem,
                  tol=KERNEL_TOLERANCE[dtype])
    with use_backend("auto"):
        assert backend_for(trial.ours) == "numba"  # (before any gradient: ε₁ = None resolves from the first parameter)
        trial.run(steps=10)
        assert backend_for(trial.ours) == "numba"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_backend_higher_rank_params(dtype):
    """3-D and 4-D params and 1-wide matrices through the kernel, against torch."""
    shapes = [[(2, 3, 4), (3, 1, 5)], [(4, 1), (1, 4), (2, 2, 3, 3)]]
    trial = Trial(fastoptim.Adafactor, torch.optim.Adafactor, {"weight_decay": 0.1, "foreach": False}, dtype,
                  problem=problem_of(shapes, dtype), tol=KERNEL_TOLERANCE[dtype])
    with use_backend("auto"):
        trial.run(steps=10)
