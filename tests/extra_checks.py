"""Checks for algorithms whose parameters the generic problems do not fit (Adafactor, Muon).

``problem_of`` builds a parity problem with chosen shapes (Adafactor's
higher-rank parameters, Muon's matrices); the ``assert_*`` helpers check the
step-time rejections both algorithms share.
"""

from __future__ import annotations

import pytest
import torch

import fastoptim
from parity import Problem


def problem_of(shapes_per_group, dtype, seed=0, transposed=()):
    """A :class:`parity.Problem` with the given parameter shapes, one list per group.

    Parameters whose flat index is in ``transposed`` are stored column-major
    (a transposed contiguous tensor), as a transposed weight is.
    """
    gen = torch.Generator().manual_seed(seed)

    def make(index, shape):
        if index in transposed:
            return torch.randn(tuple(reversed(shape)), generator=gen, dtype=dtype).mT
        return torch.randn(shape, generator=gen, dtype=dtype)

    groups, index = [], 0
    for shapes in shapes_per_group:
        groups.append([make(index + k, s) for k, s in enumerate(shapes)])
        index += len(shapes)
    flat = [v for g in groups for v in g]
    scale = [torch.randn(v.shape, generator=gen, dtype=dtype).abs() + 0.5 for v in flat]
    target = [torch.randn(v.shape, generator=gen, dtype=dtype) for v in flat]
    return Problem(groups, scale, target)



def assert_complex_rejected_before_any_change(name: str) -> None:
    """A complex parameter in a later group raises torch's RuntimeError, and nothing has changed.

    (torch has already updated the earlier groups when it raises.)
    """
    real = torch.ones(2, 3, requires_grad=True)
    cplx = torch.ones(2, 3, dtype=torch.complex64, requires_grad=True)
    opt = getattr(fastoptim, name)([{"params": [real]}, {"params": [cplx]}])
    real.grad, cplx.grad = torch.ones_like(real), torch.ones_like(cplx)
    with pytest.raises(RuntimeError, match=f"^{name} does not support complex parameters$"):
        opt.step()
    assert torch.equal(real, torch.ones(2, 3)) and len(opt.state) == 0


def assert_sparse_gradient_rejected_like_torch(name: str) -> None:
    for cls in (getattr(fastoptim, name), getattr(torch.optim, name)):
        p = torch.ones(4, 2, requires_grad=True)
        p.grad = torch.eye(4, 2).to_sparse()
        with pytest.raises(RuntimeError, match=f"^{name} does not support sparse gradients$"):
            cls([p]).step()
