"""The minimum memory traffic of one optimizer step: the yardstick for GB/s.

An optimizer step is bound by memory bandwidth, so its speed is reported as
``bytes it must move / step time``.  "Must move" is the *minimum*: every
per-element tensor the update reads is read once and every tensor it changes
is written once, nothing else.  A backend that makes extra passes (the
for-loop's temporaries, foreach's intermediate lists) pays for them in time but
gets no credit for them in bytes, so GB/s compares backends fairly and can be
put next to the copy ceiling.

The table is per element, for each algorithm in its *default* configuration
(the constructor's defaults, which is what the bench runs).  Per-parameter
scalars (``step``, ASGD's ``eta``/``mu``, NAdam's ``mu_product``) are a few
bytes per tensor and are left out.

L-BFGS is the exception: a step runs a closure several times and sweeps its
stored curvature pairs, so its traffic per element depends on ``max_iter`` and
``history_size`` (:func:`lbfgs_traffic`, the bench's options in
``variants.BENCH_OPTIONS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = [
    "BYTE_MODEL",
    "CEILING",
    "INDEX_BYTES",
    "CountedTraffic",
    "Traffic",
    "VECTOR_BYTE_MODEL",
    "ceiling_bytes",
    "lbfgs_traffic",
    "model_for",
    "traffic_for",
    "step_bytes",
]


@dataclass(frozen=True)
class Traffic:
    """Per-element tensors an update must read and write (names are torch's state keys)."""

    reads: tuple[str, ...]
    writes: tuple[str, ...]
    note: str = ""

    @property
    def tensors_per_element(self) -> int:
        """Reads plus writes, in units of one element of the parameter's dtype."""
        return len(self.reads) + len(self.writes)

    def bytes_per_element(self, element_size: int) -> int:
        return self.tensors_per_element * element_size


_ADAM_LIKE = ("param", "grad", "exp_avg", "exp_avg_sq")

#: algorithm name -> minimum traffic of one step in its default configuration
BYTE_MODEL: dict[str, Traffic] = {
    "SGD": Traffic(("param", "grad"), ("param",), "momentum=0 (default): no momentum_buffer"),
    "Adam": Traffic(_ADAM_LIKE, ("param", "exp_avg", "exp_avg_sq"), "amsgrad=False"),
    "AdamW": Traffic(_ADAM_LIKE, ("param", "exp_avg", "exp_avg_sq"), "decoupled decay reuses the param read"),
    "Adagrad": Traffic(("param", "grad", "sum"), ("param", "sum")),
    "RMSprop": Traffic(
        ("param", "grad", "square_avg"), ("param", "square_avg"), "momentum=0, centered=False (defaults)"
    ),
    "Adadelta": Traffic(("param", "grad", "square_avg", "acc_delta"), ("param", "square_avg", "acc_delta")),
    "Adamax": Traffic(("param", "grad", "exp_avg", "exp_inf"), ("param", "exp_avg", "exp_inf")),
    "NAdam": Traffic(_ADAM_LIKE, ("param", "exp_avg", "exp_avg_sq"), "mu_product is a scalar"),
    "RAdam": Traffic(_ADAM_LIKE, ("param", "exp_avg", "exp_avg_sq"), "v is updated even while rho_t <= 5"),
    "ASGD": Traffic(
        ("param", "grad"),
        ("param", "ax"),
        "t0=1e6 (default) keeps mu=1, so ax <- param: ax is written, never read",
    ),
    "Rprop": Traffic(("param", "grad", "prev", "step_size"), ("param", "prev", "step_size")),
    "SparseAdam": Traffic(
        _ADAM_LIKE,
        ("param", "exp_avg", "exp_avg_sq"),
        "only the elements the sparse grad touches, plus its int64 indices",
    ),
    "Adafactor": Traffic(
        ("param", "grad", "param", "grad"),
        ("param",),
        ">= 2-D: no weight moves before the param norm and the update norm are known, and the update norm "
        "needs the finished row_var/col_var: one pass over param and grad for both (a row's new row_var is "
        "known once its sum is, and its grad^2/row_var per column is summed from cache), then the step "
        "(param and grad again); row_var/col_var are O(rows + cols)",
    ),
    # the algorithms beyond torch.optim (benched against their reference packages)
    "Lion": Traffic(("param", "grad", "exp_avg"), ("param", "exp_avg"), "one buffer; the update is a sign"),
    "Lamb": Traffic(
        ("param", "grad", "exp_avg", "exp_avg_sq", "param", "exp_avg", "exp_avg_sq"),
        ("param", "exp_avg", "exp_avg_sq"),
        "the trust ratio needs the norms of the weights and of the Adam update before any weight moves: "
        "two passes (moments and norms, then the step; u is recomputed from m and v, not stored)",
    ),
    "LARS": Traffic(
        ("param", "grad", "param", "grad", "momentum_buffer"),
        ("param", "momentum_buffer"),
        ">= 2-D: the trust ratio needs the norms of param and grad before any element moves, so both "
        "are read twice; momentum=0.9 (default)",
    ),
    "Adan": Traffic(
        ("param", "grad", "exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"),
        ("param", "exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"),
    ),
    "AdamWScheduleFree": Traffic(
        ("param", "grad", "z", "exp_avg_sq"), ("param", "z", "exp_avg_sq"), "param holds y (train mode)"
    ),
    "SGDScheduleFree": Traffic(("param", "grad", "z"), ("param", "z"), "param holds y (train mode)"),
}

#: algorithms whose parameters of fewer than two dimensions keep a per-element state instead
VECTOR_BYTE_MODEL: dict[str, Traffic] = {
    "Adafactor": Traffic(
        ("param", "grad", "variance", "param", "grad", "variance"),
        ("param", "variance"),
        "< 2-D: unfactored variance; the update norm (and the param norm) in a first pass that also "
        "updates variance, then the step reads param, grad and variance again",
    ),
    "LARS": Traffic(("param", "grad", "momentum_buffer"), ("param", "momentum_buffer"), "< 2-D: no trust ratio"),
}

@dataclass(frozen=True)
class CountedTraffic(Traffic):
    """Traffic whose tensors are read or written several times per step (``reads[i]`` ``read_counts[i]`` times)."""

    read_counts: tuple[int, ...] = ()
    write_counts: tuple[int, ...] = ()

    @property
    def tensors_per_element(self) -> int:
        return sum(self.read_counts) + sum(self.write_counts)


def lbfgs_traffic(max_iter: int, history_size: int) -> CountedTraffic:
    r"""Minimum traffic of one L-BFGS ``step(closure)`` per element of the flat parameter vector.

    The step modelled is the steady state of the bench's configuration: no
    line search, the history full (``m = history_size`` pairs, each new pair
    accepted, the oldest dropped), no stopping test firing, so all
    ``K = max_iter`` iterations run and the closure is evaluated ``K`` times
    (once before the first iteration, then after every update but the last).
    L-BFGS keeps flat vectors (torch's state layout), so each evaluation's
    gradient is gathered into one.  "Minimum" means one streaming pass per
    step of the algorithm that cannot start before a reduction (a dot product
    or max) has finished, with everything that can share a pass sharing it,
    every operand read once per pass and every result written once.  Per
    iteration, in vectors of ``n`` elements:

    ========================  ======================================================  =========
    pass(es)                  reads / writes                                          vectors
    ========================  ======================================================  =========
    closure                   read θ, write the gradient (bench: g = θ, f = ½‖θ‖²)      2
    flat gradient             read the gradient, write ``flat_grad`` (and max|g|)       2
    new pair                  read ``flat_grad``, ``prev_flat_grad``, ``d``;            5
                              write ``y``, ``s`` (and yᵀs, yᵀy); the new gradient
                              becomes ``prev_flat_grad`` by renaming, not copying
    two-loop, first loop      αᵢ = ρᵢ sᵢᵀq fused with the previous pair's               4m + 1
                              ``q -= α y``: per pair read sᵢ, yᵢ, q, write q; the
                              first pass reads g twice (q = −g is not stored); the
                              last writes r = h q (and β₀)
    two-loop, second loop     ``r += (α−β) sᵢ`` fused with the next βᵢ₊₁ = ρ yᵢ₊₁ᵀr:   4m
                              read r, sᵢ, yᵢ₊₁, write r; the last pass reads g for
                              gᵀd (r is the new ``d``)
    parameter update          read θ and ``d``, write θ (and max|t d|)                  3
    ========================  ======================================================  =========

    That is ``8m + 13`` vectors per iteration and ``K (8m + 13)`` per step:
    stored pairs ``K (4m − 1)`` reads, the running q/r ``K (2m − 1)`` reads and
    ``2mK`` writes, and the rest as listed.  Not counted: the very first
    iteration of a run (no pair yet) and the first steps while the history
    fills; per-step scalars.  An implementation with torch's bit-exact results
    cannot reach it: ``torch.dot`` and ``add_`` are separate passes (10m per
    iteration for the two-loop instead of 8m + 1), and the closure and the
    max tests are their own passes.

    This is the minimum of the two-loop recursion's passes, not of every
    formulation: fastoptim's fused path (docs/algorithms/lbfgs.md) takes the
    direction from dot products among the pairs and moves ``4m + 11`` vectors
    an iteration, fewer than counted here, so its % of the ceiling credits it
    with bytes it does not move.
    """
    K, m = max_iter, history_size
    if K < 1 or m < 1:
        raise ValueError(f"the L-BFGS byte model needs max_iter >= 1 and history_size >= 1, got {K}, {m}")
    reads = {
        "param": 2 * K,
        "grad": K,
        "flat_grad": 4 * K,
        "prev_flat_grad": K,
        "d": 2 * K,
        "old_dirs/old_stps": K * (4 * m - 1),
        "q/r": K * (2 * m - 1),
    }
    writes = {"grad": K, "flat_grad": K, "y": K, "s": K, "q/r (d)": 2 * m * K, "param": K}
    return CountedTraffic(
        tuple(f"{name} ×{count}" for name, count in reads.items()),
        tuple(f"{name} ×{count}" for name, count in writes.items()),
        f"max_iter={K}, history_size={m}, no line search, steady state: K (8m + 13) vectors of n per step",
        tuple(reads.values()),
        tuple(writes.values()),
    )


def model_for(algorithm: str, options: dict | None = None) -> Traffic | None:
    """The byte model of ``algorithm`` run with constructor ``options`` (None if not modelled).

    Per-element algorithms have one fixed model (:data:`BYTE_MODEL`); L-BFGS's
    depends on ``max_iter`` and ``history_size`` (torch's defaults 20 and 100
    when not given).
    """
    if algorithm == "LBFGS":
        options = options or {}
        return lbfgs_traffic(options.get("max_iter", 20), options.get("history_size", 100))
    return BYTE_MODEL.get(algorithm)


#: the bandwidth ceiling's own traffic: ``a.add_(b, alpha=s)`` reads a and b, writes a
CEILING = Traffic(("a", "b"), ("a",), "in-place read-modify-write, a.add_(b, alpha=s)")

#: bytes of one sparse index (torch's COO indices are int64)
INDEX_BYTES = 8


def step_bytes(
    algorithm: str, params: Sequence[Tensor], grads: Iterable[Tensor] | None = None, options: dict | None = None
) -> int | None:
    """Minimum bytes one step of ``algorithm`` moves over ``params`` (None if not modelled).

    ``grads`` is needed only for sparse gradients (SparseAdam), whose traffic
    is that of the touched elements: their values, the same elements of the
    parameter and both moments, and the gradient's indices.  ``options`` are
    the constructor's (L-BFGS: ``max_iter``, ``history_size``).
    """
    if algorithm == "LBFGS":
        # one flat vector of every element (complex ones as two), in the promoted dtype
        traffic = model_for(algorithm, options)
        numel = sum(2 * p.numel() if p.is_complex() else p.numel() for p in params)
        size = max((p.real if p.is_complex() else p).element_size() for p in params)
        return traffic.bytes_per_element(size) * numel
    traffic = BYTE_MODEL.get(algorithm)
    if traffic is None:
        return None
    grads = list(grads) if grads is not None else [p.grad for p in params]
    total = 0
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        size = p.element_size()
        traffic = traffic_for(algorithm, p)
        if g.is_sparse:
            g = g.coalesce()
            touched = g._values().numel()
            total += traffic.bytes_per_element(size) * touched
            total += INDEX_BYTES * g._indices().numel()
        else:
            total += traffic.bytes_per_element(size) * p.numel()
    return total


def traffic_for(algorithm: str, param: Tensor) -> Traffic:
    """The traffic of ``algorithm`` on one parameter (some depend on its number of dimensions)."""
    if param.dim() < 2 and algorithm in VECTOR_BYTE_MODEL:
        return VECTOR_BYTE_MODEL[algorithm]
    return BYTE_MODEL[algorithm]


def ceiling_bytes(numel: int, element_size: int) -> int:
    """Bytes one ``a.add_(b, alpha=s)`` over ``numel`` elements moves."""
    return CEILING.bytes_per_element(element_size) * numel
