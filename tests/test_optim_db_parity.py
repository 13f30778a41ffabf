"""Parity with torch.optim on every configuration of PyTorch's own optimizer test database.

``torch.testing._internal.common_optimizers.optim_db`` lists, per algorithm,
sample constructor arguments (``optim_inputs_func``, with the global
``differentiable``/``fused``/``foreach`` variants that torch's test-suite adds)
and inputs that must fail (``optim_error_inputs_func``).  Every one of them is
run here against fastoptim, in float32 and float64.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.testing._internal.common_optimizers import (
    OptimizerErrorEnum,
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

import fastoptim
from parity import Problem, Trial, assert_same_optimizer

CORE = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax", "SparseAdam", "ASGD", "Rprop", "LBFGS", "NAdam", "RAdam"]
INFOS = {info.optim_cls.__name__: info for info in optim_db}
COVERED = [name for name in INFOS if hasattr(fastoptim, name)]
DTYPES = [torch.float32, torch.float64]


def test_every_core_algorithm_is_implemented():
    missing = [name for name in CORE if not hasattr(fastoptim, name)]
    assert not missing, f"fastoptim lacks {missing}"


def _inputs(name, dtype):
    info = INFOS[name]
    return _get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, info)


def _cases():
    for name in COVERED:
        for dtype in DTYPES:
            for index, optim_input in enumerate(_inputs(name, dtype)):
                desc = f"{name}-{str(dtype)[6:]}-{index}-{optim_input.desc}"
                yield pytest.param(name, dtype, index, id=re.sub(r"[^\w.=-]+", "_", desc))


# Algorithms that take 2-D parameters only (optim_db has no flag for it).
MATRICES_ONLY = {"Muon"}


def _as_matrices(problem):
    """The same problem with its 0-dim and 1-D parameters as 1×n rows."""

    def matrix(v):
        return v if v.dim() == 2 else v.reshape(1, -1)

    groups = [[matrix(v) for v in group] for group in problem.groups]
    return Problem(groups, [matrix(v) for v in problem.scale], [matrix(v) for v in problem.target], problem.sparse)


def _problem(name, dtype, kwargs):
    info = INFOS[name]
    problem = Problem.make(
        dtype,
        # fused kernels take real floating-point params only (torch raises otherwise)
        complex_param=info.supports_complex and not kwargs.get("fused"),
        sparse=info.only_supports_sparse_grads,
        single_group=info.step_requires_closure,
        # torch's LBFGS flattens gradients with .view(-1), which raises on a
        # non-contiguous one; tests/test_lbfgs.py covers that case.
        noncontiguous=not info.step_requires_closure,
    )
    return _as_matrices(problem) if name in MATRICES_ONLY else problem


def make_trial(name, dtype, kwargs):
    info = INFOS[name]
    return Trial(
        getattr(fastoptim, name),
        info.optim_cls,
        kwargs,
        dtype,
        problem=_problem(name, dtype, kwargs),
        closure_every_step=info.step_requires_closure,
    )


@pytest.mark.parametrize("name,dtype,index", list(_cases()))
def test_steps_match_torch(name, dtype, index):
    """Params, state, param_groups and state_dict agree after each of 10 steps."""
    kwargs = _inputs(name, dtype)[index].kwargs
    trial = make_trial(name, dtype, kwargs)
    trial.run(steps=10)
    if kwargs.get("differentiable"):
        trial.check_autograd_flows()


@pytest.mark.parametrize("name,dtype,index", list(_cases()))
def test_state_dicts_cross_libraries(name, dtype, index):
    """torch's state_dict loads into fastoptim and vice versa; stepping continues identically."""
    kwargs = _inputs(name, dtype)[index].kwargs
    if kwargs.get("differentiable"):
        pytest.skip("differentiable runs rebuild params from clones; covered by test_steps_match_torch")
    trial = make_trial(name, dtype, kwargs)
    trial.run(steps=4, check=False)
    ours_sd, theirs_sd = trial.ours.state_dict(), trial.theirs.state_dict()

    # Fresh optimizers over the current parameter values, each loading the *other* library's state.
    fresh = make_trial(name, dtype, kwargs)
    for (dst, src) in ((fresh.ours, trial.ours), (fresh.theirs, trial.theirs)):
        with torch.no_grad():
            for p, q in zip(Trial.flat(dst), Trial.flat(src)):
                p.copy_(q)
    fresh.ours.load_state_dict(theirs_sd)
    fresh.theirs.load_state_dict(ours_sd)
    assert_same_optimizer(fresh.ours, fresh.theirs, fresh.tol, "after cross-load")
    for i in range(4, 10):
        fresh.step(i)
        assert_same_optimizer(fresh.ours, fresh.theirs, fresh.tol, f"step {i} after cross-load")


def _error_cases():
    for name in COVERED:
        for index, _ in enumerate(INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)):
            yield pytest.param(name, index, id=f"{name}-{index}")


@pytest.mark.parametrize("name,index", list(_error_cases()))
def test_error_inputs_raise_like_torch(name, index):
    error_input = INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)[index]
    optim_input = error_input.optimizer_error_input
    cls = getattr(fastoptim, name)
    params, kwargs = optim_input.params, optim_input.kwargs
    if params is None:
        params = [torch.zeros(3, requires_grad=True)]
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        if issubclass(error_input.error_type, Warning):
            with pytest.warns(error_input.error_type, match=error_input.error_regex):
                cls(params, **kwargs)
        else:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                cls(params, **kwargs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = cls(params, **kwargs)
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            optimizer.step()
