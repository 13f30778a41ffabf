"""Checks for the algorithms beyond torch.optim, against their reference packages.

torch.optim has no Lion, LAMB, LARS, Adan or Schedule-Free, so correctness
comes from someone else's implementation: ``lion-pytorch``, ``pytorch_optimizer``
and ``schedulefree`` (the ``test`` extra installs them; each test module skips
when its package is missing).  :class:`ReferenceTrial` runs fastoptim and the
reference side by side on :class:`parity.Problem` (two groups with different
lrs, odd shapes, a transposed parameter, a 0-dim one, optionally a complex one;
a step where one parameter has no gradient; steps through ``step(closure)``)
and compares after *every* step: every parameter, every state entry (same
keys, dtypes, shapes and values), and every group option the two share.  Group
options that only one side has are named by the caller, so an unexpected key
on either side fails the test.

The other helpers test what every such algorithm must do in fastoptim:
``state_dict`` round trips into a fresh optimizer (and through
``torch.save``/``torch.load(weights_only=True)``), fastoptim's LR schedulers,
``torch.amp.GradScaler`` skipping inf/NaN steps, and the fast kernels against
the reference rule.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import torch

from fastoptim.kernels.dispatch import backend_for, use_backend
from parity import EXACT, TOLERANCE, Problem, Trial, assert_same

Prepare = Callable[[torch.optim.Optimizer], None] | None

#: bfloat16 kernels against the reference rule.  torch's own bfloat16 reference is not uniform: the
#: scalar tail loop of its element-wise kernels (the last elements of each thread's range) rounds
#: ``alpha·x`` of ``add_(x, alpha)`` to bfloat16 before adding, the vector loop does not.  At those
#: elements the reference moves by an ulp, and buffers that accumulate (z, momentum) carry the ulps
#: over the steps: a few bfloat16 ulps, far below what a wrong formula gives.
BF16_KERNEL_TOLERANCE = dict(rtol=3e-2, atol=1e-2)


def _groups_without_params(opt) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def assert_groups_match(ours: list[dict], theirs: list[dict], our_only=(), their_only=(), where="") -> None:
    """Shared group options equal (exactly); the others are the documented ones."""
    assert len(ours) == len(theirs), f"{where}: {len(ours)} groups != {len(theirs)}"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        extra, missing = set(a) - set(b), set(b) - set(a)
        assert extra <= set(our_only), f"{where} group {i}: unexpected options of ours {sorted(extra - set(our_only))}"
        assert missing <= set(their_only), f"{where} group {i}: options we lack {sorted(missing - set(their_only))}"
        for key in set(a) & set(b):
            assert_same(a[key], b[key], EXACT, f"{where} group {i}[{key!r}]")


def assert_matches_reference(ours, theirs, tol, where="", our_only=(), their_only=()) -> None:
    """Parameters, every state entry, shared group options and the state_dicts agree."""
    our_params = [p for g in ours.param_groups for p in g["params"]]
    their_params = [p for g in theirs.param_groups for p in g["params"]]
    assert len(our_params) == len(their_params)
    for i, (a, b) in enumerate(zip(our_params, their_params)):
        assert_same(a, b, tol, f"{where} param {i}")
    their_state = {p: s for p, s in theirs.state.items() if s}  # defaultdict lookups leave empty entries
    our_state = {p: s for p, s in ours.state.items() if s}
    for i, (a, b) in enumerate(zip(our_params, their_params)):
        assert (a in our_state) == (b in their_state), f"{where}: state presence of param {i}"
        if b in their_state:
            assert_same(our_state[a], their_state[b], tol, f"{where} state[{i}]")
    assert_groups_match(_groups_without_params(ours), _groups_without_params(theirs), our_only, their_only, where)
    our_sd, their_sd = ours.state_dict(), theirs.state_dict()
    assert_same(
        {k: v for k, v in our_sd["state"].items() if v},
        {k: v for k, v in their_sd["state"].items() if v},
        tol,
        f"{where} state_dict state",
    )
    assert_groups_match(our_sd["param_groups"], their_sd["param_groups"], our_only, their_only, f"{where} state_dict")


class ReferenceTrial(Trial):
    """:class:`parity.Trial` against a reference package instead of torch.optim.

    ``their_kwargs`` are the reference's constructor arguments (default: the
    same as ours); ``prepare(opt)`` runs on both optimizers once built
    (Schedule-Free's ``train()``).  fastoptim steps with ``backend``: the
    reference rules (``"reference"``, bit-exact, the default) or whatever
    dispatch picks (``"auto"``: the kernels, equal to rounding).
    """

    def __init__(
        self,
        ours_cls,
        theirs_cls,
        kwargs,
        dtype,
        *,
        problem: Problem,
        tol=EXACT,
        their_kwargs=None,
        our_only=(),
        their_only=(),
        prepare: Prepare = None,
        backend: str = "reference",
    ):
        self.backend = backend
        self._their_kwargs = dict(kwargs) if their_kwargs is None else their_kwargs
        self._ours_cls = ours_cls
        self.our_only, self.their_only = our_only, their_only
        super().__init__(ours_cls, theirs_cls, kwargs, dtype, problem=problem, tol=tol)
        if prepare is not None:
            prepare(self.ours)
            prepare(self.theirs)

    def _build(self, cls):
        if cls is self._ours_cls:
            return super()._build(cls)
        kwargs, self.kwargs = self.kwargs, self._their_kwargs
        try:
            return super()._build(cls)
        finally:
            self.kwargs = kwargs

    def step(self, i):
        with use_backend(self.backend):
            return super().step(i)

    def run(self, steps=12, check=True):
        for i in range(steps):
            ours, theirs = self.step(i)
            if check:
                if theirs is None:
                    assert ours is None
                else:
                    assert_same(torch.as_tensor(ours), torch.as_tensor(theirs), self.tol, f"step {i} loss")
                self.check(f"step {i}")

    def check(self, where=""):
        assert_matches_reference(self.ours, self.theirs, self.tol, where, self.our_only, self.their_only)


def run_against_reference(ours_cls, theirs_cls, kwargs, dtype, *, steps=12, complex_param=False, **options):
    """``steps`` steps of ours and the reference on the standard problem, compared after each.

    By default bit for bit, with fastoptim's reference rules; ``backend="auto", tol=TOLERANCE[dtype]``
    checks what users run by default (the fast kernels).
    """
    trial = ReferenceTrial(
        ours_cls, theirs_cls, kwargs, dtype, problem=Problem.make(dtype, complex_param=complex_param), **options
    )
    trial.run(steps)
    return trial


# ----------------------------------------------------------------------------- fastoptim-only checks


def _grads(step: int, params):
    gen = torch.Generator().manual_seed(500 + step)
    out = []
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        out.append(torch.empty_like(p).copy_(g))
    return out


def _fresh_params(dtype, complex_param=False):
    problem = Problem.make(dtype, complex_param=complex_param)
    groups, _ = problem.params(differentiable=False)
    return groups


def _build(cls, groups, kwargs):
    return cls([{"params": groups[0]}, {"params": groups[1], "lr": 0.5 * kwargs.get("lr", 1e-3)}], **kwargs)


def _step_all(opt, params, step):
    for p, g in zip(params, _grads(step, params)):
        p.grad = g
    opt.step()


def assert_state_dict_roundtrip(
    cls, kwargs, dtype=torch.float32, *, before=6, after=6, prepare: Prepare = None, complex_param=False
) -> None:
    """state_dict → fresh optimizer (and through torch.save/load(weights_only=True)) → identical continuation."""
    groups = _fresh_params(dtype, complex_param)
    flat = [p for g in groups for p in g]
    original = _build(cls, groups, kwargs)
    if prepare is not None:
        prepare(original)
    for step in range(before):
        _step_all(original, flat, step)
    saved = original.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    copies = []
    for source in (copy.deepcopy(saved), loaded):
        new_groups = [[p.detach().clone().requires_grad_() for p in g] for g in groups]
        fresh = _build(cls, new_groups, kwargs)
        fresh.load_state_dict(source)
        copies.append((fresh, [p for g in new_groups for p in g]))
    for step in range(before, before + after):
        _step_all(original, flat, step)
        for fresh, fresh_flat in copies:
            _step_all(fresh, fresh_flat, step)
            assert_matches_reference(fresh, original, EXACT, f"resumed step {step}")


def assert_follows_scheduler(cls, kwargs, make_scheduler, dtype=torch.float64, *, steps=10, prepare: Prepare = None):
    """With a fastoptim scheduler, each step uses the scheduled lr: same as setting it by hand."""
    runs = []
    for drive in ("scheduler", "by hand"):
        groups = _fresh_params(dtype)
        flat = [p for g in groups for p in g]
        opt = _build(cls, groups, kwargs)
        if prepare is not None:
            prepare(opt)
        scheduler = make_scheduler(opt)
        lrs = []
        for step in range(steps):
            if drive == "by hand":
                for group, lr in zip(opt.param_groups, runs[0][2][step]):
                    group["lr"] = lr
            lrs.append([g["lr"] for g in opt.param_groups])
            _step_all(opt, flat, step)
            if drive == "scheduler":
                scheduler.step()
        runs.append((opt, flat, lrs))
    (sched_opt, sched_params, sched_lrs), (hand_opt, hand_params, _) = runs
    assert len({tuple(lrs) for lrs in sched_lrs}) > 1, "the scheduler never changed the lr"
    for a, b in zip(sched_params, hand_params):
        assert_same(a, b, EXACT, "param")
    assert_same(sched_opt.state_dict()["state"], hand_opt.state_dict()["state"], EXACT, "state")


def assert_grad_scaler_skips_nonfinite(cls, kwargs, dtype=torch.float32, *, prepare: Prepare = None) -> None:
    """GradScaler('cpu'): inf/NaN steps change nothing; finite steps equal unscaled plain steps."""
    corrupt = {2: float("inf"), 5: float("nan")}
    runs = []
    for scaled in (True, False):
        groups = _fresh_params(dtype)
        flat = [p for g in groups for p in g]
        opt = _build(cls, groups, kwargs)
        if prepare is not None:
            prepare(opt)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
        trace = []
        for step in range(8):
            grads = _grads(step, flat)
            if scaled:
                opt.zero_grad()
                loss = sum((p * g).sum() for p, g in zip(flat, grads))  # dloss/dp = g
                scaler.scale(loss).backward()
                if step in corrupt:
                    flat[0].grad.view(-1)[0] = corrupt[step]
                scaler.step(opt)
                scaler.update()
            elif step not in corrupt:
                for p, g in zip(flat, grads):
                    p.grad = g
                opt.step()
            trace.append(([p.detach().clone() for p in flat], copy.deepcopy(opt.state_dict()["state"])))
        runs.append((trace, opt, scaler))
    (scaled_trace, scaled_opt, scaler), (plain_trace, _, _) = runs
    for step, ((sp, ss), (pp, ps)) in enumerate(zip(scaled_trace, plain_trace)):
        # Scaling by a power of two and unscaling is exact, so the steps agree bit for bit.
        for a, b in zip(sp, pp):
            assert_same(a, b, EXACT, f"step {step} param")
        assert_same(ss, ps, EXACT, f"step {step} state")
    assert scaled_opt._step_count == 8 - len(corrupt)
    assert scaler.get_scale() < 2.0**10


def assert_kernel_matches_reference(
    cls, kwargs, dtype, *, steps=8, prepare: Prepare = None, shapes=((70000,), (33, 5), (4, 7), (), (1,)), tol=None
) -> None:
    """The numba backend (forced: it may not fall back) against the reference rule, every element after each step.

    The shapes include one tensor larger than a kernel chunk (split across
    threads), odd sizes, a transposed one, a 0-dim one.
    """
    made = []
    for backend in ("numba", "reference"):
        gen = torch.Generator().manual_seed(7)
        params = []
        for k, shape in enumerate(shapes):
            v = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            if k == 2:
                v = v.t().contiguous().t()  # a transposed (non-contiguous, dense) parameter
            params.append(v.requires_grad_())
        half = len(params) // 2
        opt = cls([{"params": params[:half]}, {"params": params[half:], "lr": 0.5 * kwargs.get("lr", 1e-3)}], **kwargs)
        if prepare is not None:
            prepare(opt)
        made.append((backend, opt, params))
    tol = tol if tol is not None else (TOLERANCE.get(dtype) or BF16_KERNEL_TOLERANCE)
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 + step)
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for p in made[0][2]]
        for backend, opt, params in made:
            for p, g in zip(params, grads):
                p.grad = torch.empty_like(p).copy_(g)
            with use_backend(backend):
                if backend == "numba":
                    assert backend_for(opt) == "numba", f"{cls.__name__}: the kernel does not cover {kwargs}"
                opt.step()
        (_, fast, fast_params), (_, ref, ref_params) = made
        assert_matches_reference(fast, ref, tol, f"{cls.__name__} {kwargs} {dtype} step {step}")


def assert_late_parameter_matches_reference(
    ours_cls, theirs_cls, kwargs, dtype=torch.float64, *, prepare: Prepare = None, our_only=(), their_only=(), steps=8,
    joins_at=3,
) -> None:
    """A parameter whose first gradient arrives at step ``joins_at`` is treated as the reference treats it
    (group-level counters: its first update already uses the group's step count)."""
    gen = torch.Generator().manual_seed(3)
    initial = [torch.randn(4, 3, generator=gen, dtype=dtype), torch.randn(6, generator=gen, dtype=dtype)]
    made = []
    for cls, kw in ((ours_cls, kwargs), (theirs_cls, {k: v for k, v in kwargs.items() if k not in our_only})):
        params = [v.clone().requires_grad_() for v in initial]
        opt = cls(params, **kw)
        if prepare is not None:
            prepare(opt)
        made.append((opt, params))
    for step in range(steps):
        gen = torch.Generator().manual_seed(40 + step)
        grads = [torch.randn(v.shape, generator=gen, dtype=dtype) for v in initial]
        for opt, params in made:
            params[0].grad = grads[0].clone()
            params[1].grad = grads[1].clone() if step >= joins_at else None
            with use_backend("reference"):
                opt.step()
        assert_matches_reference(made[0][0], made[1][0], EXACT, f"step {step}", our_only, their_only)


def assert_defaults_match(ours_cls, theirs_cls, their_only=()) -> None:
    """Every default the two share is equal; the reference has no others than ``their_only``."""
    p = torch.zeros(2, requires_grad=True)
    ours, theirs = ours_cls([p]), theirs_cls([p])
    for key in set(ours.defaults) & set(theirs.defaults):
        assert ours.defaults[key] == theirs.defaults[key], key
    assert set(theirs.defaults) - set(ours.defaults) == set(their_only)


def assert_grad_untouched(cls, kwargs, *, prepare: Prepare = None) -> None:
    """``step()`` leaves ``p.grad`` as it was (the reference packages overwrite it)."""
    p = torch.ones(2, 3, requires_grad=True)
    opt = cls([p], **kwargs)
    if prepare is not None:
        prepare(opt)
    g = torch.linspace(-1.0, 2.0, 6).reshape(2, 3)
    p.grad = g.clone()
    opt.step()
    assert torch.equal(p.grad, g)
    assert not torch.equal(p.detach(), torch.ones(2, 3))
