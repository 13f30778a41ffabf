"""fastoptim.lr_scheduler stepped side by side with torch.optim.lr_scheduler.

One table, ``CASES``, drives the differential tests.  Its configurations are
those of PyTorch's own test/optim/test_lrscheduler.py (a few lengthened or
extended where torch's run only ~10 steps).  For every case, every step:

* ``lr`` (and ``momentum`` / ``betas`` and the other keys schedulers write) of
  every param group, bit for bit and with the same type (float or Tensor);
* ``get_last_lr()`` of every scheduler;
* the warnings raised;
* halfway, ``state_dict()`` equals torch's; the run then continues on a fresh
  optimizer + scheduler restored from *our* state_dict, and at 3/4 from
  *torch's* state_dict -- and must still match torch's uninterrupted run.

Torch's schedulers always drive ``torch.optim`` optimizers; ours drive
``torch.optim`` or ``fastoptim`` ones (the ``backend`` parameter).
"""

from __future__ import annotations

import copy
import gc
import math
import pickle
import types
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.optim.lr_scheduler as torch_lrs
import torch.optim.swa_utils as torch_swa

import fastoptim.lr_scheduler as our_lrs
import fastoptim.swa_utils as our_swa
from fastoptim import schedules

STEPS = 60

# The two libraries, as namespaces a case builds its schedulers from.
TORCH = types.SimpleNamespace(**vars(torch_lrs), SWALR=torch_swa.SWALR)
OURS = types.SimpleNamespace(**vars(our_lrs), SWALR=our_swa.SWALR)

try:
    import fastoptim

    BACKENDS = ["torch"] + (["fastoptim"] if hasattr(fastoptim, "SGD") else [])
except ImportError:  # pragma: no cover - the package is always importable here
    BACKENDS = ["torch"]


# --------------------------------------------------------------------------
# Optimizers: two param groups, as in torch's tests (the second lr a Tensor)
# --------------------------------------------------------------------------


def _params():
    return [torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(3))]


def make_optimizer(kind: str, backend: str = "torch"):
    lib = torch.optim if backend == "torch" else fastoptim
    a, b = _params()
    if kind == "sgd":  # torch's TestLRScheduler.opt
        return lib.SGD([{"params": [a]}, {"params": [b], "lr": torch.tensor(0.5)}], lr=0.05)
    if kind == "sgd_float":
        return lib.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.05)
    if kind == "sgd_tensor":  # one Tensor lr for both groups' default
        return lib.SGD([a, b], lr=torch.tensor(2.0))
    if kind == "sgd_momentum":
        return lib.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.05, momentum=0.9)
    if kind == "adam":
        return lib.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.05)
    raise ValueError(kind)


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    build: Callable  # (namespace, optimizer, **extra) -> scheduler or list of schedulers
    opt: str = "sgd"
    steps: int = STEPS
    drive: Callable | None = None  # (schedulers, i) -> None; default: step all
    resumable: bool = False  # simple scheduler taking last_epoch


def make(name, **kwargs):
    """A builder for ``name(optimizer, **kwargs)``."""

    def build(ns, opt, **extra):
        return getattr(ns, name)(opt, **kwargs, **extra)

    build.__name__ = name
    return build


def simple(id, name, opt="sgd", **kwargs):
    return Case(f"{name}-{id}", make(name, **kwargs), opt=opt, resumable=True)


def several(id, *builders, opt="sgd", drive=None):
    """Schedulers stepped together on one optimizer (torch's "compound" tests)."""
    return Case(id, lambda ns, o: [b(ns, o) for b in builders], opt=opt, drive=drive)


def with_epochs(id, builder, epochs, opt="sgd"):
    """Driven by the deprecated ``step(epoch)`` (closed forms)."""

    def drive(scheds, i):
        for s in scheds:
            s.step(epochs[i])

    return Case(id, builder, opt=opt, steps=len(epochs), drive=drive)


def on_metrics(id, builders, metrics, opt="sgd"):
    """ReduceLROnPlateau (possibly with others) stepped on a metric."""

    def drive(scheds, i):
        for s in scheds:
            if isinstance(s, torch_lrs.ReduceLROnPlateau):
                s.step(metrics[i])
            else:
                s.step()

    return Case(id, lambda ns, o: [b(ns, o) for b in builders], opt=opt,
                steps=len(metrics), drive=drive)


def handover(id, first, second, switch, opt="sgd"):
    """``first`` steps until step ``switch``, then ``second`` (SWA, cosine-then-cyclic)."""

    def drive(scheds, i):
        (scheds[0] if i < switch else scheds[1]).step()

    return Case(id, lambda ns, o: [first(ns, o), second(ns, o)], opt=opt, drive=drive)


def sequential(id, builders, milestones, opt="sgd"):
    return Case(id, lambda ns, o: ns.SequentialLR(o, [b(ns, o) for b in builders], milestones), opt=opt)


def chained(id, builders, opt="sgd"):
    return Case(id, lambda ns, o: ns.ChainedScheduler([b(ns, o) for b in builders]), opt=opt)


class LambdaObject:
    """A callable lr_lambda whose __dict__ goes into the state_dict."""

    def __init__(self, value):
        self.value = value

    def __call__(self, epoch):
        return self.value * epoch


class HalvingScale:
    """A callable CyclicLR scale_fn with state."""

    def __init__(self):
        self.base = 0.5

    def __call__(self, x):
        return self.base**x


def _series(f, n=STEPS):
    return [f(i) for i in range(n)]


def _extend(head, n=STEPS):
    return head + [head[-1]] * (n - len(head))


# fractional epochs of torch's test_CosineAnnealingWarmRestarts_lr2/lr3, continued to ≥ 50 steps
_tenths = [round(0.1 * i, 1) for i in range(STEPS)]
_interleaved = {
    1: [0, 1, 2, 3, 4, 5, 12, 27, 3, 4, 5, 6, 13],
    2: [0, 1, 2, 3, 4, 5, 25, 32, 33, 34, 80, 81, 3],
    3: [0, 0.1, 0.2, 0.3, 1.3, 2.3, 17.5, 18.5, 19.5, 29.5, 30.5, 31.5, 50],
}


def _more_epochs(head):
    return head + [50 + 0.7 * k for k in range(STEPS - len(head))]


cyclic_momentum = dict(base_momentum=1, max_momentum=5)
one_cycle = dict(max_lr=25, final_div_factor=2, base_momentum=1, max_momentum=22, total_steps=STEPS)

CASES = [
    # LambdaLR / MultiplicativeLR
    simple("two-lambdas", "LambdaLR", lr_lambda=[lambda x: 0.9**x, lambda x: 0.8**x]),
    simple("floor", "LambdaLR", lr_lambda=lambda e: e // 10),
    simple("callable-object", "LambdaLR", lr_lambda=LambdaObject(10)),
    simple("two-lambdas", "MultiplicativeLR", lr_lambda=[lambda x: 0.9, lambda x: 0.8]),
    simple("constant", "MultiplicativeLR", lr_lambda=lambda e: 0.95),
    # StepLR / MultiStepLR
    simple("3", "StepLR", gamma=0.1, step_size=3),
    simple("2", "StepLR", step_size=2),
    simple("1", "StepLR", gamma=0.01 / 2, step_size=1),
    simple("30", "StepLR", step_size=30),
    simple("float-lrs", "StepLR", opt="sgd_float", gamma=0.1, step_size=3),
    simple("2-5-9", "MultiStepLR", gamma=0.1, milestones=[2, 5, 9]),
    simple("1-4-6", "MultiStepLR", gamma=0.01, milestones=[1, 4, 6]),
    simple("30-80", "MultiStepLR", milestones=[30, 80]),
    simple("repeated", "MultiStepLR", gamma=0.5, milestones=[3, 3, 10]),
    # ConstantLR / LinearLR
    simple("half", "ConstantLR", factor=1.0 / 2, total_iters=5),
    simple("third", "ConstantLR", factor=1.0 / 3, total_iters=4),
    simple("defaults", "ConstantLR"),
    simple("tenth", "ConstantLR", factor=0.1, total_iters=3),
    simple("one", "ConstantLR", factor=1),
    simple("quarter-to-3/5", "LinearLR", start_factor=1.0 / 4, end_factor=3.0 / 5, total_iters=4),
    simple("half", "LinearLR", start_factor=1.0 / 2, total_iters=4),
    simple("third-to-0.7", "LinearLR", start_factor=1.0 / 3, end_factor=0.7, total_iters=4),
    simple("defaults", "LinearLR"),
    simple("0.4", "LinearLR", start_factor=0.4, total_iters=3),
    simple("down", "LinearLR", start_factor=0.5, end_factor=0.1, total_iters=5),
    simple("to-zero", "LinearLR", start_factor=0.5, end_factor=0.0, total_iters=4),
    # ExponentialLR / PolynomialLR
    simple("0.9", "ExponentialLR", gamma=0.9),
    simple("0.1", "ExponentialLR", gamma=0.1),
    simple("0.01", "ExponentialLR", gamma=0.01),
    simple("0.999", "ExponentialLR", gamma=0.999),
    simple("0.9-5", "PolynomialLR", power=0.9, total_iters=5),
    simple("0.9", "PolynomialLR", power=0.9),
    simple("defaults", "PolynomialLR"),
    simple("square-30", "PolynomialLR", power=2.0, total_iters=30),
    # CosineAnnealingLR
    simple("10", "CosineAnnealingLR", T_max=10, eta_min=1e-10),
    simple("5", "CosineAnnealingLR", T_max=5, eta_min=1e-10),
    simple("5-0.1", "CosineAnnealingLR", T_max=5, eta_min=0.1),
    simple("20-0.1", "CosineAnnealingLR", T_max=20, eta_min=0.1),
    simple("7", "CosineAnnealingLR", T_max=7),
    # CosineAnnealingWarmRestarts
    *[simple(f"mult{m}", "CosineAnnealingWarmRestarts", T_0=10, T_mult=m, eta_min=1e-10) for m in (1, 2, 4)],
    simple("100", "CosineAnnealingWarmRestarts", T_0=100),
    simple("20", "CosineAnnealingWarmRestarts", T_0=20),
    simple("4", "CosineAnnealingWarmRestarts", T_0=4),
    *[
        with_epochs(f"CosineAnnealingWarmRestarts-tenths-mult{m}",
                    make("CosineAnnealingWarmRestarts", T_0=10, T_mult=m, eta_min=1e-10), _tenths)
        for m in (1, 2, 4)
    ],
    *[
        with_epochs(f"CosineAnnealingWarmRestarts-interleaved-mult{m}",
                    make("CosineAnnealingWarmRestarts", T_0=10, T_mult=m, eta_min=1e-10),
                    _more_epochs(head))
        for m, head in _interleaved.items()
    ],
    # CyclicLR
    simple("triangular", "CyclicLR", base_lr=1, max_lr=5, step_size_up=4, mode="triangular", **cyclic_momentum),
    simple("no-momentum", "CyclicLR", base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=False),
    simple("triangular2", "CyclicLR", base_lr=1, max_lr=5, step_size_up=4, mode="triangular2", **cyclic_momentum),
    simple("exp-range", "CyclicLR", base_lr=1, max_lr=5, step_size_up=4, mode="exp_range", gamma=0.9, **cyclic_momentum),
    simple("per-group", "CyclicLR", base_lr=[1, 2], max_lr=[5, 6], step_size_up=4,
           base_momentum=[1, 2], max_momentum=[5, 6]),
    simple("per-group-triangular2", "CyclicLR", base_lr=[1, 3], max_lr=[5, 7], step_size_up=4,
           mode="triangular2", base_momentum=[1, 3], max_momentum=[5, 7]),
    simple("per-group-exp-range", "CyclicLR", base_lr=[1, 5], max_lr=[5, 12], step_size_up=4,
           mode="exp_range", gamma=0.9, base_momentum=[1, 5], max_momentum=[5, 12]),
    simple("up4-down6", "CyclicLR", base_lr=1, max_lr=5, step_size_up=4, step_size_down=6, **cyclic_momentum),
    simple("up2-down6-triangular2", "CyclicLR", base_lr=[1, 3], max_lr=[5, 7], step_size_up=2,
           step_size_down=6, mode="triangular2", base_momentum=[1, 3], max_momentum=[5, 7]),
    simple("up2-down6-exp-range", "CyclicLR", base_lr=1, max_lr=5, step_size_up=2, step_size_down=6,
           mode="exp_range", gamma=0.9, **cyclic_momentum),
    simple("adam-no-momentum", "CyclicLR", opt="adam", base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=False),
    simple("adam-beta1", "CyclicLR", opt="adam", base_lr=1, max_lr=5, step_size_up=4),
    simple("defaults", "CyclicLR", base_lr=0.01, max_lr=0.1),
    simple("scale-fn-lambda", "CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=5,
           scale_fn=lambda x: 0.9**x, scale_mode="iterations"),
    simple("scale-fn-object", "CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=5, scale_fn=HalvingScale()),
    handover("CosineAnnealingLR-then-CyclicLR",
             make("CosineAnnealingLR", T_max=20, eta_min=0.1),
             make("CyclicLR", base_lr=0.1, max_lr=0.3, step_size_up=1, step_size_down=3), 21,
             opt="sgd_momentum"),
    # OneCycleLR
    simple("linear", "OneCycleLR", anneal_strategy="linear", **one_cycle),
    simple("linear-three-phase", "OneCycleLR", anneal_strategy="linear", pct_start=0.4,
           three_phase=True, **{**one_cycle, "final_div_factor": 4}),
    simple("cos", "OneCycleLR", **one_cycle),
    simple("cos-three-phase", "OneCycleLR", three_phase=True, **one_cycle),
    simple("adam-beta1", "OneCycleLR", opt="adam", anneal_strategy="linear", **one_cycle),
    simple("small", "OneCycleLR", max_lr=0.01, total_steps=STEPS, anneal_strategy="linear"),
    simple("epochs", "OneCycleLR", max_lr=0.01, epochs=6, steps_per_epoch=10),
    simple("per-group-no-momentum", "OneCycleLR", max_lr=[0.1, 1.0], total_steps=STEPS + 5, cycle_momentum=False),
    # ReduceLROnPlateau, alone (torch's cases 1-8) and with others
    on_metrics("ReduceLROnPlateau-1", [make("ReduceLROnPlateau", threshold_mode="abs", mode="min",
               threshold=0.01, patience=5, cooldown=5)], _series(lambda i: 10 - i * 0.0167)),
    on_metrics("ReduceLROnPlateau-2", [make("ReduceLROnPlateau", patience=5, cooldown=0,
               threshold_mode="abs", mode="min", threshold=0.1)], _series(lambda i: 10 - i * 0.0165)),
    on_metrics("ReduceLROnPlateau-3", [make("ReduceLROnPlateau", mode="max", patience=5, cooldown=5,
               threshold_mode="abs")], _extend([-0.8] * 2 + [-0.234])),
    on_metrics("ReduceLROnPlateau-4", [make("ReduceLROnPlateau", mode="max", patience=3,
               threshold_mode="rel", threshold=0.1)], _series(lambda i: 1.5 * 1.025**i)),
    on_metrics("ReduceLROnPlateau-5", [make("ReduceLROnPlateau", mode="max", threshold_mode="rel",
               threshold=0.1, patience=5, cooldown=5)], _series(lambda i: 1.5 * 1.005**i)),
    on_metrics("ReduceLROnPlateau-6", [make("ReduceLROnPlateau", mode="min", threshold_mode="rel",
               threshold=0.1)], _series(lambda i: 1.5 * 0.85**i)),
    on_metrics("ReduceLROnPlateau-7", [make("ReduceLROnPlateau", mode="min", threshold_mode="rel",
               threshold=0.1, patience=5, cooldown=5)], _extend([1] * 7 + [0.6] + [0.5])),
    on_metrics("ReduceLROnPlateau-8-min-lrs", [make("ReduceLROnPlateau", mode="max", threshold_mode="rel",
               min_lr=[0.4, 0.3], threshold=0.1, patience=5, cooldown=5)], _series(lambda i: 1.5 * 1.005**i)),
    on_metrics("ReduceLROnPlateau-patience0", [make("ReduceLROnPlateau", patience=0)],
               _series(lambda i: float(i % 3))),
    on_metrics("ReduceLROnPlateau-eps", [make("ReduceLROnPlateau", patience=1, factor=0.5, min_lr=0.01,
               eps=0.02)], _series(lambda i: 1.0)),
    on_metrics("ReduceLROnPlateau-tensor-metric", [make("ReduceLROnPlateau", patience=2)],
               _series(lambda i: torch.tensor(1.0 + (i % 4)))),
    on_metrics("ReduceLROnPlateau+StepLR", [make("ReduceLROnPlateau", threshold_mode="abs", mode="min",
               threshold=0.01, patience=5, cooldown=5), make("StepLR", gamma=0.1, step_size=3)],
               _series(lambda i: 10 - i * 0.0167)),
    on_metrics("ReduceLROnPlateau+MultiStepLR", [make("ReduceLROnPlateau", patience=5, cooldown=0,
               threshold_mode="abs", mode="min", threshold=0.1), make("MultiStepLR", gamma=0.1,
               milestones=[3, 8, 12])], _series(lambda i: 10 - i * 0.0165)),
    on_metrics("ReduceLROnPlateau+ExponentialLR", [make("ReduceLROnPlateau", mode="max", patience=5,
               cooldown=5, threshold_mode="abs"), make("ExponentialLR", gamma=0.1)],
               _extend([-0.8] * 2 + [-0.234])),
    on_metrics("ReduceLROnPlateau+CosineAnnealingLR", [make("ReduceLROnPlateau", mode="max", patience=3,
               threshold_mode="rel", threshold=0.1), make("CosineAnnealingLR", T_max=10, eta_min=1e-10)],
               _series(lambda i: 1.5 * 1.025**i)),
    on_metrics("ReduceLROnPlateau+LinearLR", [make("ReduceLROnPlateau", patience=5, cooldown=0,
               threshold_mode="abs", mode="min", threshold=0.1), make("LinearLR", start_factor=0.4,
               total_iters=4)], _series(lambda i: 10 - i * 0.0165)),
    # SequentialLR
    sequential("SequentialLR-1", [make("ExponentialLR", gamma=0.8), make("StepLR", gamma=0.1, step_size=4)], [3]),
    sequential("SequentialLR-2", [make("ConstantLR", factor=0.1, total_iters=3), make("ExponentialLR", gamma=0.9)], [3]),
    sequential("SequentialLR-3", [make("ConstantLR", factor=0.1, total_iters=3), make("ExponentialLR", gamma=0.8),
               make("StepLR", gamma=0.1, step_size=2)], [3, 6]),
    sequential("SequentialLR-4", [make("ConstantLR", factor=1), make("ConstantLR", factor=0.1)], [10]),
    sequential("SequentialLR-5-chained", [
        lambda ns, o: ns.ChainedScheduler([ns.LinearLR(o, start_factor=0.1, total_iters=5),
                                           ns.ConstantLR(o, factor=0.1, total_iters=5)]),
        make("ConstantLR", factor=0.5, total_iters=5)], [5]),
    sequential("SequentialLR-tensor-lr", [make("LinearLR", start_factor=0.1, end_factor=0.8, total_iters=4),
               make("LinearLR", start_factor=0.8, end_factor=0.1, total_iters=4)], [4], opt="sgd_tensor"),
    sequential("SequentialLR-linear-exp", [make("LinearLR", start_factor=0.5, end_factor=0.1, total_iters=5),
               make("ExponentialLR", gamma=0.9)], [5]),
    sequential("SequentialLR-warmup-cosine", [make("LinearLR", start_factor=0.1, total_iters=5),
               make("CosineAnnealingLR", T_max=45)], [5]),
    # ChainedScheduler
    chained("ChainedScheduler-1", [make("StepLR", gamma=0.1, step_size=3)]),
    chained("ChainedScheduler-2", [make("LinearLR", start_factor=0.4, total_iters=3)]),
    chained("ChainedScheduler-3", [make("LinearLR", start_factor=0.4, total_iters=3),
                                   make("MultiStepLR", milestones=[4, 8, 10], gamma=0.1)]),
    chained("ChainedScheduler-4", [make("ExponentialLR", gamma=0.9), make("ConstantLR", factor=0.2, total_iters=4),
                                   make("StepLR", gamma=0.1, step_size=3)]),
    chained("ChainedScheduler-5", [make("PolynomialLR", power=0.9, total_iters=5), make("ConstantLR", factor=0.1)]),
    Case("ChainedScheduler-explicit-optimizer",
         lambda ns, o: ns.ChainedScheduler([ns.ExponentialLR(o, gamma=0.95)], optimizer=o)),
    # several schedulers stepped together (torch's "compound" tests)
    several("StepLR+MultiStepLR", make("StepLR", gamma=0.1, step_size=3), make("MultiStepLR", gamma=0.1, milestones=[2, 5, 9])),
    several("StepLR+ExponentialLR", make("StepLR", gamma=0.1, step_size=3), make("ExponentialLR", gamma=0.9)),
    several("MultiStepLR+ExponentialLR", make("MultiStepLR", gamma=0.1, milestones=[2, 5, 9]), make("ExponentialLR", gamma=0.9)),
    several("LinearLR+ExponentialLR", make("LinearLR", start_factor=0.4, end_factor=0.9, total_iters=4),
            make("ExponentialLR", gamma=0.9)),
    several("StepLR+ConstantLR", make("StepLR", gamma=0.1, step_size=3), make("ConstantLR", factor=0.4, total_iters=4)),
    several("MultiStepLR+LinearLR", make("MultiStepLR", gamma=0.1, milestones=[2, 5, 9]),
            make("LinearLR", start_factor=0.4, total_iters=4)),
    several("CosineAnnealingLR+StepLR", make("CosineAnnealingLR", T_max=10, eta_min=1e-10), make("StepLR", gamma=0.1, step_size=3)),
    several("CosineAnnealingLR+MultiStepLR", make("CosineAnnealingLR", T_max=10, eta_min=1e-10),
            make("MultiStepLR", gamma=0.1, milestones=[2, 5, 9])),
    several("LinearLR+CosineAnnealingLR", make("LinearLR", start_factor=0.4, total_iters=4),
            make("CosineAnnealingLR", T_max=10, eta_min=1e-10)),
    several("CosineAnnealingLR+ExponentialLR", make("CosineAnnealingLR", T_max=10, eta_min=1e-10), make("ExponentialLR", gamma=0.1)),
    # SWALR, alone and after another scheduler
    handover("SWALR-no-anneal", make("ConstantLR", factor=1), make("SWALR", anneal_epochs=1, swa_lr=0.01), 5),
    handover("SWALR-cos-after-MultiplicativeLR", make("MultiplicativeLR", lr_lambda=lambda e: 0.9),
             make("SWALR", anneal_epochs=5, swa_lr=0.01), 5),
    handover("SWALR-linear-after-MultiplicativeLR", make("MultiplicativeLR", lr_lambda=lambda e: 0.9),
             make("SWALR", anneal_epochs=4, anneal_strategy="linear", swa_lr=[0.01, 0.02]), 5),
    simple("3", "SWALR", anneal_epochs=3, swa_lr=0.5),
    simple("linear-10", "SWALR", anneal_epochs=10, anneal_strategy="linear", swa_lr=5.0),
    simple("defaults", "SWALR", swa_lr=0.01),
    simple("no-anneal", "SWALR", anneal_epochs=0, swa_lr=0.01),
    # the deprecated step(epoch): closed forms
    with_epochs("MultiStepLR-epochs", make("MultiStepLR", gamma=0.1, milestones=[2, 5, 9]), list(range(STEPS))),
    with_epochs("ConstantLR-epochs", make("ConstantLR", factor=1.0 / 2, total_iters=5), list(range(STEPS))),
    with_epochs("LinearLR-epochs", make("LinearLR", start_factor=1.0 / 2, total_iters=4), list(range(STEPS))),
    with_epochs("StepLR-epochs", make("StepLR", gamma=0.1, step_size=3), list(range(STEPS))),
    with_epochs("LinearLR-0.7-epochs", make("LinearLR", start_factor=1.0 / 3, end_factor=0.7, total_iters=4),
                list(range(STEPS))),
    with_epochs("ExponentialLR-epochs", make("ExponentialLR", gamma=0.9), list(range(STEPS))),
    with_epochs("PolynomialLR-epochs", make("PolynomialLR", power=0.9), list(range(STEPS))),
    with_epochs("CosineAnnealingLR-epochs", make("CosineAnnealingLR", T_max=5, eta_min=1e-10), list(range(STEPS))),
    with_epochs("LambdaLR-epochs", make("LambdaLR", lr_lambda=lambda e: 0.9**e), list(range(STEPS))),
    with_epochs("CyclicLR-epochs", make("CyclicLR", base_lr=0.1, max_lr=0.2, step_size_up=7), list(range(STEPS))),
    with_epochs("OneCycleLR-epochs", make("OneCycleLR", max_lr=0.1, total_steps=STEPS), list(range(STEPS))),
    *[
        with_epochs(f"{name}-constant-epoch", make(name, **kw), [2] * STEPS)
        for name, kw in [("StepLR", dict(step_size=2)), ("ExponentialLR", dict(gamma=0.9)),
                         ("ConstantLR", {}), ("LinearLR", {}), ("PolynomialLR", dict(power=0.9))]
    ],
]

RESUMABLE = [c for c in CASES if c.resumable]


# --------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------

GROUP_KEYS = ("lr", "initial_lr", "momentum", "betas", "max_lr", "min_lr",
              "max_momentum", "base_momentum", "swa_lr")


def assert_same(ref, got, where):
    """Equal values of equal types: floats bit for bit, Tensors element for element."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == ref.dtype, f"{where}: {got!r} vs {ref!r}"
        assert torch.equal(got, ref), f"{where}: {got!r} != {ref!r}"
    elif isinstance(ref, dict):
        assert isinstance(got, dict) and set(got) == set(ref), f"{where}: keys {sorted(got)} vs {sorted(ref)}"
        for key in ref:
            assert_same(ref[key], got[key], f"{where}[{key!r}]")
    elif isinstance(ref, (list, tuple)):
        assert type(got) is type(ref) and len(got) == len(ref), f"{where}: {got!r} vs {ref!r}"
        for i, (r, g) in enumerate(zip(ref, got)):
            assert_same(r, g, f"{where}[{i}]")
    elif callable(ref):
        assert callable(got), f"{where}: {got!r} is not callable"
    else:
        assert type(got) is type(ref) and got == ref, f"{where}: {got!r} ({type(got).__name__}) != {ref!r}"


def frozen(value):
    """A copy that later in-place updates (``fill_``) cannot change."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(frozen(v) for v in value)
    return value


def snapshot(optimizer, schedulers):
    groups = [{k: frozen(g[k]) for k in GROUP_KEYS if k in g} for g in optimizer.param_groups]
    return {"groups": groups, "last_lr": [frozen(s.get_last_lr()) for s in schedulers]}


def as_list(scheduler_or_list):
    return scheduler_or_list if isinstance(scheduler_or_list, list) else [scheduler_or_list]


def recorded(fn, *args, **kwargs):
    """Run ``fn``; return (result, [(category, message) of each warning])."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [(w.category, str(w.message)) for w in caught]


def default_drive(scheds, i):
    for s in scheds:
        s.step()


class SideBySide:
    """Torch's schedulers on a torch optimizer, ours on a ``backend`` optimizer."""

    def __init__(self, case: Case, backend: str):
        self.case, self.backend = case, backend
        self.ref_opt = make_optimizer(case.opt)
        self.our_opt = make_optimizer(case.opt, backend)
        self.ref, ref_warnings = recorded(lambda: as_list(case.build(TORCH, self.ref_opt)))
        self.ours, our_warnings = recorded(lambda: as_list(case.build(OURS, self.our_opt)))
        assert our_warnings == ref_warnings
        self.check("construction")

    def check(self, where):
        assert_same(snapshot(self.ref_opt, self.ref), snapshot(self.our_opt, self.ours), where)

    def step(self, i):
        drive = self.case.drive or default_drive
        for opt, scheds in ((self.ref_opt, self.ref), (self.our_opt, self.ours)):
            opt.step()
        _, ref_warnings = recorded(drive, self.ref, i)
        _, our_warnings = recorded(drive, self.ours, i)
        assert our_warnings == ref_warnings, f"step {i}"
        self.check(f"step {i}")

    def restore_ours(self, states):
        """Continue on a fresh optimizer + schedulers loaded from ``states``."""
        fresh_opt = make_optimizer(self.case.opt, self.backend)
        fresh, _ = recorded(lambda: as_list(self.case.build(OURS, fresh_opt)))
        fresh_opt.load_state_dict(self.our_opt.state_dict())
        for scheduler, state in zip(fresh, states):
            scheduler.load_state_dict(copy.deepcopy(state))
        self.our_opt, self.ours = fresh_opt, fresh


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_torch_step_by_step(case, backend):
    run = SideBySide(case, backend)
    for i in range(case.steps):
        run.step(i)
        if i == case.steps // 2:
            our_states = [s.state_dict() for s in run.ours]
            assert_same([s.state_dict() for s in run.ref], our_states, "state_dict")
            run.restore_ours(our_states)
        if i == 3 * case.steps // 4:  # torch's state_dicts load into ours too
            run.restore_ours([s.state_dict() for s in run.ref])


@pytest.mark.parametrize("case", RESUMABLE, ids=lambda c: c.id)
def test_resume_with_last_epoch(case):
    """After k steps, a scheduler rebuilt with ``last_epoch=k-1`` continues as torch's does."""
    k = case.steps // 2
    runs = {}
    for name, ns in (("torch", TORCH), ("ours", OURS)):
        opt = make_optimizer(case.opt)
        sched, _ = recorded(case.build, ns, opt)
        for _ in range(k):
            opt.step()
            recorded(sched.step)
        resumed_opt = make_optimizer(case.opt)
        resumed_opt.load_state_dict(opt.state_dict())
        resumed, _ = recorded(case.build, ns, resumed_opt, last_epoch=k - 1)
        lrs = [snapshot(resumed_opt, [resumed])]
        for _ in range(case.steps - k):
            resumed_opt.step()
            recorded(resumed.step)
            lrs.append(snapshot(resumed_opt, [resumed]))
        runs[name] = lrs
    assert_same(runs["torch"], runs["ours"], "resumed run")


def test_resume_without_initial_lr_raises_key_error():
    opt = make_optimizer("sgd")
    with pytest.raises(KeyError, match=r"param 'initial_lr' is not specified in param_groups\[0\]"):
        our_lrs.StepLR(opt, step_size=3, last_epoch=1)


# --------------------------------------------------------------------------
# Invalid arguments raise what torch raises
# --------------------------------------------------------------------------


def _rprop(ns, o):
    return ns.CyclicLR(torch.optim.Rprop(_params()), base_lr=1, max_lr=5, cycle_momentum=True)


def _two_optimizers(ns, o):
    return ns.SequentialLR(o, [ns.ConstantLR(o), ns.ConstantLR(make_optimizer("sgd"))], [2])


def _plateau_in_sequence(ns, o):
    return ns.SequentialLR(o, [ns.ConstantLR(o), ns.ReduceLROnPlateau(o)], [2])


def _step_past_total(ns, o):
    sched = ns.OneCycleLR(o, max_lr=0.1, total_steps=10)
    for _ in range(11):
        o.step()
        sched.step()


def _add_group_then_plateau(ns, o):
    sched = ns.ReduceLROnPlateau(o, patience=0, min_lr=[1e-5, 1e-4])
    o.add_param_group({"params": [torch.nn.Parameter(torch.rand(2, 3))], "lr": 0.05})
    sched.step(1)
    sched.step(1.3)


def _negative_epoch(ns, o):
    ns.CosineAnnealingWarmRestarts(o, T_0=4).step(-1)


def _zero_factor(ns, o):
    sched = ns.ConstantLR(o, factor=0, total_iters=2)
    for _ in range(3):
        o.step()
        sched.step()


INVALID = {
    "not-an-optimizer": lambda ns, o: ns.StepLR(object(), step_size=1),
    "OneCycleLR-not-an-optimizer": lambda ns, o: ns.OneCycleLR(object(), max_lr=1, total_steps=1),
    "CyclicLR-not-an-optimizer": lambda ns, o: ns.CyclicLR(object(), base_lr=1, max_lr=2),
    "ReduceLROnPlateau-not-an-optimizer": lambda ns, o: ns.ReduceLROnPlateau(object()),
    "LambdaLR-wrong-count": lambda ns, o: ns.LambdaLR(o, lr_lambda=[lambda e: 1.0]),
    "LambdaLR-not-callable": lambda ns, o: ns.LambdaLR(o, lr_lambda=0.95),
    "MultiplicativeLR-not-callable": lambda ns, o: ns.MultiplicativeLR(o, 0.95),
    "MultiplicativeLR-not-callable-list": lambda ns, o: ns.MultiplicativeLR(o, [0.95, 0.95]),
    "ConstantLR-factor-above-1": lambda ns, o: ns.ConstantLR(o, factor=1.5),
    "ConstantLR-factor-negative": lambda ns, o: ns.ConstantLR(o, factor=-0.1),
    "ConstantLR-factor-zero-divides": _zero_factor,
    "LinearLR-start-0": lambda ns, o: ns.LinearLR(o, start_factor=0.0, total_iters=4),
    "LinearLR-start-1.1": lambda ns, o: ns.LinearLR(o, start_factor=1.1, total_iters=4),
    "LinearLR-end-1.5": lambda ns, o: ns.LinearLR(o, end_factor=1.5),
    "CosineAnnealingWarmRestarts-T0-zero": lambda ns, o: ns.CosineAnnealingWarmRestarts(o, T_0=0),
    "CosineAnnealingWarmRestarts-T0-float": lambda ns, o: ns.CosineAnnealingWarmRestarts(o, T_0=1.5),
    "CosineAnnealingWarmRestarts-Tmult-zero": lambda ns, o: ns.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=0),
    "CosineAnnealingWarmRestarts-Tmult-float": lambda ns, o: ns.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=1.5),
    "CosineAnnealingWarmRestarts-eta-min-str": lambda ns, o: ns.CosineAnnealingWarmRestarts(o, T_0=2, eta_min="0"),
    "CosineAnnealingWarmRestarts-negative-epoch": _negative_epoch,
    "CyclicLR-mode": lambda ns, o: ns.CyclicLR(o, base_lr=0, max_lr=0, mode="CATS"),
    "CyclicLR-momentumless": _rprop,
    "CyclicLR-base-lr-count": lambda ns, o: ns.CyclicLR(o, base_lr=[1, 2, 3], max_lr=5),
    "CyclicLR-max-momentum-count": lambda ns, o: ns.CyclicLR(o, base_lr=1, max_lr=5, max_momentum=[0.9]),
    "OneCycleLR-anneal": lambda ns, o: ns.OneCycleLR(o, max_lr=1e-3, total_steps=10, anneal_strategy="CATS"),
    "OneCycleLR-pct-start": lambda ns, o: ns.OneCycleLR(o, max_lr=1e-3, total_steps=10, pct_start=1.1),
    "OneCycleLR-pct-start-int": lambda ns, o: ns.OneCycleLR(o, max_lr=1e-3, total_steps=10, pct_start=1),
    "OneCycleLR-no-total": lambda ns, o: ns.OneCycleLR(o, max_lr=1e-3),
    "OneCycleLR-total-zero": lambda ns, o: ns.OneCycleLR(o, max_lr=1e-3, total_steps=0),
    "OneCycleLR-epochs-zero": lambda ns, o: ns.OneCycleLR(o, max_lr=1e-3, epochs=0, steps_per_epoch=3),
    "OneCycleLR-steps-per-epoch-float": lambda ns, o: ns.OneCycleLR(o, max_lr=1e-3, epochs=2, steps_per_epoch=1.5),
    "OneCycleLR-max-lr-count": lambda ns, o: ns.OneCycleLR(o, max_lr=[1, 2, 3], total_steps=10),
    "OneCycleLR-past-total": _step_past_total,
    "ReduceLROnPlateau-factor": lambda ns, o: ns.ReduceLROnPlateau(o, factor=1.0),
    "ReduceLROnPlateau-mode": lambda ns, o: ns.ReduceLROnPlateau(o, mode="median"),
    "ReduceLROnPlateau-threshold-mode": lambda ns, o: ns.ReduceLROnPlateau(o, threshold_mode="pct"),
    "ReduceLROnPlateau-min-lr-count": lambda ns, o: ns.ReduceLROnPlateau(o, min_lr=[0.1]),
    "ReduceLROnPlateau-added-group": _add_group_then_plateau,
    "SequentialLR-empty": lambda ns, o: ns.SequentialLR(o, [], []),
    "SequentialLR-milestones": lambda ns, o: ns.SequentialLR(o, [ns.ConstantLR(o), ns.ConstantLR(o)], [1, 2]),
    "SequentialLR-plateau": _plateau_in_sequence,
    "SequentialLR-two-optimizers": _two_optimizers,
    "SequentialLR-no-optimizer-attribute": lambda ns, o: ns.SequentialLR(o, [object()], []),
    "ChainedScheduler-empty": lambda ns, o: ns.ChainedScheduler([]),
    "ChainedScheduler-plateau": lambda ns, o: ns.ChainedScheduler([ns.ReduceLROnPlateau(o)]),
    "SWALR-anneal-strategy": lambda ns, o: ns.SWALR(o, anneal_strategy="exponential", swa_lr=1.0),
    "SWALR-anneal-epochs-negative": lambda ns, o: ns.SWALR(o, anneal_epochs=-1, swa_lr=1.0),
    "SWALR-anneal-epochs-float": lambda ns, o: ns.SWALR(o, anneal_epochs=1.7, swa_lr=1.0),
    "SWALR-swa-lr-count": lambda ns, o: ns.SWALR(o, swa_lr=[1.0, 0.1, 0.01]),
}


@pytest.mark.parametrize("build", INVALID.values(), ids=INVALID.keys())
def test_invalid_arguments_raise_like_torch(build):
    with pytest.raises(Exception) as torch_error:
        recorded(build, TORCH, make_optimizer("sgd"))
    with pytest.raises(torch_error.type) as our_error:
        recorded(build, OURS, make_optimizer("sgd"))
    assert type(our_error.value) is torch_error.type


@pytest.mark.parametrize(
    "build, message",
    [
        (INVALID["MultiplicativeLR-not-callable"], "lr_lambda should be a function"),
        (INVALID["SWALR-anneal-strategy"], "anneal_strategy must"),
        (INVALID["SWALR-anneal-epochs-float"], "anneal_epochs must"),
        (INVALID["SWALR-swa-lr-count"], "swa_lr must"),
        (_add_group_then_plateau, "The number of param groups in the"),
        (_step_past_total, "Tried to step 11 times"),
    ],
)
def test_error_messages_that_torch_tests_match(build, message):
    with pytest.raises(Exception, match=message):
        recorded(build, OURS, make_optimizer("sgd"))


# --------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------


def _scheduler_first(ns, opt):
    _scheduler_first_with(ns.StepLR(opt, gamma=0.1, step_size=3), opt)


def _resumed_scheduler_first(ns, opt):
    for group in opt.param_groups:
        group["initial_lr"] = 0.01
    _scheduler_first_with(ns.StepLR(opt, gamma=0.1, step_size=3, last_epoch=10), opt)


def _scheduler_first_with(sched, opt):
    for _ in range(3):
        sched.step()
        opt.step()


def _overridden_step(ns, opt):
    sched = ns.StepLR(opt, gamma=0.1, step_size=3)
    old_step = opt.step
    opt.step = types.MethodType(lambda self, *a, **k: old_step(*a, **k), opt)
    for _ in range(3):
        opt.step()
        sched.step()


def _right_order(ns, opt):
    sched = ns.SequentialLR(opt, [ns.LinearLR(opt, 0.5, 0.1, total_iters=5), ns.ExponentialLR(opt, 0.9)], [5])
    for _ in range(10):
        opt.step()
        sched.step()


def _get_lr_called_directly(ns, opt):
    return ns.ExponentialLR(opt, gamma=0.9).get_lr()


def _epoch_given(ns, opt):
    sched = ns.ExponentialLR(opt, gamma=0.9)
    opt.step()
    sched.step(3)


def _plateau_epoch_given(ns, opt):
    ns.ReduceLROnPlateau(opt).step(1.0, epoch=3)


@pytest.mark.parametrize(
    "scenario",
    [_scheduler_first, _resumed_scheduler_first, _overridden_step, _right_order,
     _get_lr_called_directly, _epoch_given, _plateau_epoch_given],
)
def test_warnings_match_torch(scenario):
    _, ref = recorded(scenario, TORCH, make_optimizer("sgd"))
    _, ours = recorded(scenario, OURS, make_optimizer("sgd"))
    assert ours == ref
    if scenario is not _right_order:
        assert ours, "the scenario should warn"


def test_warning_points_at_the_callers_line():
    opt = make_optimizer("sgd")
    sched = our_lrs.StepLR(opt, step_size=3)
    with pytest.warns(UserWarning, match="Detected call of `lr_scheduler.step\\(\\)`") as caught:
        sched.step()
    assert caught[0].filename == __file__


# --------------------------------------------------------------------------
# Interoperability with torch
# --------------------------------------------------------------------------


def test_isinstance_checks_of_frameworks_pass():
    opt = make_optimizer("sgd")
    assert isinstance(our_lrs.StepLR(opt, 3), torch_lrs.LRScheduler)
    plateau = our_lrs.ReduceLROnPlateau(opt)
    assert isinstance(plateau, torch_lrs.ReduceLROnPlateau)
    assert isinstance(plateau, our_lrs.LRScheduler)
    assert isinstance(our_swa.SWALR(opt, swa_lr=0.1), torch_lrs.LRScheduler)
    assert issubclass(our_lrs._LRScheduler, torch_lrs.LRScheduler)


OUR_CLASSES = [getattr(our_lrs, name) for name in our_lrs.__all__] + [our_swa.SWALR]


@pytest.mark.parametrize("cls", OUR_CLASSES, ids=lambda c: c.__name__)
def test_no_torch_scheduler_code_runs(cls):
    """Every method resolves to fastoptim, although the classes subclass torch's."""
    for name in dir(cls):
        owner = next(k for k in cls.__mro__ if name in vars(k))
        if owner is object:
            continue
        value = vars(owner)[name]
        if callable(value) or isinstance(value, (property, staticmethod, classmethod)):
            assert owner.__module__.startswith("fastoptim"), f"{cls.__name__}.{name} is torch's"


@pytest.mark.parametrize("name", [n for n in our_lrs.__all__ if hasattr(torch_lrs, n)])
def test_closed_form_availability_matches_torch(name):
    """``step(epoch)`` takes the closed form exactly where torch's does."""
    ours, theirs = getattr(our_lrs, name), getattr(torch_lrs, name)
    assert hasattr(ours, "_get_closed_form_lr") == hasattr(theirs, "_get_closed_form_lr")


def _warmup_cosine(ns, inner, opt):
    return ns.SequentialLR(opt, [inner.LinearLR(opt, 0.1, total_iters=5), inner.CosineAnnealingLR(opt, 20)], [5])


def _chained(ns, inner, opt):
    return ns.ChainedScheduler([inner.ConstantLR(opt, 0.2, 4), inner.CosineAnnealingLR(opt, 20)])


@pytest.mark.parametrize("combine", [_warmup_cosine, _chained], ids=["SequentialLR", "ChainedScheduler"])
@pytest.mark.parametrize("outer, inner", [(OURS, TORCH), (TORCH, OURS)], ids=["ours-of-torch", "torch-of-ours"])
def test_combinations_mix_libraries(combine, outer, inner):
    ref_opt, opt = make_optimizer("sgd"), make_optimizer("sgd")
    ref, sched = combine(TORCH, TORCH, ref_opt), combine(outer, inner, opt)
    for i in range(30):
        for o, s in ((ref_opt, ref), (opt, sched)):
            o.step()
            s.step()
        assert_same(snapshot(ref_opt, [ref]), snapshot(opt, [sched]), f"step {i}")


def _compiled_training(ns):
    """A few steps of ``torch.compile(optimizer.step)`` (eager backend) with OneCycleLR."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = ns.OneCycleLR(opt, max_lr=0.5, total_steps=20)
    step = torch.compile(opt.step, backend="eager")
    for _ in range(4):
        model(torch.ones(3, 4)).pow(2).sum().backward()
        step()
        opt.zero_grad()
        sched.step()
    return opt.param_groups[0]["lr"], model.weight.detach().clone()


def test_torch_compile_sees_the_step_wrapper_as_torch_does():
    """torch skips its step wrapper in dynamo; so do we (tracing it recursed, or lost _opt_called)."""
    ref, ref_warnings = recorded(_compiled_training, TORCH)
    ours, our_warnings = recorded(_compiled_training, OURS)
    assert_same(ref, ours, "lr and weights")
    scheduler_warnings = [w for w in our_warnings + ref_warnings if "lr_scheduler" in w[1]]
    assert scheduler_warnings == [], "the wrapper must record optimizer.step() under torch.compile"


def test_no_reference_cycles():
    """A scheduler holds its optimizer, and nothing holds the scheduler: no cycles."""
    param = torch.nn.Parameter(torch.empty(10))
    opt = torch.optim.SGD([param], lr=0.5)
    sched = our_lrs.LambdaLR(opt, lambda epoch: 1.0)
    del sched
    assert len(gc.get_referrers(opt)) == 0

    def run():
        p = torch.zeros(10, requires_grad=True)
        o = torch.optim.SGD([p], lr=0.5)
        s = our_lrs.CyclicLR(o, base_lr=0.1, max_lr=1.0)
        p.sum().backward()
        o.step()
        s.step()
        return weakref.ref(s)

    gc.disable()
    try:
        assert run()() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("case", RESUMABLE, ids=lambda c: c.id)
def test_state_dict_survives_torch_save(case, tmp_path):
    opt = make_optimizer(case.opt)
    sched, _ = recorded(case.build, OURS, opt)
    state = sched.state_dict()
    torch.save(state, tmp_path / "sched.pt")
    loaded = torch.load(tmp_path / "sched.pt", weights_only=True)
    assert_same(state, loaded, "torch.load")
    pickle.dumps(state)


# --------------------------------------------------------------------------
# Closed forms: lr_at / momentum_at agree with stepping
# --------------------------------------------------------------------------

CLOSED_FORM_CASES = [c for c in RESUMABLE if hasattr(getattr(our_lrs, c.build.__name__, None), "lr_at")]


def _close(a, b):
    return math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-12)


@pytest.mark.parametrize("case", CLOSED_FORM_CASES, ids=lambda c: c.id)
def test_lr_at_is_the_schedule(case):
    opt = make_optimizer(case.opt)
    sched, _ = recorded(case.build, OURS, opt)
    momentum_key = "betas" if "betas" in opt.defaults else "momentum"
    for t in range(case.steps):
        lrs = [g["lr"] for g in opt.param_groups]
        assert all(_close(a, b) for a, b in zip(sched.lr_at(t), lrs)), f"lr at {t}"
        if getattr(sched, "cycle_momentum", False):
            momenta = [g[momentum_key] for g in opt.param_groups]
            momenta = [m[0] if isinstance(m, tuple) else m for m in momenta]
            assert all(_close(a, b) for a, b in zip(sched.momentum_at(t), momenta)), f"momentum at {t}"
        opt.step()
        sched.step()


def test_lr_at_does_not_change_state():
    opt = make_optimizer("sgd_float")
    sched = our_lrs.OneCycleLR(opt, max_lr=1.0, total_steps=20)
    before = (copy.deepcopy(sched.state_dict()), copy.deepcopy(opt.param_groups[0]["lr"]))
    sched.lr_at(7), sched.momentum_at(7)
    assert_same(before, (sched.state_dict(), opt.param_groups[0]["lr"]), "state")


def test_closed_forms_of_non_recursive_schedulers_are_exact():
    """Where torch's get_lr is itself a closed form, our schedules.py reproduces it exactly."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3, momentum=0.9)
    sched = torch_lrs.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=7, step_size_down=3,
                               mode="exp_range", gamma=0.97)
    for t in range(1, 40):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == schedules.cyclic_lr(t, 0.01, 0.1, 7, 3, "exp_range", 0.97)
        assert opt.param_groups[0]["momentum"] == schedules.cyclic_momentum(t, 0.8, 0.9, 7, 3, "exp_range", 0.97)


# --------------------------------------------------------------------------
# WarmupDecayLR (ours only)
# --------------------------------------------------------------------------


def _warmup_decay(opt, **kw):
    return our_lrs.WarmupDecayLR(opt, **{"warmup_steps": 5, "total_steps": 50, **kw})


def _run(opt, sched, steps):
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_warmup_decay_equals_torch_sequential_warmup_then_cosine():
    """The one-liner is torch's SequentialLR(LinearLR, CosineAnnealingLR) up to rounding."""
    ref_opt, opt = make_optimizer("sgd_float"), make_optimizer("sgd_float")
    ref = torch_lrs.SequentialLR(ref_opt, [torch_lrs.LinearLR(ref_opt, start_factor=0.1, total_iters=5),
                                           torch_lrs.CosineAnnealingLR(ref_opt, T_max=45)], milestones=[5])
    ours = _warmup_decay(opt, start_factor=0.1)
    for t, (a, b) in enumerate(zip(_run(ref_opt, ref, 50), _run(opt, ours, 50))):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), t


@pytest.mark.parametrize("decay", ["cos", "linear", "constant"])
def test_warmup_decay_shape(decay):
    opt = make_optimizer("sgd_float")
    lrs = _run(opt, _warmup_decay(opt, decay=decay, end_factor=0.1), 60)
    assert lrs[0] == 0.0
    assert lrs[1] == pytest.approx(0.01) and lrs[5] == 0.05  # linear warmup to the peak
    assert all(a <= b for a, b in zip(lrs[:5], lrs[1:6]))
    tail = lrs[5:]
    if decay == "constant":
        assert set(tail) == {0.05}
    else:
        assert all(a >= b for a, b in zip(tail, tail[1:]))
        assert lrs[50] == pytest.approx(0.005) and set(lrs[50:]) == {lrs[50]}
    if decay == "linear":
        assert lrs[28] == pytest.approx(0.05 + (0.005 - 0.05) * 23 / 45)
    assert opt.param_groups[1]["lr"] == pytest.approx(10 * opt.param_groups[0]["lr"])


def test_warmup_decay_state_dict_and_resume():
    opt = make_optimizer("sgd")
    sched = _warmup_decay(opt, decay="linear")
    expected = _run(opt, sched, 20)
    state = sched.state_dict()
    assert set(state) >= {"warmup_steps", "total_steps", "decay", "start_factor", "end_factor", "last_epoch"}

    fresh_opt = make_optimizer("sgd")
    fresh = _warmup_decay(fresh_opt, decay="cos")
    fresh_opt.load_state_dict(opt.state_dict())
    fresh.load_state_dict(state)
    assert fresh.decay == "linear"
    assert _run(fresh_opt, fresh, 10) == _run(opt, sched, 10)

    resumed_opt = make_optimizer("sgd")
    resumed_opt.load_state_dict(opt.state_dict())
    resumed = _warmup_decay(resumed_opt, decay="linear", last_epoch=sched.last_epoch - 1)
    assert resumed.get_last_lr() == sched.get_last_lr()
    assert len(expected) == 21


@pytest.mark.parametrize(
    "kwargs",
    [dict(warmup_steps=-1), dict(warmup_steps=2.5), dict(total_steps=4), dict(total_steps=0, warmup_steps=0),
     dict(decay="exp"), dict(start_factor=-0.1), dict(end_factor=1.5)],
)
def test_warmup_decay_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        _warmup_decay(make_optimizer("sgd"), **kwargs)


def test_warmup_decay_without_warmup_starts_at_peak():
    opt = make_optimizer("sgd_float")
    lrs = _run(opt, _warmup_decay(opt, warmup_steps=0, total_steps=10), 10)
    assert lrs[0] == 0.05 and lrs[10] == 0.0


def test_warmup_decay_works_with_fastoptim():
    pytest.importorskip("fastoptim")
    if "fastoptim" not in BACKENDS:
        pytest.skip("fastoptim.SGD not available")
    ref_opt, opt = make_optimizer("sgd"), make_optimizer("sgd", "fastoptim")
    assert _run(ref_opt, _warmup_decay(ref_opt), 55) == _run(opt, _warmup_decay(opt), 55)


def test_simple_builders_are_named_after_their_scheduler():
    # CLOSED_FORM_CASES finds the scheduler class by the builder's name
    assert {c.build.__name__ for c in RESUMABLE} <= set(our_lrs.__all__) | {"SWALR"}


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_one_cycle_loads_a_state_dict_from_before_torch_2_2(strategy):
    """torch < 2.2 saved OneCycleLR's annealing function itself ("anneal_func", one of
    ``OneCycleLR._annealing_cos`` / ``_annealing_linear``) instead of "_anneal_func_type":
    both names exist on our class, and such a state_dict steps as it does in torch."""
    runs = []
    for ns, backend in ((TORCH, "torch"), (OURS, "fastoptim")):
        opt = make_optimizer("sgd_momentum", backend)
        sched = ns.OneCycleLR(opt, max_lr=2.0, total_steps=12, anneal_strategy=strategy)
        del sched._anneal_func_type
        legacy = sched.state_dict()
        assert "_anneal_func_type" not in legacy
        legacy["anneal_func"] = getattr(ns.OneCycleLR, f"_annealing_{strategy}")
        sched.load_state_dict(legacy)
        values = []
        for _ in range(11):
            opt.step()
            sched.step()
            values.append([(float(g["lr"]), g["momentum"]) for g in opt.param_groups])
        runs.append(values)
    assert runs[0] == runs[1]
