"""The skeleton shared by every optimizer whose update is a per-parameter rule.

An algorithm module supplies three things:

* ``rule`` - the reference update rule, ``rule(param, grad, state, **options)``,
  plain tensor ops that update ``param`` and ``state`` in place;
* ``_init_state(param, group)`` - the state a parameter gets on its first step;
* ``rule_options`` (or ``_rule_options(group)``) - the group's hyper-parameters
  that the rule takes as keywords.

``step`` is written once, here: evaluate the closure, validate every group
(nothing changes if anything is wrong), create missing state, then hand each
group to ``_update_group`` -- by default
:func:`fastoptim.kernels.dispatch.update_group`, which runs a fast kernel when
one covers the case and the reference rule otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from ..optimizer import Optimizer


#: :mod:`fastoptim.kernels.dispatch`, imported on the first step (it imports the algorithms)
_dispatch_module: Any = None


def _dispatch() -> Any:
    global _dispatch_module
    if _dispatch_module is None:
        from ..kernels import dispatch

        _dispatch_module = dispatch
    return _dispatch_module


class ElementwiseOptimizer(Optimizer):
    """Base for SGD, Adam and the other per-parameter algorithms."""

    #: the reference update rule (a plain function; see the module docstring)
    rule: ClassVar[Callable[..., None]]
    #: whether the rule accepts sparse gradients
    supports_sparse_grad: ClassVar[bool] = False
    #: whether complex parameters are accepted
    supports_complex: ClassVar[bool] = True

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """State of a parameter before its first update."""
        return {}

    #: group options handed to the rule unchanged, by name
    rule_options: ClassVar[tuple[str, ...]] = ()

    def _rule_options(self, group: dict[str, Any]) -> dict[str, Any]:
        """The rule's keyword arguments for one group (override to transform, e.g. split betas)."""
        return {name: group[name] for name in self.rule_options}

    def _check_params(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """Reject what the rule cannot handle, before any parameter is touched.

        The checks every algorithm shares run once per group: the one every
        step pays (sparse gradients) as a single generator expression (which
        torch.compile traces, unlike ``map(attrgetter)``), the others only
        when their option is set; then :meth:`_check_group` and
        :meth:`_check_param`, the algorithm's own, when it has them.
        """
        if not params:
            return
        if not self.supports_sparse_grad and any(p.grad.is_sparse for p in params):
            raise RuntimeError(self._sparse_grad_message())
        if group.get("fused"):
            # torch's check (torch.optim.optimizer._device_dtype_check_for_fused):
            # floating point, on a device with fused kernels (not "meta", say).
            devices = _get_fused_kernels_supported_devices()
            for param in params:
                if not (param.is_floating_point() and param.device.type in devices):
                    raise RuntimeError(
                        "`fused=True` requires all the params to be floating point Tensors of "
                        f"supported devices: {devices} but {param.dtype} and {param.device.type}"
                    )
        if group.get("differentiable"):
            for param in params:
                step = self.state.get(param, {}).get("step")
                if isinstance(step, Tensor) and step.requires_grad:
                    raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")
        self._check_group(group)
        if type(self)._check_param is not ElementwiseOptimizer._check_param:
            for param in params:
                self._check_param(param, group)

    def _check_group(self, group: dict[str, Any]) -> None:
        """The algorithm's own checks of a group's options (when it has parameters to update)."""

    def _check_param(self, param: Tensor, group: dict[str, Any]) -> None:
        """The algorithm's own checks of one parameter (with a gradient)."""

    def _sparse_grad_message(self) -> str:
        name = type(self).__name__
        return f"{name} does not support sparse gradients"

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step.

        Args:
            closure: optional; re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            self._check_params(params, group)
            work.append((group, params))

        # An algorithm without initial state (SGD: its momentum buffer is made by the rule) skips the loop.
        keeps_state = type(self)._init_state is not ElementwiseOptimizer._init_state
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            for group, params in work:
                for p in params if keeps_state else ():
                    # Parameters whose first state is empty get no entry at all, as in torch.
                    if not self.state.get(p):
                        initial = self._init_state(p, group)
                        if initial:
                            self.state[p] = initial
                if params:
                    self._update_group(group, params)
        return loss

    def _update_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Update one group's parameters (each with a gradient and its state): a kernel or the reference rule.

        The dispatcher (:mod:`fastoptim.kernels.dispatch`) chooses; an
        algorithm with its own fast path for whole groups (Muon) overrides this.
        """
        _dispatch().update_group(self, group, params)
