"""DistributedDataParallel with fastoptim: 2 real processes, gloo, CPU.

One launch trains every configuration below twice per rank -- with fastoptim
and with torch.optim -- on rank-specific data, and saves the parameters.  The
tests then compare them: fastoptim against torch.optim on every rank, the
replicas against each other, and DDP training against a single process that
sees both ranks' batches (what DDP's gradient averaging must reproduce).
Parameters are plain tensors here, so fastoptim's fast kernels run.
"""

from __future__ import annotations

import pytest
import torch

import fastoptim

from ._common import assert_same_tensors, params_of, tiny_model
from ._dist import all_equal_across_ranks, run_workers

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
STEPS = 5
CONFIGS = {
    "SGD-nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "AdamW": ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    "Adam-amsgrad": ("Adam", dict(lr=0.01, amsgrad=True)),
    "RMSprop": ("RMSprop", dict(lr=0.01, momentum=0.5)),
}


def rank_batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(6, 5, generator=generator), torch.randn(6, 3, generator=generator)) for _ in range(STEPS)]


def _train_ddp(library, algorithm: str, options: dict, rank: int):
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(tiny_model())
    optimizer = getattr(library, algorithm)(model.parameters(), **options)
    for x, y in rank_batches(rank):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model, optimizer


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    from fastoptim.kernels import dispatch

    results = {}
    for name, (algorithm, options) in CONFIGS.items():
        fast_model, fast_opt = _train_ddp(fastoptim, algorithm, options, rank)
        torch_model, _ = _train_ddp(torch.optim, algorithm, options, rank)
        results[name] = {
            "fastoptim": params_of(fast_model.module),
            "torch": params_of(torch_model.module),
            "in_sync": all_equal_across_ranks(list(fast_model.parameters())),
            "backend": dispatch.backend_for(fast_opt),
        }
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    run_workers(_worker, str(out_dir), world_size=WORLD_SIZE)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def _single_process(algorithm: str, options: dict) -> list[torch.Tensor]:
    """What DDP must reproduce: one model on both ranks' batches (mean loss = averaged gradients)."""
    model = tiny_model()
    optimizer = getattr(torch.optim, algorithm)(model.parameters(), **options)
    for batches in zip(*(rank_batches(rank) for rank in range(WORLD_SIZE))):
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return params_of(model)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_with_fastoptim_matches_torch_optim(ddp_results, name):
    for rank in range(WORLD_SIZE):
        result = ddp_results[rank][name]
        assert_same_tensors(result["fastoptim"], result["torch"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_replicas_stay_identical(ddp_results, name):
    assert all(ddp_results[rank][name]["in_sync"] for rank in range(WORLD_SIZE))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_matches_single_process_on_the_global_batch(ddp_results, name):
    algorithm, options = CONFIGS[name]
    expected = _single_process(algorithm, options)
    # All-reduce sums in another order than one big batch: float32 rounding apart.
    assert_same_tensors(ddp_results[0][name]["fastoptim"], expected, rtol=1e-5, atol=1e-6)


def test_ddp_steps_use_the_fast_kernels(ddp_results):
    """DDP parameters are plain tensors: the numba kernels (where one exists) do the update."""
    backends = {name: ddp_results[0][name]["backend"] for name in CONFIGS}
    assert backends["SGD-nesterov"] == backends["AdamW"] == backends["Adam-amsgrad"] == "numba", backends
