"""Adagrad beyond optim_db: bit-exact runs, sparse gradients, eager state, and its error paths."""

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
    run_exact,
)
from fastoptim.algorithms.adagrad import adagrad_reference
from parity import EXACT, assert_same, assert_same_optimizer

# These tests hold the reference rule to torch's for-loop path bit for bit.
pytestmark = pytest.mark.reference_backend


CONFIGS = [
    {},
    {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1},
    {"initial_accumulator_value": 0.3, "eps": 1e-3},
    {"maximize": True, "weight_decay": 0.2},
    {"lr": torch.tensor(0.05), "lr_decay": 0.01},
    {"lr": torch.tensor([0.05])},  # 1-element, not 0-dim
]
SPARSE_CONFIGS = [{}, {"lr": 0.1, "lr_decay": 0.5}, {"maximize": True, "initial_accumulator_value": 0.2}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_torch_for_loop(kwargs, dtype):
    """Dense, complex, 0-dim and non-contiguous params: identical bits after every step."""
    run_exact("Adagrad", {**kwargs, "foreach": False}, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", SPARSE_CONFIGS, ids=str)
def test_sparse_gradients_bitwise(kwargs, dtype):
    run_exact("Adagrad", {**kwargs, "foreach": False}, dtype, sparse=True)


def test_uncoalesced_sparse_gradient_sums_duplicates():
    """Duplicate indices are summed before squaring, as torch does (coalesce first)."""
    indices = torch.tensor([[0, 2, 0, 4]])
    values = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 1.0]])
    results = []
    for cls in (fastoptim.Adagrad, torch.optim.Adagrad):
        p = torch.linspace(-1, 1, 10).reshape(5, 2).requires_grad_()
        opt = cls([p], lr=0.3)
        for _ in range(3):
            p.grad = torch.sparse_coo_tensor(indices, values, (5, 2))
            assert not p.grad.is_coalesced()
            opt.step()
        results.append((p, opt.state[p]))
    assert_same(results[0][0], results[1][0], EXACT, "param")
    assert_same(results[0][1], results[1][1], EXACT, "state")


def test_sparse_gradient_with_weight_decay_is_rejected_before_any_change():
    p = torch.ones(4, 2, requires_grad=True)
    q = torch.ones(3, requires_grad=True)
    opt = fastoptim.Adagrad([q, p], weight_decay=0.1)
    q.grad = torch.ones(3)
    p.grad = torch.eye(4, 2).to_sparse()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
        opt.step()
    # torch has already counted a step (and updated q) when it raises; fastoptim changes nothing.
    assert_same(opt.state_dict(), before, EXACT)
    assert torch.equal(q, torch.ones(3))
    torch_opt = torch.optim.Adagrad([p], weight_decay=0.1)
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
        torch_opt.step()


def test_fused_rejects_sparse_gradients_like_torch():
    for cls in (fastoptim.Adagrad, torch.optim.Adagrad):
        p = torch.ones(4, 2, requires_grad=True)
        p.grad = torch.eye(4, 2).to_sparse()
        with pytest.raises(RuntimeError, match="`fused` does not support sparse grad or complex param"):
            cls([p], fused=True).step()


def test_fused_rejects_complex_params_like_torch():
    for cls in (fastoptim.Adagrad, torch.optim.Adagrad):
        p = torch.ones(3, dtype=torch.complex64, requires_grad=True)
        p.grad = torch.ones(3, dtype=torch.complex64)
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point"):
            cls([p], fused=True).step()


@pytest.mark.parametrize("fused", [False, True])
def test_state_is_created_in_the_constructor(fused):
    """Before any step: the same state (τ, and τ+τi for complex), the same state_dict."""
    values = [torch.randn(3, 2)] + ([] if fused else [torch.randn(4, dtype=torch.complex128)])
    made = []
    for cls in (fastoptim.Adagrad, torch.optim.Adagrad):
        params = [v.clone().requires_grad_() for v in values]
        made.append(cls(params, initial_accumulator_value=0.25, fused=fused))
    ours, theirs = made
    assert len(ours.state) == len(theirs.state) > 0
    assert_same_optimizer(ours, theirs, EXACT, "fresh")
    if not fused:
        assert ours.state[ours.param_groups[0]["params"][1]]["sum"][0] == complex(0.25, 0.25)


def test_later_param_groups_get_state_lazily_from_the_constructor_value():
    """add_param_group creates no state; the first step uses the constructor's τ, not the group's."""
    made = []
    for cls in (fastoptim.Adagrad, torch.optim.Adagrad):
        a = torch.linspace(-1, 1, 6, requires_grad=True)
        b = torch.linspace(0, 2, 5, requires_grad=True)
        opt = cls([a], initial_accumulator_value=0.5)
        opt.add_param_group({"params": [b], "initial_accumulator_value": 3.0})
        assert b not in opt.state
        made.append((opt, a, b))
    assert_same_optimizer(made[0][0], made[1][0], EXACT, "after add_param_group")
    for step in range(3):
        for opt, a, b in made:
            a.grad = torch.full_like(a, 0.5 * step)
            b.grad = torch.full_like(b, -1.0) if step > 0 else None
            opt.step()
        assert_same_optimizer(made[0][0], made[1][0], EXACT, f"step {step}")
    ours_b = made[0][2]
    assert made[0][0].state[ours_b]["sum"][0] == 0.5 + 2.0  # τ from the constructor plus two squared grads


def test_share_memory_shares_every_accumulator():
    opt = fastoptim.Adagrad([torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)])
    opt.share_memory()
    assert all(entry["sum"].is_shared() for entry in opt.state.values())


def test_reference_rule_can_be_called_on_its_own():
    """The rule is a plain function: the same bits as one torch step, state updated in place."""
    p = torch.tensor([1.0, -2.0, 3.0])
    state = {"step": torch.tensor(0.0), "sum": torch.full((3,), 0.1)}
    options = dict(lr=0.1, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False)
    adagrad_reference(p, torch.tensor([0.5, 0.5, -1.0]), state, **options)
    q = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    q.grad = torch.tensor([0.5, 0.5, -1.0])
    torch.optim.Adagrad([q], lr=0.1, initial_accumulator_value=0.1, foreach=False).step()
    assert torch.equal(p, q.detach())
    assert state["step"].item() == 1.0


def test_nan_and_inf_propagate_like_torch():
    assert_nonfinite_like_torch("Adagrad", {"lr": 0.1, "weight_decay": 0.1, "foreach": False})


def test_pickle_and_deepcopy_round_trip():
    assert_pickle_roundtrip("Adagrad", {"lr": 0.1, "lr_decay": 0.1, "foreach": False})


def test_checkpoint_with_numeric_step_loads_like_torch():
    assert_legacy_step_loads("Adagrad", {"foreach": False})


def test_signature_matches_torch():
    assert_signature_matches("Adagrad")


def test_misspelt_argument_is_a_type_error():
    with pytest.raises(TypeError):
        fastoptim.Adagrad([torch.zeros(1, requires_grad=True)], lr_decai=0.1)
