"""fastoptim.param_groups: no-decay groups and layer-wise lr decay from named parameters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastoptim
from fastoptim.param_groups import (
    NORM_TYPES,
    decay_mask,
    layer_ids,
    layerwise_lr_decay_groups,
    no_decay_groups,
)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, num_heads=2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        h = self.ln(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(x)


class TinyViT(nn.Module):
    """Embedding side, a ModuleList of blocks, final norm and head: the layout LLRD is made for."""

    def __init__(self, width: int = 8, depth: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, width) * 0.02)
        self.patch_embed = nn.Linear(6, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):  # x: (batch, 4 patches, 6)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.rms = nn.RMSNorm(4)
        self.norm = nn.Linear(4, 4)  # named "norm" but not a norm layer: decayed
        self.embed = nn.Embedding(10, 4)
        self.scale = nn.Parameter(torch.ones(()))
        self.fc = nn.Linear(4, 3, bias=False)


def names(groups) -> list[list[str]]:
    return [[n for n, _ in g["params"]] for g in groups]


def all_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


# ----------------------------------------------------------------------------- decay_mask


def test_decay_mask_detects_biases_norms_and_1d_parameters():
    mask = decay_mask(ConvNet())
    assert mask == {
        "conv.weight": True,
        "conv.bias": False,
        "bn.weight": False,
        "bn.bias": False,
        "gn.weight": False,
        "gn.bias": False,
        "rms.weight": False,
        "norm.weight": True,  # a Linear called "norm": detected by type, not by name
        "norm.bias": False,
        "embed.weight": True,
        "scale": False,  # 0-dim
        "fc.weight": True,
    }


def test_decay_mask_options():
    model = ConvNet()
    keep_1d = decay_mask(model, exclude_1d=False)
    assert keep_1d["scale"] and not keep_1d["bn.weight"] and not keep_1d["conv.bias"]
    keep_norms = decay_mask(model, exclude_norm=False, exclude_1d=False)
    assert keep_norms["bn.weight"] and not keep_norms["bn.bias"]
    nothing = decay_mask(model, exclude_bias=False, exclude_norm=False, exclude_1d=False)
    assert all(nothing.values())
    embeddings_too = decay_mask(model, norm_types=NORM_TYPES + (nn.Embedding,))
    assert not embeddings_too["embed.weight"]
    by_pattern = decay_mask(model, exclude_names=["emb*", "fc.*"])
    assert not by_pattern["embed.weight"] and not by_pattern["fc.weight"] and by_pattern["conv.weight"]


def test_decay_mask_on_a_transformer():
    mask = decay_mask(TinyViT(), exclude_names=["pos_embed"])
    assert mask["cls_token"]  # 3-D: decayed unless named
    assert not mask["pos_embed"]
    assert not mask["blocks.0.attn.in_proj_bias"]  # a *_bias of nn.MultiheadAttention
    assert mask["blocks.0.attn.in_proj_weight"] and mask["blocks.0.attn.out_proj.weight"]
    assert not mask["blocks.2.ln.weight"] and not mask["norm.weight"]


# ----------------------------------------------------------------------------- no_decay_groups


def test_no_decay_groups_split_every_parameter_once():
    model = TinyViT()
    groups = no_decay_groups(model, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    decayed, undecayed = names(groups)
    assert set(decayed) | set(undecayed) == all_names(model)
    assert not set(decayed) & set(undecayed)
    assert "head.weight" in decayed and "head.bias" in undecayed and "norm.weight" in undecayed
    # each entry is (name, the model's own parameter)
    params = dict(model.named_parameters())
    assert all(p is params[n] for g in groups for n, p in g["params"])


@pytest.mark.parametrize("library", [fastoptim, torch.optim], ids=["fastoptim", "torch"])
def test_groups_keep_param_names_in_the_optimizer(library):
    model = TinyViT()
    optimizer = library.AdamW(no_decay_groups(model, weight_decay=0.05), lr=1e-3)
    assert [g["param_names"] for g in optimizer.param_groups] == names(no_decay_groups(model, 0.05))
    saved = optimizer.state_dict()["param_groups"]
    assert saved[0]["param_names"][0] == "cls_token" and saved[1]["weight_decay"] == 0.0


def test_no_decay_groups_train_like_hand_written_groups():
    """The helper's groups give the same training as the groups people write by hand."""

    def train(make_groups):
        torch.manual_seed(0)
        model = TinyViT()
        optimizer = fastoptim.AdamW(make_groups(model), lr=1e-2)
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(4, 4, 6, generator=generator), torch.randint(0, 4, (4,), generator=generator)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    def by_hand(model):
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.dim() < 2 or name.endswith("bias") else decay).append(p)
        return [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]

    for a, b in zip(train(lambda m: no_decay_groups(m, 0.1)), train(by_hand)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_decay_groups_edge_cases():
    only_weights = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 2, bias=False))
    groups = no_decay_groups(only_weights, 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1  # no empty no-decay group
    fastoptim.SGD(groups, lr=0.1)  # a named group next to an empty unnamed one would be refused

    frozen = TinyViT()
    frozen.patch_embed.requires_grad_(False)
    assert "patch_embed.weight" not in sum(names(no_decay_groups(frozen, 0.1)), [])
    assert "patch_embed.weight" in sum(names(no_decay_groups(frozen, 0.1, trainable_only=False)), [])

    tied = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    tied[1].weight = tied[0].weight
    assert names(no_decay_groups(tied, 0.1)) == [["0.weight"]]

    custom = no_decay_groups(ConvNet(), 0.1, mask={n: n.startswith("fc") for n in all_names(ConvNet())})
    assert names(custom)[0] == ["fc.weight"]


def test_no_decay_groups_errors():
    with pytest.raises(ValueError, match="Invalid weight_decay value: -0.1"):
        no_decay_groups(TinyViT(), weight_decay=-0.1)
    with pytest.raises(KeyError, match="mask has no entry"):
        no_decay_groups(TinyViT(), 0.1, mask={"head.weight": True})


# ----------------------------------------------------------------------------- layer ids and LLRD


def test_layer_ids_of_a_transformer():
    ids = layer_ids(TinyViT(depth=3))
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.weight"] == 0
    assert ids["blocks.0.ln.weight"] == ids["blocks.0.mlp.2.bias"] == 1
    assert ids["blocks.2.attn.in_proj_weight"] == 3
    assert ids["norm.weight"] == ids["head.bias"] == 4


def test_layer_ids_of_other_layouts():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert set(layer_ids(mlp).items()) == {
        ("0.weight", 1), ("0.bias", 1), ("2.weight", 2), ("2.bias", 2), ("4.weight", 3), ("4.bias", 3)
    }

    class NoIndices(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(3, 4)
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

    assert layer_ids(NoIndices()) == {
        "stem.weight": 0, "stem.bias": 0, "body.weight": 1, "body.bias": 1, "head.weight": 2, "head.bias": 2
    }

    class Between(nn.Module):  # a module between two blocks belongs to the block before it
        def __init__(self):
            super().__init__()
            self.gate = nn.Parameter(torch.ones(2))  # direct parameters come first: the input side
            self.first = nn.ModuleList([nn.Linear(2, 2)])
            self.mid = nn.LayerNorm(2)
            self.second = nn.ModuleList([nn.Linear(2, 2)])

    between = layer_ids(Between())
    assert between["gate"] == 0 and between["mid.weight"] == 1 and between["second.0.weight"] == 2

    custom = layer_ids(TinyViT(), layer_of=lambda name: 7 if name.startswith("head") else 0)
    assert custom["head.weight"] == 7 and custom["blocks.1.ln.bias"] == 0


def test_layerwise_lr_decay_groups_lrs():
    model = TinyViT(depth=3)
    groups = layerwise_lr_decay_groups(model, lr=1.0, decay=0.5)
    ids = layer_ids(model)
    assert [g["lr"] for g in groups] == [0.5**4, 0.5**3, 0.5**2, 0.5, 1.0]
    assert all("weight_decay" not in g for g in groups)
    for group in groups:
        # lr = 0.5^(top - id) with top = 4
        assert {ids[n] for n, _ in group["params"]} == {4 - round(math.log(group["lr"], 0.5))}
    assert set(sum(names(groups), [])) == all_names(model)


def test_layerwise_lr_decay_groups_with_weight_decay():
    model = TinyViT(depth=2)
    groups = layerwise_lr_decay_groups(model, lr=1e-3, decay=0.8, weight_decay=0.05)
    mask = decay_mask(model)
    assert len(groups) == 2 * 4  # every layer has weights and no-decay parameters
    for group in groups:
        assert all(mask[n] == (group["weight_decay"] == 0.05) for n, _ in group["params"])
    lrs = sorted({g["lr"] for g in groups})
    assert lrs == pytest.approx([1e-3 * 0.8**k for k in (3, 2, 1, 0)])


@pytest.mark.parametrize("library", [fastoptim, torch.optim], ids=["fastoptim", "torch"])
def test_layerwise_groups_keep_their_ratios_under_a_scheduler(library):
    model = TinyViT(depth=2)
    optimizer = library.AdamW(layerwise_lr_decay_groups(model, lr=1e-2, decay=0.5, weight_decay=0.01))
    start = [g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    factor = optimizer.param_groups[-1]["lr"] / start[-1]
    assert 0 < factor < 1
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr * factor for lr in start])


def test_layerwise_lr_decay_groups_errors():
    with pytest.raises(ValueError, match="Invalid learning rate"):
        layerwise_lr_decay_groups(TinyViT(), lr=-1.0, decay=0.5)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="layer-wise lr decay"):
            layerwise_lr_decay_groups(TinyViT(), lr=1e-3, decay=bad)
    with pytest.raises(ValueError, match="Invalid weight_decay"):
        layerwise_lr_decay_groups(TinyViT(), lr=1e-3, decay=0.5, weight_decay=-1.0)


def test_groups_checkpoint_crosses_libraries():
    """A fastoptim optimizer built from these groups saves a state_dict torch.optim loads."""
    model = TinyViT()
    groups = layerwise_lr_decay_groups(model, lr=1e-3, decay=0.7, weight_decay=0.05)
    fast = fastoptim.AdamW(groups)
    x, y = torch.randn(2, 4, 6), torch.tensor([0, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    fast.step()
    ref = torch.optim.AdamW(layerwise_lr_decay_groups(model, lr=1.0, decay=0.5, weight_decay=0.0))
    ref.load_state_dict(fast.state_dict())
    assert [g["lr"] for g in ref.param_groups] == [g["lr"] for g in fast.param_groups]
    assert [g["param_names"] for g in ref.param_groups] == [g["param_names"] for g in fast.param_groups]
