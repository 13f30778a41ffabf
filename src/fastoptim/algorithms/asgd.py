r"""ASGD: averaged stochastic gradient descent (Polyak & Juditsky, 1992).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    g_t &\leftarrow g_t + \lambda_{wd}\theta_{t-1} \quad\text{if } \lambda_{wd} \neq 0 \\
    \theta_t &\leftarrow \theta_{t-1}(1 - \lambda\eta_{t-1}) - \eta_{t-1} g_t \\
    a_t &\leftarrow \begin{cases} \theta_t & \mu_{t-1} = 1 \\
        a_{t-1} + \mu_{t-1}(\theta_t - a_{t-1}) & \text{otherwise} \end{cases} \\
    \eta_t &\leftarrow \gamma / (1 + \lambda\gamma t)^{\alpha} \\
    \mu_t &\leftarrow 1 / \max(1,\ t - t_0)

γ lr, λ lambd, α alpha, t₀ t0, λ_wd weight_decay.  η starts at γ and μ at 1.
State per parameter: ``step`` (t), ``eta`` (η), ``mu`` (μ), ``ax`` (a, the
running average of θ that the method returns as its estimate; the optimizer
itself keeps stepping θ).

.. warning:: As in torch.optim, ``step``, ``eta`` and ``mu`` live on the
   parameter's device whether or not ``capturable`` is set, and without
   ``capturable`` the new η and μ pass through a tensor of the default dtype
   before being copied into the state (so a float64 η is rounded to float32
   under the usual default dtype).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach

from ._elementwise import ElementwiseOptimizer
from ._rules import (
    as_scalar,
    fill_group_defaults,
    l2_decay,
    real_views,
    scalar_state,
    scalar_value,
    signed_grad,
    tensorize_scalar_state,
    zeros_like,
)
from ._validate import check_lr, check_non_negative

__all__ = ["ASGD", "asgd_reference"]


def _next_eta(lr, lambd, alpha, step):
    """η after ``step``, in torch's for-loop arithmetic (Python numbers unless a tensor is involved).

    Python float arithmetic raises where IEEE arithmetic gives ``inf`` or 0:
    ``ZeroDivisionError`` when ``(1 + λγt)^α`` is 0 (α = −inf, an underflow, or
    0 to a negative power) and ``OverflowError`` when the power overflows.
    """
    return lr / ((1 + lambd * lr * step) ** alpha)


def _next_eta_ieee(lr, lambd, alpha, step):
    """:func:`_next_eta`, with IEEE float64 results (``inf``, 0, NaN) where Python would raise.

    The same operations in the same order as the kernel (float64, no
    fast-math), so the reference and the kernel agree bit for bit.  Only
    reached where torch itself does not raise (``foreach=True``: tensor
    arithmetic): in torch's for-loop configuration :meth:`ASGD._check_params`
    has raised before anything was updated.
    """
    try:
        return _next_eta(lr, lambd, alpha, step)
    except (ZeroDivisionError, OverflowError):
        f = np.float64
        with np.errstate(all="ignore"):
            return float(f(lr) / ((f(1) + f(lambd) * f(lr) * f(step)) ** f(alpha)))


def asgd_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool = False,
    differentiable: bool = False,
) -> None:
    """One ASGD step on one parameter, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    grad, param, ax = real_views(grad, param, state["ax"])
    eta, mu, step_t = state["eta"], state["mu"], state["step"]
    step_t += 1
    grad = l2_decay(grad, param, weight_decay)

    if capturable:
        # η stays a tensor: no host read, so the step can be graph-captured.
        param.mul_(1 - lambd * eta)
        param.addcmul_(grad, eta, value=-1)
    else:
        eta_value = scalar_value(eta)
        param.mul_(1 - lambd * eta_value)
        param.add_(grad, alpha=-eta_value)

    if capturable or scalar_value(mu) != 1:
        ax.add_(param.sub(ax).mul_(mu))
    else:
        # Before averaging starts (μ = 1) the average simply tracks θ.
        ax.copy_(param)

    if capturable:
        eta.copy_(lr / ((1 + lambd * lr * step_t) ** alpha))
        mu.copy_(1 / torch.maximum(step_t - t0, torch.ones_like(step_t)))
    else:
        step = scalar_value(step_t)
        eta.copy_(torch.as_tensor(_next_eta_ieee(lr, lambd, alpha, step)))
        mu.copy_(torch.as_tensor(1 / max(1, step - t0)))


class ASGD(ElementwiseOptimizer):
    """Averaged SGD; torch.optim.ASGD's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ, the initial η (float or 1-element tensor; default 1e-2).
        lambd: decay λ of both the weights and η (default 1e-4).
        alpha: power α in η's decay (default 0.75).
        t0: the step t₀ after which averaging starts (default 1e6).
        weight_decay: L2 penalty λ_wd ≥ 0 (default 0).
        foreach, capturable: accepted for compatibility; ``capturable`` keeps
            every scalar a device tensor.
        maximize: ascend the objective.
        differentiable: let autograd flow through ``step()``.

    Example::

        >>> opt = fastoptim.ASGD(model.parameters(), lr=1e-2, t0=100)
        >>> averaged = opt.state[param]["ax"]
    """

    rule = staticmethod(asgd_reference)
    rule_options = ("lr", "lambd", "alpha", "t0", "weight_decay", "maximize", "capturable", "differentiable")
    _per_element_state = ("ax",)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        check_lr(lr)
        check_non_negative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr,
            lambd=lambd,
            alpha=alpha,
            t0=t0,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(self, foreach=None, maximize=False, differentiable=False, capturable=False)
        tensorize_scalar_state(self, ("step", "eta", "mu"), lambda group: True)

    def _check_params(self, params: list[Tensor], group: dict) -> None:
        """Also raise, before anything is updated, what torch's η update raises for these parameters.

        torch's for-loop (``foreach`` False, or None on the CPU) without
        ``capturable`` computes the next η in Python floats after updating the
        parameter, so a schedule whose ``(1 + λγt)^α`` is 0 (e.g. ``alpha=-inf``)
        raises ``ZeroDivisionError``, and one whose power overflows
        ``OverflowError``, at the step ``t`` where that happens.  The same
        expression is evaluated here for the step each update will reach; the
        parameters and their state are left as they were.  With a tensor
        hyper-parameter, ``foreach=True`` or ``capturable=True`` torch computes
        in tensors and never raises (η becomes ``inf``/NaN), and so does
        fastoptim.  With 0 ≤ α ≤ 1 and λγ ≥ 0 (the defaults) the power lies
        between 1 and its base, which Python raises on for no step, so no
        parameter's step is read.
        """
        super()._check_params(params, group)
        if group["capturable"] or torch.compiler.is_compiling():
            return
        lr, lambd, alpha = as_scalar(group["lr"]), group["lambd"], group["alpha"]
        if isinstance(lr, Tensor) or isinstance(lambd, Tensor) or isinstance(alpha, Tensor):
            return
        if alpha == 0 or lambd * lr == 0:
            return  # the power is 1 (or NaN): nothing can raise
        if 0 <= alpha <= 1 and lambd * lr >= 0:
            return  # 1 ≤ (1 + λγt)^α ≤ 1 + λγt: neither 0 nor an overflow
        for param in params:
            if self._torch_uses_foreach(param, group):
                continue
            entry = self.state.get(param)
            step = self._next_step(entry["step"]) if entry else 1.0
            _next_eta(lr, lambd, alpha, step)

    @staticmethod
    def _torch_uses_foreach(param: Tensor, group: dict) -> bool:
        """Whether torch.optim.ASGD would take its foreach path for ``param``'s group."""
        foreach = group["foreach"]
        if foreach is None:
            if group["differentiable"] or param.device.type == "cpu":
                return False  # any CPU parameter keeps the whole group on the for-loop
            params = [p for p in group["params"] if p.grad is not None]
            foreach = _default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)[1]
        return bool(foreach)

    @staticmethod
    def _next_step(step: Tensor) -> float:
        """``step + 1`` in the step tensor's dtype, as a Python float (what torch's ``_get_value`` reads)."""
        if step.dtype == torch.float64:
            return step.item() + 1.0
        if step.dtype == torch.float32:
            return float(np.float32(step.item() + 1.0))  # exact then rounded once: float32's own sum
        return (step + 1).item()

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {
            "step": scalar_state(0.0, param, True),
            "eta": scalar_state(as_scalar(group["lr"]), param, True),
            "mu": scalar_state(1.0, param, True),
            "ax": zeros_like(param),
        }
