r"""L-BFGS: limited-memory BFGS (Liu & Nocedal, 1989), as torch.optim.LBFGS runs it.

All parameters are seen as one flat vector θ (complex ones as their real and
imaginary parts).  One ``step(closure)`` runs up to ``max_iter`` iterations:

.. math::

    d_k &= \begin{cases} -g_k & k = 1 \\ -H_k g_k & k > 1 \end{cases}
        && \text{(two-loop recursion over the last } m \text{ pairs)} \\
    t_k &= \begin{cases} \min(1, 1/\lVert g_1\rVert_1)\,\gamma & k = 1 \\ \gamma & k > 1 \end{cases}
        && \text{(or a strong-Wolfe line search starting there)} \\
    \theta_{k+1} &= \theta_k + t_k d_k \\
    s_k &= t_k d_k, \quad y_k = g_{k+1} - g_k, \quad
        \text{kept when } y_k^\top s_k > 10^{-10}, \quad
        H^0 = \frac{y_k^\top s_k}{y_k^\top y_k} I

γ lr, m ``history_size``, g the flat gradient.  An iteration stops the step
early when ``max|g| ≤ tolerance_grad``, when the slope ``gᵀd > −tolerance_change``,
when ``max|t d| ≤ tolerance_change`` or ``|f_k − f_{k−1}| < tolerance_change``, or
after ``max_eval`` closure evaluations.  The iteration counter, history and last
direction survive between ``step`` calls, so the next call continues the run.

State: L-BFGS has one global state, kept (as in torch) under the *first*
parameter so that ``state_dict``/``load_state_dict`` move it: ``func_evals``,
``n_iter``, ``d`` (last direction), ``t`` (last step length), ``old_dirs`` (y),
``old_stps`` (s), ``ro`` (1/yᵀs), ``H_diag`` (H⁰'s scale), ``prev_flat_grad``,
``prev_loss`` and ``al`` (the two-loop's scratch coefficients).

.. warning:: As in torch.optim, only one parameter group is allowed, every call
   needs a closure, and ``lr`` scales the step rather than being a learning rate
   in the SGD sense (the default is 1).

.. warning:: Unlike torch.optim 2.13, a parameter whose gradient is not
   contiguous (a transposed weight) is flattened with a copy instead of raising
   ``RuntimeError: view size is not compatible``; results are otherwise identical.

Memory: torch.optim.LBFGS allocates new n-element tensors in every iteration
(the flat gradient, ``y``, ``s``, the direction, the line search's copy of the
parameters).  This implementation computes the same values, op for op, into
buffers it keeps between steps: two flat-gradient buffers used in turn (the
newer is ``prev_flat_grad``), the direction buffer (``d``), a spare
``(y, s)`` pair, and the ``(y, s)`` tensors that drop out of a full history,
which are reused for the next pair.  Once the history is full a step without
line search allocates no n-element tensor; the price is about three n-element
buffers kept between steps that torch frees.  The state still holds one tensor
per entry (``old_dirs``/``old_stps`` are lists of separate tensors, as in
torch), so ``state_dict`` is laid out exactly like torch's and loads in either
library.  Only tensors this optimizer allocated itself are written into:
tensors that came in through ``load_state_dict`` are read, never overwritten.
As in torch, ``state_dict()`` returns the live state, not a snapshot: copy it
(``torch.save``, ``copy.deepcopy``) before stepping on if it must not change.

Speed: below :data:`FUSED_MIN_NUMEL` elements every value is computed by
torch's own ops, in torch's order: the results are torch.optim.LBFGS's bit for
bit.  From there on (CPU, float32/float64, default backend) the new pair and
the two-loop recursion run as fused passes (:mod:`fastoptim.kernels.cpu.lbfgs`)
whose dot products are float64 sums in the kernel's order: the results agree
with torch's to rounding.  ``FASTOPTIM_BACKEND=reference`` keeps torch's ops
at any size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..kernels.memory import flat_buffer
from ..optimizer import Optimizer
from ._line_search import strong_wolfe
from ._rules import as_scalar
from ._validate import check_lr

__all__ = ["LBFGS", "two_loop_direction"]


def two_loop_direction(
    flat_grad: Tensor,
    old_dirs: list[Tensor],
    old_stps: list[Tensor],
    ro: list[Tensor],
    H_diag,
    al: list,
    out: Tensor | None = None,
) -> Tensor:
    r"""The L-BFGS direction :math:`d = -H g` by the two-loop recursion (Nocedal & Wright, Alg. 7.4).

    With the stored pairs :math:`(s_i, y_i)` (``old_stps``, ``old_dirs``),
    :math:`\rho_i = 1/y_i^\top s_i` (``ro``) and the initial scale
    :math:`h = H^0` (``H_diag``), from the newest pair to the oldest:

    .. math::

        q &\leftarrow -g \\
        \alpha_i &= \rho_i\, s_i^\top q, \quad q \leftarrow q - \alpha_i y_i
            \qquad (i = n-1, \dots, 0) \\
        r &\leftarrow h\, q \\
        \beta_i &= \rho_i\, y_i^\top r, \quad r \leftarrow r + (\alpha_i - \beta_i) s_i
            \qquad (i = 0, \dots, n-1)

    and :math:`d = r`.  The :math:`\alpha_i` are written into ``al`` (the
    ``state["al"]`` scratch list, kept for torch's state layout).  With
    ``out`` (a tensor like ``flat_grad``, aliasing none of the inputs) the
    direction is computed in it, with the same operations and the same bits.
    """
    count = len(old_dirs)
    q = flat_grad.neg() if out is None else torch.neg(flat_grad, out=out)
    for i in range(count - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q.add_(old_dirs[i], alpha=-al[i])
    # The same multiplication in place: one n-element temporary less.
    r = torch.mul(q, H_diag) if out is None else q.mul_(H_diag)
    for i in range(count):
        be_i = old_dirs[i].dot(r) * ro[i]
        r.add_(old_stps[i], alpha=al[i] - be_i)
    return r


#: the smallest flat vector whose passes run as the fused CPU kernels (:mod:`fastoptim.kernels.cpu.lbfgs`)
#: by default; below it torch's ops, whose results are torch.optim's bit for bit, are fast anyway
FUSED_MIN_NUMEL = 1 << 20


def _flat_kernels(flat: Tensor, numel_at_least: int | None = None) -> Any | None:
    """The fused kernel module for passes over ``flat``, or None where torch's ops run.

    The kernels cover contiguous float32/float64 CPU vectors.  The
    ``"reference"`` backend (and ``torch.compile``) never takes them; the
    strict ``"numba"`` backend takes them whatever the size (tests use it),
    ``"auto"`` from ``numel_at_least`` elements (default :data:`FUSED_MIN_NUMEL`).
    """
    from ..kernels.dispatch import requested_backend

    backend = requested_backend()
    if backend == "reference" or flat.device.type != "cpu" or flat.dtype not in (torch.float32, torch.float64):
        return None
    if backend == "auto" and flat.numel() < (FUSED_MIN_NUMEL if numel_at_least is None else numel_at_least):
        return None
    try:
        from ..kernels.cpu import lbfgs as kernels
    except ImportError:  # numba missing: torch's ops still work
        return None
    return kernels


def _abs_max(x: Tensor) -> Tensor:
    """``x.abs().max()`` without the n-element ``abs`` temporary (the same value: a max is exact)."""
    if x.numel() == 0 or x.is_complex():
        return x.abs().max()  # torch's error / complex magnitudes
    kernels = _flat_kernels(x, numel_at_least=1 << 16) if x.dim() == 1 and x.is_contiguous() else None
    if kernels is not None:
        return kernels.abs_max(x)  # the largest magnitude's bits, in one pass at memory speed
    # one read of x (vector_norm(x, inf) is ~10x slower on CPU); NaN propagates through both
    low, high = torch.aminmax(x)
    return torch.maximum(low.neg_(), high)


class _Flat:
    """One flat n-element buffer and its per-parameter views (complex parameters as real pairs), made when first used."""

    __slots__ = ("flat", "_shapes", "_views")

    def __init__(self, flat: Tensor, shapes: list[tuple[int, ...]]):
        self.flat = flat
        self._shapes = shapes
        self._views: list[Tensor] | None = None

    @property
    def views(self) -> list[Tensor]:
        if self._views is None:
            self._views = _views_of(self.flat, self._shapes)
        return self._views


def _views_of(flat: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    views, offset = [], 0
    for shape in shapes:
        numel = 1
        for size in shape:
            numel *= size
        views.append(flat[offset : offset + numel].view(shape))
        offset += numel
    return views


class LBFGS(Optimizer):
    """L-BFGS with optional strong-Wolfe line search; torch.optim.LBFGS's interface.

    Args:
        params: tensors or ``(name, tensor)`` pairs; a single parameter group only.
        lr: step-length scale γ (float or 1-element tensor; default 1).
        max_iter: iterations per ``step`` call (default 20).
        max_eval: closure evaluations per ``step`` call (default ``max_iter * 5 // 4``).
        tolerance_grad: stop when ``max|g|`` is at most this (default 1e-7).
        tolerance_change: stop when the loss, the step or the slope change less (default 1e-9).
        history_size: curvature pairs kept (default 100).
        line_search_fn: ``None`` (fixed step) or ``"strong_wolfe"``.

    Example::

        >>> opt = fastoptim.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = loss_fn(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> opt.step(closure)
    """

    #: attributes holding the reusable buffers: rebuilt, not copied, by pickle / deepcopy
    _BUFFER_ATTRIBUTES = (
        "_layout", "_grad_bufs", "_dir_buf", "_x_bufs", "_spare_pair", "_owned", "_gram", "_abs_maxes", "_in_history",
    )  # fmt: skip

    def __init__(
        self,
        params,
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        check_lr(lr)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        self._numel_cache = None
        self._reset_buffers()

    # -------------------------------------------------- reusable buffers
    def _reset_buffers(self) -> None:
        self._layout = None  # (dtype, device, shapes) the buffers below were made for
        self._grad_bufs: list[_Flat] = []  # up to two flat-gradient buffers, used in turn
        self._dir_buf: _Flat | None = None  # the direction d
        self._x_bufs: list[Tensor] | None = None  # the line search's copy of the parameters
        self._spare_pair: tuple[Tensor, Tensor] | None = None  # (y, s) buffers for the next pair
        # id -> tensor of the history tensors this optimizer allocated (kept alive, so ids stay unique)
        self._owned: dict[int, Tensor] = {}
        # the fused path's dot products among the stored pairs and with the gradient (kernels.cpu.lbfgs.PairGram)
        self._gram = None
        # (tensor, its version, max|tensor|) for the last two vectors whose pass also took the max
        self._abs_maxes: list[tuple[Tensor, int, Tensor]] = []
        # id -> the _Flat of an own buffer now holding a curvature vector: its views are made once, not per pair
        self._in_history: dict[int, _Flat] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in self._BUFFER_ATTRIBUTES:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._reset_buffers()

    def state_dict(self) -> dict[str, Any]:
        """torch's layout; the tensors it holds are not written into by later steps.

        The dict is the live state (as in torch), but the buffers it exports
        are handed over: the next step computes into new ones.
        """
        state_dict = super().state_dict()
        self._disown()
        return state_dict

    def _disown(self) -> None:
        """Stop reusing the buffers that are in the state now (they were exported)."""
        state = self.state.get(self._params[0], {})
        prev = state.get("prev_flat_grad")
        self._grad_bufs = [buf for buf in self._grad_bufs if buf.flat is not prev]
        if self._dir_buf is not None and self._dir_buf.flat is state.get("d"):
            self._dir_buf = None
        self._forget_foreign((), ())  # keeps the spare pair only

    def _real_params(self) -> list[Tensor]:
        return [torch.view_as_real(p) if p.is_complex() else p for p in self._params]

    def _flat_layout(self) -> tuple:
        """The flat vector's (dtype, device, per-parameter shapes, per-parameter dtypes)."""
        real_params = self._real_params()
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in real_params))
        return dtype, real_params[0].device, [tuple(p.shape) for p in real_params], [p.dtype for p in real_params]

    def _check_layout(self) -> None:
        """Drop the buffers if they were made for another flat vector (parameters changed shape or dtype)."""
        layout = self._flat_layout()
        if layout != self._layout:
            self._reset_buffers()
            self._layout = layout

    def _new_flat(self) -> _Flat:
        # from the parameters themselves, not self._layout: under torch.compile an
        # attribute set in this step may not be visible yet after a graph break
        dtype, device, shapes, _ = self._flat_layout()
        return _Flat(flat_buffer(self._numel(), dtype, device), shapes)

    def _flat_around(self, flat: Tensor) -> _Flat:
        """An own flat tensor (a curvature vector leaving the history) as a buffer with its views."""
        buf = self._in_history.pop(id(flat), None)
        return buf if buf is not None and buf.flat is flat else _Flat(flat, self._flat_layout()[2])

    def _grad_buffer(self, busy: Tensor | None) -> _Flat:
        """An own flat-gradient buffer other than ``busy`` (the one holding ``prev_flat_grad``)."""
        for buf in self._grad_bufs:
            if buf.flat is not busy:
                return buf
        buf = self._new_flat()
        self._grad_bufs.append(buf)
        return buf

    def _direction_buffer(self) -> _Flat:
        if self._dir_buf is None:
            self._dir_buf = self._new_flat()
        return self._dir_buf

    def _views(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of the flat vector ``flat`` (cached for the own buffers)."""
        for buf in (*self._grad_bufs, self._dir_buf):
            if buf is not None and buf.flat is flat:
                return buf.views
        return _views_of(flat, [tuple(p.shape) for p in self._real_params()])

    # -------------------------------------------------- the flat view of all parameters
    # Complex parameters count as their (real, imaginary) pairs, in memory order.

    def _numel(self) -> int:
        if self._numel_cache is None:
            self._numel_cache = sum(2 * p.numel() if torch.is_complex(p) else p.numel() for p in self._params)
        return self._numel_cache

    def _gather_flat_grad(self, out: _Flat | None = None) -> Tensor:
        """All gradients as one flat vector (zeros for a parameter without one).

        Without ``out`` a new tensor (``torch.cat``, as torch does); with it,
        the gradients are copied into ``out``'s views (the same values: a copy
        converts dtypes exactly as ``cat`` does).
        """
        if out is None:
            views = []
            for p in self._params:
                if p.grad is None:
                    view = p.new(p.numel()).zero_()
                elif p.grad.is_sparse:
                    view = p.grad.to_dense().view(-1)
                else:
                    view = p.grad.reshape(-1)
                if torch.is_complex(view):
                    view = torch.view_as_real(view).view(-1)
                views.append(view)
            return torch.cat(views, 0)
        targets, sources = [], []
        for p, view in zip(self._params, out.views, strict=True):
            grad = p.grad
            if grad is None:
                view.zero_()
                continue
            if grad.is_sparse:
                grad = grad.to_dense()
            targets.append(view)
            sources.append(torch.view_as_real(grad) if grad.is_complex() else grad)
        whole = len(sources) == len(self._params) and _fits_flat(out.flat, sources)
        kernels = _flat_kernels(out.flat, numel_at_least=1 << 16) if whole else None
        if kernels is not None:
            # the copy and the max|g| the stopping test needs, in one pass
            self._note_abs_max(out.flat, kernels.gather_abs_max(out.flat, sources))
        elif targets:
            torch._foreach_copy_(targets, sources)
        return out.flat

    def _add_grad(self, step_size, update: Tensor) -> None:
        """``θ ← θ + step_size · update`` for the flat ``update`` (one foreach call on its views)."""
        views = self._views(update)
        if sum(v.numel() for v in views) != self._numel():
            raise AssertionError(f"Expected offset {update.numel()} to equal {self._numel()}")
        # the CPU foreach add_ is add_ on each pair: the same bits as torch's loop
        torch._foreach_add_(self._real_params(), views, alpha=step_size)

    def _clone_param(self) -> list[Tensor]:
        """The parameters' values, in buffers reused from one line search to the next."""
        if self._x_bufs is None:
            self._x_bufs = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in self._params]
        torch._foreach_copy_(self._x_bufs, list(self._params))
        return self._x_bufs

    def _set_param(self, params_data: list[Tensor]) -> None:
        torch._foreach_copy_(list(self._params), list(params_data))

    def _directional_evaluate(self, closure: Callable, x: list[Tensor], t, d: Tensor) -> tuple[float, Tensor]:
        """Loss and flat gradient at ``x + t d``; the parameters are put back to ``x``.

        The gradient is a new tensor each time: the line search keeps several.
        """
        self._add_grad(t, d)
        loss = float(closure())
        flat_grad = self._gather_flat_grad()
        self._set_param(x)
        return loss, flat_grad

    # -------------------------------------------------- curvature pairs
    def _pair_buffers(self) -> tuple[Tensor, Tensor]:
        """Buffers for the next ``(y, s)``: the spare pair, else new tensors."""
        if self._spare_pair is None:
            y, s = self._new_flat().flat, self._new_flat().flat
            self._owned[id(y)], self._owned[id(s)] = y, s
            self._spare_pair = (y, s)
        return self._spare_pair

    def _is_owned(self, t: Tensor) -> bool:
        return self._owned.get(id(t)) is t

    def _forget_foreign(self, old_dirs, old_stps) -> None:
        """Keep in ``_owned`` only the tensors still in the history or spare (the state may have been replaced)."""
        keep = {id(t) for t in (*(old_dirs or ()), *(old_stps or ()), *(self._spare_pair or ()))}
        self._owned = {k: t for k, t in self._owned.items() if k in keep}
        self._in_history = {k: buf for k, buf in self._in_history.items() if k in self._owned}

    def _take_for_pair(self, prev_flat_grad: Tensor, d: Tensor) -> tuple[_Flat, _Flat] | None:
        """The buffers holding ``prev_flat_grad`` and ``d``, taken out of use, if both are this optimizer's own.

        Neither is read after the new pair is formed, so the fused pass can
        write ``y`` over the one and ``s`` over the other (no memory fetched
        only to be overwritten, and two flat buffers fewer).  Tensors handed out
        by ``state_dict()`` or loaded into the state are never own buffers.
        """
        grad_buf = next((buf for buf in self._grad_bufs if buf.flat is prev_flat_grad), None)
        if grad_buf is None or self._dir_buf is None or self._dir_buf.flat is not d or d is prev_flat_grad:
            return None
        self._grad_bufs.remove(grad_buf)
        dir_buf, self._dir_buf = self._dir_buf, None
        return grad_buf, dir_buf

    def _remember_pair(self, flat_grad, prev_flat_grad, d, t, old_dirs, old_stps, ro, H_diag, history_size):
        """Store the curvature pair ``y = g − g_prev``, ``s = t d`` if ``yᵀs > 1e-10`` (dropping the oldest).

        Returns the new scale of the initial inverse Hessian, ``yᵀs / yᵀy``, or
        ``H_diag`` unchanged when the pair is rejected.  The fused pass writes
        ``y`` and ``s`` over ``prev_flat_grad`` and ``d`` when those are own
        buffers (:meth:`_take_for_pair`), and a pair that leaves a full history
        then becomes the gradient and direction buffers; otherwise ``y`` and
        ``s`` are computed into the spare pair, and a pair that leaves becomes
        the spare.  Either way only tensors this optimizer allocated are reused.
        """
        kernels = _flat_kernels(flat_grad) if _fits(flat_grad, prev_flat_grad, d) else None
        with_dots = kernels is not None and _fits(flat_grad, *old_dirs, *old_stps)
        gram = None
        taken = self._take_for_pair(prev_flat_grad, d) if with_dots else None
        y, s = (prev_flat_grad, d) if taken else self._pair_buffers()
        if kernels is None:
            torch.sub(flat_grad, prev_flat_grad, out=y)
            torch.mul(d, t, out=s)
            ys, yy = y.dot(s), None
        elif with_dots:
            # one pass that also takes every dot product the direction needs; the
            # float64 sums rounded to the vectors' dtype, as torch's dots return them
            gram = self._gram if self._gram is not None and self._gram.follows(old_dirs, old_stps) else None
            gram = gram or kernels.PairGram(old_dirs, old_stps)
            # a full history drops its oldest pair if the new one is kept: the pass
            # leaves it out (two vectors fewer), and a rejected pair costs one
            # iteration of the two-loop passes (gᵀs₀, gᵀy₀ are not known then)
            leaving = 1 if len(old_dirs) == history_size else 0
            sums = kernels.pair_with_dots(y, s, flat_grad, prev_flat_grad, d, t, old_dirs[leaving:], old_stps[leaving:])
            ys, yy = (torch.tensor(v, dtype=y.dtype) for v in sums[:2])
        else:
            ys, yy = (torch.tensor(v, dtype=y.dtype) for v in kernels.new_pair(y, s, flat_grad, prev_flat_grad, d, t))
        kept, dropped = bool(ys > 1e-10), False
        if kept:
            if taken:
                self._owned[id(y)], self._owned[id(s)] = y, s
                self._in_history[id(y)], self._in_history[id(s)] = taken
            else:
                self._spare_pair = None
            if len(old_dirs) == history_size:
                y_old, s_old = old_dirs.pop(0), old_stps.pop(0)
                ro.pop(0)
                dropped = True
                if self._is_owned(y_old) and self._is_owned(s_old) and y_old is not s_old:
                    self._reuse(y_old, s_old, taken is not None)
            old_dirs.append(y)
            old_stps.append(s)
            ro.append(1.0 / ys)
        elif taken:  # rejected: the buffers go back to their roles (their old contents are not needed)
            self._grad_bufs.append(taken[0])
            self._dir_buf = taken[1]
        self._gram = gram
        if gram is not None:
            gram.update(sums, flat_grad, kept, dropped, old_dirs, old_stps, left_out=leaving)
        if not kept:
            return H_diag  # the spare pair stays spare
        return ys / (y.dot(y) if yy is None else yy)

    def _reuse(self, y_old: Tensor, s_old: Tensor, as_buffers: bool) -> None:
        """An own pair that left the history: the next gradient and direction buffers, or the spare pair."""
        if as_buffers:
            del self._owned[id(y_old)], self._owned[id(s_old)]  # buffers now, not history
            self._grad_bufs.append(self._flat_around(y_old))
            self._dir_buf = self._flat_around(s_old)
        else:
            self._spare_pair = (y_old, s_old)

    def _direction(self, flat_grad, old_dirs, old_stps, ro, H_diag, al, step=None) -> tuple[Tensor, Tensor | None, bool]:
        """``(d, gᵀd, moved)``: the two-loop direction in the own buffer, and the slope where the fused passes computed it.

        ``step = (t, tolerance_change)`` for a fixed step of length t: where
        the fused passes know from the dot products that gᵀd ≤ −tolerance
        (the step goes ahead), the pass that forms d also moves the
        parameters by t·d, and ``moved`` is True.
        """
        out = self._direction_buffer().flat
        kernels = _flat_kernels(flat_grad) if old_dirs and _fits(flat_grad, *old_dirs, *old_stps) else None
        gram = self._gram
        if kernels is not None and gram is not None and gram.ready_for(flat_grad, old_dirs, old_stps):
            # the recursion on the dot products the pair's pass took, then one pass over the pairs
            a, b = gram.coefficients(ro, H_diag, al, flat_grad.dtype)
            gtd = torch.tensor(gram.slope(a, b, H_diag, flat_grad.dtype), dtype=flat_grad.dtype)
            moving = None
            if step is not None and not gtd > -step[1]:
                params = self._real_params()
                moving = (params, step[0]) if _fits_flat(out, params) else None
            top = kernels.combine(out, flat_grad, old_dirs, old_stps, a, b, H_diag, step=moving)
            self._note_abs_max(out, torch.tensor(top, dtype=out.dtype))
            return out, gtd, moving is not None
        if kernels is None:
            return two_loop_direction(flat_grad, old_dirs, old_stps, ro, H_diag, al, out=out), None, False
        gtd = kernels.two_loop_direction(flat_grad, old_dirs, old_stps, ro, H_diag, al, out)
        return out, gtd, False

    def _note_abs_max(self, x: Tensor, top: Tensor) -> None:
        """Remember ``max|x|`` (a 0-dim tensor), taken by the pass that wrote ``x``: the last direction's and gradient's are kept."""
        self._abs_maxes = [(x, x._version, top), *(kept for kept in self._abs_maxes[:1] if kept[0] is not x)]

    def _known_abs_max(self, x: Tensor) -> Tensor | None:
        """max|x| as a 0-dim tensor, if the pass that wrote ``x`` took it and ``x`` has not changed since."""
        for tensor, version, top in self._abs_maxes:
            if tensor is x and version == x._version:
                return top
        return None

    def _abs_max(self, x: Tensor) -> Tensor:
        """``x.abs().max()``: the one the pass that wrote ``x`` took, or a pass of its own."""
        top = self._known_abs_max(x)
        return _abs_max(x) if top is None else top

    # -------------------------------------------------- the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations.

        Args:
            closure: re-evaluates the model and returns the loss (required).
        """
        if len(self.param_groups) != 1:
            raise AssertionError(f"Expected exactly one param_group, but got {len(self.param_groups)}")
        closure = torch.enable_grad()(closure)

        group = self.param_groups[0]
        lr = as_scalar(group["lr"])
        max_iter = group["max_iter"]
        max_eval = group["max_eval"]
        tolerance_grad = group["tolerance_grad"]
        tolerance_change = group["tolerance_change"]
        line_search_fn = group["line_search_fn"]
        history_size = group["history_size"]

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1

        self._check_layout()
        d = state.get("d")
        t = state.get("t")
        old_dirs = state.get("old_dirs")
        old_stps = state.get("old_stps")
        ro = state.get("ro")
        H_diag = state.get("H_diag")
        prev_flat_grad = state.get("prev_flat_grad")
        prev_loss = state.get("prev_loss")
        self._forget_foreign(old_dirs, old_stps)

        flat_grad = self._gather_flat_grad(self._grad_buffer(busy=prev_flat_grad))
        if self._abs_max(flat_grad) <= tolerance_grad:
            return orig_loss  # already optimal: the saved history is left as it was

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1

            # ---- direction (into the own direction buffer: the old d is only needed for s)
            gtd = None  # the slope gᵀd, when the fused two-loop computed it
            moved = False  # whether the pass that formed d also took the (fixed) step
            if state["n_iter"] == 1:
                d = torch.neg(flat_grad, out=self._direction_buffer().flat)
                old_dirs, old_stps, ro = [], [], []
                self._forget_foreign(old_dirs, old_stps)
                H_diag = 1
            else:
                H_diag = self._remember_pair(
                    flat_grad, prev_flat_grad, d, t, old_dirs, old_stps, ro, H_diag, history_size
                )
                if "al" not in state:
                    state["al"] = [None] * history_size
                # a fixed step is t = lr from the second iteration on
                fixed_step = (lr, tolerance_change) if line_search_fn is None else None
                d, gtd, moved = self._direction(flat_grad, old_dirs, old_stps, ro, H_diag, state["al"], fixed_step)

            # torch copies g into prev_flat_grad; the buffers swap roles instead
            # (the next gradient goes into the other one)
            prev_flat_grad = flat_grad
            prev_loss = loss

            # ---- step length
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
            if gtd is None:
                gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break  # not a descent direction (to tolerance)

            ls_func_evals = 0
            if line_search_fn is not None:
                if line_search_fn != "strong_wolfe":
                    raise RuntimeError("only 'strong_wolfe' is supported")
                x_init = self._clone_param()

                def obj_func(x, step, direction):
                    return self._directional_evaluate(closure, x, step, direction)

                loss, flat_grad, t, ls_func_evals = strong_wolfe(
                    obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
                )
                self._add_grad(t, d)
                opt_cond = self._abs_max(flat_grad) <= tolerance_grad
            else:
                if not moved:
                    self._add_grad(t, d)
                # The last iteration does not re-evaluate: in a stochastic
                # setting the next step() call evaluates anyway.
                if n_iter != max_iter:
                    loss = float(closure())
                    flat_grad = self._gather_flat_grad(self._grad_buffer(busy=prev_flat_grad))
                    opt_cond = self._abs_max(flat_grad) <= tolerance_grad
                    ls_func_evals = 1

            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            # ---- stopping tests
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if _step_abs_max(d, t, self._known_abs_max(d)) <= tolerance_change:
                break  # the step no longer moves the parameters
            if abs(loss - prev_loss) < tolerance_change:
                break  # the loss no longer changes

        state.update(
            d=d,
            t=t,
            old_dirs=old_dirs,
            old_stps=old_stps,
            ro=ro,
            H_diag=H_diag,
            prev_flat_grad=prev_flat_grad,
            prev_loss=prev_loss,
        )
        return orig_loss


def _fits_flat(flat: Tensor, sources: list[Tensor]) -> bool:
    """Whether ``sources`` are contiguous real tensors of ``flat``'s dtype and device that fill it, for the fused gather."""
    return sum(source.numel() for source in sources) == flat.numel() and all(
        source.dtype == flat.dtype and source.device == flat.device and source.is_contiguous() for source in sources
    )


def _fits(flat: Tensor, *others: Tensor) -> bool:
    """Whether ``others`` are contiguous vectors like ``flat`` (loaded state may not be), for the fused passes."""
    return flat.is_contiguous() and all(
        o.dtype == flat.dtype and o.shape == flat.shape and o.device == flat.device and o.is_contiguous() for o in others
    )


def _step_abs_max(d: Tensor, t, abs_max: Tensor | None = None):
    """``d.mul(t).abs().max()`` as ``|t · max|d||``, without two n-element temporaries.

    Rounding is monotone, so ``max_i |fl(t d_i)| = |fl(t max_i |d_i|)|`` when both
    are computed in the same dtype; NaN/inf cases compare the same way against
    the tolerance (both sides are NaN or ±inf).  A tensor ``t`` of another
    dtype would change the product's dtype on a 0-dim tensor: then torch's
    expression is used.  ``abs_max``: max|d| when the pass that wrote d took it.
    """
    if isinstance(t, Tensor) and (t.dtype != d.dtype or t.dim() != 0):
        return d.mul(t).abs().max()
    return (_abs_max(d) if abs_max is None else abs_max).mul(t).abs()
