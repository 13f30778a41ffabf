r"""Learning-rate schedules as plain functions of the step.

Every function here maps a step ``t`` to a value, and nothing else: no
optimizer, no state.  ``t`` is what torch calls ``last_epoch``: ``0`` when the
scheduler is built, ``1`` after the first ``scheduler.step()``, and so on.
That makes a schedule easy to read, to test, and to plot
(``fastoptim plot-schedule`` draws these functions).

Symbols used in the docstrings::

    t          step (``last_epoch``)
    η₀         base_lr, the group's ``initial_lr``
    η_min      eta_min / min_lr, the floor of a decay
    T          the length of a phase (total_iters, T_max, ...)

Who uses these functions
------------------------
* The plotting tool, and the public ``lr_at(step)`` / ``momentum_at(step)`` of
  the schedulers in :mod:`fastoptim.lr_scheduler`.
* ``scheduler.step(epoch)`` (torch's deprecated form) and
  ``_get_closed_form_lr()``.  The arithmetic here is written in the same order
  as torch's closed forms, so those paths match torch bit for bit.
* ``get_lr()`` of the schedulers whose torch version is itself a closed form:
  LambdaLR, CosineAnnealingWarmRestarts, CyclicLR, OneCycleLR, and our
  WarmupDecayLR.

.. warning::
    StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR, PolynomialLR and
    CosineAnnealingLR do **not** step with these functions.  torch computes
    their ``get_lr()`` recursively (the new lr is the current ``group["lr"]``
    times a ratio), which lets them compose in ``ChainedScheduler`` and
    rounds differently from the closed form (by ~1e-16, relative).  For
    bit-parity with torch our schedulers repeat that recursion; the closed
    forms below are what the recursion approximates.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable

__all__ = [
    "step_lr",
    "multistep_lr",
    "constant_lr",
    "linear_lr",
    "exponential_lr",
    "polynomial_lr",
    "cosine_annealing_lr",
    "warm_restart_position",
    "cosine_warm_restarts_lr",
    "triangle_wave",
    "cyclic_scale_fn",
    "cyclic_interp",
    "cyclic_lr",
    "cyclic_momentum",
    "anneal_cos",
    "anneal_linear",
    "ANNEALERS",
    "one_cycle_phases",
    "one_cycle_value",
    "check_one_cycle_step",
    "one_cycle_lr",
    "one_cycle_momentum",
    "warmup_decay_lr",
    "WARMUP_DECAYS",
]


# --------------------------------------------------------------------------
# Decays that scale the base learning rate
# --------------------------------------------------------------------------


def step_lr(t, base_lr, step_size, gamma=0.1):
    r"""Multiply by ``gamma`` every ``step_size`` steps: :math:`η_0 γ^{⌊t/s⌋}`."""
    return base_lr * gamma ** (t // step_size)


def multistep_lr(t, base_lr, milestones: Iterable[int], gamma=0.1):
    r"""Multiply by ``gamma`` at each milestone passed: :math:`η_0 γ^{\#\{m ≤ t\}}`.

    A milestone listed twice counts twice (torch keeps them in a Counter).
    """
    return base_lr * gamma ** bisect_right(sorted(milestones), t)


def constant_lr(t, base_lr, factor=1.0 / 3, total_iters=5):
    r"""``factor`` · η₀ for the first ``total_iters`` steps, then η₀."""
    return base_lr * (factor + (t >= total_iters) * (1 - factor))


def linear_lr(t, base_lr, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
    r"""Factor moving linearly from ``start_factor`` to ``end_factor`` in ``total_iters`` steps.

    .. math:: η_0 \left(f_0 + (f_1 - f_0)\,\frac{\min(t, T)}{T}\right)
    """
    return base_lr * (
        start_factor + (end_factor - start_factor) * min(total_iters, t) / total_iters
    )


def exponential_lr(t, base_lr, gamma):
    r"""Multiply by ``gamma`` every step: :math:`η_0 γ^t`."""
    return base_lr * gamma**t


def polynomial_lr(t, base_lr, total_iters=5, power=1.0):
    r"""Polynomial decay to zero at ``total_iters``: :math:`η_0 (1 - \min(t,T)/T)^p`."""
    return base_lr * (1.0 - min(total_iters, t) / total_iters) ** power


# --------------------------------------------------------------------------
# Cosine annealing (SGDR, https://arxiv.org/abs/1608.03983)
# --------------------------------------------------------------------------


def cosine_annealing_lr(t, base_lr, T_max, eta_min=0.0):
    r"""Half a cosine from η₀ (t = 0) down to η_min (t = T_max).

    .. math:: η_{min} + \tfrac12 (η_0 - η_{min}) (1 + \cos(π t / T_{max}))

    Past ``T_max`` the cosine comes back up (period ``2·T_max``), as torch's does.
    """
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2


def warm_restart_position(t, T_0, T_mult=1):
    r"""Where step ``t`` falls in SGDR's restart cycles: ``(T_cur, T_i)``.

    Cycle ``i`` lasts :math:`T_i = T_0 T_{mult}^i` steps, so cycle ``n`` starts at
    :math:`T_0 (T_{mult}^n - 1)/(T_{mult} - 1)`; ``T_cur`` is the step within
    it.  ``t`` may be fractional (torch allows ``step(epoch=2.5)``).
    """
    if t < T_0:
        return t, T_0
    if T_mult == 1:
        return t % T_0, T_0
    n = int(math.log(t / T_0 * (T_mult - 1) + 1, T_mult))
    return t - T_0 * (T_mult**n - 1) / (T_mult - 1), T_0 * T_mult**n


def cosine_warm_restarts_lr(t, base_lr, T_0, T_mult=1, eta_min=0.0):
    """Cosine annealing that restarts at η₀ after ``T_0``, ``T_0·T_mult``, ... steps."""
    T_cur, T_i = warm_restart_position(t, T_0, T_mult)
    return cosine_annealing_lr(T_cur, base_lr, T_i, eta_min)


# --------------------------------------------------------------------------
# Cyclical learning rates (https://arxiv.org/abs/1506.01186)
# --------------------------------------------------------------------------


def triangle_wave(t, total_size, step_ratio):
    r"""The cycle number (from 1) and the height (0 → 1 → 0) of a triangle wave.

    One cycle lasts ``total_size`` steps; the rising edge takes the fraction
    ``step_ratio`` of it (``step_size_up / (step_size_up + step_size_down)``).
    """
    cycle = math.floor(1 + t / total_size)
    x = 1.0 + t / total_size - cycle  # position within the cycle, in [0, 1)
    if x <= step_ratio:
        return cycle, x / step_ratio
    return cycle, (x - 1) / (step_ratio - 1)


def _triangular_scale(x):
    return 1.0


def _triangular2_scale(x):
    return 1 / (2.0 ** (x - 1))


def cyclic_scale_fn(mode, gamma=1.0) -> tuple[Callable[[float], float], str]:
    """The amplitude scaling of a CyclicLR ``mode``, and what it is a function of.

    ======================  ==========================  ==============
    mode                    scale                       argument
    ======================  ==========================  ==============
    ``"triangular"``        1                           cycle number
    ``"triangular2"``       1 / 2^(cycle - 1)           cycle number
    ``"exp_range"``         gamma^t                     step ``t``
    ======================  ==========================  ==============
    """
    if mode == "triangular":
        return _triangular_scale, "cycle"
    if mode == "triangular2":
        return _triangular2_scale, "cycle"
    if mode == "exp_range":
        return (lambda x: gamma**x), "iterations"
    raise ValueError(f"unknown CyclicLR mode {mode!r}")


def cyclic_interp(start, peak, height, scale):
    """``start`` moved towards ``peak`` by ``height`` (0..1) of the scaled amplitude."""
    return start + (peak - start) * height * scale


def _cyclic(t, start, peak, step_size_up, step_size_down, mode, gamma):
    up = float(step_size_up)
    total_size = up + (float(step_size_down) if step_size_down is not None else up)
    cycle, height = triangle_wave(t, total_size, up / total_size)
    scale_fn, scale_mode = cyclic_scale_fn(mode, gamma)
    return cyclic_interp(start, peak, height, scale_fn(cycle if scale_mode == "cycle" else t))


def cyclic_lr(
    t, base_lr, max_lr, step_size_up=2000, step_size_down=None, mode="triangular", gamma=1.0
):
    """The lr of CyclicLR: rises from ``base_lr`` towards ``max_lr`` and back, every cycle."""
    return _cyclic(t, base_lr, max_lr, step_size_up, step_size_down, mode, gamma)


def cyclic_momentum(
    t,
    base_momentum=0.8,
    max_momentum=0.9,
    step_size_up=2000,
    step_size_down=None,
    mode="triangular",
    gamma=1.0,
):
    """The momentum of CyclicLR: the mirror image of the lr, from ``max_momentum`` down."""
    return _cyclic(t, max_momentum, base_momentum, step_size_up, step_size_down, mode, gamma)


# --------------------------------------------------------------------------
# One-cycle policy (https://arxiv.org/abs/1708.07120)
# --------------------------------------------------------------------------


def anneal_cos(start, end, pct):
    """Cosine from ``start`` (pct = 0) to ``end`` (pct = 1)."""
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


def anneal_linear(start, end, pct):
    """Straight line from ``start`` (pct = 0) to ``end`` (pct = 1)."""
    return (end - start) * pct + start


ANNEALERS = {"cos": anneal_cos, "linear": anneal_linear}


def one_cycle_phases(total_steps, pct_start=0.3, three_phase=False) -> list[dict]:
    """The phases of OneCycleLR, as torch stores them in ``_schedule_phases``.

    Each phase ends at ``end_step`` and anneals between two named values
    (``"initial_lr"``, ``"max_lr"``, ``"min_lr"``, ``"max_momentum"``,
    ``"base_momentum"``), which OneCycleLR keeps in every param group.

    * two phases (fastai's default): warm up to ``max_lr`` for ``pct_start`` of
      the steps, then anneal to ``min_lr``;
    * three phases (the paper): up, back down to ``initial_lr`` symmetrically,
      then down to ``min_lr``.
    """

    def phase(end_step, lr_from, lr_to, momentum_from, momentum_to):
        return {
            "end_step": end_step,
            "start_lr": lr_from,
            "end_lr": lr_to,
            "start_momentum": momentum_from,
            "end_momentum": momentum_to,
        }

    warmup_end = float(pct_start * total_steps) - 1
    warmup = phase(warmup_end, "initial_lr", "max_lr", "max_momentum", "base_momentum")
    if not three_phase:
        return [warmup, phase(total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
    return [
        warmup,
        phase(
            float(2 * pct_start * total_steps) - 2,
            "max_lr",
            "initial_lr",
            "base_momentum",
            "max_momentum",
        ),
        phase(total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
    ]


def one_cycle_value(t, phases, values, anneal, kind="lr"):
    """Anneal within the phase that contains step ``t``.

    ``values`` maps the names used in ``phases`` to numbers (OneCycleLR passes
    the param group itself); ``kind`` is ``"lr"`` or ``"momentum"``.
    """
    start_step = 0.0
    for i, phase in enumerate(phases):
        end_step = phase["end_step"]
        if t <= end_step or i == len(phases) - 1:
            pct = (t - start_step) / (end_step - start_step)
            return anneal(values[phase[f"start_{kind}"]], values[phase[f"end_{kind}"]], pct)
        start_step = end_step
    raise ValueError("one_cycle_value needs at least one phase")


def check_one_cycle_step(t, total_steps) -> None:
    """OneCycleLR is defined for ``t ≤ total_steps`` only (torch raises ValueError past it)."""
    if t > total_steps:
        raise ValueError(
            f"Tried to step {t} times. The specified number of total steps is {total_steps}"
        )


def _one_cycle(t, values, kind, total_steps, pct_start, anneal_strategy, three_phase):
    check_one_cycle_step(t, total_steps)
    phases = one_cycle_phases(total_steps, pct_start, three_phase)
    return one_cycle_value(t, phases, values, ANNEALERS[anneal_strategy], kind)


def one_cycle_lr(
    t,
    max_lr,
    total_steps,
    pct_start=0.3,
    anneal_strategy="cos",
    div_factor=25.0,
    final_div_factor=1e4,
    three_phase=False,
):
    """The lr of OneCycleLR: ``max_lr/div_factor`` → ``max_lr`` → ``initial/final_div_factor``."""
    initial_lr = max_lr / div_factor
    values = {"initial_lr": initial_lr, "max_lr": max_lr, "min_lr": initial_lr / final_div_factor}
    return _one_cycle(t, values, "lr", total_steps, pct_start, anneal_strategy, three_phase)


def one_cycle_momentum(
    t,
    total_steps,
    pct_start=0.3,
    anneal_strategy="cos",
    base_momentum=0.85,
    max_momentum=0.95,
    three_phase=False,
):
    """The momentum of OneCycleLR: moves opposite to the lr, ``max`` → ``base`` → ``max``."""
    values = {"base_momentum": base_momentum, "max_momentum": max_momentum}
    return _one_cycle(t, values, "momentum", total_steps, pct_start, anneal_strategy, three_phase)


# --------------------------------------------------------------------------
# Warmup then decay (fastoptim's WarmupDecayLR; not in torch)
# --------------------------------------------------------------------------

WARMUP_DECAYS = ("cos", "linear", "constant")


def warmup_decay_lr(
    t, base_lr, warmup_steps, total_steps, decay="cos", start_factor=0.0, end_factor=0.0
):
    r"""Linear warmup to η₀, then a cosine, linear or no decay to ``end_factor``·η₀.

    .. math::

        f(t) = \begin{cases}
          f_0 + (1 - f_0)\, t / W                     & t < W \\
          \mathrm{anneal}(1, f_1, \min(1, (t - W)/(T - W))) & t ≥ W
        \end{cases}
        \qquad η_t = η_0 f(t)

    with ``W = warmup_steps``, ``T = total_steps``, ``f₀ = start_factor``,
    ``f₁ = end_factor`` and ``anneal`` the cosine or straight line of
    OneCycleLR (:func:`anneal_cos`, :func:`anneal_linear`).  The peak η₀ is
    reached at ``t = W``; after ``T`` the lr stays at ``f₁·η₀``.  With
    ``decay="constant"`` the lr stays at η₀ after the warmup.
    """
    if t < warmup_steps:
        return base_lr * (start_factor + (1.0 - start_factor) * t / warmup_steps)
    if decay == "constant":
        return base_lr * 1.0
    decay_steps = total_steps - warmup_steps
    pct = min(1.0, (t - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return base_lr * ANNEALERS[decay](1.0, end_factor, pct)
