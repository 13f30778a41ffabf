r"""RMSprop: divide the gradient by a running RMS of recent gradients (Hinton, lecture 6e; Graves, 2013).

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad\text{if } \lambda \neq 0 \\
    v_t &\leftarrow \alpha v_{t-1} + (1-\alpha) g_t^2 \\
    \bar g_t &\leftarrow \alpha \bar g_{t-1} + (1-\alpha) g_t \quad\text{if centered} \\
    d_t &\leftarrow \begin{cases} \sqrt{v_t - \bar g_t^2} + \epsilon & \text{centered} \\
        \sqrt{v_t} + \epsilon & \text{otherwise} \end{cases} \\
    b_t &\leftarrow \mu b_{t-1} + g_t / d_t, \quad \theta_t \leftarrow \theta_{t-1} - \gamma b_t
        \quad\text{if } \mu > 0 \\
    \theta_t &\leftarrow \theta_{t-1} - \gamma g_t / d_t \quad\text{otherwise}

γ lr, α alpha, ε eps, λ weight_decay, μ momentum.  State per parameter:
``step`` (t, counted but unused by the update), ``square_avg`` (v),
``momentum_buffer`` (b) when μ > 0 and ``grad_avg`` (ḡ) when centered.

.. warning:: ε is added after the square root (TensorFlow adds it inside), and
   with momentum the learning rate scales the whole buffer, as in torch.optim.
"""

from __future__ import annotations

from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import (
    add_eps,
    as_scalar,
    ema_,
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

__all__ = ["RMSprop", "rmsprop_reference"]


def rmsprop_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    capturable: bool = False,
    differentiable: bool = False,
) -> None:
    """One RMSprop step on one parameter, in place (the reference every kernel matches).

    ``capturable`` changes nothing here: torch's single-tensor update is the
    same arithmetic with or without it.
    """
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    step_t = state["step"]
    step_t += 1
    grad = l2_decay(grad, param, weight_decay)
    param, grad, square_avg, grad_avg, buf = real_views(
        param, grad, state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer")
    )
    ema_square_(square_avg, grad, alpha)
    if centered:
        ema_(grad_avg, grad, alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = add_eps(avg, eps, differentiable)
    if momentum > 0:
        buf.mul_(momentum).addcdiv_(grad, avg)
        param.add_(buf, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)


class RMSprop(ElementwiseOptimizer):
    """RMSprop; torch.optim.RMSprop's interface (every argument may be positional, as in torch).

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (float or 1-element tensor; default 1e-2).
        alpha: α, the smoothing constant of the averages (default 0.99).
        eps: ε added to the denominator (default 1e-8).
        weight_decay: L2 penalty λ (default 0).
        momentum: μ (default 0).
        centered: normalise by an estimate of the gradient's variance instead
            of its second moment.
        capturable, foreach: accepted for compatibility; fastoptim picks the
            backend itself.  ``capturable`` keeps ``step`` on the parameter's device.
        maximize: ascend the objective instead of descending it.
        differentiable: let autograd flow through ``step()``.

    Example::

        >>> opt = fastoptim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, centered=True)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """

    rule = staticmethod(rmsprop_reference)
    rule_options = (
        "lr",
        "alpha",
        "eps",
        "weight_decay",
        "momentum",
        "centered",
        "maximize",
        "capturable",
        "differentiable",
    )
    _per_element_state = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        check_lr(lr)
        check_non_negative("epsilon", eps)
        check_non_negative("momentum", momentum)
        check_non_negative("weight_decay", weight_decay)
        check_non_negative("alpha", alpha)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(
            self, momentum=0, centered=False, foreach=None, maximize=False, differentiable=False, capturable=False
        )
        tensorize_scalar_state(self, ("step",), lambda group: group["capturable"])

    def _init_state(self, param: Tensor, group: dict) -> dict:
        state = {"step": new_step(param, group), "square_avg": zeros_like(param)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = zeros_like(param)
        if group["centered"]:
            state["grad_avg"] = zeros_like(param)
        return state
