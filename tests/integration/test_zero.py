"""ZeroRedundancyOptimizer(optimizer_class=fastoptim.AdamW): 2 real processes, gloo, CPU.

ZeRO builds a fastoptim.AdamW on each rank over the parameters that rank owns
(a group can be empty on a rank), steps it, broadcasts the updated shards,
syncs the hyper-parameters of its groups both ways, and -- on request --
gathers every rank's state into one torch-format ``state_dict`` on rank 0.
One launch runs all of it and saves what the tests compare.
"""

from __future__ import annotations

import pytest
import torch

import fastoptim

from ._common import assert_same_tensors, params_of, tiny_model
from ._dist import all_equal_across_ranks, run_workers

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
STEPS = 4
OPTIONS = dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)


def rank_batches(rank: int, count: int, offset: int = 0):
    generator = torch.Generator().manual_seed(200 + 10 * rank + offset)
    return [(torch.randn(6, 5, generator=generator), torch.randn(6, 3, generator=generator)) for _ in range(count)]


def _groups(model):
    """Two groups (no decay on biases), so that a rank may own none of a group's parameters."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights}, {"params": biases, "weight_decay": 0.0}]


def _train(model, optimizer, batches, scheduler=None):
    for x, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _zero(model, optimizer_class):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(_groups(model), optimizer_class=optimizer_class, **OPTIONS)


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    batches = rank_batches(rank, STEPS)
    out = {}
    runs = {}
    for name, optimizer_class in (("fastoptim", fastoptim.AdamW), ("torch", torch.optim.AdamW)):
        model = DDP(tiny_model())
        zero = _zero(model, optimizer_class)
        scheduler = torch.optim.lr_scheduler.StepLR(zero, step_size=2, gamma=0.5)
        _train(model, zero, batches, scheduler)
        runs[name] = (model, zero)
        out[name] = params_of(model.module)
        out[f"{name}_lr"] = [g["lr"] for g in zero.optim.param_groups]
        out[f"{name}_local_sizes"] = [len(g["params"]) for g in zero.optim.param_groups]
        zero.consolidate_state_dict(to=0)
        if rank == 0:
            torch.save(zero.state_dict(), f"{out_dir}/{name}_state.pt")
    out["local_class"] = type(runs["fastoptim"][1].optim).__qualname__
    out["in_sync"] = all_equal_across_ranks(list(runs["fastoptim"][0].parameters()))

    # Unsharded reference: DDP + torch.optim.AdamW on the same groups.
    model = DDP(tiny_model())
    optimizer = torch.optim.AdamW(_groups(model), **OPTIONS)
    _train(model, optimizer, batches, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5))
    out["unsharded"] = params_of(model.module)

    # Resume: a fresh ZeRO(fastoptim.AdamW) loads rank 0's consolidated state and
    # trains on exactly like the original.
    torch.distributed.barrier()
    model, zero = runs["fastoptim"]
    resumed_model = DDP(tiny_model(seed=7))
    resumed_model.module.load_state_dict(model.module.state_dict())
    resumed = _zero(resumed_model, fastoptim.AdamW)
    resumed.load_state_dict(torch.load(f"{out_dir}/fastoptim_state.pt", weights_only=True))
    more = rank_batches(rank, 3, offset=1)
    _train(model, zero, more)
    _train(resumed_model, resumed, more)
    out["continued"] = params_of(model.module)
    out["resumed"] = params_of(resumed_model.module)
    torch.save(out, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def zero_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("zero")
    run_workers(_worker, str(out_dir), world_size=WORLD_SIZE)
    ranks = [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    states = {name: torch.load(out_dir / f"{name}_state.pt") for name in ("fastoptim", "torch")}
    return ranks, states


def test_zero_builds_fastoptim_local_optimizers(zero_results):
    ranks, _ = zero_results
    assert all(r["local_class"] == "AdamW" for r in ranks)
    # two groups split over two ranks: some rank owns a different share of each group
    sizes = [r["fastoptim_local_sizes"] for r in ranks]
    assert sizes == [r["torch_local_sizes"] for r in ranks]
    assert [sum(s) for s in zip(*sizes)] == [2, 2]


def test_zero_fastoptim_matches_zero_torch_and_unsharded(zero_results):
    ranks, _ = zero_results
    for r in ranks:
        assert_same_tensors(r["fastoptim"], r["torch"])
        assert_same_tensors(r["fastoptim"], r["unsharded"])
        # the scheduler, stepping ZeRO, reached the local optimizers' groups
        assert r["fastoptim_lr"] == r["torch_lr"] == [0.005, 0.005]
    assert all(r["in_sync"] for r in ranks)


def test_zero_consolidated_state_dict_matches_torch(zero_results):
    _, states = zero_results
    fast, ref = states["fastoptim"], states["torch"]
    assert fast["state"].keys() == ref["state"].keys() == set(range(4))
    for index, entry in ref["state"].items():
        assert fast["state"][index].keys() == entry.keys()
        for key, value in entry.items():
            torch.testing.assert_close(fast["state"][index][key], value)
    assert [g["params"] for g in fast["param_groups"]] == [g["params"] for g in ref["param_groups"]]
    for fast_group, ref_group in zip(fast["param_groups"], ref["param_groups"]):
        for key in ("lr", "betas", "weight_decay", "eps", "amsgrad", "initial_lr"):
            assert fast_group[key] == ref_group[key], key


def test_zero_state_dict_resumes_identically(zero_results):
    ranks, _ = zero_results
    for r in ranks:
        assert_same_tensors(r["resumed"], r["continued"], rtol=0, atol=0)
