"""Worker for test_dtensor_kernels.py: one gloo process, DTensor parameters, kernels vs reference rules.

Prints one JSON line: per algorithm, what ``explain`` said before each step with
the default backend, the largest difference from the reference-rule run, and
whether the state kept the reference run's keys and tensor types.
"""

from __future__ import annotations

import faulthandler
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard, distribute_tensor, init_device_mesh

import fastoptim
from fastoptim.kernels import dispatch

CASES = {
    "SGD": dict(lr=0.1, momentum=0.9),  # the first step creates the momentum buffer
    "Adam": {},
    "AdamW": dict(weight_decay=0.1),
    "RMSprop": dict(centered=True),
    "Adadelta": {},
    "ASGD": dict(t0=1),  # averaging starts at once: ax is read too
    "Lion": {},
    "LARS": {},  # norms of whole tensors: stays with the reference rule
}


def run(name: str, options: dict, backend: str, mesh, full: torch.Tensor, grads: list[torch.Tensor]):
    param = torch.nn.Parameter(distribute_tensor(full.clone(), mesh, [Shard(0)]))
    bias = torch.nn.Parameter(torch.zeros(3))  # a plain tensor in the same group
    optimizer = getattr(fastoptim, name)([param, bias], **options)
    backends, versions_moved = [], True
    with dispatch.use_backend(backend):
        for g in grads:
            param.grad = distribute_tensor(g, mesh, [Shard(0)])
            bias.grad = g[0, :3].clone()
            backends.append(dispatch.explain(optimizer)[0]["backend"])
            before = param._version
            optimizer.step()
            versions_moved &= param._version > before
    state = optimizer.state[param]
    tensors = {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in state.items() if isinstance(v, torch.Tensor)}
    types = {k: type(v).__name__ for k, v in state.items()}
    return param.detach().full_tensor(), bias.detach().clone(), tensors, types, backends, versions_moved


def main() -> None:
    faulthandler.enable(all_threads=True)  # a C++ crash prints every thread's Python stack
    dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    out = {}
    for name, options in CASES.items():
        torch.manual_seed(0)
        full = torch.randn(7, 5)
        grads = [torch.randn(7, 5) for _ in range(4)]
        fast = run(name, options, "auto", mesh, full, grads)
        ref = run(name, options, "reference", mesh, full, grads)
        diff = max(
            [float((fast[0] - ref[0]).abs().max()), float((fast[1] - ref[1]).abs().max())]
            + [float((fast[2][k].double() - ref[2][k].double()).abs().max()) for k in ref[2]]
        )
        out[name] = {
            "backends": fast[4],
            "max_difference": diff,
            "same_state_types": fast[3] == ref[3],
            "state_types": fast[3],
            "versions_moved": fast[5],
        }
    dist.destroy_process_group()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
