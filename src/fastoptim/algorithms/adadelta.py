r"""Adadelta: step sizes from the ratio of two running RMS values (Zeiler, 2012).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad\text{if } \lambda \neq 0 \\
    v_t &\leftarrow \rho v_{t-1} + (1-\rho) g_t^2 \\
    \Delta_t &\leftarrow \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
    u_t &\leftarrow \rho u_{t-1} + (1-\rho) \Delta_t^2 \\
    \theta_t &\leftarrow \theta_{t-1} - \gamma \Delta_t

γ lr, ρ rho, ε eps, λ weight_decay.  State per parameter: ``step`` (t, counted
but unused by the update), ``square_avg`` (v) and ``acc_delta`` (u).

.. warning:: The paper has no learning rate (γ = 1, torch's default); ε sits
   inside both square roots, as in the paper and in torch.optim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import (
    as_scalar,
    ema_square_,
    fill_group_defaults,
    l2_decay,
    new_step,
    real_views,
    signed_grad,
    tensorize_scalar_state,
    zeros_like,
)
from ._validate import check_lr, check_non_negative

__all__ = ["Adadelta", "adadelta_reference"]


def adadelta_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool = False,
    differentiable: bool = False,
) -> None:
    """One Adadelta step on one parameter, in place (the reference every kernel matches).

    ``capturable`` changes nothing here: torch's single-tensor update is the
    same arithmetic with or without it.
    """
    lr = as_scalar(lr)
    step_t = state["step"]
    step_t += 1
    grad = signed_grad(grad, maximize)
    grad = l2_decay(grad, param, weight_decay)
    is_complex = param.is_complex()
    grad, square_avg, acc_delta = real_views(grad, state["square_avg"], state["acc_delta"])
    ema_square_(square_avg, grad, rho)
    std = square_avg.add(eps).sqrt_()
    delta = acc_delta.add(eps).sqrt_()
    if differentiable:
        # sqrt_'s backward needs its output, which the in-place div_ would overwrite.
        delta = delta.clone()
    delta.div_(std).mul_(grad)
    ema_square_(acc_delta, delta, rho)
    if is_complex:
        delta = torch.view_as_complex(delta)
    param.add_(delta, alpha=-lr)


class Adadelta(ElementwiseOptimizer):
    """Adadelta; torch.optim.Adadelta's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: γ, scales the step Δ (float or 1-element tensor; default 1.0).
        rho: ρ, the decay of both running averages, in [0, 1] (default 0.9).
        eps: ε inside both square roots (default 1e-6).
        weight_decay: L2 penalty λ (default 0).
        foreach, capturable: accepted for compatibility; fastoptim picks the
            backend itself.  ``capturable`` keeps ``step`` on the parameter's device.
        maximize: ascend the objective instead of descending it.
        differentiable: let autograd flow through ``step()``.

    Example::

        >>> opt = fastoptim.Adadelta(model.parameters())
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """

    rule = staticmethod(adadelta_reference)
    rule_options = ("lr", "rho", "eps", "weight_decay", "maximize", "capturable", "differentiable")
    _per_element_state = ("square_avg", "acc_delta")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_non_negative("epsilon", eps)
        check_non_negative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr,
            rho=rho,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            capturable=capturable,
            foreach=foreach,
            differentiable=differentiable,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(self, foreach=None, maximize=False, differentiable=False, capturable=False)
        tensorize_scalar_state(self, ("step",), lambda group: group["capturable"])

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {"step": new_step(param, group), "square_avg": zeros_like(param), "acc_delta": zeros_like(param)}
