"""Property-based tests: the default (fast) path equals the reference rule on anything a user can pass.

Hypothesis draws an algorithm (every one fastoptim exports), one value for
each of its hyper-parameter branches, one to three parameters (empty, 0-dim,
odd and large odd sizes, transposed, strided, channels_last), a dtype
(float32, float64, bfloat16; float16 and complex64, which the kernels leave
to the reference rule), and gradients (normal, zeros, subnormal, huge,
mixed) for one to eight steps.  The same steps run twice: with the default
backend (the numba kernels wherever they cover the case) and with the
reference rules forced.  After every step, parameters and state agree within
the dtype's tolerance (torch's ``assert_close`` defaults; bfloat16 as in
test_kernels.py), NaN and inf in the same places, 0-dim state exactly.  An
exception is allowed only if both paths raise the same type, with a message.

Budget: ``FASTOPTIM_FUZZ_EXAMPLES`` examples (default 80, derandomized, so CI
is reproducible); raise it locally to search harder.  The long-run test takes
10,000 steps on a small model and checks that neither the process's memory
nor the optimizer's state grows.
"""

from __future__ import annotations

import copy
import gc
import inspect
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability import ALGORITHMS, CLOSURE_ONLY, MATRICES_ONLY, SPARSE_ONLY, ours

dispatch = pytest.importorskip("fastoptim.kernels.dispatch")

EXAMPLES = int(os.environ.get("FASTOPTIM_FUZZ_EXAMPLES", "80"))
T = torch.tensor

# ---------------------------------------------------------------- hyper-parameter branches
#: every branch of each reference rule, as values per option (each example draws one of each)
BRANCHES: dict[str, dict[str, list]] = {
    "SGD": dict(lr=[0.1, T(0.05)], momentum=[0.0, 0.9], dampening=[0.0, 0.5], nesterov=[False, True],
                weight_decay=[0.0, 0.1, T(0.01)], maximize=[False, True]),
    "Adam": dict(lr=[1e-2, T(1e-2)], betas=[(0.9, 0.999), (0.3, 0.5)], eps=[1e-8, 1e-3], weight_decay=[0.0, 0.1],
                 amsgrad=[False, True], maximize=[False, True], decoupled_weight_decay=[False, True],
                 fused=[None, True], capturable=[False, True]),
    "AdamW": dict(lr=[1e-2], weight_decay=[0.0, 0.5], amsgrad=[False, True], maximize=[False, True]),
    "Adagrad": dict(lr=[0.1, T(0.1)], lr_decay=[0.0, 0.1], weight_decay=[0.0, 0.1], initial_accumulator_value=[0.0, 0.5],
                    eps=[1e-10, 1e-3], maximize=[False, True], fused=[None, True]),
    "RMSprop": dict(lr=[1e-2], alpha=[0.99, 0.4], momentum=[0.0, 0.9], centered=[False, True], weight_decay=[0.0, 0.1],
                    maximize=[False, True], capturable=[False, True]),
    "Adadelta": dict(lr=[1.0, 0.5], rho=[0.9, 0.5], weight_decay=[0.0, 0.1], maximize=[False, True],
                     capturable=[False, True]),
    "Adamax": dict(lr=[0.1], betas=[(0.9, 0.999), (0.3, 0.5)], weight_decay=[0.0, 0.1], maximize=[False, True]),
    "NAdam": dict(lr=[0.1], betas=[(0.9, 0.999), (0.3, 0.9)], momentum_decay=[4e-3, 0.1], weight_decay=[0.0, 0.1],
                  decoupled_weight_decay=[False, True], maximize=[False, True]),
    # β₂ = 0.9: the rectified branch starts at step 6, within the drawn step counts.
    "RAdam": dict(lr=[0.1], betas=[(0.9, 0.999), (0.3, 0.9)], weight_decay=[0.0, 0.1],
                  decoupled_weight_decay=[False, True], maximize=[False, True]),
    "ASGD": dict(lr=[0.1], lambd=[1e-4, 0.1], alpha=[0.75, 0.5], t0=[1e6, 2.0], weight_decay=[0.0, 0.1],
                 maximize=[False, True]),
    "Rprop": dict(lr=[0.1], etas=[(0.5, 1.2), (0.3, 1.5)], step_sizes=[(1e-6, 50.0), (1e-3, 0.05)],
                  maximize=[False, True], capturable=[False, True]),
    "LBFGS": dict(lr=[1.0, 0.5], history_size=[2, 10], max_iter=[1, 4], line_search_fn=[None, "strong_wolfe"]),
    "SparseAdam": dict(lr=[1e-2], betas=[(0.9, 0.999), (0.3, 0.5)], maximize=[False, True]),
}
#: options that say *how* to run, not what to compute: left at their defaults in the generic table
_PLUMBING = {"foreach", "fused", "differentiable", "capturable"}


def branches(name: str) -> dict[str, list]:
    """BRANCHES[name], or for an algorithm not listed: both values of every flag, weight decay on and off."""
    if name in BRANCHES:
        return BRANCHES[name]
    table = {}
    for parameter in list(inspect.signature(ours(name).__init__).parameters.values())[2:]:
        if parameter.name in _PLUMBING:
            continue
        if isinstance(parameter.default, bool):
            table[parameter.name] = [parameter.default, not parameter.default]
        elif parameter.name == "weight_decay":
            table[parameter.name] = [0.0, 0.1]
    return table


# ---------------------------------------------------------------- shapes, dtypes, gradients
def _make(shape_kind: str, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    return {
        "0-dim": lambda: randn(),
        "empty": lambda: randn(0),
        "empty-2d": lambda: randn(3, 0),
        "one": lambda: randn(1),
        "odd": lambda: randn(7),
        "matrix": lambda: randn(5, 3),
        "transposed": lambda: randn(7, 5).t(),
        "strided": lambda: randn(6, 9)[:, ::2],  # not dense: the kernels fall back for it
        "channels_last": lambda: randn(2, 3, 5, 7).contiguous(memory_format=torch.channels_last),
        "large-odd": lambda: randn(100_003),
        "large-odd-2d": lambda: randn(257, 131),
    }[shape_kind]()


SHAPES = ["0-dim", "empty", "empty-2d", "one", "odd", "matrix", "transposed", "strided", "channels_last",
          "large-odd", "large-odd-2d"]
MATRIX_SHAPES = ["matrix", "transposed", "strided", "large-odd-2d", "empty-2d"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64]
GRADIENTS = ["normal", "zeros", "subnormal", "huge", "mixed"]


def _gradient(param: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    real = param.real.dtype if param.is_complex() else param.dtype
    info = torch.finfo(real)
    base = torch.randn(param.shape, generator=gen, dtype=torch.float64)
    scale = {
        "normal": 1.0,
        "zeros": 0.0,
        "subnormal": info.tiny / 4,  # below the smallest normal number: subnormal (or 0 in bfloat16's flush)
        "huge": info.max ** 0.75,  # squares overflow to inf
    }.get(kind)
    if kind == "mixed":  # each element a different regime
        pick = torch.randint(0, 4, param.shape, generator=gen)
        scales = torch.tensor([1.0, 0.0, info.tiny / 4, info.max ** 0.75], dtype=torch.float64)
        values = base * scales[pick]
    else:
        values = base * scale
    values = values.to(real)
    if param.is_complex():
        values = torch.complex(values, values.flip(-1) if values.dim() else values)
    grad = torch.empty_like(param)  # laid out like the parameter, as autograd does
    grad.copy_(values)
    return grad


# ---------------------------------------------------------------- comparison
def tolerance(dtype: torch.dtype, scale: float = 0.0) -> dict:
    """torch's assert_close defaults; bfloat16's atol is one bfloat16 ulp of the run's magnitude (test_kernels.py)."""
    real = {torch.complex64: torch.float32}.get(dtype, dtype)
    rtol, atol = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7), torch.bfloat16: (1.6e-2, 1e-5),
                  torch.float16: (1e-3, 1e-5)}[real]
    if real == torch.bfloat16:
        atol = max(2.0**-6, 2.0**-7 * scale)
    return dict(rtol=rtol, atol=atol)


SCALAR_STATE = {"step", "mu_product", "eta", "mu"}


def _compare(fast, reference, dtype, scale, where, exact=False):
    if isinstance(reference, torch.Tensor):
        assert isinstance(fast, torch.Tensor), f"{where}: {type(fast).__name__} is not a tensor"
        assert fast.shape == reference.shape and fast.dtype == reference.dtype, f"{where}: layout differs"
        a, b = fast.detach(), reference.detach()
        if a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        if a.is_complex():
            a, b = torch.view_as_real(a), torch.view_as_real(b)
        assert torch.equal(a.isnan(), b.isnan()), f"{where}: NaN in other places"
        assert torch.equal(a.isinf() & (a > 0), b.isinf() & (b > 0)), f"{where}: +inf in other places"
        assert torch.equal(a.isinf() & (a < 0), b.isinf() & (b < 0)), f"{where}: -inf in other places"
        tol = dict(rtol=0.0, atol=0.0) if exact else tolerance(dtype, scale)
        torch.testing.assert_close(a, b, **tol, equal_nan=True, msg=lambda m: f"{where}: {m}")
    elif isinstance(reference, dict):
        assert set(fast) == set(reference), f"{where}: keys {sorted(map(str, fast))} != {sorted(map(str, reference))}"
        for key in reference:
            value = reference[key]
            exact = key in SCALAR_STATE and isinstance(value, torch.Tensor) and value.dim() == 0
            _compare(fast[key], value, dtype, scale, f"{where}[{key!r}]", exact)
    elif isinstance(reference, (list, tuple)):
        assert len(fast) == len(reference), f"{where}: length differs"
        for i, (a, b) in enumerate(zip(fast, reference)):
            _compare(a, b, dtype, scale, f"{where}[{i}]")
    elif isinstance(reference, float) and reference != reference:
        assert fast != fast, f"{where}: {fast!r} != nan"
    else:
        assert fast == reference, f"{where}: {fast!r} != {reference!r}"


def _magnitude(tensors) -> float:
    finite = [t.detach().abs().double()[t.detach().isfinite()] for t in tensors if t.numel()]
    return max((float(f.max()) for f in finite if f.numel()), default=0.0)


ALLOWED_ERRORS = (ValueError, TypeError, RuntimeError, NotImplementedError)


def _run(name, kwargs, values, grads, backend, cls=None):
    """Build the optimizer on copies of ``values`` and take the steps; returns (params, state) or the exception."""
    params = [v.clone().requires_grad_() for v in values]
    history = []
    with dispatch.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            optimizer = (cls or ours(name))(params, **copy.deepcopy(kwargs))
            if callable(getattr(optimizer, "train", None)):  # schedule-free optimizers step in train mode
                optimizer.train()
            for step_grads in grads:
                for p, g in zip(params, step_grads):
                    p.grad = None if g is None else (g.to_sparse() if name in SPARSE_ONLY else g.clone())
                if name in CLOSURE_ONLY:
                    gs = step_grads

                    def closure():
                        with torch.no_grad():
                            for p, g in zip(params, gs):
                                p.grad = None if g is None else g + 0.01 * p  # a quadratic's gradient
                        return sum((p.detach().abs() ** 2).sum().real for p in params)

                    optimizer.step(closure)
                else:
                    optimizer.step()
                history.append(([p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()["state"])))
        except Exception as exc:  # noqa: BLE001 - judged by the caller
            return exc
    return history


@st.composite
def examples(draw):
    name = draw(st.sampled_from(ALGORITHMS))
    kwargs = {option: draw(st.sampled_from(values)) for option, values in branches(name).items()}
    dtype = draw(st.sampled_from(DTYPES))
    shapes = MATRIX_SHAPES if name in MATRICES_ONLY else SHAPES
    count = 1 if name in CLOSURE_ONLY and draw(st.booleans()) else draw(st.integers(1, 3))
    kinds = [draw(st.sampled_from(shapes)) for _ in range(count)]
    steps = draw(st.integers(1, 8))
    grad_kinds = [draw(st.sampled_from(GRADIENTS)) for _ in range(steps)]
    gradless = draw(st.sampled_from([None, 0]))  # a step where the first parameter has no gradient
    seed = draw(st.integers(0, 2**31 - 1))
    return name, kwargs, dtype, kinds, grad_kinds, gradless, seed


def _materialise(name, dtype, kinds, grad_kinds, gradless, seed):
    gen = torch.Generator().manual_seed(seed)
    values = []
    for kind in kinds:
        value = _make(kind, torch.float64 if dtype.is_complex else dtype, gen)
        values.append(value.to(dtype) if dtype.is_complex else value)
    grads = []
    for step, kind in enumerate(grad_kinds):
        step_grads = [_gradient(v, kind, gen) for v in values]
        if gradless is not None and step == 1 and len(values) > 1:
            step_grads[gradless] = None
        grads.append(step_grads)
    return values, grads


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(examples())
def test_fast_path_equals_reference(example):
    name, kwargs, dtype, kinds, grad_kinds, gradless, seed = example
    values, grads = _materialise(name, dtype, kinds, grad_kinds, gradless, seed)
    where = f"{name}({kwargs}) {dtype} shapes={kinds} grads={grad_kinds} gradless={gradless} seed={seed}"
    reference = _run(name, kwargs, values, grads, "reference")
    fast = _run(name, kwargs, values, grads, "auto")
    if isinstance(reference, Exception) or isinstance(fast, Exception):
        assert type(fast) is type(reference), f"{where}: fast path {fast!r}, reference {reference!r}"
        assert str(fast).strip(), f"{where}: an error without a message: {fast!r}"
        if not isinstance(fast, ALLOWED_ERRORS):
            # Not a deliberate error (a ZeroDivisionError, say): acceptable only where torch.optim
            # itself fails the same way, since fastoptim keeps torch's behaviour.
            theirs = getattr(torch.optim, name, None)
            torch_result = _run(name, kwargs, values, grads, "reference", cls=theirs) if theirs else None
            assert type(torch_result) is type(fast), (
                f"{where}: {fast!r} is not a clear error, and torch.optim gives {torch_result!r}"
            )
        return
    scale = _magnitude([t for params, _ in reference for t in params])
    for step, ((fast_params, fast_state), (ref_params, ref_state)) in enumerate(zip(fast, reference)):
        for i, (a, b) in enumerate(zip(fast_params, ref_params)):
            _compare(a, b, dtype, scale, f"{where} step {step} param {i}")
        _compare(fast_state, ref_state, dtype, scale, f"{where} step {step} state")


def test_the_fuzzer_reaches_the_kernels():
    """The default backend really is the kernels for the listed algorithms (else the fuzz compares a path with itself)."""
    from fastoptim.kernels.capabilities import capability_of

    covered = [name for name in ALGORITHMS if capability_of(getattr(ours(name), "rule", None)) is not None]
    assert {"SGD", "Adam", "AdamW"} <= set(covered), covered
    for name in covered:
        p = torch.randn(5, 3, requires_grad=True)
        optimizer = ours(name)([p])
        p.grad = torch.randn(5, 3)
        assert dispatch.backend_for(optimizer) == "numba", f"{name}: {dispatch.explain(optimizer)}"


# ---------------------------------------------------------------- long-run stability
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _state_footprint(optimizer) -> tuple[int, int, int]:
    """(entries, tensors, elements) of the optimizer's state, LBFGS's history lists included."""
    entries = tensors = elements = 0
    for entry in optimizer.state.values():
        entries += 1
        stack = list(entry.values())
        while stack:
            value = stack.pop()
            if isinstance(value, torch.Tensor):
                tensors += 1
                elements += value.numel()
            elif isinstance(value, (list, tuple)):
                stack.extend(value)
    return entries, tensors, elements


LONG_RUN = {
    "AdamW": dict(lr=1e-3, amsgrad=True),
    "SGD": dict(lr=1e-2, momentum=0.9, nesterov=True),
    "LBFGS": dict(lr=0.1, history_size=5, max_iter=2),
}


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
@pytest.mark.parametrize("name", list(LONG_RUN))
def test_long_run_is_stable(name):
    """10,000 steps (1,000 for LBFGS, whose steps are several evaluations): after a warm-up of a fifth,
    the state keeps its size, Python objects grow by < 50, and RSS does not keep growing.

    RSS is read at the end of the warm-up, half-way and at the end: a leak grows it in both halves
    (64 bytes a step = 256 KiB per half), while the allocator may also grow it once (a new arena),
    so the smaller of the two increments must stay under 256 KiB, and their sum under 8 MiB.
    """
    steps = 1_000 if name in CLOSURE_ONLY else 10_000
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation (the kernels follow torch's count)
    try:
        _long_run(name, steps)
    finally:
        torch.set_num_threads(threads)


def _long_run(name, steps):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    optimizer = ours(name)(model.parameters(), **LONG_RUN[name])
    x, y = torch.randn(64, 16), torch.randn(64, 4)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    warmup = steps // 5
    half = warmup + (steps - warmup) // 2
    rss = {}
    for step in range(steps + 1):
        if step in (warmup, half, steps):
            gc.collect()
            rss[step] = _rss_bytes()
            if step == warmup:
                objects, footprint = len(gc.get_objects()), _state_footprint(optimizer)
        if step < steps:
            optimizer.step(closure)
    assert _state_footprint(optimizer) == footprint, "the optimizer's state grew"
    new_objects = len(gc.get_objects()) - objects
    assert new_objects < 50, f"{new_objects} more Python objects after {steps - warmup} steps"
    first, second = rss[half] - rss[warmup], rss[steps] - rss[half]
    assert min(first, second) < 256 * 2**10 and first + second < 8 * 2**20, (
        f"RSS grew by {first / 2**10:.0f} KiB, then by {second / 2**10:.0f} KiB, over {steps - half} steps each"
    )
    assert torch.isfinite(closure()), "the run diverged"
