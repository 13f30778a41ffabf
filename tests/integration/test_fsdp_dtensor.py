"""Parameters sharded as DTensor by FSDP2 ``fully_shard``: 2 gloo processes, CPU.

With FSDP2 the optimizer sees DTensor parameters, gradients and state (each
rank holds a shard) and nothing else changes for it.  An element-wise update
on the shards must equal the update on the full tensors.  One launch runs:

* FSDP2 training with fastoptim.AdamW and with torch.optim.AdamW, both compared
  with unsharded training on the global batch;
* fastoptim's numba kernels run directly on the ``.to_local()`` shards
  (parameter, gradient and state share the placement), compared with
  torch.optim on the full tensors.

``fastoptim.kernels.dispatch`` itself sends DTensor parameters to the reference
rule (DTensor's own element-wise ops); the last test records that.  Every
algorithm over ``distribute_tensor`` parameters: test_dtensor_algorithms.py.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import fastoptim

from ._common import assert_same_tensors, params_of, tiny_model
from ._dist import run_workers

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
STEPS = 4
FULL_SHAPES = [(7, 5), (7,)]  # 7 rows over 2 ranks: uneven shards (4 + 3)


def rank_batches(rank: int):
    generator = torch.Generator().manual_seed(300 + rank)
    return [(torch.randn(6, 5, generator=generator), torch.randn(6, 3, generator=generator)) for _ in range(STEPS)]


def _options(algorithm: str) -> dict:
    options: dict = {"lr": 0.01}
    if algorithm == "SGD":
        options.update(momentum=0.9, weight_decay=0.01)
    if algorithm in ("Adam", "AdamW"):
        options.update(weight_decay=0.1, amsgrad=True)
    return options


def _fsdp2_training(library, mesh, rank):
    from torch.distributed.fsdp import fully_shard

    model = tiny_model()
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = library.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    for x, y in rank_batches(rank):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model, optimizer


def _full_grads(step: int):
    generator = torch.Generator().manual_seed(400 + step)  # the same on every rank
    return [torch.randn(shape, generator=generator) for shape in FULL_SHAPES]


def _kernel_on_local_shards(algorithm, mesh):
    """Step a DTensor optimizer by running fastoptim's numba kernel on the ``.to_local()`` shards."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from fastoptim.kernels.capabilities import capability_of

    generator = torch.Generator().manual_seed(600)
    full = [torch.randn(shape, generator=generator) for shape in FULL_SHAPES]
    reference = [torch.nn.Parameter(t.clone()) for t in full]
    sharded = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in full]
    ref_opt = getattr(torch.optim, algorithm)(reference, **_options(algorithm))
    dist_opt = getattr(fastoptim, algorithm)(sharded, **_options(algorithm))
    kernel = importlib.import_module(capability_of(type(dist_opt).rule).module)
    for step in range(STEPS):
        for r, s, g in zip(reference, sharded, _full_grads(step)):
            r.grad = g.clone()
            s.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
        ref_opt.step()
        if step == 0:
            dist_opt.step()  # creates the (DTensor) state
            continue
        group = dist_opt.param_groups[0]
        options = dist_opt._rule_options(group)
        local_params, local_state = [], {}
        for p in group["params"]:
            local = p.to_local().detach()  # a view of this rank's shard
            local.grad = p.grad.to_local()
            local_state[local] = {
                k: v.to_local() if isinstance(v, DTensor) else v for k, v in dist_opt.state[p].items()
            }
            local_params.append(local)
        gathered = kernel.gather_(local_params, local_state, options)
        assert not gathered.rest, gathered.reasons  # every shard went through the kernel
        kernel.run_(gathered, options)
    return max((s.full_tensor() - r.detach()).abs().max().item() for s, r in zip(sharded, reference))


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from fastoptim.kernels import dispatch

    mesh = init_device_mesh("cpu", (world_size,))
    out: dict = {}

    fast_model, fast_opt = _fsdp2_training(fastoptim, mesh, rank)
    torch_model, _ = _fsdp2_training(torch.optim, mesh, rank)
    out["fsdp2_fastoptim"] = [p.full_tensor().detach() for p in fast_model.parameters()]
    out["fsdp2_torch"] = [p.full_tensor().detach() for p in torch_model.parameters()]
    weight = next(fast_model.parameters())
    state = fast_opt.state[weight]
    out["fsdp2_state"] = {
        "param_local_shape": tuple(weight.to_local().shape),
        "exp_avg_is_dtensor": isinstance(state["exp_avg"], DTensor),
        "exp_avg_placements": str(state["exp_avg"].placements),
        "exp_avg_local_shape": tuple(state["exp_avg"].to_local().shape),
    }
    out["fsdp2_backend"] = dispatch.explain(fast_opt)

    out["local_kernel"] = {algorithm: _kernel_on_local_shards(algorithm, mesh) for algorithm in ("SGD", "Adam")}
    torch.save(out, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fsdp")
    run_workers(_worker, str(out_dir), world_size=WORLD_SIZE)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def _unsharded_adamw() -> list[torch.Tensor]:
    """FSDP2 averages the ranks' gradients: the same as one model on both ranks' batches."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    for batches in zip(*(rank_batches(rank) for rank in range(WORLD_SIZE))):
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return params_of(model)


def test_fsdp2_with_fastoptim_matches_unsharded_training(results):
    expected = _unsharded_adamw()
    for r in results:
        # reduce-scatter sums in another order than one big batch: float32 rounding apart
        assert_same_tensors(r["fsdp2_fastoptim"], expected, rtol=1e-5, atol=1e-6)
        assert_same_tensors(r["fsdp2_fastoptim"], r["fsdp2_torch"])


def test_fsdp2_optimizer_state_is_sharded(results):
    for rank, r in enumerate(results):
        state = r["fsdp2_state"]
        assert state["exp_avg_is_dtensor"] and "Shard(dim=0)" in state["exp_avg_placements"]
        assert state["exp_avg_local_shape"] == state["param_local_shape"] == ((4, 5) if rank == 0 else (3, 5))


@pytest.mark.parametrize("algorithm", ["SGD", "Adam"])
def test_numba_kernels_run_on_local_shards(results, algorithm):
    """The kernels are correct on ``.to_local()`` shards: element-wise math does not care how the
    tensor is split, as long as parameter, gradient and state are split alike."""
    for r in results:
        assert r["local_kernel"][algorithm] <= 1e-6


def test_dispatch_uses_the_kernels_for_dtensor_parameters(results):
    """FSDP2's DTensor parameters run the kernels on their local shards (fastoptim.kernels.shards)."""
    assert all(group["backend"] == "numba" for group in results[0]["fsdp2_backend"]), results[0]["fsdp2_backend"]
