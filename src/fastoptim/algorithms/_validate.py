"""Constructor checks shared by the algorithms.

Messages and exception types are torch.optim's, because user code and tests
match on them.  Each helper raises before the optimizer is built, so a bad
argument never leaves a half-made optimizer behind.
"""

from __future__ import annotations

from torch import Tensor


def check_lr(lr, *, foreach=None, capturable=False) -> None:
    """A tensor lr must have one element (and cannot go with foreach unless capturable)."""
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_non_negative(what: str, value) -> None:
    """``Invalid <what> value: v`` unless ``0 <= v`` (NaN is rejected too)."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what} value: {value}")


def check_betas(betas) -> None:
    """Each beta must lie in [0, 1)."""
    for index in (0, 1):
        if not 0.0 <= betas[index] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {betas[index]}")


def check_fused_flags(*, fused, foreach, differentiable) -> None:
    """``fused`` excludes ``differentiable`` and ``foreach`` (checked after the base init, as torch does)."""
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def check_at_least(what: str, value, bound=0) -> None:
    """``<what> should be >= <bound> but is: v`` (the wording of torch's newer optimizers, Adafactor and Muon)."""
    if not bound <= value:
        raise ValueError(f"{what} should be >= {bound} but is: {value}")


def check_lr_at_least_zero(lr) -> None:
    """A tensor lr must have one element; lr >= 0, in Adafactor's and Muon's wording."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    check_at_least("Learning rate", lr)
