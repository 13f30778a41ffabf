"""The parameter sets the bench steps over: many tensors, one big tensor, many tiny tensors.

This module imports nothing but torch and the standard library, so the
cold-start probe can load it by file path without importing fastoptim (whose
import time is part of what that probe measures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PARAM_SETS", "ParamSet", "build", "shapes", "sparse_grad"]

#: names in report order, with the one-line description the report prints
PARAM_SETS = {
    "many": "transformer-like: layers of attention + MLP, embeddings, layer norms",
    "big": "one square matrix",
    "tiny": "many tensors of about 100 elements (per-tensor overhead)",
}

#: the full-size and --quick geometries; ``scale`` multiplies element counts on top
_GEOMETRY = {
    False: {"d_model": 384, "layers": 12, "vocab": 10_000, "context": 512, "big_side": 8192, "tiny_count": 2000},
    True: {"d_model": 64, "layers": 2, "vocab": 2000, "context": 128, "big_side": 1024, "tiny_count": 50},
}

#: shapes cycled through by the tiny set (mean 100 elements: vectors, small matrices, odd sizes)
_TINY_SHAPES = [(100,), (10, 10), (96,), (8, 12), (128,), (4, 25), (77,), (11, 9), (120,), (3, 45)]

#: fraction of the rows (dim 0) that a sparse gradient touches (SparseAdam)
SPARSE_ROW_DENSITY = 0.1


def _round(x: float, multiple: int = 1, minimum: int = 1) -> int:
    return max(minimum, int(round(x / multiple)) * multiple)


def shapes(name: str, *, quick: bool = False, scale: float = 1.0) -> list[tuple[int, ...]]:
    """Tensor shapes of parameter set ``name``; ``scale`` multiplies the element count."""
    geo = _GEOMETRY[quick]
    linear = math.sqrt(scale)  # matrices grow with the square of a side
    if name == "many":
        d = _round(geo["d_model"] * linear, 8, 8)
        ff = 4 * d
        vocab = _round(geo["vocab"] * linear, 8, 8)
        context = _round(geo["context"] * linear, 8, 8)
        out: list[tuple[int, ...]] = [(vocab, d), (context, d)]
        for _ in range(geo["layers"]):
            out += [
                (3 * d, d), (3 * d,),  # fused q, k, v projection
                (d, d), (d,),  # attention output projection
                (d,), (d,),  # layer norm 1
                (ff, d), (ff,),  # MLP up
                (d, ff), (d,),  # MLP down
                (d,), (d,),  # layer norm 2
            ]  # fmt: skip
        out += [(d,), (d,)]  # final layer norm
        return out
    if name == "big":
        side = _round(geo["big_side"] * linear, 8, 8)
        return [(side, side)]
    if name == "tiny":
        count = _round(geo["tiny_count"] * scale, 1, 10)
        return [_TINY_SHAPES[i % len(_TINY_SHAPES)] for i in range(count)]
    raise KeyError(f"unknown parameter set {name!r}; known: {', '.join(PARAM_SETS)}")


@dataclass
class ParamSet:
    """Pristine parameter values and dense gradients; cells step on clones."""

    name: str
    params: list[torch.Tensor]
    grads: list[torch.Tensor]

    @property
    def n_tensors(self) -> int:
        return len(self.params)

    @property
    def n_elements(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)

    def fresh_params(self) -> list[torch.Tensor]:
        """New leaf parameters holding the pristine values."""
        return [p.clone().requires_grad_(True) for p in self.params]

    def describe(self) -> dict:
        return {
            "description": PARAM_SETS[self.name],
            "n_tensors": self.n_tensors,
            "n_elements": self.n_elements,
            "param_bytes": self.param_bytes,
            "dtype": str(self.params[0].dtype).removeprefix("torch."),
            "largest_shape": list(max((p.shape for p in self.params), key=math.prod)),
        }


def build(name: str, *, quick: bool = False, scale: float = 1.0, dtype=torch.float32, seed: int = 0) -> ParamSet:
    """Random parameters and gradients (standard normal, so no denormals) for set ``name``."""
    generator = torch.Generator().manual_seed(seed)
    params, grads = [], []
    for shape in shapes(name, quick=quick, scale=scale):
        params.append(torch.randn(shape, generator=generator, dtype=dtype))
        grads.append(torch.randn(shape, generator=generator, dtype=dtype))
    return ParamSet(name, params, grads)


def sparse_grad(dense: torch.Tensor, *, density: float = SPARSE_ROW_DENSITY, seed: int = 0) -> torch.Tensor:
    """A coalesced sparse COO gradient over a random ``density`` of ``dense``'s rows.

    Sparse in dim 0 and dense in the others, like ``nn.Embedding(sparse=True)``
    produces; values are taken from ``dense``.  At least one row is touched.
    """
    rows = dense.shape[0]
    k = max(1, int(round(density * rows)))
    generator = torch.Generator().manual_seed(seed + rows)
    index = torch.randperm(rows, generator=generator)[:k].sort().values
    values = dense[index].clone()
    return torch.sparse_coo_tensor(index.unsqueeze(0), values, dense.shape, check_invariants=True, is_coalesced=True)
