"""The SparseAdam CPU kernel against its reference rule, and the cases that fall back.

Each run steps two copies of the same optimizer side by side, one with the
strict kernel backend (a fallback would raise) and one with the reference
rule, on the same sparse gradients (sparse in dim 0, like
``nn.Embedding(sparse=True)``), and compares every parameter and state
tensor after every step with torch's default ``assert_close`` tolerance for
the dtype (``step`` exactly).  The moments are bit-identical by construction;
the parameters can differ by about an ulp because torch's CPU ``sqrt`` (MKL)
is not always correctly rounded and the kernel's is.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import fastoptim
from fastoptim.kernels.dispatch import explain, use_backend

pytest.importorskip("fastoptim.kernels.cpu.sparse_adam")

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
SHAPES = [(37,), (300, 17), (40, 3, 5), (1, 8), (5, 0)]


def tolerance(dtype):
    """torch's default assert_close tolerance (bfloat16: one ulp of the O(1) test data as atol)."""
    rtol, atol = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7), torch.bfloat16: (1.6e-2, 2.0**-6)}[dtype]
    return dict(rtol=rtol, atol=atol)


def _close(actual, expected, dtype, where):
    torch.testing.assert_close(actual, expected, **tolerance(dtype), equal_nan=True, msg=lambda m: f"{where}: {m}")


def sparse_grad(shape, dtype, gen, *, nnz=None, duplicates=False, coalesced=None):
    """A COO gradient sparse in dim 0: random rows (repeated ones when ``duplicates``), dense values."""
    rows = shape[0]
    if nnz is None:
        nnz = max(1, rows // 3)
    if duplicates:
        index = torch.randint(0, max(rows, 1), (nnz,), generator=gen)
    else:
        index = torch.randperm(rows, generator=gen)[:nnz]
    values = torch.randn((index.numel(), *shape[1:]), generator=gen, dtype=torch.float64).to(dtype)
    grad = torch.sparse_coo_tensor(index.unsqueeze(0), values, shape, check_invariants=True)
    if coalesced:
        grad = grad.coalesce()
    return grad


def run_side_by_side(param_groups, kwargs, grads_at, steps=10):
    """Step kernel and reference copies; compare params and state after every step."""
    fast = fastoptim.SparseAdam(param_groups, **kwargs)
    ref = copy.deepcopy(fast)
    fast_params = [p for g in fast.param_groups for p in g["params"]]
    ref_params = [p for g in ref.param_groups for p in g["params"]]
    for step in range(steps):
        grads = grads_at(step)
        for p, q, g in zip(fast_params, ref_params, grads):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        with use_backend("numba"):
            fast.step()
        with use_backend("reference"):
            ref.step()
        for i, (p, q) in enumerate(zip(fast_params, ref_params)):
            where = f"step {step} param {i}"
            _close(p.detach(), q.detach(), p.dtype, where)
            if q in ref.state:
                a, b = fast.state[p], ref.state[q]
                assert a["step"] == b["step"] and type(a["step"]) is int, where
                for key in ("exp_avg", "exp_avg_sq"):
                    _close(a[key], b[key], p.dtype, f"{where} {key}")
    return fast, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kwargs", [{}, {"lr": 0.05, "betas": (0.5, 0.9), "eps": 1e-3}, {"maximize": True, "lr": 0.02}, {"betas": (0.0, 0.0)}], ids=str)
def test_kernel_matches_reference(kwargs, dtype):
    """Several shapes (1-D, embedding-like, 3-D, one row, empty rows), uncoalesced with repeats, 10 steps."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]

    def grads_at(step):
        out = []
        for i, p in enumerate(params):
            if step == 3 and i == 0:
                out.append(None)  # a step without a gradient
            elif step == 5 and i == 1:
                out.append(sparse_grad(p.shape, dtype, gen, nnz=0))  # empty: only step advances
            else:
                out.append(sparse_grad(p.shape, dtype, gen, duplicates=step % 2 == 0, coalesced=step % 3 == 1))
        return out

    fast, ref = run_side_by_side(params, kwargs, grads_at)
    assert explain(fast)[0]["backend"] == "numba", explain(fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_big_rows_split_across_chunks_and_threads(dtype):
    """Rows longer than a chunk, and more touched elements than one thread gets."""
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(600, 1000, generator=gen, dtype=dtype).requires_grad_(), torch.randn(70001, generator=gen, dtype=dtype).requires_grad_()]
    run_side_by_side(params, {"lr": 0.01}, lambda step: [sparse_grad(p.shape, dtype, gen, duplicates=True) for p in params], steps=3)


def test_duplicate_indices_summed_like_the_reference():
    """An uncoalesced gradient naming one row three times: one update with the summed value."""
    p = torch.zeros(4, 2, dtype=torch.float64, requires_grad=True)
    grad = torch.sparse_coo_tensor(torch.tensor([[1, 1, 3, 1]]), torch.ones(4, 2, dtype=torch.float64), (4, 2))
    fast, ref = run_side_by_side([p], {"lr": 0.1}, lambda step: [grad], steps=2)
    # row 1's gradient is 3 on both steps: m = 0.3, then 0.3 + 0.1 (3 − 0.3) = 0.57
    assert fast.state[fast.param_groups[0]["params"][0]]["exp_avg"][1, 0].item() == pytest.approx(0.57, rel=1e-12)
    moved = (fast.param_groups[0]["params"][0] != 0).any(dim=1).tolist()
    assert moved == [False, True, False, True]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_param_groups_with_their_own_hyperparameters(dtype):
    gen = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(50, 6, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(3))
    groups = [
        {"params": [a], "lr": 0.1, "betas": (0.8, 0.99), "eps": 1e-6},
        {"params": [b, c], "lr": 0.003, "betas": (0.95, 0.9), "eps": 1e-2, "maximize": True},
    ]
    fast, _ = run_side_by_side(groups, {}, lambda step: [sparse_grad(p.shape, dtype, gen, duplicates=True) for p in (a, b, c)])
    assert [e["backend"] for e in explain(fast)] == ["numba", "numba"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_and_inf_propagate_like_the_reference(dtype):
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(20, 4, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(), torch.randn(9, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()]

    def grads_at(step):
        out = []
        for p in params:
            g = sparse_grad(p.shape, dtype, gen, coalesced=True)
            values = g._values()
            values.view(-1)[step % values.numel()] = (float("nan"), float("inf"), -float("inf"), 1e30)[step % 4]
            out.append(g)
        return out

    fast, ref = run_side_by_side(params, {"lr": 0.1}, grads_at, steps=8)
    p = fast.param_groups[0]["params"][0]
    assert not torch.isfinite(p).all()


def test_empty_gradient_only_advances_step():
    p = torch.ones(5, 2, requires_grad=True)
    opt = fastoptim.SparseAdam([p])
    p.grad = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, 2), (5, 2))
    version = p._version
    with use_backend("numba"):
        opt.step()
        opt.step()
    assert opt.state[p]["step"] == 2 and type(opt.state[p]["step"]) is int
    assert p._version == version and torch.equal(p, torch.ones(5, 2))
    assert not opt.state[p]["exp_avg"].any()


def test_gradient_is_not_written_and_versions_bump():
    p = torch.randn(6, 3, requires_grad=True)
    grad = torch.sparse_coo_tensor(torch.tensor([[4, 1]]), torch.randn(2, 3), (6, 3)).coalesce()
    p.grad = grad
    before = grad.clone()
    opt = fastoptim.SparseAdam([p])
    with use_backend("numba"):
        opt.step()
    version = p._version, opt.state[p]["exp_avg"]._version
    with use_backend("numba"):
        opt.step()
    assert torch.equal(p.grad.to_dense(), before.to_dense())
    assert p._version > version[0] and opt.state[p]["exp_avg"]._version > version[1]


def test_out_of_range_index_raises_like_the_reference():
    """An index beyond the parameter (no invariant check): nothing written by the kernel, torch's IndexError."""
    p = torch.zeros(5, 3, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 7]]), torch.ones(2, 3), (5, 3), check_invariants=False)
    opt = fastoptim.SparseAdam([p])
    with pytest.raises(IndexError):
        opt.step()
    q = torch.zeros(5, 3, requires_grad=True)
    q.grad = p.grad
    theirs = torch.optim.SparseAdam([q])
    with pytest.raises(IndexError):
        theirs.step()
    assert opt.state[p]["step"] == theirs.state[q]["step"]
    torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_uncovered_cases_fall_back_with_a_reason():
    gen = torch.Generator().manual_seed(4)
    covered = torch.randn(8, 3, requires_grad=True)
    fully_sparse = torch.randn(8, 3, requires_grad=True)  # to_sparse(): sparse_dim=2
    transposed = torch.randn(3, 8).t().requires_grad_()
    covered.grad = sparse_grad((8, 3), torch.float32, gen)
    fully_sparse.grad = torch.randn(8, 3).to_sparse()
    transposed.grad = sparse_grad((8, 3), torch.float32, gen)
    opt = fastoptim.SparseAdam([covered, fully_sparse, transposed])
    plan = explain(opt)[0]
    assert (plan["backend"], plan["kernel"], plan["reference"]) == ("mixed", 1, 2), plan
    assert any("sparse_dim=2" in r for r in plan["reasons"]) and any("contiguous" in r for r in plan["reasons"])
    ref = copy.deepcopy(opt)
    opt.step()
    with use_backend("reference"):
        ref.step()
    for p, q in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"]):
        torch.testing.assert_close(p, q)
    with use_backend("numba"), pytest.raises(RuntimeError, match="FASTOPTIM_BACKEND=numba"):
        opt.step()
    tensor_lr = fastoptim.SparseAdam([covered], lr=torch.tensor(0.01))
    assert explain(tensor_lr)[0]["backend"] == "reference"


def test_explain_before_the_first_step_reports_numba():
    p = torch.randn(10, 4, requires_grad=True)
    opt = fastoptim.SparseAdam([p])
    assert explain(opt)[0]["backend"] == "numba"
    p.grad = sparse_grad((10, 4), torch.float32, torch.Generator().manual_seed(5), duplicates=True)
    assert explain(opt)[0]["backend"] == "numba"


def _step_both(fast, ref, grads):
    for opt in (fast, ref):
        for p, g in zip(opt.param_groups[0]["params"], grads):
            p.grad = g.clone()
    with use_backend("numba"):
        fast.step()
    with use_backend("reference"):
        ref.step()
    for i, (p, q) in enumerate(zip(fast.param_groups[0]["params"], ref.param_groups[0]["params"])):
        _close(p.detach(), q.detach(), p.dtype, f"param {i}")
        a, b = fast.state[p], ref.state[q]
        assert a["step"] == b["step"], i
        for key in ("exp_avg", "exp_avg_sq"):
            _close(a[key], b[key], p.dtype, f"param {i} {key}")


def test_kept_table_follows_what_changes_between_steps():
    """The table is kept from step to step (SparseReuse): new rows, row counts and steps are written
    into it; replaced state, an empty gradient or an out-of-range index are still seen."""
    from fastoptim.kernels.cpu.sparse_adam import SparseReuse

    gen = torch.Generator().manual_seed(6)
    shapes = [(30, 4), (17,), (12, 2, 3)]
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    fast = fastoptim.SparseAdam(params, lr=0.05)
    ref = copy.deepcopy(fast)
    recalled = []
    original = SparseReuse.recall

    def counting(self, *args):
        out = original(self, *args)
        recalled.append(out is not None)
        return out

    def grads(**kw):
        return [sparse_grad(s, torch.float32, gen, **kw) for s in shapes]

    SparseReuse.recall = counting
    try:
        for step in range(4):  # rows and row counts change every step
            _step_both(fast, ref, grads(nnz=3 + step, duplicates=step % 2 == 1))
        assert recalled == [False, True, True, True]
        # the moments replaced (a checkpoint loaded into both)
        saved = copy.deepcopy(ref.state_dict())
        fast.load_state_dict(copy.deepcopy(saved))
        ref.load_state_dict(copy.deepcopy(saved))
        _step_both(fast, ref, grads())
        assert recalled[-1] is False
        _step_both(fast, ref, grads())
        assert recalled[-1] is True
        # one empty gradient: only its step advances
        empty = grads()
        empty[1] = sparse_grad(shapes[1], torch.float32, gen, nnz=0)
        _step_both(fast, ref, empty)
        _step_both(fast, ref, grads())
        # the step counter edited in place of an int
        for opt in (fast, ref):
            opt.state[opt.param_groups[0]["params"][0]]["step"] = 100
        _step_both(fast, ref, grads())
        assert recalled[-1] is True
        # state entries replaced by copies holding the same tensors: the steps land in the new ones
        for opt in (fast, ref):
            for p in opt.param_groups[0]["params"]:
                opt.state[p] = dict(opt.state[p])
        _step_both(fast, ref, grads())
        assert recalled[-1] is True
    finally:
        SparseReuse.recall = original


def test_kept_table_checks_every_index_of_a_new_gradient():
    """A gradient with more rows than the last one, the out-of-range index last: torch's IndexError,
    nothing written by the kernel (a stale row count in the kept table would check too few indices)."""
    params = [torch.zeros(30, 4, requires_grad=True), torch.zeros(12, 2, 3, requires_grad=True)]
    fast = fastoptim.SparseAdam(params)
    ref = copy.deepcopy(fast)
    rows = torch.tensor([[0, 1]])
    for _ in range(2):
        _step_both(fast, ref, [torch.sparse_coo_tensor(rows, torch.ones(2, *p.shape[1:]), p.shape) for p in params])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = [
            torch.sparse_coo_tensor(torch.tensor([[0, 1, 5]]), torch.ones(3, 4), (30, 4)),
            torch.sparse_coo_tensor(torch.tensor([[0, 1, 2, 3, 40]]), torch.ones(5, 2, 3), (12, 2, 3), check_invariants=False),
        ]
    for opt in (fast, ref):
        for p, g in zip(opt.param_groups[0]["params"], bad):
            p.grad = g
    with use_backend("numba"), pytest.raises(IndexError):
        fast.step()
    with use_backend("reference"), pytest.raises(IndexError):
        ref.step()
    for p, q in zip(fast.param_groups[0]["params"], ref.param_groups[0]["params"]):
        _close(p.detach(), q.detach(), p.dtype, "after IndexError")
        assert fast.state[p]["step"] == ref.state[q]["step"]


def test_kept_table_refuses_a_dense_gradient_before_updating():
    p = torch.randn(6, 2, requires_grad=True)
    opt = fastoptim.SparseAdam([p])
    p.grad = sparse_grad((6, 2), torch.float32, torch.Generator().manual_seed(7))
    opt.step()
    before = p.detach().clone(), copy.deepcopy(opt.state[p])
    p.grad = torch.randn(6, 2)
    with pytest.raises(RuntimeError, match="does not support dense gradients"):
        opt.step()
    assert torch.equal(p.detach(), before[0]) and opt.state[p]["step"] == before[1]["step"]
