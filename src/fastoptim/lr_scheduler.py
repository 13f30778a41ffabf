r"""Learning-rate schedulers, a drop-in for :mod:`torch.optim.lr_scheduler`.

Every scheduler of torch 2.13 is here with the same constructor, the same
``step()`` / ``get_last_lr()`` / ``state_dict()`` / ``load_state_dict()``,
the same warnings and exceptions, and the same learning rates to the last bit
(the tests step each one beside torch's).  They work with torch's optimizers
and with fastoptim's: a scheduler only touches ``optimizer.param_groups``,
``optimizer.defaults`` and (to warn about call order) ``optimizer.step``.

Beyond torch:

* :class:`WarmupDecayLR` -- linear warmup then cosine/linear/constant decay in
  one scheduler (torch needs ``SequentialLR(LinearLR, CosineAnnealingLR)``).
* ``lr_at(step)`` (and ``momentum_at(step)`` where momentum is cycled) on every
  scheduler that has a closed form: the schedule at any step, without stepping.
  The closed forms live in :mod:`fastoptim.schedules`.

How a scheduler works
---------------------
``t = last_epoch`` counts the ``step()`` calls (0 right after construction).
The constructor records each group's starting lr as ``group["initial_lr"]``
(``base_lrs``), then takes step 0.  Each ``step()`` increments ``t``, asks
``get_lr()`` for one lr per group and writes it into ``group["lr"]`` (with
``fill_`` when the lr is a Tensor, so that compiled code keeps its guards).

Schedulers come in two kinds, and torch's choice is kept for each:

* **closed form** -- ``lr = f(t, base_lr)``: LambdaLR, CyclicLR, OneCycleLR,
  CosineAnnealingWarmRestarts, WarmupDecayLR;
* **chainable** -- ``lr = group["lr"] · f(t)/f(t-1)``: MultiplicativeLR, StepLR,
  MultiStepLR, ConstantLR, LinearLR, ExponentialLR, PolynomialLR,
  CosineAnnealingLR.  Only these compose in :class:`ChainedScheduler`, since
  each multiplies whatever lr the others left.

(SWALR, in :mod:`fastoptim.swa_utils`, is in between: each step it recovers the
lr it started annealing from out of the current lr, then interpolates.)

.. note::
    Our classes subclass torch's (``LRScheduler`` and ``ReduceLROnPlateau``),
    so ``isinstance`` checks in Lightning, HF Trainer or torch itself accept
    them, but no torch scheduler code runs: every method is defined here.
"""

from __future__ import annotations

import math
import types
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from functools import wraps
from typing import Any, Literal
from weakref import ref

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as _torch_lrs  # base classes for isinstance only

from . import schedules

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "ChainedScheduler",
    "WarmupDecayLR",
]

# Warning texts are kept identical to torch's: frameworks filter them by message
# (Lightning silences the call-order warning, for instance).
EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available. "
    "Please open an issue if you are unable to replicate your use case: "
    "https://github.com/pytorch/pytorch/issues/new/choose."
)
_STEP_OVERRIDDEN_WARNING = (
    "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
    "initialization. Please, make sure to call `optimizer.step()` before "
    "`lr_scheduler.step()`. See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
)
_CALL_ORDER_WARNING = (
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
    "In PyTorch 1.1.0 and later, you should call them in the opposite order: "
    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
    "will result in PyTorch skipping the first value of the learning rate schedule. "
    "See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
)
_GET_LR_WARNING = (
    "To get the last learning rate computed by the scheduler, please use `get_last_lr()`."
)


# --------------------------------------------------------------------------
# Param-group values: a value may be a float or a Tensor.  Tensors are copied
# on the way out and filled in place on the way in, so nothing aliases the
# optimizer's own tensors.
# --------------------------------------------------------------------------


def _copy(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def _group_values(optimizer, key) -> list:
    """``group[key]`` of every param group, copied."""
    return [_copy(group[key]) for group in optimizer.param_groups]


def _set_group_value(group, key, value) -> None:
    """``group[key] = value``, in place when the current value is a Tensor."""
    current = group[key]
    if isinstance(current, torch.Tensor):
        if isinstance(value, torch.Tensor) and value.dim() != 0:
            value = value.squeeze()
        current.fill_(value)
    else:
        group[key] = value


def _per_group(name, optimizer, value) -> list:
    """One value per param group: a list is checked for length, a scalar repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(value)} values, param_groups has "
                f"{len(optimizer.param_groups)}."
            )
    else:
        value = [value] * len(optimizer.param_groups)
    return [_copy(v) for v in value]


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")


@contextmanager
def _flag(obj, name):
    """Set the boolean attribute ``name`` while the block runs."""
    setattr(obj, name, True)
    try:
        yield
    finally:
        setattr(obj, name, False)


def _track_optimizer_step(optimizer) -> None:
    """Wrap ``optimizer.step`` so that it records ``optimizer._opt_called = True``.

    The wrapper is an *instance* attribute marked ``_wrapped_by_lr_sched`` (torch's
    scheduler and ours recognise each other's, so the step is wrapped once).  It
    holds the optimizer by weak reference: no cycle keeps the optimizer alive.
    """
    if hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        return
    optimizer_ref = ref(optimizer)
    step_fn = optimizer.step.__func__

    @wraps(step_fn)
    def wrapper(*args, **kwargs):
        opt = optimizer_ref()
        opt._opt_called = True
        return step_fn.__get__(opt, opt.__class__)(*args, **kwargs)

    wrapper._wrapped_by_lr_sched = True
    optimizer.step = _skipped_by_dynamo(wrapper)


def _skipped_by_dynamo(fn):
    """Have ``torch.compile`` run ``fn``'s own frame eagerly, and compile what it calls.

    torch does this for its step wrapper by listing lr_scheduler.py among
    dynamo's skipped files.  A traced wrapper would be worse: compiling
    ``optimizer.step`` recursed forever, and the ``_opt_called`` flag was lost
    at the graph break inside torch's optimizers.
    """
    from torch._dynamo.decorators import skip  # imported anyway by torch.optim optimizers

    return skip(fn)


# --------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------


class LRScheduler(_torch_lrs.LRScheduler):
    r"""Base class of the schedulers: bookkeeping of ``last_epoch`` and the lrs.

    A subclass implements :meth:`get_lr` -- the lrs at ``self.last_epoch`` --
    and may override :meth:`step`.

    Args:
        optimizer (Optimizer): the optimizer whose ``param_groups`` get new lrs;
            a ``torch.optim`` or a ``fastoptim`` one.
        last_epoch (int): ``-1`` (default) to start; the index of the last step
            taken to resume a run.  Resuming needs ``initial_lr`` in every
            param group, i.e. the optimizer's state_dict loaded first.

    Attributes: ``optimizer``, ``last_epoch``, ``base_lrs`` (the groups'
    ``initial_lr``), ``_step_count`` and ``_last_lr`` -- the names torch uses,
    so state_dicts are interchangeable with torch's.

    .. warning::
        Building a scheduler overwrites ``group["lr"]``.  When restoring a
        checkpoint, build the scheduler *before* loading the optimizer's state.
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", _copy(group["lr"]))
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when "
                        "resuming scheduler with last_epoch >= 0.\n"
                        "Load the optimizer's state_dict (which holds 'initial_lr') "
                        "before building the scheduler, or start a fresh run with "
                        "last_epoch=-1."
                    )
        self.base_lrs: list = _group_values(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        _track_optimizer_step(optimizer)
        self._initial_step()

    def _initial_step(self) -> None:
        """Reset the step count and take step 0 (``SequentialLR`` calls this too)."""
        self._step_count = 0
        with _flag(self, "_is_initial"):
            self.step()

    def state_dict(self) -> dict[str, Any]:
        """Everything in ``self.__dict__`` except the optimizer."""
        return {key: value for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (ours or torch's)."""
        self.__dict__.update(state_dict)

    def get_last_lr(self) -> list:
        """The lrs the last step set, one per param group (copies, never aliases)."""
        return self._last_lr

    def get_lr(self) -> list:
        """The lrs at ``self.last_epoch``; called by :meth:`step`, not by users."""
        raise NotImplementedError

    def step(self, epoch: int | None = None) -> None:
        """Advance the schedule by one step and set the new lrs.

        Call it after ``optimizer.step()``.  ``epoch`` (deprecated, as in torch)
        jumps to that step, using the closed form where there is one.
        """
        if self._step_count == 1:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(_STEP_OVERRIDDEN_WARNING, UserWarning, stacklevel=2)
            elif not getattr(self.optimizer, "_opt_called", False):
                warnings.warn(_CALL_ORDER_WARNING, UserWarning, stacklevel=2)
        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        with _flag(self, "_get_lr_called_within_step"):
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed_form = getattr(self, "_get_closed_form_lr", None)
                values = closed_form() if closed_form is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            _set_group_value(group, "lr", lr)
        self._last_lr = _group_values(self.optimizer, "lr")

    # -- helpers for subclasses ---------------------------------------------

    def _warn_if_called_directly(self) -> None:
        if not self._get_lr_called_within_step:
            warnings.warn(_GET_LR_WARNING, UserWarning, stacklevel=3)

    def _current_lrs(self) -> list:
        return _group_values(self.optimizer, "lr")

    def _scaled_lrs(self, factor) -> list:
        return [group["lr"] * factor for group in self.optimizer.param_groups]


class _LRScheduler(LRScheduler):
    """Old name of :class:`LRScheduler`, kept as torch keeps it."""


class _EpochClosedForm:
    """For the chainable schedulers that torch also gives a closed form.

    ``step(epoch)`` uses ``_get_closed_form_lr`` (as torch does), which is the
    schedule of :mod:`fastoptim.schedules` at ``last_epoch``.
    """

    def _get_closed_form_lr(self) -> list:
        return self.lr_at(self.last_epoch)


class _ClosedFormSteps:
    """For the schedulers whose every step is their closed form ``lr_at(last_epoch)``.

    A scheduler that cycles momentum (CyclicLR, OneCycleLR) also sets the
    momentums here: a side effect of ``get_lr``, as in torch.
    """

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        lrs = self.lr_at(self.last_epoch)
        if getattr(self, "cycle_momentum", False):
            momenta = self.momentum_at(self.last_epoch)
            for group, momentum in zip(self.optimizer.param_groups, momenta, strict=True):
                _set_momentum(group, momentum, self.use_beta1)
        return lrs


# --------------------------------------------------------------------------
# Schedulers driven by user functions
# --------------------------------------------------------------------------


class _LambdaScheduler(LRScheduler):
    """Shared by LambdaLR and MultiplicativeLR: one function per param group.

    ``state_dict`` leaves plain functions and lambdas out (they cannot be
    pickled) and keeps the ``__dict__`` of callable objects.
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1) -> None:
        self.optimizer = optimizer
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(
                    f"Expected {len(optimizer.param_groups)} lr_lambdas, but got {len(lr_lambda)}"
                )
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else fn.__dict__.copy()
            for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        lambda_states = state_dict.pop("lr_lambdas")
        try:
            self.__dict__.update(state_dict)
        finally:
            state_dict["lr_lambdas"] = lambda_states  # leave the caller's dict as it was
        for fn, fn_state in zip(self.lr_lambdas, lambda_states):
            if fn_state is not None:
                fn.__dict__.update(fn_state)


class LambdaLR(_ClosedFormSteps, _LambdaScheduler):
    r"""lr = base_lr · ``lr_lambda(t)``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        lr_lambda (callable or list): ``t ↦ factor``, or one such per param group.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.

    Example::

        >>> sched = LambdaLR(opt, lambda t: 0.95**t)   # same as ExponentialLR(opt, 0.95)
    """

    def lr_at(self, step) -> list:
        """The lrs at ``step``: ``base_lr * lr_lambda(step)`` per group."""
        return [base_lr * fn(step) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)]


class MultiplicativeLR(_LambdaScheduler):
    r"""lr ← lr · ``lr_lambda(t)`` at every step (chainable).

    Args:
        optimizer (Optimizer): wrapped optimizer.
        lr_lambda (callable or list): ``t ↦ factor``, or one such per param group.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.
    """

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        if self._is_initial:
            return self._current_lrs()
        return [
            group["lr"] * fn(self.last_epoch)
            for fn, group in zip(self.lr_lambdas, self.optimizer.param_groups, strict=True)
        ]


# --------------------------------------------------------------------------
# Chainable decays.  get_lr() multiplies the current lr by f(t)/f(t-1), written
# exactly as torch writes it (bit-parity); lr_at() is the closed form f(t).
# --------------------------------------------------------------------------


class StepLR(_EpochClosedForm, LRScheduler):
    r"""Multiply the lr by ``gamma`` every ``step_size`` steps.

    .. math:: η_t = η_0 \, γ^{⌊t / \text{step\_size}⌋}

    Args:
        optimizer (Optimizer): wrapped optimizer.
        step_size (int): period of the decay, in steps.
        gamma (float): factor of each decay. Default: 0.1.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.
    """

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return self._scaled_lrs(self.gamma)

    def lr_at(self, step) -> list:
        return [schedules.step_lr(step, b, self.step_size, self.gamma) for b in self.base_lrs]


class MultiStepLR(_EpochClosedForm, LRScheduler):
    r"""Multiply the lr by ``gamma`` at each milestone.

    .. math:: η_t = η_0 \, γ^{\#\{m ∈ \text{milestones} : m ≤ t\}}

    Args:
        optimizer (Optimizer): wrapped optimizer.
        milestones (list of int): steps at which to decay (a repeated milestone
            decays by ``gamma`` to the power of its count).
        gamma (float): factor of each decay. Default: 0.1.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.
    """

    def __init__(self, optimizer, milestones: Iterable[int], gamma: float = 0.1, last_epoch=-1):
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        return self._scaled_lrs(self.gamma ** self.milestones[self.last_epoch])

    def lr_at(self, step) -> list:
        milestones = list(self.milestones.elements())
        return [schedules.multistep_lr(step, b, milestones, self.gamma) for b in self.base_lrs]


class ConstantLR(_EpochClosedForm, LRScheduler):
    r"""Scale the lr by ``factor`` for the first ``total_iters`` steps.

    .. math:: η_t = η_0 \cdot (\text{factor if } t < T \text{ else } 1)

    Args:
        optimizer (Optimizer): wrapped optimizer.
        factor (float): the scale, in [0, 1]. Default: 1/3.
        total_iters (int): how many steps the scale lasts. Default: 5.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.
    """

    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch=-1):
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        if self.last_epoch == 0:
            return self._scaled_lrs(self.factor)
        if self.last_epoch != self.total_iters:
            return self._current_lrs()
        return self._scaled_lrs(1.0 / self.factor)

    def lr_at(self, step) -> list:
        return [schedules.constant_lr(step, b, self.factor, self.total_iters) for b in self.base_lrs]


class LinearLR(_EpochClosedForm, LRScheduler):
    r"""Scale the lr by a factor going linearly from ``start_factor`` to ``end_factor``.

    .. math:: η_t = η_0 \left(f_0 + (f_1 - f_0) \frac{\min(t, T)}{T}\right)

    Args:
        optimizer (Optimizer): wrapped optimizer.
        start_factor (float): factor at step 0, in (0, 1]. Default: 1/3.
        end_factor (float): factor from step ``total_iters`` on, in [0, 1]. Default: 1.
        total_iters (int): length of the ramp. Default: 5.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.

    .. note:: ``start_factor`` may not be 0, because the chainable form divides
       by the previous factor (use :class:`WarmupDecayLR` to warm up from 0).
    """

    def __init__(
        self,
        optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ):
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        if self.last_epoch == 0:
            return self._scaled_lrs(self.start_factor)
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        # f(t)/f(t-1) = 1 + Δ / (T·f₀ + (t-1)·Δ), Δ = f₁ - f₀
        delta = self.end_factor - self.start_factor
        ratio = 1.0 + delta / (self.total_iters * self.start_factor + (self.last_epoch - 1) * delta)
        return self._scaled_lrs(ratio)

    def lr_at(self, step) -> list:
        return [
            schedules.linear_lr(step, b, self.start_factor, self.end_factor, self.total_iters)
            for b in self.base_lrs
        ]


class ExponentialLR(_EpochClosedForm, LRScheduler):
    r"""Multiply the lr by ``gamma`` every step: :math:`η_t = η_0 γ^t`.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        gamma (float): factor of each step.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.
    """

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        # On resume the initial step must not decay once more.
        if self._is_initial:
            return self._current_lrs()
        return self._scaled_lrs(self.gamma)

    def lr_at(self, step) -> list:
        return [schedules.exponential_lr(step, b, self.gamma) for b in self.base_lrs]


class PolynomialLR(_EpochClosedForm, LRScheduler):
    r"""Decay the lr to zero as a polynomial of the remaining fraction of steps.

    .. math:: η_t = η_0 \left(1 - \frac{\min(t, T)}{T}\right)^{p}

    Args:
        optimizer (Optimizer): wrapped optimizer.
        total_iters (int): step at which the lr reaches 0. Default: 5.
        power (float): the exponent ``p``. Default: 1.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.
    """

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1):
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        t, T = self.last_epoch, self.total_iters
        ratio = ((1.0 - t / T) / (1.0 - (t - 1) / T)) ** self.power
        return self._scaled_lrs(ratio)

    def lr_at(self, step) -> list:
        return [schedules.polynomial_lr(step, b, self.total_iters, self.power) for b in self.base_lrs]


class CosineAnnealingLR(_EpochClosedForm, LRScheduler):
    r"""Anneal the lr along half a cosine, from base_lr to ``eta_min`` in ``T_max`` steps.

    .. math:: η_t = η_{min} + \tfrac12 (η_0 - η_{min}) \left(1 + \cos\frac{π t}{T_{max}}\right)

    No restarts: past ``T_max`` the lr climbs back along the cosine (see
    :class:`CosineAnnealingWarmRestarts` for SGDR's restarts).  As torch, the
    steps are computed recursively,
    :math:`η_{t} = η_{min} + (η_{t-1} - η_{min}) \frac{1 + \cos(πt/T)}{1 + \cos(π(t-1)/T)}`,
    so that the scheduler composes with others.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        T_max (int): half-period, in steps.
        eta_min (float): the minimum lr. Default: 0.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and t > 0:
            return self.lr_at(t)
        if (t - 1 - T) % (2 * T) == 0:
            # At the bottom of the cosine the ratio below is 0/0: step up by hand.
            return [
                group["lr"] + (base_lr - eta_min) * (1 - math.cos(math.pi / T)) / 2
                for base_lr, group in zip(self.base_lrs, self.optimizer.param_groups, strict=True)
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (group["lr"] - eta_min) + eta_min for group in self.optimizer.param_groups]

    def lr_at(self, step) -> list:
        return [schedules.cosine_annealing_lr(step, b, self.T_max, self.eta_min) for b in self.base_lrs]


# --------------------------------------------------------------------------
# Closed-form schedulers
# --------------------------------------------------------------------------


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""Cosine annealing with warm restarts (SGDR).

    .. math:: η_t = η_{min} + \tfrac12 (η_0 - η_{min}) \left(1 + \cos\frac{π T_{cur}}{T_i}\right)

    ``T_cur`` counts the steps since the last restart; the ``i``-th cycle lasts
    :math:`T_i = T_0 \cdot T_{mult}^i` steps.  ``step()`` may be called with a
    fractional ``epoch`` (e.g. ``epoch + batch / n_batches``) and in any order.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        T_0 (int): length of the first cycle, > 0.
        T_mult (int): growth factor of the cycle length, ≥ 1. Default: 1.
        eta_min (float): the minimum lr. Default: 0.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.
    """

    def __init__(
        self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1
    ):
        if T_0 <= 0 or not isinstance(T_0, int):
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if T_mult < 1 or not isinstance(T_mult, int):
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(
                f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}"
            )
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        self._warn_if_called_directly()
        return [
            schedules.cosine_annealing_lr(self.T_cur, b, self.T_i, self.eta_min)
            for b in self.base_lrs
        ]

    def lr_at(self, step) -> list:
        return [
            schedules.cosine_warm_restarts_lr(step, b, self.T_0, self.T_mult, self.eta_min)
            for b in self.base_lrs
        ]

    def step(self, epoch=None) -> None:
        """Advance one step, or jump to ``epoch`` (a float is allowed).

        Example, stepping every batch::

            >>> for epoch in range(20):
            >>>     for i, batch in enumerate(loader):
            >>>         train(batch)
            >>>         scheduler.step(epoch + i / len(loader))
        """
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            self.T_cur, self.T_i = schedules.warm_restart_position(epoch, self.T_0, self.T_mult)
        self.last_epoch = math.floor(epoch)
        with _flag(self, "_get_lr_called_within_step"):
            lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            _set_group_value(group, "lr", lr)
        self._last_lr = self._current_lrs()


def _momentum_key(optimizer) -> str:
    """``"betas"`` (Adam family: beta1 is cycled) or ``"momentum"`` (SGD, RMSprop)."""
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(
            "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
        )
    return "betas" if "betas" in optimizer.defaults else "momentum"


def _set_momentum(group, momentum, use_beta1: bool) -> None:
    if use_beta1:
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        group["momentum"] = momentum


def _start_momentum_cycle(optimizer, base_momentum, max_momentum, last_epoch):
    """Validate momentum cycling; on a fresh start, record the bounds in each group.

    Returns ``(use_beta1, base_momentums, max_momentums)``.
    """
    use_beta1 = _momentum_key(optimizer) == "betas"
    base_momentums = _per_group("base_momentum", optimizer, base_momentum)
    max_momentums = _per_group("max_momentum", optimizer, max_momentum)
    if last_epoch == -1:
        for high, low, group in zip(max_momentums, base_momentums, optimizer.param_groups, strict=True):
            _set_momentum(group, high, use_beta1)
            group["max_momentum"] = high
            group["base_momentum"] = low
    return use_beta1, base_momentums, max_momentums


class CyclicLR(_ClosedFormSteps, LRScheduler):
    r"""Cyclical learning rate (CLR): a triangle wave between ``base_lr`` and ``max_lr``.

    .. math::
        η_t = η_{base} + (η_{max} - η_{base}) \cdot h(t) \cdot s

    where ``h`` rises from 0 to 1 in ``step_size_up`` steps and falls back in
    ``step_size_down``, and ``s`` scales the amplitude (see
    :func:`fastoptim.schedules.cyclic_scale_fn`):

    * ``"triangular"``: ``s = 1``;
    * ``"triangular2"``: the amplitude halves every cycle;
    * ``"exp_range"``: ``s = gamma**t``;
    * ``scale_fn``: your own ``s(cycle)`` or ``s(t)`` (``scale_mode``).

    Momentum (or Adam's beta1) moves the opposite way, from ``max_momentum``
    down to ``base_momentum`` at the lr's peak.  Step it after every batch.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        base_lr (float or list): lower lr bound, per group or for all.
        max_lr (float or list): upper lr bound.
        step_size_up (int): steps of the rising half. Default: 2000.
        step_size_down (int): steps of the falling half; None = ``step_size_up``.
        mode (str): ``"triangular"``, ``"triangular2"`` or ``"exp_range"``. Default: "triangular".
        gamma (float): base of ``"exp_range"``. Default: 1.
        scale_fn (callable): custom scale; overrides ``mode``. Default: None.
        scale_mode (str): ``"cycle"`` or ``"iterations"``: the argument of ``scale_fn``.
        cycle_momentum (bool): cycle momentum too. Default: True.
        base_momentum (float or list): lower momentum bound. Default: 0.8.
        max_momentum (float or list): upper momentum bound. Default: 0.9.
        last_epoch (int): index of the last *batch*; ``-1`` to start. Default: -1.
    """

    def __init__(
        self,
        optimizer,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: Literal["cycle", "iterations"] = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.8,
        max_momentum: float | list[float] = 0.9,
        last_epoch: int = -1,
    ):
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                _set_group_value(group, "lr", lr)
        self.max_lrs = _per_group("max_lr", optimizer, max_lr)

        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size

        if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
            raise ValueError("mode is invalid and scale_fn is None")
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()

        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1, self.base_momentums, self.max_momentums = _start_momentum_cycle(
                optimizer, base_momentum, max_momentum, last_epoch
            )
        # As in torch, step 0 runs with base_lrs = the groups' initial_lr; the
        # cycle's lower bounds take over from then on.
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self) -> None:
        if self._scale_fn_custom is None:
            self._scale_fn_ref, self.scale_mode = schedules.cyclic_scale_fn(self.mode, self.gamma)

    def scale_fn(self, x) -> float:
        """The amplitude scale at ``x`` (the cycle number or the step, per ``scale_mode``)."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        return self._scale_fn_ref(x)

    def _wave(self, step):
        """(height of the triangle wave, amplitude scale) at ``step``."""
        cycle, height = schedules.triangle_wave(step, self.total_size, self.step_ratio)
        return height, self.scale_fn(cycle if self.scale_mode == "cycle" else step)

    def lr_at(self, step) -> list:
        height, scale = self._wave(step)
        return [
            schedules.cyclic_interp(low, high, height, scale)
            for low, high in zip(self.base_lrs, self.max_lrs, strict=True)
        ]

    def momentum_at(self, step) -> list:
        """The momentums (or beta1s) at ``step``: the lr's wave upside down."""
        height, scale = self._wave(step)
        return [
            schedules.cyclic_interp(high, low, height, scale)
            for low, high in zip(self.base_momentums, self.max_momentums, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        """As the base class, without the built-in scale function (rebuilt on load).

        A custom ``scale_fn`` is kept only as the ``__dict__`` of a callable
        object; a plain function or lambda is saved as None.
        """
        state = super().state_dict()
        state.pop("_scale_fn_ref", None)
        fn = state.pop("_scale_fn_custom")
        keep = fn is not None and not isinstance(fn, types.FunctionType)
        state["_scale_fn_custom"] = fn.__dict__.copy() if keep else None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        fn_state = state_dict.pop("_scale_fn_custom")
        super().load_state_dict(state_dict)
        if fn_state is not None:
            self._scale_fn_custom.__dict__.update(fn_state)
        self._init_scale_fn()


class OneCycleLR(_ClosedFormSteps, LRScheduler):
    r"""The 1cycle policy: warm up to ``max_lr``, then anneal far below the start.

    lr goes ``max_lr/div_factor`` → ``max_lr`` (for ``pct_start`` of the steps)
    → ``initial_lr/final_div_factor``, by cosine or straight line
    (``anneal_strategy``); momentum (or beta1) goes the opposite way, between
    ``max_momentum`` and ``base_momentum``.  ``three_phase=True`` follows the
    paper: up, symmetrically back down to ``initial_lr``, then to the minimum.
    The phases are :func:`fastoptim.schedules.one_cycle_phases`.

    The scheduler keeps ``initial_lr``, ``max_lr``, ``min_lr``,
    ``max_momentum`` and ``base_momentum`` in each param group and anneals
    between those.  Step it after every batch, ``total_steps`` times at most
    (more raises ValueError).  Not chainable.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        max_lr (float or list): peak lr, per group or for all.
        total_steps (int): length of the cycle; or give ``epochs`` and ``steps_per_epoch``.
        epochs (int): with ``steps_per_epoch``: ``total_steps = epochs * steps_per_epoch``.
        steps_per_epoch (int): see ``epochs``.
        pct_start (float): fraction of the cycle spent rising. Default: 0.3.
        anneal_strategy (str): ``"cos"`` or ``"linear"``. Default: "cos".
        cycle_momentum (bool): cycle momentum too. Default: True.
        base_momentum (float or list): momentum at the lr's peak. Default: 0.85.
        max_momentum (float or list): momentum at the start and end. Default: 0.95.
        div_factor (float): ``initial_lr = max_lr / div_factor``. Default: 25.
        final_div_factor (float): ``min_lr = initial_lr / final_div_factor``. Default: 1e4.
        three_phase (bool): the paper's three phases. Default: False.
        last_epoch (int): index of the last *batch*; ``-1`` to start. Default: -1.
    """

    def __init__(
        self,
        optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ):
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        self.total_steps = self._total_steps(total_steps, epochs, steps_per_epoch)
        self._schedule_phases = schedules.one_cycle_phases(self.total_steps, pct_start, three_phase)
        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in schedules.ANNEALERS:
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self._anneal_func_type = anneal_strategy

        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for peak, group in zip(max_lrs, optimizer.param_groups, strict=True):
                group["initial_lr"] = peak / div_factor
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1, _, _ = _start_momentum_cycle(
                optimizer, base_momentum, max_momentum, last_epoch
            )
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _total_steps(total_steps, epochs, steps_per_epoch) -> int:
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            return total_steps
        if epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(
                    f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}"
                )
            return epochs * steps_per_epoch
        raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")

    def _anneal(self, start, end, pct):
        if hasattr(self, "_anneal_func_type"):
            annealer = schedules.ANNEALERS.get(self._anneal_func_type)
            if annealer is None:
                raise ValueError(f"Unknown _anneal_func_type: {self._anneal_func_type}")
            return annealer(start, end, pct)
        return self.anneal_func(start, end, pct)  # state_dicts from torch < 2.2

    # torch's names.  A state_dict from torch < 2.2 has no "_anneal_func_type" but an
    # "anneal_func" that is one of these two (torch's tests load one built with
    # OneCycleLR._annealing_cos), and subclasses may call _anneal_func.
    _annealing_cos = staticmethod(schedules.anneal_cos)
    _annealing_linear = staticmethod(schedules.anneal_linear)

    def _anneal_func(self, *args, **kwargs):
        return self._anneal(*args, **kwargs)

    def _values_at(self, step, kind) -> list:
        schedules.check_one_cycle_step(step, self.total_steps)
        return [
            schedules.one_cycle_value(step, self._schedule_phases, group, self._anneal, kind)
            for group in self.optimizer.param_groups
        ]

    def lr_at(self, step) -> list:
        """The lrs at ``step``, from the bounds stored in the param groups."""
        return self._values_at(step, "lr")

    def momentum_at(self, step) -> list:
        """The momentums (or beta1s) at ``step``."""
        return self._values_at(step, "momentum")


class WarmupDecayLR(_ClosedFormSteps, LRScheduler):
    r"""Linear warmup, then cosine, linear or no decay -- in one scheduler.

    The most common schedule for training transformers, which torch builds
    from ``SequentialLR([LinearLR, CosineAnnealingLR])``::

        >>> sched = WarmupDecayLR(opt, warmup_steps=500, total_steps=10_000)

    .. math::
        η_t = η_0 \cdot \begin{cases}
            f_0 + (1 - f_0)\, t / W & t < W \quad\text{(warmup)} \\
            \mathrm{anneal}\big(1, f_1, \min(1, \tfrac{t - W}{T - W})\big) & t ≥ W \quad\text{(decay)}
        \end{cases}

    (:func:`fastoptim.schedules.warmup_decay_lr`).  The lr peaks at ``base_lr``
    at step ``W``, reaches ``end_factor · base_lr`` at step ``T`` and stays
    there.  Not chainable (the lr is computed from ``base_lr``, like LambdaLR),
    which is what makes ``start_factor=0`` possible.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        warmup_steps (int): ``W``, steps of linear warmup, ≥ 0.
        total_steps (int): ``T``, step at which the decay ends, ≥ ``warmup_steps``.
        decay (str): ``"cos"``, ``"linear"`` or ``"constant"``. Default: "cos".
        start_factor (float): lr factor at step 0, in [0, 1]. Default: 0.
        end_factor (float): lr factor from step ``T`` on, in [0, 1]. Default: 0.
        last_epoch (int): index of the last step; ``-1`` to start. Default: -1.
    """

    def __init__(
        self,
        optimizer,
        warmup_steps: int,
        total_steps: int,
        decay: Literal["cos", "linear", "constant"] = "cos",
        start_factor: float = 0.0,
        end_factor: float = 0.0,
        last_epoch: int = -1,
    ):
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"Expected non-negative integer warmup_steps, but got {warmup_steps}")
        if not isinstance(total_steps, int) or total_steps < max(warmup_steps, 1):
            raise ValueError(
                f"Expected integer total_steps >= max(warmup_steps, 1), but got {total_steps}"
            )
        if decay not in schedules.WARMUP_DECAYS:
            raise ValueError(
                f"decay must be one of {', '.join(schedules.WARMUP_DECAYS)}, instead got {decay!r}"
            )
        for name, factor in (("start_factor", start_factor), ("end_factor", end_factor)):
            if not 0.0 <= factor <= 1.0:
                raise ValueError(f"{name} expected to be between 0 and 1, but got {factor}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.decay = decay
        self.start_factor = start_factor
        self.end_factor = end_factor
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step) -> list:
        return [
            schedules.warmup_decay_lr(
                step, b, self.warmup_steps, self.total_steps, self.decay,
                self.start_factor, self.end_factor,
            )
            for b in self.base_lrs
        ]


# --------------------------------------------------------------------------
# Driven by a metric
# --------------------------------------------------------------------------


class ReduceLROnPlateau(LRScheduler, _torch_lrs.ReduceLROnPlateau):
    r"""Cut the lr by ``factor`` when a metric stops improving for ``patience`` steps.

    ``step(metric)`` once per evaluation.  A value is an improvement when it
    beats the best so far by more than ``threshold``:

    ============  =====================  =====================
    mode          ``threshold_mode="rel"``   ``"abs"``
    ============  =====================  =====================
    ``"min"``     a < best · (1 - thr)   a < best - thr
    ``"max"``     a > best · (1 + thr)   a > best + thr
    ============  =====================  =====================

    After more than ``patience`` steps without improvement each group's lr
    becomes ``max(lr · factor, min_lr)`` -- unless that changes it by ``eps``
    or less -- and the next ``cooldown`` steps are not counted.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        mode (str): ``"min"`` or ``"max"``. Default: "min".
        factor (float): lr multiplier on a plateau, < 1. Default: 0.1.
        patience (int): steps without improvement tolerated. Default: 10.
        threshold (float): what counts as an improvement. Default: 1e-4.
        threshold_mode (str): ``"rel"`` or ``"abs"``. Default: "rel".
        cooldown (int): steps to wait after a cut. Default: 0.
        min_lr (float or list): lower bound, for all groups or per group. Default: 0.
        eps (float): smallest change of lr applied. Default: 1e-8.

    It is an instance of ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (so
    Lightning and HF recognise it), but runs only the code below.  It does not
    wrap ``optimizer.step`` and has no ``base_lrs`` (as in torch).
    """

    def __init__(
        self,
        optimizer,
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ):
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        self.factor = factor
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(f"expected {len(optimizer.param_groups)} min_lrs, got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = self._current_lrs()
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self) -> None:
        """Forget the best value and any bad-step or cooldown count."""
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics, epoch=None) -> None:
        """Record one value of the metric (a float or a 0-dim Tensor)."""
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch

        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad steps during cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr(epoch)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()

    def _reduce_lr(self, epoch) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"The number of param groups in the `optimizer` ({len(groups)}) differs "
                    f"from when `ReduceLROnPlateau` was initialized ({len(self.min_lrs)}), "
                    "usually due to a new param group being added to the optimizer. Please "
                    "modify the `min_lrs` field to match the length of the `optimizer` "
                    "param groups."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                _set_group_value(group, "lr", new_lr)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a, best) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode, threshold, threshold_mode) -> None:
        if mode not in {"min", "max"}:
            raise ValueError("mode " + mode + " is unknown!")
        if threshold_mode not in {"rel", "abs"}:
            raise ValueError("threshold mode " + threshold_mode + " is unknown!")
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._init_is_better(mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode)


# --------------------------------------------------------------------------
# Combinations of schedulers
# --------------------------------------------------------------------------


class _SchedulerList:
    """Shared by SequentialLR and ChainedScheduler: checks, and nested state_dicts."""

    def _check_schedulers(self, optimizer, schedulers) -> None:
        name = type(self).__name__
        for i, scheduler in enumerate(schedulers):
            if not hasattr(scheduler, "optimizer"):
                raise TypeError(f"{name} at index {i} should have `optimizer` as its attribute.")
            if isinstance(scheduler, _torch_lrs.ReduceLROnPlateau):
                raise ValueError(
                    f"{name} does not support `ReduceLROnPlateau` scheduler as it requires "
                    "additional kwargs to be specified when calling `step`, but got one at "
                    f"index {i} in the given schedulers sequence."
                )
            if optimizer != scheduler.optimizer:
                raise ValueError(
                    f"{name} expects all schedulers to belong to the same optimizer, but got "
                    f"scheduler {type(scheduler).__name__} at index {i} has "
                    f"{scheduler.optimizer}, which is different from {type(optimizer).__name__}."
                )

    def state_dict(self) -> dict[str, Any]:
        """Our attributes, with each child's own state_dict under ``_schedulers``."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        child_states = state_dict.pop("_schedulers")
        try:
            self.__dict__.update(state_dict)
        finally:
            state_dict["_schedulers"] = child_states  # leave the caller's dict as it was
        for scheduler, child_state in zip(self._schedulers, child_states):
            scheduler.load_state_dict(child_state)


class SequentialLR(_SchedulerList, LRScheduler):
    r"""Hand over from one scheduler to the next at given steps.

    Scheduler ``i`` runs from ``milestones[i-1]`` on, restarting from the
    groups' ``initial_lr`` (its own step 0) at the milestone.

    Example -- 5 steps of warmup, then cosine::

        >>> warmup = LinearLR(opt, start_factor=0.1, total_iters=5)
        >>> cosine = CosineAnnealingLR(opt, T_max=95)
        >>> sched = SequentialLR(opt, [warmup, cosine], milestones=[5])

    (:class:`WarmupDecayLR` does this in one scheduler.)

    Args:
        optimizer (Optimizer): wrapped optimizer, shared by all the schedulers.
        schedulers (list): the schedulers, in order (not ReduceLROnPlateau).
        milestones (list of int): ``len(schedulers) - 1`` switch steps.
        last_epoch (int): index of the last step. Default: -1.
    """

    def __init__(self, optimizer, schedulers: list, milestones: list[int], last_epoch: int = -1):
        if len(schedulers) < 1:
            raise ValueError(
                f"{type(self).__name__} expects at least one scheduler, but got no scheduler."
            )
        self._check_schedulers(optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                f"than the number of milestone points, but got number of schedulers "
                f"{len(schedulers)} and the number of milestones to be equal to {len(milestones)}"
            )
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer

        # Building the children ran their step 0 and changed the lrs: undo that,
        # then let only the first scheduler take step 0.
        for group in optimizer.param_groups:
            _set_group_value(group, "lr", group["initial_lr"])
        self.recursive_undo()
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def recursive_undo(self, sched=None) -> None:
        """Take back the step 0 that building each (nested) scheduler took."""
        scheduler = self if sched is None else sched
        if hasattr(scheduler, "_schedulers"):
            for child in scheduler._schedulers:
                self.recursive_undo(child)
        elif hasattr(scheduler, "last_epoch"):
            scheduler.last_epoch -= 1

    def step(self) -> None:
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)  # restart the next scheduler at its step 0
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_SchedulerList, LRScheduler):
    r"""Step several chainable schedulers together; their factors multiply.

    Example -- cosine annealing with a 5-step constant warmup factor::

        >>> sched = ChainedScheduler([ConstantLR(opt, 0.1, 5), CosineAnnealingLR(opt, 100)])

    Only chainable schedulers compose (those that multiply the current lr;
    see the module docstring).

    Args:
        schedulers (sequence): the schedulers, stepped in this order.
        optimizer (Optimizer, optional): their optimizer; by default the first one's.
    """

    def __init__(self, schedulers: Sequence, optimizer: Optimizer | None = None):
        if len(schedulers) < 1:
            raise ValueError(
                f"{type(self).__name__} expects at least one scheduler to be chained, "
                "but got no scheduler."
            )
        optimizer = optimizer or schedulers[0].optimizer
        self._check_schedulers(optimizer, schedulers)
        self._schedulers = schedulers
        self.optimizer = optimizer
        self._last_lr = _group_values(self._schedulers[-1].optimizer, "lr")

    def step(self) -> None:
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _group_values(self._schedulers[-1].optimizer, "lr")
