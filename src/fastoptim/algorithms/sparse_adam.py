r"""SparseAdam: Adam restricted to the entries a sparse gradient holds.

For a dense parameter θ whose gradient comes in sparse COO layout (e.g.
``nn.Embedding(sparse=True)``), only the entries *present* in the gradient
(its index set :math:`S`, after coalescing) are touched; everything else —
parameter and both moments — is left exactly as it was:

.. math::

    g_t &\leftarrow -g_t \quad\text{if maximize} \\
    m_t[S] &\leftarrow m_{t-1}[S] + (1-\beta_1)(g_t[S] - m_{t-1}[S]) \\
    v_t[S] &\leftarrow v_{t-1}[S] + (1-\beta_2)(g_t[S]^2 - v_{t-1}[S]) \\
    \theta_t[S] &\leftarrow \theta_{t-1}[S] - \gamma\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
        \cdot \frac{m_t[S]}{\sqrt{v_t[S]} + \epsilon}

γ lr, β₁ β₂ ``betas``, ε eps.  State per parameter: ``step`` (t, a Python
``int`` — torch.optim keeps it an int here, unlike Adam's float tensor),
``exp_avg`` (m) and ``exp_avg_sq`` (v), both dense.

.. warning:: As in torch.optim, ε is added to :math:`\sqrt{v}` *before* the
   bias correction of the second moment is applied (it is folded into the step
   size), so ε weighs differently than in :class:`fastoptim.Adam`.  Every stored
   entry counts as present, even a stored zero; ``t`` advances for every
   parameter with a gradient, even an empty one.

Dense gradients are rejected (use :class:`fastoptim.Adam`), as are sparse or
complex parameters.
"""

from __future__ import annotations

import math

from torch import Tensor

from ._elementwise import ElementwiseOptimizer
from ._rules import as_scalar, bias_correction, signed_grad, zeros_like
from ._validate import check_betas

__all__ = ["SparseAdam", "sparse_adam_reference"]


def sparse_adam_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr,
    beta1: float,
    beta2: float,
    eps: float,
    maximize: bool,
) -> None:
    """One SparseAdam step on one parameter with a sparse ``grad``, in place."""
    state["step"] += 1
    step = state["step"]
    # The moments are updated by scattering increments, so indices must be unique.
    grad = signed_grad(grad, maximize).coalesce()
    indices, values = grad._indices(), grad._values()
    if values.numel() == 0:
        return

    def on_support(entries: Tensor) -> Tensor:
        """``entries`` (one per stored gradient entry) as a sparse tensor shaped like the gradient."""
        return grad.new(indices, entries, grad.size())

    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    # m ← m + (1−β₁)(g − m), on the support only; likewise v with g².
    old_exp_avg = exp_avg.sparse_mask(grad)._values()
    exp_avg_increment = values.sub(old_exp_avg).mul_(1 - beta1)
    exp_avg.add_(on_support(exp_avg_increment))
    old_exp_avg_sq = exp_avg_sq.sparse_mask(grad)._values()
    exp_avg_sq_increment = values.pow(2).sub_(old_exp_avg_sq).mul_(1 - beta2)
    exp_avg_sq.add_(on_support(exp_avg_sq_increment))

    # The new moments on the support, rebuilt from old + increment (no second sparse_mask).
    numer = exp_avg_increment.add_(old_exp_avg)
    denom = exp_avg_sq_increment.add_(old_exp_avg_sq).sqrt_().add_(eps)
    step_size = lr * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)
    param.add_(on_support(-step_size * numer.div_(denom)))


class SparseAdam(ElementwiseOptimizer):
    """Adam for dense parameters with sparse gradients; torch.optim.SparseAdam's interface.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts
            (dense, real parameters only).
        lr: learning rate γ (float or 1-element tensor, > 0; default 1e-3).
        betas: (β₁, β₂), each in [0, 1) (default (0.9, 0.999)).
        eps: ε > 0 added to the denominator (default 1e-8).
        maximize: ascend the objective.

    Example::

        >>> emb = torch.nn.Embedding(1000, 16, sparse=True)
        >>> opt = fastoptim.SparseAdam(emb.parameters(), lr=1e-2)
        >>> emb(torch.tensor([3, 7])).sum().backward(); opt.step()
    """

    rule = staticmethod(sparse_adam_reference)
    supports_sparse_grad = True
    supports_complex = False
    _per_element_state = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_betas(betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))

        # Checked once the groups are built, so the message can give [group, position].
        where = {"sparse": [], "complex": []}
        for group_index, group in enumerate(self.param_groups):
            for position, p in enumerate(group["params"]):
                if p.is_sparse:
                    where["sparse"].append([group_index, position])
                if p.is_complex():
                    where["complex"].append([group_index, position])
        if where["sparse"]:
            raise ValueError(
                f"Sparse params at indices {where['sparse']}: SparseAdam requires dense parameter tensors"
            )
        if where["complex"]:
            raise ValueError(
                f"Complex params at indices {where['complex']}: SparseAdam does not support complex parameters"
            )

    def _check_params(self, params: list[Tensor], group: dict) -> None:
        super()._check_params(params, group)
        if not all(p.grad.is_sparse for p in params):
            raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")

    def _init_state(self, param: Tensor, group: dict) -> dict:
        return {"step": 0, "exp_avg": zeros_like(param), "exp_avg_sq": zeros_like(param)}

    def _rule_options(self, group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(
            lr=as_scalar(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            # Checkpoints from before torch added ``maximize`` lack the key.
            maximize=group.get("maximize", False),
        )
