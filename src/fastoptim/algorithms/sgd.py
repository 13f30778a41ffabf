r"""Stochastic gradient descent, with momentum, dampening, Nesterov and weight decay.

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad\text{if } \lambda \neq 0 \\
    b_t &\leftarrow \begin{cases} g_t & t = 1 \\ \mu b_{t-1} + (1-\tau) g_t & t > 1 \end{cases}
        \quad\text{if } \mu \neq 0 \\
    g_t &\leftarrow \begin{cases} g_t + \mu b_t & \text{nesterov} \\ b_t & \text{otherwise} \end{cases} \\
    \theta_t &\leftarrow \theta_{t-1} - \gamma g_t

γ lr, μ momentum, τ dampening, λ weight_decay, b the ``momentum_buffer``.

.. warning:: As in torch.optim (and unlike Sutskever et al.), the learning rate
   multiplies the whole velocity, ``θ ← θ − γb``, not each gradient as it enters it.
"""

from __future__ import annotations

from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import as_scalar, l2_decay, signed_grad
from ._validate import check_fused_flags

__all__ = ["SGD", "sgd_reference"]


def sgd_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    momentum: float,
    dampening: float,
    weight_decay,
    nesterov: bool,
    maximize: bool,
    differentiable: bool = False,
) -> None:
    """One SGD step on one parameter, in place (the reference every kernel matches)."""
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    grad = l2_decay(grad, param, weight_decay, differentiable=True)
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = grad.detach().clone()
            state["momentum_buffer"] = buf
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(buf, alpha=momentum) if nesterov else buf
    if isinstance(lr, Tensor) and lr.requires_grad:
        param.addcmul_(grad, lr, value=-1)
    else:
        param.add_(grad, alpha=-lr)


class SGD(ElementwiseOptimizer):
    """Stochastic gradient descent (optionally with momentum); torch.optim.SGD's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (float or 1-element tensor; default 1e-3).
        momentum: momentum factor μ (default 0).
        dampening: dampening τ of the gradient entering the buffer (default 0).
        weight_decay: L2 penalty λ (default 0).
        nesterov: use Nesterov momentum (needs μ > 0 and τ = 0).
        maximize: ascend the objective instead of descending it.
        foreach, fused: accepted for compatibility; fastoptim picks the fastest
            exact backend itself (see ``fastoptim.kernels``).
        differentiable: let autograd flow through ``step()``.

    Example::

        >>> opt = fastoptim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """

    rule = staticmethod(sgd_reference)
    supports_sparse_grad = True
    rule_options = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "differentiable")
    _per_element_state = ("momentum_buffer",)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)
        check_fused_flags(fused=fused, foreach=foreach, differentiable=differentiable)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)
