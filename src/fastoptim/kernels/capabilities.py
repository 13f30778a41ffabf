"""The capability table: which fast kernel reproduces which reference rule, and when.

A kernel is used for a parameter only when *everything* below holds; anything
else runs the reference rule, so correctness never depends on the kernel path.

Per group (checked on the options the optimizer hands its reference rule):

* the optimizer's ``rule`` *is* the reference function named in the table (a
  subclass with its own rule never gets the kernel);
* no option has a value listed in ``excludes`` (``differentiable=True``
  everywhere; ``capturable=True`` where the reference's capturable branch does
  different arithmetic);
* an option given as a tensor is named in ``tensor_options`` and is a plain
  1-element tensor that does not require grad (it is read once per step, as
  torch's own fused kernels read a tensor lr);
* ``torch.compile`` is not tracing the step (the kernel cannot be traced).

Per parameter (see :func:`fastoptim.kernels.cpu._launch.why_not`):

* a CPU, strided, float32 / float64 / bfloat16 tensor, not a subclass -- except a
  DTensor (FSDP2, ``distribute_tensor``) whose gradient and state buffers are
  DTensors placed exactly like it, with no ``Partial`` placement: its local shard
  is updated, for the algorithms whose kernel is ``per_element`` (not LAMB,
  LARS, SparseAdam: their norms span the whole tensor); complex parameters fall back;
* a dense gradient of the same dtype (SparseAdam: a sparse COO gradient, sparse
  in dim 0, and a contiguous parameter); every state buffer of the same dtype;
  parameter, gradient and buffers all contiguous, or all dense with the same
  strides (a transposed weight qualifies);
* 0-dim state (``step``, ``mu_product``, ``eta``, ``mu``) a float32/float64 CPU tensor;
* no parameter listed twice in the group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Capability:
    """One row of the table."""

    algorithm: str
    #: ``module.qualname`` of the reference rule the kernel reproduces
    reference: str
    #: the kernel module, imported on first use
    module: str
    #: ``(option, value)`` pairs that send the group to the reference rule
    excludes: tuple[tuple[str, object], ...] = (("differentiable", True),)
    #: options that may be 1-element tensors
    tensor_options: tuple[str, ...] = ("lr",)
    #: what the kernel covers, in words (docs/kernels.md repeats it)
    covers: str = ""
    #: each element's update needs only that element and per-tensor scalars, so a DTensor
    #: shard can be updated on its own (False where the kernel takes norms of whole tensors)
    per_element: bool = True


_CAPTURABLE_TOO = (("differentiable", True), ("capturable", True))

TABLE: tuple[Capability, ...] = (
    Capability(
        "SGD",
        "fastoptim.algorithms.sgd.sgd_reference",
        "fastoptim.kernels.cpu.sgd",
        tensor_options=("lr", "weight_decay"),
        covers="momentum (the first step creates and fills the buffer), dampening, nesterov, weight decay, maximize",
    ),
    Capability(
        "Adam, AdamW",
        "fastoptim.algorithms.adam.adam_reference",
        "fastoptim.kernels.cpu.adam",
        excludes=_CAPTURABLE_TOO,
        covers="amsgrad, L2 or decoupled weight decay, maximize",
    ),
    Capability(
        "Adagrad",
        "fastoptim.algorithms.adagrad.adagrad_reference",
        "fastoptim.kernels.cpu.adagrad",
        covers="lr_decay, weight decay, maximize, fused=True groups; sparse gradients fall back per parameter",
    ),
    Capability(
        "RMSprop",
        "fastoptim.algorithms.rmsprop.rmsprop_reference",
        "fastoptim.kernels.cpu.rmsprop",
        covers="centered, momentum, weight decay, maximize, capturable (same arithmetic in the reference)",
    ),
    Capability(
        "Adadelta",
        "fastoptim.algorithms.adadelta.adadelta_reference",
        "fastoptim.kernels.cpu.adadelta",
        covers="weight decay, maximize, capturable (same arithmetic in the reference)",
    ),
    Capability(
        "Adamax",
        "fastoptim.algorithms.adamax.adamax_reference",
        "fastoptim.kernels.cpu.adamax",
        excludes=_CAPTURABLE_TOO,
        covers="weight decay, maximize",
    ),
    Capability(
        "NAdam",
        "fastoptim.algorithms.nadam.nadam_reference",
        "fastoptim.kernels.cpu.nadam",
        excludes=_CAPTURABLE_TOO,
        covers="momentum_decay schedule (mu_product updated in place), L2 or decoupled weight decay, maximize",
    ),
    Capability(
        "RAdam",
        "fastoptim.algorithms.radam.radam_reference",
        "fastoptim.kernels.cpu.radam",
        excludes=_CAPTURABLE_TOO,
        covers="rectified and unrectified steps (per tensor), L2 or decoupled weight decay, maximize",
    ),
    Capability(
        "ASGD",
        "fastoptim.algorithms.asgd.asgd_reference",
        "fastoptim.kernels.cpu.asgd",
        excludes=_CAPTURABLE_TOO,
        tensor_options=(),
        covers="eta/mu schedules (updated in place), averaging before and after t0, weight decay, maximize",
    ),
    Capability(
        "Rprop",
        "fastoptim.algorithms.rprop.rprop_reference",
        "fastoptim.kernels.cpu.rprop",
        covers="etas, step-size clamping, maximize, capturable (same arithmetic in the reference)",
    ),
    Capability(
        "Lion",
        "fastoptim.algorithms.lion.lion_reference",
        "fastoptim.kernels.cpu.lion",
        excludes=(),
        covers="decoupled weight decay (either flavour), maximize",
    ),
    Capability(
        "Adan",
        "fastoptim.algorithms.adan.adan_reference",
        "fastoptim.kernels.cpu.adan",
        excludes=(),
        covers="decoupled or proximal weight decay, maximize; bias corrections from the group's step",
    ),
    Capability(
        "Lamb",
        "fastoptim.algorithms.lamb.lamb_reference",
        "fastoptim.kernels.cpu.lamb",
        excludes=(),
        per_element=False,
        covers="two passes in one launch (moments and norms, then the step); every variant flag; float32/float64 "
        "(bfloat16 falls back: its 0-dim norm state is bfloat16)",
    ),
    Capability(
        "LARS",
        "fastoptim.algorithms.lars.lars_reference",
        "fastoptim.kernels.cpu.lars",
        excludes=(),
        per_element=False,
        covers="trust ratios (the reference's norms, computed by torch while gathering), momentum, nesterov, "
        "dampening, weight decay, maximize",
    ),
    Capability(
        "Adafactor",
        "fastoptim.algorithms.adafactor.adafactor_reference",
        "fastoptim.kernels.cpu.adafactor",
        excludes=(),
        per_element=False,
        covers="four passes in one launch (θ norms and row/column sums of g², the factors, the update norms, the step); "
        "factored (≥ 2-D, contiguous or transposed in the last two dimensions) and unfactored parameters, weight decay, "
        "ε₁ = None, maximize, a float32/float64 tensor lr; float32/float64/bfloat16. Empty parameters and other "
        "layouts fall back",
    ),
    Capability(
        "SparseAdam",
        "fastoptim.algorithms.sparse_adam.sparse_adam_reference",
        "fastoptim.kernels.cpu.sparse_adam",
        excludes=(),
        per_element=False,
        tensor_options=(),
        covers="sparse COO gradients sparse in dim 0 (nn.Embedding(sparse=True)), coalesced as the reference does; "
        "only the gradient's rows are read and written; maximize; no fast-math (moments bit-identical to the reference, "
        "parameters within an ulp: torch's sqrt is MKL's). "
        "A tensor lr, gradients with sparse_dim > 1 and non-contiguous parameters fall back",
    ),
    Capability(
        "AdamWScheduleFree",
        "fastoptim.algorithms.schedule_free.adamw_schedule_free_reference",
        "fastoptim.kernels.cpu.schedule_free",
        excludes=(),
        tensor_options=(),
        covers="weight decay at y, warmup and averaging weights (per group, in Python); train()/eval() are torch ops",
    ),
    Capability(
        "SGDScheduleFree",
        "fastoptim.algorithms.schedule_free.sgd_schedule_free_reference",
        "fastoptim.kernels.cpu.schedule_free",
        excludes=(),
        tensor_options=(),
        covers="weight decay at y, warmup and averaging weights (per group, in Python); train()/eval() are torch ops",
    ),
)

_BY_REFERENCE = {cap.reference: cap for cap in TABLE}


def capability_of(rule: object) -> Capability | None:
    """The table row whose reference rule is ``rule`` (None: no kernel)."""
    name = f"{getattr(rule, '__module__', '')}.{getattr(rule, '__qualname__', '')}"
    return _BY_REFERENCE.get(name)


def group_reason(cap: Capability, options: dict) -> str | None:
    """Why the group's options rule the kernel out (None: they do not)."""
    for key, value in cap.excludes:
        if options.get(key) == value:
            return f"{key}={value!r}"
    for key, value in options.items():
        if isinstance(value, torch.Tensor):
            if key not in cap.tensor_options:
                return f"{key} given as a tensor"
            if value.requires_grad or value.numel() != 1:
                return f"{key} is a tensor that requires grad or has more than one element"
    return None
