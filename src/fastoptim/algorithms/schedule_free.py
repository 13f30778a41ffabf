r"""Schedule-Free AdamW and SGD (Defazio et al., 2024, "The Road Less Scheduled", NeurIPS, arXiv:2405.15682).

Schedule-Free replaces the learning-rate schedule by an average of the
iterates.  It keeps three sequences: z (the base SGD/Adam iterate), x (the
weighted average of the z's, the point to *evaluate*) and y (the point where
the gradient is taken, between them):

.. math::

    y_t &= (1-\beta) z_t + \beta x_t \\
    z_{t+1} &= z_t - \gamma_t \hat g_t \\
    x_{t+1} &= (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},
        \qquad c_{t+1} = \frac{w_{t+1}}{\sum_{i\le t+1} w_i},\;
        w_t = t^{r}\,\gamma_{\max,t}^{\,p}

where ĝ is the gradient at y (SGD) or the gradient at y divided by Adam's
bias-corrected √v + ε (AdamW), plus λy (weight decay taken at y), and
γₜ = γ·min(1, t/warmup_steps).  Only z and y are stored: the parameter tensor
*holds y while training* and x is recovered from y and z when switching
(x = (y − (1−β)z)/β).  Hence the two mode switches, which the reference
requires and fastoptim keeps:

``optimizer.train()``
    before training (and after each evaluation): the parameters become y.
``optimizer.eval()``
    before evaluating or saving a checkpoint: the parameters become x.

``step()`` raises unless the optimizer is in train mode.  In terms of y the
step is done in place, without x:

.. math::

    y \leftarrow \operatorname{lerp}(y, z, c_{t+1}) + \gamma_t\bigl(\beta(1-c_{t+1}) - 1\bigr)\hat g,
    \qquad z \leftarrow z - \gamma_t \hat g

γ lr, β ``betas[0]`` (AdamW) or ``momentum`` (SGD), β₂ ``betas[1]``, ε ``eps``,
λ ``weight_decay``, r ``r``, p ``weight_lr_power``.  Per-group values (the
reference's, kept in ``param_groups`` so that checkpoints move between the two
libraries): ``k`` (steps taken), ``train_mode``, ``weight_sum``, ``lr_max``,
``scheduled_lr`` (γₜ, for logging).  Per parameter: ``z`` and, for AdamW,
``exp_avg_sq`` (v).  Adam's bias correction 1 − β₂ᵏ uses the group's k.

The reference is Meta's ``schedulefree`` package: ``schedulefree.AdamWScheduleFree``
and ``schedulefree.SGDScheduleFree`` -- the package's default (exported,
documented) classes, not the ``*Reference`` variants that store x and y
explicitly -- matched bit for bit with their defaults (AdamW: γ = 0.0025,
β = (0.9, 0.999), ε = 1e-8; SGD: γ = 1, momentum 0.9; λ = 0, warmup 0, r = 0,
p = 2).  Their ``foreach`` and for-loop paths do the same arithmetic; the
``foreach`` option is accepted and kept in the groups for that reason, and
ignored.

.. warning:: The reference divides ``p.grad`` in place (AdamW) or adds the
   weight decay to it (SGD); fastoptim leaves ``.grad`` untouched.  Stepping
   outside train mode raises ``RuntimeError`` (a subclass of the reference's
   bare ``Exception``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._group_step import GroupStepOptimizer
from ._rules import bias_correction, ema_square_, l2_decay, scalar_value, zeros_like
from ._validate import check_lr, check_non_negative

__all__ = [
    "AdamWScheduleFree",
    "SGDScheduleFree",
    "adamw_schedule_free_reference",
    "sgd_schedule_free_reference",
]


def _interpolate_(param: Tensor, z: Tensor, ckp1: float, lr: float, beta: float, update: Tensor) -> None:
    """y ← lerp(y, z, c) + γ(β(1 − c) − 1)ĝ;  z ← z − γĝ (both schedule-free steps end with this)."""
    param.lerp_(z, ckp1)
    param.add_(update, alpha=lr * (beta * (1 - ckp1) - 1))
    z.sub_(update, alpha=lr)


def sgd_schedule_free_reference(
    param: Tensor, grad: Tensor, state: dict, *, lr: float, momentum: float, weight_decay: float, ckp1: float
) -> None:
    """One Schedule-Free SGD step on one parameter (holding y), in place (the reference every kernel matches)."""
    # ĝ ← g + λy
    grad = l2_decay(grad, param, weight_decay)
    _interpolate_(param, state["z"], ckp1, lr, momentum, grad)


def adamw_schedule_free_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    ckp1: float,
    step: int,
) -> None:
    """One Schedule-Free AdamW step on one parameter (holding y) at group step ``step``, in place."""
    # v ← β₂v + (1 − β₂)g²;  ĝ ← g / (√(v/(1 − β₂ᵏ)) + ε) + λy
    exp_avg_sq = state["exp_avg_sq"]
    ema_square_(exp_avg_sq, grad, beta2)
    denom = exp_avg_sq.div(bias_correction(beta2, step)).sqrt_().add_(eps)
    # torch's in-place complex division rounds differently from the out-of-place one; the reference divides in place
    update = grad.clone().div_(denom) if grad.is_complex() else grad.div(denom)
    if weight_decay != 0:
        update.add_(param, alpha=weight_decay)
    _interpolate_(param, state["z"], ckp1, lr, beta1, update)


class _ScheduleFree(GroupStepOptimizer):
    """The group bookkeeping and the train/eval switch that both variants share."""

    _per_element_state = ("z",)

    def _interpolation(self, group: dict) -> float:
        """β of y = (1 − β)z + βx."""
        raise NotImplementedError

    @torch.no_grad()
    def train(self) -> None:
        """Switch to training: every parameter that has state goes from x to y."""
        self._switch(train=True)

    @torch.no_grad()
    def eval(self) -> None:
        """Switch to evaluation: every parameter that has state goes from y to x."""
        self._switch(train=False)

    def _switch(self, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            beta = self._interpolation(group)
            weight = 1 - beta if train else 1 - 1 / beta
            for p in group["params"]:
                state = self.state.get(p)
                if state and "z" in state:
                    p.lerp_(end=state["z"].to(p.device), weight=weight)
            group["train_mode"] = train

    def _check_ready(self) -> None:
        # Like the reference, only the first group's mode is consulted.
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(
                "Optimizer was not in train mode when step is called. "
                "Please insert .train() and .eval() calls on the optimizer. See documentation for details."
            )

    def _advance_group(self, group: dict) -> None:
        k = group["k"]
        warmup_steps = group["warmup_steps"]
        lr = scalar_value(group["lr"]) * ((k + 1) / warmup_steps if k < warmup_steps else 1.0)
        group["scheduled_lr"] = lr
        group["lr_max"] = max(lr, group["lr_max"])
        group["weight_sum"] = group["weight_sum"] + self._weight(group, k + 1)
        group["k"] = k + 1

    @staticmethod
    def _weight(group: dict, k: int) -> float:
        """w_k = k^r · γ_max^p (γ_max as the group holds it after step k's update)."""
        return (k**group["r"]) * (group["lr_max"] ** group["weight_lr_power"])

    def _averaging_options(self, group: dict) -> dict[str, Any]:
        """γₜ and c of the step just advanced (read-only: explain() calls it too)."""
        try:
            ckp1 = self._weight(group, group["k"]) / group["weight_sum"]
        except ZeroDivisionError:
            ckp1 = 0
        return dict(lr=group["scheduled_lr"], ckp1=ckp1, weight_decay=group["weight_decay"])


def _defaults(head: dict, r, warmup_steps, weight_lr_power, weight_decay, foreach) -> dict:
    """The reference's ``defaults``, in its key order: the variant's own options, then the averaging bookkeeping."""
    return dict(
        head,
        r=r,
        k=0,
        warmup_steps=warmup_steps,
        train_mode=False,
        weight_sum=0.0,
        lr_max=-1.0,
        scheduled_lr=0.0,
        weight_lr_power=weight_lr_power,
        weight_decay=weight_decay,
        foreach=foreach,
    )


def _check_common(lr, weight_decay, warmup_steps, weight_lr_power) -> None:
    check_lr(lr)
    check_non_negative("weight_decay", weight_decay)
    check_non_negative("warmup_steps", warmup_steps)
    check_non_negative("weight_lr_power", weight_lr_power)


class AdamWScheduleFree(_ScheduleFree):
    """Schedule-Free AdamW; ``schedulefree.AdamWScheduleFree``'s interface and defaults.

    Call ``train()`` before training and ``eval()`` before evaluating or saving.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: γ (default 0.0025).
        betas: (β, β₂): β interpolates y between z and x, β₂ is Adam's second-moment EMA
            (default (0.9, 0.999)); β in (0, 1), β₂ in [0, 1).
        eps: ε (default 1e-8).
        weight_decay: λ, taken at y (default 0).
        warmup_steps: linear warmup of γ over this many steps (default 0).
        r: polynomial weighting kʳ of the average (default 0).
        weight_lr_power: p, the average's weights grow as γ_maxᵖ (default 2).
        foreach: accepted and kept in the groups; ignored (both reference paths agree).

    Example::

        >>> opt = fastoptim.AdamWScheduleFree(model.parameters(), lr=2.5e-3, warmup_steps=1000)
        >>> opt.train()   # and model.train()
        >>> ...           # training steps
        >>> opt.eval()    # and model.eval(), before evaluating or saving
    """

    rule = staticmethod(adamw_schedule_free_reference)
    _per_element_state = ("z", "exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = True,
    ) -> None:
        _check_common(lr, weight_decay, warmup_steps, weight_lr_power)
        if not 0.0 < betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]} (must be in (0, 1))")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        check_non_negative("epsilon", eps)
        head = dict(lr=lr, betas=betas, eps=eps)
        super().__init__(params, _defaults(head, r, warmup_steps, weight_lr_power, weight_decay, foreach))

    def _interpolation(self, group: dict) -> float:
        return group["betas"][0]

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {"z": torch.clone(param, memory_format=torch.preserve_format).detach(), "exp_avg_sq": zeros_like(param)}

    def _rule_options(self, group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(self._averaging_options(group), beta1=beta1, beta2=beta2, eps=group["eps"], step=group["k"])


class SGDScheduleFree(_ScheduleFree):
    """Schedule-Free SGD; ``schedulefree.SGDScheduleFree``'s interface and defaults.

    Call ``train()`` before training and ``eval()`` before evaluating or saving.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: γ (default 1.0).
        momentum: β, interpolates y between z and x, in (0, 1) (default 0.9).
        weight_decay: λ, taken at y (default 0).
        warmup_steps: linear warmup of γ over this many steps (default 0).
        r: polynomial weighting kʳ of the average (default 0).
        weight_lr_power: p, the average's weights grow as γ_maxᵖ (default 2).
        foreach: accepted and kept in the groups; ignored (both reference paths agree).
    """

    rule = staticmethod(sgd_schedule_free_reference)

    def __init__(
        self,
        params,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2,
        foreach: bool | None = True,
    ) -> None:
        _check_common(lr, weight_decay, warmup_steps, weight_lr_power)
        if momentum <= 0 or momentum >= 1:
            raise ValueError(f"Momentum must be between 0 and 1 exclusive: {momentum}")
        head = dict(lr=lr, momentum=momentum)
        super().__init__(params, _defaults(head, r, warmup_steps, weight_lr_power, weight_decay, foreach))

    def _interpolation(self, group: dict) -> float:
        return group["momentum"]

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {"z": torch.clone(param, memory_format=torch.preserve_format).detach()}

    def _rule_options(self, group: dict) -> dict:
        return dict(self._averaging_options(group), momentum=group["momentum"])
