"""Muon beyond optim_db: bit-exact batched and per-matrix paths, Newton–Schulz itself, errors, copies."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz as torch_newton_schulz

import fastoptim
from algorithm_checks import assert_copies_step_identically, assert_signature_matches
from extra_checks import (
    assert_complex_rejected_before_any_change,
    assert_sparse_gradient_rejected_like_torch,
    problem_of,
)
from fastoptim.algorithms import muon
from fastoptim.algorithms.muon import newton_schulz, newton_schulz_batched
from parity import EXACT, Trial, assert_same, assert_same_optimizer

DEFAULT = muon.DEFAULT_NS_COEFFICIENTS

# Three same-shaped wide matrices (one stored transposed), two tall ones, a
# square one, and small ones that stay on the per-matrix path on CPU.
SHAPES = [[(20, 33), (20, 33), (20, 33), (40, 17), (40, 17)], [(24, 24), (3, 5), (1, 1), (6, 2)]]
TRANSPOSED = (1, 3)

CONFIGS = [
    {},
    {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.0},
    {"nesterov": False, "adjust_lr_fn": "match_rms_adamw"},
    {"adjust_lr_fn": "original", "ns_steps": 7, "ns_coefficients": (3.4, -4.7, 2.0)},
    {"momentum": 0.0, "eps": 1e-3},
    {"lr": torch.tensor(0.01), "weight_decay": 0.2},  # tensor lr: the decay factor is float32 math, as in torch
    {"lr": torch.tensor([0.01])},  # 1-element, not 0-dim
]


def muon_trial(kwargs, dtype, *, batched=True, steps=10, tol=EXACT, shapes=SHAPES):
    problem = problem_of(shapes, dtype, transposed=TRANSPOSED)
    trial = Trial(fastoptim.Muon, torch.optim.Muon, kwargs, dtype, problem=problem, tol=tol)
    trial.ours.batch_newton_schulz = batched
    trial.run(steps=steps)
    return trial


def test_signature_matches_torch():
    assert_signature_matches("Muon")


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-matrix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_bitwise_equal_to_torch(kwargs, dtype, batched):
    """Params, momentum buffers and state_dict identical to torch.optim.Muon after every step, both paths."""
    muon_trial(kwargs, dtype, batched=batched)


def test_same_shapes_share_one_batched_newton_schulz(monkeypatch):
    calls = []
    real = muon.newton_schulz_batched

    def spy(matrices, *args):
        calls.append(tuple(matrices.shape))
        return real(matrices, *args)

    monkeypatch.setattr(muon, "newton_schulz_batched", spy)
    trial = muon_trial({}, torch.float32, steps=1)
    # the transposed (20, 33) has its own layout bucket; the small matrices stay per-matrix
    assert sorted(calls) == sorted([(2, 20, 33), (1, 20, 33), (1, 40, 17), (1, 40, 17), (1, 24, 24)])
    assert len(trial.ours.state) == 9


def test_forced_reference_backend_runs_per_matrix(monkeypatch):
    from fastoptim.kernels.dispatch import use_backend

    monkeypatch.setattr(muon, "newton_schulz_batched", None)  # would raise if called
    with use_backend("reference"):
        muon_trial({}, torch.float32, steps=3)


def test_batches_are_cut_to_the_element_budget():
    """Any cut of a bucket into batches gives the same bits as torch."""
    dtype = torch.float32
    made = problem_of([[(20, 33)] * 5], dtype)
    results = []
    for budget in (1, 20 * 33 * 2, muon.MAX_BATCH_ELEMENTS):
        params = [v.clone() for v in made.groups[0]]
        grads = made.random_grads(0, params)
        bufs = [torch.zeros_like(p) for p in params]
        options = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=DEFAULT,
                       ns_steps=5, eps=1e-7, adjust_lr_fn=None)
        muon.muon_batched_(params, grads, bufs, **options, max_batch_elements=budget)
        results.append(params)
    expected = [v.clone() for v in made.groups[0]]
    for p, g in zip(expected, made.random_grads(0, expected)):
        muon.muon_reference(p, g, {"momentum_buffer": torch.zeros_like(p)}, **options)
    for params in results:
        for a, b in zip(params, expected):
            assert_same(a, b, EXACT)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (5, 3), (20, 33), (33, 20), (64, 64), (17, 130)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_newton_schulz_is_torchs(shape, layout):
    gen = torch.Generator().manual_seed(sum(shape))
    for scale in (1e-6, 1.0, 1e4):
        g = torch.randn(shape, generator=gen) * scale
        if layout == "transposed":
            g = g.t().contiguous().t()
        expected = torch_newton_schulz(g, DEFAULT, 5, 1e-7)
        assert_same(newton_schulz(g, DEFAULT, 5, 1e-7), expected, EXACT)
        batch = torch.stack([g.bfloat16(), (2 * g).bfloat16()])
        if min(shape) >= muon.CPU_BATCH_MIN_DIM:  # below it, CPU bmm may differ in the last bit (see the module)
            assert_same(newton_schulz_batched(batch, DEFAULT, 5, 1e-7)[0], expected, EXACT)


def test_newton_schulz_orthogonalises():
    """The documented effect: singular vectors kept, singular values pushed into about [0.7, 1.2]."""
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 32, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(32, 32, generator=gen, dtype=torch.float64))
    spectrum = torch.logspace(-1.5, 1, 32, dtype=torch.float64)  # condition number 300
    g = (u * spectrum) @ v.T
    ortho = newton_schulz(g, DEFAULT, 5, 1e-7).double()
    assert ortho.shape == (64, 32)
    sigma = torch.linalg.svdvals(ortho)
    assert sigma.min() > 0.6 and sigma.max() < 1.25
    # the same singular vectors: U^T O V is close to diagonal
    core = u.T @ ortho @ v
    off_diagonal = core - torch.diag(torch.diagonal(core))
    assert off_diagonal.abs().max() < 0.06


def test_duplicate_parameter_is_updated_twice_like_torch():
    made = []
    for cls in (fastoptim.Muon, torch.optim.Muon):
        p = torch.linspace(-1, 1, 20 * 24).reshape(20, 24).requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = cls([p, p], lr=0.05)
        for step in range(3):
            p.grad = torch.cos(torch.arange(480.0) * (step + 1)).reshape(20, 24)
            opt.step()
        made.append(opt)
    assert_same_optimizer(made[0], made[1], EXACT)


def test_nan_and_inf_propagate_like_torch():
    specials = [float("nan"), float("inf"), -float("inf")]
    made = []
    for cls in (fastoptim.Muon, torch.optim.Muon):
        params = [torch.linspace(-1, 1, 20 * 30).reshape(20, 30).requires_grad_(),
                  torch.linspace(-1, 1, 20 * 30).reshape(20, 30).requires_grad_(),
                  torch.linspace(-1, 1, 6).reshape(2, 3).requires_grad_()]
        opt = cls(params, lr=0.05)
        for step in range(4):
            for k, p in enumerate(params):
                g = torch.linspace(-2, 2, p.numel()).reshape(p.shape)
                if k == step % 3:
                    g.view(-1)[step] = specials[step % 3]
                p.grad = g
            opt.step()
        made.append(opt)
    assert_same_optimizer(made[0], made[1], EXACT)
    assert made[0].param_groups[0]["params"][0].isnan().all()


def test_state_is_lazy_and_laid_out_like_the_gradient():
    w = torch.randn(7, 4).t().requires_grad_()
    v = torch.randn(3, 3, requires_grad=True)
    opt = fastoptim.Muon([w, v])
    assert len(opt.state) == 0
    w.grad = torch.ones(7, 4).t()
    opt.step()
    assert list(opt.state) == [w] and list(opt.state[w]) == ["momentum_buffer"]
    assert opt.state[w]["momentum_buffer"].stride() == w.grad.stride()


def test_complex_param_is_rejected_before_any_change():
    assert_complex_rejected_before_any_change("Muon")


def test_sparse_gradient_raises_like_torch():
    assert_sparse_gradient_rejected_like_torch("Muon")


@pytest.mark.parametrize(
    "group,message",
    [
        ({"ns_steps": 100}, "Number of steps must be less than 100 for computational efficiency"),
        ({"ns_coefficients": (1.0, 2.0)}, "Coefficients must be a tuple of exactly 3 values"),
    ],
)
def test_newton_schulz_arguments_are_checked_at_step_before_any_change(group, message):
    for cls in (fastoptim.Muon, torch.optim.Muon):
        p = torch.ones(3, 4, requires_grad=True)
        p.grad = torch.ones(3, 4)
        opt = cls([p], **group)
        with pytest.raises(ValueError, match=f"^{message}$"):
            opt.step()
        if cls is fastoptim.Muon:
            # torch has already moved the momentum buffer when it raises
            assert len(opt.state) == 0


def test_non_matrix_added_later_fails_at_step_like_torch():
    for cls in (fastoptim.Muon, torch.optim.Muon):
        opt = cls([torch.ones(2, 2, requires_grad=True)])
        bias = torch.ones(3, requires_grad=True)
        opt.add_param_group({"params": [bias]})  # torch checks only the constructor's parameters
        bias.grad = torch.ones(3)
        with pytest.raises(ValueError, match="^Param gradient must be a 2D matrix$"):
            opt.step()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"lr": -1.0}, "Learning rate should be >= 0 but is: -1.0"),
        ({"momentum": -0.1}, "momentum should be >= 0 but is: -0.1"),
        ({"weight_decay": -0.1}, "weight decay should be >= 0 but is: -0.1"),
        ({"adjust_lr_fn": "arbitrary"}, "Adjust learning rate function arbitrary is not supported"),
    ],
)
def test_constructor_errors_have_torchs_messages(kwargs, message):
    for cls in (fastoptim.Muon, torch.optim.Muon):
        with pytest.raises(ValueError) as info:
            cls([torch.zeros(2, 2, requires_grad=True)], **kwargs)
        assert str(info.value) == message


def test_non_matrix_param_is_rejected_at_construction():
    for cls in (fastoptim.Muon, torch.optim.Muon):
        with pytest.raises(ValueError) as info:
            cls([torch.zeros(2, 2, requires_grad=True), torch.zeros(2, 3, 4, requires_grad=True)])
        assert str(info.value) == (
            "Muon only supports 2D parameters whereas we found a parameter with size: torch.Size([2, 3, 4])"
        )


def test_pickle_and_deepcopy_step_on_identically():
    assert_copies_step_identically(lambda: muon_trial({"lr": 0.02}, torch.float64, steps=4))


def test_reference_path_setting_survives_copies():
    trial = muon_trial({}, torch.float32, batched=False, steps=1)
    assert copy.deepcopy(trial.ours).batch_newton_schulz is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_path_on_cuda_is_within_a_bfloat16_ulp_of_the_update_per_step():
    """On CUDA, cuBLAS may round a batched bf16 product differently from a single one.

    A last-bit difference in O (entries of size ≲ 1, bf16 ulp ≤ 2⁻⁸) moves a
    parameter by at most γ'·2⁻⁸ per step, so after n steps parameters agree
    within n·γ'·2⁻⁷ (a factor 2 for NS carrying a difference through its
    iterations); momentum buffers see only the gradients and stay exact.
    """
    lr, steps = 0.02, 10
    shapes = [[(256, 256)] * 4 + [(128, 512)] * 3]
    problem = problem_of(shapes, torch.float32)
    params = {cls: [v.clone().cuda().requires_grad_() for v in problem.groups[0]]
              for cls in (fastoptim.Muon, torch.optim.Muon)}
    opts = {cls: cls(ps, lr=lr) for cls, ps in params.items()}
    for step in range(steps):
        grads = problem.random_grads(step, problem.groups[0])
        for cls, opt in opts.items():
            for p, g in zip(params[cls], grads):
                p.grad = g.cuda()
            opt.step()
    bound = steps * lr * max(1, 512 / 128) ** 0.5 * 2**-7
    for a, b in zip(params[fastoptim.Muon], params[torch.optim.Muon]):
        torch.testing.assert_close(a, b, rtol=0, atol=bound)
        assert_same(opts[fastoptim.Muon].state[a], opts[torch.optim.Muon].state[b], EXACT)
