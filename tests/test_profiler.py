"""The profiler sees ``step`` and ``zero_grad`` under torch.optim's event names."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import fastoptim
from fastoptim.kernels.dispatch import use_backend


def _event_names(run) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return [event.name for event in prof.events()]


@pytest.mark.parametrize("name", ["SGD", "Adam", "Rprop"])
def test_step_and_zero_grad_ranges_carry_torch_names(name):
    params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
    opt = getattr(fastoptim, name)(params, lr=0.1)

    def run():
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        opt.zero_grad()

    names = _event_names(run)
    assert names.count(f"Optimizer.step#{name}.step") == 1
    assert names.count(f"Optimizer.zero_grad#{name}.zero_grad") == 1


def test_step_range_encloses_the_reference_rule_ops():
    """With the reference rule the update's aten ops are recorded inside the step's range."""
    p = torch.nn.Parameter(torch.randn(16))
    opt = fastoptim.Adam([p], lr=0.1)
    p.grad = torch.randn(16)
    with use_backend("reference"):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            opt.step()
    events = prof.events()
    (step,) = [e for e in events if e.name == "Optimizer.step#Adam.step"]
    inside = [e for e in events if e.name.startswith("aten::") and step.time_range.start <= e.time_range.start <= step.time_range.end]
    assert any(e.name in ("aten::add_", "aten::lerp_", "aten::addcdiv_", "aten::mul_") for e in inside)


def test_nested_step_records_one_range():
    """A subclass whose ``step`` calls ``super().step()`` opens the range once, as torch does."""

    class Clipped(fastoptim.SGD):
        def step(self, closure=None):
            return super().step(closure)

    p = torch.nn.Parameter(torch.randn(4))
    opt = Clipped([p], lr=0.1)
    p.grad = torch.ones(4)
    names = _event_names(opt.step)
    assert names.count("Optimizer.step#Clipped.step") == 1
