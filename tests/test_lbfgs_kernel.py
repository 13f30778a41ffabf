"""The fused L-BFGS passes (:mod:`fastoptim.kernels.cpu.lbfgs`) against torch's ops, and when they run.

``abs_max`` and the element-wise halves of the passes (``y``, ``s``) are
torch's bit for bit; the dot products are float64 sums in the kernel's own
order, so the direction, the α's and the slope agree with the torch-op path
to rounding.  Whole optimizer runs compare the strict kernel backend with the
reference backend (torch's ops, torch.optim's bits) after every step.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

import fastoptim
from fastoptim.algorithms import lbfgs as lbfgs_module
from fastoptim.algorithms.lbfgs import two_loop_direction
from fastoptim.kernels.dispatch import use_backend

kernels = pytest.importorskip("fastoptim.kernels.cpu.lbfgs")

DTYPES = [torch.float32, torch.float64]
CHUNK = kernels.CHUNK
SIZES = [1, 7, CHUNK - 1, CHUNK + 5, 3 * CHUNK + 17]


def tolerance(dtype):
    """Room for the dot products' other summation order, amplified through the recursion."""
    return {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-11, atol=1e-12)}[dtype]


def _vectors(n, dtype, count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen, dtype=dtype) for _ in range(count)]


def _history(n, dtype, count, seed=1):
    """``count`` curvature pairs with yᵀs > 0, and their ρ = 1/yᵀs (torch's dtype flow)."""
    dirs = _vectors(n, dtype, count, seed)
    stps = [0.5 * y + 0.1 * noise for y, noise in zip(dirs, _vectors(n, dtype, count, seed + 1))]
    ro = [1.0 / y.dot(s) for y, s in zip(dirs, stps)]
    return dirs, stps, ro


# ---------------------------------------------------------------- the passes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("special", [None, float("nan"), float("inf"), -float("inf"), "zeros", "negative zeros"])
def test_abs_max_is_torch_bit_for_bit(dtype, n, special):
    (x,) = _vectors(n, dtype, 1)
    if special == "zeros":
        x.zero_()
    elif special == "negative zeros":
        x.zero_().neg_()
    elif special is not None:
        x[n // 2] = special
    ours, theirs = kernels.abs_max(x), x.abs().max()
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == ()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    if not theirs.isnan():  # a NaN's sign is not part of the result
        assert torch.signbit(ours) == torch.signbit(theirs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [(1,), (7, 0, 3), (CHUNK - 1, 2, CHUNK + 5), (3 * CHUNK + 17, 5), (0, 2 * CHUNK, 0)], ids=str)
@pytest.mark.parametrize("special", [None, float("nan"), -float("inf")])
def test_gather_abs_max_copies_and_takes_torchs_max(dtype, sizes, special):
    """The flat gradient gathered from its pieces (chunks spanning several, empty pieces) and its max|g|, exactly."""
    sources = _vectors(sum(sizes), dtype, 1, seed=3)[0].split(list(sizes))
    sources = [piece.clone().view(-1, 1) if len(piece) % 2 else piece.clone() for piece in sources]  # any shape
    if special is not None:
        longest = max(sources, key=torch.Tensor.numel)
        longest.view(-1)[longest.numel() // 2] = special
    out = torch.full((sum(sizes),), 7.0, dtype=dtype)
    version = out._version
    top = kernels.gather_abs_max(out, sources)
    expected = torch.cat([piece.reshape(-1) for piece in sources])
    assert torch.equal(out.isnan(), expected.isnan()) and torch.equal(out.nan_to_num(), expected.nan_to_num())
    torch.testing.assert_close(top, expected.abs().max(), rtol=0, atol=0, equal_nan=True)
    assert out._version > version


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_new_pair_writes_torchs_y_and_s_and_sums_in_float64(dtype, n):
    g, g_prev, d = _vectors(n, dtype, 3)
    y, s = torch.full_like(g, float("nan")), torch.full_like(g, float("nan"))
    versions = y._version, s._version
    ys, yy = kernels.new_pair(y, s, g, g_prev, d, 0.37)
    assert torch.equal(y, torch.sub(g, g_prev)) and torch.equal(s, torch.mul(d, 0.37))
    assert y._version > versions[0] and s._version > versions[1]
    exact = y.double(), s.double()
    assert ys == pytest.approx(exact[0].dot(exact[1]).item(), rel=1e-12, abs=1e-12)
    assert yy == pytest.approx(exact[0].dot(exact[0]).item(), rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("count", [1, 2, 3])
def test_two_loop_matches_the_torch_op_recursion(dtype, n, count):
    (g,) = _vectors(n, dtype, 1, seed=7)
    dirs, stps, ro = _history(n, dtype, count)
    h = torch.tensor(0.7, dtype=dtype)
    al_ref, al_ours = [None] * count, [None] * count
    expected = two_loop_direction(g, dirs, stps, ro, h, al_ref)
    out = torch.empty_like(g)
    gtd = kernels.two_loop_direction(g, dirs, stps, ro, h, al_ours, out)
    torch.testing.assert_close(out, expected, **tolerance(dtype))
    for ours, theirs in zip(al_ours, al_ref):
        assert ours.dtype == theirs.dtype and ours.shape == ()
        torch.testing.assert_close(ours, theirs, **tolerance(dtype))
    assert gtd.dtype == dtype and gtd.shape == ()
    torch.testing.assert_close(gtd, g.dot(expected), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [7, CHUNK + 5, 3 * CHUNK + 17])
@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5])
def test_gram_direction_matches_the_torch_op_recursion(dtype, n, count):
    """The new pair's pass takes the dot products; the recursion on them and one pass give the two-loop direction.

    Both passes read the stored pairs in groups of two: counts 0-5 take every
    branch (the pair pass: none, one or two pairs with the new one, then
    pairs of stored pairs and an odd one alone; the direction's pass: an odd
    and an even count).
    """
    g, g_prev, d = _vectors(n, dtype, 3, seed=5)
    g_prev = g - 0.3 * d  # yᵀs > 0
    dirs, stps, ro = _history(n, dtype, count)
    gram = kernels.PairGram([], [])
    for y_j, s_j in zip(dirs, stps):  # build the Gram pair by pair, as the optimizer does
        prefix_dirs, prefix_stps = dirs[: len(gram.keys)], stps[: len(gram.keys)]
        *_, g_s, g_y, g_g, dots = kernels.pair_with_dots(torch.empty_like(g), torch.empty_like(g), y_j + 1, torch.ones_like(g), s_j, 1.0, prefix_dirs, prefix_stps)
        exact = (y_j.double().dot(s_j.double()).item(), y_j.double().dot(y_j.double()).item(), g_s, g_y, g_g, dots)
        gram.update(exact, g, True, False, prefix_dirs + [y_j], prefix_stps + [s_j])
    y, s = torch.empty_like(g), torch.empty_like(g)
    ys, yy, g_s, g_y, g_g, dots = kernels.pair_with_dots(y, s, g, g_prev, d, 0.5, dirs, stps)
    assert torch.equal(y, g - g_prev) and torch.equal(s, d * 0.5)
    exact = [u.double().dot(v.double()).item() for u, v in ((y, s), (y, y), (g, s), (g, y), (g, g))]
    assert [ys, yy, g_s, g_y, g_g] == pytest.approx(exact, rel=1e-10, abs=1e-9)
    for j, (y_j, s_j) in enumerate(zip(dirs, stps)):
        exact = [u.double().dot(v.double()).item() for u, v in ((s, y_j), (y, s_j), (y, y_j), (g, s_j), (g, y_j))]
        assert dots[j] == pytest.approx(exact, rel=1e-10, abs=1e-9)
    gram.update((ys, yy, g_s, g_y, g_g, dots), g, True, False, dirs + [y], stps + [s])
    assert gram.complete() and gram.follows(dirs + [y], stps + [s]) and gram.ready_for(g, dirs + [y], stps + [s])
    dirs, stps = dirs + [y], stps + [s]
    ro = ro + [1.0 / torch.tensor(ys, dtype=dtype)]
    h = torch.tensor(0.7, dtype=dtype)
    al_ref, al_ours = [None] * (count + 1), [None] * (count + 1)
    expected = two_loop_direction(g, dirs, stps, ro, h, al_ref)
    torch.testing.assert_close(torch.from_numpy(gram.g_s), torch.from_numpy(np.append(dots[:, 3], g_s)), rtol=0, atol=0)
    a, b = gram.coefficients(ro, h, al_ours, dtype)
    out = torch.empty_like(g)
    top = kernels.combine(out, g, dirs, stps, a, b, h)
    torch.testing.assert_close(out, expected, **tolerance(dtype))
    for ours, theirs in zip(al_ours, al_ref):
        torch.testing.assert_close(ours, theirs, **tolerance(dtype))
    # the slope from the products: gᵀ of the unrounded direction (float32: the stored one is rounded)
    slope_tolerance = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    streamed = g.double().dot(out.double()).item()
    assert gram.slope(a, b, h, dtype) == pytest.approx(streamed, rel=slope_tolerance, abs=slope_tolerance * g.double().norm().item() * out.double().norm().item())
    assert top == out.abs().max().item()  # exact
    for special in (float("inf"), float("nan")):
        g[n // 2] = special
        top = kernels.combine(out, g, dirs, stps, a, b, h)
        assert top == out.abs().max().item() or (np.isnan(top) and out.isnan().any())


def test_passes_give_the_same_bits_on_any_thread_count():
    n, dtype = 5 * CHUNK + 3, torch.float32
    (g,) = _vectors(n, dtype, 1, seed=3)
    dirs, stps, ro = _history(n, dtype, 3)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torch.empty_like(g)
            al = [None] * 3
            gtd = kernels.two_loop_direction(g, dirs, stps, ro, torch.tensor(0.5), al, out)
            sums = kernels.new_pair(torch.empty_like(g), torch.empty_like(g), g, dirs[0], stps[0], 0.25)
            *pair_sums, dots = kernels.pair_with_dots(torch.empty_like(g), torch.empty_like(g), g, dirs[0], stps[0], 0.25, dirs[1:], stps[1:])
            combined = torch.empty_like(g)
            combined_sums = kernels.combine(combined, g, dirs, stps, np.full(3, 0.1), np.full(3, -0.2), 0.5)
            results.append((out, al, gtd, sums, pair_sums, dots, combined, combined_sums))
    finally:
        torch.set_num_threads(previous)
    first, second = results
    out1, al1, gtd1, sums1, pair_sums1, dots1, combined1, combined_sums1 = first
    out2, al2, gtd2, sums2, pair_sums2, dots2, combined2, combined_sums2 = second
    assert torch.equal(out1, out2) and all(torch.equal(a, b) for a, b in zip(al1, al2))
    assert torch.equal(gtd1, gtd2) and sums1 == sums2
    assert pair_sums1 == pair_sums2 and np.array_equal(dots1, dots2)
    assert torch.equal(combined1, combined2) and combined_sums1 == combined_sums2


# ---------------------------------------------------------------- the optimizer


def run_tolerance(dtype):
    """Whole float64 runs: L-BFGS amplifies a rounding difference for a few iterations."""
    return {torch.float64: dict(rtol=1e-9, atol=1e-10)}[dtype]


def _objective(params):
    """A smooth non-quadratic objective over every element (curvature differs per coordinate)."""
    x = torch.cat([p.reshape(-1) for p in params])
    scale = torch.linspace(0.5, 4.0, x.numel(), dtype=x.dtype)
    return (scale * x**2).sum() + 0.1 * (x**4).sum() + torch.sin(x).sum()


def _make_params(dtype, n):
    gen = torch.Generator().manual_seed(11)
    return [torch.randn(n // 2, generator=gen, dtype=dtype), torch.randn(3, n // 6, generator=gen, dtype=dtype), torch.randn((), generator=gen, dtype=dtype)]


CONFIGS = [
    {"lr": 0.5, "history_size": 3, "max_iter": 5},  # the history fills up and is shifted
    {"line_search_fn": "strong_wolfe", "history_size": 4},
    {"lr": torch.tensor(0.2), "max_iter": 4},
]


def _runs(kwargs, setups):
    """One LBFGS per ``(backend, dtype)`` from the same start, with its closure."""
    values = _make_params(torch.float64, 2 * CHUNK + 10)
    runs = []
    for backend, dtype in setups:
        params = [v.to(dtype, copy=True).requires_grad_() for v in values]
        opt = fastoptim.LBFGS(params, **copy.deepcopy(kwargs))

        def closure(opt=opt, params=params):
            opt.zero_grad()
            loss = _objective(params)
            loss.backward()
            return loss

        runs.append((backend, opt, params, closure))
    return runs


def _step_all(runs):
    losses = []
    for backend, opt, _, closure in runs:
        with use_backend(backend):
            losses.append(opt.step(closure))
    return losses


@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_kernel_path_follows_the_torch_op_path_float64(kwargs):
    """Steps under the strict kernel backend and under torch's ops: params and every state entry agree to rounding.

    Four steps (up to 20 iterations each): the runs have converged by then.
    """
    runs = _runs(kwargs, [("numba", torch.float64), ("reference", torch.float64)])
    for step in range(4):
        losses = _step_all(runs)
        torch.testing.assert_close(losses[0], losses[1], **run_tolerance(torch.float64), msg=lambda m: f"step {step} loss: {m}")
        (_, ours, our_params, _), (_, theirs, their_params, _) = runs
        for a, b in zip(our_params, their_params):
            torch.testing.assert_close(a, b, **run_tolerance(torch.float64), msg=lambda m: f"step {step} param: {m}")
        mine, other = ours.state[our_params[0]], theirs.state[their_params[0]]
        assert list(mine) == list(other)
        for key in mine:
            torch.testing.assert_close(
                mine[key], other[key], **run_tolerance(torch.float64), msg=lambda m, key=key: f"step {step} {key}: {m}"
            )


def _quadratic(params):
    """A convex quadratic with a spread of curvatures: L-BFGS contracts rounding differences on it."""
    x = torch.cat([p.reshape(-1) for p in params])
    scale = torch.linspace(0.5, 4.0, x.numel(), dtype=x.dtype)
    return (scale * x**2).sum() + torch.linspace(-1.0, 1.0, x.numel(), dtype=x.dtype).dot(x)


@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_kernel_path_follows_the_torch_op_path_float32(kwargs, monkeypatch):
    """float32 on a quadratic: params agree to float32 rounding after every step.

    On a non-convex objective a float32 L-BFGS run amplifies rounding (the two
    paths differed by up to 8e-5 on O(1) parameters, either from the float64
    run by up to 0.26, and which one came closer changed with the thread
    count), so float32 is compared where the iteration contracts differences,
    for three steps.  By the fourth the gradients near float32's noise floor
    (y = g − g_prev cancels): on one thread the kernel path then ended 1.2e-3
    from the float64 run and torch's ops 2.3e-4 (on two threads both 2.3e-4).
    With the strong-Wolfe search, float32 losses equal to rounding can still
    take the search down different branches (to points 2e-3 apart on one
    thread), so there only the losses are compared.
    """
    monkeypatch.setattr(sys.modules[__name__], "_objective", _quadratic)
    runs = _runs(kwargs, [("numba", torch.float32), ("reference", torch.float32)])
    for step in range(3):
        losses = _step_all(runs)
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5, msg=lambda m: f"step {step} loss: {m}")
        if "line_search_fn" in kwargs:
            continue
        for a, b in zip(runs[0][2], runs[1][2]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"step {step} param: {m}")


def _counting_kernels(monkeypatch):
    calls = {"new_pair": 0, "two_loop_direction": 0, "pair_with_dots": 0, "combine": 0}
    for name in calls:
        original = getattr(kernels, name)

        def counted(*args, name=name, original=original, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(kernels, name, counted)
    return calls


def _run(n, steps=3, **kwargs):
    params = _make_params(torch.float32, n)
    for p in params:
        p.requires_grad_()
    opt = fastoptim.LBFGS(params, lr=0.5, max_iter=4, **kwargs)

    def closure():
        opt.zero_grad()
        loss = _objective(params)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return opt, params


@pytest.mark.parametrize(
    "case", ["plain", "a grad missing", "a transposed grad", "a complex param", "a float32 param"]
)
def test_gradient_gather_fuses_only_plain_gradients(case, monkeypatch):
    """The flat gradient and its max|g| are torch.cat's whatever the gradients; the fused gather takes only contiguous real ones of the flat dtype."""
    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(CHUNK + 3, generator=gen, dtype=torch.float64), torch.randn(40, 30, generator=gen, dtype=torch.float64)]
    if case == "a complex param":
        params.append(torch.randn(5, generator=gen, dtype=torch.complex128))
    elif case == "a float32 param":  # the flat vector is float64
        params[1] = params[1].float()
    params = [p.requires_grad_() for p in params]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    if case == "a grad missing":
        params[1].grad = None
    elif case == "a transposed grad":
        params[1].grad = torch.randn(30, 40, generator=gen, dtype=torch.float64).t()
    calls = []
    fused = kernels.gather_abs_max
    monkeypatch.setattr(kernels, "gather_abs_max", lambda *args: calls.append(1) or fused(*args))
    opt = fastoptim.LBFGS(params)
    expected = torch.cat([
        torch.zeros(p.numel(), dtype=torch.float64) if p.grad is None
        else torch.view_as_real(p.grad).reshape(-1) if p.is_complex() else p.grad.reshape(-1).double()
        for p in params
    ])  # fmt: skip
    with use_backend("numba"):
        flat = opt._gather_flat_grad(opt._grad_buffer(busy=None))
        top = opt._abs_max(flat)
    assert torch.equal(flat, expected) and torch.equal(top, expected.abs().max())
    assert len(calls) == (1 if case in ("plain", "a complex param") else 0)


def test_auto_backend_fuses_from_FUSED_MIN_NUMEL_on(monkeypatch):
    calls = _counting_kernels(monkeypatch)
    _run(600)
    assert not any(calls.values()), "a small problem keeps torch's ops (torch.optim's bits)"
    monkeypatch.setattr(lbfgs_module, "FUSED_MIN_NUMEL", 600)
    _run(600)
    # every pair from the one pass that also takes the dot products; every direction from them
    assert calls["pair_with_dots"] > 0 and calls["combine"] == calls["pair_with_dots"]
    assert calls["new_pair"] == calls["two_loop_direction"] == 0
    with use_backend("reference"):
        before = dict(calls)
        _run(600)
        assert calls == before, "the reference backend never fuses"


def test_state_loaded_in_another_layout_takes_torchs_ops(monkeypatch):
    """History tensors that are not contiguous vectors of the flat dtype (a foreign state_dict) are read by torch's ops."""
    calls = _counting_kernels(monkeypatch)
    monkeypatch.setattr(lbfgs_module, "FUSED_MIN_NUMEL", 0)
    opt, start = _run(600, steps=2, history_size=5)
    state = copy.deepcopy(opt.state_dict())
    entry = state["state"][0]
    entry["old_dirs"] = [torch.stack([y, y], 1)[:, 0] for y in entry["old_dirs"]]  # strided views
    results = []
    for backend in ("auto", "reference"):
        params = [p.detach().clone().requires_grad_() for p in start]
        opt = fastoptim.LBFGS(params, lr=0.5, max_iter=4, history_size=5)
        opt.load_state_dict(copy.deepcopy(state))
        assert not opt.state[params[0]]["old_dirs"][0].is_contiguous()

        def closure(opt=opt, params=params):
            opt.zero_grad()
            loss = _objective(params)
            loss.backward()
            return loss

        before = dict(calls)
        with use_backend(backend):
            opt.step(closure)
        # the strided pairs stay in the history for the whole step (4 iterations, 5 pairs kept)
        assert calls["two_loop_direction"] == before["two_loop_direction"] and calls["combine"] == before["combine"]
        results.append(params)
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=3e-4, atol=3e-4)  # one float32 step from the same state


def test_loaded_history_is_fused_once_its_pairs_are_replaced(monkeypatch):
    """A history from a state_dict has no known dot products: the two-loop passes run until its pairs have left."""
    calls = _counting_kernels(monkeypatch)
    monkeypatch.setattr(lbfgs_module, "FUSED_MIN_NUMEL", 0)
    opt, params = _run(600, steps=2, history_size=2)
    state = copy.deepcopy(opt.state_dict())  # new tensors: nothing is known about them
    params = [p.detach().clone().requires_grad_() for p in params]
    opt = fastoptim.LBFGS(params, lr=0.5, max_iter=4, history_size=2)
    opt.load_state_dict(state)
    before = dict(calls)

    def closure():
        opt.zero_grad()
        loss = _objective(params)
        loss.backward()
        return loss

    opt.step(closure)
    two_loops, combined = calls["two_loop_direction"] - before["two_loop_direction"], calls["combine"] - before["combine"]
    # each iteration's new pair pushes out a loaded one: the first direction still uses
    # one loaded pair (two-loop passes), the next three only new pairs (one pass)
    assert (two_loops, combined) == (1, 3)


def _flat_ptrs(opt, params):
    state = opt.state[params[0]]
    return {t.data_ptr() for t in (state["d"], state["prev_flat_grad"], *state["old_dirs"], *state["old_stps"])}


def test_pairs_are_written_over_the_spent_gradient_and_direction(monkeypatch):
    """With own buffers the pair's pass writes y over g_prev and s over d: the state lives in 2m + 3 flat buffers.

    A ``state_dict()`` hands its tensors over: the steps after it compute
    into other buffers (the exported ones keep their values), and then return
    to writing in place.  Every step agrees with torch's ops to rounding.
    """
    in_place = []
    fused = kernels.pair_with_dots
    monkeypatch.setattr(kernels, "pair_with_dots", lambda y, s, g, g_prev, d, *rest: in_place.append(y is g_prev) or fused(y, s, g, g_prev, d, *rest))
    kwargs = {"lr": 0.5, "history_size": 3, "max_iter": 5, "tolerance_grad": 0, "tolerance_change": 0}
    (_, ours, our_params, _), (_, theirs, their_params, _) = runs = _runs(kwargs, [("numba", torch.float64), ("reference", torch.float64)])
    seen = []
    for step in range(6):
        _step_all(runs)
        seen.append(_flat_ptrs(ours, our_params))
        if step == 2:  # the tensors handed out (the dict itself is the live state, as torch's)
            exported = {k: (list(v) if isinstance(v, list) else v) for k, v in ours.state_dict()["state"][0].items()}
            frozen = copy.deepcopy(exported)
            passes_before = len(in_place)
        for a, b in zip(our_params, their_params):
            torch.testing.assert_close(a, b, **run_tolerance(torch.float64), msg=lambda m: f"step {step}: {m}")
    for key in ("d", "prev_flat_grad", "old_dirs", "old_stps"):
        torch.testing.assert_close(exported[key], frozen[key], rtol=0, atol=0)
    # in place until the export, then once not (the exported d and g_prev), then in place again
    assert in_place == [True] * passes_before + [False] + [True] * (len(in_place) - passes_before - 1)
    assert len(set().union(*seen[:2])) <= 2 * 3 + 3


def test_rejected_pair_gives_the_buffers_back():
    """y = 0 (a linear objective): every pair is rejected, the spent g_prev and d go back to their roles."""
    values = [torch.randn(CHUNK + 9, generator=torch.Generator().manual_seed(6), dtype=torch.float64)]
    slope = torch.linspace(-1.0, 1.0, CHUNK + 9, dtype=torch.float64)
    runs = []
    for backend in ("numba", "reference"):
        params = [v.clone().requires_grad_() for v in values]
        opt = fastoptim.LBFGS(params, lr=1e-3, max_iter=4, history_size=2, tolerance_grad=0, tolerance_change=0)

        def closure(params=params, opt=opt):
            opt.zero_grad()
            loss = slope.dot(params[0])
            loss.backward()
            return loss

        runs.append((backend, opt, params, closure))
    seen = []
    for step in range(3):
        _step_all(runs)
        (_, ours, our_params, _), (_, theirs, their_params, _) = runs
        torch.testing.assert_close(our_params, their_params, **run_tolerance(torch.float64))
        state = ours.state[our_params[0]]
        assert state["old_dirs"] == [] and theirs.state[their_params[0]]["old_dirs"] == []
        seen.append({state["d"].data_ptr(), state["prev_flat_grad"].data_ptr()})
    assert len(set().union(*seen)) <= 3  # two gradient buffers and one direction buffer


def test_pair_rejected_by_a_full_history_falls_back_for_one_direction(monkeypatch):
    """The pair's pass leaves out the pair a full history drops; if the new pair is rejected, that pair stays.

    Its products with the gradient were not taken, so that direction comes
    from the two-loop passes; the runs still agree with torch's ops, and the
    next kept pair is back on the fused passes.  The objective turns linear
    after the first step (y = 0: every pair rejected), then quadratic again.
    """
    calls = _counting_kernels(monkeypatch)
    phase = {"linear": False}
    smooth = _objective

    def objective(params):
        x = torch.cat([p.reshape(-1) for p in params])
        return torch.linspace(-1.0, 1.0, x.numel(), dtype=x.dtype).dot(x) if phase["linear"] else smooth(params)

    monkeypatch.setattr(sys.modules[__name__], "_objective", objective)
    kwargs = {"lr": 1e-2, "history_size": 2, "max_iter": 4, "tolerance_grad": 0, "tolerance_change": 0}
    runs = _runs(kwargs, [("numba", torch.float64), ("reference", torch.float64)])
    (_, ours, our_params, _), (_, theirs, their_params, _) = runs
    for step, linear in enumerate([False, True, False, False]):
        phase["linear"] = linear
        before = dict(calls)
        _step_all(runs)
        for a, b in zip(our_params, their_params):
            torch.testing.assert_close(a, b, **run_tolerance(torch.float64), msg=lambda m: f"step {step}: {m}")
        mine, other = ours.state[our_params[0]], theirs.state[their_params[0]]
        assert len(mine["old_dirs"]) == len(other["old_dirs"]) == 2
        for key in ("old_dirs", "old_stps", "ro", "H_diag", "d"):
            torch.testing.assert_close(mine[key], other[key], **run_tolerance(torch.float64), msg=lambda m: f"step {step} {key}: {m}")
        if linear:  # the full history's pairs stay: every direction of the step from the two-loop passes
            assert calls["two_loop_direction"] > before["two_loop_direction"]
    assert calls["combine"] > before["combine"] and calls["two_loop_direction"] == before["two_loop_direction"]


def test_buffer_views_are_made_once_per_buffer(monkeypatch):
    """The per-parameter views of the flat buffers are made once per buffer, not each time a buffer changes role."""
    made = []
    views_of = lbfgs_module._views_of
    monkeypatch.setattr(lbfgs_module, "_views_of", lambda flat, shapes: made.append(flat.data_ptr()) or views_of(flat, shapes))
    kwargs = {"lr": 0.5, "history_size": 3, "max_iter": 5, "tolerance_grad": 0, "tolerance_change": 0}
    (run,) = _runs(kwargs, [("numba", torch.float64)])
    for _ in range(6):
        _step_all([run])
    assert len(made) == len(set(made)) <= 2 * 3 + 3


@pytest.mark.parametrize("case", ["plain", "a float32 param"])
def test_fixed_step_moves_parameters_in_the_direction_pass(case, monkeypatch):
    """Without line search the direction's pass also takes the step θ ← θ + t d (the slope from the products says it goes ahead).

    A parameter of another dtype than the flat vector keeps the separate
    update.  Either way the run agrees with torch's ops.
    """
    steps = []
    fused = kernels.combine
    monkeypatch.setattr(kernels, "combine", lambda *args, step=None: steps.append(step is not None) or fused(*args, step=step))
    kwargs = {"lr": 0.5, "history_size": 3, "max_iter": 5, "tolerance_grad": 0, "tolerance_change": 0}
    values = _make_params(torch.float64, 2 * CHUNK + 10)
    if case == "a float32 param":
        values[1] = values[1].float()
    runs = []
    for backend in ("numba", "reference"):
        params = [v.clone().requires_grad_() for v in values]
        opt = fastoptim.LBFGS(params, **kwargs)

        def closure(opt=opt, params=params):
            opt.zero_grad()
            loss = _objective([p.double() for p in params])
            loss.backward()
            return loss

        runs.append((backend, opt, params, closure))
    for step in range(3):
        _step_all(runs)
        for a, b in zip(runs[0][2], runs[1][2]):
            torch.testing.assert_close(a, b, **run_tolerance(torch.float64), msg=lambda m: f"step {step}: {m}")
    assert steps and all(steps) if case == "plain" else steps and not any(steps)


def test_direction_pass_does_not_step_where_the_slope_test_stops(monkeypatch):
    """A slope gᵀd > −tolerance_change ends the iteration before its update: the direction's pass then moves nothing.

    The slope from the products is made positive, so the second iteration
    stops at its test: the parameters are where the first iteration left
    them (a one-iteration run), and ``d`` is the direction formed.
    """
    monkeypatch.setattr(kernels.PairGram, "slope", lambda self, a, b, h, dtype: 1.0)
    steps = []
    fused = kernels.combine
    monkeypatch.setattr(kernels, "combine", lambda *args, step=None: steps.append(step is not None) or fused(*args, step=step))
    kwargs = {"lr": 0.5, "history_size": 3, "tolerance_grad": 0, "tolerance_change": 0}
    five, one = _runs({**kwargs, "max_iter": 5}, [("numba", torch.float64)]), _runs({**kwargs, "max_iter": 1}, [("numba", torch.float64)])
    _step_all(five + one)
    assert steps == [False]
    for a, b in zip(five[0][2], one[0][2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    state = five[0][1].state[five[0][2][0]]
    assert state["n_iter"] == 2 and len(state["old_dirs"]) == 1
