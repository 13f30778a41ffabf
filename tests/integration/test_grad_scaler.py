"""torch.amp.GradScaler("cpu") and bf16 autocast with fastoptim optimizers.

GradScaler walks ``optimizer.param_groups`` to unscale the gradients in place,
and calls ``optimizer.step()`` only when they are all finite.  A fastoptim
optimizer must therefore behave exactly like the torch.optim one: on a step
with an inf or NaN gradient nothing moves (parameters, state, step counters)
and the scale is cut; on a finite step the update is the same.  Both runs
below see the same gradients, and everything is compared after every step.
"""

from __future__ import annotations

import pytest
import torch

import fastoptim

from ._common import (
    DENSE_ALGORITHMS,
    assert_same_state,
    assert_same_tensors,
    batches,
    optimizer_params,
    params_of,
    tiny_model,
)

STEPS = 9
# step index -> what is injected into the first parameter's (scaled) gradient
CORRUPT = {2: float("inf"), 3: float("nan"), 6: float("-inf")}

# LBFGS needs a closure, which GradScaler.step refuses (for torch.optim.LBFGS too).
AMP_ALGORITHMS = [name for name in DENSE_ALGORITHMS if name != "LBFGS"]


def _options(algorithm: str) -> dict:
    options = {"lr": 0.01}
    if algorithm == "SGD":
        options["momentum"] = 0.9
    return options


def train_with_scaler(library, algorithm: str, options: dict, *, clip: float | None = None):
    model = tiny_model()
    optimizer = getattr(library, algorithm)(optimizer_params(model, algorithm), **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    trace = []
    for step, (x, y) in enumerate(batches(STEPS)):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step in CORRUPT:
            model[0].weight.grad[1, 2] = CORRUPT[step]
        if clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        trace.append((scaler.get_scale(), params_of(model), optimizer.state_dict()))
    return trace, optimizer


def _compare_traces(fast_trace, torch_trace, **tolerance):
    for step, ((fast_scale, fast_params, fast_sd), (torch_scale, torch_params, torch_sd)) in enumerate(
        zip(fast_trace, torch_trace)
    ):
        assert fast_scale == torch_scale, step
        assert_same_tensors(fast_params, torch_params, **tolerance)
        assert fast_sd["state"].keys() == torch_sd["state"].keys(), step
        for index, entry in torch_sd["state"].items():
            assert fast_sd["state"][index].keys() == entry.keys()
            for key, value in entry.items():
                torch.testing.assert_close(fast_sd["state"][index][key], value, **tolerance)


@pytest.mark.parametrize("algorithm", AMP_ALGORITHMS)
def test_scaler_skips_inf_and_nan_steps_like_torch(algorithm):
    options = _options(algorithm)
    fast_trace, fast_opt = train_with_scaler(fastoptim, algorithm, options)
    torch_trace, _ = train_with_scaler(torch.optim, algorithm, options)
    _compare_traces(fast_trace, torch_trace)

    # The corrupted steps really were skipped: parameters did not move and the scale was halved.
    for step in CORRUPT:
        prev_scale, prev_params, _ = fast_trace[step - 1]
        scale, params, _ = fast_trace[step]
        assert scale == prev_scale / 2
        assert_same_tensors(params, prev_params, rtol=0, atol=0)
    assert fast_opt._step_count == STEPS - len(CORRUPT)
    # GradScaler's per-step attributes never linger on the optimizer.
    assert not hasattr(fast_opt, "grad_scale") and not hasattr(fast_opt, "found_inf")


@pytest.mark.parametrize("algorithm", ["SGD", "Adam", "AdamW"])
def test_unscale_then_clip_then_step(algorithm):
    """The documented pattern for clipping: ``unscale_``, ``clip_grad_norm_``, ``step``, ``update``."""
    options = _options(algorithm)
    fast_trace, _ = train_with_scaler(fastoptim, algorithm, options, clip=0.5)
    torch_trace, _ = train_with_scaler(torch.optim, algorithm, options, clip=0.5)
    _compare_traces(fast_trace, torch_trace)


@pytest.mark.parametrize("algorithm", ["Adam", "AdamW", "SGD"])
def test_scaler_with_fused_flag(algorithm):
    """``fused=True``: torch's fused CPU kernel unscales inside the step (opt-in AMP path);
    fastoptim takes the plain path.  Same skipping, same scale, parameters equal to tolerance."""
    options = dict(_options(algorithm), fused=True)
    fast_trace, _ = train_with_scaler(fastoptim, algorithm, options)
    torch_trace, torch_opt = train_with_scaler(torch.optim, algorithm, options)
    assert torch_opt._step_supports_amp_scaling
    _compare_traces(fast_trace, torch_trace, rtol=1e-5, atol=1e-6)


def train_bf16_autocast(library, algorithm: str, *, scaler: bool):
    model = tiny_model()
    optimizer = getattr(library, algorithm)(model.parameters(), **_options(algorithm))
    grad_scaler = torch.amp.GradScaler("cpu", enabled=scaler)
    losses = []
    for x, y in batches(STEPS):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            assert out.dtype == torch.bfloat16
            loss = torch.nn.functional.mse_loss(out.float(), y)
        grad_scaler.scale(loss).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()
        losses.append(loss.item())
    return losses, params_of(model), optimizer


@pytest.mark.parametrize("scaler", [False, True], ids=["plain", "with-scaler"])
@pytest.mark.parametrize("algorithm", ["SGD", "Adam", "AdamW"])
def test_bf16_autocast_training_matches_torch(algorithm, scaler):
    fast_losses, fast_params, fast_opt = train_bf16_autocast(fastoptim, algorithm, scaler=scaler)
    torch_losses, torch_params, torch_opt = train_bf16_autocast(torch.optim, algorithm, scaler=scaler)
    assert fast_losses == torch_losses
    assert_same_tensors(fast_params, torch_params)
    assert_same_state(fast_opt, torch_opt)


@pytest.mark.parametrize("algorithm", ["SGD", "Adam", "AdamW"])
def test_bf16_parameters_match_torch(algorithm):
    """Pure bf16 training (parameters, gradients and state in bf16)."""

    def run(library):
        model = tiny_model().to(torch.bfloat16)
        optimizer = getattr(library, algorithm)(model.parameters(), **_options(algorithm))
        for x, y in batches(STEPS):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x.bfloat16()), y.bfloat16()).backward()
            optimizer.step()
        return params_of(model), optimizer

    fast_params, fast_opt = run(fastoptim)
    torch_params, torch_opt = run(torch.optim)
    assert all(p.dtype == torch.bfloat16 for p in fast_params)
    assert_same_tensors(fast_params, torch_params)
    assert_same_state(fast_opt, torch_opt)
