"""Bad input fails as torch.optim fails it, and a rejected load_state_dict changes nothing.

Everything here is differential: the same input goes to torch.optim and to
fastoptim, for every algorithm fastoptim exports that torch.optim has too; the checks that need
no torch counterpart (load_state_dict) run on fastoptim's own algorithms as well.

* constructor arguments: a table of bad (and borderline) values per argument
  name; the two libraries must accept or reject each the same way (same
  exception type), and every ValueError must name the argument and the value;
* parameters: non-leaf tensors, duplicates, empty lists, integer, complex and
  1-D tensors, a bare tensor, a set;
* load_state_dict with malformed dicts: a clear error and an optimizer left
  exactly as it was (parameters, state, param_groups, step count);
* non-finite gradients: the same parameters and state as torch.optim, NaN for NaN.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import warnings

import pytest
import torch

from parity import TOLERANCE
from reliability import (
    ALGORITHMS,
    CLOSURE_ONLY,
    SPARSE_ONLY,
    TORCH_ALGORITHMS,
    assert_unchanged,
    ours,
    snapshot,
    theirs,
)

nan, inf = math.nan, math.inf

# ---------------------------------------------------------------- the probe table
#: values tried for every numeric hyper-parameter
NUMBERS = [-1.0, -1e-12, nan, inf, -inf, 0.0, 1.0, 2.0, torch.tensor(-1.0), torch.tensor([0.1, 0.2])]
#: values of the wrong type: only the constructor's outcome is compared for these (torch
#: often accepts them and fails later, by accident, inside its arithmetic)
WRONG_TYPES = [None, "0.1", True]
FLAGS = [True, False]

PROBES: dict[str, list] = {
    "betas": [(-0.1, 0.999), (0.9, -0.1), (1.0, 0.999), (0.9, 1.0), (nan, 0.9), (0.9, nan), (0.9,),
              (torch.tensor(0.9), 0.999), (torch.tensor([0.9, 0.9]), torch.tensor(0.999)), (0.9, 0.999, 0.5)],
    "etas": [(1.2, 0.5), (0.5, 0.9), (1.5, 1.2), (-0.5, 1.2), (0.5, 1.0), (0.0, 1.2), (nan, 1.2)],
    "step_sizes": [(-1e-6, 50), (1e-6, -50), (50, 1e-6), (0, 50)],
    "history_size": [0, -1, 1.5],
    "max_iter": [0, -1, 1.5],
    "max_eval": [0, -1, 1.5],
    "line_search_fn": ["foo", "strong_wolfe"],
    "ns_coefficients": [(1.0, 2.0), (1.0, 2.0, 3.0, 4.0)],
    "ns_steps": [0, -1, 1.5, 100, 101],
    "adjust_lr_fn": ["foo", "original", "match_rms_adamw"],
    "eps": NUMBERS + [(None, 1e-3), (-1.0, 1e-3), (1e-3, -1.0), (None, -1.0), (nan, 1e-3)],
    "rho": NUMBERS + [1.1],
    "beta2_decay": NUMBERS + [0.5],
}
for _name in ("lr", "momentum", "dampening", "alpha", "lambd", "t0", "lr_decay", "initial_accumulator_value",
              "momentum_decay", "weight_decay", "tolerance_grad", "tolerance_change", "d"):
    PROBES[_name] = list(NUMBERS)
FLAGS_PROBES = FLAGS
for _name in ("foreach", "fused", "capturable", "differentiable", "maximize", "amsgrad", "centered",
              "decoupled_weight_decay", "nesterov"):
    PROBES[_name] = FLAGS_PROBES

#: combinations whose parts are each valid
COMBINATIONS = [
    dict(nesterov=True, momentum=0.9, dampening=0.1),
    dict(nesterov=True, momentum=0.0),
    dict(fused=True, foreach=True),
    dict(fused=True, differentiable=True),
    dict(lr=torch.tensor(0.01), foreach=True),
    dict(lr=torch.tensor(0.01), foreach=True, capturable=True),
    dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True),
    dict(betas=(torch.tensor(0.9), 0.99)),
    dict(centered=True, momentum=0.5),
    dict(amsgrad=True, maximize=True, weight_decay=0.1),
    dict(max_iter=3, max_eval=2),
]

#: words by which a message may name an argument
ALIASES = {
    "lr": ("lr", "learning rate"),
    "eps": ("eps", "epsilon"),
    "etas": ("eta",),
    "step_sizes": ("step size", "step_size"),
    "betas": ("beta",),
    "weight_decay": ("weight_decay", "weight decay"),
    "d": ("threshold d",),
    "adjust_lr_fn": ("adjust learning rate function", "adjust_lr_fn"),
}

#: where fastoptim deliberately differs from torch.optim at step time: (algorithm or "*", predicate) -> reason
KNOWN_STEP_DIFFERENCES = {
    ("*", lambda kw: bool(kw.get("capturable"))):
        "fastoptim runs capturable=True on CPU tensors (decided in the core issue); torch raises AssertionError",
    ("*", lambda kw: kw.get("foreach") is True and any(isinstance(b, torch.Tensor) for b in kw.get("betas", ()))):
        "tensor betas with foreach=True: torch's foreach kernels reject them (TypeError in _foreach_addcdiv_ for "
        "Adamax/NAdam/RAdam); fastoptim computes the step",
}


def _accepted_args(name: str) -> list[str]:
    return list(inspect.signature(theirs(name).__init__).parameters)[2:]


def _probes(name: str):
    """(kwargs, well_typed) for every argument of ``name``'s constructor, and the combinations that apply."""
    accepted = _accepted_args(name)
    for arg in accepted:
        assert arg in PROBES, f"no probes for {name}'s argument {arg!r}: add them to PROBES"
        for value in PROBES[arg]:
            yield {arg: value}, not isinstance(value, bool) or PROBES[arg] is FLAGS_PROBES
        for value in WRONG_TYPES:
            yield {arg: value}, False
    for combo in COMBINATIONS:
        if set(combo) <= set(accepted):
            yield combo, True


def _params(name: str, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5, 2)] if name == "Muon" else [(4, 3), (5,)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _grads(name: str, params, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        p.grad = g.to_sparse() if name in SPARSE_ONLY else g


def _step(name: str, optimizer, params):
    if name in CLOSURE_ONLY:
        return optimizer.step(lambda: sum((p * p).sum() for p in params))
    return optimizer.step()


def _outcome(name: str, cls, kwargs: dict):
    """("init", exc) | ("step", exc) | ("ok", params): what happens to a construction and one step."""
    params = _params(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            optimizer = cls(params, **copy.deepcopy(kwargs))
        except Exception as exc:  # noqa: BLE001 - the type is what is compared
            return "init", exc
        _grads(name, params)
        try:
            with torch.no_grad():
                _step(name, optimizer, params)
        except Exception as exc:  # noqa: BLE001
            return "step", exc
    return "ok", [p.detach().clone() for p in params]


def _numbers_in(text: str) -> list[str]:
    return re.findall(r"-?(?:nan|inf|\d+(?:\.\d+)?(?:e-?\d+)?)", text)


def _compare(name: str, kwargs: dict, well_typed: bool, allow_known: bool = True) -> str | None:
    """Why fastoptim's handling of ``kwargs`` differs from torch's (None: it does not)."""
    their_kind, their_result = _outcome(name, theirs(name), kwargs)
    our_kind, our_result = _outcome(name, ours(name), kwargs)
    where = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"

    if their_kind == "init" or our_kind == "init":
        if (our_kind, type(our_result)) != (their_kind, type(their_result)):
            ours_text = f"{type(our_result).__name__}: {our_result}" if our_kind != "ok" else "accepted"
            return f"{where}: torch {their_kind} {type(their_result).__name__}: {their_result} | fastoptim {our_kind} {ours_text}"
        if isinstance(our_result, ValueError):
            message = str(our_result).lower()
            names = [alias for arg in kwargs for alias in ALIASES.get(arg, (arg.replace("_", " "), arg))]
            if not any(alias.lower() in message for alias in names):
                return f"{where}: {our_result!r} does not name the argument"
            missing = [n for n in _numbers_in(str(their_result)) if n not in str(our_result)]
            if missing:
                return f"{where}: {our_result!r} lacks the value(s) {missing} that torch reports: {their_result!r}"
        return None

    # Construction succeeded in both: a step must behave the same, for well-typed values.
    if not well_typed or (allow_known and _known_step_difference(name, kwargs)):
        return None
    if their_kind == "step" or our_kind == "step":
        if (our_kind, type(our_result)) != (their_kind, type(their_result)):
            ours_text = repr(our_result) if our_kind == "step" else "ok"
            return f"{where}: step: torch {their_kind} {their_result!r} | fastoptim {our_kind} {ours_text}"
        return None
    tol = TOLERANCE[torch.float32]
    for i, (a, b) in enumerate(zip(our_result, their_result)):
        try:
            torch.testing.assert_close(a, b, **tol, equal_nan=True)
        except AssertionError as exc:
            return f"{where}: param {i} after a step differs from torch's: {exc}"
    return None


def _known_step_difference(name: str, kwargs: dict) -> str | None:
    for (algorithm, predicate), reason in KNOWN_STEP_DIFFERENCES.items():
        if algorithm in (name, "*") and predicate(kwargs):
            return reason
    return None


@pytest.mark.parametrize("name", TORCH_ALGORITHMS)
def test_constructor_arguments_validated_like_torch(name):
    """For every argument: the same acceptance and exception type as torch.optim (a ValueError names
    the argument and the value); when both accept, one step behaves the same (well-typed values)."""
    problems = [problem for kwargs, well_typed in _probes(name) if (problem := _compare(name, kwargs, well_typed))]
    assert not problems, f"{len(problems)} difference(s) from torch.optim:\n" + "\n".join(problems)


def test_asgd_alpha_minus_inf_fails_like_torch():
    """torch's for-loop computes η in Python floats: 1 / (1 + λγt)^-inf is a ZeroDivisionError at step 1.

    fastoptim raises it too (before anything changes; see test_asgd.py for the other configurations)."""
    problem = _compare("ASGD", {"alpha": -inf}, True, allow_known=False)
    assert problem is None, problem


def test_a_misspelt_argument_is_a_type_error():
    for name in ALGORITHMS:
        with pytest.raises(TypeError):
            ours(name)(_params(name), lr_typo=0.1)


# ---------------------------------------------------------------- parameters
def _param_cases():
    leaf = lambda: torch.randn(4, 3, requires_grad=True)  # noqa: E731
    return {
        "non-leaf": lambda name: [leaf() * 2],
        "non-leaf-differentiable": lambda name: ([leaf() * 2], {"differentiable": True}),
        "empty-list": lambda name: [],
        "empty-generator": lambda name: (p for p in []),
        "bare-tensor": lambda name: leaf(),
        "set": lambda name: {leaf()},
        "not-a-tensor": lambda name: [leaf(), 3.0],
        "duplicate-across-groups": lambda name: (lambda p: [{"params": [p]}, {"params": [p, leaf()]}])(leaf()),
        "duplicate-in-a-group": lambda name: (lambda p: [p, p])(leaf()),
        "group-without-params": lambda name: [{"lr": 0.1}],
        "integer": lambda name: [torch.zeros(4, 3, dtype=torch.long)],
        "integer-with-grad": "integer-with-grad",
        "complex": lambda name: [torch.randn(4, 3, dtype=torch.complex64, requires_grad=True)],
        "one-dimensional": lambda name: [torch.randn(5, requires_grad=True)],
        "bfloat16": lambda name: [torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)],
        "named": lambda name: [("w", leaf()), ("b", torch.randn(3, requires_grad=True))],
        "named-and-unnamed": lambda name: [("w", leaf()), torch.randn(3, requires_grad=True)],
    }


def _param_outcome(name, cls, case):
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if case == "integer-with-grad":
                params = [torch.zeros(4, 3, dtype=torch.long)]
                kwargs = {}
            else:
                made = _param_cases()[case](name)
                params, kwargs = made if isinstance(made, tuple) and isinstance(made[1], dict) else (made, {})
            optimizer = cls(params, **kwargs)
        except Exception as exc:  # noqa: BLE001
            return ("init", type(exc), str(exc)), [str(w.message) for w in caught]
        tensors = [p for g in optimizer.param_groups for p in g["params"]]
        for p in tensors:
            g = torch.ones_like(p)
            p.grad = g.to_sparse() if name in SPARSE_ONLY else g
        try:
            with torch.no_grad():
                _step(name, optimizer, tensors)
        except Exception as exc:  # noqa: BLE001
            return ("step", type(exc), str(exc)), [str(w.message) for w in caught]
    return ("ok",), [str(w.message) for w in caught]


@pytest.mark.parametrize("name", TORCH_ALGORITHMS)
def test_parameters_rejected_like_torch(name):
    """For each kind of bad (or unusual) params: the same exception (type and message) or success as
    torch.optim, at construction or at the first step, and the same duplicate-parameter warning."""
    problems = []
    for case in _param_cases():
        theirs_result, their_warnings = _param_outcome(name, theirs(name), case)
        ours_result, our_warnings = _param_outcome(name, ours(name), case)
        if ours_result[:2] != theirs_result[:2]:
            problems.append(f"{case}: torch {theirs_result} | fastoptim {ours_result}")
        elif theirs_result[0] == "init" and ours_result[2] != theirs_result[2]:
            problems.append(f"{case}: message {ours_result[2]!r} != torch's {theirs_result[2]!r}")
        duplicate = [w for w in their_warnings if "duplicate" in w]
        if duplicate and not any("duplicate" in w for w in our_warnings):
            problems.append(f"{case}: torch warns {duplicate[0]!r}, fastoptim does not")
    assert not problems, f"{name}:\n" + "\n".join(problems)


#: the algorithms that take fused=True in torch.optim
FUSED = [name for name in TORCH_ALGORITHMS if "fused" in inspect.signature(theirs(name)).parameters]


def _fused_on_meta_outcome(cls):
    """A fused optimizer over parameters on the meta device: the first step's error, then a step after
    the parameters have been materialised on the CPU (the optimizer is the same one)."""
    with torch.device("meta"):
        model = torch.nn.Linear(3, 2)
    optimizer = cls(model.parameters(), lr=0.1, fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
    try:
        optimizer.step()
        error = None
    except Exception as exc:  # noqa: BLE001 - type and message are compared
        error = (type(exc), str(exc))
    optimizer.zero_grad(set_to_none=True)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (i + 1))
            p.grad = torch.full_like(p, 0.5)
    optimizer.step()
    return error, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", FUSED)
def test_fused_params_on_an_unsupported_device_fail_like_torch(name):
    """fused=True needs floating-point parameters on a device with fused kernels (torch checks the
    device too, not only the dtype): the step over meta parameters fails with torch's error, and the
    optimizer still steps once they are real CPU tensors."""
    their_error, their_params = _fused_on_meta_outcome(theirs(name))
    our_error, our_params = _fused_on_meta_outcome(ours(name))
    assert their_error is not None and their_error[0] is RuntimeError
    assert our_error == their_error
    torch.testing.assert_close(our_params, their_params)


# ---------------------------------------------------------------- load_state_dict
def _kwargs_for(name: str) -> dict:
    """A configuration with the most state (every optional buffer present)."""
    return {
        "SGD": dict(lr=0.1, momentum=0.9),
        "Adam": dict(amsgrad=True),
        "AdamW": dict(amsgrad=True),
        "RMSprop": dict(momentum=0.5, centered=True),
        "LBFGS": dict(history_size=3, max_iter=3),
    }.get(name, {})


def _stepped(name: str, seed=0, kwargs=None):
    """An optimizer of ``name`` with two groups (one for LBFGS), after two steps."""
    params = _params(name, torch.float64, seed)
    kwargs = _kwargs_for(name) if kwargs is None else kwargs
    spec = [{"params": params}] if name in CLOSURE_ONLY else [{"params": params[:1]}, {"params": params[1:]}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = ours(name)(spec, **kwargs)
    if callable(getattr(optimizer, "train", None)):  # schedule-free optimizers step in train mode
        optimizer.train()
    for step in range(2):
        _grads(name, params, seed=step + 10)
        _step(name, optimizer, params)
    return optimizer


def _first_state(sd):
    return next(entry for entry in sd["state"].values() if entry)


def _tensor_keys(entry, shape):
    return [k for k, v in entry.items() if isinstance(v, torch.Tensor) and v.shape == shape and v.numel() > 1]


def _malformations():
    def drop_group(sd):
        sd["param_groups"].pop()

    def add_group(sd):
        extra = copy.deepcopy(sd["param_groups"][-1])
        extra["params"] = [i + 100 for i in extra["params"]]
        sd["param_groups"].append(extra)

    def shrink_group(sd):
        sd["param_groups"][0]["params"].pop()

    def grow_group(sd):
        sd["param_groups"][0]["params"].append(99)

    def no_state(sd):
        del sd["state"]

    def no_param_groups(sd):
        del sd["param_groups"]

    def group_without_params(sd):
        del sd["param_groups"][0]["params"]

    def group_without_lr(sd):
        del sd["param_groups"][0]["lr"]

    def group_is_a_list(sd):
        sd["param_groups"][0] = list(sd["param_groups"][0].items())

    def state_entry_is_a_tensor(sd):
        key = next(iter(sd["state"]))
        sd["state"][key] = torch.zeros(3)

    def state_is_a_list(sd):
        sd["state"] = list(sd["state"].values())

    return {
        "one group fewer": drop_group,
        "one group more": add_group,
        "a group one param short": shrink_group,
        "a group one param long": grow_group,
        "no 'state'": no_state,
        "no 'param_groups'": no_param_groups,
        "a group without 'params'": group_without_params,
        "a group without 'lr'": group_without_lr,
        "a group that is not a dict": group_is_a_list,
        "a state entry that is not a dict": state_entry_is_a_tensor,
        "'state' that is not a dict": state_is_a_list,
    }


MALFORMATIONS = _malformations()


def _assert_rejected(optimizer, bad, where):
    before = snapshot(optimizer)
    with pytest.raises((ValueError, KeyError, TypeError)) as info:
        optimizer.load_state_dict(bad)
    assert str(info.value).strip(), f"{where}: an error without a message"
    assert_unchanged(optimizer, before, where)
    return info.value


@pytest.mark.parametrize("malformation", list(MALFORMATIONS))
@pytest.mark.parametrize("name", ALGORITHMS)
def test_malformed_state_dict_changes_nothing(name, malformation):
    if name in CLOSURE_ONLY and malformation == "one group fewer":
        pytest.skip("LBFGS has exactly one group: 'one group fewer' is covered by 'one group more'")
    optimizer = _stepped(name)
    bad = copy.deepcopy(optimizer.state_dict())
    MALFORMATIONS[malformation](bad)
    _assert_rejected(optimizer, bad, f"{name}: {malformation}")
    # ...and it still works.
    params = [p for g in optimizer.param_groups for p in g["params"]]
    _grads(name, params, seed=3)
    _step(name, optimizer, params)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_state_of_the_wrong_shape_changes_nothing(name):
    optimizer = _stepped(name)
    good = optimizer.state_dict()
    entry_index, entry = next((k, v) for k, v in good["state"].items() if v)
    param = [p for g in optimizer.param_groups for p in g["params"]][entry_index]
    keys = [k for k in _tensor_keys(entry, param.shape) if k in getattr(type(optimizer), "_per_element_state", ())]
    if not keys:
        pytest.skip(f"{name} keeps no per-element state buffers (its state is not shaped like the parameters)")
    for key in keys:
        bad = copy.deepcopy(good)
        bad["state"][entry_index][key] = torch.zeros(param.numel() + 1, dtype=param.dtype)
        error = _assert_rejected(optimizer, bad, f"{name}: {key} of the wrong shape")
        assert key in str(error) and "shape" in str(error)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_state_with_a_missing_key_changes_nothing(name):
    optimizer = _stepped(name)
    good = optimizer.state_dict()
    entry_index, entry = next((k, v) for k, v in good["state"].items() if v)
    if name in CLOSURE_ONLY:
        pytest.skip("LBFGS creates its state entries lazily with .get/.setdefault: none is required")
    required = [key for key in entry if len(entry) > 1]
    if not required or not hasattr(optimizer, "_init_state"):
        pytest.skip(f"{name} creates its state lazily, key by key: an entry without a key is a fresh entry")
    for key in required:
        bad = copy.deepcopy(good)
        del bad["state"][entry_index][key]
        error = _assert_rejected(optimizer, bad, f"{name}: state without {key!r}")
        assert key in str(error), f"{name}: the error does not name {key!r}: {error}"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_a_second_load_is_accepted(name):
    """Loading runs torch's ``Optimizer.__setstate__``, which adds ``differentiable`` to the defaults of
    classes whose groups do not have it (LBFGS, SparseAdam, ...): the next load must still accept the
    class's own state_dict, as torch.optim does."""
    optimizer = _stepped(name)
    saved = copy.deepcopy(optimizer.state_dict())
    optimizer.load_state_dict(saved)
    optimizer.load_state_dict(saved)
    other = _stepped(name, seed=2)
    other.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    other.load_state_dict(saved)
    assert other.state_dict()["param_groups"] == saved["param_groups"]


#: another optimizer class whose state_dict must be refused, for each class
DONORS = {name: ("Adam" if name == "SGD" else "SGD") for name in ALGORITHMS}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_state_dict_of_another_class_changes_nothing(name):
    optimizer = _stepped(name)
    donor_name = DONORS[name]
    donor = _stepped(donor_name, seed=1, kwargs=_kwargs_for(donor_name))
    donor_sd = donor.state_dict()
    if len(donor_sd["param_groups"]) != len(optimizer.param_groups):  # LBFGS: make the layout fit
        donor_sd["param_groups"] = [{**donor_sd["param_groups"][0], "params": [0, 1]}]
    error = _assert_rejected(optimizer, donor_sd, f"{name} loading {donor_name}'s state_dict")
    assert "another optimizer class" in str(error) or "different" in str(error), str(error)


#: (donor, class) pairs whose layouts match (same option names, the state keys the class needs) but
#: whose values do not fit: load_state_dict checks names and shapes, not values (nor does torch.optim).
LOADABLE_MISFITS = {
    ("Adan", "Lion"): "Adan's betas has three entries, Lion's two: the first step raises ValueError",
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_any_other_class_is_rejected_or_fully_usable(name):
    """Loading class B's state_dict into class A either fails cleanly (A unchanged) or leaves an A
    that steps without error: never a half-compatible optimizer that crashes later.  Layouts that
    torch also treats as interchangeable (Adam and AdamW, Adam into RAdam, ...) load."""
    accepted = []
    for donor_name in ALGORITHMS:
        if donor_name == name or (name in CLOSURE_ONLY) != (donor_name in CLOSURE_ONLY):
            continue  # LBFGS has one group: the group-count check rejects the others
        if (name in SPARSE_ONLY) != (donor_name in SPARSE_ONLY):
            continue  # sparse-only SparseAdam cannot step on dense gradients, and vice versa
        optimizer = _stepped(name)
        donor_sd = _stepped(donor_name, seed=1).state_dict()
        before = snapshot(optimizer)
        try:
            optimizer.load_state_dict(donor_sd)
        except (ValueError, KeyError, TypeError):
            assert_unchanged(optimizer, before, f"{donor_name} into {name}")
            continue
        params = [p for g in optimizer.param_groups for p in g["params"]]
        _grads(name, params, seed=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if (donor_name, name) in LOADABLE_MISFITS:
                with pytest.raises(ValueError):
                    _step(name, optimizer, params)
            else:
                _step(name, optimizer, params)  # must not raise
        accepted.append(donor_name)
    tried = [d for d in ALGORITHMS if d != name and (name in CLOSURE_ONLY) == (d in CLOSURE_ONLY)
             and (name in SPARSE_ONLY) == (d in SPARSE_ONLY)]
    assert not tried or len(accepted) < len(tried), f"{name} accepted every other class's state_dict: {accepted}"


def test_torch_state_dicts_still_load():
    """The checks accept what torch.optim produces (cross-loading is a core requirement)."""
    for name in TORCH_ALGORITHMS:
        params = _params(name, torch.float64)
        spec = [{"params": params}] if name in CLOSURE_ONLY else [{"params": params[:1]}, {"params": params[1:]}]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = theirs(name)(spec, **_kwargs_for(name))
            for step in range(2):
                _grads(name, params, seed=step)
                _step(name, reference, params)
            fresh = _stepped(name, seed=4)
            fresh.load_state_dict(reference.state_dict())


# ---------------------------------------------------------------- non-finite gradients
NONFINITE = {"nan": nan, "inf": inf, "-inf": -inf}


def _nonfinite_cases():
    for name in TORCH_ALGORITHMS:
        for label in NONFINITE:
            yield pytest.param(name, label, id=f"{name}-{label}")


@pytest.mark.parametrize("name,label", list(_nonfinite_cases()))
def test_nonfinite_gradients_behave_like_torch(name, label):
    """fastoptim does not check gradients: a NaN/inf propagates into parameters and state exactly as
    in torch.optim (then a finite step follows, to show the state carries it the same way)."""
    from parity import assert_same

    results = []
    for cls in (theirs(name), ours(name)):
        params = _params(name, torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = cls(params, **_kwargs_for(name))
        for step in range(2):
            _grads(name, params, seed=step + 20)
            if step == 0:
                for p in params:
                    dense = p.grad.to_dense() if p.grad.is_sparse else p.grad
                    dense.view(-1)[::3] = NONFINITE[label]
                    p.grad = dense.to_sparse() if name in SPARSE_ONLY else dense
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    _step(name, optimizer, params)
                except Exception as exc:  # noqa: BLE001
                    results.append(("raised", type(exc)))
                    break
        else:
            results.append(("ok", [p.detach().clone() for p in params], optimizer.state_dict()))
    theirs_result, ours_result = results
    assert ours_result[0] == theirs_result[0], f"{name}: torch {theirs_result[0]}, fastoptim {ours_result[0]}"
    if ours_result[0] == "raised":
        assert ours_result[1] == theirs_result[1]
        return
    tol = TOLERANCE[torch.float64]
    for i, (a, b) in enumerate(zip(ours_result[1], theirs_result[1])):
        assert torch.equal(a.isnan(), b.isnan()), f"{name} {label}: NaN in other places of param {i}"
        assert torch.equal(a.isinf(), b.isinf()), f"{name} {label}: inf in other places of param {i}"
        torch.testing.assert_close(a, b, **tol, equal_nan=True)
    assert_same(ours_result[2], theirs_result[2], tol, f"{name} {label} state_dict")
