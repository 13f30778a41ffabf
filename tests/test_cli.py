"""The ``fastoptim`` command: compare, trajectories, explain (help, outputs, and errors)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import fastoptim
from fastoptim.cli import main
from fastoptim.cli._common import algorithm_names, parse_optimizer_spec
from fastoptim.cli.explain import latex_to_text
from fastoptim.testfunctions import FUNCTIONS, path


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``fastoptim ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as exit_:  # argparse: --help and usage errors
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_png(file, min_width: int = 400, min_height: int = 300) -> None:
    """A real PNG image with content (not blank), at least this large."""
    import matplotlib.image

    with open(file, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(file)
    assert image.ndim == 3 and image.shape[0] >= min_height and image.shape[1] >= min_width
    assert image[..., :3].std() > 0.05  # not a blank canvas


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["compare", "trajectories", "explain"])
def test_every_subcommand_has_help_with_examples(capsys, command):
    status, out, _ = run_main(capsys, command, "--help")
    assert status == 0
    assert "examples:" in out
    assert f"fastoptim {command}" in out.split("examples:")[1]


def test_top_level_help_lists_the_subcommands(capsys):
    status, out, _ = run_main(capsys, "--help")
    assert status == 0
    for command in ("compare", "trajectories", "explain"):
        assert command in out


# ----------------------------------------------------------------------------- explain


def test_explain_adam_prints_the_update_rule_and_defaults(capsys):
    status, out, err = run_main(capsys, "explain", "Adam")
    assert status == 0 and not err
    assert "drop-in for torch.optim.Adam" in out
    assert "mₜ ← β₁ mₜ₋₁ + (1−β₁) gₜ" in out  # the math, rendered
    assert "vₜ ← β₂ vₜ₋₁ + (1−β₂) gₜ²" in out
    assert "lr = 0.001" in out and "betas = (0.9, 0.999)" in out and "eps = 1e-08" in out
    assert "maximize = False  (keyword-only)" in out


def test_explain_latex_and_case(capsys):
    status, out, _ = run_main(capsys, "explain", "adamw", "--latex")
    assert status == 0
    assert "fastoptim.AdamW" in out and r"m_t &\leftarrow \beta_1 m_{t-1}" in out
    assert "weight_decay = 0.01" in out  # AdamW's own default


@pytest.mark.parametrize("name", algorithm_names())
def test_explain_works_for_every_exported_algorithm(capsys, name):
    status, out, err = run_main(capsys, "explain", name)
    assert status == 0 and not err
    assert f"fastoptim.{name}" in out
    assert "←" in out or "=" in out.split("Defaults:")[0]  # an update rule
    defaults = out.split(f"Defaults: fastoptim.{name}(params, ...)")[1]
    assert "lr = " in defaults
    assert "\\leftarrow" not in out and "\\frac" not in out  # all LaTeX rendered


def test_explain_without_a_name_lists_every_algorithm(capsys):
    status, out, _ = run_main(capsys, "explain")
    assert status == 0
    for name in algorithm_names():
        assert f"  {name} " in out


def test_explain_unknown_algorithm(capsys):
    status, _, err = run_main(capsys, "explain", "Adamm")
    assert_one_line_error(status, err, "unknown optimizer 'Adamm'", "did you mean Adam")


@pytest.mark.parametrize(
    "latex, text",
    [
        (r"\theta_t \leftarrow \theta_{t-1} - \gamma g_t", "θₜ ← θₜ₋₁ − γ gₜ"),
        (r"\frac{\gamma}{1-\beta_1^t}", "γ/(1−β₁ᵗ)"),
        (r"\sqrt{v_t} + \epsilon", "√vₜ + ε"),
        (r"\hat v_t \quad\text{if amsgrad}", "v̂ₜ if amsgrad"),
        (r"x_{\text{max}}", "xₘₐₓ"),
        (r"x_{\text{best}}", "x_(best)"),  # no subscript b in Unicode
        (r"\lVert g \rVert", "‖ g ‖"),
    ],
)
def test_latex_to_text(latex, text):
    assert latex_to_text(latex) == text


# ----------------------------------------------------------------------------- compare


def test_compare_writes_a_report_and_the_libraries_agree(capsys, tmp_path):
    out_dir = tmp_path / "report"
    status, out, err = run_main(
        capsys,
        "compare",
        "--optim", "SGD:lr=0.1,momentum=0.9",
        "--optim", "adam:lr=1e-3,betas=(0.9,0.99)",
        "--epochs", "2",
        "--out", str(out_dir),
        "--no-progress",
    )
    assert status == 0, err
    assert "Traceback" not in err
    assert "fastoptim and torch.optim agree" in out
    assert f"report: {out_dir / 'summary.md'}" in out
    for name in ("compare.png", "loss.png", "accuracy.png"):
        assert_png(out_dir / name)
    assert_png(out_dir / "compare.png", min_width=1200)
    summary = json.loads((out_dir / "summary.json").read_text())
    runs = {(r["spec"], r["library"]): r for r in summary["runs"]}
    assert set(runs) == {
        (spec, lib) for spec in ("SGD:lr=0.1,momentum=0.9", "adam:lr=1e-3,betas=(0.9,0.99)") for lib in ("fastoptim", "torch")
    }
    for spec in ("SGD:lr=0.1,momentum=0.9", "adam:lr=1e-3,betas=(0.9,0.99)"):
        fast, ref = runs[(spec, "fastoptim")], runs[(spec, "torch")]
        assert len(fast["train_loss"]) == 2 and len(fast["step_seconds"]) == 2 * math.ceil(1437 / 64)
        assert math.isclose(fast["final_loss"], ref["final_loss"], rel_tol=1e-6)
        assert fast["final_test_accuracy"] > 0.5
        assert summary["relative_difference"][spec] <= 1e-6
    assert summary["agree"] is True
    assert "| SGD:lr=0.1,momentum=0.9 |" in (out_dir / "summary.md").read_text()


def test_compare_runs_a_fastoptim_only_optimizer(capsys, tmp_path):
    status, out, err = run_main(
        capsys, "compare", "--optim", "Lion:lr=1e-4", "--epochs", "1", "--out", str(tmp_path), "--no-progress"
    )
    assert status == 0, err
    assert "torch.optim has no Lion: fastoptim only" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["spec"], r["library"]) for r in summary["runs"]] == [("Lion:lr=1e-4", "fastoptim")]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--optim", "Adamm:lr=1e-3"], ["unknown optimizer 'Adamm'", "did you mean Adam"]),
        (["--optim", "Adam:lr=-0.1"], ["Invalid learning rate: -0.1"]),
        (["--optim", "SGD:lr=0.1,momentum=-1"], ["Invalid momentum value: -1"]),
        (["--optim", "Adam:betas=(1.5,0.9)"], ["Invalid beta parameter at index 0"]),
        (["--optim", "Adam:lrr=0.1"], ["unknown option 'lrr'", "Adam takes: lr, betas"]),
        (["--optim", "Adam:0.1"], ["bad option '0.1'"]),
        (["--optim", ":lr=1"], ["bad optimizer spec"]),
        (["--optim", "SparseAdam"], ["SparseAdam needs sparse gradients"]),
        (["--optim", "SGD", "--optim", "SGD"], ["the same --optim is given twice"]),
        (["--epochs", "0"], ["--epochs must be at least 1"]),
        (["--epochs", "many"], ["argument --epochs: invalid int value: 'many'"]),
        (["--libraries", "jax"], ["unknown library 'jax'"]),
        (["--rtol", "-1"], ["--rtol must be non-negative"]),
    ],
)
def test_compare_bad_arguments_give_one_line_errors(capsys, tmp_path, argv, fragments):
    status, _, err = run_main(capsys, "compare", *argv, "--out", str(tmp_path / "r"), "--no-progress")
    assert_one_line_error(status, err, *fragments)
    assert not (tmp_path / "r").exists()  # nothing written


def test_unknown_option_is_reported_without_traceback(capsys, tmp_path):
    # Unrecognised options are reported by the top-level parser (fastoptim.cli), with its usage line.
    status, _, err = run_main(capsys, "compare", "--bogus", "--out", str(tmp_path / "r"))
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "fastoptim: error: unrecognized arguments: --bogus"


def test_compare_bad_output_paths(capsys, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    status, _, err = run_main(capsys, "compare", "--out", str(a_file), "--no-progress")
    assert_one_line_error(status, err, "exists and is not a directory")
    status, _, err = run_main(capsys, "compare", "--out", str(a_file / "sub"), "--no-progress")
    assert_one_line_error(status, err, "cannot create output directory")


def test_parse_optimizer_spec_values():
    spec = parse_optimizer_spec("sgd:lr=0.1, momentum=0.9, nesterov=true, foreach=None")
    assert spec.name == "SGD"
    assert spec.options == {"lr": 0.1, "momentum": 0.9, "nesterov": True, "foreach": None}
    spec = parse_optimizer_spec("AdamW:betas=(0.9,0.95),weight_decay=0.1")
    assert spec.options == {"betas": (0.9, 0.95), "weight_decay": 0.1}
    assert isinstance(spec.build([torch.nn.Parameter(torch.zeros(3))]), fastoptim.AdamW)
    assert isinstance(spec.build([torch.nn.Parameter(torch.zeros(3))], "torch"), torch.optim.AdamW)


# ----------------------------------------------------------------------------- trajectories


def test_trajectories_draws_a_png(capsys, tmp_path):
    image = tmp_path / "paths.png"
    status, out, err = run_main(
        capsys,
        "trajectories",
        "--function", "rosenbrock",
        "--function", "Beale",
        "--function", "himmelblau",
        "--optim", "Adam:lr=0.1",
        "--optim", "SGD:lr=1e-3,momentum=0.9",
        "--steps", "30",
        "--out", str(image),
    )
    assert status == 0, err
    assert f"wrote {image}" in out
    assert out.startswith("rosenbrock")
    assert_png(image, min_width=1000, min_height=800)  # a 2 x 2 grid of panels


def test_trajectories_defaults_every_function_and_torch(capsys, tmp_path):
    image = tmp_path / "sub" / "all.png"
    status, out, err = run_main(
        capsys, "trajectories", "--function", "all", "--steps", "5", "--library", "torch", "--out", str(image)
    )
    assert status == 0, err
    assert all(name in out for name in FUNCTIONS)
    assert_png(image)


def test_trajectories_marks_a_diverging_path(capsys, tmp_path):
    status, out, err = run_main(
        capsys, "trajectories", "--function", "rosenbrock", "--optim", "SGD:lr=1.0", "--steps", "50",
        "--out", str(tmp_path / "d.png"),
    )
    assert status == 0, err
    assert "diverged at step" in out
    assert_png(tmp_path / "d.png")


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--function", "sphere"], ["unknown function 'sphere'", "rosenbrock"]),
        (["--optim", "Adam:lr=-1"], ["Invalid learning rate: -1"]),
        (["--optim", "Nope"], ["unknown optimizer 'Nope'"]),
        (["--steps", "0"], ["--steps must be at least 1"]),
        (["--start", "1"], ["--start must be two numbers X,Y"]),
        (["--start", "nan,1"], ["--start must be finite"]),
        (["--optim", "Lion", "--library", "torch"], ["torch.optim has no Lion"]),
        (["--library", "jax"], ["argument --library: invalid choice: 'jax'"]),
    ],
)
def test_trajectories_bad_arguments(capsys, tmp_path, argv, fragments):
    status, _, err = run_main(capsys, "trajectories", *argv, "--out", str(tmp_path / "t.png"))
    assert_one_line_error(status, err, *fragments)
    assert not (tmp_path / "t.png").exists()


def test_trajectories_bad_output_paths(capsys, tmp_path):
    status, _, err = run_main(capsys, "trajectories", "--out", str(tmp_path / "t.jpg"))
    assert_one_line_error(status, err, "must end in .png")
    (tmp_path / "dir.png").mkdir()
    status, _, err = run_main(capsys, "trajectories", "--out", str(tmp_path / "dir.png"))
    assert_one_line_error(status, err, "is a directory")
    (tmp_path / "f").write_text("x")
    status, _, err = run_main(capsys, "trajectories", "--out", str(tmp_path / "f" / "t.png"))
    assert_one_line_error(status, err, "exists and is not a directory")


def test_test_functions_have_their_minima_where_stated():
    for function in FUNCTIONS.values():
        for x, y in function.minima:
            value = function(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
            assert abs(value.item()) < 1e-9, function.name


def test_paths_are_the_same_with_either_library():
    himmelblau = FUNCTIONS["himmelblau"]
    fast = path(himmelblau, lambda p: fastoptim.Adam(p, lr=0.1), steps=150)
    ref = path(himmelblau, lambda p: torch.optim.Adam(p, lr=0.1), steps=150)
    assert fast.shape == (151, 2)
    torch.testing.assert_close(fast, ref)
    assert math.dist(fast[-1].tolist(), (-2.805118, 3.131312)) < 0.1


# ----------------------------------------------------------------------------- the real command


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["compare", "--optim", "Adam:lr=-1"], "fastoptim compare: error: Adam:lr=-1: Invalid learning rate: -1"),
        (["trajectories", "--out", "/dev/null/x.png"], "fastoptim trajectories: error:"),
        (["explain", "Nope"], "fastoptim explain: error: unknown optimizer 'Nope'"),
    ],
)
def test_the_installed_command_fails_with_one_line(argv, fragment, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastoptim.cli", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert fragment in result.stderr
