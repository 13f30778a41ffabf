"""The CPU kernels against the reference rules they reproduce, and the dispatch that chooses them.

Every kernel is run (strict backend: a fallback would raise) side by side with
its algorithm's reference rule on the same parameters and gradients, and every
element of the parameters and the state is compared after every step, with
torch's default ``assert_close`` tolerance for the dtype (0-dim state such as
``step`` must match exactly).  The sweep covers each hyper-parameter branch,
float32 / float64 / bfloat16, empty, 0-dim, odd-sized and transposed tensors,
tensors packed several to a chunk and split across chunks, a step where one
parameter has no gradient, and NaN / inf in gradients and parameters.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import warnings

import numba
import numpy as np
import pytest
import torch

import fastoptim
from fastoptim.kernels import dispatch
from fastoptim.kernels.capabilities import TABLE, capability_of
from fastoptim.kernels.dispatch import backend_for, explain, use_backend

numba_launch = pytest.importorskip("fastoptim.kernels.cpu._launch")

T = torch.tensor

# Each hyper-parameter branch of each kernel: (algorithm, constructor kwargs).
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=T(0.1), momentum=0.5, weight_decay=T(0.01))),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True)),
    ("Adam", dict(lr=T(0.01), betas=(0.3, 0.5), fused=True)),  # lerp weight ≥ 0.5: the other lerp formula
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.5, amsgrad=True, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, weight_decay=0.1, maximize=True, initial_accumulator_value=0.5)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, alpha=0.4)),  # lerp weight ≥ 0.5
    ("RMSprop", dict(lr=T(0.01), capturable=True)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.5, weight_decay=0.1, maximize=True, capturable=True)),
    ("Adamax", dict(lr=0.1)),
    ("Adamax", dict(lr=0.1, betas=(0.3, 0.5), weight_decay=0.1, maximize=True)),
    ("NAdam", dict(lr=0.1)),
    ("NAdam", dict(lr=0.1, weight_decay=0.1, maximize=True)),
    ("NAdam", dict(lr=0.1, betas=(0.3, 0.9), weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=0.1)),
    ("RAdam", dict(lr=0.1)),  # rectified from step 7 on
    ("RAdam", dict(lr=0.1, betas=(0.3, 0.9), weight_decay=0.1, maximize=True)),  # rectified from step 8 on
    ("RAdam", dict(lr=0.1, betas=(0.6, 0.9), weight_decay=0.1, decoupled_weight_decay=True)),
    ("ASGD", dict(lr=0.1)),
    ("ASGD", dict(lr=0.1, t0=3, lambd=0.1, alpha=0.5, weight_decay=0.1, maximize=True)),  # averaging from step 4
    ("Rprop", dict(lr=0.1)),
    ("Rprop", dict(lr=0.1, etas=(0.3, 1.5), step_sizes=(1e-3, 0.05), maximize=True, capturable=True)),
]
ALGORITHMS = sorted({name for name, _ in CONFIGS})
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
STEPS = 10
#: 0-dim state computed with the reference's own float64 / float32 scalar arithmetic: must match exactly
SCALAR_STATE = {"step", "mu_product", "eta", "mu"}
GRADLESS_STEP = 3
#: elements per chunk in these tests: small, so tensors are both packed and split
TEST_GRAIN = 1000


def config_id(case):
    name, kwargs = case
    return name + "(" + ",".join(f"{k}={'T' if torch.is_tensor(v) else v}" for k, v in kwargs.items()) + ")"


def _largest(tensors):
    finite = [t[t.isfinite()].abs().max().item() for t in tensors if t.numel() and t.isfinite().any()]
    return max(finite, default=0.0)


def _close(actual, expected, dtype, where, scale=0.0):
    """assert_close with :func:`tolerance`; for bfloat16, ``atol`` is one ulp of ``scale``.

    ``scale`` is the largest magnitude the compared quantity takes across the
    run's tensors: a cancelling sum keeps the error of its operands, which are
    that large (standard-normal test data: at least 2, an ulp of 2⁻⁶).
    """
    tol = tolerance(dtype)
    if dtype == torch.bfloat16:
        tol["atol"] = max(2.0**-6, 2.0**-7 * scale)
    torch.testing.assert_close(actual, expected, **tol, equal_nan=True, msg=lambda m: f"{where}: {m}")


def tolerance(dtype):
    """torch's default assert_close tolerance (bfloat16's atol: see :func:`_close`).

    The kernel reproduces the reference's bfloat16 roundings -- every
    intermediate tensor, and the scalars that ``add`` rounds -- but torch itself
    rounds some scalars differently in its vectorised body and its scalar tail,
    and the kernel computes in float32 with fused multiply-adds: a bfloat16
    result can land one ulp of its operands away, which for a cancelling sum is
    far more than one ulp of the result.
    """
    rtol, atol = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7), torch.bfloat16: (1.6e-2, 1e-5)}[dtype]
    return dict(rtol=rtol, atol=atol)


def make_params(dtype, seed=0):
    """Odd sizes, empty, 0-dim, a transposed (dense, non-contiguous) matrix, a multi-chunk vector, many small ones."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    values = [randn(), randn(0), randn(1), randn(7), randn(33, 3), randn(7, 5).t(), randn(TEST_GRAIN * 2 + 37)]
    values += [randn(97 + i) for i in range(12)]
    values += [randn(40, 37)]  # a matrix after many vectors
    return [v.requires_grad_() for v in values]


def grads_for(params, step, seed=1000):
    gen = torch.Generator().manual_seed(seed + step)
    out = []
    for p in params:
        g = torch.empty_like(p.detach())  # laid out like the parameter, as autograd does
        g.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
        out.append(g)
    return out


def clone_kwargs(kwargs):
    return {k: (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in kwargs.items()}


def assert_state_equal(kernel_opt, reference_opt, dtype, where):
    pairs = list(zip(kernel_opt.param_groups[0]["params"], reference_opt.param_groups[0]["params"]))
    scale = {"param": _largest([b.detach() for _, b in pairs])}
    for _, b in pairs:
        for key, value in reference_opt.state.get(b, {}).items():
            if torch.is_tensor(value):
                scale[key] = max(scale.get(key, 0.0), _largest([value]))
    for i, (a, b) in enumerate(pairs):
        _close(a.detach(), b.detach(), dtype, f"{where} param {i}", scale["param"])
        sa, sb = kernel_opt.state.get(a, {}), reference_opt.state.get(b, {})
        assert sorted(sa) == sorted(sb), f"{where} param {i}: state keys {sorted(sa)} != {sorted(sb)}"
        for key in sb:
            va, vb = sa[key], sb[key]
            if torch.is_tensor(vb):
                assert va.dtype == vb.dtype and va.shape == vb.shape and va.stride() == vb.stride(), f"{where} {key}"
                if key in SCALAR_STATE:
                    torch.testing.assert_close(va, vb, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{where} {key}: {m}")
                else:
                    _close(va, vb, dtype, f"{where} param {i} {key}", scale[key])
            else:
                assert va == vb, f"{where} param {i} {key}: {va!r} != {vb!r}"


def run_side_by_side(name, kwargs, dtype, params, grads_at, steps, gradless_step=None):
    """Step a strict-kernel optimizer and a reference one on identical inputs; compare after every step."""
    kernel_params = [p.detach().clone().requires_grad_() for p in params]
    reference_params = [p.detach().clone().requires_grad_() for p in params]
    cls = getattr(fastoptim, name)
    kernel_opt = cls(kernel_params, **clone_kwargs(kwargs))
    reference_opt = cls(reference_params, **clone_kwargs(kwargs))
    for step in range(steps):
        grads = grads_at(step)
        for ps in (kernel_params, reference_params):
            for i, (p, g) in enumerate(zip(ps, grads)):
                p.grad = None if (step == gradless_step and i == 0) else g.clone(memory_format=torch.preserve_format)
        with use_backend("numba"):
            kernel_opt.step()
        with use_backend("reference"):
            reference_opt.step()
        assert_state_equal(kernel_opt, reference_opt, dtype, f"step {step}")
    return kernel_opt, reference_opt


@pytest.fixture
def small_grain(monkeypatch):
    monkeypatch.setattr(numba_launch, "GRAIN", TEST_GRAIN)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_kernel_matches_reference_rule(case, dtype, small_grain):
    name, kwargs = case
    params = make_params(dtype)
    run_side_by_side(name, kwargs, dtype, params, lambda step: grads_for(params, step), STEPS, GRADLESS_STEP)


@pytest.mark.parametrize("name", ["Adam", "NAdam", "ASGD", "RAdam"])
def test_float64_default_dtype(name, small_grain):
    """Under a float64 default dtype the 0-dim state (step, mu_product, eta, mu) is float64."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        params = make_params(torch.float32)
        kernel_opt, _ = run_side_by_side(name, {}, torch.float32, params, lambda step: grads_for(params, step), 4)
        assert next(iter(kernel_opt.state.values()))["step"].dtype == torch.float64
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_asgd_average_streamed_in_blocks_and_unaligned(dtype):
    """ASGD's average is copied with streaming stores until averaging starts (t0=3 here).

    Default grain, so segments span several of the kernel's blocks; odd sizes
    leave a tail shorter than a cache line; and one average buffer, swapped
    in after the first step, starts 1 element past a cache line (ordinary
    stores there).
    """
    from fastoptim.kernels.cpu.asgd import BLOCK

    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(n, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for n in (3 * BLOCK + 5, BLOCK, 77)]
    kernel_opt, reference_opt = run_side_by_side("ASGD", dict(lr=0.1, t0=3), dtype, params, lambda step: grads_for(params, step), 1)
    for opt in (kernel_opt, reference_opt):
        entry = opt.state[opt.param_groups[0]["params"][0]]
        unaligned = torch.zeros(entry["ax"].numel() + 1, dtype=dtype)[1:]
        entry["ax"] = unaligned.copy_(entry["ax"])
    kernel_params, reference_params = (opt.param_groups[0]["params"] for opt in (kernel_opt, reference_opt))
    for step in range(1, 6):
        for ps in (kernel_params, reference_params):
            for p, g in zip(ps, grads_for(params, step)):
                p.grad = g
        with use_backend("numba"):
            kernel_opt.step()
        with use_backend("reference"):
            reference_opt.step()
        assert_state_equal(kernel_opt, reference_opt, dtype, f"step {step}")


# Adafactor factors matrices over their last two dimensions, and raises (as torch does) on an empty
# parameter: its own parameters and hyper-parameter branches.
ADAFACTOR_CONFIGS = [
    dict(),
    dict(lr=0.1, weight_decay=0.1),
    dict(weight_decay=0.1, maximize=True),
    dict(beta2_decay=-1.0, d=1.5),
    dict(eps=(1e-3, 1e-2), lr=0.5),  # a large ε₁: the clamps of r̄ and of V̂ bite
    dict(eps=(0.0, 0.0)),
    dict(lr=T(0.05), weight_decay=0.2),  # a float32 tensor lr: ρ and α are float32 tensors in the reference
    dict(lr=T([0.5], dtype=torch.float64), maximize=True),  # 1 element, float64
]


def make_adafactor_params(dtype, seed=0, wide=False):
    """Vectors, 0-dim; matrices stored by rows and by columns (transposed), batches of them (3-D, 4-D), 1-wide ones.

    Narrow: every line of memory at most 15 elements, so chunks of TEST_GRAIN
    elements split lines, matrices and batches at odd places.  Wide: lines of
    hundreds to thousands of elements, whose chunks the kernel makes at least
    ``LINES_PER_CHUNK`` lines of the widest (3000) long; vectors filling most
    of a chunk first, so that a line, and a batch of matrices, still straddle
    chunks.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    if wide:
        from fastoptim.kernels.cpu.adafactor import LINES_PER_CHUNK

        chunk = LINES_PER_CHUNK * 3000
        values = [randn(chunk - 2000), randn(3, 2, 900), randn(chunk - 6000), randn(1, 3000), randn(5, 700).t(), randn(700, 5).t()]
    else:
        values = [randn(), randn(1), randn(7), randn(33, 3), randn(7, 5).t(), randn(TEST_GRAIN * 2 + 37), randn(400, 9)]
        values += [randn(400, 9).t(), randn(50, 7, 5), randn(4, 6, 5).transpose(-1, -2), randn(3000, 1), randn(1, 15)]
        values += [randn(2, 3, 3, 3)] + [randn(97 + i) for i in range(4)]
    return [v.requires_grad_() for v in values]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("kwargs", ADAFACTOR_CONFIGS, ids=lambda kw: config_id(("Adafactor", kw)))
def test_adafactor_kernel_matches_reference_rule(kwargs, dtype, small_grain, tensor_cut):
    params = make_adafactor_params(dtype)
    run_side_by_side("Adafactor", kwargs, dtype, params, lambda step: grads_for(params, step), STEPS, GRADLESS_STEP)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("kwargs", ADAFACTOR_CONFIGS[:3], ids=lambda kw: config_id(("Adafactor", kw)))
def test_adafactor_kernel_wide_matrices(kwargs, dtype, small_grain, tensor_cut):
    params = make_adafactor_params(dtype, wide=True)
    run_side_by_side("Adafactor", kwargs, dtype, params, lambda step: grads_for(params, step), 4)


def test_adafactor_float64_default_dtype(small_grain):
    """Under a float64 default dtype the step counter is float64."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        params = make_adafactor_params(torch.float32)
        kernel_opt, _ = run_side_by_side("Adafactor", {}, torch.float32, params, lambda step: grads_for(params, step), 3)
        assert next(iter(kernel_opt.state.values()))["step"].dtype == torch.float64
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("kwargs", ADAFACTOR_CONFIGS[:3], ids=lambda kw: config_id(("Adafactor", kw)))
def test_adafactor_nan_and_inf_propagate_like_the_reference(kwargs, small_grain, tensor_cut):
    """NaN / inf in a vector and in matrices (one transposed, one of a batch); squares that overflow float32; zeros."""
    dtype = torch.float32
    params = make_adafactor_params(dtype, seed=3)
    with torch.no_grad():
        params[2][1] = float("inf")
        params[3][0, 0] = -float("inf")
        params[6][5, 2] = float("nan")

    def grads_at(step):
        grads = grads_for(params, step)
        grads[2][0] = float("nan")
        grads[2][2] = float("inf") if step % 2 else -float("inf")
        grads[4][1, 1] = float("inf")
        grads[7][2, 7 + step] = float("nan")
        grads[8][3, 1, 2] = -float("inf")
        grads[12][0, 0, 0, 0] = 1e30  # its square overflows float32, as in torch's norm
        grads[13][step] = 1e30  # a vector's V̂ = inf: its root is 0
        # zeros: V̂ = 0 is clamped (u = 0, not 0/0), in a 0-dim, a vector, a matrix's row, a whole matrix
        for k in (0, 5, 11):
            grads[k].zero_()
        grads[6][3].zero_()
        return grads

    run_side_by_side("Adafactor", kwargs, dtype, params, grads_at, 4)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("kwargs", [dict(), dict(eps=(1e-3, 1e-2)), dict(eps=(0.0, 1e-3), maximize=True)], ids=str)
def test_adafactor_kernel_update_norm_where_it_factors_and_where_not(kwargs, dtype, small_grain, tensor_cut):
    """The clip max(1, RMS(u)/d) bites (gradients growing 4× a step: RMS(u) > d = 1), so Σu² shows in the weights.

    The kernel sums Σu² of whole lines from their factors when no root is
    capped; here every matrix also has a row and a column of zero gradient
    (an embedding's unseen tokens: their factor is 0, their root capped at
    1/ε₁, or inf when ε₁ = 0), and a row so small that, with ε₁ = 1e-3, its
    root passes the cap: Σu² must then come element by element.
    """
    params = make_adafactor_params(dtype)

    def grads_at(step):
        grads = [g * 4.0**step for g in grads_for(params, step)]
        for g in grads:
            if g.dim() >= 2 and min(g.shape[-2:]) > 2:
                g[..., 1, :] = 0
                g[..., :, 2] = 0
                g[..., 0, :] *= 1e-4 / 4.0**step
        return grads

    run_side_by_side("Adafactor", kwargs, dtype, params, grads_at, 4)


@pytest.mark.parametrize("how", ["copies", "same tensors, new storage"])
def test_adafactor_state_replaced_between_steps(how, small_grain):
    """A recalled table takes the state tensors' addresses afresh: factors and variances replaced by copies,
    or moved to new storage in place (``set_``: the same tensor objects)."""
    params = make_adafactor_params(torch.float32)
    kernel_opt, reference_opt = run_side_by_side("Adafactor", {}, torch.float32, params, lambda step: grads_for(params, step), 2)
    for opt in (kernel_opt, reference_opt):
        for entry in opt.state.values():
            for key in ("row_var", "col_var", "variance"):
                if key in entry:
                    if how == "copies":
                        entry[key] = entry[key].clone()
                    else:
                        entry[key].set_(entry[key].clone())
    kernel_params, reference_params = (opt.param_groups[0]["params"] for opt in (kernel_opt, reference_opt))
    for step in range(2, 4):
        for ps in (kernel_params, reference_params):
            for p, g in zip(ps, grads_for(params, step)):
                p.grad = g.clone(memory_format=torch.preserve_format)
        with use_backend("numba"):
            kernel_opt.step()
        with use_backend("reference"):
            reference_opt.step()
        assert_state_equal(kernel_opt, reference_opt, torch.float32, f"step {step}")


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_nan_and_inf_propagate_like_the_reference(case, small_grain):
    """fastmath flags without 'nnan'/'ninf': NaN and ±inf end up exactly where the reference puts them."""
    name, kwargs = case
    dtype = torch.float32
    params = make_params(dtype, seed=3)
    with torch.no_grad():
        params[3][1] = float("inf")
        params[4][0, 0] = -float("inf")
        params[6][5] = float("nan")

    def grads_at(step):
        grads = grads_for(params, step)
        grads[3][0] = float("nan")
        grads[3][2] = float("inf") if step % 2 else -float("inf")
        grads[4][1, 1] = float("inf")
        grads[6][7 + step] = float("nan")
        grads[7][step] = -float("inf")
        return grads

    run_side_by_side(name, kwargs, dtype, params, grads_at, 4)


def test_every_elementwise_algorithm_has_a_kernel():
    for name in ALGORITHMS:
        rule = getattr(fastoptim, name).rule
        assert capability_of(rule) is not None, name
    assert len({cap.reference for cap in TABLE}) == len(TABLE)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_dispatch_picks_the_kernel(name):
    params = make_params(torch.float32)
    for p, g in zip(params, grads_for(params, 0)):
        p.grad = g
    opt = getattr(fastoptim, name)(params)
    assert backend_for(opt) == "numba", explain(opt)
    opt.step()
    assert backend_for(opt) == "numba", explain(opt)


def test_gradient_and_version_counters():
    """The kernel never writes the gradient, and bumps the version of what it writes (as in-place ops do)."""
    p = torch.randn(10, requires_grad=True)
    p.grad = torch.randn(10)
    grad = p.grad.clone()
    opt = fastoptim.Adam([p], maximize=True, weight_decay=0.1)
    opt.step()
    version = p._version, opt.state[p]["exp_avg"]._version, opt.state[p]["step"]._version
    with use_backend("numba"):
        opt.step()
    assert torch.equal(p.grad, grad)
    after = p._version, opt.state[p]["exp_avg"]._version, opt.state[p]["step"]._version
    assert all(b > a for a, b in zip(version, after))


def _stepped(opt):
    sparse = isinstance(opt, fastoptim.SparseAdam)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p).to_sparse() if sparse else torch.ones_like(p)
    return opt


def _fallback_cases():
    def leaf(t):
        return t.requires_grad_()

    class MySGD(fastoptim.SGD):
        rule = staticmethod(lambda param, grad, state, **options: param.sub_(grad))

    yield "complex", lambda: fastoptim.Adam([leaf(torch.randn(3)), leaf(torch.randn(3, dtype=torch.complex64))]), "mixed"
    yield "float16", lambda: fastoptim.Adam([leaf(torch.randn(3, dtype=torch.float16))]), "reference"
    yield "strided slice", lambda: fastoptim.SGD([leaf(torch.randn(4, 8)[:, ::2])], lr=0.1), "reference"
    yield "differentiable", lambda: fastoptim.SGD([leaf(torch.randn(3))], lr=0.1, differentiable=True), "reference"
    yield "capturable Adam", lambda: fastoptim.Adam([leaf(torch.randn(3))], capturable=True), "reference"
    yield "tensor betas", lambda: fastoptim.Adam([leaf(torch.randn(3))], betas=(T(0.9), T(0.999))), "reference"
    yield "tensor lr ASGD", lambda: fastoptim.ASGD([leaf(torch.randn(3))], lr=T(0.01)), "reference"
    yield "own rule", lambda: MySGD([leaf(torch.randn(3))], lr=0.1), "reference"
    yield "no-kernel algorithm", lambda: fastoptim.Muon([leaf(torch.randn(3, 4))]), "reference"
    yield "empty Adafactor parameter", lambda: fastoptim.Adafactor([leaf(torch.randn(3)), leaf(torch.randn(4, 0))]), "mixed"
    yield "permuted Adafactor matrix", lambda: fastoptim.Adafactor([leaf(torch.randn(2, 3, 4).permute(1, 0, 2))]), "reference"
    yield "bfloat16 tensor lr Adafactor", lambda: fastoptim.Adafactor([leaf(torch.randn(3))], lr=T(0.01, dtype=torch.bfloat16)), "reference"


@pytest.mark.parametrize("label,build,expected", list(_fallback_cases()), ids=[c[0] for c in _fallback_cases()])
def test_dispatch_falls_back(label, build, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = _stepped(build())
        assert backend_for(opt) == expected, explain(opt)
        assert explain(opt)[0]["reasons"]
        if expected != "numba":
            with use_backend("numba"), pytest.raises(RuntimeError, match="FASTOPTIM_BACKEND=numba"):
                opt.step(lambda: torch.tensor(0.0))


def test_layout_mismatch_and_sparse_gradients_fall_back_per_parameter():
    a, b, c = (torch.randn(4, 5, requires_grad=True) for _ in range(3))
    a.grad = torch.randn(5, 4).t()  # gradient strided unlike its parameter
    b.grad = torch.randn(4, 5).to_sparse()
    c.grad = torch.randn(4, 5)
    opt = fastoptim.SGD([a, b, c], lr=0.1, momentum=0.9)
    plan = explain(opt)[0]
    assert (plan["backend"], plan["kernel"], plan["reference"]) == ("mixed", 1, 2), plan
    reference = copy.deepcopy(opt)
    opt.step()
    with use_backend("reference"):
        reference.step()
    for p, q in zip(opt.param_groups[0]["params"], reference.param_groups[0]["params"]):
        torch.testing.assert_close(p, q)


def test_misshapen_state_falls_back_to_the_reference_error():
    p = torch.randn(3, 4, requires_grad=True)
    p.grad = torch.ones(3, 4)
    opt = fastoptim.Adam([p])
    opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(4, 3)  # as many elements, another shape
    assert backend_for(opt) == "reference"
    with pytest.raises(RuntimeError):
        opt.step()


def test_duplicate_parameter_falls_back():
    p = torch.randn(3, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = fastoptim.SGD([p, p], lr=0.1)
    p.grad = torch.ones(3)
    assert backend_for(opt) == "reference"
    before = p.detach().clone()
    opt.step()
    torch.testing.assert_close(p.detach(), before - 0.2)


def test_backend_selection(monkeypatch):
    p = torch.randn(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = fastoptim.Adam([p])
    assert dispatch.requested_backend() == "auto"
    monkeypatch.setenv("FASTOPTIM_BACKEND", "reference")
    assert backend_for(opt) == "reference"
    with use_backend("auto"):
        assert backend_for(opt) == "numba"
    monkeypatch.setenv("FASTOPTIM_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTOPTIM_BACKEND"):
        opt.step()
    with pytest.raises(ValueError):
        with use_backend("fast"):
            pass


def _traced_step(lib, name):
    """``make_fx`` (real tracing) of one step of ``name`` over two parameters; the graph module."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 2, generator=gen).requires_grad_(), torch.randn(2, generator=gen).requires_grad_()]
    opt = getattr(lib, name)(params)
    grads = [torch.randn(p.shape, generator=gen) for p in params]

    def step(grads):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        return params[0] * 1

    return make_fx(step)(grads)


#: algorithms whose single-tensor update torch traces (no .item() on the step count) with the same ops
SAME_GRAPH_AS_TORCH = ["SGD", "Adam", "AdamW", "Adamax", "RAdam"]


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "Adagrad"])  # Adagrad reads step.item(), as torch's does
def test_a_dispatch_mode_sees_the_update(name):
    """Under a TorchDispatchMode (make_fx here) a kernel would write memory behind the dispatcher: the
    traced step would lack the update.  The reference rules run instead, so the trace is theirs."""
    traced = _traced_step(fastoptim, name)
    with use_backend("reference"):
        reference = _traced_step(fastoptim, name)
    assert traced.code == reference.code
    assert sum(node.op == "call_function" for node in traced.graph.nodes) > 3
    if name in SAME_GRAPH_AS_TORCH:
        assert traced.code == _traced_step(torch.optim, name).code


def test_thread_count_follows_torch():
    p = torch.randn(600_000, requires_grad=True)
    p.grad = torch.randn(600_000)
    opt = fastoptim.SGD([p], lr=0.1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        opt.step()
        assert numba.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # numba's OpenMP pool shares libgomp with torch
        torch.set_num_threads(max(2, before))
        opt.step()
        assert numba.get_num_threads() == min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        small = torch.randn(1000, requires_grad=True)
        small.grad = torch.randn(1000)
        fastoptim.SGD([small], lr=0.1).step()
        assert numba.get_num_threads() == 1  # too little work to wake another thread
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("grain", [1, 7, 64, 100, 1000])
def test_plan_covers_every_element_once(grain):
    rng = np.random.default_rng(grain)
    numels = np.array([0, 1, 5000, 0, 3, 64, 65, 129, 10_000] + list(rng.integers(0, 300, 20)), np.int64)
    table = np.zeros((len(numels), 4), np.int64)
    table[:, numba_launch.NUMEL] = numels
    segments, starts = numba_launch.plan(table, grain)
    covered = [[] for _ in numels]
    for c in range(len(starts) - 1):
        chunk = segments[starts[c] : starts[c + 1]]
        assert len(chunk) > 0
        assert chunk[:, 2].sum() <= max(grain, 64) + 64
        for t, lo, n in chunk:
            assert n > 0
            covered[t].append((lo, n))
    for t, n in enumerate(numels):
        spans = sorted(covered[t])
        assert sum(k for _, k in spans) == n
        position = 0
        for lo, k in spans:
            assert lo == position
            position += k


def test_plan_rows_names_the_tensors_by_their_rows_in_the_table():
    table = np.zeros((5, 4), np.int64)
    table[:, numba_launch.NUMEL] = [300, 7, 0, 130, 64]
    rows = np.array([3, 1, 4], np.int64)
    segments, starts = numba_launch.plan_rows(table, rows, 64)
    assert sorted(set(segments[:, 0])) == [1, 3, 4]
    for t in (1, 3, 4):
        assert segments[segments[:, 0] == t, 2].sum() == table[t, numba_launch.NUMEL]
    assert starts[-1] == len(segments)


@numba.njit
def _chunks_from_the_end(starts):
    return [numba_launch.from_the_end(starts, c) for c in range(starts.shape[0] - 1)]


def test_from_the_end_visits_every_chunk_once_last_first():
    table = np.zeros((3, 4), np.int64)
    table[:, numba_launch.NUMEL] = [1000, 70, 640]
    segments, starts = numba_launch.plan(table, 128)
    order = _chunks_from_the_end(starts)
    assert len(starts) > 4
    assert order == list(range(len(starts) - 2, -1, -1))


@numba.njit(parallel=True)
def _take_every_task(costs, times_taken, taken_by):
    tasks = numba_launch.task_counter()
    for _ in numba.prange(numba_launch.thread_count()):
        j = numba_launch.next_task(tasks)
        while j < costs.shape[0]:
            busy = 0.0
            for k in range(costs[j]):
                busy += np.sqrt(k + 1.0)
            times_taken[j] += 1 if busy >= 0.0 else 2
            taken_by[j] = numba.get_thread_id()
            j = numba_launch.next_task(tasks)


def test_tasks_are_taken_once_each_by_whichever_thread_is_free():
    """next_task hands out every task once; long tasks first go to both threads (a static split gives them all to one)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two threads")
    costs = np.array([3_000_000] * 8 + [10] * 5000, np.int64)
    times_taken = np.zeros(len(costs), np.int64)
    taken_by = np.full(len(costs), -1, np.int64)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        _take_every_task(costs, times_taken, taken_by)
    finally:
        numba.set_num_threads(before)
    assert (times_taken == 1).all()
    assert len(set(taken_by[:8])) == 2


def test_bfloat16_rounding_matches_torch():
    values = np.concatenate(
        [
            np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 1e3,
            np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 3.3895314e38, 1.00390625, 1.01171875], np.float32),
        ]
    )
    ours = np.array([numba_launch._bf16_bits(np.float32(v)) for v in values], np.uint16)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    assert np.all(np.isnan(torch.from_numpy(ours.view(np.int16)).view(torch.bfloat16).float().numpy()[nan]))


_CACHE_PROBE = textwrap.dedent(
    """
    import torch, fastoptim
    from fastoptim.kernels.cpu import sgd
    p = torch.randn(5, requires_grad=True); p.grad = torch.ones(5)
    fastoptim.SGD([p], lr=0.5).step()
    assert torch.allclose(p.grad, torch.ones(5))
    stats = sgd._sgd_kernel.stats
    print("hits", sum(stats.cache_hits.values()), "misses", sum(stats.cache_misses.values()))
    """
)


@pytest.mark.slow
def test_cache_shared_by_concurrent_processes(tmp_path):
    """Processes starting together on an empty cache compile one at a time; later ones load from disk."""
    env = dict(os.environ, FASTOPTIM_CACHE_DIR=str(tmp_path))
    env.pop("FASTOPTIM_BACKEND", None)
    runs = [subprocess.Popen([sys.executable, "-c", _CACHE_PROBE], env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [r.communicate(timeout=600)[0] for r in runs]
    assert all(r.returncode == 0 for r in runs), outputs
    misses = sorted(int(out.split()[3]) for out in outputs)
    assert misses[:2] == [0, 0], outputs  # the lock made all but (at most) the first load the cached kernel
    again = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert again.stdout.split() == ["hits", "1", "misses", "0"], again
    (entry,) = os.listdir(tmp_path)
    from fastoptim.kernels.cpu import _cache

    assert entry.endswith(_cache.SOURCE_HASH[:16])


_VECTOR_WIDTH_PROBE = textwrap.dedent(
    """
    import re, torch, fastoptim
    from fastoptim.kernels.cpu import _cache, _launch, sgd
    p = torch.randn(4096, requires_grad=True); p.grad = torch.ones(4096)
    opt = fastoptim.SGD([p], lr=0.5)
    opt.step()  # the kernel as it is: its prange body calls vector_width_hint()
    compiled = {"256": sgd._sgd_kernel}
    for bits in (128, 0):  # the same kernel compiled with a 128-bit hint, and with none (0: LLVM's choice)
        _cache.VECTOR_BITS = bits
        sgd._sgd_kernel = compiled[str(bits)] = _launch.kernel(compiled["256"].py_func)
        opt.step()
    def loop_registers(dispatcher):
        asm = "\\n".join(dispatcher.inspect_asm().values())
        start = re.search(r"^_ZN\\S*__numba_parfor_gufunc\\S*:$", asm, re.M).end()  # the loop function (not its wrapper)
        body = asm[start : asm.index(".Lfunc_end", start)]
        return sorted(set(re.findall(r"%([xyz]mm)[0-9]", body)))
    print(" | ".join(" ".join(loop_registers(compiled[k])) for k in ("256", "128", "0")))
    """
)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


@pytest.mark.skipif(" avx2" not in _cpu_flags(), reason="LLVM's own loops are no wider than 128 bits without AVX2")
def test_vector_width_hint_narrows_the_loops():
    """vector_width_hint() caps the width of SGD's parallel loop: 256 bits by default, 128 when asked.

    Compiled in a child process with the on-disk cache off, so that the same
    kernel can be compiled three times: with the default hint, with a
    128-bit one, and with none.  LLVM alone uses 256-bit (or, on AVX-512 CPUs
    it tunes for 512, such as Zen 4) registers, so the 128-bit build shows the
    hint at work on any AVX2 machine; the default build must never use 512-bit
    ones.
    """
    env = dict(os.environ, FASTOPTIM_CACHE_DIR="/proc/nope", FASTOPTIM_COMPILE_IN_PROCESS="1")
    env.pop("FASTOPTIM_VECTOR_BITS", None)
    run = subprocess.run([sys.executable, "-c", _VECTOR_WIDTH_PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    default, narrow, plain = (set(side.split()) for side in run.stdout.strip().split("|"))
    assert plain & {"ymm", "zmm"}, run.stdout  # LLVM alone vectorizes wider than 128 bits here
    assert "ymm" in default and "zmm" not in default, run.stdout
    assert narrow == {"xmm"}, run.stdout


def test_vector_bits_setting_is_checked():
    """FASTOPTIM_VECTOR_BITS: unset gives 256, a whole number is taken, anything else is a clear error."""
    from fastoptim.kernels.cpu import _cache

    assert _cache._vector_bits(None) == 256
    assert _cache._vector_bits("0") == 0
    assert _cache._vector_bits("512") == 512
    for bad in ("wide", "-1", "2.5", ""):
        with pytest.raises(ValueError, match="FASTOPTIM_VECTOR_BITS"):
            _cache._vector_bits(bad)
