r"""NAdam: Adam with Nesterov momentum (Dozat, 2016), optionally with decoupled weight decay (NAdamW).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \quad\text{(decoupled decay)} \\
    g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad\text{(L2 decay, the default)} \\
    \mu_t &\leftarrow \beta_1\bigl(1 - \tfrac12\, 0.96^{t\psi}\bigr), \qquad
        \mu_{t+1} \leftarrow \beta_1\bigl(1 - \tfrac12\, 0.96^{(t+1)\psi}\bigr) \\
    P_t &\leftarrow P_{t-1}\,\mu_t \qquad (P_0 = 1,\ \text{so } P_t = \textstyle\prod_{i\le t}\mu_i) \\
    m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    v_t &\leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    d_t &\leftarrow \sqrt{v_t / (1-\beta_2^t)} + \epsilon \\
    \theta_t &\leftarrow \theta_{t-1}
        - \gamma\,\frac{1-\mu_t}{1-P_t}\,\frac{g_t}{d_t}
        - \gamma\,\frac{\mu_{t+1}}{1-P_t\,\mu_{t+1}}\,\frac{m_t}{d_t}

γ lr, β₁ β₂ ``betas``, ε eps, λ weight_decay, ψ momentum_decay.  State per
parameter: ``step`` (t), ``mu_product`` (P), ``exp_avg`` (m), ``exp_avg_sq`` (v).

.. warning:: As in torch.optim, the gradient term and the momentum term are
   applied to θ as two separate in-place updates (two roundings), and ε is added
   after the bias correction of √v.
"""

from __future__ import annotations

from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import (
    advance_step,
    apply_weight_decay,
    as_scalar,
    bias_correction,
    ema_,
    ema_square_,
    fill_group_defaults,
    new_step,
    real_views,
    scalar_state,
    scalar_value,
    signed_grad,
    tensorize_scalar_state,
    zeros_like,
)
from ._validate import check_betas, check_lr, check_non_negative

__all__ = ["NAdam", "nadam_reference"]


def _momentum_coefficient(beta1, step, momentum_decay):
    """``μ_t = β₁(1 − ½·0.96^{tψ})``: Dozat's warming-up momentum schedule."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def nadam_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    capturable: bool = False,
    differentiable: bool = False,
) -> None:
    """One NAdam step on one parameter, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    param, grad, exp_avg, exp_avg_sq = real_views(param, grad, state["exp_avg"], state["exp_avg_sq"])
    mu_product = state["mu_product"]
    step = advance_step(state, capturable)
    bias_correction2 = bias_correction(beta2, step)
    grad = apply_weight_decay(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)

    mu = _momentum_coefficient(beta1, step, momentum_decay)
    mu_next = _momentum_coefficient(beta1, step + 1, momentum_decay)
    mu_product *= mu

    ema_(exp_avg, grad, beta1)
    ema_square_(exp_avg_sq, grad, beta2)
    denom = exp_avg_sq.div(bias_correction2).sqrt()

    if differentiable or capturable:
        # Scale the tensors themselves (not addcdiv's number ``value``) so that
        # autograd sees every factor and nothing is read back to the host.
        denom = denom.add(eps)
        mu_product_next = mu_product * mu_next
        grad = grad * (-lr * (1.0 - mu) / (1.0 - mu_product))
        exp_avg = exp_avg * (-lr * mu_next / (1.0 - mu_product_next))
        param.addcdiv_(grad, denom)
        param.addcdiv_(exp_avg, denom)
    else:
        product = scalar_value(mu_product)
        mu_product_next = product * mu_next
        denom.add_(eps)
        param.addcdiv_(grad, denom, value=(-lr * (1.0 - mu) / (1.0 - product)))
        param.addcdiv_(exp_avg, denom, value=(-lr * mu_next) / (1.0 - mu_product_next))


class NAdam(ElementwiseOptimizer):
    """NAdam (Adam with Nesterov momentum); torch.optim.NAdam's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (float or 1-element tensor; default 2e-3).
        betas: (β₁, β₂), the moment EMA coefficients, each in [0, 1) (default (0.9, 0.999)).
        eps: ε added to the denominator (default 1e-8).
        weight_decay: λ ≥ 0 (default 0).
        momentum_decay: ψ ≥ 0, how fast μ_t warms up towards β₁ (default 4e-3).
        decoupled_weight_decay: decay the weights directly (NAdamW) instead of via the gradient.
        maximize: ascend the objective.
        foreach, capturable: accepted for compatibility; ``capturable`` keeps
            ``step`` and ``mu_product`` on the parameter's device.
        differentiable: let autograd flow through ``step()``.

    Example::

        >>> opt = fastoptim.NAdam(model.parameters(), lr=2e-3, momentum_decay=4e-3)
    """

    rule = staticmethod(nadam_reference)
    rule_options = (
        "lr",
        "eps",
        "weight_decay",
        "momentum_decay",
        "decoupled_weight_decay",
        "maximize",
        "capturable",
        "differentiable",
    )
    _per_element_state = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
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
        check_non_negative("momentum_decay", momentum_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(
            self, maximize=False, foreach=None, capturable=False, differentiable=False, decoupled_weight_decay=False
        )
        tensorize_scalar_state(self, ("step", "mu_product"), lambda group: group["capturable"])

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {
            "step": new_step(param, group),
            "mu_product": scalar_state(1.0, param, group["capturable"]),
            "exp_avg": zeros_like(param),
            "exp_avg_sq": zeros_like(param),
        }

    def _rule_options(self, group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return {**super()._rule_options(group), "beta1": beta1, "beta2": beta2}
