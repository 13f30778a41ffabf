r"""RAdam: Adam with a rectified adaptive learning rate (Liu et al., 2019), optionally RAdamW.

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \quad\text{(decoupled decay)} \\
    g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad\text{(L2 decay, the default)} \\
    m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    v_t &\leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    \hat m_t &\leftarrow m_t / (1-\beta_1^t) \\
    \rho_\infty &\leftarrow 2/(1-\beta_2) - 1, \qquad
        \rho_t \leftarrow \rho_\infty - 2t\beta_2^t/(1-\beta_2^t) \\
    \theta_t &\leftarrow \begin{cases}
        \theta_{t-1} - \gamma\,\hat m_t\, l_t\, r_t & \rho_t > 5 \\
        \theta_{t-1} - \gamma\,\hat m_t & \text{otherwise (plain momentum SGD)}
    \end{cases} \\
    l_t &= \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon}, \qquad
    r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

γ lr, β₁ β₂ ``betas``, ε eps, λ weight_decay.  ρ_t estimates the length of the
simple moving average that v_t approximates; while it is ≤ 5 the variance of
the adaptive step is too large to trust, so the step is unrectified.
State per parameter: ``step`` (t), ``exp_avg`` (m), ``exp_avg_sq`` (v).

.. warning:: As in torch.optim, ε is added to √v_t *before* the bias
   correction √(1−β₂ᵗ) multiplies it, unlike Adam's denominator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import (
    add_eps,
    advance_step,
    apply_weight_decay,
    as_scalar,
    bias_correction,
    ema_,
    ema_square_,
    fill_group_defaults,
    new_step,
    real_views,
    signed_grad,
    tensorize_scalar_state,
    zeros_like,
)
from ._validate import check_betas, check_lr, check_non_negative

__all__ = ["RAdam", "radam_reference"]


def radam_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    capturable: bool = False,
    differentiable: bool = False,
) -> None:
    """One RAdam step on one parameter, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    param, grad, exp_avg, exp_avg_sq = real_views(param, grad, state["exp_avg"], state["exp_avg_sq"])
    step = advance_step(state, capturable)
    grad = apply_weight_decay(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)

    ema_(exp_avg, grad, beta1)
    ema_square_(exp_avg_sq, grad, beta2)

    bias_correction1 = bias_correction(beta1, step)
    bias_correction2 = bias_correction(beta2, step)
    bias_corrected_exp_avg = exp_avg / bias_correction1

    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2

    def rectification():
        return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5

    def adaptive_lr():
        return (bias_correction2**0.5) / add_eps(exp_avg_sq.sqrt(), eps, differentiable)

    if capturable:
        update = torch.where(rho_t > 5.0, rectification() * adaptive_lr(), 1.0)
        param.add_(bias_corrected_exp_avg * lr * update, alpha=-1.0)
    elif rho_t > 5.0:
        param.add_(bias_corrected_exp_avg * lr * adaptive_lr() * rectification(), alpha=-1.0)
    else:
        param.add_(bias_corrected_exp_avg * lr, alpha=-1.0)


class RAdam(ElementwiseOptimizer):
    """RAdam (rectified Adam); torch.optim.RAdam's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (float or 1-element tensor; default 1e-3).
        betas: (β₁, β₂), the moment EMA coefficients, each in [0, 1) (default (0.9, 0.999)).
        eps: ε added to √v (default 1e-8).
        weight_decay: λ ≥ 0 (default 0).
        decoupled_weight_decay: decay the weights directly (RAdamW, as in the
            authors' code) instead of via the gradient.
        maximize: ascend the objective.
        foreach, capturable: accepted for compatibility; ``capturable`` keeps
            ``step`` on the parameter's device and selects the rectification
            with ``torch.where`` instead of a Python branch.
        differentiable: let autograd flow through ``step()``.

    Example::

        >>> opt = fastoptim.RAdam(model.parameters(), lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)
    """

    rule = staticmethod(radam_reference)
    rule_options = ("lr", "eps", "weight_decay", "decoupled_weight_decay", "maximize", "capturable", "differentiable")
    _per_element_state = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
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
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            decoupled_weight_decay=decoupled_weight_decay,
            differentiable=differentiable,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(
            self, foreach=None, maximize=False, differentiable=False, decoupled_weight_decay=False, capturable=False
        )
        tensorize_scalar_state(self, ("step",), lambda group: group["capturable"])

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {"step": new_step(param, group), "exp_avg": zeros_like(param), "exp_avg_sq": zeros_like(param)}

    def _rule_options(self, group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return {**super()._rule_options(group), "beta1": beta1, "beta2": beta2}
