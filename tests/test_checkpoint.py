"""Checkpoints: every state_dict loads with weights_only=True; save/load is atomic, verified and exact.

See docs/reliability.md for the guarantee each test proves.
"""

from __future__ import annotations

import inspect
import io
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.optim.lr_scheduler as torch_lrs
import torch.optim.swa_utils as torch_swa

import fastoptim
from fastoptim import checkpoint as ckpt_mod
from fastoptim.checkpoint import (
    CorruptCheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from reliability import (
    EXTRA_ALGORITHMS,
    TORCH_ALGORITHMS,
    assert_identical,
    assert_unchanged,
    environ,
    make_trial,
    optim_db_inputs,
    snapshot,
    weights_only_roundtrip,
)

try:
    import fastoptim.lr_scheduler as our_lrs
except ImportError:  # pragma: no cover - the scheduler module landed with the core
    our_lrs = None
try:
    import fastoptim.swa_utils as our_swa
except ImportError:  # pragma: no cover
    our_swa = None


# ---------------------------------------------------------------- optimizer state_dicts
def _optimizer_cases():
    for name in TORCH_ALGORITHMS:
        for index, optim_input in enumerate(optim_db_inputs(name)):
            yield pytest.param(name, index, id=f"{name}-{index}-{optim_input.desc}".replace(" ", "_"))


@pytest.mark.parametrize("name,index", list(_optimizer_cases()))
def test_optimizer_state_dict_loads_weights_only(name, index):
    """After a few steps, state_dict() survives torch.load(weights_only=True) unchanged, and the
    loaded dict restores an optimizer (ours and torch's) that continues exactly as the original."""
    kwargs = optim_db_inputs(name)[index].kwargs
    trial = make_trial(name, kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optim_db's configurations include deprecated ones
        trial.run(steps=4, check=False)
    state_dict = trial.ours.state_dict()
    loaded = weights_only_roundtrip(state_dict)
    assert_identical(loaded, state_dict, f"{name} state_dict")

    # A fresh optimizer over copies of the parameters, restored from the loaded dict, takes the
    # same next steps as the original (fastoptim), and torch.optim accepts the dict too.
    resumed = make_trial(name, kwargs)
    for fresh in (resumed.ours, resumed.theirs):
        with torch.no_grad():
            for p, q in zip(resumed.flat(fresh), trial.flat(trial.ours)):
                p.copy_(q)
        fresh.load_state_dict(weights_only_roundtrip(state_dict))
    assert_identical(resumed.ours.state_dict(), state_dict, "restored state_dict")
    for step in range(4, 7):
        trial.step(step)
        resumed.step(step)
        for a, b in zip(resumed.flat(resumed.ours), trial.flat(trial.ours)):
            assert_identical(a, b, f"step {step} after restore")


@pytest.mark.parametrize("name", EXTRA_ALGORITHMS)
def test_extra_optimizer_state_dict_loads_weights_only(name):
    """fastoptim's own algorithms (no optim_db entry): default options, two groups, four steps."""
    cls = getattr(fastoptim, name)

    def build(seed):
        gen = torch.Generator().manual_seed(seed)
        params = [torch.randn(5, 4, generator=gen).requires_grad_(), torch.randn(3, 7, generator=gen).requires_grad_()]
        optimizer = cls([{"params": params[:1]}, {"params": params[1:]}])
        if callable(getattr(optimizer, "train", None)):  # schedule-free optimizers have train/eval modes
            optimizer.train()
        return params, optimizer

    def step(params, optimizer, i):
        gen = torch.Generator().manual_seed(100 + i)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()

    params, optimizer = build(0)
    for i in range(4):
        step(params, optimizer, i)
    state_dict = optimizer.state_dict()
    loaded = weights_only_roundtrip(state_dict)
    assert_identical(loaded, state_dict, f"{name} state_dict")
    params2, optimizer2 = build(1)
    with torch.no_grad():
        for p, q in zip(params2, params):
            p.copy_(q)
    optimizer2.load_state_dict(loaded)
    for i in range(4, 7):
        step(params, optimizer, i)
        step(params2, optimizer2, i)
    assert_identical(params2, params, f"{name} after restore")


# ---------------------------------------------------------------- scheduler state_dicts
def _scheduler_table(lrs, swa):
    """How to build each scheduler; a scheduler missing here fails test_every_scheduler_is_covered."""
    return {
        "LambdaLR": lambda o: lrs.LambdaLR(o, lambda e: 0.95**e),
        "MultiplicativeLR": lambda o: lrs.MultiplicativeLR(o, lambda e: 0.95),
        "StepLR": lambda o: lrs.StepLR(o, step_size=2, gamma=0.5),
        "MultiStepLR": lambda o: lrs.MultiStepLR(o, milestones=[2, 4]),
        "ConstantLR": lambda o: lrs.ConstantLR(o, factor=0.5, total_iters=3),
        "LinearLR": lambda o: lrs.LinearLR(o, start_factor=0.5, total_iters=4),
        "ExponentialLR": lambda o: lrs.ExponentialLR(o, gamma=0.9),
        "PolynomialLR": lambda o: lrs.PolynomialLR(o, total_iters=5, power=2.0),
        "CosineAnnealingLR": lambda o: lrs.CosineAnnealingLR(o, T_max=5),
        "CosineAnnealingWarmRestarts": lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
        "CyclicLR": lambda o: lrs.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=2),
        "OneCycleLR": lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=20),
        "ReduceLROnPlateau": lambda o: lrs.ReduceLROnPlateau(o, patience=0),
        "SequentialLR": lambda o: lrs.SequentialLR(
            o, [lrs.LinearLR(o, start_factor=0.5, total_iters=2), lrs.ExponentialLR(o, gamma=0.9)], milestones=[2]
        ),
        "ChainedScheduler": lambda o: lrs.ChainedScheduler([lrs.ExponentialLR(o, gamma=0.9), lrs.StepLR(o, 2)]),
        "WarmupDecayLR": lambda o: lrs.WarmupDecayLR(o, warmup_steps=2, total_steps=10),
        "SWALR": lambda o: swa.SWALR(o, swa_lr=0.05, anneal_epochs=3),
    }


def _scheduler_classes(lrs, swa):
    classes = {}
    for module in (lrs, swa):
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and obj.__module__ == module.__name__
                and issubclass(obj, (torch_lrs.LRScheduler, torch_lrs.ReduceLROnPlateau))
                and not name.startswith("_")
                and name != "LRScheduler"
                and not inspect.isabstract(obj)
            ):
                classes[name] = obj
    return classes


LIBRARIES = {"torch": (torch_lrs, torch_swa)}
if our_lrs is not None and our_swa is not None:
    LIBRARIES["fastoptim"] = (our_lrs, our_swa)


def _scheduler_cases():
    for library, (lrs, swa) in LIBRARIES.items():
        for name in sorted(_scheduler_classes(lrs, swa)):
            yield pytest.param(library, name, id=f"{library}-{name}")


def test_every_scheduler_is_covered():
    for library, (lrs, swa) in LIBRARIES.items():
        missing = sorted(set(_scheduler_classes(lrs, swa)) - set(_scheduler_table(lrs, swa)))
        assert not missing, f"{library} schedulers without an entry in _scheduler_table: {missing}"


def _scheduled(library, name, optimizer_cls):
    lrs, swa = LIBRARIES[library]
    param = torch.nn.Parameter(torch.arange(3.0))
    optimizer = optimizer_cls([param], lr=0.1, momentum=0.9)
    return param, optimizer, _scheduler_table(lrs, swa)[name](optimizer)


def _advance(param, optimizer, scheduler, steps):
    for i in range(steps):
        param.grad = torch.full_like(param, 0.5)
        optimizer.step()
        if isinstance(scheduler, torch_lrs.ReduceLROnPlateau):
            scheduler.step(1.0)  # never improves: the lr drops
        else:
            scheduler.step()


@pytest.mark.parametrize("optimizer_cls", [fastoptim.SGD, torch.optim.SGD], ids=["fastoptim.SGD", "torch.SGD"])
@pytest.mark.parametrize("library,name", list(_scheduler_cases()))
def test_scheduler_state_dict_loads_weights_only(library, name, optimizer_cls):
    """Every scheduler (torch's and fastoptim's) round-trips through weights_only=True and resumes exactly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        param, optimizer, scheduler = _scheduled(library, name, optimizer_cls)
        _advance(param, optimizer, scheduler, 3)
        state_dict = scheduler.state_dict()
        loaded = weights_only_roundtrip(state_dict)
        assert_identical(loaded, state_dict, f"{name} state_dict")

        param2, optimizer2, scheduler2 = _scheduled(library, name, optimizer_cls)
        with torch.no_grad():
            param2.copy_(param)
        optimizer2.load_state_dict(weights_only_roundtrip(optimizer.state_dict()))
        scheduler2.load_state_dict(loaded)
        _advance(param, optimizer, scheduler, 3)
        _advance(param2, optimizer2, scheduler2, 3)
    assert [g["lr"] for g in optimizer2.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert_identical(param2, param, "param after resuming")


# ---------------------------------------------------------------- save / load
class Net(torch.nn.Module):
    """Small model with a buffer and dropout (so the torch RNG matters)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8)
        self.norm = torch.nn.BatchNorm1d(8)
        self.fc2 = torch.nn.Linear(8, 1)
        self.drop = torch.nn.Dropout(0.25)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.norm(self.fc1(x)))))


def _setup(seed=0, optimizer_cls=fastoptim.AdamW):
    torch.manual_seed(seed)
    model = Net()
    optimizer = optimizer_cls(model.parameters(), lr=0.05)
    scheduler = fastoptim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps):
    """Uses all three global RNGs, so a resume that forgot one of them diverges."""
    for _ in range(steps):
        x = torch.randn(5, 6) + float(np.random.rand()) + random.random()
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def _flat_state(model, optimizer, scheduler):
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


def test_resume_is_exact(tmp_path):
    """Save at step 5, keep training to 10; restore into fresh objects and train 5 more: bit-identical."""
    model, optimizer, scheduler = _setup()
    _train(model, optimizer, scheduler, 5)
    np.random.seed(3)
    random.seed(4)
    path = save_checkpoint(tmp_path, 5, model=model, optimizer=optimizer, scheduler=scheduler, extra={"epoch": 1})
    _train(model, optimizer, scheduler, 5)
    expected = _flat_state(model, optimizer, scheduler)

    torch.manual_seed(123)  # scramble every generator
    np.random.seed(123)
    random.seed(123)
    model2, optimizer2, scheduler2 = _setup(seed=99)
    restored = load_latest_checkpoint(tmp_path, model=model2, optimizer=optimizer2, scheduler=scheduler2)
    assert restored is not None
    assert restored.path == path and restored.step == 5 and restored.extra == {"epoch": 1}
    _train(model2, optimizer2, scheduler2, 5)
    assert_identical(_flat_state(model2, optimizer2, scheduler2), expected, "resumed run")


def test_checkpoint_file_loads_weights_only(tmp_path):
    model, optimizer, scheduler = _setup()
    _train(model, optimizer, scheduler, 2)
    scaler = torch.amp.GradScaler("cpu")
    path = save_checkpoint(
        tmp_path, 2, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, extra={"name": "run", "t": torch.ones(2)}
    )
    payload = torch.load(path, weights_only=True)
    assert payload["step"] == 2
    assert set(payload["rng"]) >= {"torch", "numpy", "python"}
    assert_identical(payload["optimizer"]["state"], optimizer.state_dict(), "optimizer")
    assert_identical(payload["scaler"]["state"], scaler.state_dict(), "scaler")


def test_mappings_of_objects(tmp_path):
    """A GAN-style checkpoint: two models and two optimizers, by name."""
    (g, g_opt, _), (d, d_opt, _) = _setup(1, fastoptim.Adam), _setup(2, fastoptim.SGD)
    _train(g, g_opt, torch_lrs.ConstantLR(g_opt), 2)
    save_checkpoint(tmp_path, 2, model={"g": g, "d": d}, optimizer={"g": g_opt, "d": d_opt})
    (g2, g_opt2, _), (d2, d_opt2, _) = _setup(3, fastoptim.Adam), _setup(4, fastoptim.SGD)
    load_latest_checkpoint(tmp_path, model={"g": g2, "d": d2}, optimizer={"g": g_opt2, "d": d_opt2})
    assert_identical(g2.state_dict(), g.state_dict(), "g")
    assert_identical(g_opt2.state_dict(), g_opt.state_dict(), "g_opt")
    with pytest.raises(ValueError, match="entries"):
        load_latest_checkpoint(tmp_path, model={"g": g2})
    with pytest.raises(ValueError, match="mapping"):
        load_latest_checkpoint(tmp_path, model=g2)


def test_rng_is_optional(tmp_path):
    model, optimizer, _ = _setup()
    save_checkpoint(tmp_path, 0, model=model, rng=False)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_latest_checkpoint(tmp_path, model=model)
    assert torch.equal(torch.rand(3), expected), "a checkpoint saved with rng=False must not touch the generators"
    with pytest.raises(KeyError, match="no optimizer"):
        load_latest_checkpoint(tmp_path, optimizer=optimizer)


# ---------------------------------------------------------------- atomicity and durability
def test_save_order_is_write_fsync_rename_fsync_dir(tmp_path, monkeypatch):
    """The file is fsync-ed before the rename and the directory after it."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src).name.startswith("."), Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "fsync", fsync)
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    model, optimizer, _ = _setup()
    save_checkpoint(tmp_path, 7, model=model, optimizer=optimizer)
    assert events == [("fsync", "file"), ("replace", True, "checkpoint-000000007.pt"), ("fsync", "dir")]


@pytest.mark.parametrize("failing", ["torch.save", "fsync", "verify", "os.replace"])
def test_a_failed_save_changes_nothing(tmp_path, monkeypatch, failing):
    """An error at any stage of a save leaves the previous checkpoints, and no temporary file."""
    model, optimizer, scheduler = _setup()
    first = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler)
    before = first.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):  # the weights_only pre-check, before any file exists
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 the first bytes")
        boom()

    target = {
        "torch.save": (ckpt_mod.torch, "save", save_half_then_fail),
        "fsync": (ckpt_mod.os, "fsync", boom),
        "verify": (ckpt_mod, "_read", boom),
        "os.replace": (ckpt_mod.os, "replace", boom),
    }[failing]
    monkeypatch.setattr(*target)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 2, model=model, optimizer=optimizer, scheduler=scheduler)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [first.name]
    assert first.read_bytes() == before
    assert load_latest_checkpoint(tmp_path, model=model).step == 1


def test_stale_temporary_files_are_ignored_and_cleaned(tmp_path):
    """A crash mid-save leaves a temporary file: the loader ignores it, the next save removes it."""
    model, optimizer, _ = _setup()
    save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer)
    import socket

    host = socket.gethostname()
    dead_pid = 2**22 + 12345  # above the default pid_max: never a live process
    stale = tmp_path / f".checkpoint-000000002.pt.{host}.{dead_pid}.deadbeef.tmp"
    stale.write_bytes(b"PK\x03\x04 half a zip")
    other_host = tmp_path / f".checkpoint-000000002.pt.elsewhere.{dead_pid}.deadbeef.tmp"
    other_host.write_bytes(b"another machine's save in progress")
    assert load_latest_checkpoint(tmp_path, model=model).step == 1
    save_checkpoint(tmp_path, 3, model=model, optimizer=optimizer)
    assert not stale.exists()
    assert other_host.exists(), "a temporary file of another host may belong to a live save"


# ---------------------------------------------------------------- corruption
def _three_checkpoints(tmp_path):
    model, optimizer, scheduler = _setup()
    paths = []
    for step in (1, 2, 3):
        _train(model, optimizer, scheduler, 1)
        paths.append(save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler))
    return model, optimizer, scheduler, paths


def _flip_a_data_byte(path: Path):
    """Flip one bit inside the raw bytes of a weight tensor (torch.load itself does not notice)."""
    weight = torch.load(path, weights_only=True)["model"]["state"]["fc1.weight"]
    raw = weight.contiguous().view(torch.uint8).numpy().tobytes()
    data = bytearray(path.read_bytes())
    index = data.find(raw)
    assert index > 0 and data.find(raw, index + 1) < 0
    data[index + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "flipped-byte": _flip_a_data_byte,
    "not-a-checkpoint": lambda p: torch.save({"weights": torch.ones(3)}, p),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_newest_valid_checkpoint_is_loaded(tmp_path, corruption):
    model, optimizer, scheduler, paths = _three_checkpoints(tmp_path)
    CORRUPTIONS[corruption](paths[2])
    with pytest.raises(CorruptCheckpointError):
        read_checkpoint(paths[2])
    model2, optimizer2, scheduler2 = _setup(seed=7)
    with pytest.warns(UserWarning, match="skipping a checkpoint"):
        restored = load_latest_checkpoint(tmp_path, model=model2, optimizer=optimizer2, scheduler=scheduler2)
    assert restored.step == 2 and restored.path == paths[1]
    expected = read_checkpoint(paths[1])
    assert_identical(optimizer2.state_dict(), expected["optimizer"]["state"], "optimizer from step 2")
    assert paths[2].exists(), "a corrupt file is left for inspection"


def test_no_valid_checkpoint_returns_none(tmp_path):
    assert load_latest_checkpoint(tmp_path / "missing") is None
    _, _, _, paths = _three_checkpoints(tmp_path)
    for path in paths:
        CORRUPTIONS["truncated"](path)
    with pytest.warns(UserWarning):
        assert load_latest_checkpoint(tmp_path) is None


def test_flipped_bit_is_caught_by_the_crc(tmp_path):
    """torch.load accepts a checkpoint with a flipped bit in tensor data; the CRC-32 does not."""
    _, _, _, paths = _three_checkpoints(tmp_path)
    _flip_a_data_byte(paths[2])
    torch.load(paths[2], weights_only=True)  # torch alone would load the corrupt weights
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        read_checkpoint(paths[2])


def test_truncation_at_any_length_is_detected(tmp_path):
    """Cut a checkpoint at many lengths: each prefix is rejected, never loaded as something else."""
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path, 1, model=model, rng=False)
    data = path.read_bytes()
    for length in sorted(set(range(0, len(data), max(1, len(data) // 60))) | {len(data) - 1}):
        path.write_bytes(data[:length])
        with pytest.raises(CorruptCheckpointError):
            read_checkpoint(path)


# ---------------------------------------------------------------- rotation
def test_keep_last(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in range(6):
        save_checkpoint(tmp_path, step, model=model, keep_last=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4, 5]
    for step in range(6, 8):
        save_checkpoint(tmp_path, step, model=model, keep_last=None)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4, 5, 6, 7]


def test_later_steps_of_an_abandoned_run_are_removed(tmp_path):
    """Resuming from step 2 and saving step 3 removes the old run's step 4 and 5 (they would shadow it)."""
    model = torch.nn.Linear(2, 2)
    for step in (2, 4, 5):
        save_checkpoint(tmp_path, step, model=model)
    with pytest.warns(UserWarning, match="abandoned"):
        save_checkpoint(tmp_path, 3, model=model)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]


def test_prefixes_share_a_directory(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 5, model=model, prefix="run-a")
    save_checkpoint(tmp_path, 1, model=model, prefix="run-b", keep_last=1)
    assert [s for s, _ in list_checkpoints(tmp_path, "run-a")] == [5]
    assert load_latest_checkpoint(tmp_path, prefix="run-b").step == 1


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(step=-1), ValueError, "Invalid step: -1"),
        (dict(step=1.5), ValueError, "Invalid step: 1.5"),
        (dict(step=True), ValueError, "Invalid step: True"),
        (dict(step=1, keep_last=0), ValueError, "Invalid keep_last value: 0"),
        (dict(step=1, prefix="a/b"), ValueError, "Invalid checkpoint prefix: 'a/b'"),
        (dict(step=1, prefix=".hidden"), ValueError, "Invalid checkpoint prefix"),
        (dict(step=1, extra=[1, 2]), TypeError, "extra must be a mapping"),
        (dict(step=1, extra={"array": np.zeros(2)}), TypeError, r"checkpoint\['extra'\]\['array'\] is a numpy.ndarray"),
        (dict(step=1, extra={"f": len}), TypeError, "weights_only"),
        (dict(step=1, model=object()), TypeError, "model must have a state_dict"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        save_checkpoint(tmp_path, **kwargs)
    assert not tmp_path.exists() or os.listdir(tmp_path) == []


def test_fault_delay_setting_is_checked(tmp_path):
    with environ(FASTOPTIM_CHECKPOINT_TEST_DELAY="sometimes"):
        with pytest.raises(ValueError, match="FASTOPTIM_CHECKPOINT_TEST_DELAY"):
            save_checkpoint(tmp_path, 1, model=torch.nn.Linear(2, 2))
    assert list_checkpoints(tmp_path) == []


def test_a_checkpoint_that_does_not_fit_changes_nothing(tmp_path):
    """Loading into a different model or optimizer class raises, and every object is left as it was."""
    model, optimizer, scheduler = _setup(optimizer_cls=fastoptim.SGD)
    _train(model, optimizer, scheduler, 2)
    save_checkpoint(tmp_path / "sgd", 2, model=model, optimizer=optimizer, scheduler=scheduler)

    # 1. The optimizer is of another class: rejected before anything changes.
    model2, adam, scheduler2 = _setup(seed=5, optimizer_cls=fastoptim.Adam)
    _train(model2, adam, scheduler2, 1)
    before = (snapshot(adam), {k: v.clone() for k, v in model2.state_dict().items()}, scheduler2.state_dict())
    with pytest.raises((ValueError, KeyError)):
        load_latest_checkpoint(tmp_path / "sgd", model=model2, optimizer=adam, scheduler=scheduler2)
    assert_unchanged(adam, before[0], "optimizer")
    assert_identical(model2.state_dict(), before[1], "model")
    assert_identical(scheduler2.state_dict(), before[2], "scheduler")

    # 2. The optimizer fits but the model does not (its first layer loads, its second cannot):
    #    the optimizer, loaded first, is rolled back and the first layer restored.
    torch.manual_seed(0)
    saved_model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 1))
    save_checkpoint(tmp_path / "other", 1, model=saved_model, optimizer=fastoptim.SGD(saved_model.parameters(), lr=0.5))
    model3 = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 2))
    optimizer3 = fastoptim.SGD(model3.parameters(), lr=0.05)
    before = (snapshot(optimizer3), {k: v.clone() for k, v in model3.state_dict().items()})
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_latest_checkpoint(tmp_path / "other", model=model3, optimizer=optimizer3)
    assert_unchanged(optimizer3, before[0], "optimizer")
    assert_identical(model3.state_dict(), before[1], "model")
