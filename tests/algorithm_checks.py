"""Checks that the per-algorithm test modules share (bit-exact runs, NaN/inf, pickling).

Each check builds the same configuration in fastoptim and in torch.optim and
compares every element of parameters and state with ``rtol=atol=0``.  Runs
that are meant to be bit-exact pass ``foreach=False`` so that torch takes its
single-tensor path, the one the reference rules reproduce.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pickle

import torch

import fastoptim
from fastoptim.kernels.dispatch import use_backend
from parity import EXACT, Problem, Trial, assert_same, assert_same_optimizer


def classes(name: str):
    """``(fastoptim.<name>, torch.optim.<name>)``."""
    return getattr(fastoptim, name), getattr(torch.optim, name)


def run_exact(name: str, kwargs: dict, dtype: torch.dtype, *, steps: int = 10, **problem_options) -> Trial:
    """Ten steps (one without a gradient, two through a closure) bit-identical to torch's for-loop path.

    Runs fastoptim's reference rules (the fast kernels are held to the
    reference within tolerance by tests/test_kernels.py and the parity suite).
    """
    ours, theirs = classes(name)
    trial = Trial(ours, theirs, kwargs, dtype, problem=Problem.make(dtype, **problem_options), tol=EXACT)
    with use_backend("reference"):
        trial.run(steps=steps)
    return trial


def assert_signature_matches(name: str) -> None:
    """Same parameter names, kinds (positional / keyword-only) and defaults as torch's constructor."""
    ours, theirs = classes(name)

    def shape(cls):
        return [(p.name, p.kind, p.default) for p in inspect.signature(cls.__init__).parameters.values()]

    assert shape(ours) == shape(theirs)


def _special_grads(step: int, params):
    """Gradients holding NaN, ±inf and zeros at different places on different steps."""
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1e30, -1e-30])
    grads = []
    for k, p in enumerate(params):
        g = torch.linspace(-2.0, 2.0, p.numel(), dtype=p.dtype).reshape(p.shape)
        flat = g.view(-1)
        flat[(step + k) % flat.numel()] = specials[(step + k) % len(specials)].to(p.dtype)
        grads.append(g)
    return grads


def assert_nonfinite_like_torch(name: str, kwargs: dict, dtype: torch.dtype = torch.float32, steps: int = 6) -> None:
    """NaN and ±inf in gradients propagate into params and state exactly as in torch."""
    ours_cls, theirs_cls = classes(name)
    shapes = [(3, 4), (7,), ()]
    made = [[torch.linspace(-1.0, 1.0, max(1, torch.Size(s).numel()), dtype=dtype).reshape(s).requires_grad_()
             for s in shapes] for _ in range(2)]
    ours, theirs = ours_cls(made[0], **kwargs), theirs_cls(made[1], **kwargs)
    for step in range(steps):
        for opt, params in ((ours, made[0]), (theirs, made[1])):
            for p, g in zip(params, _special_grads(step, params)):
                p.grad = g
            opt.step()
        assert_same_optimizer(ours, theirs, EXACT, f"step {step}")


def assert_pickle_roundtrip(name: str, kwargs: dict, dtype: torch.dtype = torch.float64, **problem_options) -> None:
    """A pickled or deep-copied optimizer has the same state and steps on identically."""
    assert_copies_step_identically(lambda: run_exact(name, kwargs, dtype, steps=4, **problem_options))


def assert_copies_step_identically(make_trial) -> None:
    """The round trip of :func:`assert_pickle_roundtrip` for any ``make_trial()`` (a Trial that has stepped)."""
    for copier in (lambda opt: pickle.loads(pickle.dumps(opt)), copy.deepcopy):
        trial = make_trial()
        original = trial.ours
        copied = copier(original)
        assert type(copied) is type(original)
        assert_same(copied.state_dict(), original.state_dict(), EXACT, "copy")
        # unpickling adds "differentiable" to defaults where the class has no such option, as torch does
        assert copied.defaults == {"differentiable": False, **original.defaults}
        for opt in (original, copied):
            params = Trial.flat(opt)
            for p, g in zip(params, trial.problem.random_grads(99, params)):
                p.grad = g
        before = copy.deepcopy(original.state_dict())
        copied.step()
        original.step()
        assert_same(copied.state_dict(), original.state_dict(), EXACT, "after a step")
        for a, b in zip(Trial.flat(copied), Trial.flat(original)):
            assert_same(a, b, EXACT, "param after a step")
        assert not _same_values(before, original.state_dict()), "the step changed nothing"


def _same_values(a: dict, b: dict) -> bool:
    try:
        assert_same(a, b, EXACT)
    except AssertionError:
        return False
    return True


def assert_legacy_step_loads(name: str, kwargs: dict, dtype: torch.dtype = torch.float64, **problem_options) -> None:
    """A checkpoint whose ``step`` entries are plain numbers (old torch) loads as in torch."""
    trial = run_exact(name, kwargs, dtype, steps=3, **problem_options)
    legacy = copy.deepcopy(trial.theirs.state_dict())
    for entry in legacy["state"].values():
        entry["step"] = entry["step"].item()
    trial.ours.load_state_dict(copy.deepcopy(legacy))
    trial.theirs.load_state_dict(legacy)
    assert_same_optimizer(trial.ours, trial.theirs, EXACT, "after loading")
    for i in range(3, 6):
        trial.step(i)
        assert_same_optimizer(trial.ours, trial.theirs, EXACT, f"step {i}")


def allow_capturable_on_cpu(monkeypatch, name: str) -> None:
    """Let torch run its ``capturable`` branch on CPU tensors, so it can be compared bit for bit.

    torch refuses ``capturable=True`` for CPU parameters (an AssertionError);
    fastoptim runs the capturable arithmetic there.  Widening torch's list of
    capturable devices lets both take the same branch on this machine.
    """
    module = importlib.import_module(f"torch.optim.{name.lower()}")
    monkeypatch.setattr(module, "_get_capturable_supported_devices", lambda *args, **kwargs: ["cpu"])


def assert_torch_refuses_capturable_on_cpu(name: str, kwargs: dict) -> None:
    """Documents the deviation: torch raises where fastoptim steps."""
    ours_cls, theirs_cls = classes(name)
    for cls in (ours_cls, theirs_cls):
        p = torch.ones(3, requires_grad=True)
        p.grad = torch.ones(3)
        opt = cls([p], capturable=True, **kwargs)
        if cls is theirs_cls:
            try:
                opt.step()
            except AssertionError as exc:
                assert "If capturable=True" in str(exc)
            else:
                raise AssertionError("torch.optim now accepts capturable on CPU: drop this deviation")
        else:
            opt.step()
            assert opt.state[p]["step"].device == p.device
