r"""Rprop: resilient backpropagation (Riedmiller & Braun, 1993), the iRprop⁻ variant.

Each element keeps its own step size Δ and moves by ±Δ, following only the
*sign* of its gradient:

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    s &\leftarrow \operatorname{sign}(g_t\, g_{t-1}) \\
    \Delta_t &\leftarrow \operatorname{clamp}\Bigl(\Delta_{t-1} \cdot
        \begin{cases} \eta_+ & s > 0 \\ \eta_- & s < 0 \\ 1 & s = 0 \end{cases},
        \ \Gamma_{min},\ \Gamma_{max}\Bigr) \\
    g_t &\leftarrow 0 \quad\text{where } s < 0
        \quad\text{(after a sign flip: no move now, no shrink next time)} \\
    \theta_t &\leftarrow \theta_{t-1} - \operatorname{sign}(g_t)\,\Delta_t

η₋ η₊ ``etas``, Γ_min Γ_max ``step_sizes``; Δ starts at lr (lr is used for
nothing else).  State per parameter: ``step``, ``prev`` (g_{t-1}, zeroed where
the sign flipped), ``step_size`` (Δ).  A complex parameter is two real ones:
its real and imaginary parts each get their own Δ.

.. warning:: As in torch.optim, the "s < 0" elements are found by comparing the
   factor with η₋ after it was written, and ``torch.sign(NaN)`` is 0: where
   g_t (or g_t·g_{t-1}) is NaN, Δ is kept and θ does not move; ``prev`` keeps the NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import (
    as_scalar,
    fill_group_defaults,
    new_step,
    real_views,
    signed_grad,
    tensorize_scalar_state,
    zeros_like,
)
from ._validate import check_lr

__all__ = ["Rprop", "rprop_reference"]


def rprop_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    etaminus: float,
    etaplus: float,
    step_size_min: float,
    step_size_max: float,
    maximize: bool,
    capturable: bool = False,
    differentiable: bool = False,
) -> None:
    """One Rprop step on one parameter, in place (the reference every kernel matches)."""
    grad = signed_grad(grad, maximize)
    state["step"] += 1
    grad, prev, param, step_size = real_views(grad, state["prev"], param, state["step_size"])
    # sign(g_t g_{t-1}), then turned in place into the factor for Δ.  prev is
    # overwritten below, so under autograd the product keeps its own copy.
    factor = grad.mul(prev.clone() if differentiable else prev).sign()

    if capturable:
        # torch.where instead of masked assignment: no data-dependent shapes.
        factor.copy_(torch.where(factor.gt(0), etaplus, factor))
        factor.copy_(torch.where(factor.lt(0), etaminus, factor))
        factor.copy_(torch.where(factor.eq(0), 1, factor))
    else:
        factor[factor.gt(0)] = etaplus
        factor[factor.lt(0)] = etaminus
        factor[factor.eq(0)] = 1

    step_size.mul_(factor).clamp_(step_size_min, step_size_max)

    grad = grad.clone(memory_format=torch.preserve_format)
    if capturable:
        grad.copy_(torch.where(factor.eq(etaminus), 0, grad))
    else:
        grad[factor.eq(etaminus)] = 0

    param.addcmul_(grad.sign(), step_size, value=-1)
    prev.copy_(grad)


class Rprop(ElementwiseOptimizer):
    """Resilient backpropagation; torch.optim.Rprop's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: the initial step size Δ₀ (float or 1-element tensor; default 1e-2).
        etas: (η₋, η₊), the shrink and growth factors, ``0 < η₋ < 1 < η₊`` (default (0.5, 1.2)).
        step_sizes: (Γ_min, Γ_max), the bounds of Δ (default (1e-6, 50)).
        capturable: keep ``step`` on the parameter's device and avoid
            data-dependent indexing.
        foreach: accepted for compatibility.
        maximize: ascend the objective.
        differentiable: let autograd flow through ``step()``.

    Example::

        >>> opt = fastoptim.Rprop(model.parameters(), lr=1e-2, etas=(0.5, 1.2))
    """

    rule = staticmethod(rprop_reference)
    rule_options = ("maximize", "capturable", "differentiable")
    _per_element_state = ("prev", "step_size")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        check_lr(lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        defaults = dict(
            lr=lr,
            etas=etas,
            step_sizes=step_sizes,
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
        grad = param.grad
        lr = group["lr"]
        # Δ₀ is laid out like the gradient; a complex Δ₀ = lr + i·lr gives the
        # imaginary parts a step size of their own.
        initial = complex(lr, lr) if param.dtype.is_complex else as_scalar(lr)
        return {"step": new_step(param, group), "prev": zeros_like(param), "step_size": torch.full_like(grad, initial)}

    def _rule_options(self, group: dict) -> dict:
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        return {
            **super()._rule_options(group),
            "etaminus": etaminus,
            "etaplus": etaplus,
            "step_size_min": step_size_min,
            "step_size_max": step_size_max,
        }
