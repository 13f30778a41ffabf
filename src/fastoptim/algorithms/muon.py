r"""Muon: momentum orthogonalised by Newton–Schulz (Jordan et al., 2024), as torch.optim runs it.

Muon is meant for the 2-D weight matrices of hidden layers (embeddings,
heads, biases and norms go to AdamW or similar).  Each step replaces the
momentum by the nearest semi-orthogonal matrix, so every direction of the
update gets the same size whatever the gradient's spectrum:

.. math::

    B_t &\leftarrow \mathrm{lerp}(B_{t-1}, g_t, 1-\mu) = \mu B_{t-1} + (1-\mu) g_t \\
    \tilde B_t &= \mathrm{lerp}(g_t, B_t, \mu) \text{ if nesterov, else } B_t \\
    O_t &= \mathrm{NS}_k^{(a,b,c)}(\tilde B_t; \varepsilon) \approx U V^\top
        \quad\text{where } \tilde B_t = U S V^\top \\
    \theta_t &\leftarrow \theta_{t-1}(1 - \gamma\lambda) - \gamma' O_t, \qquad
    \gamma' = \begin{cases}
        \gamma\sqrt{\max(1, A/B)} & \text{adjust\_lr\_fn = None or "original"} \\
        0.2\,\gamma\sqrt{\max(A, B)} & \text{"match\_rms\_adamw"}
    \end{cases}

γ ``lr``, λ ``weight_decay`` (decoupled), μ ``momentum``, (a, b, c)
``ns_coefficients``, k ``ns_steps``, ε ``eps``, A × B the parameter's shape.
State per parameter: ``momentum_buffer`` (B).  :func:`newton_schulz` spells
out NS; :func:`newton_schulz_batched` runs it on many same-shaped matrices at
once (see "Speed" below).

Speed.  NS is matrix products, so the step is compute-bound.  ``Muon.step``
groups the matrices of a parameter group by shape (and memory layout) and
runs one batched NS per group with ``torch.bmm``/``torch.baddbmm``: one
kernel launch per product for all of them, instead of one per matrix.  NS
runs in bfloat16, exactly as torch does.  On CPU, for matrices whose both
dimensions are at least 17, the batched products are bit-identical to torch's
per-matrix ``mm``/``addmm`` (both go through oneDNN; tested over a sweep of
shapes and thread counts); smaller matrices keep the per-matrix sequence (see
``CPU_BATCH_MIN_DIM``).  So on CPU the default path reproduces
torch.optim.Muon bit for bit.

.. warning:: On CUDA, cuBLAS may pick a different algorithm for a batched
   product than for a single one, so the batched path can differ from torch in
   the last bit of a bfloat16 product, which NS's five iterations carry into
   the update (an update is a bfloat16 matrix with entries of size about 1,
   so a difference is about lr · 2⁻⁸ per step in a parameter).  Set
   ``optimizer.batch_newton_schulz = False`` (or ``FASTOPTIM_BACKEND=reference``)
   to run torch's per-matrix sequence exactly (:func:`muon_reference`).

.. warning:: Differences from torch: every check (complex, sparse, non-2-D
   gradient, ``ns_steps``/``ns_coefficients``) runs before anything changes,
   whereas torch may have updated earlier parameters and groups when it
   raises; and a group holding the same parameter twice falls back to the
   per-matrix path (its order of updates matters then).

References: K. Jordan et al., *Muon: An optimizer for hidden layers in
neural networks* (2024), https://kellerjordan.github.io/posts/muon/ and
https://github.com/KellerJordan/Muon; J. Liu et al., *Muon is Scalable for
LLM Training* (2025), https://arxiv.org/abs/2502.16982 (the
``match_rms_adamw`` scaling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import as_scalar, decoupled_decay_
from ._validate import check_at_least, check_lr_at_least_zero

__all__ = [
    "Muon",
    "adjusted_lr",
    "muon_batched_",
    "muon_reference",
    "newton_schulz",
    "newton_schulz_batched",
]

# Keller Jordan's quintic coefficients and ε (the defaults of torch.optim.Muon)
DEFAULT_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
DEFAULT_NS_STEPS = 5
EPS = 1e-7

# A batched NS holds a few bfloat16 copies of its batch (input, Gram matrices,
# output); batches are cut so that one copy has at most this many elements.
MAX_BATCH_ELEMENTS = 1 << 26

# On CPU, torch's bfloat16 bmm/baddbmm run matrices with a dimension of 16 or
# less through their own small-matrix kernels, which sum in another order than
# mm/addmm, so a result can differ from torch's in the last bit (found by a
# sweep of shapes); from 17 up both go through oneDNN and agree bit for bit.
# Smaller matrices are cheap, so they keep torch's per-matrix sequence.
CPU_BATCH_MIN_DIM = 17


def check_newton_schulz_args(ns_coefficients: Sequence[float], ns_steps: int) -> None:
    """torch's checks of the NS arguments (made at step time, with its messages)."""
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")


def newton_schulz(grad: Tensor, ns_coefficients: Sequence[float], ns_steps: int, eps: float) -> Tensor:
    r"""Orthogonalise a matrix by ``ns_steps`` quintic Newton–Schulz iterations, in bfloat16.

    With :math:`X_0 = G / \max(\lVert G\rVert_F, \varepsilon)` (so every
    singular value is at most 1) and, per iteration,

    .. math::

        A = X_k X_k^\top, \qquad X_{k+1} = a X_k + (b A + c A^2) X_k ,

    each singular value σ of X goes to :math:`p(\sigma) = a\sigma + b\sigma^3 + c\sigma^5`
    while the singular vectors stay: :math:`X_k \to U V^\top` for
    :math:`G = U S V^\top`.  The default (a, b, c) = (3.4445, −4.7750, 2.0315)
    maximise the slope at 0, so small singular values grow fast; the price is
    that the result's singular values end in roughly [0.7, 1.2] rather than at 1,
    which does not hurt training (Jordan, 2024).  A tall matrix is transposed
    first, so the Gram matrix A is the smaller of the two.

    This is torch's operation sequence (``mm``/``addmm`` in bfloat16); the
    result is a bfloat16 matrix of ``grad``'s shape.  As in torch, a bfloat16
    ``grad`` is not copied but divided by its norm in place: with bfloat16
    parameters and ``nesterov=False`` the momentum buffer is left normalised
    after each step (a torch quirk kept for parity).
    """
    check_newton_schulz_args(ns_coefficients, ns_steps)
    if grad.dim() != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.bfloat16()
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # bA + cA²
        x = torch.addmm(x, poly, x, beta=a)  # aX + (bA + cA²)X
    return x.T if tall else x


def _transposed_layout(t: Tensor) -> bool:
    """Whether a matrix is stored column-major (a transposed contiguous tensor)."""
    return not t.is_contiguous() and t.mT.is_contiguous()


def newton_schulz_batched(matrices: Tensor, ns_coefficients: Sequence[float], ns_steps: int, eps: float) -> Tensor:
    """:func:`newton_schulz` of every ``matrices[i]`` at once (a ``(n, rows, cols)`` bfloat16 tensor).

    Each product is one ``bmm``/``baddbmm`` over the whole batch.  Norms are
    taken matrix by matrix, so each one sums in the same order as torch's
    (a batched reduction may not).  ``matrices`` is divided in place; the
    result is a new ``(n, rows, cols)`` bfloat16 tensor (a transposed view for
    tall matrices, like :func:`newton_schulz`'s).
    """
    a, b, c = ns_coefficients
    tall = matrices.size(1) > matrices.size(2)
    x = matrices.mT if tall else matrices
    norms = torch.stack([m.norm() for m in x]).clamp_(min=eps)
    x.div_(norms[:, None, None])
    for _ in range(ns_steps):
        gram = torch.bmm(x, x.mT)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr, adjust_lr_fn: str | None, shape: Sequence[int]):
    """γ' = γ·√max(1, A/B) ("original", the default) or 0.2·γ·√max(A, B) ("match_rms_adamw")."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = 1.0
    return lr * ratio


def _momentum_update(grad: Tensor, buf: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """Update the buffer in place and return what NS orthogonalises (B̃)."""
    buf.lerp_(grad, 1 - momentum)
    return grad.lerp(buf, momentum) if nesterov else buf


def _apply_update(param: Tensor, ortho: Tensor, lr, weight_decay: float, adjust_lr_fn: str | None) -> None:
    """θ ← θ(1 − γλ) − γ'O."""
    decoupled_decay_(param, lr, weight_decay)
    param.add_(ortho, alpha=-adjusted_lr(lr, adjust_lr_fn, param.shape))


def muon_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: Sequence[float],
    ns_steps: int,
    eps: float,
    adjust_lr_fn: str | None,
) -> None:
    """One Muon step on one matrix, in place: torch's for-loop sequence, operation by operation."""
    lr = as_scalar(lr)
    update = _momentum_update(grad, state["momentum_buffer"], momentum, nesterov)
    _apply_update(param, newton_schulz(update, ns_coefficients, ns_steps, eps), lr, weight_decay, adjust_lr_fn)


def muon_batched_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: Sequence[float],
    ns_steps: int,
    eps: float,
    adjust_lr_fn: str | None,
    max_batch_elements: int = MAX_BATCH_ELEMENTS,
) -> None:
    """One Muon step on a group of distinct matrices, with one batched NS per shape.

    Matrices are bucketed by (shape, device, layout of gradient and buffer),
    which fixes the layout of B̃ and so of torch's bfloat16 copy of it; each
    bucket is cut into batches of at most ``max_batch_elements`` elements.  A
    batch's bfloat16 buffer has that same layout, so every matrix is
    orthogonalised from the same bits, in the same layout, as torch's.
    """
    lr = as_scalar(lr)
    buckets: dict[Any, list[int]] = {}
    for i, (grad, buf) in enumerate(zip(grads, momentum_buffers)):
        key = (grad.shape, grad.device, _transposed_layout(grad), _transposed_layout(buf))
        buckets.setdefault(key, []).append(i)
    for (shape, device, _, _), members in buckets.items():
        if device.type == "cpu" and min(shape) < CPU_BATCH_MIN_DIM:
            for i in members:
                update = _momentum_update(grads[i], momentum_buffers[i], momentum, nesterov)
                ortho = newton_schulz(update, ns_coefficients, ns_steps, eps)
                _apply_update(params[i], ortho, lr, weight_decay, adjust_lr_fn)
            continue
        per_batch = max(1, max_batch_elements // max(1, shape.numel()))
        for start in range(0, len(members), per_batch):
            chunk = members[start : start + per_batch]
            batch, updates = None, []
            for slot, i in enumerate(chunk):
                update = _momentum_update(grads[i], momentum_buffers[i], momentum, nesterov)
                if batch is None:
                    rows, cols = shape
                    if _transposed_layout(update):
                        batch = torch.empty((len(chunk), cols, rows), dtype=torch.bfloat16, device=device).mT
                    else:
                        batch = torch.empty((len(chunk), rows, cols), dtype=torch.bfloat16, device=device)
                batch[slot].copy_(update)  # the same rounding as torch's update.bfloat16()
                updates.append(update)
            ortho = newton_schulz_batched(batch, ns_coefficients, ns_steps, eps)
            for slot, i in enumerate(chunk):
                if updates[slot].dtype == torch.bfloat16:
                    # torch normalises a bfloat16 update in place (see newton_schulz); batch[slot] holds it
                    updates[slot].copy_(batch[slot])
                _apply_update(params[i], ortho[slot], lr, weight_decay, adjust_lr_fn)


class Muon(ElementwiseOptimizer):
    """Muon for 2-D parameters; torch.optim.Muon's interface.

    Args:
        params: 2-D tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: learning rate γ (float or 1-element tensor; default 1e-3).
        weight_decay: decoupled weight decay λ (default 0.1).
        momentum: μ (default 0.95).
        nesterov: orthogonalise the Nesterov look-ahead ``lerp(g, B, μ)`` (default True).
        ns_coefficients: (a, b, c) of the quintic NS polynomial (default (3.4445, -4.7750, 2.0315)).
        eps: ε, the floor of the Frobenius norm NS divides by (default 1e-7).
        ns_steps: NS iterations k (default 5; must be < 100).
        adjust_lr_fn: ``None``/``"original"`` (γ·√max(1, A/B)) or ``"match_rms_adamw"`` (0.2·γ·√max(A, B)).

    Set ``batch_newton_schulz = False`` (on the class or an instance), or force
    the reference backend (``FASTOPTIM_BACKEND=reference``), to run torch's
    per-matrix sequence instead of the batched one.

    Example::

        >>> matrices = [p for p in model.parameters() if p.ndim == 2]
        >>> others = [p for p in model.parameters() if p.ndim != 2]
        >>> opt = fastoptim.Muon(matrices, lr=0.02)
        >>> opt_rest = fastoptim.AdamW(others, lr=3e-4)
    """

    rule = staticmethod(muon_reference)
    supports_complex = False
    rule_options = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "ns_steps", "eps", "adjust_lr_fn")
    _per_element_state = ("momentum_buffer",)
    #: run one batched NS per shape (False: torch's per-matrix sequence)
    batch_newton_schulz: ClassVar[bool] = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS,
        eps: float = EPS,
        ns_steps: int = DEFAULT_NS_STEPS,
        adjust_lr_fn: str | None = None,
    ) -> None:
        check_lr_at_least_zero(lr)
        check_at_least("momentum", momentum)
        check_at_least("weight decay", weight_decay)
        if adjust_lr_fn is not None and adjust_lr_fn not in ("original", "match_rms_adamw"):
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
        )
        super().__init__(params, defaults)
        # as torch: only the constructor's parameters are checked (add_param_group's fail at step)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()}"
                    )

    def _check_param(self, param: Tensor, group: dict) -> None:
        if torch.is_complex(param):
            raise RuntimeError("Muon does not support complex parameters")
        if param.grad.ndim != 2:
            raise ValueError("Param gradient must be a 2D matrix")
        check_newton_schulz_args(group["ns_coefficients"], group["ns_steps"])

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {"momentum_buffer": torch.zeros_like(param.grad, memory_format=torch.preserve_format)}

    def _update_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """All of a group's matrices at once: Newton–Schulz batched over same-shaped matrices."""
        from ..kernels.dispatch import requested_backend

        if not self.batch_newton_schulz or requested_backend() != "auto" or len(set(params)) != len(params):
            # per matrix through the dispatcher: the reference rule ("reference"), the error of a
            # strict "numba" request (Muon has no numba kernel), or a matrix listed twice, which
            # torch updates twice in a row
            super()._update_group(group, params)
            return
        buffers = [self.state[p]["momentum_buffer"] for p in params]
        muon_batched_(params, [p.grad for p in params], buffers, **self._rule_options(group))
