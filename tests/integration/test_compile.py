"""torch.compile with fastoptim: a compiled model, and a compiled ``optimizer.step``.

Compilation is slow on 2 CPU cores, so these tests are small and marked
``compile``.  Only one uses inductor (the default backend: C++ code
generation); the others use the ``eager`` backend, which runs the same dynamo
tracing -- where graphs, graph breaks, guards and recompilations are decided --
without code generation.  What they establish is written up in
docs/integrations.md.
"""

from __future__ import annotations

import logging

import pytest
import torch

import fastoptim

from ._common import assert_same_tensors, batches, params_of, tiny_model

pytestmark = pytest.mark.compile

STEPS = 3
# The one graph break a compiled fastoptim step has by design: the step counter runs eagerly
# (marked with torch._disable_dynamo, as torch.optim marks its bookkeeping methods).
COUNTER_BREAK = "Attempted to call function marked as skipped"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Caches, recompile limits and counters are global; start every test clean.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch._logging.set_logs(dynamo=logging.ERROR)  # no "record_function ignored" noise
    yield
    torch._dynamo.reset()
    torch._logging.set_logs()


def _options(algorithm: str) -> dict:
    options: dict = {"lr": 0.01}
    if algorithm == "SGD":
        options["momentum"] = 0.9
    if algorithm == "LBFGS":
        options.update(lr=0.5, max_iter=3)  # few line-search iterations: fewer frames to compile
    return options


def _train(library, algorithm, *, compile_model=None, compile_step=None, steps=STEPS):
    model = tiny_model()
    optimizer = getattr(library, algorithm)(model.parameters(), **_options(algorithm))
    forward = torch.compile(model, backend=compile_model) if compile_model else model
    step = torch.compile(optimizer.step, backend=compile_step) if compile_step else optimizer.step
    for x, y in batches(steps):

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(forward(x), y)
            loss.backward()
            return loss

        if algorithm == "LBFGS":
            step(closure)
        else:
            closure()
            step()
    return params_of(model), optimizer


def _graph_breaks() -> dict[str, int]:
    return {reason.split("\n")[0]: n for reason, n in torch._dynamo.utils.counters["graph_break"].items()}


@pytest.mark.slow
def test_inductor_compiled_model_and_step():
    """The default backend (inductor).  A compiled model trained by fastoptim ends with the
    parameters torch.optim gives on the same compiled model (within float32 rounding: the eager
    step runs fastoptim's numba kernel); compiling the step too stays as close."""
    fast_params, fast_opt = _train(fastoptim, "AdamW", compile_model="inductor")
    torch_params, _ = _train(torch.optim, "AdamW", compile_model="inductor")
    assert_same_tensors(fast_params, torch_params)
    assert fast_opt._step_count == STEPS

    both_params, both_opt = _train(fastoptim, "AdamW", compile_model="inductor", compile_step="inductor")
    assert_same_tensors(both_params, torch_params)
    assert both_opt._step_count == STEPS


# One algorithm per shape of step: SGD (element-wise), Adagrad (reads ``Tensor.item()``: graph
# breaks), LBFGS (closure, backward and line search: many breaks), Adafactor (norms read with
# ``.item()``; its eager step is a multi-pass kernel, its traced step the reference rule).  Adam
# is in the next test.
@pytest.mark.parametrize("algorithm", ["SGD", "Adagrad", "LBFGS", "Adafactor"])
def test_compiled_step_matches_eager(algorithm):
    """``torch.compile(optimizer.step)`` works: dynamo compiles what it can trace and falls back to
    eager at graph breaks -- never an error, the same results as eager torch.optim within float32
    rounding."""
    eager_params, _ = _train(torch.optim, algorithm)
    compiled_params, optimizer = _train(fastoptim, algorithm, compile_step="eager")
    tolerance = {}
    if algorithm == "LBFGS":
        # The line search amplifies float32 rounding differences of traced code; torch.optim.LBFGS
        # compiled the same way moves as far from its eager run.
        tolerance = dict(rtol=1e-2, atol=1e-3)
    assert_same_tensors(compiled_params, eager_params, **tolerance)
    assert optimizer._step_count == STEPS


@pytest.mark.parametrize("algorithm", ["SGD", "Adam"])
def test_compiled_step_is_one_graph_without_recompiles(algorithm):
    """An element-wise step compiles to one graph -- hooks, dispatch (which bypasses the fast
    kernels while tracing) and the reference update -- reused from the second step on: no
    recompilation when gradients are new tensors, as they are after every ``zero_grad()``.  The
    only graph break is the step counter, run eagerly on purpose, so ``fullgraph=True`` is refused
    -- as for torch.optim, whose step calls ``torch._dynamo.graph_break()``."""
    steps = 6
    compiled_params, optimizer = _train(fastoptim, algorithm, compile_step="eager", steps=steps)
    eager_params, _ = _train(torch.optim, algorithm, steps=steps)
    assert_same_tensors(compiled_params, eager_params)
    assert optimizer._step_count == steps
    # one graph for the first step (which creates the state), one for all later steps
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    assert set(_graph_breaks()) == {COUNTER_BREAK}, _graph_breaks()

    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(optimizer.step, backend="eager", fullgraph=True)()


def test_compiled_step_runs_hooks_and_counts_steps():
    """Step hooks fire and ``_step_count`` counts under compile as in eager mode."""
    model = tiny_model()
    optimizer = fastoptim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    step = torch.compile(optimizer.step, backend="eager")
    for x, y in batches(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        step()
    assert calls == ["pre", "post"] * 3
    assert optimizer._step_count == 3
    optimizer.step()  # eager again afterwards: no stale re-entrancy guard
    assert calls[-2:] == ["pre", "post"] and optimizer._step_count == 4


def test_tensor_lr_with_scheduler_does_not_recompile():
    """A Tensor lr, updated in place by a torch scheduler, keeps the compiled graphs (a float lr is
    guarded on and recompiles when it changes -- for torch.optim too); the lrs and parameters
    follow the eager torch.optim run."""

    def run(library, compiled):
        model = tiny_model()
        optimizer = library.SGD(model.parameters(), lr=torch.tensor(0.1), momentum=0.9)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.7)

        def step():
            optimizer.step()

        # Not fullgraph: the scheduler's wrapper around optimizer.step lives in
        # torch/optim/lr_scheduler.py, which dynamo always skips (for torch.optim too).
        step_fn = torch.compile(step, backend="eager") if compiled else step
        lrs, graphs = [], []
        for x, y in batches(6):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            step_fn()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"].item())
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        return lrs, params_of(model), graphs

    fast_lrs, fast_params, graphs = run(fastoptim, compiled=True)
    torch_lrs, torch_params, _ = run(torch.optim, compiled=False)
    assert fast_lrs == torch_lrs
    assert_same_tensors(fast_params, torch_params)
    # graphs are built for the first two steps, then reused whatever the lr
    assert graphs[1] == graphs[-1] > 0, graphs
