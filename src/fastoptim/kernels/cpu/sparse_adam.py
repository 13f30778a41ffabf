"""SparseAdam on the CPU: :func:`fastoptim.algorithms.sparse_adam.sparse_adam_reference` as one parallel loop.

The gradient is a sparse COO tensor, sparse in dim 0 and dense in the others
(as ``nn.Embedding(sparse=True)`` makes it).  Python coalesces it exactly as
the reference rule does (``grad.coalesce()``: duplicate rows summed, rows
sorted; free when it is already coalesced) and puts the addresses of its
``int64`` row indices and of its dense ``(nnz, *rest)`` values in the table.
The kernel then touches only the gradient's rows of ``param``, ``exp_avg`` and
``exp_avg_sq``: :func:`plan` cuts the *values* (``nnz × row`` elements) into
chunks, and each chunk walks its pieces of rows, scattering to the rows the
indices name -- distinct after coalescing, so the threads never write the
same element.

The body follows the reference rule section by section (same comments);
``rounded`` marks where the reference materialises an intermediate tensor (a
no-op unless the parameters are bfloat16).  Every one of the reference's ops
is its own tensor op, so nothing in it is fused or reordered: the kernel is
compiled without fast-math flags and does each op with one IEEE rounding.
The one difference: torch's CPU ``sqrt`` on float32/float64 is MKL's VML
(high-accuracy mode, not always correctly rounded: measured 1.2 % of float64
and 16 % of float32 results one ulp off), the kernel's is IEEE ``sqrt``; so the
moments match the reference bit for bit and the parameters to about an ulp of
the step (bfloat16, whose torch ``sqrt`` is not VML, matched exactly in our runs).

``step`` is a Python ``int`` in the state dict, as in torch: the table carries
its next value, from which the bias corrections are computed (float64,
the reference's Python-float expression), and Python stores it once the kernel
has run.  Every index is checked against the parameter's first dimension
before anything is written; if one is out of range the batch runs the
reference rule instead, which raises torch's ``IndexError``.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
from numba import prange

from fastoptim.algorithms.sparse_adam import sparse_adam_reference

from ._launch import (
    GRAD,
    NUMEL,
    PARAM,
    STORAGE,
    Batch,
    Gathered,
    Reuse,
    add_scalar,
    all_to_reference_if_repeated,
    column,
    columns,
    helper,
    kernel,
    launch,
    load,
    next_task,
    plan,
    rounded,
    scalar,
    store,
    task_counter,
    thread_count,
)
from ._launch import _data_ptr, _dtype_of, _grad_of, _is_contiguous, _is_cpu_of, _layout_of, _shape_of, _PLAIN_TYPE_SET

BUFFERS = ("exp_avg", "exp_avg_sq")
_COL = columns((), BUFFERS)
EXP_AVG, EXP_AVG_SQ = _COL["exp_avg"], _COL["exp_avg_sq"]
# This kernel's own columns, after the buffers.  NUMEL (the elements the
# launch works on) is the number of gradient values, nnz × ROW; GRAD is the
# address of the values.
INDICES = EXP_AVG_SQ + 1  #: address of the coalesced gradient's int64 row indices
NNZ = INDICES + 1  #: number of gradient rows
ROW = NNZ + 1  #: elements per row (the product of the dense dims)
ROWS = ROW + 1  #: the parameter's first dimension (indices must be below it)
STEP = ROWS + 1  #: the parameter's new step (the state's ``step`` + 1)

#: a step beyond this is left to the reference rule (the table holds int64)
_MAX_STEP = 1 << 62
_CONTIGUOUS = torch.contiguous_format
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


@helper
def _neg_step_sizes(table, lr, beta1, beta2):
    """Per tensor: ``−γ√(1−β₂ᵗ)/(1−β₁ᵗ)``, in float64 as the reference computes it."""
    out = np.empty(table.shape[0], np.float64)
    for t in range(table.shape[0]):
        step = np.float64(table[t, STEP])  # the reference's Python int, as float ** int converts it
        out[t] = -(lr * np.sqrt(1 - beta2**step) / (1 - beta1**step))
    return out


@helper
def _first_bad_index(table, index_witness):
    """1 + the first tensor with a row index outside ``0 .. ROWS-1`` (0: all inside)."""
    for t in range(table.shape[0]):
        if table[t, NNZ] == 0 or table[t, ROW] == 0:  # the reference returns before reading them
            continue
        indices = column(table, t, INDICES, 0, table[t, NNZ], index_witness)
        rows = table[t, ROWS]
        for k in range(indices.shape[0]):
            if indices[k] < 0 or indices[k] >= rows:
                return t + 1
    return 0


@kernel(fastmath=())
def _sparse_adam_kernel(table, hyper, witness, grain):
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2 = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    eps, maximize = hyper[5], hyper[6] != 0
    index_witness = np.empty(0, np.int64)
    bad = _first_bad_index(table, index_witness)
    if bad != 0:
        return bad
    neg_step_sizes = _neg_step_sizes(table, lr, beta1, beta2)
    w1 = scalar(one_minus_beta1, witness)  # .mul_(1 − β₁)
    w2 = scalar(one_minus_beta2, witness)  # .mul_(1 − β₂)
    e = add_scalar(eps, witness)  # .add_(ε)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                neg_step_size = scalar(neg_step_sizes[t], witness)  # −step_size * (...) multiplies by it
                row = table[t, ROW]
                indices = column(table, t, INDICES, 0, table[t, NNZ], index_witness)
                done = 0
                while done < n:  # the segment's pieces of rows: values lo+done .. lo+done+take
                    k = (lo + done) // row
                    first = lo + done - k * row
                    take = min(row - first, n - done)
                    at = indices[k] * row + first
                    grad = column(table, t, GRAD, lo + done, take, witness)
                    param = column(table, t, PARAM, at, take, witness)
                    exp_avg = column(table, t, EXP_AVG, at, take, witness)
                    exp_avg_sq = column(table, t, EXP_AVG_SQ, at, take, witness)
                    for i in range(take):
                        # g ← −g if maximize
                        g = load(grad, i)
                        if maximize:
                            g = -g
                        # m ← m + (1−β₁)(g − m), on the support only
                        old_exp_avg = load(exp_avg, i)
                        exp_avg_increment = rounded(rounded(g - old_exp_avg, witness) * w1, witness)
                        m = rounded(old_exp_avg + exp_avg_increment, witness)
                        store(exp_avg, i, m)
                        # v ← v + (1−β₂)(g² − v), likewise
                        old_exp_avg_sq = load(exp_avg_sq, i)
                        exp_avg_sq_increment = rounded(rounded(rounded(g * g, witness) - old_exp_avg_sq, witness) * w2, witness)
                        v = rounded(old_exp_avg_sq + exp_avg_sq_increment, witness)
                        store(exp_avg_sq, i, v)
                        # θ ← θ − γ√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε)  (numer and denom rebuilt as old + increment: m, v)
                        denom = rounded(rounded(np.sqrt(v), witness) + e, witness)
                        update = rounded(neg_step_size * rounded(m / denom, witness), witness)
                        store(param, i, load(param, i) + update)
                    done += take
            c = next_task(tasks)
    return 0


class SparseBatch(Batch):
    """A :class:`Batch` that also keeps, per row, the parameter, its state entry and its coalesced gradient."""

    __slots__ = ("params", "entries", "grads")

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__(dtype)
        self.params: list[torch.Tensor] = []
        self.entries: list[dict] = []
        self.grads: list[torch.Tensor] = []  # alive until the launch: the table holds their addresses


def _param_reason(p) -> str | None:
    if type(p) not in _PLAIN_TYPES:
        return f"tensor subclass {type(p).__name__}"
    if p.dtype not in STORAGE:
        return f"dtype {p.dtype}"
    if not p.is_cpu:
        return f"device {p.device}"
    if p.layout is not torch.strided:
        return f"layout {p.layout}"
    if p.dim() == 0:
        return "a 0-dim parameter"
    if not p.is_contiguous():
        return "a non-contiguous parameter"
    return None


def _grad_reason(p, grad) -> str | None:
    """Why this (uncoalesced or coalesced) gradient is not one the kernel covers."""
    if type(grad) not in _PLAIN_TYPES or grad.layout is not torch.sparse_coo or not grad.is_cpu:
        return "a gradient that is not a plain sparse COO CPU tensor"
    if grad.dtype is not p.dtype or grad.shape != p.shape:
        return "a gradient of another dtype or shape"
    if grad.sparse_dim() != 1:
        return f"a sparse gradient with sparse_dim={grad.sparse_dim()} (the kernel covers sparse_dim=1)"
    return None


def _coalesced_reason(indices, values) -> str | None:
    if not (indices.is_contiguous() and values.is_contiguous()):
        return "a coalesced gradient with non-contiguous indices or values"
    return None


def _state_reason(p, entry) -> str | None:
    try:
        step, exp_avg, exp_avg_sq = entry["step"], entry["exp_avg"], entry["exp_avg_sq"]
    except (KeyError, TypeError):
        return "state entry missing"
    if type(step) is not int or not 0 <= step < _MAX_STEP:
        return "a step that is not a Python int"
    for b in (exp_avg, exp_avg_sq):
        if type(b) not in _PLAIN_TYPES or b.dtype is not p.dtype or not b.is_cpu or b.layout is not torch.strided:
            return "a state buffer of another dtype, device or layout"
        if b.shape != p.shape or not b.is_contiguous():
            return "a state buffer shaped unlike its parameter or not contiguous"
    return None


_FETCH = operator.itemgetter(*BUFFERS)
_SPARSE_COO = torch.sparse_coo
_sparse_dim = torch.Tensor.sparse_dim
_coalesce = torch.Tensor.coalesce
_indices_of = torch.Tensor._indices
_values_of = torch.Tensor._values
_nnz = torch.Tensor._nnz
_numel = torch.Tensor.numel


class SparseReuse(Reuse):
    """A group's table kept from step to step: parameter and moment columns reused, gradient columns rebuilt.

    Each sparse gradient is a new tensor with its own rows, so every step
    coalesces them and writes their addresses, row counts and the new steps
    into the table; the parameters and moments are checked as for the dense
    kernels.  Anything unusual (an empty gradient, a step that is not an int,
    ...) builds a new table through :func:`gather_`.
    """

    __slots__ = ()

    def _remember_grads(self, grads: list[torch.Tensor]) -> None:
        pass  # rebuilt every step

    def _refresh_grads(self, params, state, batch: SparseBatch) -> bool:
        grads = list(map(_grad_of, params))
        if not (
            set(map(type, grads)) <= _PLAIN_TYPE_SET
            and set(map(_layout_of, grads)) == {_SPARSE_COO}
            and all(map(_is_cpu_of, grads))
            and list(map(_dtype_of, grads)) == self.dtypes
            and list(map(_shape_of, grads)) == self.shapes
            and set(map(_sparse_dim, grads)) == {1}
        ):
            return False
        entries = list(map(state.get, params))
        steps = [entry["step"] for entry in entries]
        if set(map(type, steps)) != {int} or min(steps) < 0 or max(steps) >= _MAX_STEP:
            return False
        # The moments are updated by scattering increments, so indices must be unique.
        coalesced = list(map(_coalesce, grads))
        indices, values = list(map(_indices_of, coalesced)), list(map(_values_of, coalesced))
        numels = list(map(_numel, values))
        if 0 in numels or not (all(map(_is_contiguous, indices)) and all(map(_is_contiguous, values))):
            return False  # an empty gradient writes nothing: the table's list of written tensors would change
        table = batch.table()
        table[:, NUMEL] = numels
        table[:, GRAD] = list(map(_data_ptr, values))
        table[:, INDICES] = list(map(_data_ptr, indices))
        table[:, NNZ] = list(map(_nnz, coalesced))
        table[:, STEP] = [step + 1 for step in steps]
        batch.numel = sum(numels)
        batch.entries = entries
        batch.grads = coalesced
        return True


#: the table keeper :func:`fastoptim.kernels.dispatch.update_group` gives :func:`gather_`
REUSE = SparseReuse


def gather_(params, state, options: dict, dry_run: bool = False, reuse: SparseReuse | None = None) -> Gathered:
    """Sort the parameters: kernel batches (gradients coalesced), and the ``rest`` left to the reference rule.

    Each sparse gradient is a new tensor with its own rows, coalesced here;
    ``reuse`` (the group's :class:`SparseReuse`) keeps the rest of the table
    from the last step.

    ``dry_run`` only sorts (nothing is coalesced): a parameter without state
    yet is judged on itself and its gradient; one without a sparse gradient
    (none yet, or a dense one, which the step rejects) on itself.
    """
    if reuse is not None and not dry_run:
        recalled = reuse.recall(params, state, BUFFERS, _FETCH, None)
        if recalled is not None:
            return recalled
    out = all_to_reference_if_repeated(params)
    if out.rest:
        return out
    batches = out.batches
    for p in params:
        entry = state.get(p)
        grad = p.grad
        reason = _param_reason(p)
        if reason is None and not (dry_run and (grad is None or not grad.is_sparse)):
            reason = "no gradient" if grad is None else _grad_reason(p, grad)
            if reason is None and dry_run and grad.is_coalesced():
                reason = _coalesced_reason(grad._indices(), grad._values())
        if reason is None and (entry or not dry_run):
            reason = _state_reason(p, entry)
        if reason is None and not dry_run:
            # The moments are updated by scattering increments, so indices must be unique.
            grad = grad.coalesce()
            indices, values = grad._indices(), grad._values()
            reason = _coalesced_reason(indices, values)
        if reason is not None:
            out.leave(p, reason)
            continue
        if dry_run:
            continue
        exp_avg, exp_avg_sq = entry["exp_avg"], entry["exp_avg_sq"]
        numel = values.numel()
        try:
            row = [
                numel, 0, p.data_ptr(), values.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
                indices.data_ptr(), grad._nnz(), math.prod(p.shape[1:]), p.shape[0], entry["step"] + 1,
            ]
        except RuntimeError:  # a tensor without storage (functorch wrapper, meta, ...)
            out.leave(p, "a tensor without accessible storage")
            continue
        batch = batches.get(p.dtype)
        if batch is None:
            batch = batches[p.dtype] = SparseBatch(p.dtype)
        batch.numel += numel
        batch.rows.append(row)
        batch.params.append(p)
        batch.entries.append(entry)
        batch.grads.append(grad)
        if numel:  # an empty gradient writes nothing (the reference returns after ``step += 1``)
            batch.written.extend((p, exp_avg, exp_avg_sq))
    if reuse is not None and not dry_run:
        reuse.remember(params, state, BUFFERS, _FETCH, out)
    return out


def run_(gathered, options: dict) -> None:
    """One SparseAdam step for every batch of ``gathered`` (the options are the reference rule's keywords)."""
    lr = float(options["lr"])
    beta1, beta2 = float(options["beta1"]), float(options["beta2"])
    # The reference's Python-float arithmetic, done once per group.
    hyper = (lr, beta1, 1 - beta1, beta2, 1 - beta2, float(options["eps"]), bool(options["maximize"]))
    for batch in gathered.batches.values():
        bad = launch(_sparse_adam_kernel, batch, hyper) if batch.numel else 0
        if bad:
            # An index out of range: the kernel wrote nothing; the reference rule
            # raises torch's IndexError (after updating the parameters before it).
            for p, entry in zip(batch.params, batch.entries):
                sparse_adam_reference(p, p.grad, entry, **options)
            continue
        for entry in batch.entries:
            entry["step"] += 1
        batch.grads = []  # the table is kept for the next step, the gradients need not be
