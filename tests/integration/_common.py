"""Helpers shared by the integration tests: the algorithms to sweep and a tiny model."""

from __future__ import annotations

import torch

import fastoptim

# torch.optim algorithms that fastoptim exports (the list grows as algorithms land).
ALGORITHMS = sorted(
    name
    for name in getattr(fastoptim, "__all__", dir(fastoptim))
    if isinstance(getattr(fastoptim, name, None), type)
    and issubclass(getattr(fastoptim, name), torch.optim.Optimizer)
    and name != "Optimizer"
    and hasattr(torch.optim, name)
)

# Dense algorithms that take step() with an ordinary dense gradient.
DENSE_ALGORITHMS = [name for name in ALGORITHMS if name != "SparseAdam"]


def optimizer_params(model: torch.nn.Module, algorithm: str) -> list[torch.Tensor]:
    """The parameters an algorithm is given: Muon takes only matrices (as in torch.optim)."""
    if algorithm == "Muon":
        return [p for p in model.parameters() if p.dim() == 2]
    return list(model.parameters())


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def batches(count: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=generator), torch.randn(8, 3, generator=generator)) for _ in range(count)]


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_same_tensors(actual, expected, **tolerance) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **tolerance)


def assert_same_state(fast_opt, torch_opt, **tolerance) -> None:
    """Every per-parameter state entry equal (the state_dicts use the same layout)."""
    fast_state = fast_opt.state_dict()["state"]
    torch_state = torch_opt.state_dict()["state"]
    assert fast_state.keys() == torch_state.keys()
    for index in torch_state:
        assert fast_state[index].keys() == torch_state[index].keys(), index
        for key, value in torch_state[index].items():
            torch.testing.assert_close(fast_state[index][key], value, **tolerance)
