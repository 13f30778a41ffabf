"""SparseAdam beyond optim_db: runs on sparse gradients, the masked update, and the error paths.

Every comparison is against torch.optim.SparseAdam, element by element, on
parameters and state, within :func:`ulps`: the kernel's square root is IEEE's,
torch's is MKL's VML, which is not always correctly rounded and picks its code
by CPU (see fastoptim/kernels/cpu/sparse_adam.py), so a parameter can differ by
an ulp, and the runs below feed the parameters back into the gradients.  The
reference rule alone, and copies of one optimizer, are compared with
``rtol=atol=0``.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import fastoptim
from fastoptim.algorithms.sparse_adam import sparse_adam_reference
from parity import EXACT, Problem, Trial, assert_same, assert_same_optimizer

DTYPES = [torch.float32, torch.float64]
CONFIGS = [
    {},
    {"lr": 0.05, "betas": (0.5, 0.9), "eps": 1e-3},
    {"maximize": True, "lr": 0.02},
    {"lr": torch.tensor(0.01)},
    {"lr": torch.tensor([0.03])},  # 1-element, not 0-dim
    {"betas": (0.0, 0.0)},
]


def ulps(dtype: torch.dtype) -> dict:
    """fastoptim against torch: within 16 units of the last place of O(1) values (16 eps, relative and absolute).

    The kernel and torch differ by an ulp where their square roots do; on
    one AMD EPYC no run below showed it, on an Intel Xeon one did (float64,
    one element, 2.8e-17).
    """
    eps = torch.finfo(dtype).eps
    return dict(rtol=16 * eps, atol=16 * eps)


def sparse_trial(kwargs, dtype, **options) -> Trial:
    problem = Problem.make(dtype, sparse=True, **options)
    return Trial(fastoptim.SparseAdam, torch.optim.SparseAdam, kwargs, dtype, problem=problem, tol=ulps(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_steps_match_torch(kwargs, dtype):
    """Two groups, a gradless step, closure steps: the same values after each of 10 steps."""
    sparse_trial(kwargs, dtype).run(steps=10)


def embedding_run(cls, weight, batches, **kwargs):
    """Train an ``nn.Embedding(sparse=True)``-style lookup; return the optimizer."""
    weight = weight.clone(memory_format=torch.preserve_format).requires_grad_()
    opt = cls([weight], **kwargs)
    gen = torch.Generator().manual_seed(5)
    for indices in batches:
        opt.zero_grad()
        target = torch.randn(len(indices), weight.shape[1], generator=gen, dtype=weight.dtype)
        out = torch.nn.functional.embedding(indices, weight, sparse=True)
        ((out - target) ** 2).sum().backward()
        assert weight.grad.is_sparse
        opt.step()
    return opt


@pytest.mark.parametrize("kwargs", CONFIGS[:4], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_embedding_with_repeated_indices(kwargs, layout):
    """Real sparse backward (uncoalesced, repeated rows), contiguous or transposed storage."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    if layout == "transposed":
        weight = torch.randn(4, 10, generator=gen, dtype=torch.float64).t()
        assert not weight.is_contiguous()
    batches = [torch.tensor([1, 3, 3, 7]), torch.tensor([0, 1, 1, 1]), torch.tensor([9]), torch.tensor([3, 5, 7, 9, 3])]
    ours = embedding_run(fastoptim.SparseAdam, weight, batches, **kwargs)
    theirs = embedding_run(torch.optim.SparseAdam, weight, batches, **kwargs)
    assert_same_optimizer(ours, theirs, ulps(weight.dtype))
    param = ours.param_groups[0]["params"][0]
    assert ours.state[param]["exp_avg"].stride() == param.stride()
    # Rows never looked up keep their initial value and zero moments.
    for row in (2, 4, 6, 8):
        assert_same(param[row], weight[row], EXACT, f"row {row}")
        assert not ours.state[param]["exp_avg_sq"][row].any()


def test_only_present_entries_change():
    """Entries outside the gradient's support: parameter and both moments untouched, bit for bit."""
    p = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    before = p.detach().clone()
    opt = fastoptim.SparseAdam([p], lr=0.1)
    values = torch.tensor([1.0, -2.0], dtype=torch.float64)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 4], [1, 2]]), values, (6, 3))
    opt.step()
    changed = (p.detach() != before).nonzero().tolist()
    assert changed == [[0, 1], [4, 2]]
    for key in ("exp_avg", "exp_avg_sq"):
        assert opt.state[p][key].nonzero().tolist() == [[0, 1], [4, 2]]


def test_explicit_zero_entry_counts_as_present():
    """A stored zero decays the moments and moves the parameter (no value check), as in torch."""
    results = []
    for cls in (fastoptim.SparseAdam, torch.optim.SparseAdam):
        p = torch.linspace(-1, 1, 8).reshape(4, 2).requires_grad_()
        opt = cls([p], lr=0.1)
        for values in ([[1.0, 2.0]], [[0.0, 0.0]], [[0.0, 0.0]]):
            p.grad = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.tensor(values), (4, 2))
            opt.step()
        results.append(opt)
    assert_same_optimizer(results[0], results[1], ulps(torch.float32))
    assert results[0].state[results[0].param_groups[0]["params"][0]]["exp_avg"][2].abs().min() > 0


def test_empty_gradient_only_advances_step():
    """A gradient with no stored entries: ``step`` advances, nothing else changes (torch's quirk)."""
    results = []
    for cls in (fastoptim.SparseAdam, torch.optim.SparseAdam):
        p = torch.ones(5, 2, requires_grad=True)
        opt = cls([p])
        p.grad = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, 2), (5, 2))
        opt.step()
        opt.step()
        results.append(opt)
    assert_same_optimizer(results[0], results[1], ulps(torch.float32))
    state = results[0].state[results[0].param_groups[0]["params"][0]]
    assert state["step"] == 2 and type(state["step"]) is int
    assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()


@pytest.mark.parametrize("special", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gradients_like_torch(special):
    results = []
    for cls in (fastoptim.SparseAdam, torch.optim.SparseAdam):
        p = torch.linspace(-1, 1, 12).reshape(6, 2).requires_grad_()
        opt = cls([p], lr=0.1)
        for step in range(4):
            values = torch.linspace(-2, 2, 6).reshape(3, 2)
            values[step % 3, step % 2] = special if step % 2 == 0 else 1e30
            p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 3, 5]]), values, (6, 2))
            opt.step()
        results.append(opt)
    assert_same_optimizer(results[0], results[1], ulps(torch.float32))
    assert not torch.isfinite(results[0].param_groups[0]["params"][0]).all()


def test_reference_rule_alone_matches_torch_functional():
    """The rule, called directly with state as torch's functional API sees it."""
    gen = torch.Generator().manual_seed(1)
    p_ours = torch.randn(7, 3, generator=gen)
    p_theirs = p_ours.clone()
    state = {"step": 0, "exp_avg": torch.zeros_like(p_ours), "exp_avg_sq": torch.zeros_like(p_ours)}
    exp_avg, exp_avg_sq = torch.zeros_like(p_ours), torch.zeros_like(p_ours)
    for step in range(1, 6):
        grad = torch.sparse_coo_tensor(
            torch.tensor([[step % 7, 2, 6, 2]]), torch.randn(4, 3, generator=gen), (7, 3)
        )
        sparse_adam_reference(p_ours, grad, state, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, maximize=step % 2 == 0)
        torch.optim._functional.sparse_adam(
            [p_theirs], [grad], [exp_avg], [exp_avg_sq], [step],
            eps=1e-6, beta1=0.8, beta2=0.99, lr=0.01, maximize=step % 2 == 0,
        )
        assert state["step"] == step
        assert_same(p_ours, p_theirs, EXACT, f"step {step} param")
        assert_same(state["exp_avg"], exp_avg, EXACT, f"step {step} exp_avg")
        assert_same(state["exp_avg_sq"], exp_avg_sq, EXACT, f"step {step} exp_avg_sq")


# ---------------------------------------------------------------- errors and protocol


def _raises_like_torch(exc_type, pattern, build, step=None):
    for cls in (fastoptim.SparseAdam, torch.optim.SparseAdam):
        with pytest.raises(exc_type, match=pattern):
            opt = build(cls)
            if step is not None:
                step(opt)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, "^Invalid learning rate: 0.0$"),
        ({"lr": -1e-3}, "^Invalid learning rate: -0.001$"),
        ({"eps": 0.0}, "^Invalid epsilon value: 0.0$"),
        ({"betas": (0.9, 1.0)}, r"^Invalid beta parameter at index 1: 1.0$"),
        ({"betas": (-0.1, 0.9)}, r"^Invalid beta parameter at index 0: -0.1$"),
        ({"lr": torch.tensor([1e-3, 1e-3])}, "^Tensor lr must be 1-element$"),
    ],
)
def test_constructor_errors_like_torch(kwargs, message):
    _raises_like_torch(ValueError, message, lambda cls: cls([torch.zeros(2, requires_grad=True)], **kwargs))


def test_sparse_and_complex_params_reported_with_positions():
    dense = torch.zeros(2, requires_grad=True)
    sparse = torch.zeros(3, layout=torch.sparse_coo)
    cplx = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    _raises_like_torch(
        ValueError,
        r"^Sparse params at indices \[\[1, 0\], \[1, 2\]\]: SparseAdam requires dense parameter tensors$",
        lambda cls: cls(
            [{"params": [dense]}, {"params": [sparse, torch.ones(1), torch.zeros(4, layout=torch.sparse_coo)]}]
        ),
    )
    _raises_like_torch(
        ValueError,
        r"^Complex params at indices \[\[0, 1\]\]: SparseAdam does not support complex parameters$",
        lambda cls: cls([dense, cplx]),
    )


def test_dense_gradient_rejected_before_anything_changes():
    """Same error as torch; unlike torch, a step that raises leaves every parameter and state untouched."""

    def build(cls):
        a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
        a.grad = torch.ones(3).to_sparse()
        b.grad = torch.ones(3)
        return cls([a, b])

    _raises_like_torch(RuntimeError, "^SparseAdam does not support dense gradients, please consider Adam instead$",
                       build, step=lambda opt: opt.step())
    opt = build(fastoptim.SparseAdam)
    with pytest.raises(RuntimeError):
        opt.step()
    assert len(opt.state) == 0
    assert (opt.param_groups[0]["params"][0] == 1).all()


def test_state_layout_and_defaults_match_torch():
    trial = sparse_trial({"lr": 0.01}, torch.float32)
    trial.run(steps=3)
    for opt in (trial.ours, trial.theirs):
        entry = next(iter(opt.state.values()))
        assert list(entry) == ["step", "exp_avg", "exp_avg_sq"]
        assert type(entry["step"]) is int
    assert trial.ours.defaults == trial.theirs.defaults
    assert list(trial.ours.defaults) == list(trial.theirs.defaults)
    assert repr(trial.ours) == repr(trial.theirs)


def test_checkpoint_without_maximize_loads():
    """A state dict from before ``maximize`` existed loads and steps as in torch (minimising)."""
    trial = sparse_trial({}, torch.float64)
    trial.run(steps=3)
    old = copy.deepcopy(trial.theirs.state_dict())
    for group in old["param_groups"]:
        del group["maximize"]
    trial.ours.load_state_dict(copy.deepcopy(old))
    trial.theirs.load_state_dict(old)
    for i in range(3, 6):
        trial.step(i)
        assert_same_optimizer(trial.ours, trial.theirs, trial.tol, f"step {i}")


@pytest.mark.parametrize("copier", [lambda o: pickle.loads(pickle.dumps(o)), copy.deepcopy], ids=["pickle", "deepcopy"])
def test_copy_continues_identically(copier):
    trial = sparse_trial({"lr": 0.05}, torch.float64)
    trial.run(steps=3)
    original = trial.ours
    copied = copier(original)
    assert_same(copied.state_dict(), original.state_dict(), EXACT, "copy")
    for opt in (original, copied):
        params = Trial.flat(opt)
        for p, g in zip(params, trial.problem.random_grads(77, params)):
            p.grad = g
        opt.step()
    assert_same(copied.state_dict(), original.state_dict(), EXACT, "after a step")
    for a, b in zip(Trial.flat(copied), Trial.flat(original)):
        assert_same(a, b, EXACT, "param")
