"""Differential testing against torch.optim: run both libraries side by side.

``Trial`` builds the same parameters twice (one copy per library), feeds both
the same gradients step after step, and compares after *every* step:
parameters, per-parameter state, ``param_groups`` and ``state_dict()``.

The step sequence exercises what the core issue asks for: odd shapes, a
non-contiguous parameter, a 0-dim parameter, a complex parameter where the
algorithm supports it, two parameter groups, a step where one parameter has no
gradient, and steps through ``step(closure)``.  The closure evaluates a fixed
quadratic objective and writes its analytic gradient, so it also drives LBFGS
and works for sparse gradients and ``differentiable=True`` parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

# Comparison tolerances.  The reference rules are bit-exact with torch's
# for-loop path (tested with EXACT); fast kernels may reorder floating-point
# operations (fused multiply-adds, float32 scalars), so they are held to
# torch's own default assert_close tolerances.
EXACT = dict(rtol=0.0, atol=0.0)
TOLERANCE = {
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.complex64: dict(rtol=1.3e-6, atol=1e-5),
    torch.complex128: dict(rtol=1e-7, atol=1e-7),
}

GRADLESS_STEP = 3  # on this step the first parameter has no gradient
CLOSURE_STEPS = (5, 8)  # these steps go through step(closure)


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


@dataclass
class Problem:
    """Initial parameters and the objective ``Σ_k ‖A_k ⊙ θ_k − b_k‖²``."""

    groups: list[list[torch.Tensor]]  # initial values, one list per group
    scale: list[torch.Tensor] = field(default_factory=list)  # A_k
    target: list[torch.Tensor] = field(default_factory=list)  # b_k
    sparse: bool = False

    @classmethod
    def make(cls, dtype, *, complex_param=True, sparse=False, single_group=False, noncontiguous=True, seed=0):
        gen = torch.Generator().manual_seed(seed)

        def randn(*shape, dt=dtype):
            return torch.randn(shape, generator=gen, dtype=dt)

        if sparse:
            shapes = [(7, 3), (5, 4), (6, 2)]
            values = [randn(*s) for s in shapes]
        else:
            values = [
                randn(5, 3),
                randn(4, 7).t() if noncontiguous else randn(7, 4),
                randn(),  # 0-dim
                randn(11),
            ]
            if complex_param:
                values.append(randn(3, 2, dt=complex_dtype(dtype)))
        groups = [values] if single_group else [values[:2], values[2:]]
        flat = [v for g in groups for v in g]
        scale = [randn(*v.shape, dt=v.real.dtype if v.is_complex() else v.dtype).abs() + 0.5 for v in flat]
        target = [randn(*v.shape, dt=v.dtype) for v in flat]
        return cls(groups, scale, target, sparse)

    def params(self, differentiable: bool):
        """Fresh parameter tensors: leaves, or non-leaf clones when differentiable."""
        made, leaves = [], []
        for group in self.groups:
            ps = []
            for v in group:
                leaf = v.clone().requires_grad_()
                leaves.append(leaf)
                ps.append(leaf.clone() if differentiable else leaf)
            made.append(ps)
        return made, leaves

    def loss_and_grads(self, flat_params):
        loss = 0.0
        grads = []
        for p, a, b in zip(flat_params, self.scale, self.target):
            with torch.no_grad():
                r = a * p.detach() - b
                loss = loss + (r.abs() ** 2).sum()
                g = 2 * a * r
            grads.append(self.sparsify(_like(p, g)))
        return loss, grads

    def sparsify(self, g):
        if not self.sparse:
            return g
        mask = torch.zeros(g.shape[0], 1, dtype=g.dtype)
        mask[::2] = 1  # every other row has a gradient
        return (g * mask).to_sparse()

    def random_grads(self, step, flat_params):
        gen = torch.Generator().manual_seed(1000 + step)
        grads = []
        for p in flat_params:
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            grads.append(self.sparsify(_like(p, g)))
        return grads


def _like(param, values):
    """``values`` laid out with the parameter's strides, as autograd lays out a gradient."""
    out = torch.empty_like(param.detach())
    out.copy_(values)
    return out


def _set_grads(params, grads, skip_first=False):
    for i, (p, g) in enumerate(zip(params, grads)):
        if skip_first and i == 0:
            p.grad = None
        else:
            # sparse tensors have no strides to preserve (clone rejects the option)
            p.grad = g.clone() if g.is_sparse else g.clone(memory_format=torch.preserve_format)


def assert_same(actual, expected, tol, where=""):
    """Compare nested state values: tensors within ``tol``, everything else equal."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: expected a tensor, got {type(actual)}"
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
        a, e = actual.detach(), expected.detach()
        if a.is_sparse:
            a, e = a.to_dense(), e.to_dense()
        torch.testing.assert_close(a, e, **tol, equal_nan=True, msg=lambda m: f"{where}: {m}")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a dict, got {type(actual)}"
        assert set(actual) == set(expected), f"{where}: keys {sorted(map(str, actual))} != {sorted(map(str, expected))}"
        for k in expected:
            assert_same(actual[k], expected[k], tol, f"{where}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, tol, f"{where}[{i}]")
    elif isinstance(expected, float) and expected != expected:
        assert actual != actual, f"{where}: {actual} != nan"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def assert_same_optimizer(ours, theirs, tol, where=""):
    """Parameters, state, param_groups and state_dict() all agree."""
    our_params = [p for g in ours.param_groups for p in g["params"]]
    their_params = [p for g in theirs.param_groups for p in g["params"]]
    for i, (a, b) in enumerate(zip(our_params, their_params)):
        assert_same(a, b, tol, f"{where} param {i}")
    assert len(ours.state) == len(theirs.state), f"{where}: {len(ours.state)} state entries != {len(theirs.state)}"
    for i, (a, b) in enumerate(zip(our_params, their_params)):
        assert (a in ours.state) == (b in theirs.state), f"{where}: state presence of param {i}"
        if b in theirs.state:
            assert_same(ours.state[a], theirs.state[b], tol, f"{where} state[{i}]")
    groups = [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups]
    their_groups = [{k: v for k, v in g.items() if k != "params"} for g in theirs.param_groups]
    assert_same(groups, their_groups, EXACT, f"{where} param_groups")
    assert_same(ours.state_dict(), theirs.state_dict(), tol, f"{where} state_dict")


class Trial:
    """One optimizer configuration run in both libraries."""

    def __init__(self, ours_cls, theirs_cls, kwargs, dtype, *, problem: Problem, tol=None, closure_every_step=False):
        self.kwargs = kwargs
        self.problem = problem
        self.tol = tol if tol is not None else TOLERANCE[dtype]
        self.differentiable = bool(kwargs.get("differentiable", False))
        self.closure_every_step = closure_every_step
        self.ours_cls, self.theirs_cls = ours_cls, theirs_cls
        self.ours, self.our_leaves = self._build(ours_cls)
        self.theirs, self.their_leaves = self._build(theirs_cls)

    def _build(self, cls):
        groups, leaves = self.problem.params(self.differentiable)
        kwargs = copy.deepcopy(self.kwargs)
        if len(groups) == 1:
            return cls(groups[0], **kwargs), leaves
        # Second group overrides one option, so per-group options are exercised.
        specs = [{"params": groups[0]}, {"params": groups[1]}]
        if "lr" not in kwargs or not torch.is_tensor(kwargs["lr"]):
            # a 1x1 stand-in: Muon accepts 2-D parameters only
            stand_in = torch.zeros(1, 1, requires_grad=True)
            specs[1]["lr"] = 0.5 * (kwargs.get("lr", None) or cls([stand_in]).defaults["lr"])
        return cls(specs, **kwargs), leaves

    @staticmethod
    def flat(opt):
        return [p for g in opt.param_groups for p in g["params"]]

    def _closure(self, opt):
        params = self.flat(opt)

        def closure():
            loss, grads = self.problem.loss_and_grads(params)
            _set_grads(params, grads)
            return loss

        return closure

    def step(self, i):
        results = []
        for opt in (self.ours, self.theirs):
            params = self.flat(opt)
            if self.closure_every_step or i in CLOSURE_STEPS:
                results.append(opt.step(self._closure(opt)))
            else:
                _set_grads(params, self.problem.random_grads(i, params), skip_first=(i == GRADLESS_STEP))
                results.append(opt.step())
        return results

    def run(self, steps=10, check=True):
        for i in range(steps):
            ours, theirs = self.step(i)
            if check:
                if theirs is None:
                    assert ours is None, f"step {i}: closure result {ours!r} != None"
                else:
                    assert_same(torch.as_tensor(ours), torch.as_tensor(theirs), self.tol, f"step {i} loss")
                assert_same_optimizer(self.ours, self.theirs, self.tol, f"step {i}")

    def check_autograd_flows(self):
        """differentiable=True: gradients w.r.t. the initial parameters agree.

        Where torch's own step is not differentiable (autograd reports an
        in-place modification), fastoptim must fail the same way.
        """
        outcomes = []
        for opt in (self.ours, self.theirs):
            total = sum((p.abs() if p.is_complex() else p).sum() for p in self.flat(opt))
            try:
                total.backward()
                outcomes.append(None)
            except RuntimeError as exc:
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1], f"backward through step(): ours {outcomes[0]}, torch {outcomes[1]}"
        if outcomes[1] is not None:
            return
        for i, (a, b) in enumerate(zip(self.our_leaves, self.their_leaves)):
            assert b.grad is not None and a.grad is not None, f"leaf {i}: no gradient flowed through step()"
            assert_same(a.grad, b.grad, self.tol, f"leaf {i} grad")
