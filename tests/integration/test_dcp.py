"""Optimizer state through torch.distributed.checkpoint: 2 gloo processes, CPU.

``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` convert between an
optimizer's ``state_dict()`` (integer ids) and a dict keyed by parameter FQNs
(fully qualified names), which ``dcp.save`` / ``dcp.load`` write and read as
shards.  On a fresh optimizer they first create its state by stepping it with
zero gradients at lr=0, then restore the lrs.  One launch checks, with FSDP2
(DTensor state, each rank saves its shard) and with DDP (plain tensors):

* training resumed from the checkpoint continues exactly as the original run;
* the fresh optimizer's initialisation moved no parameter and kept its lr;
* a checkpoint written by torch.optim.AdamW resumes in fastoptim.AdamW (and the
  reverse) and continues as torch.optim would.
"""

from __future__ import annotations

import pytest
import torch

import fastoptim

from ._common import assert_same_tensors, params_of, tiny_model
from ._dist import run_workers

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
OPTIONS = dict(lr=0.01, weight_decay=0.1)


def rank_batches(rank: int, count: int, offset: int):
    generator = torch.Generator().manual_seed(700 + 10 * rank + offset)
    return [(torch.randn(6, 5, generator=generator), torch.randn(6, 3, generator=generator)) for _ in range(count)]


def _wrap(model, kind: str, mesh):
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def _train(model, optimizer, batches):
    for x, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _full_params(model) -> list[torch.Tensor]:
    return [p.full_tensor().detach() if hasattr(p, "full_tensor") else p.detach().clone() for p in model.parameters()]


def _save(model, optimizer, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    dcp.save(
        {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
        checkpoint_id=path,
    )


def _load(model, optimizer, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optim"])


def _resume_case(kind, save_library, load_library, rank, mesh, path):
    """Train 3 steps, checkpoint, train 3 more; resume a fresh model + optimizer from the checkpoint."""
    first, second = rank_batches(rank, 3, 0), rank_batches(rank, 3, 1)
    model = _wrap(tiny_model(), kind, mesh)
    optimizer = save_library.AdamW(model.parameters(), **OPTIONS)
    _train(model, optimizer, first)
    _save(model, optimizer, path)
    _train(model, optimizer, second)

    fresh_model = _wrap(tiny_model(seed=42), kind, mesh)
    fresh_opt = load_library.AdamW(fresh_model.parameters(), lr=0.5, weight_decay=0.0)  # the checkpoint's win
    before = _full_params(fresh_model)
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    get_optimizer_state_dict(fresh_model, fresh_opt)  # initialises the state of the fresh optimizer
    init = {
        "params_unmoved": all(torch.equal(a, b) for a, b in zip(before, _full_params(fresh_model))),
        "lr_kept": fresh_opt.param_groups[0]["lr"] == 0.5,
        "grads_cleared": all(p.grad is None for p in fresh_model.parameters()),
        "state_created": len(fresh_opt.state) == len(list(fresh_model.parameters())),
    }
    _load(fresh_model, fresh_opt, path)
    loaded_lr = fresh_opt.param_groups[0]["lr"]
    _train(fresh_model, fresh_opt, second)

    # What the loading library gives when it continues its own run from the same point.
    if load_library is save_library:
        continued = _full_params(model)
    else:
        ref_model = _wrap(tiny_model(), kind, mesh)
        ref_opt = load_library.AdamW(ref_model.parameters(), **OPTIONS)
        _train(ref_model, ref_opt, first + second)
        continued = _full_params(ref_model)
    return {
        "resumed": _full_params(fresh_model),
        "continued": continued,
        "init": init,
        "loaded_lr": loaded_lr,
        "loaded_class": type(fresh_opt).__module__.split(".")[0],
    }


CASES = {
    "fsdp2": ("fsdp2", fastoptim, fastoptim),
    "ddp": ("ddp", fastoptim, fastoptim),
    "fsdp2-torch-to-fastoptim": ("fsdp2", torch.optim, fastoptim),
    "ddp-fastoptim-to-torch": ("ddp", fastoptim, torch.optim),
}


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world_size,))
    out = {}
    for name, (kind, save_library, load_library) in CASES.items():
        out[name] = _resume_case(kind, save_library, load_library, rank, mesh, f"{out_dir}/{name}")
    torch.save(out, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("dcp")
    run_workers(_worker, str(out_dir), world_size=WORLD_SIZE)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)], out_dir


@pytest.mark.parametrize("name", ["fsdp2", "ddp"])
def test_dcp_checkpoint_resumes_training_identically(results, name):
    ranks, out_dir = results
    for r in ranks:
        case = r[name]
        assert_same_tensors(case["resumed"], case["continued"], rtol=0, atol=0)
        assert case["loaded_lr"] == OPTIONS["lr"]
    if name == "fsdp2":
        # each rank wrote its own shard of the sharded optimizer state
        assert len(list((out_dir / name).glob("__*_0.distcp"))) == WORLD_SIZE


@pytest.mark.parametrize("name", list(CASES))
def test_dcp_initialises_a_fresh_optimizer_without_moving_it(results, name):
    for r in results[0]:
        assert r[name]["init"] == {
            "params_unmoved": True,
            "lr_kept": True,
            "grads_cleared": True,
            "state_created": True,
        }


@pytest.mark.parametrize("name", ["fsdp2-torch-to-fastoptim", "ddp-fastoptim-to-torch"])
def test_dcp_checkpoints_cross_between_libraries(results, name):
    _, save_library, load_library = CASES[name]
    for r in results[0]:
        case = r[name]
        assert case["loaded_class"] == load_library.__name__.split(".")[0]
        assert_same_tensors(case["resumed"], case["continued"])
