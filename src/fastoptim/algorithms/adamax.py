r"""Adamax: Adam with the infinity norm in place of the second moment (Kingma & Ba, 2014, §7.1).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad\text{if } \lambda \neq 0 \\
    m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    u_t &\leftarrow \max(\beta_2 u_{t-1},\ |g_t| + \epsilon) \\
    \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t} \frac{m_t}{u_t}

γ lr, β₁ β₂ ``betas``, ε eps, λ weight_decay.  State per parameter: ``step``
(t), ``exp_avg`` (m) and ``exp_inf`` (u).  A complex parameter is treated as two
real coordinates (the maximum is taken per real and imaginary part).

.. warning:: ε is added to |g| inside the maximum (the paper has no ε), so
   ``u`` never drops below ε.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import (
    as_scalar,
    bias_correction,
    ema_,
    fill_group_defaults,
    l2_decay,
    new_step,
    real_views,
    scalar_value,
    signed_grad,
    tensorize_scalar_state,
    zeros_like,
)
from ._validate import check_betas, check_lr, check_non_negative

__all__ = ["Adamax", "adamax_reference"]


def adamax_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool = False,
    differentiable: bool = False,
) -> None:
    """One Adamax step on one parameter, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    step_t = state["step"]
    step_t += 1
    grad = l2_decay(grad, param, weight_decay)
    param, grad, exp_avg, exp_inf = real_views(param, grad, state["exp_avg"], state["exp_inf"])
    ema_(exp_avg, grad, beta1)
    decayed = exp_inf.mul_(beta2)
    floor = grad.abs().add_(eps)
    if differentiable:
        # torch.maximum has no autograd formula with out=; take the max of a stack.
        exp_inf.copy_(torch.amax(torch.cat([decayed.unsqueeze(0), floor.unsqueeze_(0)], 0), 0, keepdim=False))
    else:
        torch.maximum(decayed, floor, out=exp_inf)

    if capturable:
        # All tensor math, no read of step on the host: −(1 − β₁ᵗ)/γ.
        neg_bias_correction = beta1**step_t - 1
        neg_bias_correction.div_(lr)
        param.addcdiv_(exp_avg, exp_inf * neg_bias_correction)
    else:
        step_size = lr / bias_correction(beta1, scalar_value(step_t))
        param.addcdiv_(exp_avg, exp_inf, value=-step_size)


class Adamax(ElementwiseOptimizer):
    """Adamax; torch.optim.Adamax's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (float or 1-element tensor; default 2e-3).
        betas: (β₁, β₂), each in [0, 1) (default (0.9, 0.999)).
        eps: ε added to |g| (default 1e-8).
        weight_decay: L2 penalty λ (default 0).
        foreach: accepted for compatibility; fastoptim picks the backend itself.
        maximize: ascend the objective instead of descending it.
        differentiable: let autograd flow through ``step()``.
        capturable: keep ``step`` on the parameter's device and compute the
            bias correction without reading it on the host.

    Example::

        >>> opt = fastoptim.Adamax(model.parameters(), lr=2e-3)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """

    rule = staticmethod(adamax_reference)
    rule_options = ("lr", "eps", "weight_decay", "maximize", "capturable", "differentiable")
    _per_element_state = ("exp_avg", "exp_inf")

    def __init__(
        self,
        params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        check_lr(lr)
        check_non_negative("epsilon", eps)
        check_betas(betas)
        check_non_negative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
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
        tensorize_scalar_state(self, ("step",), lambda group: group["capturable"])

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {"step": new_step(param, group), "exp_avg": zeros_like(param), "exp_inf": zeros_like(param)}

    def _rule_options(self, group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return {**super()._rule_options(group), "beta1": beta1, "beta2": beta2}
