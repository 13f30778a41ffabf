"""Parameter groups that users otherwise write by hand, built from ``model.named_parameters()``.

Two recipes appear in almost every training script for transformers and
CNNs:

* **no weight decay on biases and normalisation weights** -- decaying a
  LayerNorm gain towards 0 or a bias towards 0 only hurts;
* **layer-wise learning-rate decay** (LLRD, as in BEiT, ELECTRA, DeBERTa
  fine-tuning) -- the layers near the input get a smaller lr than the head:
  ``lr_l = lr · decay^(top - l)``.

Every function returns a list of parameter-group dicts that any optimizer
accepts, fastoptim's or torch.optim's.  The ``params`` of each group are
``(name, parameter)`` pairs, so the optimizer records ``param_names`` and
``state_dict()`` / checkpoints show which parameter is which::

    from fastoptim.param_groups import no_decay_groups, layerwise_lr_decay_groups

    opt = fastoptim.AdamW(no_decay_groups(model, weight_decay=0.05), lr=1e-3)
    opt = fastoptim.AdamW(layerwise_lr_decay_groups(model, lr=1e-3, decay=0.75, weight_decay=0.05))

What is decayed is decided by :func:`decay_mask` (``name -> bool``); pass
your own mask (``mask=decay_mask(model, exclude_1d=False)``, or any dict) to
change the rule.  Empty groups are left out (an optimizer refuses to mix an
empty, unnamed group with named ones).  Parameters shared between modules
(tied weights) appear once, under their first name, as in
``named_parameters()``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

__all__ = ["NORM_TYPES", "decay_mask", "layer_ids", "layerwise_lr_decay_groups", "no_decay_groups"]

#: Module types whose parameters are never decayed: every normalisation layer
#: of torch.nn (``_NormBase`` covers BatchNorm*, SyncBatchNorm, InstanceNorm*
#: and their lazy variants).  Extend it, e.g. ``NORM_TYPES + (nn.Embedding,)``
#: to leave embeddings undecayed too.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Parameter name -> (the module that registers it, its local name)."""
    owners: dict[str, tuple[nn.Module, str]] = {}
    for module_name, module in model.named_modules():
        for local_name, _ in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{local_name}" if module_name else local_name
            owners.setdefault(full_name, (module, local_name))
    return owners


def decay_mask(
    model: nn.Module,
    *,
    exclude_bias: bool = True,
    exclude_norm: bool = True,
    exclude_1d: bool = True,
    exclude_names: Iterable[str] = (),
    norm_types: tuple[type[nn.Module], ...] = NORM_TYPES,
) -> dict[str, bool]:
    """Which parameters weight decay applies to: ``{name: True (decay) / False (no decay)}``.

    Args:
        model: the module; names are those of ``model.named_parameters()``.
        exclude_bias: no decay for biases (a parameter registered as ``bias``
            or ``*_bias``, e.g. ``in_proj_bias`` of ``nn.MultiheadAttention``).
        exclude_norm: no decay for any parameter of a module whose type is in
            ``norm_types`` (detected by type, not by name).
        exclude_1d: no decay for parameters with fewer than 2 dimensions
            (gains, scales, learned temperatures, positional scalars).
        exclude_names: shell-style patterns matched against full names, e.g.
            ``("pos_embed", "*.cls_token")``.
        norm_types: the module types ``exclude_norm`` refers to.
    """
    patterns = list(exclude_names)
    owners = _owners(model)
    mask = {}
    for name, param in model.named_parameters():
        module, local_name = owners[name]
        no_decay = (
            (exclude_bias and (local_name == "bias" or local_name.endswith("_bias")))
            or (exclude_norm and isinstance(module, norm_types))
            or (exclude_1d and param.dim() < 2)
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        )
        mask[name] = not no_decay
    return mask


def _check_weight_decay(weight_decay: float) -> None:
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def _named(model: nn.Module, trainable_only: bool) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]


def _checked_mask(model: nn.Module, mask: Mapping[str, bool] | None) -> Mapping[str, bool]:
    if mask is None:
        return decay_mask(model)
    missing = [name for name, _ in model.named_parameters() if name not in mask]
    if missing:
        raise KeyError(f"mask has no entry for parameter(s) {missing}")
    return mask


def no_decay_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    mask: Mapping[str, bool] | None = None,
    trainable_only: bool = True,
) -> list[dict[str, Any]]:
    """Two groups: ``weight_decay`` for the weights, ``0.0`` for biases, norm weights and 1-D parameters.

    Args:
        model: the module whose ``named_parameters()`` are grouped.
        weight_decay: λ of the decayed group (the other group gets 0).
        mask: ``name -> decay?``; default :func:`decay_mask(model) <decay_mask>`.
        trainable_only: leave out parameters with ``requires_grad=False``.

    Returns:
        ``[{"params": [(name, p), ...], "weight_decay": weight_decay},
        {"params": [...], "weight_decay": 0.0}]``, without empty groups.
    """
    _check_weight_decay(weight_decay)
    mask = _checked_mask(model, mask)
    named = _named(model, trainable_only)
    decayed = [(n, p) for n, p in named if mask[n]]
    undecayed = [(n, p) for n, p in named if not mask[n]]
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": undecayed, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _first_index(name: str) -> int | None:
    """Position of the first dotted component that is an integer (a ModuleList/Sequential index)."""
    for position, part in enumerate(name.split(".")[:-1]):
        if part.isdigit():
            return position
    return None


def layer_ids(model: nn.Module, *, layer_of: Callable[[str], int] | None = None) -> dict[str, int]:
    """The depth of every parameter, from 0 (input side) upwards; the head has the largest id.

    With ``layer_of`` (``name -> id``) the ids are yours.  Otherwise they are
    read off the names, in ``named_parameters()`` order:

    * a *block* is a name prefix ending at its first integer component --
      ``encoder.layer.3`` of ``encoder.layer.3.attention.query.weight``,
      ``blocks.0`` in a ViT, ``layer2.1`` in a ResNet, ``0`` in an
      ``nn.Sequential``; blocks are numbered 1, 2, … in the order they appear;
    * a parameter in no block gets 0 before the first block (embeddings,
      stem), the id of the block before it between blocks, and the last
      block's id + 1 after the last block (final norm, head);
    * if no name has an integer component, each top-level child module is a
      layer (0, 1, … in order of appearance).
    """
    names = [name for name, _ in model.named_parameters()]
    if layer_of is not None:
        return {name: int(layer_of(name)) for name in names}
    blocks: dict[str, int] = {}
    block_of: dict[str, int | None] = {}
    for name in names:
        index = _first_index(name)
        if index is None:
            block_of[name] = None
            continue
        key = ".".join(name.split(".")[: index + 1])
        block_of[name] = blocks.setdefault(key, len(blocks) + 1)
    if not blocks:
        tops: dict[str, int] = {}
        return {name: tops.setdefault(name.split(".")[0], len(tops)) for name in names}
    in_block = [i for i, name in enumerate(names) if block_of[name] is not None]
    first, last = in_block[0], in_block[-1]
    ids: dict[str, int] = {}
    previous = 0
    for i, name in enumerate(names):
        block = block_of[name]
        if block is not None:
            previous = block
            ids[name] = block
        elif i < first:
            ids[name] = 0
        elif i > last:
            ids[name] = len(blocks) + 1
        else:
            ids[name] = previous
    return ids


def layerwise_lr_decay_groups(
    model: nn.Module,
    lr: float,
    decay: float,
    *,
    weight_decay: float | None = None,
    mask: Mapping[str, bool] | None = None,
    layer_of: Callable[[str], int] | None = None,
    trainable_only: bool = True,
) -> list[dict[str, Any]]:
    """One group per layer with ``lr · decay^(top − layer)``; split by weight decay if it is given.

    Args:
        model: the module whose ``named_parameters()`` are grouped.
        lr: the learning rate of the top layer (the head).
        decay: the factor per layer towards the input, in (0, 1].
        weight_decay: if given, each layer is split as :func:`no_decay_groups`
            splits (``weight_decay`` / ``0.0``); if None, groups set no
            ``weight_decay`` and the optimizer's default applies.
        mask: ``name -> decay?`` for the split; default :func:`decay_mask`.
        layer_of: ``name -> layer id`` (see :func:`layer_ids` for the default).
        trainable_only: leave out parameters with ``requires_grad=False``.

    Returns:
        Groups ordered from the input side to the head, each
        ``{"params": [(name, p), ...], "lr": ..., ["weight_decay": ...]}``.
        LR schedulers scale each group's lr from its own starting value, so the
        ratios between layers are kept through the schedule.
    """
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"Invalid layer-wise lr decay: {decay} (expected 0 < decay <= 1)")
    if weight_decay is not None:
        _check_weight_decay(weight_decay)
        mask = _checked_mask(model, mask)
    ids = layer_ids(model, layer_of=layer_of)
    top = max(ids.values(), default=0)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in _named(model, trainable_only):
        layer = ids[name]
        decays = weight_decay is not None and bool(mask[name])  # type: ignore[index]
        group = groups.get((layer, not decays))
        if group is None:
            group = groups[(layer, not decays)] = {"params": [], "lr": lr * decay ** (top - layer)}
            if weight_decay is not None:
                group["weight_decay"] = weight_decay if decays else 0.0
        group["params"].append((name, param))
    return [groups[key] for key in sorted(groups)]
