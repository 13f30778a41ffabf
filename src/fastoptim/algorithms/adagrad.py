r"""Adagrad: per-coordinate step sizes from the running sum of squared gradients (Duchi et al., 2011).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad\text{if } \lambda \neq 0 \\
    \tilde\gamma_t &\leftarrow \frac{\gamma}{1 + (t-1)\eta} \\
    s_t &\leftarrow s_{t-1} + g_t^2 \qquad (s_0 = \tau) \\
    \theta_t &\leftarrow \theta_{t-1} - \tilde\gamma_t \frac{g_t}{\sqrt{s_t} + \epsilon}

γ lr, η lr_decay, λ weight_decay, τ initial_accumulator_value, ε eps.  State
per parameter: ``step`` (t) and ``sum`` (s).  A complex parameter is treated as
two real coordinates, so its accumulator starts at ``τ + τi``.

Sparse gradients are supported (without weight decay): only the rows present
in the gradient are accumulated and updated.

.. warning:: Unlike every other optimizer here, Adagrad creates its state in
   the constructor, for every parameter it is given (torch.optim does the
   same, so that ``share_memory()`` can be called before the first step).
   Parameters added later with ``add_param_group`` get their state lazily, at
   their first step, and then start from the *constructor's*
   ``initial_accumulator_value`` whatever their group says (torch's behaviour,
   kept for checkpoint compatibility).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import (
    add_eps,
    as_scalar,
    fill_group_defaults,
    l2_decay,
    new_step,
    real_views,
    scalar_value,
    signed_grad,
    tensorize_scalar_state,
)
from ._validate import check_fused_flags, check_lr, check_non_negative

__all__ = ["Adagrad", "adagrad_reference"]

_SPARSE_DECAY_MESSAGE = "weight_decay option is not compatible with sparse gradients"


def _sparse_like(grad: Tensor, indices: Tensor, values: Tensor) -> Tensor:
    """A sparse COO tensor with ``grad``'s shape and the given (coalesced) entries."""
    return torch.sparse_coo_tensor(indices, values, grad.size())


def adagrad_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    differentiable: bool = False,
) -> None:
    """One Adagrad step on one parameter, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    step_t = state["step"]
    step_t += 1
    step = scalar_value(step_t)
    grad = signed_grad(grad, maximize)
    if weight_decay != 0 and grad.is_sparse:
        raise RuntimeError(_SPARSE_DECAY_MESSAGE)
    grad = l2_decay(grad, param, weight_decay)
    decayed_lr = lr / (1 + (step - 1) * lr_decay)
    state_sum = state["sum"]

    if grad.is_sparse:
        # The update is not linear in the gradient: duplicate indices must be summed first.
        grad = grad.coalesce()
        indices, values = grad._indices(), grad._values()
        state_sum.add_(_sparse_like(grad, indices, values.pow(2)))
        std_values = state_sum.sparse_mask(grad)._values().sqrt_().add_(eps)
        param.add_(_sparse_like(grad, indices, values / std_values), alpha=-decayed_lr)
        return

    param, grad, state_sum = real_views(param, grad, state_sum)
    state_sum.addcmul_(grad, grad, value=1)
    std = add_eps(state_sum.sqrt(), eps, differentiable)
    param.addcdiv_(grad, std, value=-decayed_lr)


def _fresh_state(param: Tensor, group: dict, initial_accumulator_value: float) -> dict:
    """``step`` = 0 and ``sum`` filled with τ (τ + τi for a complex parameter)."""
    fill = initial_accumulator_value
    if param.is_complex():
        fill = complex(fill, fill)
    return {
        "step": new_step(param, group),
        "sum": torch.full_like(param, fill, memory_format=torch.preserve_format),
    }


class Adagrad(ElementwiseOptimizer):
    """Adagrad; torch.optim.Adagrad's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (float or 1-element tensor; default 1e-2).
        lr_decay: η, the learning rate becomes γ / (1 + (t−1)η) (default 0).
        weight_decay: L2 penalty λ (default 0; must be 0 with sparse gradients).
        initial_accumulator_value: τ, the starting value of ``sum`` (default 0).
        eps: ε added to the denominator (default 1e-10).
        foreach, fused: accepted for compatibility; fastoptim picks the backend
            itself.  ``fused=True`` keeps torch's restrictions (floating-point
            parameters, dense gradients, not differentiable).
        maximize: ascend the objective instead of descending it.
        differentiable: let autograd flow through ``step()``.

    Example::

        >>> opt = fastoptim.Adagrad(model.parameters(), lr=0.1, lr_decay=1e-3)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """

    rule = staticmethod(adagrad_reference)
    supports_sparse_grad = True
    rule_options = ("lr", "lr_decay", "weight_decay", "eps", "maximize", "differentiable")
    _per_element_state = ("sum",)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_non_negative("lr_decay", lr_decay)
        check_non_negative("weight_decay", weight_decay)
        check_non_negative("initial_accumulator_value", initial_accumulator_value)
        check_non_negative("epsilon", eps)
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)
        check_fused_flags(fused=fused, foreach=foreach, differentiable=differentiable)
        # Eager state, for the constructor's groups only (see the module warning);
        # the constructor's τ applies to every group, as in torch.
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = _fresh_state(p, group, initial_accumulator_value)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(self, foreach=None, maximize=False, differentiable=False, fused=None)
        tensorize_scalar_state(self, ("step",), lambda group: bool(group["fused"]))

    def share_memory(self) -> None:
        """Move every ``sum`` accumulator to shared memory (for Hogwild-style training)."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return _fresh_state(param, group, self.defaults["initial_accumulator_value"])

    def _check_param(self, param: Tensor, group: dict) -> None:
        if param.grad.is_sparse:
            if group["fused"]:
                raise RuntimeError("`fused` does not support sparse grad or complex param")
            if group["weight_decay"] != 0:
                raise RuntimeError(_SPARSE_DECAY_MESSAGE)
