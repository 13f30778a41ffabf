"""Pieces that many update rules share, each written once.

Every reference rule in this package is built from these.  They follow
torch.optim's single-tensor ("for-loop") arithmetic operation by operation,
so a reference rule reproduces torch's results bit for bit; the fast kernels
are then tested against the reference rules.

Symbols used in the docstrings:  θ parameter, g gradient, γ learning rate,
λ weight decay, β₁ β₂ moment coefficients, t step number (1-based).
"""

from __future__ import annotations

import torch
from torch import Tensor

Scalar = float | Tensor


def as_scalar(x: Scalar) -> Scalar:
    """A 1-element tensor hyper-parameter becomes 0-dim (floats stay floats)."""
    if isinstance(x, Tensor) and x.dim() != 0:
        return x.squeeze()
    return x


def scalar_value(x: Scalar) -> float:
    """A hyper-parameter as a Python number (reads a tensor once).

    While compiling, a tensor stays a tensor (as torch's ``_get_value`` does):
    ``.item()`` would break the graph.
    """
    if isinstance(x, Tensor) and not torch.compiler.is_compiling():
        return x.item()
    return x


def step_dtype() -> torch.dtype:
    """dtype of the ``step`` counter: float64 when the default dtype is, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def new_step(param: Tensor, group: dict) -> Tensor:
    """A zero ``step`` counter laid out as torch lays it out.

    A plain CPU float tensor normally; on the parameter's device as float32
    when the group is ``fused`` or ``capturable``.
    """
    if group.get("fused") or group.get("capturable"):
        dtype = torch.float32 if group.get("fused") else step_dtype()
        return torch.zeros((), dtype=dtype, device=param.device)
    return torch.tensor(0.0, dtype=step_dtype())


def zeros_like(param: Tensor) -> Tensor:
    """A state buffer shaped, strided and typed like the parameter."""
    return torch.zeros_like(param, memory_format=torch.preserve_format)


def signed_grad(grad: Tensor, maximize: bool) -> Tensor:
    """``g`` or, when maximising, ``-g`` (a new tensor; the .grad is untouched)."""
    return -grad if maximize else grad


def l2_decay(grad: Tensor, param: Tensor, weight_decay: Scalar, differentiable: bool = False) -> Tensor:
    """Coupled weight decay (L2 penalty): ``g ← g + λθ``; returns the new gradient."""
    if weight_decay == 0:
        return grad
    if differentiable and isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
        return grad.addcmul_(param.clone(), weight_decay)
    return grad.add(param, alpha=weight_decay)


def decoupled_decay_(param: Tensor, lr: Scalar, weight_decay: Scalar) -> None:
    """Decoupled weight decay (AdamW): ``θ ← θ(1 − γλ)``, in place."""
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)


def apply_weight_decay(
    param: Tensor, grad: Tensor, *, lr: Scalar, weight_decay: Scalar, decoupled: bool, differentiable: bool = False
) -> Tensor:
    """Either decay flavour; returns the (possibly new) gradient."""
    if decoupled:
        decoupled_decay_(param, lr, weight_decay)
        return grad
    return l2_decay(grad, param, weight_decay, differentiable)


def real_views(*tensors: Tensor | None) -> list[Tensor | None]:
    """Complex tensors seen as real ``(..., 2)`` views, so real math applies to them."""
    return [torch.view_as_real(t) if t is not None and torch.is_complex(t) else t for t in tensors]


def ema_(average: Tensor, value: Tensor, beta: Scalar) -> None:
    """Exponential moving average ``m ← βm + (1−β)x``, in place (torch's lerp form)."""
    average.lerp_(value, 1 - beta)


def ema_square_(average: Tensor, value: Tensor, beta: Scalar) -> None:
    """EMA of the square ``v ← βv + (1−β)x²``, in place."""
    average.mul_(beta).addcmul_(value, value, value=1 - beta)


def bias_correction(beta: Scalar, step: Scalar) -> Scalar:
    """``1 − βᵗ``: corrects a zero-initialised EMA after ``t`` steps."""
    return 1 - beta**step


def scalar_state(value: Scalar, param: Tensor, on_param_device: bool) -> Tensor:
    """A 0-dim state value (``step``, ``mu_product``, ``eta``, ...) as a float tensor of :func:`step_dtype`.

    It lives on the parameter's device when ``on_param_device`` (capturable
    groups; ASGD always), on the CPU otherwise, where reading it is cheap.
    """
    device = param.device if on_param_device else "cpu"
    # as_tensor + detach: a tensor lr (even one that requires grad) is copied, never read back as a number
    return torch.as_tensor(value, dtype=step_dtype(), device=device).detach().clone()


def tensorize_scalar_state(optimizer, keys: tuple[str, ...], on_param_device) -> None:
    """Turn scalar state that old checkpoints stored as numbers into tensors (for ``__setstate__``).

    ``on_param_device(group)`` says where a group's scalars live (see :func:`scalar_state`).
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            entry = optimizer.state.get(param)
            if not entry:
                continue
            for key in keys:
                if not torch.is_tensor(entry[key]):
                    entry[key] = scalar_state(entry[key], param, on_param_device(group))


def add_eps(denominator: Tensor, eps: float, differentiable: bool) -> Tensor:
    """``d + ε`` for a freshly computed denominator ``d`` (such as ``√v``).

    In place normally (``d`` is a temporary).  Out of place when differentiable:
    autograd may need ``d`` itself, e.g. the backward of the ``sqrt`` that made it.
    """
    return denominator.add(eps) if differentiable else denominator.add_(eps)


def fill_group_defaults(optimizer, **defaults) -> None:
    """Give every group the options that older checkpoints lack (for ``__setstate__``)."""
    for group in optimizer.param_groups:
        for key, value in defaults.items():
            group.setdefault(key, value)


def advance_step(state: dict, tensor_math: bool) -> Scalar:
    """``t ← t + 1`` on the state's ``step`` tensor, in place; returns the new t.

    As a tensor when ``tensor_math`` (capturable: no host read, so the step can
    be graph-captured), else as a Python number read once.
    """
    step_t = state["step"]
    step_t += 1
    return step_t if tensor_math else scalar_value(step_t)
