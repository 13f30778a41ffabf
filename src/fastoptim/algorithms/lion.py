r"""Lion: evolved sign momentum (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \\
    c_t &\leftarrow \operatorname{sign}\bigl(\beta_1 m_{t-1} + (1-\beta_1) g_t\bigr) \\
    \theta_t &\leftarrow \theta_{t-1} - \gamma c_t \\
    m_t &\leftarrow \beta_2 m_{t-1} + (1-\beta_2) g_t

γ lr, β₁ β₂ ``betas``, λ ``weight_decay`` (decoupled, as in AdamW), m the
``exp_avg`` buffer (the only state; no step counter, no bias correction).

The update is a sign, so every coordinate moves by exactly γ: Lion needs a
learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger to
keep the product γλ similar.  It keeps one buffer per parameter (AdamW keeps
two), so it is cheaper in memory and in bytes moved per step.

The reference is lucidrains' ``lion-pytorch`` (``lion_pytorch.Lion``, the
package's default, non-Triton update), matched bit for bit: same defaults
(γ = 1e-4, β = (0.9, 0.99), λ = 0), same state (``exp_avg``), same operations.

Variant flags:

``decoupled_weight_decay`` (lion-pytorch's flag of the same name)
    λ is divided by the learning rate given to the constructor, so the
    per-step decay γₜλ/γ₀ follows a learning-rate schedule but not the base
    learning rate's size.
``maximize`` (fastoptim's, as in torch.optim)
    ascend the objective.

Complex parameters take the complex sign ``z/|z|`` (``torch.sgn``), as the
reference does.
"""

from __future__ import annotations

from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import as_scalar, decoupled_decay_, fill_group_defaults, scalar_value, signed_grad, zeros_like
from ._validate import check_lr, check_non_negative

__all__ = ["Lion", "lion_reference"]


def lion_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """One Lion step on one parameter, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    exp_avg = state["exp_avg"]
    # θ ← θ(1 − γλ)
    decoupled_decay_(param, lr, weight_decay)
    # c ← sign(β₁m + (1 − β₁)g);  θ ← θ − γc
    update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sgn_()
    param.add_(update, alpha=-lr)
    # m ← β₂m + (1 − β₂)g
    exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


class Lion(ElementwiseOptimizer):
    """Lion (sign momentum); lion-pytorch's ``Lion`` interface and defaults.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (float or 1-element tensor; default 1e-4).
        betas: (β₁, β₂): β₁ interpolates the update, β₂ the momentum buffer
            (default (0.9, 0.99)); each in [0, 1].
        weight_decay: decoupled weight decay λ (default 0).
        decoupled_weight_decay: divide λ by the constructor's lr (see the module docstring).
        maximize: ascend the objective.

    Example::

        >>> opt = fastoptim.Lion(model.parameters(), lr=1e-4, weight_decay=1.0)
    """

    rule = staticmethod(lion_reference)
    _per_element_state = ("exp_avg",)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        check_lr(lr)
        for index in (0, 1):
            if not 0.0 <= betas[index] <= 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {betas[index]}")
        check_non_negative("weight_decay", weight_decay)
        # lion-pytorch divides λ by the *constructor's* lr in every group.
        self._init_lr = scalar_value(lr)
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(self, decoupled_weight_decay=False, maximize=False)

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {"exp_avg": zeros_like(param)}

    def _rule_options(self, group: dict) -> dict:
        beta1, beta2 = group["betas"]
        weight_decay = group["weight_decay"]
        if group["decoupled_weight_decay"]:
            weight_decay = weight_decay / self._init_lr
        return dict(lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=weight_decay, maximize=group["maximize"])
