r"""Adan: adaptive Nesterov momentum (Xie et al., 2022/2024, "Adan: Adaptive Nesterov Momentum Algorithm
for Faster Optimizing Deep Models", arXiv:2208.06677, TPAMI).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    \Delta_t &\leftarrow g_t - g_{t-1} \quad (\Delta_1 = 0) \\
    m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    d_t &\leftarrow \beta_2 d_{t-1} + (1-\beta_2) \Delta_t \\
    u_t &\leftarrow g_t + \beta_2 \Delta_t \\
    n_t &\leftarrow \beta_3 n_{t-1} + (1-\beta_3) u_t^2 \\
    \rho_t &\leftarrow \sqrt{n_t} / \sqrt{1-\beta_3^t} + \epsilon \\
    \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \quad\text{if weight\_decouple} \\
    \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\frac{m_t}{\rho_t}
        - \frac{\gamma\beta_2}{1-\beta_2^t}\frac{d_t}{\rho_t} \\
    \theta_t &\leftarrow \theta_t / (1 + \gamma\lambda) \quad\text{otherwise (the paper's proximal decay)}

γ lr, (β₁, β₂, β₃) ``betas``, ε ``eps``, λ ``weight_decay``, t the *group's*
step count ``group["step"]``.  State per parameter: ``exp_avg`` (m),
``exp_avg_diff`` (d), ``exp_avg_sq`` (n) and ``previous_grad``, which holds
``−g_{t−1}`` between steps (so that one in-place add gives Δₜ).

Adan's Nesterov momentum is estimated from the gradient difference Δ, so it
needs no extra forward/backward at an extrapolated point.  It keeps four
buffers per parameter (AdamW two), so a step moves about 1.6x AdamW's bytes.

The reference is ``pytorch_optimizer.Adan`` (kozistr/pytorch_optimizer),
matched bit for bit with its defaults (γ = 1e-3, β = (0.98, 0.92, 0.99),
ε = 1e-8, λ = 0, coupled/proximal decay) -- its default ``foreach`` path and
its per-parameter path do the same arithmetic.  As there, the group counts the
steps: a parameter whose first gradient arrives at group step t is
bias-corrected with t, and ``previous_grad`` starts at ``−g`` of that first
gradient (Δ₁ = 0) -- taken *before* ``maximize`` negates it, so a maximizing
first step sees Δ₁ = −2g, as the reference does.

.. warning:: Not supported (``TypeError``): the reference's ``max_grad_norm``
   (global gradient-norm clipping; use ``torch.nn.utils.clip_grad_norm_``),
   ``foreach``, ``use_gc`` and ``adanorm``.  The reference also overwrites
   ``p.grad`` (negated, clipped); fastoptim leaves ``.grad`` untouched.
"""

from __future__ import annotations

import math

from torch import Tensor

from ._group_step import GroupStepOptimizer
from ._rules import as_scalar, ema_, ema_square_, fill_group_defaults, real_views, signed_grad, zeros_like
from ._validate import check_lr, check_non_negative

__all__ = ["Adan", "adan_reference"]


def adan_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    weight_decouple: bool,
    maximize: bool,
    step: int,
) -> None:
    """One Adan step on one parameter at group step ``step``, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    param, grad, exp_avg, exp_avg_sq, exp_avg_diff, grad_diff = real_views(
        param, grad, state["exp_avg"], state["exp_avg_sq"], state["exp_avg_diff"], state["previous_grad"]
    )
    # Δ ← g − g_prev  (previous_grad holds −g_prev; reused in place)
    grad_diff.add_(grad)
    # m ← lerp(m, g, 1 − β₁);  d ← lerp(d, Δ, 1 − β₂)
    ema_(exp_avg, grad, beta1)
    ema_(exp_avg_diff, grad_diff, beta2)
    # u ← g + β₂Δ;  n ← β₃n + (1 − β₃)u²
    update = grad_diff.mul_(beta2).add_(grad)
    ema_square_(exp_avg_sq, update, beta3)
    # ρ ← √n / √(1 − β₃ᵗ) + ε
    denom = exp_avg_sq.sqrt().div_(math.sqrt(1.0 - math.pow(beta3, step))).add_(eps)
    # θ ← θ(1 − γλ) (decoupled), the two momentum steps, then θ ← θ/(1 + γλ) (proximal)
    if weight_decay != 0.0 and weight_decouple:
        param.mul_(1.0 - lr * weight_decay)
    param.addcdiv_(exp_avg, denom, value=-(lr / (1.0 - math.pow(beta1, step))))
    param.addcdiv_(exp_avg_diff, denom, value=-(lr * beta2 / (1.0 - math.pow(beta2, step))))
    if weight_decay != 0.0 and not weight_decouple:
        param.div_(1.0 + lr * weight_decay)
    # previous_grad ← −g
    grad_diff.copy_(grad).neg_()


class Adan(GroupStepOptimizer):
    """Adan; ``pytorch_optimizer.Adan``'s interface and defaults (see the module docstring).

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (default 1e-3).
        betas: (β₁, β₂, β₃) for the gradient, gradient-difference and squared
            EMAs (default (0.98, 0.92, 0.99)); β₁, β₂ in [0, 1), β₃ in [0, 1].
        weight_decay: λ (default 0).
        weight_decouple: decay as AdamW (θ(1−γλ) before the update) instead of
            the paper's proximal θ/(1+γλ) after it (default False).
        eps: ε added to the denominator (default 1e-8).
        maximize: ascend the objective.
    """

    rule = staticmethod(adan_reference)
    _per_element_state = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        weight_decay: float = 0.0,
        weight_decouple: bool = False,
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        check_lr(lr)
        if len(betas) != 3:
            raise ValueError(f"Adan takes three betas, got {len(betas)}")
        for index, beta in enumerate(betas):
            upper_ok = beta <= 1.0 if index == 2 else beta < 1.0
            if not (0.0 <= beta and upper_ok):
                raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
        check_non_negative("weight_decay", weight_decay)
        check_non_negative("epsilon", eps)
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, weight_decouple=weight_decouple, eps=eps, maximize=maximize
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(self, maximize=False)

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {
            "exp_avg": zeros_like(param),
            "exp_avg_sq": zeros_like(param),
            "exp_avg_diff": zeros_like(param),
            # −g of the first gradient as it arrives (before maximize): Δ₁ = 0
            "previous_grad": param.grad.clone().mul_(-1.0),
        }

    def _advance_group(self, group: dict) -> None:
        group["step"] = group.get("step", 0) + 1

    def _rule_options(self, group: dict) -> dict:
        beta1, beta2, beta3 = group["betas"]
        return dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            beta3=beta3,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            weight_decouple=group["weight_decouple"],
            maximize=group["maximize"],
            step=group.get("step", 0),
        )
