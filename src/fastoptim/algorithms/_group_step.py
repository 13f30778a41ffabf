"""Optimizers whose hyper-parameters move once per *group* and step.

torch.optim keeps every counter per parameter (``state[p]["step"]``).  The
reference packages of the algorithms beyond torch keep some per group:
pytorch_optimizer's LAMB, LARS and Adan count ``group["step"]`` (bias
corrections of a parameter that joins late still use the group's count), and
Schedule-Free keeps its averaging weights (``k``, ``lr_max``, ``weight_sum``,
...) in the group.  :class:`GroupStepOptimizer` advances them, once per group
per ``step()``, *after* every parameter has been validated and *before* the
per-parameter rule runs; the rule then reads them through ``_rule_options``,
which must not change anything (``fastoptim.kernels.explain`` calls it too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._elementwise import ElementwiseOptimizer


class GroupStepOptimizer(ElementwiseOptimizer):
    """:class:`ElementwiseOptimizer` plus a per-group update before the rules run."""

    def _check_ready(self) -> None:
        """Raise if the optimizer may not step now (before the closure runs)."""

    def _advance_group(self, group: dict[str, Any]) -> None:
        """Move the group's own counters one step on (every group, with or without gradients)."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step.

        Args:
            closure: optional; re-evaluates the model and returns the loss.
        """
        self._check_ready()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Validate everything first: a rejected step leaves the counters alone.
        for group in self.param_groups:
            self._check_params([p for p in group["params"] if p.grad is not None], group)
        for group in self.param_groups:
            self._advance_group(group)
        super().step()
        return loss
