r"""Strong-Wolfe line search with cubic interpolation (used by L-BFGS).

Given a point :math:`x`, a descent direction :math:`d` and the objective along
it, :math:`\phi(t) = f(x + t d)` with slope :math:`\phi'(t) = \nabla f(x + t d)^\top d`,
find a step :math:`t` satisfying the *strong Wolfe conditions*

.. math::

    \phi(t) &\le \phi(0) + c_1 t \phi'(0)        && \text{(sufficient decrease, Armijo)} \\
    |\phi'(t)| &\le -c_2 \phi'(0)                 && \text{(curvature)}

with :math:`0 < c_1 < c_2 < 1` (defaults 1e-4 and 0.9).  This is Algorithm 3.5
of Nocedal & Wright, *Numerical Optimization* (2006), as implemented by
minFunc / torch7's ``lswolfe.lua`` and torch.optim.LBFGS:

1. **Bracketing.**  Starting from :math:`t_0 = 0` and the caller's first
   trial step, walk outwards until an interval :math:`[t_{k-1}, t_k]` is known
   to contain an acceptable step: when the Armijo condition fails (or the
   value stopped decreasing), or when the slope turns non-negative.  If the
   trial point already satisfies both conditions it is returned at once.
   Otherwise the next trial is the cubic interpolant's minimiser, kept within
   :math:`[t_k + 0.01 (t_k - t_{k-1}),\ 10 t_k]` (extrapolation).
2. **Zoom.**  Shrink the bracket: try the cubic minimiser of the bracket ends;
   if it lands within 10 % of the bracket's width from an end twice in a row
   (or outside), move it to 10 % from the nearer end ("insufficient
   progress" safeguard).  A trial that fails Armijo or is no lower than the
   lowest end replaces the high end; otherwise it becomes the low end (the old
   low end replacing the high one when the slope says the minimum lies on the
   other side).  Stop when the Wolfe conditions hold or the bracket is
   shorter than ``tolerance_change`` in the max-norm of :math:`t d`.

The search gives up after ``max_ls`` evaluations and returns the lowest point
of the bracket.

**Cubic interpolation.**  Through two points :math:`(x_1, f_1, g_1)` and
:math:`(x_2, f_2, g_2)` (values and slopes), the cubic's minimiser is

.. math::

    d_1 &= g_1 + g_2 - 3\,\frac{f_1 - f_2}{x_1 - x_2}, \qquad
    d_2 = \sqrt{d_1^2 - g_1 g_2} \\
    x^* &= x_2 - (x_2 - x_1)\,\frac{g_2 + d_2 - d_1}{g_2 - g_1 + 2 d_2}
        \quad (x_1 \le x_2;\ \text{mirrored otherwise})

clamped to the bounds; when :math:`d_1^2 - g_1 g_2 < 0` the cubic has no
minimiser and the midpoint of the bounds is used.

Values may be Python numbers or 0-dim tensors (slopes are tensors); the
arithmetic and comparisons are the same as torch.optim's, in the same order,
so the accepted step is bit-identical, down to its Python type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["cubic_interpolate", "strong_wolfe"]

# obj_func(x, t, d) -> (f(x + t d) as a float, flat gradient there)
Objective = Callable[[Any, Any, Tensor], tuple[float, Tensor]]


def cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimiser of the cubic through ``(x1, f1, g1)`` and ``(x2, f2, g2)``, clamped to ``bounds``.

    ``bounds`` defaults to the interval between ``x1`` and ``x2``.  See the
    module docstring for the formula.
    """
    if bounds is None:
        bounds = (x1, x2) if x1 <= x2 else (x2, x1)
    low, high = bounds
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if not d2_square >= 0:
        return (low + high) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        minimiser = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        minimiser = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(minimiser, low), high)


@dataclass
class _Trial:
    """One evaluated point of the line: step ``t``, value ``f``, flat gradient ``g``, slope ``gtd``."""

    t: Any
    f: Any
    g: Tensor
    gtd: Any = None


def _bracket(evaluate, start: _Trial, first: _Trial, *, c1, c2, max_ls):
    """Phase 1: from ``start`` (t = 0) and the first trial, find an interval holding a Wolfe point.

    Returns ``(bracket, done, evaluations, iterations)``: ``bracket`` is a
    list of one accepted point (``done``) or of two points.
    """
    f0, gtd0 = start.f, start.gtd
    prev, new = start, first
    evaluations, iterations = 1, 0
    while iterations < max_ls:
        if new.f > (f0 + c1 * new.t * gtd0) or (iterations > 1 and new.f >= prev.f):
            return [prev, new], False, evaluations, iterations
        if abs(new.gtd) <= -c2 * gtd0:
            return [new], True, evaluations, iterations
        if new.gtd >= 0:
            return [prev, new], False, evaluations, iterations
        # Extrapolate: the cubic minimiser, at least 1 % beyond t and at most 10 t.
        t = cubic_interpolate(
            prev.t, prev.f, prev.gtd, new.t, new.f, new.gtd, bounds=(new.t + 0.01 * (new.t - prev.t), new.t * 10)
        )
        prev, new = new, evaluate(t)
        evaluations += 1
        iterations += 1
    # Out of evaluations: the bracket is [0, t] (the slopes are not needed any more).
    if iterations == max_ls:
        return [_Trial(0, f0, start.g), _Trial(new.t, new.f, new.g)], False, evaluations, iterations
    raise ValueError(f"the line search needs at least one function evaluation, but max_ls={max_ls}")


def _low_high(bracket):
    """Indices of the bracket's lower and higher end (ties favour the first)."""
    return (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)


def strong_wolfe(
    obj_func: Objective,
    x,
    t,
    d: Tensor,
    f,
    g: Tensor,
    gtd,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
):
    """Search along ``d`` from ``x`` for a step satisfying the strong Wolfe conditions.

    Args:
        obj_func: ``obj_func(x, t, d)`` returns the loss (a float) and the flat
            gradient at ``x + t d``, leaving the parameters at ``x``.
        x: the starting point, passed through to ``obj_func``.
        t: the first trial step.
        d: the search direction (flat).
        f, g, gtd: loss, flat gradient and slope ``gᵀd`` at ``x``.
        c1, c2: the Armijo and curvature constants.
        tolerance_change: stop zooming when ``|t_hi − t_lo|·max|d|`` falls below it.
        max_ls: the most function evaluations allowed.

    Returns:
        ``(f_new, g_new, t, evaluations)`` at the accepted step.
    """
    d_norm = d.abs().max()

    def evaluate(step):
        f_step, g_step = obj_func(x, step, d)
        return _Trial(step, f_step, g_step, g_step.dot(d))

    # obj_func returns a fresh gradient each time and nothing here writes into
    # one, so points can share tensors without the defensive copies.
    start = _Trial(0, f, g, gtd)
    bracket, done, evaluations, iterations = _bracket(evaluate, start, evaluate(t), c1=c1, c2=c2, max_ls=max_ls)

    # Phase 2: zoom in on the bracket.
    insufficient_progress = False
    low, high = _low_high(bracket)
    while not done and iterations < max_ls:
        if abs(bracket[1].t - bracket[0].t) * d_norm < tolerance_change:
            break
        a, b = bracket
        t = cubic_interpolate(a.t, a.f, a.gtd, b.t, b.f, b.gtd)

        # Safeguard: a trial hugging an end of the bracket is moved 10 % inside.
        upper, lower = max(a.t, b.t), min(a.t, b.t)
        margin = 0.1 * (upper - lower)
        if min(upper - t, t - lower) < margin:
            if insufficient_progress or t >= upper or t <= lower:
                t = upper - margin if abs(t - upper) < abs(t - lower) else lower + margin
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False

        new = evaluate(t)
        evaluations += 1
        iterations += 1

        if new.f > (f + c1 * t * gtd) or new.f >= bracket[low].f:
            # Not a sufficient decrease, or no better than the low end: new high end.
            bracket[high] = new
            low, high = _low_high(bracket)
        else:
            if abs(new.gtd) <= -c2 * gtd:
                done = True
            elif new.gtd * (bracket[high].t - bracket[low].t) >= 0:
                # The minimum lies on the other side of the new point: the low end becomes the high end.
                bracket[high] = bracket[low]
            bracket[low] = new

    best = bracket[low]
    return best.f, best.g, best.t, evaluations
