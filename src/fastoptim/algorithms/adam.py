r"""Adam and AdamW: adaptive moment estimation (Kingma & Ba, 2014; Loshchilov & Hutter, 2019).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \quad\text{(AdamW: decoupled decay)} \\
    g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad\text{(Adam: L2 decay)} \\
    m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    v_t &\leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    \hat v_t &\leftarrow \max(\hat v_{t-1}, v_t) \quad\text{if amsgrad, and } v_t \text{ is replaced by } \hat v_t \\
    \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}
        \cdot \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

State per parameter: ``step`` (t), ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with
amsgrad, ``max_exp_avg_sq`` (v̂).

.. warning:: ε is added *after* the bias correction of √v (as in torch.optim),
   not to √v̂ before it as in the paper's Algorithm 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import (
    apply_weight_decay,
    as_scalar,
    bias_correction,
    ema_,
    ema_square_,
    new_step,
    real_views,
    scalar_value,
    signed_grad,
    zeros_like,
)
from ._validate import check_fused_flags, check_lr, check_non_negative

__all__ = ["Adam", "AdamW", "adam_reference"]


def _second_moment_(exp_avg_sq: Tensor, grad: Tensor, beta2, differentiable: bool) -> None:
    if differentiable and isinstance(beta2, Tensor) and beta2.requires_grad:
        exp_avg_sq.lerp_(torch.square(grad), weight=1 - beta2)
    else:
        ema_square_(exp_avg_sq, grad, beta2)


def adam_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    beta1,
    beta2,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    capturable: bool = False,
    differentiable: bool = False,
) -> None:
    """One Adam/AdamW step on one parameter, in place (the reference every kernel matches)."""
    lr, beta1, beta2 = as_scalar(lr), as_scalar(beta1), as_scalar(beta2)
    grad = signed_grad(grad, maximize)
    step_t = state["step"]
    step_t += 1
    grad = apply_weight_decay(
        param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay, differentiable=differentiable
    )
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq = real_views(
        param, grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq")
    )
    # torch moves a tensor beta1 to the parameter's device *and dtype* for the EMA only.
    device_beta1 = beta1.to(device=param.device, dtype=param.dtype) if isinstance(beta1, Tensor) else beta1
    ema_(exp_avg, grad, device_beta1)
    _second_moment_(exp_avg_sq, grad, beta2, differentiable)

    if amsgrad:
        if differentiable:
            max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq.clone(), exp_avg_sq))
        else:
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq

    if capturable or differentiable:
        # Keep every scalar a tensor so the step stays on the graph / device.
        step = step_t.clone() if differentiable else step_t
        step_size_neg = (lr / bias_correction(beta1, step)).neg()
        bias_correction2_sqrt = bias_correction(beta2, step).sqrt()
        denom = (second_moment.sqrt() / (bias_correction2_sqrt * step_size_neg)).add_(eps / step_size_neg)
        param.addcdiv_(exp_avg.clone() if differentiable else exp_avg, denom)
    else:
        step = scalar_value(step_t)
        step_size = lr / bias_correction(beta1, step)
        bias_correction2_sqrt = bias_correction(beta2, step) ** 0.5
        denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


class Adam(ElementwiseOptimizer):
    """Adam; torch.optim.Adam's interface (``decoupled_weight_decay=True`` gives AdamW).

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (float or 1-element tensor; default 1e-3).
        betas: (β₁, β₂), the moment EMA coefficients (default (0.9, 0.999)).
        eps: ε added to the denominator (default 1e-8).
        weight_decay: λ (default 0).
        amsgrad: use the running maximum of v (AMSGrad).
        maximize: ascend the objective.
        decoupled_weight_decay: decay the weights directly (AdamW) instead of via the gradient.
        foreach, fused, capturable: accepted for compatibility; the backend is chosen by fastoptim.
        differentiable: let autograd flow through ``step()``.
    """

    rule = staticmethod(adam_reference)
    _per_element_state = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        check_lr(lr, foreach=foreach, capturable=capturable)
        check_non_negative("epsilon", eps)
        for index in (0, 1):
            if not 0.0 <= betas[index] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {betas[index]}")
        check_non_negative("weight_decay", weight_decay)
        if not (
            (isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        for index in (0, 1):
            if isinstance(betas[index], Tensor):
                if not capturable and foreach:
                    raise ValueError(f"betas[{index}] as a Tensor is not supported for capturable=False and foreach=True")
                if betas[index].numel() != 1:
                    raise ValueError(f"Tensor betas[{index}] must be 1-element")
        defaults = dict(
            lr=lr,
            betas=tuple(as_scalar(b) for b in betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)
        check_fused_flags(fused=fused, foreach=foreach, differentiable=differentiable)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in (
                ("amsgrad", False),
                ("maximize", False),
                ("foreach", None),
                ("capturable", False),
                ("differentiable", False),
                ("decoupled_weight_decay", False),
                ("fused", None),
            ):
                group.setdefault(key, default)
            for p in group["params"]:
                entry = self.state.get(p)
                if entry and not torch.is_tensor(entry.get("step")):
                    # Checkpoints from old torch versions store the step as a number.
                    entry["step"] = torch.tensor(float(entry["step"]), dtype=new_step(p, group).dtype)

    def _sparse_grad_message(self) -> str:
        return f"{type(self).__name__} does not support sparse gradients, please consider SparseAdam instead"

    def _check_group(self, group: dict) -> None:
        if group["foreach"] and torch.is_tensor(group["lr"]) and not group["capturable"]:
            raise RuntimeError("lr as a Tensor is not supported for capturable=False and foreach=True")

    def _init_state(self, param: Tensor, group: dict) -> dict:
        state = {"step": new_step(param, group), "exp_avg": zeros_like(param), "exp_avg_sq": zeros_like(param)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros_like(param)
        return state

    def _rule_options(self, group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            amsgrad=group["amsgrad"],
            maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            capturable=group["capturable"],
            differentiable=group["differentiable"],
        )


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (default λ = 0.01); torch.optim.AdamW's interface."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
