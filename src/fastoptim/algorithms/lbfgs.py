r"""L-BFGS: limited-memory BFGS (Liu & Nocedal, 1989), as torch.optim.LBFGS runs it.

All parameters are seen as one flat vector θ (complex ones as their real and
imaginary parts).  One ``step(closure)`` runs up to ``max_iter`` iterations:

.. math::

    d_k &= \begin{cases} -g_k & k = 1 \\ -H_k g_k & k > 1 \end{cases}
        && \text{(two-loop recursion over the last } m \text{ pairs)} \\
    t_k &= \begin{cases} \min(1, 1/\lVert g_1\rVert_1)\,\gamma & k = 1 \\ \gamma & k > 1 \end{cases}
        && \text{(or a strong-Wolfe line search starting there)} \\
    \theta_{k+1} &= \theta_k + t_k d_k \\
    s_k &= t_k d_k, \quad y_k = g_{k+1} - g_k, \quad
        \text{kept when } y_k^\top s_k > 10^{-10}, \quad
        H^0 = \frac{y_k^\top s_k}{y_k^\top y_k} I

γ lr, m ``history_size``, g the flat gradient.  An iteration stops the step
early when ``max|g| ≤ tolerance_grad``, when the slope ``gᵀd > −tolerance_change``,
when ``max|t d| ≤ tolerance_change`` or ``|f_k − f_{k−1}| < tolerance_change``, or
after ``max_eval`` closure evaluations.  The iteration counter, history and last
direction survive between ``step`` calls, so the next call continues the run.

State: L-BFGS has one global state, kept (as in torch) under the *first*
parameter so that ``state_dict``/``load_state_dict`` move it: ``func_evals``,
``n_iter``, ``d`` (last direction), ``t`` (last step length), ``old_dirs`` (y),
``old_stps`` (s), ``ro`` (1/yᵀs), ``H_diag`` (H⁰'s scale), ``prev_flat_grad``,
``prev_loss`` and ``al`` (the two-loop's scratch coefficients).

.. warning:: As in torch.optim, only one parameter group is allowed, every call
   needs a closure, and ``lr`` scales the step rather than being a learning rate
   in the SGD sense (the default is 1).

.. warning:: Unlike torch.optim 2.13, a parameter whose gradient is not
   contiguous (a transposed weight) is flattened with a copy instead of raising
   ``RuntimeError: view size is not compatible``; results are otherwise identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..optimizer import Optimizer
from ._line_search import strong_wolfe
from ._rules import as_scalar
from ._validate import check_lr

__all__ = ["LBFGS", "two_loop_direction"]


def two_loop_direction(
    flat_grad: Tensor,
    old_dirs: list[Tensor],
    old_stps: list[Tensor],
    ro: list[Tensor],
    H_diag,
    al: list,
) -> Tensor:
    r"""The L-BFGS direction :math:`d = -H g` by the two-loop recursion (Nocedal & Wright, Alg. 7.4).

    With the stored pairs :math:`(s_i, y_i)` (``old_stps``, ``old_dirs``),
    :math:`\rho_i = 1/y_i^\top s_i` (``ro``) and the initial scale
    :math:`h = H^0` (``H_diag``), from the newest pair to the oldest:

    .. math::

        q &\leftarrow -g \\
        \alpha_i &= \rho_i\, s_i^\top q, \quad q \leftarrow q - \alpha_i y_i
            \qquad (i = n-1, \dots, 0) \\
        r &\leftarrow h\, q \\
        \beta_i &= \rho_i\, y_i^\top r, \quad r \leftarrow r + (\alpha_i - \beta_i) s_i
            \qquad (i = 0, \dots, n-1)

    and :math:`d = r`.  The :math:`\alpha_i` are written into ``al`` (the
    ``state["al"]`` scratch list, kept for torch's state layout).
    """
    count = len(old_dirs)
    q = flat_grad.neg()
    for i in range(count - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q.add_(old_dirs[i], alpha=-al[i])
    r = torch.mul(q, H_diag)
    for i in range(count):
        be_i = old_dirs[i].dot(r) * ro[i]
        r.add_(old_stps[i], alpha=al[i] - be_i)
    return r


def _remember_pair(
    y: Tensor, s: Tensor, old_dirs: list, old_stps: list, ro: list, H_diag, history_size: int
):
    """Store the curvature pair ``(s, y)`` if ``yᵀs > 1e-10`` (dropping the oldest at ``history_size``).

    Returns the new scale of the initial inverse Hessian, ``yᵀs / yᵀy``, or
    ``H_diag`` unchanged when the pair is rejected.
    """
    ys = y.dot(s)
    if not ys > 1e-10:
        return H_diag
    if len(old_dirs) == history_size:
        old_dirs.pop(0)
        old_stps.pop(0)
        ro.pop(0)
    old_dirs.append(y)
    old_stps.append(s)
    ro.append(1.0 / ys)
    return ys / y.dot(y)


class LBFGS(Optimizer):
    """L-BFGS with optional strong-Wolfe line search; torch.optim.LBFGS's interface.

    Args:
        params: tensors or ``(name, tensor)`` pairs; a single parameter group only.
        lr: step-length scale γ (float or 1-element tensor; default 1).
        max_iter: iterations per ``step`` call (default 20).
        max_eval: closure evaluations per ``step`` call (default ``max_iter * 5 // 4``).
        tolerance_grad: stop when ``max|g|`` is at most this (default 1e-7).
        tolerance_change: stop when the loss, the step or the slope change less (default 1e-9).
        history_size: curvature pairs kept (default 100).
        line_search_fn: ``None`` (fixed step) or ``"strong_wolfe"``.

    Example::

        >>> opt = fastoptim.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = loss_fn(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> opt.step(closure)
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        check_lr(lr)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        self._numel_cache = None

    # -------------------------------------------------- the flat view of all parameters
    # Complex parameters count as their (real, imaginary) pairs, in memory order.

    def _numel(self) -> int:
        if self._numel_cache is None:
            self._numel_cache = sum(2 * p.numel() if torch.is_complex(p) else p.numel() for p in self._params)
        return self._numel_cache

    def _gather_flat_grad(self) -> Tensor:
        """All gradients as one flat vector (zeros for a parameter without one)."""
        views = []
        for p in self._params:
            if p.grad is None:
                view = p.new(p.numel()).zero_()
            elif p.grad.is_sparse:
                view = p.grad.to_dense().view(-1)
            else:
                view = p.grad.reshape(-1)
            if torch.is_complex(view):
                view = torch.view_as_real(view).view(-1)
            views.append(view)
        return torch.cat(views, 0)

    def _add_grad(self, step_size, update: Tensor) -> None:
        """``θ ← θ + step_size · update`` for the flat ``update``."""
        offset = 0
        for p in self._params:
            if torch.is_complex(p):
                p = torch.view_as_real(p)
            numel = p.numel()
            p.add_(update[offset : offset + numel].view_as(p), alpha=step_size)
            offset += numel
        if offset != self._numel():
            raise AssertionError(f"Expected offset {offset} to equal {self._numel()}")

    def _clone_param(self) -> list[Tensor]:
        return [p.clone(memory_format=torch.contiguous_format) for p in self._params]

    def _set_param(self, params_data: list[Tensor]) -> None:
        for p, pdata in zip(self._params, params_data, strict=True):
            p.copy_(pdata)

    def _directional_evaluate(self, closure: Callable, x: list[Tensor], t, d: Tensor) -> tuple[float, Tensor]:
        """Loss and flat gradient at ``x + t d``; the parameters are put back to ``x``."""
        self._add_grad(t, d)
        loss = float(closure())
        flat_grad = self._gather_flat_grad()
        self._set_param(x)
        return loss, flat_grad

    # -------------------------------------------------- the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations.

        Args:
            closure: re-evaluates the model and returns the loss (required).
        """
        if len(self.param_groups) != 1:
            raise AssertionError(f"Expected exactly one param_group, but got {len(self.param_groups)}")
        closure = torch.enable_grad()(closure)

        group = self.param_groups[0]
        lr = as_scalar(group["lr"])
        max_iter = group["max_iter"]
        max_eval = group["max_eval"]
        tolerance_grad = group["tolerance_grad"]
        tolerance_change = group["tolerance_change"]
        line_search_fn = group["line_search_fn"]
        history_size = group["history_size"]

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1

        flat_grad = self._gather_flat_grad()
        if flat_grad.abs().max() <= tolerance_grad:
            return orig_loss  # already optimal: the saved history is left as it was

        d = state.get("d")
        t = state.get("t")
        old_dirs = state.get("old_dirs")
        old_stps = state.get("old_stps")
        ro = state.get("ro")
        H_diag = state.get("H_diag")
        prev_flat_grad = state.get("prev_flat_grad")
        prev_loss = state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1

            # ---- direction
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                H_diag = _remember_pair(
                    flat_grad.sub(prev_flat_grad), d.mul(t), old_dirs, old_stps, ro, H_diag, history_size
                )
                if "al" not in state:
                    state["al"] = [None] * history_size
                d = two_loop_direction(flat_grad, old_dirs, old_stps, ro, H_diag, state["al"])

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            # ---- step length
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break  # not a descent direction (to tolerance)

            ls_func_evals = 0
            if line_search_fn is not None:
                if line_search_fn != "strong_wolfe":
                    raise RuntimeError("only 'strong_wolfe' is supported")
                x_init = self._clone_param()

                def obj_func(x, step, direction):
                    return self._directional_evaluate(closure, x, step, direction)

                loss, flat_grad, t, ls_func_evals = strong_wolfe(
                    obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
                )
                self._add_grad(t, d)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
            else:
                self._add_grad(t, d)
                # The last iteration does not re-evaluate: in a stochastic
                # setting the next step() call evaluates anyway.
                if n_iter != max_iter:
                    loss = float(closure())
                    flat_grad = self._gather_flat_grad()
                    opt_cond = flat_grad.abs().max() <= tolerance_grad
                    ls_func_evals = 1

            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            # ---- stopping tests
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break  # the step no longer moves the parameters
            if abs(loss - prev_loss) < tolerance_change:
                break  # the loss no longer changes

        state.update(
            d=d,
            t=t,
            old_dirs=old_dirs,
            old_stps=old_stps,
            ro=ro,
            H_diag=H_diag,
            prev_flat_grad=prev_flat_grad,
            prev_loss=prev_loss,
        )
        return orig_loss
