from numba import prange, types
from numba.extending import intrinsic


@intrinsic
def prefer_256(typingctx):
    def codegen(context, builder, sig, args):
        set.add(builder.function.attributes, '"prefer-vector-width"="256"')
        return context.get_dummy_value()
    return types.void(), codegen
from ._launch import (FLAG, GRAD, PARAM, add_scalar, column, kernel, load, next_task, plan, rounded, scalar,
                      signed_gradient, store, task_counter, thread_count)
from .sgd import MOMENTUM_BUFFER


@kernel
def split_kernel(table, hyper, witness, grain):
    neg_lr, momentum, one_minus_dampening, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3]
    nesterov, maximize = hyper[4] != 0, hyper[5] != 0
    has_momentum = momentum != 0
    l2 = weight_decay != 0
    step = add_scalar(neg_lr, witness)
    mu = scalar(momentum, witness)
    mu_alpha = add_scalar(momentum, witness)
    damp = add_scalar(one_minus_dampening, witness)
    lam = add_scalar(weight_decay, witness)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                if not has_momentum and not l2 and not maximize:
                    for i in range(n):
                        store(param, i, load(param, i) + step * load(grad, i))
                    continue
                fresh = table[t, FLAG] != 0
                buf = column(table, t, MOMENTUM_BUFFER if has_momentum else GRAD, lo, n, witness)
                for i in range(n):
                    g, theta = signed_gradient(grad, param, i, maximize, l2, lam, witness)
                    if has_momentum:
                        if fresh:
                            b = g
                        else:
                            b = rounded(load(buf, i) * mu, witness) + damp * g
                        store(buf, i, b)
                        b = rounded(b, witness)
                        g = rounded(g + mu_alpha * b, witness) if nesterov else b
                    store(param, i, theta + step * g)
            c = next_task(tasks)


@kernel
def ymm_kernel(table, hyper, witness, grain):
    neg_lr, momentum, one_minus_dampening, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3]
    nesterov, maximize = hyper[4] != 0, hyper[5] != 0
    has_momentum = momentum != 0
    l2 = weight_decay != 0
    step = add_scalar(neg_lr, witness)
    mu = scalar(momentum, witness)  # buf.mul_(μ)
    mu_alpha = add_scalar(momentum, witness)  # grad.add(buf, alpha=μ)
    damp = add_scalar(one_minus_dampening, witness)
    lam = add_scalar(weight_decay, witness)
    segments, starts = plan(table, grain)
    tasks = task_counter()
    for _ in prange(thread_count()):
        prefer_256()
        c = next_task(tasks)
        while c < starts.shape[0] - 1:
            for s in range(starts[c], starts[c + 1]):
                t, lo, n = segments[s, 0], segments[s, 1], segments[s, 2]
                fresh = table[t, FLAG] != 0  # the buffer was just created: b ← g
                param = column(table, t, PARAM, lo, n, witness)
                grad = column(table, t, GRAD, lo, n, witness)
                buf = column(table, t, MOMENTUM_BUFFER if has_momentum else GRAD, lo, n, witness)
                for i in range(n):
                    # g ← −g if maximize;  g ← g + λθ (L2 weight decay)
                    g, theta = signed_gradient(grad, param, i, maximize, l2, lam, witness)
                    if has_momentum:
                        # b ← g on the first step, else b ← μb + (1 − τ)g
                        if fresh:
                            b = g
                        else:
                            b = rounded(load(buf, i) * mu, witness) + damp * g
                        store(buf, i, b)
                        b = rounded(b, witness)
                        # g ← g + μb (nesterov) or b
                        g = rounded(g + mu_alpha * b, witness) if nesterov else b
                    # θ ← θ − γg
                    store(param, i, theta + step * g)
            c = next_task(tasks)


