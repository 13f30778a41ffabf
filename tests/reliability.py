"""Helpers shared by the reliability tests (checkpoint, bad input, fuzzing, faults).

The list of algorithms is read from ``fastoptim`` itself, so an algorithm
that is added (and exported) is covered by every test here without editing.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

import fastoptim

#: every optimizer class fastoptim exports
ALGORITHMS = sorted(
    name
    for name in set(getattr(fastoptim, "__all__", ())) | set(dir(fastoptim))
    if isinstance(getattr(fastoptim, name, None), type)
    and issubclass(getattr(fastoptim, name), torch.optim.Optimizer)
    and getattr(fastoptim, name) is not fastoptim.Optimizer
)
#: those that torch.optim has too (the differential tests compare against it)
TORCH_ALGORITHMS = [name for name in ALGORITHMS if isinstance(getattr(torch.optim, name, None), type)]
#: fastoptim's own (Lion, Lamb, ...): tested against their reference rules and for invariants only
EXTRA_ALGORITHMS = [name for name in ALGORITHMS if name not in TORCH_ALGORITHMS]

#: algorithms that need a closure on every step
CLOSURE_ONLY = {"LBFGS"}
#: algorithms that take sparse gradients only
SPARSE_ONLY = {"SparseAdam"}
#: algorithms that take 2-D parameters only
MATRICES_ONLY = {"Muon"}


def ours(name: str) -> type:
    return getattr(fastoptim, name)


def theirs(name: str) -> type:
    return getattr(torch.optim, name)


def weights_only_roundtrip(obj):
    """``obj`` through ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def snapshot(optimizer) -> dict:
    """Everything observable about an optimizer, deep-copied, for before/after comparisons."""
    params = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    state = {
        (index[id(k)] if isinstance(k, torch.Tensor) else k): copy.deepcopy(v) for k, v in optimizer.state.items()
    }
    groups = [
        {k: ([index[id(p)] for p in v] if k == "params" else copy.deepcopy(v)) for k, v in g.items()}
        for g in optimizer.param_groups
    ]
    return {
        "params": params,
        "param_ids": [id(p) for g in optimizer.param_groups for p in g["params"]],
        "state": state,
        "param_groups": groups,
        "step_count": getattr(optimizer, "_step_count", None),
        "type": type(optimizer),
    }


def assert_identical(actual, expected, where="") -> None:
    """Nested values equal, tensors bit for bit (dtype, shape, values, NaN in the same places)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: {type(actual).__name__} is not a tensor"
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{where}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        assert bits(actual) == bits(expected) if actual.is_sparse else torch.equal(bits(actual), bits(expected)), (
            f"{where}: tensors differ"
        )
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {type(actual).__name__} is not a dict"
        assert set(actual) == set(expected), f"{where}: keys {sorted(map(str, actual))} != {sorted(map(str, expected))}"
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)), f"{where}: {type(actual).__name__} is not a sequence"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) and expected != expected:
        assert isinstance(actual, float) and actual != actual, f"{where}: {actual!r} != nan"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def bits(tensor: torch.Tensor):
    """The tensor's bytes, in logical order (bitwise comparison: -0.0 != 0.0, NaN payloads count)."""
    t = tensor.detach()
    if t.is_sparse:
        t = t.coalesce()
        return (bits(t.indices()).tolist(), bits(t.values()).tolist())
    t = t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def assert_unchanged(optimizer, before: dict, where="") -> None:
    """The optimizer is exactly as :func:`snapshot` recorded it: same tensors, state, groups."""
    after = snapshot(optimizer)
    assert after["type"] is before["type"], f"{where}: class changed"
    assert after["param_ids"] == before["param_ids"], f"{where}: the parameter tensors were replaced"
    assert_identical(after["params"], before["params"], f"{where} params")
    assert_identical(after["state"], before["state"], f"{where} state")
    assert_identical(after["param_groups"], before["param_groups"], f"{where} param_groups")
    assert after["step_count"] == before["step_count"], f"{where}: _step_count changed"


@contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the duration."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------- optim_db configurations
def optim_info(name: str):
    """torch's OptimizerInfo for an algorithm."""
    from torch.testing._internal.common_optimizers import optim_db

    return next(info for info in optim_db if info.optim_cls.__name__ == name)


def optim_db_inputs(name: str, dtype=torch.float32, *, differentiable: bool = False) -> list:
    """PyTorch's own sample configurations for an algorithm (``optim_db``), as OptimizerInput objects."""
    from torch.testing._internal.common_optimizers import _get_optim_inputs_including_global_cliquey_kwargs

    inputs = _get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, optim_info(name))
    return [x for x in inputs if differentiable or not x.kwargs.get("differentiable")]


def make_trial(name: str, kwargs: dict, dtype=torch.float32):
    """A parity.Trial of fastoptim against torch.optim for ``name`` with ``kwargs``."""
    from parity import Problem, Trial

    problem = Problem.make(
        dtype,
        complex_param=optim_info(name).supports_complex and not kwargs.get("fused"),
        sparse=name in SPARSE_ONLY,
        single_group=name in CLOSURE_ONLY,
        noncontiguous=name not in CLOSURE_ONLY,
    )
    if name in MATRICES_ONLY:  # 0-dim and 1-D parameters as 1×n rows
        def matrix(v):
            return v if v.dim() == 2 else v.reshape(1, -1)

        problem = Problem(
            [[matrix(v) for v in group] for group in problem.groups],
            [matrix(v) for v in problem.scale],
            [matrix(v) for v in problem.target],
            problem.sparse,
        )
    return Trial(ours(name), theirs(name), kwargs, dtype, problem=problem, closure_every_step=name in CLOSURE_ONLY)
