"""fastoptim.swa_utils against torch.optim.swa_utils, tensor for tensor.

A small model with BatchNorm (float parameters, float running statistics and
an integer ``num_batches_tracked`` buffer) is trained for 25 SGD updates; after
each one, torch's AveragedModel and ours fold the model in, and every averaged
parameter and buffer must be identical (``torch.equal``), for SWA and EMA in
all their forms.
"""

from __future__ import annotations

import pytest
import torch
import torch.optim.swa_utils as torch_swa

import fastoptim.swa_utils as our_swa

UPDATES = 25


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds spin-waiting (and flakiness of timing)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(), torch.nn.Linear(7, 3)
    )
    return model.to(dtype)


def batches(n, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 5, generator=gen, dtype=dtype) for _ in range(n)]


def train_step(model, opt, x):
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


def tensors(averaged):
    """Every parameter and buffer of an AveragedModel, by name."""
    return {**dict(averaged.named_parameters()), **dict(averaged.named_buffers())}


def same_outcome(ref_fn, our_fn):
    """Run both; they must both succeed, or both raise the same type of exception."""
    try:
        ref_fn()
    except Exception as error:  # torch refuses some inputs: so must we
        with pytest.raises(type(error)):
            our_fn()
        return False
    our_fn()
    return True


def assert_identical(ref, ours):
    ref_t, our_t = tensors(ref), tensors(ours)
    assert list(our_t) == list(ref_t)
    for name in ref_t:
        assert our_t[name].dtype == ref_t[name].dtype, name
        assert torch.equal(our_t[name], ref_t[name]), name


# (id, keyword arguments of AveragedModel, given the swa_utils module)
AVERAGING = {
    "swa": lambda m: {},
    "swa-buffers": lambda m: {"use_buffers": True},
    "swa-multi": lambda m: {"multi_avg_fn": m.get_swa_multi_avg_fn()},
    "swa-multi-buffers": lambda m: {"multi_avg_fn": m.get_swa_multi_avg_fn(), "use_buffers": True},
    "swa-single": lambda m: {"avg_fn": m.get_swa_avg_fn()},
    "ema-multi": lambda m: {"multi_avg_fn": m.get_ema_multi_avg_fn(0.9)},
    "ema-multi-buffers": lambda m: {"multi_avg_fn": m.get_ema_multi_avg_fn(0.9), "use_buffers": True},
    "ema-single": lambda m: {"avg_fn": m.get_ema_avg_fn(0.95)},
    "ema-single-buffers": lambda m: {"avg_fn": m.get_ema_avg_fn(0.95), "use_buffers": True},
    "ema-default-decay": lambda m: {"multi_avg_fn": m.get_ema_multi_avg_fn()},
    "custom-avg-fn": lambda m: {"avg_fn": lambda avg, cur, n: 0.5 * avg + 0.5 * cur},
}


def average_side_by_side(kind, dtype, device=None):
    """Train a model on the CPU; average it (on ``device``) with torch and with us."""
    model = make_model(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref = torch_swa.AveragedModel(model, device=device, **AVERAGING[kind](torch_swa))
    ours = our_swa.AveragedModel(model, device=device, **AVERAGING[kind](our_swa))
    assert_identical(ref, ours)
    for x in batches(UPDATES, dtype):
        train_step(model, opt, x)
        if not same_outcome(lambda: ref.update_parameters(model), lambda: ours.update_parameters(model)):
            # torch's foreach SWA rejects the integer num_batches_tracked buffer
            # (explicit multi_avg_fn, or the default on CUDA); so do we
            assert kind in ("swa-multi-buffers", "swa-buffers")
            return
        assert_identical(ref, ours)
    assert int(ours.n_averaged) == UPDATES
    x = batches(1, dtype, seed=2)[0].to(ours.n_averaged.device)
    ref.eval(), ours.eval()
    assert torch.equal(ours(x), ref(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", AVERAGING)
def test_averaged_model_matches_torch(kind, dtype):
    average_side_by_side(kind, dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["swa", "swa-buffers", "ema-multi", "ema-single"])
def test_averaged_model_on_cuda_matches_torch(kind):
    """On CUDA the default SWA takes the foreach ``lerp`` path, which rounds differently."""
    average_side_by_side(kind, torch.float32, device=torch.device("cuda"))


def test_state_dict_is_interchangeable_with_torch():
    model = make_model()
    ref, ours = torch_swa.AveragedModel(model), our_swa.AveragedModel(model)
    for _ in range(3):
        ref.update_parameters(model)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    assert_identical(ref, ours)


def test_device_argument():
    model = make_model()
    ours = our_swa.AveragedModel(model, device=torch.device("cpu"))
    assert ours.n_averaged.device.type == "cpu"
    ours.update_parameters(model)
    assert torch.equal(ours.module[0].weight, model[0].weight)


def test_first_update_copies_and_leaves_the_model_alone():
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours = our_swa.AveragedModel(model, multi_avg_fn=our_swa.get_ema_multi_avg_fn(0.5))
    with torch.no_grad():
        ours.module[0].weight.zero_()
    ours.update_parameters(model)
    assert torch.equal(ours.module[0].weight, model[0].weight)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_both_averaging_functions_is_an_error():
    with pytest.raises(AssertionError):
        our_swa.AveragedModel(make_model(), avg_fn=our_swa.get_swa_avg_fn(),
                              multi_avg_fn=our_swa.get_swa_multi_avg_fn())


@pytest.mark.parametrize("getter", ["get_ema_multi_avg_fn", "get_ema_avg_fn"])
@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_decay_out_of_range_is_a_value_error(getter, decay):
    with pytest.raises(ValueError, match="Invalid decay value"):
        getattr(our_swa, getter)(decay)


@pytest.mark.parametrize("num_averaged", [3, torch.tensor(3)], ids=["int", "tensor"])
@pytest.mark.parametrize("getter", ["get_swa_multi_avg_fn", "get_ema_multi_avg_fn"])
def test_multi_avg_fns_on_integer_tensors(getter, num_averaged):
    """Integer tensors (e.g. num_batches_tracked) take the non-lerp path."""
    results = {}

    def update(module):
        averaged = results[module] = [torch.tensor([10, 20, 31]), torch.tensor([7])]
        getattr(module, getter)()(averaged, [torch.tensor([14, 40, 1]), torch.tensor([3])], num_averaged)

    if same_outcome(lambda: update(torch_swa), lambda: update(our_swa)):
        for ref, ours in zip(results[torch_swa], results[our_swa]):
            assert torch.equal(ours, ref)


@pytest.mark.parametrize("as_tuple", [False, True])
def test_update_bn_matches_torch(as_tuple):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref, ours = torch_swa.AveragedModel(model), our_swa.AveragedModel(model)
    for x in batches(UPDATES):
        train_step(model, opt, x)
        ref.update_parameters(model)
        ours.update_parameters(model)
    loader = [(x, torch.zeros(8)) if as_tuple else x for x in batches(6, seed=3)]
    ref.eval(), ours.eval()
    torch_swa.update_bn(loader, ref)
    our_swa.update_bn(loader, ours, device=torch.device("cpu"))
    assert_identical(ref, ours)
    assert not ours.training, "train/eval mode is restored"
    assert ours.module[1].momentum == 0.1, "BatchNorm momentum is restored"


def test_update_bn_without_batchnorm_does_nothing():
    model = torch.nn.Linear(3, 3)

    def loader():
        raise AssertionError("the loader must not be read")
        yield

    our_swa.update_bn(loader(), model)


def test_swa_training_loop_matches_torch():
    """The documented recipe: a scheduler, then SWALR with AveragedModel from epoch 10."""
    runs = []
    for swa in (torch_swa, our_swa):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
        averaged, swa_sched = swa.AveragedModel(model), swa.SWALR(opt, swa_lr=0.05, anneal_epochs=5)
        for epoch, x in enumerate(batches(30)):
            train_step(model, opt, x)
            if epoch >= 10:
                averaged.update_parameters(model)
                swa_sched.step()
            else:
                sched.step()
        swa.update_bn(batches(4, seed=5), averaged)
        runs.append((averaged, opt.param_groups[0]["lr"]))
    (ref, ref_lr), (ours, our_lr) = runs
    assert our_lr == ref_lr
    assert_identical(ref, ours)
