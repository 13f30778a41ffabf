"""Adafactor's update norm without a pass of its own (:mod:`fastoptim.kernels.cpu.adafactor`).

Pass 1 adds, per position, Σ g²/R over the whole lines it has summed; pass 2
turns that into Σu² = r̄ · Σ (Σ g²/R) / C when no element's root reaches the
cap 1/ε₁, or answers −1 and leaves Σu² to a pass over the elements.  These
tests call that decision directly: the fast answer is the element-by-element
Σu² to rounding where it is given, including the capped lines and positions
of zero gradient an embedding has, and it is refused where it would not be
u's.  Whole optimizer runs (tests/test_kernels.py) hold the kernel to the
reference rule either way.
"""

from __future__ import annotations

import numpy as np
import pytest

kernels = pytest.importorskip("fastoptim.kernels.cpu.adafactor")

DTYPES = [np.float32, np.float64]


def _problem(dtype, lines=6, inner=5, seed=0):
    rng = np.random.default_rng(seed)
    grad = rng.standard_normal((lines, inner)).astype(dtype)
    line_var = (rng.random(lines) + 0.5).astype(dtype)
    pos_var = (rng.random(inner) + 0.5).astype(dtype)
    return grad, line_var, pos_var


def _decide(grad, line_var, pos_var, row_mean, eps1):
    """What pass 2 answers, from the sums pass 1 would have left; and Σu² element by element (the reference's u)."""
    dtype = grad.dtype.type
    witness = np.empty(0, grad.dtype)
    with np.errstate(all="ignore"):  # zero factors: roots of inf, and inf·0
        cap = dtype(np.inf) if eps1 == 0 else dtype(1) / np.sqrt(dtype(eps1 * eps1))
        line_scale = np.sqrt(np.float64(row_mean) / line_var.astype(np.float64)).astype(grad.dtype)
        pos_scale = (1.0 / np.sqrt(pos_var.astype(np.float64))).astype(grad.dtype)
        squares = (grad * grad).astype(np.float64)
        pos_sums = squares.sum(axis=0)
        kept = line_var > 0
        weighted = (squares[kept] / line_var[kept, None].astype(np.float64)).sum(axis=0)
        # the lines of R = 0 (capped whole): pass 1 returns their share, ε₁^(−2)·Σg²
        capped_lines = squares[~kept].sum() * np.float64(cap) ** 2 if (~kept).any() else 0.0
        root = np.minimum(line_scale[:, None] * pos_scale[None, :], cap)
        direct = float(((root * grad).astype(np.float64) ** 2).sum())
    answer = kernels._factored_update_squares(
        line_var, line_scale, pos_var, pos_scale, pos_sums, weighted, dtype(row_mean), cap, witness
    )
    return answer, answer + capped_lines, direct


@pytest.mark.parametrize("dtype", DTYPES)
def test_factored_update_squares_are_the_elements(dtype):
    grad, line_var, pos_var = _problem(dtype)
    answer, total, direct = _decide(grad, line_var, pos_var, row_mean=0.9, eps1=1e-3)
    assert answer >= 0
    assert total == pytest.approx(direct, rel=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps1", [1e-3, 0.0])
def test_zero_lines_and_positions_keep_the_factored_sum(dtype, eps1):
    """An embedding's unseen rows (R = 0) and a dead input column (C = 0): capped whole, still no extra pass."""
    grad, line_var, pos_var = _problem(dtype)
    grad[2, :] = 0
    line_var[2] = 0
    grad[:, 3] = 0
    pos_var[3] = 0
    answer, total, direct = _decide(grad, line_var, pos_var, row_mean=0.9, eps1=eps1)
    if eps1 == 0:  # the cap is inf: the reference's root is inf there, and inf·0 is NaN
        assert np.isnan(direct) and np.isnan(total)
        return
    assert answer >= 0
    assert total == pytest.approx(direct, rel=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_root_past_the_cap_is_refused(dtype):
    grad, line_var, pos_var = _problem(dtype)
    line_var[1] = 1e-9  # its root ≈ 3e4 > 1/ε₁ = 1e3
    answer, _, direct = _decide(grad, line_var, pos_var, row_mean=0.9, eps1=1e-3)
    assert answer == -1.0
    # just below the cap it is taken
    line_var[1] = 2e-6
    answer, total, direct = _decide(grad, line_var, pos_var, row_mean=0.9, eps1=1e-3)
    assert answer >= 0
    assert total == pytest.approx(direct, rel=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", ["line", "position"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_factors_are_refused(dtype, where, value):
    grad, line_var, pos_var = _problem(dtype)
    (line_var if where == "line" else pos_var)[0] = value
    answer, _, _ = _decide(grad, line_var, pos_var, row_mean=0.9, eps1=1e-3)
    assert answer == -1.0


@pytest.mark.parametrize("row_mean", [0.0, np.inf, np.nan])
def test_an_unusable_row_mean_is_refused(row_mean):
    grad, line_var, pos_var = _problem(np.float32)
    answer, _, _ = _decide(grad, line_var, pos_var, row_mean=row_mean, eps1=0.0)
    assert answer == -1.0
