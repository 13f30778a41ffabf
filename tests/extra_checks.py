"""Checks for algorithms whose parameters the generic problems do not fit (Adafactor, Muon).

``problem_of`` builds a parity problem with chosen shapes (Adafactor's
higher-rank parameters, Muon's matrices); ``assert_copies_step_identically``
is the pickle / deepcopy round trip of ``algorithm_checks`` for any trial.
"""

from __future__ import annotations

import copy
import pickle

import torch

from parity import EXACT, Problem, Trial, assert_same


def problem_of(shapes_per_group, dtype, seed=0, transposed=()):
    """A :class:`parity.Problem` with the given parameter shapes, one list per group.

    Parameters whose flat index is in ``transposed`` are stored column-major
    (a transposed contiguous tensor), as a transposed weight is.
    """
    gen = torch.Generator().manual_seed(seed)

    def make(index, shape):
        if index in transposed:
            return torch.randn(tuple(reversed(shape)), generator=gen, dtype=dtype).mT
        return torch.randn(shape, generator=gen, dtype=dtype)

    groups, index = [], 0
    for shapes in shapes_per_group:
        groups.append([make(index + k, s) for k, s in enumerate(shapes)])
        index += len(shapes)
    flat = [v for g in groups for v in g]
    scale = [torch.randn(v.shape, generator=gen, dtype=dtype).abs() + 0.5 for v in flat]
    target = [torch.randn(v.shape, generator=gen, dtype=dtype) for v in flat]
    return Problem(groups, scale, target)


def assert_copies_step_identically(make_trial) -> None:
    """A pickled or deep-copied optimizer has the same state and steps on identically.

    ``make_trial()`` returns a :class:`parity.Trial` that has run a few steps.
    """
    for copier in (lambda opt: pickle.loads(pickle.dumps(opt)), copy.deepcopy):
        trial = make_trial()
        copied = copier(trial.ours)
        assert type(copied) is type(trial.ours)
        assert_same(copied.state_dict(), trial.ours.state_dict(), EXACT, "copy")
        before = copy.deepcopy(trial.ours.state_dict())
        for opt in (copied, trial.ours):
            params = Trial.flat(opt)
            for p, g in zip(params, trial.problem.random_grads(99, params)):
                p.grad = g
            opt.step()
        assert_same(copied.state_dict(), trial.ours.state_dict(), EXACT, "after a step")
        for a, b in zip(Trial.flat(copied), Trial.flat(trial.ours)):
            assert_same(a, b, EXACT, "param after a step")
        try:
            assert_same(trial.ours.state_dict(), before, EXACT)
        except AssertionError:
            continue
        raise AssertionError("the step changed nothing")
