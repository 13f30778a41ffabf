r"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg, 2017, "Large Batch Training of
Convolutional Networks", arXiv:1708.03888).

For a parameter with more than one dimension (a weight matrix or kernel):

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    r_t &\leftarrow \begin{cases}
        \eta\,\lVert\theta_{t-1}\rVert / (\lVert g_t\rVert + \lambda\lVert\theta_{t-1}\rVert)
            & \lVert\theta_{t-1}\rVert > 0 \text{ and the denominator} > 0 \\
        1 & \text{otherwise} \end{cases} \\
    g_t &\leftarrow r_t\,(g_t + \lambda\theta_{t-1})

then, for every parameter (0-dim and 1-D ones -- biases, norm scales -- go
straight here, with neither weight decay nor trust ratio):

.. math::

    b_t &\leftarrow \mu b_{t-1} + (1-\tau) g_t \quad (b_0 = 0) \\
    g_t &\leftarrow \begin{cases} g_t + \mu b_t & \text{nesterov} \\ b_t & \text{otherwise} \end{cases} \\
    \theta_t &\leftarrow \theta_{t-1} - \gamma g_t

γ lr, η ``trust_coefficient``, λ ``weight_decay``, μ ``momentum``, τ
``dampening``, b the ``momentum_buffer`` (only when μ > 0).  Norms are L2 norms
of the whole tensor (``torch.linalg.vector_norm``), computed per parameter:
the trust ratio r makes each layer's step proportional to its weights' size,
which keeps very large batches (large γ) stable.

The reference is ``pytorch_optimizer.LARS`` (kozistr/pytorch_optimizer),
matched bit for bit with its defaults (γ = 1e-3, μ = 0.9, τ = 0, η = 1e-3,
λ = 0, no Nesterov) -- its default ``foreach`` path and its per-parameter path
do the same arithmetic.  As there, the momentum buffer starts at zero (torch's
SGD starts it at the first gradient), the weight decay is added even when λ = 0
(so an infinite weight gives NaN, as in the reference), and the group counts
its steps in ``group["step"]`` (not used by the update).

.. warning:: The reference overwrites ``p.grad`` with the final update
   direction; fastoptim leaves ``.grad`` untouched.  ``foreach`` is not
   accepted (``TypeError``): fastoptim picks the backend itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._group_step import GroupStepOptimizer
from ._rules import as_scalar, fill_group_defaults, signed_grad, zeros_like
from ._validate import check_lr, check_non_negative

__all__ = ["LARS", "lars_ratio_from_norms", "lars_reference", "lars_trust_ratio"]


def lars_trust_ratio(param: Tensor, grad: Tensor, *, weight_decay: float, trust_coefficient: float) -> Tensor:
    """``η‖θ‖ / (‖g‖ + λ‖θ‖)``, or 1 where a norm or the denominator is not positive (0-dim)."""
    return lars_ratio_from_norms(
        torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad), weight_decay, trust_coefficient
    )


def lars_ratio_from_norms(param_norm: Tensor, grad_norm: Tensor, weight_decay: float, trust_coefficient: float):
    """The trust ratio from the norms (element-wise, so it takes stacked norms of many tensors too)."""
    one = torch.ones_like(param_norm)
    denominator = grad_norm + weight_decay * param_norm
    return torch.where(
        param_norm > 0.0,
        torch.where(denominator > 0.0, trust_coefficient * param_norm / denominator, one),
        one,
    )


def lars_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    weight_decay: float,
    momentum: float,
    dampening: float,
    trust_coefficient: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    """One LARS step on one parameter, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    if param.dim() > 1:
        # g ← r(g + λθ), the trust ratio r from the norms before the update
        trust_ratio = lars_trust_ratio(param, grad, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
        grad = grad.add(param, alpha=weight_decay).mul_(trust_ratio)
    if momentum > 0.0:
        # b ← μb + (1 − τ)g;  g ← g + μb (nesterov) or b
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(grad, alpha=1.0 - dampening)
        grad = grad.add(buf, alpha=momentum) if nesterov else buf
    # θ ← θ − γg
    param.add_(grad, alpha=-lr)


class LARS(GroupStepOptimizer):
    """LARS; ``pytorch_optimizer.LARS``'s interface and defaults (see the module docstring).

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (default 1e-3).
        weight_decay: λ, added to the gradient of matrices only (default 0).
        momentum: μ in [0, 1) (default 0.9).
        dampening: τ in [0, 1) (default 0).
        trust_coefficient: η (default 1e-3).
        nesterov: Nesterov momentum (default False).
        maximize: ascend the objective.
    """

    rule = staticmethod(lars_reference)
    _per_element_state = ("momentum_buffer",)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        dampening: float = 0.0,
        trust_coefficient: float = 1e-3,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        check_lr(lr)
        check_non_negative("weight_decay", weight_decay)
        for name, value in (("momentum", momentum), ("dampening", dampening)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Invalid {name} value: {value} (must be in [0, 1))")
        check_non_negative("trust_coefficient", trust_coefficient)
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            dampening=dampening,
            trust_coefficient=trust_coefficient,
            nesterov=nesterov,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(self, maximize=False)

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {"momentum_buffer": zeros_like(param)} if group["momentum"] > 0.0 else {}

    def _advance_group(self, group: dict) -> None:
        group["step"] = group.get("step", 0) + 1

    rule_options = ("lr", "weight_decay", "momentum", "dampening", "trust_coefficient", "nesterov", "maximize")
