r"""Weight averaging (SWA, EMA), a drop-in for :mod:`torch.optim.swa_utils`.

Averaging the weights visited late in training gives a model that usually
generalises better than the last iterate:

* **SWA** (Stochastic Weight Averaging, https://arxiv.org/abs/1803.05407): the
  equal-weight mean of the models seen so far,
  :math:`\bar W_{n+1} = \bar W_n + (W - \bar W_n)/(n + 1)`;
* **EMA** (exponential moving average, a variant of Polyak averaging):
  :math:`\bar W_{n+1} = d\,\bar W_n + (1 - d)\,W` with ``decay`` d.

Typical use::

    >>> swa_model = AveragedModel(model)                      # SWA
    >>> ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    >>> swa_sched = SWALR(optimizer, swa_lr=0.05)
    >>> for epoch in range(100):
    >>>     train_one_epoch(model, optimizer)
    >>>     if epoch >= 75:
    >>>         swa_model.update_parameters(model)
    >>>         swa_sched.step()
    >>> update_bn(loader, swa_model)                           # recompute BatchNorm stats

The averages are computed with the same tensor operations as torch's, in the
same order, so the averaged weights match torch's bit for bit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import Module
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

from .lr_scheduler import LRScheduler, _per_group

__all__ = [
    "AveragedModel",
    "update_bn",
    "SWALR",
    "get_ema_multi_avg_fn",
    "get_swa_multi_avg_fn",
    "get_ema_avg_fn",
    "get_swa_avg_fn",
]

TensorList = list[Tensor] | tuple[Tensor, ...]


# --------------------------------------------------------------------------
# Averaging functions.  The "multi" ones update lists of tensors in place;
# the others return the new average of one tensor.
# --------------------------------------------------------------------------


def _check_decay(decay) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] range."
        )


def _lerp_supported(tensors: TensorList) -> bool:
    """``torch._foreach_lerp_`` handles floating and complex tensors only."""
    return torch.is_floating_point(tensors[0]) or torch.is_complex(tensors[0])


def get_ema_multi_avg_fn(decay=0.999):
    r"""In-place EMA of lists of tensors: :math:`\bar W ← \bar W + (1 - d)(W - \bar W)`.

    Args:
        decay (float): ``d``, in [0, 1]; the weight kept by the old average. Default: 0.999.
    """
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(ema_param_list: TensorList, current_param_list: TensorList, _) -> None:
        if _lerp_supported(ema_param_list):
            torch._foreach_lerp_(ema_param_list, current_param_list, 1 - decay)
        else:
            for p_ema, p_model in zip(ema_param_list, current_param_list, strict=True):
                p_ema.copy_(p_ema * decay + p_model * (1 - decay))

    return ema_update


def get_swa_multi_avg_fn():
    r"""In-place running mean of lists of tensors: :math:`\bar W ← \bar W + (W - \bar W)/(n+1)`."""

    @torch.no_grad()
    def swa_update(
        averaged_param_list: TensorList, current_param_list: TensorList, num_averaged
    ) -> None:
        if _lerp_supported(averaged_param_list):
            torch._foreach_lerp_(averaged_param_list, current_param_list, 1 / (num_averaged + 1))
            return
        diffs = torch._foreach_sub(current_param_list, averaged_param_list)
        if isinstance(num_averaged, Tensor):
            divisors = [num_averaged + 1] * len(averaged_param_list)
            torch._foreach_addcdiv_(averaged_param_list, diffs, divisors)
        else:
            torch._foreach_add_(averaged_param_list, diffs, alpha=1.0 / (num_averaged + 1))

    return swa_update


def get_ema_avg_fn(decay=0.999):
    r"""EMA of one tensor: returns :math:`d\,\bar W + (1 - d)\,W`.

    Args:
        decay (float): ``d``, in [0, 1]. Default: 0.999.
    """
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(ema_param: Tensor, current_param: Tensor, num_averaged):
        return decay * ema_param + (1 - decay) * current_param

    return ema_update


def get_swa_avg_fn():
    r"""Running mean of one tensor: returns :math:`\bar W + (W - \bar W)/(n + 1)`."""

    @torch.no_grad()
    def swa_update(averaged_param: Tensor, current_param: Tensor, num_averaged):
        return averaged_param + (current_param - averaged_param) / (num_averaged + 1)

    return swa_update


def _group_by_device_and_dtype(averaged: list[Tensor], current: list[Tensor]):
    """``{(device, dtype): (averaged tensors, current tensors)}``, keyed by the averaged side."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for p_avg, p_model in zip(averaged, current):
        avg_list, model_list = groups.setdefault((p_avg.device, p_avg.dtype), ([], []))
        avg_list.append(p_avg)
        model_list.append(p_model)
    return groups


class AveragedModel(Module):
    r"""A copy of ``model`` whose weights are a running average (SWA) or an EMA.

    ``update_parameters(model)`` folds the current weights of ``model`` into
    the average: the first call copies them, later calls average.  ``forward``
    runs the averaged copy.

    Args:
        model (Module): the model to average; it is deep-copied.
        device (torch.device, optional): where to keep the average.
        avg_fn (callable, optional): ``(averaged, current, n_averaged) -> new
            averaged`` for one tensor, e.g. :func:`get_ema_avg_fn`.
        multi_avg_fn (callable, optional): ``(averaged list, current list,
            n_averaged) -> None``, updating in place, e.g.
            :func:`get_ema_multi_avg_fn` (faster).  Give at most one of the two;
            neither means SWA.
        use_buffers (bool): average the buffers too (e.g. BatchNorm statistics)
            instead of copying them from ``model``. Default: False.

    Attributes: ``module`` (the averaged copy) and the buffer ``n_averaged``.
    ``avg_fn`` / ``multi_avg_fn`` are not part of ``state_dict()``.

    .. note::
        With BatchNorm, either set ``use_buffers=True`` or call
        :func:`update_bn` on the averaged model after training: the running
        statistics of the last model do not fit the averaged weights.
    """

    n_averaged: Tensor

    def __init__(
        self,
        model: Module,
        device: int | torch.device | None = None,
        avg_fn: Callable[[Tensor, Tensor, Tensor | int], Tensor] | None = None,
        multi_avg_fn: Callable[[TensorList, TensorList, Tensor | int], None] | None = None,
        use_buffers=False,
    ) -> None:
        super().__init__()
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")
        self.module = deepcopy(model)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _averaged_tensors(self, model: Module):
        """The (averaged, source) tensor pairs that ``update_parameters`` averages."""
        if self.use_buffers:
            return zip(
                itertools.chain(self.module.parameters(), self.module.buffers()),
                itertools.chain(model.parameters(), model.buffers()),
            )
        return zip(self.parameters(), model.parameters())

    def update_parameters(self, model: Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        averaged, current = [], []
        first_update = bool(self.n_averaged == 0)
        for p_averaged, p_model in self._averaged_tensors(model):
            p_model_ = p_model.detach().to(p_averaged.device)
            averaged.append(p_averaged.detach())
            current.append(p_model_)
            if first_update:
                p_averaged.detach().copy_(p_model_)

        if self.n_averaged > 0:
            if self.multi_avg_fn is not None or self.avg_fn is None:
                self._average_by_group(averaged, current)
            else:
                for p_averaged, p_model in zip(averaged, current, strict=True):
                    n_averaged = self.n_averaged.to(p_averaged.device)
                    p_averaged.copy_(self.avg_fn(p_averaged, p_model, n_averaged))

        if not self.use_buffers:
            # Buffers are not averaged: keep them equal to the source model's.
            for b_swa, b_model in zip(self.module.buffers(), model.buffers(), strict=True):
                b_swa.detach().copy_(b_model.detach().to(b_swa.device))
        self.n_averaged += 1

    def _average_by_group(self, averaged: list[Tensor], current: list[Tensor]) -> None:
        """Apply ``multi_avg_fn`` (or SWA) to each device/dtype group of tensors.

        Default SWA uses the in-place foreach form where torch has foreach
        kernels (CUDA, XPU, ...) and the one-tensor form elsewhere (CPU), as
        torch does; the two round differently.
        """
        for (device, _), (avg_group, model_group) in _group_by_device_and_dtype(
            averaged, current
        ).items():
            n_averaged = self.n_averaged.to(device)
            if self.multi_avg_fn is not None:
                self.multi_avg_fn(avg_group, model_group, n_averaged)
            elif device.type in _get_foreach_kernels_supported_devices():
                get_swa_multi_avg_fn()(avg_group, model_group, n_averaged)
            else:
                swa = get_swa_avg_fn()
                for p_averaged, p_model in zip(avg_group, model_group, strict=True):
                    p_averaged.copy_(swa(p_averaged, p_model, n_averaged))


@torch.no_grad()
def update_bn(loader: Iterable[Any], model: Module, device: int | torch.device | None = None) -> None:
    r"""Recompute the BatchNorm running statistics of ``model`` with one pass over ``loader``.

    The statistics are reset, then accumulated as an equal-weight mean over
    all batches (``momentum=None``); each module's momentum and the model's
    train/eval mode are restored afterwards.  Does nothing without BatchNorm.

    Args:
        loader (iterable): batches; a batch is a Tensor, or a list/tuple whose
            first element is the input Tensor.
        model (Module): the model, typically an :class:`AveragedModel`.
        device (torch.device, optional): moves each batch there first.
    """
    momenta = {}
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.reset_running_stats()
            momenta[module] = module.momentum
    if not momenta:
        return

    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None
    for batch in loader:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        if device is not None:
            batch = batch.to(device)
        model(batch)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)


class SWALR(LRScheduler):
    r"""Anneal each group's lr to a constant ``swa_lr`` over ``anneal_epochs`` steps.

    Used in the SWA phase of training, usually after another scheduler::

        η_t = α_t · swa_lr + (1 - α_t) · η_start,   α_t = anneal(min(1, t / anneal_epochs))

    with ``anneal(x) = (1 - cos(πx))/2`` (``"cos"``) or ``x`` (``"linear"``),
    and ``η_start`` the lr when SWALR took over.  As in torch, ``η_start`` is
    recovered each step from the current lr and the previous ``α``, so another
    scheduler may change the lr in between.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        swa_lr (float or list): the target lr, for all groups or per group.
        anneal_epochs (int): steps of annealing, ≥ 0. Default: 10.
        anneal_strategy (str): ``"cos"`` or ``"linear"``. Default: "cos".
        last_epoch (int): index of the last step. Default: -1.
    """

    def __init__(
        self,
        optimizer,
        swa_lr: float,
        anneal_epochs=10,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        last_epoch=-1,
    ) -> None:
        for lr, group in zip(_per_group("swa_lr", optimizer, swa_lr), optimizer.param_groups, strict=True):
            group["swa_lr"] = lr
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self._set_anneal_func(anneal_strategy)
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}")
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _linear_anneal(t):
        return t

    @staticmethod
    def _cosine_anneal(t):
        return (1 - math.cos(math.pi * t)) / 2

    @staticmethod
    def _get_initial_lr(lr, swa_lr, alpha):
        """The lr before annealing, given the lr after ``alpha`` of it."""
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def _set_anneal_func(self, anneal_strategy) -> None:
        self._anneal_strategy = anneal_strategy
        self.anneal_func = self._cosine_anneal if anneal_strategy == "cos" else self._linear_anneal

    def _alpha(self, step):
        return self.anneal_func(max(0, min(1, step / max(1, self.anneal_epochs))))

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        step = self._step_count - 1  # counts from 0 at construction
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_alpha = self._alpha(step - 1)
        alpha = self._alpha(step)
        groups = self.optimizer.param_groups
        return [
            group["swa_lr"] * alpha
            + self._get_initial_lr(group["lr"], group["swa_lr"], prev_alpha) * (1 - alpha)
            for group in groups
        ]

    def state_dict(self) -> dict[str, Any]:
        """As the base class, without ``anneal_func`` (rebuilt from ``_anneal_strategy``)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "anneal_func")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._set_anneal_func(self._anneal_strategy)
