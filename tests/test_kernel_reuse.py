"""A group's kernel table is reused between steps only while nothing it was built from has changed.

Each test steps a kernel optimizer (strict backend) and a reference one side by
side, changes something between steps the way a user or a library might --
new or rewritten gradients, a parameter's storage or metadata, the state --
and compares parameters and state after every step.  A reused table that
missed the change would update stale addresses or skip a check.
"""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
import torch

import fastoptim
from fastoptim.kernels.dispatch import use_backend

numba_launch = pytest.importorskip("fastoptim.kernels.cpu._launch")

CASES = [
    ("Adam", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, amsgrad=True)),
    ("SGD", dict(lr=0.1, momentum=0.9)),  # the FLAG column: a fresh buffer on the first step only
    ("LARS", dict(lr=0.1, momentum=0.9)),  # the FLAG column: matrices and vectors differ
    ("Rprop", dict(lr=0.01)),
    ("ASGD", dict(lr=0.01, t0=2)),
    ("Adafactor", dict(weight_decay=0.1)),  # columns of its own: factors' addresses and matrix shapes
]


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 5), (7,), (3, 4), ()]
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _grad(p, step, i):
    gen = torch.Generator().manual_seed(1000 * step + i)
    return torch.randn(p.shape, generator=gen, dtype=p.dtype)


class Pair:
    """A kernel optimizer and a reference optimizer over copies of the same parameters."""

    def __init__(self, name, kwargs, params):
        self.kernel_params = [p.detach().clone().requires_grad_() for p in params]
        self.reference_params = [p.detach().clone().requires_grad_() for p in params]
        cls = getattr(fastoptim, name)
        self.kernel = cls(self.kernel_params, **kwargs)
        self.reference = cls(self.reference_params, **kwargs)

    def both(self, fn):
        """Apply ``fn(params, optimizer)`` to each side."""
        fn(self.kernel_params, self.kernel)
        fn(self.reference_params, self.reference)

    def step(self, where, backend="numba"):
        with use_backend(backend):
            self.kernel.step()
        with use_backend("reference"):
            self.reference.step()
        self.compare(where)

    def compare(self, where):
        for i, (a, b) in enumerate(zip(self.kernel_params, self.reference_params)):
            torch.testing.assert_close(a.detach(), b.detach(), msg=lambda m: f"{where}, param {i}: {m}")
            for key, value in self.reference.state.get(b, {}).items():
                torch.testing.assert_close(self.kernel.state[a][key], value, msg=lambda m: f"{where}, {key} {i}: {m}")


def _new_grads(step):
    def fn(params, _):
        for i, p in enumerate(params):
            p.grad = _grad(p, step, i)

    return fn


def _grads_rewritten_in_place(step):
    def fn(params, _):
        for i, p in enumerate(params):
            p.grad.copy_(_grad(p, step, i))

    return fn


@pytest.mark.parametrize("name,kwargs", CASES, ids=[c[0] for c in CASES])
def test_new_kept_and_rewritten_gradients(name, kwargs):
    pair = Pair(name, kwargs, _params())
    for step in range(8):
        if step % 3 == 0:
            pair.both(_new_grads(step))  # zero_grad(set_to_none=True) + backward
        elif step % 3 == 1:
            pair.both(_grads_rewritten_in_place(step))  # zero_grad(set_to_none=False) + backward
        # else: the same gradients again, untouched
        pair.step(f"step {step}")



def test_new_gradients_laid_out_unlike_their_parameters():
    """A new gradient in another element order (column-major) or not dense (a strided view) may not take
    the old one's row: it is judged on its own, like a new table would judge it."""
    pair = Pair("Adam", dict(lr=0.01), _params())
    pair.both(_new_grads(0))
    pair.step("step 0")

    def odd_layouts(params, _):
        for i, p in enumerate(params):
            g = _grad(p, 1, i)
            if p.dim() == 2:
                p.grad = g.t().contiguous().t()  # same shape and values, column-major
            elif p.dim() == 1:
                p.grad = torch.stack([g, g], 1)[:, 0]  # every other element of a buffer

    pair.both(odd_layouts)
    pair.step("odd layouts", backend="auto")  # they fall back to the reference rule
    pair.both(_new_grads(2))
    pair.step("contiguous again")

def test_the_table_is_reused(monkeypatch):
    """Steady steps recall the table (the other tests here would prove nothing otherwise)."""
    built = []
    remember = numba_launch.Reuse.remember
    monkeypatch.setattr(numba_launch.Reuse, "remember", lambda self, *a: built.append(1) or remember(self, *a))
    pair = Pair("Adam", dict(lr=0.01), _params())
    pair.both(_new_grads(0))
    pair.step("step 0")
    assert len(built) == 1
    for step in range(1, 4):
        pair.both(_grads_rewritten_in_place(step) if step % 2 else _new_grads(step))
        pair.step(f"step {step}")
    assert len(built) == 1


def test_parameter_storage_replaced():
    """``p.data = ...`` changes the address without a version bump."""
    pair = Pair("Adam", dict(lr=0.01), _params())
    pair.both(_new_grads(0))
    pair.step("step 0")
    fresh = [torch.randn(p.shape, dtype=p.dtype) for p in pair.kernel_params]

    def replace(params, _):
        for p, value in zip(params, fresh):
            p.data = value.clone()

    pair.both(replace)
    pair.step("after p.data = ...")


def test_parameter_narrowed_through_data():
    """``p.data = p.data.view(-1)[:10]``: same address, same version, fewer elements."""
    pair = Pair("SGD", dict(lr=0.1), _params())
    pair.both(_new_grads(0))
    pair.step("step 0")
    bases = []

    def narrow(params, _):
        bases.append(params[0].data)
        params[0].data = params[0].data.view(25)[:10]
        params[0].grad = _grad(params[0], 1, 0)

    pair.both(narrow)
    pair.step("after narrowing")
    torch.testing.assert_close(bases[0], bases[1], msg="the elements outside the new view")



def test_parameter_transposed_through_data():
    """``p.data = p.data.t()`` on a square matrix: same address, shape and version, but its elements now
    lie column by column, unlike its state -- with a gradient laid out like it, and then kept."""
    pair = Pair("Adam", dict(lr=0.1), _params())
    pair.both(_new_grads(0))
    pair.step("step 0")

    def transpose(params, _):
        params[0].data = params[0].data.t()
        params[0].grad = _grad(params[0], 1, 0).t().contiguous().t()  # column-major, like the parameter

    pair.both(transpose)
    pair.step("after transposing", backend="auto")  # the parameter falls back to the reference rule
    pair.step("kept gradient", backend="auto")

def test_in_place_metadata_change_with_kept_gradient():
    """``p.t_()`` keeps address and shape (square) but not the layout: the kept gradient no longer lies like it."""
    pair = Pair("SGD", dict(lr=0.1, momentum=0.9), _params())
    pair.both(_new_grads(0))
    pair.step("step 0")

    def transpose(params, _):
        with torch.no_grad():
            params[0].t_()

    pair.both(transpose)
    with pytest.raises(RuntimeError, match="strided differently"), use_backend("numba"):
        pair.kernel.step()  # noticed: the strict backend refuses the parameter, before any update
    pair.compare("after the refused step")
    pair.step("after t_()", backend="auto")
    pair.step("again", backend="auto")


def test_state_replaced_by_load_state_dict():
    pair = Pair("Adam", dict(lr=0.01), _params())
    for step in range(2):
        pair.both(_new_grads(step))
        pair.step(f"step {step}")
    saved = copy.deepcopy(pair.reference.state_dict())
    for step in range(2, 4):
        pair.both(_new_grads(step))
        pair.step(f"step {step}")
    pair.both(lambda _, opt: opt.load_state_dict(copy.deepcopy(saved)))
    pair.both(_new_grads(4))
    pair.step("after load_state_dict")


def test_adafactor_factor_no_longer_contiguous_falls_back():
    """A factor replaced by a non-contiguous copy: noticed on a recalled table; that parameter takes the reference rule."""
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in ((2, 3, 4), (5,))]
    pair = Pair("Adafactor", dict(lr=0.01), params)
    pair.both(_new_grads(0))
    pair.step("step 0")
    pair.both(_new_grads(1))
    pair.step("step 1")  # a recalled table

    def strided_row_var(params, opt):
        row_var = opt.state[params[0]]["row_var"]  # (2, 3, 1)
        opt.state[params[0]]["row_var"] = torch.empty(3, 2, 1, dtype=row_var.dtype).transpose(0, 1).copy_(row_var)

    pair.both(strided_row_var)
    pair.both(_new_grads(2))
    with pytest.raises(RuntimeError, match="row_var / col_var"), use_backend("numba"):
        pair.kernel.step()  # refused before any update
    pair.compare("after the refused step")
    for step in range(2, 4):
        pair.both(_new_grads(step))
        pair.step(f"step {step}", backend="auto")


def test_state_dtype_changed_falls_back_to_the_reference_rule():
    """A state tensor replaced by one of another dtype: the reference rule runs (and raises as it does)."""
    pair = Pair("Adam", dict(lr=0.01), _params())
    pair.both(_new_grads(0))
    pair.step("step 0")

    def to_float32(params, opt):
        opt.state[params[1]]["exp_avg"] = opt.state[params[1]]["exp_avg"].float()

    pair.both(to_float32)
    pair.both(_new_grads(1))
    with pytest.raises(RuntimeError, match="another dtype"), use_backend("numba"):
        pair.kernel.step()
    for optimizer, backend in ((pair.kernel, "auto"), (pair.reference, "reference")):
        with pytest.raises(RuntimeError, match="expected dtype"), use_backend(backend):
            optimizer.step()


def test_gradient_falling_away_and_back():
    pair = Pair("Adam", dict(lr=0.01), _params())
    for step in range(5):
        pair.both(_new_grads(step))
        if step == 2:
            pair.both(lambda params, _: setattr(params[1], "grad", None))
        pair.step(f"step {step}")


def test_gradients_are_not_kept_alive():
    p = torch.randn(10, requires_grad=True)
    p.grad = torch.randn(10)
    opt = fastoptim.Adam([p])
    opt.step()
    seen = weakref.ref(p.grad)
    opt.zero_grad()  # set_to_none
    gc.collect()
    assert seen() is None


def test_copies_and_pickles_drop_the_tables():
    p = torch.randn(10, requires_grad=True)
    p.grad = torch.randn(10)
    opt = fastoptim.Adam([p])
    opt.step()
    assert "_kernel_tables" in opt.__dict__
    twin = copy.deepcopy(opt)
    assert "_kernel_tables" not in twin.__dict__
    assert "_kernel_tables" not in pickle.loads(pickle.dumps(opt)).__dict__
    (q,) = twin.param_groups[0]["params"]
    q.grad = torch.randn(10)
    before = p.detach().clone()
    twin.step()  # updates the copy's own parameter, not the original's
    assert torch.equal(p.detach(), before)
    assert not torch.equal(q.detach(), before)


def test_each_group_has_its_own_table():
    params = _params()
    pair = Pair("Adam", dict(lr=0.01), params[:2])
    extra = [p.detach().clone().requires_grad_() for p in params[2:]]
    pair.kernel.add_param_group({"params": extra, "lr": 0.1})
    pair.kernel_params += extra
    extra = [p.detach().clone().requires_grad_() for p in params[2:]]
    pair.reference.add_param_group({"params": extra, "lr": 0.1})
    pair.reference_params += extra
    for step in range(3):
        pair.both(_new_grads(step))
        pair.step(f"step {step}")
