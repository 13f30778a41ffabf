"""A small deterministic training script that checkpoints and resumes (the subject of test_fault_injection).

Run it directly::

    python tests/fault_train.py --dir /tmp/run --out /tmp/final --optimizers sgd adamw lbfgs

Each optimizer trains its own copy of a small MLP on generated data for
``--steps`` steps.  Every step draws from all three global random generators
(torch: the mini-batch and dropout; numpy and ``random``: input noise), so a
resume that restored any of them wrongly would diverge.  Every ``--every``
steps it saves a checkpoint; on start it resumes from the newest valid one.
At the end it writes the model and optimizer state to ``<out>/<optimizer>.pt``.

The fault test starts it many times and kills it with SIGKILL at random
moments; :func:`child` is its entry point there (forked from a process that
has already imported torch, so that each start costs milliseconds).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

import fastoptim
import fastoptim.lr_scheduler
from fastoptim.checkpoint import FAULT_DELAY_ENV, load_latest_checkpoint, save_checkpoint

OPTIMIZERS = ("sgd", "adamw", "lbfgs")


def build(name: str):
    """Model, optimizer and scheduler (or None) for one optimizer, from fixed seeds."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1)
    )
    if name == "sgd":
        optimizer = fastoptim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        scheduler = fastoptim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
    elif name == "adamw":
        optimizer = fastoptim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True)
        scheduler = fastoptim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=30)
    elif name == "lbfgs":
        optimizer = fastoptim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=5, line_search_fn="strong_wolfe")
        scheduler = None
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    return model, optimizer, scheduler


def backend(optimizer) -> str:
    """Which backend the optimizer's steps use (``"numba"`` = the fast kernels), as fastoptim reports it."""
    try:
        from fastoptim.kernels.dispatch import backend_for
    except ImportError:  # no kernels in this build
        return "reference"
    try:
        return backend_for(optimizer)
    except (AttributeError, NotImplementedError):  # not a per-parameter rule (LBFGS)
        return "reference"


def data():
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(64, 8, generator=gen)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(64, 1, generator=gen)
    return x, y


def train(name, directory, out, *, steps=24, every=3, keep_last=2, slow_save=None, report=print):
    """Train (resuming if a checkpoint exists) and write the final state to ``out``.

    ``slow_save=(step, phase, seconds)`` makes the save of that step pause
    (see ``FAULT_DELAY_ENV``) so that a test can kill the process mid-save.
    """
    torch.set_num_threads(1)  # one thread: the same arithmetic in every process
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    x, y = data()
    model, optimizer, scheduler = build(name)
    model.train()
    restored = load_latest_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler)
    start = restored.step if restored is not None else 0
    report("resumed", start)
    for step in range(start, steps):
        index = torch.randperm(64)[:16]
        shift = float(np.random.standard_normal()) * 1e-2 + random.random() * 1e-2

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[index] + shift), y[index])
            loss.backward()
            return loss

        optimizer.step(closure)
        if scheduler is not None:
            scheduler.step()
        if step == start:
            report("backend", backend(optimizer))
        report("step", step + 1)
        if (step + 1) % every == 0:
            report("saving", step + 1)
            slow = slow_save is not None and slow_save[0] == step + 1
            if slow:
                os.environ[FAULT_DELAY_ENV] = f"{slow_save[1]}:{slow_save[2]}"
            try:
                save_checkpoint(directory, step + 1, model=model, optimizer=optimizer, scheduler=scheduler, keep_last=keep_last)
            finally:
                os.environ.pop(FAULT_DELAY_ENV, None)
            report("saved", step + 1)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out)
    report("done", steps)


def child(conn, name, directory, out, options):
    """Entry point of a forked run: report progress through ``conn``."""
    try:
        conn.send(("preloaded", "fault_warmup" in sys.modules))
        train(name, directory, out, report=lambda *event: conn.send(event), **options)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="checkpoint directory (one sub-directory per optimizer)")
    parser.add_argument("--out", required=True, help="directory for the final states")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=3)
    args = parser.parse_args(argv)
    for name in args.optimizers:
        train(
            name,
            Path(args.dir) / name,
            Path(args.out) / f"{name}.pt",
            steps=args.steps,
            every=args.every,
            report=lambda *event, name=name: print(name, *event, flush=True),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
