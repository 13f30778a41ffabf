"""Choose how a group of parameters is updated: a fast kernel or the reference rule.

This is the only place that decides *how* an update runs.  Algorithms never
branch on ``foreach``/``fused``/``capturable``: those flags are accepted for
compatibility and read here.  The reference rule is always correct; a kernel
is used only when the capability table says it covers the case exactly.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def run_reference(optimizer: Any, group: dict[str, Any], params: list[Tensor]) -> None:
    """Apply the algorithm's reference rule to each parameter, one at a time."""
    options = optimizer._rule_options(group)
    rule = type(optimizer).rule
    state = optimizer.state
    for p in params:
        entry = state.get(p)
        if entry is None:
            entry = {}
        rule(p, p.grad, entry, **options)
        if entry and p not in state:
            state[p] = entry


def update_group(optimizer: Any, group: dict[str, Any], params: list[Tensor]) -> None:
    """Update ``params`` (all with gradients, all with initialised state) of one group."""
    run_reference(optimizer, group, params)
