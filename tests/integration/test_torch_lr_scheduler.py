"""torch.optim.lr_scheduler drives fastoptim optimizers exactly as it drives torch.optim's.

Each scheduler runs twice, once over a fastoptim optimizer and once over the
torch.optim one of the same name, on the same model and data.  After every
step the learning rates (and the cycled momentum / betas) must be identical,
and so must the parameters at the end; in the documented call order
(``optimizer.step()`` then ``scheduler.step()``) neither run may warn.
(fastoptim's own schedulers over torch optimizers are tested in
tests/test_lr_scheduler*.py.)
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as L
from torch.optim.swa_utils import SWALR

import fastoptim

from ._common import DENSE_ALGORITHMS, assert_same_tensors, batches, optimizer_params, params_of, tiny_model

STEPS = 12

# name -> (optimizer name, optimizer kwargs, scheduler factory)
SCHEDULERS = {
    "StepLR": ("SGD", dict(lr=0.1, momentum=0.9), lambda o: L.StepLR(o, step_size=3, gamma=0.5)),
    "MultiStepLR": ("Adam", dict(lr=0.01), lambda o: L.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3)),
    "ExponentialLR": ("AdamW", dict(lr=0.01), lambda o: L.ExponentialLR(o, gamma=0.9)),
    "LambdaLR": ("SGD", dict(lr=0.1), lambda o: L.LambdaLR(o, lambda t: 1 / (1 + t))),
    "MultiplicativeLR": ("SGD", dict(lr=0.1), lambda o: L.MultiplicativeLR(o, lambda t: 0.95)),
    "ConstantLR": ("Adam", dict(lr=0.01), lambda o: L.ConstantLR(o, factor=0.5, total_iters=4)),
    "LinearLR": ("Adam", dict(lr=0.01), lambda o: L.LinearLR(o, start_factor=0.1, total_iters=5)),
    "PolynomialLR": ("SGD", dict(lr=0.1), lambda o: L.PolynomialLR(o, total_iters=10, power=2.0)),
    "CosineAnnealingLR": ("AdamW", dict(lr=0.01), lambda o: L.CosineAnnealingLR(o, T_max=10, eta_min=1e-4)),
    "CosineAnnealingWarmRestarts": ("SGD", dict(lr=0.1), lambda o: L.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2)),
    "CyclicLR-momentum": (
        "SGD",
        dict(lr=0.1, momentum=0.9),
        lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3, mode="triangular2"),
    ),
    "CyclicLR-betas": (
        "Adam",
        dict(lr=0.01),
        lambda o: L.CyclicLR(o, base_lr=0.001, max_lr=0.01, step_size_up=4, mode="exp_range", gamma=0.9),
    ),
    "OneCycleLR-momentum": (
        "SGD",
        dict(lr=0.1, momentum=0.9, nesterov=True),
        lambda o: L.OneCycleLR(o, max_lr=0.5, total_steps=STEPS, base_momentum=0.8, max_momentum=0.95),
    ),
    "OneCycleLR-betas": (
        "AdamW",
        dict(lr=0.01),
        lambda o: L.OneCycleLR(o, max_lr=0.05, total_steps=STEPS, anneal_strategy="linear", three_phase=True),
    ),
    "SequentialLR": (
        "SGD",
        dict(lr=0.1, momentum=0.9),
        lambda o: L.SequentialLR(
            o, [L.LinearLR(o, start_factor=0.1, total_iters=3), L.ExponentialLR(o, gamma=0.8)], milestones=[3]
        ),
    ),
    "ChainedScheduler": (
        "Adam",
        dict(lr=0.01),
        lambda o: L.ChainedScheduler([L.ConstantLR(o, factor=0.5, total_iters=3), L.ExponentialLR(o, gamma=0.9)]),
    ),
    "ReduceLROnPlateau": ("SGD", dict(lr=0.1), lambda o: L.ReduceLROnPlateau(o, patience=1, factor=0.5)),
    "SWALR": ("SGD", dict(lr=0.1), lambda o: SWALR(o, swa_lr=0.05, anneal_epochs=4, anneal_strategy="cos")),
}


def _two_group_params(model: torch.nn.Module) -> list[dict]:
    first, second = model[0], model[2]
    return [{"params": list(first.parameters())}, {"params": list(second.parameters()), "lr_scale": 0.5}]


def train(library, optimizer_name: str, options: dict, make_scheduler, steps: int = STEPS):
    """Train with ``optimizer.step(); scheduler.step()`` and record every group's lr/momentum/betas."""
    model = tiny_model()
    groups = _two_group_params(model)
    # Two groups with different lrs, so per-group base_lrs are exercised.
    groups[1]["lr"] = options["lr"] * 0.5
    optimizer = getattr(library, optimizer_name)(groups, **options)
    scheduler = make_scheduler(optimizer)
    history = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, (x, y) in enumerate(batches(steps)):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            if isinstance(scheduler, L.ReduceLROnPlateau):
                # A plateau: the loss stops improving after step 3.
                scheduler.step(max(1.0, 4.0 - step))
            else:
                scheduler.step()
            history.append(
                [(g["lr"], g.get("momentum"), g.get("betas"), g.get("initial_lr")) for g in optimizer.param_groups]
            )
    return history, [str(w.message) for w in caught], params_of(model), optimizer, scheduler


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_torch_scheduler_gives_same_lrs_and_params(name):
    optimizer_name, options, make_scheduler = SCHEDULERS[name]
    fast_lrs, fast_warnings, fast_params, fast_opt, _ = train(fastoptim, optimizer_name, options, make_scheduler)
    torch_lrs, torch_warnings, torch_params, _, _ = train(torch.optim, optimizer_name, options, make_scheduler)
    assert fast_lrs == torch_lrs
    assert fast_warnings == torch_warnings == []
    assert_same_tensors(fast_params, torch_params)
    assert isinstance(fast_opt, fastoptim.Optimizer)


@pytest.mark.parametrize("algorithm", DENSE_ALGORITHMS)
def test_every_algorithm_accepts_one_cycle(algorithm):
    """OneCycleLR picks ``momentum`` or ``betas`` from ``optimizer.defaults``, or refuses, as for torch."""

    def run(library):
        model = tiny_model()
        optimizer = getattr(library, algorithm)(optimizer_params(model, algorithm), lr=0.01)
        try:
            scheduler = L.OneCycleLR(optimizer, max_lr=0.02, total_steps=6)
        except ValueError as error:  # no momentum/betas to cycle
            return ("ValueError", str(error))
        lrs = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for x, y in batches(5):

                def closure():
                    optimizer.zero_grad()
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    loss.backward()
                    return loss

                optimizer.step(closure)
                scheduler.step()
                lrs.append([(g["lr"], g.get("momentum"), g.get("betas")) for g in optimizer.param_groups])
        return lrs, params_of(model)

    fast, ref = run(fastoptim), run(torch.optim)
    if fast[0] == "ValueError":
        assert fast == ref
        return
    assert fast[0] == ref[0]
    assert_same_tensors(fast[1], ref[1])


def test_wrong_call_order_warns_like_torch():
    """scheduler.step() before optimizer.step(): the same warning as with torch.optim."""

    def messages(library):
        model = tiny_model()
        optimizer = library.SGD(model.parameters(), lr=0.1)
        scheduler = L.StepLR(optimizer, step_size=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scheduler.step()
        return [str(w.message) for w in caught]

    fast, ref = messages(fastoptim), messages(torch.optim)
    assert fast == ref
    assert any("before `optimizer.step()`" in m for m in fast)


def test_scheduler_checkpoint_resumes_identically():
    """optimizer + scheduler state_dicts (with ``initial_lr``) restore a run mid-way."""
    _, options, make_scheduler = SCHEDULERS["OneCycleLR-momentum"]
    data = batches(STEPS)

    def step(model, optimizer, scheduler, x, y):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()

    model = tiny_model()
    optimizer = fastoptim.SGD(model.parameters(), **options)
    scheduler = make_scheduler(optimizer)
    for x, y in data[:5]:
        step(model, optimizer, scheduler, x, y)
    checkpoint = copy.deepcopy(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    )
    assert all("initial_lr" in g and "max_momentum" in g for g in checkpoint["optimizer"]["param_groups"])
    for x, y in data[5:]:
        step(model, optimizer, scheduler, x, y)

    resumed_model = tiny_model(seed=123)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt = fastoptim.SGD(resumed_model.parameters(), lr=999.0, momentum=0.5)
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    resumed_sched = L.OneCycleLR(resumed_opt, max_lr=0.5, total_steps=STEPS, last_epoch=4)
    resumed_sched.load_state_dict(checkpoint["scheduler"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in data[5:]:
            step(resumed_model, resumed_opt, resumed_sched, x, y)
    assert resumed_sched.get_last_lr() == scheduler.get_last_lr()
    assert_same_tensors(params_of(resumed_model), params_of(model), rtol=0, atol=0)


def test_copies_of_a_scheduled_optimizer_do_not_step_the_original():
    """The scheduler's instance-level ``step`` wrapper is not copied by deepcopy/pickle."""
    model = tiny_model()
    optimizer = fastoptim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    L.StepLR(optimizer, step_size=2)
    assert "step" in vars(optimizer)  # patched by LRScheduler.__init__
    for p in model.parameters():
        # If a clone forwarded to the original's step, these would move the model.
        p.grad = torch.ones_like(p)
    for clone in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert "step" not in vars(clone)
        before = params_of(model)
        for p in clone.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        clone.step()
        assert_same_tensors(params_of(model), before, rtol=0, atol=0)
        assert clone._step_count == 1
