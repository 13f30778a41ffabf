"""LBFGS beyond optim_db: bit-exact runs on harder objectives, the line search, and the edge paths.

Every comparison is against torch.optim.LBFGS with ``rtol=atol=0`` on every
element of the parameters and of the (global) state.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.optim import lbfgs as torch_lbfgs

import fastoptim
from fastoptim.algorithms._line_search import cubic_interpolate, strong_wolfe
from fastoptim.algorithms.lbfgs import two_loop_direction
from parity import EXACT, Problem, Trial, assert_same, assert_same_optimizer

DTYPES = [torch.float32, torch.float64]


# ---------------------------------------------------------------- objectives


def rosenbrock(params):
    """A non-convex objective (negative curvature: some pairs fail yᵀs > 1e-10)."""
    x = torch.cat([(torch.stack([p.real, p.imag], -1) if p.is_complex() else p).reshape(-1) for p in params])
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum() + torch.sin(3 * x).sum()


def make_params(dtype, *, complex_param=True, noncontiguous=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(4, 3, generator=gen, dtype=dtype) * 0.5, torch.randn((), generator=gen, dtype=dtype)]
    last = torch.randn(5, 2, generator=gen, dtype=dtype)
    values.append(last.t() if noncontiguous else last.t().contiguous())
    if complex_param:
        ctype = torch.complex128 if dtype == torch.float64 else torch.complex64
        values.append(torch.randn(3, generator=gen, dtype=ctype) * 0.5)
    return values


def autograd_closure(opt, params, objective=rosenbrock):
    def closure():
        opt.zero_grad()
        loss = objective(params)
        loss.backward()
        return loss

    return closure


def run_pair(kwargs, dtype, *, steps=6, objective=rosenbrock, **param_options):
    """Run fastoptim and torch side by side with autograd closures; compare after every step."""
    values = make_params(dtype, **param_options)
    runs = []
    for cls in (fastoptim.LBFGS, torch.optim.LBFGS):
        params = [v.clone().requires_grad_() for v in values]
        runs.append((cls(params, **copy.deepcopy(kwargs)), params))
    (ours, our_params), (theirs, their_params) = runs
    for step in range(steps):
        loss_ours = ours.step(autograd_closure(ours, our_params, objective))
        loss_theirs = theirs.step(autograd_closure(theirs, their_params, objective))
        assert_same(loss_ours, loss_theirs, EXACT, f"step {step} loss")
        assert_same_optimizer(ours, theirs, EXACT, f"step {step}")
        assert list(ours.state[our_params[0]]) == list(theirs.state[their_params[0]]), "state key order"
    return ours, theirs


CONFIGS = [
    {},
    {"line_search_fn": "strong_wolfe"},
    {"lr": 0.1, "history_size": 3},  # the history fills up and is shifted
    {"line_search_fn": "strong_wolfe", "history_size": 2, "max_iter": 7},
    {"lr": torch.tensor(0.05), "max_iter": 4},
    {"lr": torch.tensor([0.5]), "line_search_fn": "strong_wolfe"},  # 1-element, not 0-dim
    {"max_iter": 5, "max_eval": 3},  # max_eval stops the step first
    {"line_search_fn": "strong_wolfe", "max_eval": 4},  # the line search runs out of evaluations
    {"tolerance_change": 1e-2, "tolerance_grad": 1e-3},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_torch_on_rosenbrock(kwargs, dtype):
    """Complex and 0-dim params, autograd closures: identical bits after every step."""
    run_pair(kwargs, dtype)


@pytest.mark.parametrize("kwargs", [{}, {"line_search_fn": "strong_wolfe"}], ids=str)
def test_bfloat16_params(kwargs):
    run_pair(kwargs, torch.bfloat16, complex_param=False, steps=3)


@pytest.mark.parametrize("kwargs", CONFIGS[:4], ids=str)
def test_harness_quadratic_bitwise(kwargs):
    """The optim_db harness objective, held to exact equality."""
    problem = Problem.make(torch.float64, single_group=True, noncontiguous=False)
    trial = Trial(fastoptim.LBFGS, torch.optim.LBFGS, kwargs, torch.float64, problem=problem, tol=EXACT,
                  closure_every_step=True)
    trial.run(steps=10)


def test_rejected_curvature_pairs_are_exercised():
    """The Rosenbrock runs really take the yᵀs ≤ 1e-10 branch (otherwise the tests above prove less)."""
    ours, _ = run_pair({"history_size": 100}, torch.float64, steps=3)
    state = ours.state[ours.param_groups[0]["params"][0]]
    assert len(state["old_dirs"]) < state["n_iter"] - 1


def test_noncontiguous_param_flattened_by_copy():
    """torch raises on a non-contiguous gradient; fastoptim gives what torch gives for a contiguous copy."""
    strided = make_params(torch.float64, noncontiguous=True)
    contiguous = [v.contiguous() for v in strided]
    ours_params = [v.clone(memory_format=torch.preserve_format).requires_grad_() for v in strided]
    assert not ours_params[2].is_contiguous()
    their_params = [v.clone().requires_grad_() for v in contiguous]
    ours = fastoptim.LBFGS(ours_params, line_search_fn="strong_wolfe")
    theirs = torch.optim.LBFGS(their_params, line_search_fn="strong_wolfe")
    for step in range(4):
        ours.step(autograd_closure(ours, ours_params))
        theirs.step(autograd_closure(theirs, their_params))
        for i, (a, b) in enumerate(zip(ours_params, their_params)):
            assert_same(a, b, EXACT, f"step {step} param {i}")
        assert_same(ours.state[ours_params[0]], theirs.state[their_params[0]], EXACT, f"step {step} state")
    assert not ours_params[2].is_contiguous()

    with pytest.raises(RuntimeError, match="view size is not compatible"):
        torch_params = [v.clone(memory_format=torch.preserve_format).requires_grad_() for v in strided]
        opt = torch.optim.LBFGS(torch_params)
        opt.step(autograd_closure(opt, torch_params))


@pytest.mark.parametrize("kwargs", [{}, {"line_search_fn": "strong_wolfe"}], ids=str)
def test_sparse_and_missing_gradients(kwargs):
    """A sparse gradient is densified and a missing one counts as zeros, as in torch."""
    values = make_params(torch.float64, complex_param=False)
    runs = []
    for cls in (fastoptim.LBFGS, torch.optim.LBFGS):
        params = [v.clone().requires_grad_() for v in values]
        opt = cls(params, **kwargs)

        def closure(params=params, opt=opt):
            opt.zero_grad()
            loss = rosenbrock(params[:2])  # params[2] gets no gradient
            loss.backward()
            params[0].grad = params[0].grad.to_sparse()
            return loss

        runs.append((opt, closure))
    for step in range(4):
        for opt, closure in runs:
            opt.step(closure)
        assert_same_optimizer(runs[0][0], runs[1][0], EXACT, f"step {step}")


def test_already_optimal_returns_early():
    """max|g| ≤ tolerance_grad: one evaluation, and only the counters in the state."""
    results = []
    for cls in (fastoptim.LBFGS, torch.optim.LBFGS):
        p = torch.ones(3, requires_grad=True)
        opt = cls([p], tolerance_grad=1e-3)

        def closure(p=p):
            p.grad = torch.full_like(p, 1e-4)
            return torch.tensor(2.0)

        loss = opt.step(closure)
        results.append((opt, loss))
    assert_same_optimizer(results[0][0], results[1][0], EXACT)
    assert set(results[0][0].state[results[0][0].param_groups[0]["params"][0]]) == {"func_evals", "n_iter"}
    assert results[0][1] is not None and results[0][1] == results[1][1]


@pytest.mark.parametrize("kwargs", [{}, {"line_search_fn": "strong_wolfe"}], ids=str)
@pytest.mark.parametrize("special", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["grad", "loss"])
def test_nonfinite_loss_and_gradients_like_torch(kwargs, special, where):
    """A NaN/±inf in the closure's gradient or loss propagates into params and state exactly as in torch."""
    runs = []
    for cls in (fastoptim.LBFGS, torch.optim.LBFGS):
        p = torch.tensor([0.9, -1.5, 2.0, 0.1], dtype=torch.float64, requires_grad=True)
        evaluations = [0]

        def closure(p=p, evaluations=evaluations):
            evaluations[0] += 1
            g = 2 * p.detach() + torch.cos(p.detach())
            loss = float((p.detach() ** 2).sum() + torch.sin(p.detach()).sum())
            if evaluations[0] == 4:
                if where == "grad":
                    g[1] = special
                else:
                    loss = special
            p.grad = g
            return torch.tensor(loss, dtype=torch.float64)

        runs.append((cls([p], **kwargs), p, closure))
    for step in range(3):
        outcomes = []
        for opt, _, closure in runs:
            try:
                opt.step(closure)
                outcomes.append(None)
            except Exception as exc:  # torch's line search can fail on a NaN loss: so must ours
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1], f"step {step}: ours {outcomes[0]}, torch {outcomes[1]}"
        assert_same_optimizer(runs[0][0], runs[1][0], EXACT, f"step {step}")
        if outcomes[1] is not None:
            break
    if where == "grad" and not kwargs:  # with a fixed step, the bad gradient must reach the state
        state = runs[0][0].state[runs[0][1]]
        assert not all(torch.isfinite(state[k]).all() for k in ("d", "prev_flat_grad"))


# ---------------------------------------------------------------- errors and protocol


def test_constructor_and_step_errors_like_torch():
    p = torch.zeros(2, requires_grad=True)
    q = torch.zeros(2, requires_grad=True)
    for cls in (fastoptim.LBFGS, torch.optim.LBFGS):
        with pytest.raises(ValueError, match=r"^LBFGS doesn't support per-parameter options \(parameter groups\)$"):
            cls([{"params": [p]}, {"params": [q], "lr": 0.5}])
        with pytest.raises(ValueError, match="^Invalid learning rate: -1$"):
            cls([p], lr=-1)
        with pytest.raises(ValueError, match="^Tensor lr must be 1-element$"):
            cls([p], lr=torch.tensor([1.0, 2.0]))
        with pytest.raises(TypeError, match="closure"):
            cls([p]).step()
        opt = cls([p], line_search_fn="armijo")
        with pytest.raises(RuntimeError, match="^only 'strong_wolfe' is supported$"):
            opt.step(lambda: (p.grad is None and p.__setattr__("grad", torch.ones(2))) or torch.tensor(1.0))
        opt = cls([p])
        opt.add_param_group({"params": [q]})
        with pytest.raises(AssertionError, match="^Expected exactly one param_group, but got 2$"):
            opt.step(lambda: torch.tensor(0.0))


def test_defaults_and_param_groups_match_torch():
    p = torch.zeros(2, requires_grad=True)
    for kwargs in ({}, {"max_iter": 9}, {"max_iter": 9, "max_eval": 3, "line_search_fn": "strong_wolfe"}):
        ours, theirs = fastoptim.LBFGS([p], **kwargs), torch.optim.LBFGS([p], **kwargs)
        assert ours.defaults == theirs.defaults
        assert list(ours.defaults) == list(theirs.defaults)
        assert list(ours.param_groups[0]) == list(theirs.param_groups[0])
        assert repr(ours) == repr(theirs)
    assert fastoptim.LBFGS([p], max_iter=9).defaults["max_eval"] == 11


@pytest.mark.parametrize("copier", [lambda o: pickle.loads(pickle.dumps(o)), copy.deepcopy], ids=["pickle", "deepcopy"])
def test_copy_continues_identically(copier):
    """A copied optimizer (with its copied params) keeps stepping exactly like the original."""
    ours, _ = run_pair({"line_search_fn": "strong_wolfe", "history_size": 4}, torch.float64, steps=2)
    copied = copier(ours)
    assert copied._params is copied.param_groups[0]["params"]
    assert_same(copied.state_dict(), ours.state_dict(), EXACT, "copy")
    for opt in (ours, copied):
        params = opt.param_groups[0]["params"]
        opt.step(autograd_closure(opt, params))
    assert_same(copied.state_dict(), ours.state_dict(), EXACT, "after a step")
    for a, b in zip(copied.param_groups[0]["params"], ours.param_groups[0]["params"]):
        assert_same(a, b, EXACT, "param")


def test_state_dict_cross_load_midway():
    """torch's state_dict, taken mid-run, loads into fastoptim and the runs stay bit-identical."""
    ours, theirs = run_pair({"line_search_fn": "strong_wolfe", "history_size": 5}, torch.float64, steps=2)
    fresh = fastoptim.LBFGS(
        [p.detach().clone().requires_grad_() for p in theirs.param_groups[0]["params"]],
        line_search_fn="strong_wolfe",
    )
    fresh.load_state_dict(theirs.state_dict())
    assert_same_optimizer(fresh, theirs, EXACT, "after load")
    for step in range(3):
        for opt in (fresh, theirs):
            opt.step(autograd_closure(opt, opt.param_groups[0]["params"]))
        assert_same_optimizer(fresh, theirs, EXACT, f"step {step} after load")


def test_step_hooks_fire_once_per_step():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = fastoptim.LBFGS([p])
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    opt.step(autograd_closure(opt, [p], lambda ps: (ps[0] ** 2).sum()))
    assert calls == ["pre", "post"]
    assert opt._step_count == 1


# ---------------------------------------------------------------- the pieces


def test_two_loop_matches_the_dense_inverse_hessian():
    """d = −H g with H the BFGS update of H⁰ = h·I by each stored pair, oldest first."""
    gen = torch.Generator().manual_seed(3)
    n, pairs, h = 6, 4, 0.7
    s_list = [torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(pairs)]
    y_list = [s + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64) for s in s_list]
    ro = [1.0 / y.dot(s) for y, s in zip(y_list, s_list)]
    assert all(r > 0 for r in ro)
    g = torch.randn(n, generator=gen, dtype=torch.float64)

    H = h * torch.eye(n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    for s, y, r in zip(s_list, y_list, ro):
        H = (eye - r * torch.outer(s, y)) @ H @ (eye - r * torch.outer(y, s)) + r * torch.outer(s, s)

    al = [None] * 10
    d = two_loop_direction(g, y_list, s_list, ro, h, al)
    torch.testing.assert_close(d, -(H @ g), rtol=1e-12, atol=1e-12)
    assert all(a is not None for a in al[:pairs]) and all(a is None for a in al[pairs:])


def test_cubic_interpolate_matches_torch_bitwise():
    gen = torch.Generator().manual_seed(0)
    checked = midpoints = 0
    for _ in range(400):
        x1, x2, f1, f2 = (float(v) for v in torch.randn(4, generator=gen, dtype=torch.float64))
        g1, g2 = torch.randn(2, generator=gen, dtype=torch.float64)
        bounds = None if checked % 2 else tuple(sorted(float(v) for v in torch.randn(2, generator=gen) * 3))
        ours = cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=bounds)
        theirs = torch_lbfgs._cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=bounds)
        assert type(ours) is type(theirs)
        assert_same(torch.as_tensor(ours), torch.as_tensor(theirs), EXACT, f"case {checked}")
        midpoints += (g1 + g2 - 3 * (f1 - f2) / (x1 - x2)) ** 2 - g1 * g2 < 0
        checked += 1
    assert 0 < midpoints < checked  # both branches ran


def test_cubic_interpolate_finds_a_cubic_minimum():
    """Exact on a cubic: f(x) = (x−1)³/3 − (x−1)·4 has its local minimum at x = 3."""
    f = lambda x: (x - 1) ** 3 / 3 - 4 * (x - 1)  # noqa: E731
    df = lambda x: torch.tensor((x - 1) ** 2 - 4.0, dtype=torch.float64)  # noqa: E731
    x = cubic_interpolate(2.0, f(2.0), df(2.0), 5.0, f(5.0), df(5.0))
    torch.testing.assert_close(torch.as_tensor(x, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64))


def _quadratic_line(seed, n=8):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=gen, dtype=torch.float64) * 10 + 0.1
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    x0 = torch.randn(n, generator=gen, dtype=torch.float64)

    def f_and_g(x):
        return float((a * x * x / 2 + torch.sin(3 * x) - b * x).sum()), a * x + 3 * torch.cos(3 * x) - b

    def obj_func(x, t, d):
        return f_and_g(x + t * d)

    f0, g0 = f_and_g(x0)
    return obj_func, x0, -g0, f0, g0


@pytest.mark.parametrize("max_ls", [25, 3, 1, 0])
def test_strong_wolfe_matches_torch_bitwise(max_ls):
    """Random non-convex lines with first steps from tiny to huge: same point, same evaluation count."""
    zooms = 0
    for seed in range(60):
        obj_func, x0, d, f0, g0 = _quadratic_line(seed)
        gtd = g0.dot(d)
        t0 = [1e-4, 0.05, 1.0, 30.0][seed % 4]
        calls = []

        def counting(x, t, d, calls=calls):
            calls.append(t)
            return obj_func(x, t, d)

        ours = strong_wolfe(counting, x0, t0, d, f0, g0, gtd, max_ls=max_ls)
        theirs = torch_lbfgs._strong_wolfe(obj_func, x0, t0, d, f0, g0, gtd, max_ls=max_ls)
        assert [type(v) for v in ours] == [type(v) for v in theirs]
        assert_same(list(ours), list(theirs), EXACT, f"seed {seed}")
        zooms += len(calls) > 2
    if max_ls == 25:
        assert zooms > 5, "the zoom phase was hardly exercised"


def test_strong_wolfe_result_satisfies_the_conditions():
    c1, c2 = 1e-4, 0.9
    for seed in range(30):
        obj_func, x0, d, f0, g0 = _quadratic_line(seed)
        gtd = g0.dot(d)
        f_new, g_new, t, _ = strong_wolfe(obj_func, x0, [0.01, 1.0, 50.0][seed % 3], d, f0, g0, gtd)
        assert f_new <= f0 + c1 * t * gtd
        assert abs(g_new.dot(d)) <= -c2 * gtd


def _wiggly_line(seed):
    """φ(t) = c·t² − a·t + b·sin(w·t) in one dimension: many local bumps for the bracketing phase."""
    gen = torch.Generator().manual_seed(seed)
    a, b, w, c = (torch.rand(4, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 1.0, 20.0, 0.2]) + 0.05)
    x0 = torch.zeros(1, dtype=torch.float64)

    def obj_func(x, t, d):
        z = x + t * d
        value = c * z.sum() ** 2 - a * z.sum() + b * torch.sin(w * z).sum()
        return float(value), 2 * c * z - a + b * w * torch.cos(w * z)

    f0, g0 = obj_func(x0, 0.0, torch.ones(1, dtype=torch.float64))
    d = torch.ones(1, dtype=torch.float64) if g0.item() < 0 else -torch.ones(1, dtype=torch.float64)
    return obj_func, x0, d, f0, g0


@pytest.mark.parametrize("max_ls", [25, 4])
def test_strong_wolfe_on_wiggly_lines_matches_torch_bitwise(max_ls):
    for seed in range(200):
        obj_func, x0, d, f0, g0 = _wiggly_line(seed)
        gtd = g0.dot(d)
        t0 = [0.01, 0.3, 1.0, 4.0][seed % 4]
        ours = strong_wolfe(obj_func, x0, t0, d, f0, g0, gtd, max_ls=max_ls)
        theirs = torch_lbfgs._strong_wolfe(obj_func, x0, t0, d, f0, g0, gtd, max_ls=max_ls)
        assert [type(v) for v in ours] == [type(v) for v in theirs]
        assert_same(list(ours), list(theirs), EXACT, f"seed {seed}")


def test_strong_wolfe_rise_after_one_extrapolation_is_not_a_bracket():
    """A rise from the first trial to the second does not close the bracket (torch checks from the third on).

    φ(t) = −t (slope −1) except at t = 10, the first extrapolation, where φ = −0.5
    with slope −5: still an Armijo point, above φ(1), and steeply descending.
    """

    def obj_func(x, t, d):
        f, slope = (-0.5, -5.0) if float(t) == 10.0 else (-float(t), -1.0)
        return f, torch.tensor([slope], dtype=torch.float64)

    d = torch.ones(1, dtype=torch.float64)
    g = torch.tensor([-1.0], dtype=torch.float64)
    ours = strong_wolfe(obj_func, None, 1.0, d, 0.0, g, g.dot(d), max_ls=6)
    theirs = torch_lbfgs._strong_wolfe(obj_func, None, 1.0, d, 0.0, g, g.dot(d), max_ls=6)
    assert_same(list(ours), list(theirs), EXACT)
    assert ours[2] > 10  # the search went on past t = 10


# ---------------------------------------------------------------- reused buffers (no state_dict() in the loop)
# assert_same_optimizer calls state_dict(), which hands the buffers over; these
# tests compare the live state instead, so the steady-state reuse path runs.


def _quadratic_closure(params, scales):
    """Separable quadratic written straight into p.grad (no autograd): what the bench runs."""
    grads = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g

    def closure():
        with torch.no_grad():
            loss = 0.0
            for p, g, c in zip(params, grads, scales):
                torch.mul(p, c, out=g)
                loss = loss + 0.5 * float(c) * float((p * p).sum())
            return torch.tensor(loss)

    return closure


def _buffer_ptrs(opt):
    state = opt.state[opt.param_groups[0]["params"][0]]
    tensors = [state["d"], state["prev_flat_grad"], *state["old_dirs"], *state["old_stps"]]
    return {t.data_ptr() for t in tensors}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.05, "max_iter": 5, "history_size": 3},
        {"lr": torch.tensor(0.05), "max_iter": 3, "history_size": 2},
        {"line_search_fn": "strong_wolfe", "max_iter": 4, "history_size": 3},
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_steady_state_reuses_buffers_bitwise(kwargs, dtype):
    """Many steps with a full history: identical bits to torch, and no new n-element tensors."""
    gen = torch.Generator().manual_seed(1)
    values = [torch.randn(7, 3, generator=gen, dtype=dtype), torch.randn(11, generator=gen, dtype=dtype)]
    scales = [1.5, 0.25]
    runs = []
    for cls in (fastoptim.LBFGS, torch.optim.LBFGS):
        params = [v.clone().requires_grad_() for v in values]
        opt = cls(params, tolerance_grad=0, tolerance_change=0, **copy.deepcopy(kwargs))
        runs.append((opt, params, _quadratic_closure(params, scales)))
    (ours, our_params, our_closure), (theirs, their_params, their_closure) = runs
    seen = []
    for step in range(8):
        assert_same(ours.step(our_closure), theirs.step(their_closure), EXACT, f"step {step} loss")
        assert_same(our_params, their_params, EXACT, f"step {step} params")
        ours_state, theirs_state = ours.state[our_params[0]], theirs.state[their_params[0]]
        assert list(ours_state) == list(theirs_state)
        assert_same(dict(ours_state), dict(theirs_state), EXACT, f"step {step} state")
        seen.append(_buffer_ptrs(ours))
    assert len(ours.state[our_params[0]]["old_dirs"]) == kwargs["history_size"]
    if "line_search_fn" not in kwargs:
        # from the third step on, every tensor of the state lives in a buffer seen before
        # (a fixed set: 2 flat gradients + d + history + one spare pair)
        assert len(set().union(*seen[2:])) <= 2 + 1 + 2 * kwargs["history_size"] + 2
        assert set().union(*seen[5:]) <= set().union(*seen[2:5])


def test_exported_state_dict_is_not_overwritten():
    """The tensors of a state_dict() stay as they were while the optimizer steps on."""
    p = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = fastoptim.LBFGS([p], lr=0.1, max_iter=3, history_size=2, tolerance_grad=0, tolerance_change=0)
    closure = _quadratic_closure([p], [2.0])
    for _ in range(3):
        opt.step(closure)
    entry = opt.state_dict()["state"][0]
    exported = {k: (list(v) if isinstance(v, list) else v) for k, v in entry.items()}
    frozen = copy.deepcopy(exported)
    for _ in range(4):
        opt.step(closure)
    assert_same(exported, frozen, EXACT, "exported tensors")


def test_two_optimizers_sharing_a_loaded_state_stay_exact():
    """A fastoptim optimizer loads another's live state_dict; both step on, each exactly like torch."""
    values = [torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)]
    kwargs = {"lr": 0.1, "max_iter": 4, "history_size": 2, "tolerance_grad": 0, "tolerance_change": 0}
    runs = []
    for cls in (fastoptim.LBFGS, torch.optim.LBFGS):
        params = [v.clone().requires_grad_() for v in values]
        runs.append((cls(params, **kwargs), params))
    closures = [_quadratic_closure(ps, [3.0]) for _, ps in runs]
    for _ in range(3):
        for (opt, _), closure in zip(runs, closures):
            opt.step(closure)
    (ours, our_params), (theirs, their_params) = runs
    twin_params = [p.detach().clone().requires_grad_() for p in our_params]
    twin = fastoptim.LBFGS(twin_params, **kwargs)
    twin.load_state_dict(ours.state_dict())
    twin_closure = _quadratic_closure(twin_params, [3.0])
    torch_twin_params = [p.detach().clone().requires_grad_() for p in their_params]
    torch_twin = torch.optim.LBFGS(torch_twin_params, **kwargs)
    torch_twin.load_state_dict(copy.deepcopy(theirs.state_dict()))
    torch_twin_closure = _quadratic_closure(torch_twin_params, [3.0])
    for step in range(4):
        ours.step(closures[0])
        theirs.step(closures[1])
        twin.step(twin_closure)
        torch_twin.step(torch_twin_closure)
        assert_same(dict(ours.state[our_params[0]]), dict(theirs.state[their_params[0]]), EXACT, f"{step} ours")
        assert_same(
            dict(twin.state[twin_params[0]]), dict(torch_twin.state[torch_twin_params[0]]), EXACT, f"{step} twin"
        )


def test_abs_max_helpers_match_torch_expressions():
    from fastoptim.algorithms.lbfgs import _abs_max, _step_abs_max

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for scale in (1e-30, 1e-3, 1.0, 1e30):
            x = (torch.randn(1000, generator=gen, dtype=torch.float64) * scale).to(dtype)
            assert_same(_abs_max(x), x.abs().max(), EXACT)
            for t in (0.37, 1e-7, 3.0, torch.tensor(0.37, dtype=dtype)):
                assert_same(_step_abs_max(x, t), x.mul(t).abs().max(), EXACT)
        nan = torch.tensor([1.0, float("nan"), -2.0], dtype=dtype)
        assert torch.isnan(_abs_max(nan)) and torch.isnan(_step_abs_max(nan, 0.5))
    with pytest.raises(RuntimeError):
        _abs_max(torch.zeros(0))
