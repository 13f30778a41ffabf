r"""Adafactor: adaptive steps with a factored second moment (Shazeer & Stern, 2018), as torch.optim runs it.

For a parameter with two or more dimensions, Adafactor keeps only the row and
column means of the squared gradient over the last two dimensions (``n + m``
numbers per ``n × m`` matrix instead of ``n·m``) and rebuilds a rank-1
estimate of the second moment from them.  Vectors and scalars keep a full EMA.

.. math::

    G_t &\leftarrow -g_t \text{ if maximize, else } g_t \\
    \hat\beta_{2,t} &= 1 - t^{\tau}, \qquad
        \rho_t = \min(\gamma, 1/\sqrt t), \qquad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \\
    \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \quad\text{(decoupled weight decay)} \\
    R_t &\leftarrow \mathrm{lerp}(R_{t-1}, \operatorname{mean}_{\text{cols}} G_t^2, t^{\tau}), \quad
    C_t \leftarrow \mathrm{lerp}(C_{t-1}, \operatorname{mean}_{\text{rows}} G_t^2, t^{\tau}) \\
    \hat V_t &= \frac{R_t C_t}{\max(\operatorname{mean}_{\text{rows}} R_t, \epsilon_1)}
        \quad\text{(for a vector: } \hat V_t \leftarrow \mathrm{lerp}(\hat V_{t-1}, G_t^2, t^{\tau})\text{)} \\
    U_t &= G_t / \sqrt{\max(\hat V_t, \epsilon_1^2)}, \qquad
    \theta_t = \theta_{t-1} - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

γ ``lr``, τ ``beta2_decay`` (≤ 0), (ε₁, ε₂) ``eps``, d the clipping threshold
``d``, λ ``weight_decay``; RMS(x) = ‖x‖₂/√numel.  ε₁ = ``None`` means the
machine epsilon of the group's first parameter with a gradient (kept for the
whole group, as torch does).  State per parameter: ``step`` (t) and either
``row_var`` (R, the gradient's shape with the last dimension 1) and ``col_var``
(C, the second-to-last dimension 1), or ``variance`` (V̂, the gradient's shape).

.. warning:: This is torch's variant, not the paper's: ``lr`` caps the relative
   step ρ (the paper fixes the cap at 0.01) and scales the decoupled weight
   decay; ε₁ is applied to the row-factor normaliser and to V̂ rather than added
   to G²; the factors are means rather than sums; there is no first moment.

.. warning:: ``foreach=True`` is accepted but runs the for-loop arithmetic: torch's
   multi-tensor path scales the update before adding it (a last-bit difference),
   and, with ``eps=(None, ...)`` and parameters of several dtypes in one group,
   takes ε₁ from whichever dtype bucket its C++ grouping lists first.

Reference: N. Shazeer, M. Stern, *Adafactor: Adaptive Learning Rates with
Sublinear Memory Cost*, ICML 2018, https://arxiv.org/abs/1804.04235.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import as_scalar, decoupled_decay_, fill_group_defaults, new_step, signed_grad, tensorize_scalar_state
from ._validate import check_at_least, check_lr_at_least_zero

__all__ = ["Adafactor", "adafactor_reference"]


def _rms_norm(x: Tensor) -> float:
    """‖x‖₂ / √numel as torch computes it (a Python float)."""
    return x.norm(2).item() / (x.numel() ** 0.5)


def _mean_square(grad: Tensor, dim: int) -> Tensor:
    """``mean(g², dim)`` (keepdim) computed from the norm, without a g²-sized temporary."""
    return torch.norm(grad, dim=dim, keepdim=True).square_().div_(grad.size(dim))


def adafactor_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    beta2_decay: float,
    eps1: float,
    eps2: float,
    d: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """One Adafactor step on one parameter, in place (torch's for-loop arithmetic).

    ``eps1`` must already be resolved (a number, not ``None``): see
    :meth:`Adafactor._rule_options`.
    """
    lr = as_scalar(lr)
    grad = signed_grad(grad, maximize)
    step_t = state["step"]
    step_t += 1
    step = step_t.item()

    weight = step**beta2_decay  # 1 - β̂₂ₜ, the lerp weight of the new G²
    rho = min(lr, 1 / (step**0.5))
    alpha = max(eps2, _rms_norm(param)) * rho
    decoupled_decay_(param, lr, weight_decay)

    if grad.dim() > 1:
        row_var, col_var = state["row_var"], state["col_var"]
        row_var.lerp_(_mean_square(grad, -1), weight)
        col_var.lerp_(_mean_square(grad, -2), weight)
        var_estimate = row_var @ col_var
        var_estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
    else:
        variance = state["variance"]
        variance.lerp_(grad * grad, weight)
        var_estimate = variance.clone()

    # ε₁² under the square root keeps ε₁'s magnitude
    update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_()
    update.mul_(grad)
    clip = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * d))
    param.add_(update, alpha=-alpha / clip)


class Adafactor(ElementwiseOptimizer):
    """Adafactor; torch.optim.Adafactor's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts.
        lr: γ, the cap of the relative step size and the weight-decay scale
            (float or 1-element tensor; default 1e-2).
        beta2_decay: τ ≤ 0; the second-moment EMA weight of step t is t^τ (default -0.8).
        eps: (ε₁, ε₂): ε₁ floors the variance estimate (``None``: the dtype's
            machine epsilon), ε₂ floors the parameter RMS that scales the step
            (default (None, 1e-3)).
        d: clipping threshold ≥ 1 of the update's RMS (default 1).
        weight_decay: decoupled weight decay λ (default 0).
        foreach: accepted for compatibility (see the module's warning).
        maximize: ascend the objective.

    Example::

        >>> opt = fastoptim.Adafactor(model.parameters(), lr=1e-2)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """

    rule = staticmethod(adafactor_reference)
    supports_complex = False
    _per_element_state = ("variance",)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        check_lr_at_least_zero(lr)
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None:
            check_at_least("epsilon1", eps[0])
        check_at_least("epsilon2", eps[1])
        check_at_least("Clipping threshold d", d, 1)
        check_at_least("weight_decay", weight_decay)
        defaults = dict(
            lr=lr,
            beta2_decay=beta2_decay,
            eps=eps,
            d=d,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fill_group_defaults(self, foreach=None)
        # old checkpoints store the step as a number
        tensorize_scalar_state(self, ("step",), on_param_device=lambda group: False)

    def _check_param(self, param: Tensor, group: dict) -> None:
        if torch.is_complex(param):
            raise RuntimeError("Adafactor does not support complex parameters")

    def _init_state(self, param: Tensor, group: dict) -> dict:
        grad = param.grad
        state = {"step": new_step(param, group)}
        if grad.dim() > 1:
            # the second moment's factors: a column (last dim 1) and a row (second-to-last dim 1)
            state["row_var"] = grad.new_zeros((*grad.shape[:-1], 1))
            state["col_var"] = grad.new_zeros((*grad.shape[:-2], 1, grad.shape[-1]))
        else:
            state["variance"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        return state

    def _check_loaded_state_keys(self, saved_state: dict, group_of: dict) -> None:
        """Reject a stepped parameter's state that has neither of Adafactor's two layouts.

        The base asks ``_init_state`` of a 1-element stand-in, which gives the
        vector layout only; a matrix's state has the factors instead.
        """
        for key, entry in saved_state.items():
            if key not in group_of or not isinstance(entry, dict) or not entry:
                continue
            keys = set(entry)
            if "step" not in keys or not ({"row_var", "col_var"} <= keys or "variance" in keys):
                raise ValueError(
                    f"loaded state of parameter {key!r} has keys {sorted(map(str, keys))}, but Adafactor keeps "
                    "'step' and either 'row_var' and 'col_var' or 'variance': "
                    "is it the state_dict of another optimizer class?"
                )

    def _rule_options(self, group: dict) -> dict:
        eps1, eps2 = group["eps"]
        if eps1 is None:
            # torch resolves ε₁ once per group, from the first parameter it updates
            # (none has a gradient when only asked which backend would run: the first parameter)
            first = next((p for p in group["params"] if p.grad is not None), group["params"][0])
            eps1 = torch.finfo(first.dtype).eps
        return dict(
            lr=group["lr"],
            beta2_decay=group["beta2_decay"],
            eps1=eps1,
            eps2=eps2,
            d=group["d"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )
