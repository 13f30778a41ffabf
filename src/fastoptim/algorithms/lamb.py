r"""LAMB: layer-wise adaptive moments (You et al., 2020, "Large Batch Optimization for Deep Learning:
Training BERT in 76 minutes", ICLR, arXiv:1904.00962).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda)
        \quad\text{if weight\_decouple } (1 - \lambda \text{ with fixed\_decay}) \\
    m_t &\leftarrow \beta_1 m_{t-1} + \beta_3 g_t
        \quad (\beta_3 = 1-\beta_1 \text{ with grad\_averaging, else } 1) \\
    v_t &\leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    u_t &\leftarrow m_t \cdot \frac{1}{\sqrt{v_t} + \epsilon} \;(+\,\lambda\theta_{t-1}
        \text{ if not weight\_decouple}) \\
    r_t &\leftarrow \begin{cases} \phi(\lVert\theta_{t-1}\rVert) / (\lVert u_t\rVert + \epsilon)
        & \text{both norms} \neq 0 \\ 1 & \text{otherwise} \end{cases}
        \qquad \phi(x) = \min(x, c) \\
    \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\, r_t u_t

γ lr, β₁ β₂ ``betas``, ε ``eps``, λ ``weight_decay``, c ``clamp`` (10), t the
group's step count ``group["step"]``.  Norms are L2 norms of the whole tensor.
State per parameter: ``exp_avg`` (m), ``exp_avg_sq`` (v) and, written by each
step for inspection, the 0-dim ``weight_norm`` (φ‖θ‖), ``adam_norm`` (‖u‖) and
``trust_ratio`` (r) -- in the parameter's (real) dtype, as the reference keeps them.

The trust ratio rescales each tensor's Adam step to the size of its weights,
which lets BERT-scale batch sizes (and learning rates) train stably.

The reference is ``pytorch_optimizer.Lamb`` (kozistr/pytorch_optimizer) with
its defaults (γ = 1e-3, β = (0.9, 0.999), ε = 1e-6, λ = 0, decoupled decay,
grad averaging, ``clamp`` = 10): fastoptim reproduces bit for bit its
*default* path for real parameters -- the ``foreach`` path, which forms u as
``m · (1/(√v + ε))`` and applies ``r`` to u before the step.  As there, the
first moment's bias correction 1 − β₁ᵗ divides the step size, the second's is
not applied, and the weight norm is clipped at ``clamp`` (the paper's φ).

Variant flags (all off by default, as in the reference):

``adam``
    r = 1 (plain Adam steps, the norms are still recorded).
``fixed_decay``
    decoupled decay θ(1 − λ), independent of γ.
``grad_averaging=False``
    m accumulates g instead of (1 − β₁)g.
``clamp`` (the reference's class attribute ``Lamb.clamp``)
    the upper clip c of ‖θ‖ in the trust ratio; ``None`` disables it.
``trust_clip`` (fastoptim's; timm's flag of the same name)
    additionally clip r to at most 1, so a step never exceeds the Adam step.
``maximize``
    ascend the objective.

.. warning:: Not supported (``TypeError``): the reference's ``rectify``,
   ``degenerated_to_sgd``, ``n_sma_threshold``, ``pre_norm``,
   ``max_grad_norm``, ``adanorm``, ``adam_debias`` and ``foreach``.  Complex
   parameters are stepped on their real views with the same arithmetic; the
   reference takes its per-parameter path for a group holding one (u = m/(√v+ε)
   and the factor γr/(1−β₁ᵗ) rounded once), so there the two agree to rounding,
   not bit for bit.  The reference overwrites ``p.grad`` when maximizing;
   fastoptim leaves ``.grad`` untouched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._group_step import GroupStepOptimizer
from ._rules import as_scalar, fill_group_defaults, real_views, signed_grad, zeros_like
from ._validate import check_betas, check_lr, check_non_negative

__all__ = ["Lamb", "lamb_reference", "lamb_trust_ratio"]


def lamb_trust_ratio(weight_norm: Tensor, adam_norm: Tensor, eps: float, trust_clip: bool = False) -> Tensor:
    """``φ‖θ‖ / (‖u‖ + ε)``, or 1 where either norm is zero (clipped at 1 with ``trust_clip``)."""
    ratio = torch.where((weight_norm != 0) & (adam_norm != 0), weight_norm / (adam_norm + eps), 1.0)
    return ratio.clamp_(max=1.0) if trust_clip else ratio


def lamb_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    weight_decouple: bool,
    fixed_decay: bool,
    grad_averaging: bool,
    adam: bool,
    clamp: float | None,
    trust_clip: bool,
    maximize: bool,
    step: int,
) -> None:
    """One LAMB step on one parameter at group step ``step``, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    param, grad, exp_avg, exp_avg_sq = real_views(param, grad, state["exp_avg"], state["exp_avg_sq"])
    # θ ← θ(1 − γλ), or θ(1 − λ) with fixed_decay
    if weight_decouple and weight_decay != 0.0:
        param.mul_(1.0 - weight_decay * (1.0 if fixed_decay else lr))
    # m ← β₁m + β₃g;  v ← β₂v + (1 − β₂)g²
    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1 if grad_averaging else 1.0)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    # u ← m · 1/(√v + ε)  (+ λθ: coupled decay)
    update = exp_avg_sq.sqrt().add_(eps).reciprocal_().mul_(exp_avg)
    if not weight_decouple and weight_decay > 0.0:
        update.add_(param, alpha=weight_decay)
    # r ← φ(‖θ‖)/(‖u‖ + ε)
    weight_norm = torch.linalg.vector_norm(param)
    if clamp is not None:
        weight_norm.clamp_(max=clamp)
    adam_norm = torch.linalg.vector_norm(update)
    trust_ratio = lamb_trust_ratio(weight_norm, adam_norm, eps, trust_clip)
    state["weight_norm"], state["adam_norm"], state["trust_ratio"] = weight_norm, adam_norm, trust_ratio
    # θ ← θ − γ/(1 − β₁ᵗ) · r u
    if not adam:
        update.mul_(trust_ratio)
    param.add_(update, alpha=-(lr / (1.0 - math.pow(beta1, step))))


class Lamb(GroupStepOptimizer):
    """LAMB; ``pytorch_optimizer.Lamb``'s interface and defaults (see the module docstring).

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (default 1e-3).
        betas: (β₁, β₂) in [0, 1) (default (0.9, 0.999)).
        weight_decay: λ (default 0).
        weight_decouple: decay the weights directly (AdamW-style, default) or add λθ to u.
        fixed_decay: with weight_decouple, decay by λ rather than γλ.
        grad_averaging: m accumulates (1 − β₁)g (default) or g.
        adam: use r = 1 (plain Adam steps).
        eps: ε (default 1e-6).
        clamp: upper clip of ‖θ‖ in the trust ratio (default 10; None: no clip).
        trust_clip: clip the trust ratio at 1.
        maximize: ascend the objective.
    """

    rule = staticmethod(lamb_reference)
    rule_options = (
        "lr", "eps", "weight_decay", "weight_decouple", "fixed_decay", "grad_averaging", "adam", "clamp", "trust_clip",
        "maximize",
    )
    _per_element_state = ("exp_avg", "exp_avg_sq")
    # the reference's groups have neither: a checkpoint of pytorch_optimizer.Lamb loads (with the defaults)
    _backfilled_options = GroupStepOptimizer._backfilled_options | {"clamp", "trust_clip"}

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        weight_decouple: bool = True,
        fixed_decay: bool = False,
        grad_averaging: bool = True,
        adam: bool = False,
        eps: float = 1e-6,
        *,
        clamp: float | None = 10.0,
        trust_clip: bool = False,
        maximize: bool = False,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_non_negative("weight_decay", weight_decay)
        check_non_negative("epsilon", eps)
        if clamp is not None:
            check_non_negative("clamp", clamp)
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            weight_decouple=weight_decouple,
            fixed_decay=fixed_decay,
            grad_averaging=grad_averaging,
            adam=adam,
            eps=eps,
            clamp=clamp,
            trust_clip=trust_clip,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(self, clamp=10.0, trust_clip=False, maximize=False)

    def _init_state(self, param: Tensor, group: dict) -> dict:
        # The 0-dim norms and ratio exist from the start (the rule replaces them each step), so a kernel can fill them.
        real = torch.zeros((), dtype=param.real.dtype if param.is_complex() else param.dtype, device=param.device)
        state = {"exp_avg": zeros_like(param), "exp_avg_sq": zeros_like(param)}
        return dict(state, weight_norm=real, adam_norm=real.clone(), trust_ratio=real.clone())

    def _advance_group(self, group: dict) -> None:
        group["step"] = group.get("step", 0) + 1

    def _rule_options(self, group: dict) -> dict:
        beta1, beta2 = group["betas"]
        options = {name: group[name] for name in self.rule_options}
        return dict(options, beta1=beta1, beta2=beta2, step=group.get("step", 0))
