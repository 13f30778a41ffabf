r"""Classic 2-D test functions for optimizers, written in torch ops (autograd gives the gradient).

Each :class:`TestFunction` holds the formula, the plotting window, a standard
starting point and the global minima, so that ``fastoptim trajectories`` (and
tests) can run any optimizer on it::

    from fastoptim.testfunctions import FUNCTIONS, path
    xy = path(FUNCTIONS["rosenbrock"], lambda p: fastoptim.Adam(p, lr=0.05), steps=300)

============  =====================================================  =============================
name          f(x, y)                                                global minimum
============  =====================================================  =============================
rosenbrock    (1 − x)² + 100 (y − x²)²                               f(1, 1) = 0
beale         (1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²  f(3, 0.5) = 0
himmelblau    (x² + y − 11)² + (x + y² − 7)²                         four minima, f = 0
rastrigin     20 + x² + y² − 10 (cos 2πx + cos 2πy)                  f(0, 0) = 0 (many local minima)
booth         (x + 2y − 7)² + (2x + y − 5)²                          f(1, 3) = 0
============  =====================================================  =============================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FUNCTIONS", "TestFunction", "path"]


@dataclass(frozen=True)
class TestFunction:
    """A 2-D objective with what is needed to draw it."""

    name: str
    formula: str
    f: Callable[[Tensor, Tensor], Tensor]
    start: tuple[float, float]
    minima: tuple[tuple[float, float], ...]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    #: contour levels on a log scale (functions with a huge range of values)
    log_levels: bool = True

    __test__ = False  # not a pytest test class, despite the name

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.f(x, y)


def _rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _beale(x, y):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _himmelblau(x, y):
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _rastrigin(x, y):
    return 20 + x**2 + y**2 - 10 * (torch.cos(2 * math.pi * x) + torch.cos(2 * math.pi * y))


def _booth(x, y):
    return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


FUNCTIONS: dict[str, TestFunction] = {
    f.name: f
    for f in (
        TestFunction("rosenbrock", "(1 − x)² + 100 (y − x²)²", _rosenbrock, (-1.5, 2.0), ((1.0, 1.0),),
                     (-2.0, 2.0), (-1.0, 3.0)),
        TestFunction("beale", "(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²", _beale, (1.0, 1.5),
                     ((3.0, 0.5),), (-4.5, 4.5), (-4.5, 4.5)),
        TestFunction("himmelblau", "(x² + y − 11)² + (x + y² − 7)²", _himmelblau, (-0.5, -0.5),
                     ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)),
                     (-5.0, 5.0), (-5.0, 5.0)),
        TestFunction("rastrigin", "20 + x² + y² − 10 (cos 2πx + cos 2πy)", _rastrigin, (2.2, -2.4), ((0.0, 0.0),),
                     (-3.0, 3.0), (-3.0, 3.0), log_levels=False),
        TestFunction("booth", "(x + 2y − 7)² + (2x + y − 5)²", _booth, (-8.0, -6.0), ((1.0, 3.0),),
                     (-10.0, 10.0), (-10.0, 10.0)),
    )
}


def path(
    function: TestFunction,
    make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
    steps: int,
    start: tuple[float, float] | None = None,
) -> Tensor:
    """The points an optimizer visits: a ``(steps + 1, 2)`` float64 tensor, from the start point.

    A point that leaves the finite numbers (divergence) ends the path there.
    """
    x0, y0 = start if start is not None else function.start
    point = torch.nn.Parameter(torch.tensor([x0, y0], dtype=torch.float64))
    optimizer = make_optimizer([point])

    def closure():
        optimizer.zero_grad()
        value = function(point[0], point[1])
        value.backward()
        return value

    # Schedule-Free optimizers step in train mode (the parameter holds y) and are evaluated at their
    # average x (eval mode): the path shows x.
    switch = callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))
    visited = [point.detach().clone()]
    for _ in range(steps):
        if switch:
            optimizer.train()
        optimizer.step(closure)
        if switch:
            optimizer.eval()
        current = point.detach().clone()
        if not torch.isfinite(current).all():
            break
        visited.append(current)
    return torch.stack(visited)
