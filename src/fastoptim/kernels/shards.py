"""DTensor parameters on the kernels: each rank updates its own shard.

FSDP2 (``fully_shard``) and ``distribute_tensor`` hand the optimizer DTensor
parameters, gradients and state buffers.  An element-wise update does not care
how a tensor is split, as long as the parameter, its gradient and its buffers
are split alike: the kernel can then run on the local shards
(``DTensor._local_tensor``), exactly as the reference rule's DTensor ops do
shard by shard.  :func:`local_view` builds that stand-in:

* each qualifying DTensor parameter is replaced by a private alias of its local
  shard (``detach()``: same storage and version counter) whose ``.grad`` is the
  gradient's local shard -- the user's tensors are never modified;
* its state entry by one whose DTensor buffers are their local shards (0-dim
  state such as ``step`` is a plain tensor already);
* after the kernel, :meth:`LocalView.write_back` wraps any buffer the kernel
  created (SGD's first momentum buffer) as a DTensor placed like the parameter,
  and bumps the DTensors' own version counters.

A DTensor qualifies when its gradient and every DTensor buffer share its mesh
and placements, none of them ``Partial`` (a pending reduction), and the
algorithm's kernel is ``per_element`` (LAMB, LARS and SparseAdam take norms of
whole tensors: they stay with the reference rule).  Anything else is left as
it is, and the kernel's own checks send it to the reference rule.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor

__all__ = ["LocalView", "local_view"]


def _dtensor_class() -> type | None:
    """DTensor, if anything imported it (no DTensor can exist otherwise: importing it here would cost time)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


class LocalView:
    """Stand-ins for a group's DTensor parameters: ``params`` and ``state`` to hand a kernel module."""

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        self.state: dict[Tensor, dict[str, Any]] = {}
        #: alias -> (the DTensor parameter, its state entry or None)
        self.origin: dict[Tensor, tuple[Tensor, dict[str, Any] | None]] = {}

    def original(self, tensors: list[Tensor]) -> list[Tensor]:
        """The DTensor parameters behind some aliases (those a kernel left to the reference rule)."""
        return [self.origin[t][0] if t in self.origin else t for t in tensors]

    def write_back(self, state: Any, updated: list[Tensor]) -> None:
        """Give the real state what the kernel created; bump the DTensors that were updated in place."""
        dtensor = _dtensor_class()
        touched: list[Tensor] = []
        for alias in updated:
            param, entry = self.origin[alias]
            touched.append(param)
            local_entry = self.state.get(alias, {})
            for key, value in local_entry.items():
                if entry is not None and key in entry:
                    held = entry[key]
                    if held is value or (type(held) is dtensor and held._local_tensor is value):
                        if type(held) is dtensor:
                            touched.append(held)
                        continue
                if isinstance(value, Tensor) and value.shape == alias.shape and value.dim() > 0:
                    value = dtensor.from_local(
                        value, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
                    )
                if entry is None:
                    entry = state[param] = {}
                entry[key] = value
        if touched:
            torch._C._increment_version(touched)


def _placed_like(t: Any, param: Tensor, dtensor: type) -> bool:
    return type(t) is dtensor and t.device_mesh == param.device_mesh and t.placements == param.placements


def local_view(
    params: list[Tensor], state: Any, per_element: bool
) -> tuple[LocalView | None, list[Tensor], list[tuple[Tensor, str]]]:
    """``(view, plain, rejected)``: the DTensor parameters that run on their shards, the others, and why not.

    ``view`` is None when no parameter qualifies (always so when no DTensor exists); ``plain``
    keeps the parameters that are not DTensors, for the usual path; ``rejected`` pairs each
    DTensor parameter that must take the reference rule with the reason.
    """
    dtensor = _dtensor_class()
    if dtensor is None or not any(type(p) is dtensor for p in params):
        return None, params, []
    view = LocalView()
    plain: list[Tensor] = []
    rejected: list[tuple[Tensor, str]] = []
    for p in params:
        if type(p) is not dtensor:
            plain.append(p)
            continue
        grad = p.grad
        entry = state.get(p)
        reason = None
        if not per_element:
            reason = "DTensor parameter: this kernel takes norms of the whole tensor"
        elif any(placement.is_partial() for placement in p.placements):
            reason = "DTensor parameter with a Partial placement"
        elif grad is not None and not _placed_like(grad, p, dtensor):
            reason = "DTensor gradient placed unlike its parameter"
        elif entry and any(type(v) is dtensor and not _placed_like(v, p, dtensor) for v in entry.values()):
            reason = "DTensor state placed unlike its parameter"
        if reason is not None:
            rejected.append((p, reason))
            continue
        alias = p._local_tensor.detach()
        if grad is not None:
            alias.grad = grad._local_tensor
        if entry is not None:
            view.state[alias] = {k: (v._local_tensor if type(v) is dtensor else v) for k, v in entry.items()}
        view.params.append(alias)
        view.origin[alias] = (p, entry)
    return (view if view.params else None), plain, rejected
