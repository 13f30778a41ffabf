"""``fastoptim plot-schedule``: the PNG it writes, the curves it draws, its errors."""

from __future__ import annotations

import pytest
import torch
from matplotlib import image

from fastoptim import schedules
from fastoptim.cli import build_parser, main
from fastoptim.cli.plot_schedule import build_scheduler, curves, parse_specs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    return image.imread(path)


def assert_drawn(pixels, height, width):
    """An RGB(A) image of the expected size with something on it."""
    assert pixels.shape[:2] == (height, width)
    assert pixels.shape[2] in (3, 4)
    assert pixels[..., :3].std() > 0.01, "the image is blank"


def test_renders_a_png_of_the_requested_size(tmp_path, capsys):
    out = tmp_path / "onecycle.png"
    rc = main(["plot-schedule", "OneCycleLR", "--max-lr", "0.1", "--total-steps", "200",
               "-o", str(out), "--width", "640", "--height", "480"])
    assert rc == 0
    assert_drawn(read_png(out), 480, 640)
    assert str(out) in capsys.readouterr().out


def test_several_schedules_on_one_figure(tmp_path):
    out = tmp_path / "compare.png"
    rc = main(["plot-schedule", "-o", str(out), "--steps", "120", "--title", "compare",
               "CosineAnnealingLR", "--T-max", "100",
               "warmupdecaylr", "--warmup-steps", "10", "--total-steps", "100", "--label", "warmup+cos",
               "CyclicLR", "--base-lr", "0.01", "--max-lr", "0.1", "--step-size-up", "20", "--log-y"])
    assert rc == 0
    assert_drawn(read_png(out), 500, 900)  # the default size


def test_specs_split_at_scheduler_names():
    specs = parse_specs(["StepLR", "--step-size", "3", "--gamma", "0.5",
                         "OneCycleLR", "--max-lr", "0.1", "--total-steps", "50", "--anneal-strategy", "linear",
                         "--no-cycle-momentum", "MultiStepLR", "--milestones", "2", "5", "--label", "ms",
                         "CosineAnnealingWarmRestarts", "--t-0", "10", "--T-mult", "2"])
    assert [(cls.__name__, kwargs) for cls, kwargs, _ in specs] == [
        ("StepLR", {"step_size": 3, "gamma": 0.5}),
        ("OneCycleLR", {"max_lr": 0.1, "total_steps": 50, "anneal_strategy": "linear", "cycle_momentum": False}),
        ("MultiStepLR", {"milestones": [2, 5]}),
        ("CosineAnnealingWarmRestarts", {"T_0": 10, "T_mult": 2}),
    ]
    assert [label for *_, label in specs][:3] == ["StepLR(step_size=3, gamma=0.5)",
                                                  "OneCycleLR(max_lr=0.1, total_steps=50, anneal_strategy=linear, "
                                                  "cycle_momentum=False)", "ms"]


DRAWABLE = {
    "StepLR": ["--step-size", "10"],
    "MultiStepLR": ["--milestones", "10", "20"],
    "ConstantLR": [],
    "LinearLR": ["--start-factor", "0.1", "--total-iters", "10"],
    "ExponentialLR": ["--gamma", "0.95"],
    "PolynomialLR": ["--total-iters", "30", "--power", "2"],
    "CosineAnnealingLR": ["--T-max", "20", "--eta-min", "0.001"],
    "CosineAnnealingWarmRestarts": ["--T-0", "10", "--T-mult", "2"],
    "CyclicLR": ["--base-lr", "0.01", "--max-lr", "0.1", "--step-size-up", "5", "--mode", "exp_range",
                 "--gamma", "0.99"],
    "OneCycleLR": ["--max-lr", "0.1", "--epochs", "4", "--steps-per-epoch", "10", "--three-phase"],
    "WarmupDecayLR": ["--warmup-steps", "5", "--total-steps", "40", "--decay", "linear", "--end-factor", "0.1"],
    "SWALR": ["--swa-lr", "0.01", "--anneal-epochs", "5", "--anneal-strategy", "linear"],
}


@pytest.mark.parametrize("name", DRAWABLE)
def test_every_drawable_scheduler_matches_its_stepped_run(name):
    """The drawn curve is what the scheduler does when stepped (closed form or not)."""
    [(cls, kwargs, _)] = parse_specs([name, *DRAWABLE[name]])
    drawn = curves(build_scheduler(cls, kwargs, lr=0.1), 40)
    stepped = build_scheduler(cls, kwargs, lr=0.1)
    opt, lrs, momenta = stepped.optimizer, [], []
    for _ in range(len(drawn["lr"])):
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
        opt.step()
        stepped.step()
    assert len(drawn["lr"]) == 40
    assert drawn["lr"] == pytest.approx(lrs, rel=1e-12, abs=1e-15)
    if "momentum" in drawn:
        assert drawn["momentum"] == pytest.approx(momenta, rel=1e-12)


def test_curves_are_the_closed_forms_of_schedules_py():
    [(cls, kwargs, _)] = parse_specs(["OneCycleLR", "--max-lr", "0.3", "--total-steps", "30"])
    drawn = curves(build_scheduler(cls, kwargs, lr=0.1), 100)
    assert len(drawn["lr"]) == 31  # OneCycleLR is defined up to step total_steps
    assert drawn["lr"] == [schedules.one_cycle_lr(t, 0.3, 30) for t in range(31)]
    assert drawn["momentum"] == [schedules.one_cycle_momentum(t, 30) for t in range(31)]


def test_no_momentum_panel_without_cycled_momentum():
    [(cls, kwargs, _)] = parse_specs(["CyclicLR", "--base-lr", "0.1", "--max-lr", "1", "--no-cycle-momentum"])
    assert set(curves(build_scheduler(cls, kwargs, lr=0.1), 10)) == {"lr"}


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "name at least one scheduler"),
        (["Bogus"], "expected a scheduler name, got 'Bogus'"),
        (["OneCycleLR", "--total-steps", "10"], "OneCycleLR: the following arguments are required: --max-lr"),
        (["OneCycleLR", "--max-lr", "0.1", "--total-steps", "10", "--pct-start", "2.0"],
         "OneCycleLR: Expected float between 0 and 1 pct_start"),
        (["StepLR", "--step-size", "three"], "StepLR: argument --step-size: invalid int value"),
        (["StepLR", "--step-size", "3", "--gama", "0.5"], "StepLR: unrecognized arguments: --gama 0.5"),
        (["CyclicLR", "--base-lr", "1", "--max-lr", "2", "--mode", "sine"], "invalid choice: 'sine'"),
        (["LambdaLR"], "LambdaLR takes a Python function"),
        (["ReduceLROnPlateau"], "ReduceLROnPlateau follows a metric"),
        (["StepLR", "--step-size", "3", "--steps", "0"], "--steps must be positive"),
        (["StepLR", "--step-size", "3", "--height", "-5"], "--height must be positive"),
        (["StepLR", "--step-size", "3", "-o", "/nonexistent/dir/x.png"], "cannot write /nonexistent/dir/x.png"),
    ],
)
def test_bad_arguments_give_a_one_line_error_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plot-schedule", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fastoptim plot-schedule: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not list(tmp_path.iterdir()), "no image on error"


def test_scheduler_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plot-schedule", "OneCycleLR", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--max-lr", "--total-steps", "--anneal-strategy {cos,linear}", "--three-phase", "--label"):
        assert option in out


def test_subcommand_is_registered_with_examples(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["plot-schedule", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "OneCycleLR --max-lr 0.1 --total-steps 1000 -o onecycle.png" in out
    assert build_parser().parse_args(["plot-schedule", "StepLR"]).func.__module__.endswith("plot_schedule")


def test_the_optimizer_it_builds_is_torch_sgd_with_momentum():
    [(cls, kwargs, _)] = parse_specs(["StepLR", "--step-size", "2"])
    sched = build_scheduler(cls, kwargs, lr=0.25)
    assert isinstance(sched.optimizer, torch.optim.SGD)
    assert sched.optimizer.param_groups[0]["lr"] == 0.25
