"""Every algorithm over parameters made with ``distribute_tensor``: 2 gloo processes, CPU.

The same parameter and gradients twice: as a full tensor in one process, and
as a DTensor split over two ranks (rows -- 7 rows give uneven 4 + 3 shards --
and, for SGD and Adam, columns and replicated).  An element-wise update must
give the same values either way.  Where DTensor cannot run an update at all
(Rprop's boolean-mask assignment on a shard), fastoptim must either fail exactly
as torch.optim does on the same DTensors or -- its kernels run on the local
shards -- give the full-tensor values.
"""

from __future__ import annotations

import pytest
import torch

import fastoptim

from ._common import DENSE_ALGORITHMS
from ._dist import run_workers

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
STEPS = 3
FULL_SHAPES = [(7, 5)]  # 7 rows over 2 ranks: uneven shards (4 + 3)
PLACEMENTS = ("shard0", "shard1", "replicate")
# Every algorithm on row shards; the other placements for two of them (each new placement costs
# DTensor a round of sharding propagation for every op: seconds on 2 cores).
ALL_PLACEMENTS = ("SGD", "Adam")
# Algorithms whose update is element-wise over a parameter.  Not: LBFGS (one flat vector of all
# parameters), Muon (orthogonalises whole matrices), Adafactor (row/column means of the squared
# gradient -- on a sharded DTensor its in-place ``norm(...).square_()`` needs a placement change,
# which DTensor refuses, for torch.optim.Adafactor too).
SHARDABLE = [a for a in DENSE_ALGORITHMS if a not in ("LBFGS", "Muon", "Adafactor")]


def _options(algorithm: str) -> dict:
    options: dict = {"lr": 0.01}
    if algorithm == "SGD":
        options.update(momentum=0.9, weight_decay=0.01)
    if algorithm in ("Adam", "AdamW"):
        options.update(weight_decay=0.1, amsgrad=True)
    return options


def _full_grads(step: int):
    generator = torch.Generator().manual_seed(400 + step)  # the same on every rank
    return [torch.randn(shape, generator=generator) for shape in FULL_SHAPES]


def _error(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0]}"


def _run(library, algorithm, mesh, placement) -> float:
    """Largest difference between the DTensor run and the full-tensor run of the same library."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    generator = torch.Generator().manual_seed(500)
    full = [torch.randn(shape, generator=generator) for shape in FULL_SHAPES]

    def placements(t):
        if placement == "replicate":
            return [Replicate()]
        return [Shard(1 if placement == "shard1" and t.dim() > 1 else 0)]

    reference = [torch.nn.Parameter(t.clone()) for t in full]
    sharded = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, placements(t))) for t in full]
    ref_opt = getattr(library, algorithm)(reference, **_options(algorithm))
    dist_opt = getattr(library, algorithm)(sharded, **_options(algorithm))
    for step in range(STEPS):
        for r, s, g in zip(reference, sharded, _full_grads(step)):
            r.grad = g.clone()
            s.grad = distribute_tensor(g.clone(), mesh, placements(g))
        ref_opt.step()
        dist_opt.step()
    return max((s.full_tensor() - r.detach()).abs().max().item() for s, r in zip(sharded, reference))


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world_size,))
    out = {}
    for algorithm in SHARDABLE:
        for placement in PLACEMENTS if algorithm in ALL_PLACEMENTS else PLACEMENTS[:1]:
            try:
                outcome = _run(fastoptim, algorithm, mesh, placement)
            except Exception as error:
                # Recorded with torch.optim's outcome on the same DTensors; the test compares them.
                try:
                    torch_outcome = _run(torch.optim, algorithm, mesh, placement)
                except Exception as torch_error:
                    torch_outcome = _error(torch_error)
                outcome = {"fastoptim": _error(error), "torch": torch_outcome}
            out[(algorithm, placement)] = outcome
    torch.save(out, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("dtensor")
    run_workers(_worker, str(out_dir), world_size=WORLD_SIZE)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("algorithm", SHARDABLE)
def test_distribute_tensor_parameters_match_full_tensors(results, algorithm):
    """Each step on DTensor parameters equals the step on the full tensors -- or, where DTensor
    cannot run the update (Rprop's boolean-mask assignment) and fastoptim takes its reference rule,
    fails exactly as torch.optim's does."""
    for r in results:
        outcomes = {placement: o for (name, placement), o in r.items() if name == algorithm}
        assert outcomes
        for placement, outcome in outcomes.items():
            if isinstance(outcome, dict):
                assert outcome["fastoptim"] == outcome["torch"], placement
            else:
                assert outcome <= 1e-6, placement
