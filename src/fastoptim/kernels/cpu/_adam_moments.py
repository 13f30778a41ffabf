"""The first half of an Adam-family step, shared by the Adam/AdamW, NAdam and RAdam kernels.

Their reference rules (:mod:`fastoptim.algorithms.adam`, ``nadam``, ``radam``)
begin the same way -- sign, weight decay, the two moments -- and differ only in
how the weights then move; the kernels share this beginning as one inlined
function, so it is written (and read against the reference) once.
"""

from __future__ import annotations

import numba

from ._launch import lerp, load, rounded, signed_gradient, store


@numba.njit(inline="always")
def adam_moments(grad, param, exp_avg, exp_avg_sq, i, maximize, decoupled, l2, keep, lam, w1, one, b2, w2, witness):
    """Element ``i``: returns ``(g, θ, m, v)`` after storing the new moments (``m`` as stored).

    ``l2`` excludes ``decoupled``; ``keep`` = 1 − γλ (decoupled decay), ``lam`` = λ as ``add`` takes it, ``w1``
    = 1 − β₁ (the lerp weight), ``b2``/``w2`` = β₂ and 1 − β₂, all in the
    compute precision.
    """
    # g ← −g if maximize;  weight decay: g ← g + λθ, or θ ← θ(1 − γλ) (decoupled, when λ ≠ 0)
    g, theta = signed_gradient(grad, param, i, maximize, l2, lam, witness)
    if decoupled:
        theta = rounded(theta * keep, witness)
    # m ← lerp(m, g, 1 − β₁)
    m = lerp(load(exp_avg, i), g, w1, one)
    store(exp_avg, i, m)
    # v ← β₂v + (1 − β₂)g²
    v = rounded(load(exp_avg_sq, i) * b2, witness)
    v = rounded(v + w2 * g * g, witness)
    store(exp_avg_sq, i, v)
    return g, theta, rounded(m, witness), v
