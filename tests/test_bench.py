"""``fastoptim bench``: it runs (``--quick`` on tiny sizes) and its arithmetic is right.

No timing assertions: measured times only ever feed the arithmetic checks
(GB/s = bytes / median, % of ceiling, speed-up), which hold whatever they are.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random

import numpy as np
import pytest
import torch

import fastoptim
from fastoptim.bench import bytemodel, memory, paramsets, report, runner, stats
from fastoptim.bench.variants import (
    BENCH_OPTIONS,
    REFERENCE_PACKAGES,
    SKIP_REASONS,
    closure_for,
    discover_algorithms,
    variants_for,
)
from fastoptim.cli import CLIError, build_parser, main

# --------------------------------------------------------------------------- byte model


@pytest.mark.parametrize(
    ("algorithm", "tensors"),
    [
        ("SGD", 3),  # read p, g; write p
        ("Adam", 7),  # read p, g, m, v; write p, m, v
        ("AdamW", 7),
        ("Adagrad", 5),  # read p, g, sum; write p, sum
        ("RMSprop", 5),
        ("Adadelta", 7),
        ("Adamax", 7),
        ("NAdam", 7),
        ("RAdam", 7),
        ("ASGD", 4),  # read p, g; write p, ax (mu == 1 until t0)
        ("Rprop", 7),
        ("SparseAdam", 7),
        ("Adafactor", 5),  # >= 2-D: read p, g (row/col sums, ‖p‖, ‖update‖); p, g; write p
    ],
)
def test_bytes_per_element(algorithm, tensors):
    traffic = bytemodel.BYTE_MODEL[algorithm]
    assert traffic.tensors_per_element == tensors
    assert traffic.bytes_per_element(4) == 4 * tensors
    assert traffic.bytes_per_element(8) == 8 * tensors
    assert "param" in traffic.reads and "grad" in traffic.reads and "param" in traffic.writes
    assert "grad" not in traffic.writes


@pytest.mark.parametrize(
    ("algorithm", "traffic", "shape"),
    [(a, t, (3, 2)) for a, t in bytemodel.BYTE_MODEL.items()]
    + [(a, t, (5,)) for a, t in bytemodel.VECTOR_BYTE_MODEL.items()],
)
def test_state_names_are_torchs(algorithm, traffic, shape):
    """Every state buffer in the model is one torch.optim really keeps, under that name."""
    p = torch.zeros(shape, requires_grad=True)
    dense = torch.ones(shape)
    p.grad = paramsets.sparse_grad(dense, density=1.0) if algorithm == "SparseAdam" else dense
    # the algorithms torch.optim lacks: fastoptim's class (its state names are the reference package's)
    opt = (getattr(torch.optim, algorithm, None) or getattr(fastoptim, algorithm))([p])
    if callable(getattr(opt, "train", None)):
        opt.train()  # Schedule-Free
    opt.step()
    per_element = {k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.shape == p.shape}
    buffers = (set(traffic.reads) | set(traffic.writes)) - {"param", "grad"}
    assert buffers == per_element, algorithm


def test_every_benched_algorithm_has_a_byte_model():
    algorithms, skipped = discover_algorithms()
    assert set(skipped) <= set(SKIP_REASONS) | set(REFERENCE_PACKAGES)  # the latter when a package is missing
    assert [a for a in algorithms if bytemodel.model_for(a, BENCH_OPTIONS.get(a)) is None] == []
    assert "LBFGS" in algorithms and "Muon" not in algorithms


def test_step_bytes_dense():
    params = [torch.zeros(10, 3), torch.zeros(7), torch.zeros(2, 2, dtype=torch.float64)]
    grads = [torch.ones_like(p) for p in params]
    # fp32: 37 elements * 7 * 4 bytes; fp64: 4 elements * 7 * 8 bytes
    assert bytemodel.step_bytes("Adam", params, grads) == 37 * 28 + 4 * 56
    assert bytemodel.step_bytes("SGD", params, grads) == 37 * 12 + 4 * 24
    assert bytemodel.step_bytes("Adam", params, [grads[0], None, grads[2]]) == 30 * 28 + 4 * 56
    assert bytemodel.step_bytes("NoSuchAlgorithm", params, grads) is None


def test_step_bytes_depends_on_dimensions_for_adafactor():
    params = [torch.zeros(10, 3), torch.zeros(7)]
    # matrix: read p, g; p, g; write p.  vector: read p, g, variance; write variance; read them again; write p.
    assert bytemodel.step_bytes("Adafactor", params, [torch.ones_like(p) for p in params]) == 30 * 20 + 7 * 32


def test_step_bytes_sparse_counts_touched_elements_and_indices():
    dense = torch.randn(50, 4)
    grad = paramsets.sparse_grad(dense, density=0.1)  # 5 rows of 4 touched
    assert grad._values().shape == (5, 4)
    assert bytemodel.step_bytes("SparseAdam", [torch.zeros(50, 4)], [grad]) == 5 * 4 * 28 + 5 * bytemodel.INDEX_BYTES


def test_lbfgs_byte_model_by_hand():
    """K (8m + 13) vectors of n per step: the table in lbfgs_traffic's docstring, summed."""
    K, m = 4, 3
    per_iteration = 2 + 2 + 5 + (4 * m + 1) + 4 * m + 3  # closure, gather, pair, loop 1, loop 2, update
    assert per_iteration == 8 * m + 13 == 37
    traffic = bytemodel.lbfgs_traffic(K, m)
    assert traffic.tensors_per_element == K * per_iteration == 148
    assert traffic.bytes_per_element(4) == 592 and traffic.bytes_per_element(8) == 1184
    reads = dict(zip((r.split(" ×")[0] for r in traffic.reads), traffic.read_counts))
    writes = dict(zip((w.split(" ×")[0] for w in traffic.writes), traffic.write_counts))
    assert reads["param"] == 2 * K and writes["param"] == K  # closure + update read θ; the update writes it
    assert reads["grad"] == writes["grad"] == K  # K closure evaluations per step
    assert reads["old_dirs/old_stps"] == K * (4 * m - 1)  # each stored vector twice per iteration, y₀ shared
    assert reads["q/r"] == K * (2 * m - 1) and writes["q/r (d)"] == 2 * m * K
    assert sum(reads.values()) == K * (6 * m + 8) and sum(writes.values()) == K * (2 * m + 5)
    assert all(f"{name} ×{n}" in traffic.reads for name, n in reads.items())
    # torch's defaults when the bench's options are not given
    assert bytemodel.model_for("LBFGS").tensors_per_element == 20 * (8 * 100 + 13)
    assert bytemodel.model_for("LBFGS", BENCH_OPTIONS["LBFGS"]).tensors_per_element == 148
    assert bytemodel.model_for("Adam") is bytemodel.BYTE_MODEL["Adam"] and bytemodel.model_for("Muon") is None
    with pytest.raises(ValueError):
        bytemodel.lbfgs_traffic(4, 0)


def test_lbfgs_step_bytes_count_the_flat_vector():
    params = [torch.zeros(10, 3), torch.zeros(7), torch.zeros(2, dtype=torch.complex64)]  # 30 + 7 + 2*2 elements
    options = {"max_iter": 2, "history_size": 1}  # 2 * (8 + 13) = 42 vectors
    assert bytemodel.step_bytes("LBFGS", params, options=options) == 41 * 42 * 4
    assert bytemodel.step_bytes("LBFGS", [torch.zeros(5, dtype=torch.float64)], options=options) == 5 * 42 * 8


def test_lbfgs_variants_share_one_closure_and_do_a_known_amount_of_work():
    variants, notes = variants_for("LBFGS")
    assert [v.key for v in variants] == ["torch_forloop", "fastoptim"]
    assert "flat vector" in notes["torch_foreach"] and "max_iter=4" in notes["options"]
    options = BENCH_OPTIONS["LBFGS"]
    assert options["max_iter"] - 1 >= options["history_size"]  # the first step fills the history
    values = paramsets.build("tiny", quick=True, scale=0.2)
    runs = []
    for variant in variants:
        params = values.fresh_params()
        closure = closure_for("LBFGS", params)
        grads = [p.grad for p in params]
        loss = closure()
        assert [p.grad for p in params] == grads  # written in place
        assert all(torch.equal(p.grad, p.detach()) for p in params)
        assert loss.item() == pytest.approx(0.5 * sum(float((p.detach() ** 2).sum()) for p in params), rel=1e-5)
        opt = variant.make(params)
        assert opt.defaults["max_iter"] == options["max_iter"] and opt.defaults["lr"] == options["lr"]
        state = opt.state[params[0]]
        opt.step(closure)
        assert len(state["old_dirs"]) == options["history_size"]
        for _ in range(3):
            before = (state["func_evals"], state["n_iter"])
            opt.step(closure)
            assert (state["func_evals"] - before[0], state["n_iter"] - before[1]) == (4, 4)
            assert len(state["old_dirs"]) == options["history_size"]
        runs.append(params)
    for a, b in zip(*runs):
        assert torch.equal(a, b)  # torch and fastoptim: the same bits


def test_lbfgs_cell_runs_with_its_closure(tmp_path):
    """The whole bench on LBFGS alone (tiny sizes): timed rows, the model's bytes, a cold probe with the closure."""
    cfg = runner.BenchConfig(
        algorithms=["LBFGS"], sets=["tiny", "big"], scale=0.01, json_path=str(tmp_path / "l.json"),
        markdown_path=str(tmp_path / "l.md"), progress=False, memory=False,
        **{**runner.BenchConfig.quick_defaults(), "ceiling_mib": 1.0},
    )  # fmt: skip
    data = runner.run(cfg)
    rows = [r for r in data["results"] if r["algorithm"] == "LBFGS"]
    assert {r["variant"] for r in rows} == {"torch_forloop", "fastoptim"}
    for r in rows:
        assert r["error"] is None, r["error"]
        n = data["param_sets"][r["param_set"]]["n_elements"]
        assert r["step_bytes"] == 148 * 4 * n == data["byte_model"]["LBFGS"]["bytes_per_element"] * n
        assert r["time_s"]["n"] >= cfg.rounds
    assert [(c["algorithm"], c.get("error")) for c in data["cold"]] == [("LBFGS", None)], data["cold"]
    assert "| LBFGS | 592 |" in (tmp_path / "l.md").read_text()


def test_ceiling_bytes():
    assert bytemodel.CEILING.tensors_per_element == 3
    assert bytemodel.ceiling_bytes(1000, 4) == 12_000


# --------------------------------------------------------------------------- arithmetic


def test_quantile_and_summary_match_numpy():
    rng = random.Random(1)
    for n in (1, 2, 5, 10, 101):
        xs = [rng.random() for _ in range(n)]
        s = stats.summarize(xs)
        assert s["n"] == n
        assert s["median"] == pytest.approx(np.median(xs))
        assert s["p25"] == pytest.approx(np.percentile(xs, 25))
        assert s["p75"] == pytest.approx(np.percentile(xs, 75))
        assert s["iqr"] == pytest.approx(s["p75"] - s["p25"])
        assert (s["min"], s["max"]) == (min(xs), max(xs))


def test_summary_by_hand():
    s = stats.summarize([4.0, 1.0, 3.0, 2.0])
    assert (s["median"], s["p25"], s["p75"], s["iqr"]) == (2.5, 1.75, 3.25, 1.5)
    with pytest.raises(ValueError):
        stats.summarize([])


def test_rates():
    assert stats.gbps(28e9, 2.0) == 14.0
    assert stats.gbps(None, 1.0) is None and stats.gbps(1.0, 0.0) is None
    assert stats.percent_of(45.0, 50.0) == 90.0
    assert stats.percent_of(1.0, None) is None
    assert stats.speedup(2.0, 0.5) == 4.0  # baseline 2 s, ours 0.5 s: 4x faster
    assert stats.speedup(0.5, 2.0) == 0.25
    assert stats.speedup(None, 1.0) is None


def _row(algorithm, variant, median, nbytes=28_000_000, library=None):
    library = library or ("fastoptim" if variant == "fastoptim" else "torch")
    time_s = stats.summarize([median * 0.9, median, median * 1.2])
    return {
        "algorithm": algorithm, "param_set": "many", "variant": variant, "label": variant.replace("_", " "),
        "library": library, "error": None, "step_bytes": nbytes, "time_s": time_s,
        "gbps": stats.gbps(nbytes, time_s["median"]), "per_tensor_us": 1e6 * median / 10, "n_tensors": 10,
        "peak_extra_bytes": 0,
    }  # fmt: skip


def test_derive_speedup_is_against_the_fastest_torch_variant():
    rows = [
        _row("Adam", "torch_forloop", 0.004),
        _row("Adam", "torch_foreach", 0.003),
        _row("Adam", "torch_fused", 0.0015),
        _row("Adam", "fastoptim", 0.001),
        _row("SGD", "torch_forloop", 0.002),
        _row("SGD", "fastoptim", 0.004),
    ]
    rows.append({**_row("SGD", "torch_foreach", 0.0001), "time_s": None, "error": "boom"})  # ignored
    runner._derive(rows, ceiling_gbps=40.0)
    adam = {r["variant"]: r for r in rows if r["algorithm"] == "Adam"}
    assert adam["fastoptim"]["torch_best"] == "torch_fused"
    assert adam["fastoptim"]["speedup_vs_torch_best"] == pytest.approx(1.5)
    assert adam["torch_fused"]["speedup_vs_torch_best"] == pytest.approx(1.0)
    assert adam["torch_forloop"]["speedup_vs_torch_best"] == pytest.approx(0.375)
    # 28 MB in 1 ms = 28 GB/s = 70% of a 40 GB/s ceiling
    assert adam["fastoptim"]["gbps"] == pytest.approx(28.0)
    assert adam["fastoptim"]["pct_ceiling"] == pytest.approx(70.0)
    # a cell that measured its own ceiling is compared with that one
    cell = [_row("Adam", "torch_fused", 0.002), _row("Adam", "fastoptim", 0.001)]
    for r in cell:
        r["cell_ceiling_gbps"] = 35.0
    runner._derive(cell, ceiling_gbps=40.0)
    assert cell[1]["pct_ceiling"] == pytest.approx(80.0)  # 28 GB/s of the cell's 35
    assert cell[1]["pct_own_memory"] is None  # no own-memory yardstick in this made-up cell
    cell[1]["own_memory_gbps"] = 32.0
    runner._derive(cell, ceiling_gbps=40.0)
    assert cell[1]["pct_own_memory"] == pytest.approx(87.5)  # 28 GB/s of 32 measured on the cell's own tensors
    sgd = {r["variant"]: r for r in rows if r["algorithm"] == "SGD"}
    assert sgd["fastoptim"]["torch_best"] == "torch_forloop"
    assert sgd["fastoptim"]["speedup_vs_torch_best"] == pytest.approx(0.5)
    assert "speedup_vs_torch_best" not in sgd["torch_foreach"]


def test_markdown_shows_the_derived_numbers():
    rows = [_row("Adam", "torch_forloop", 0.004), _row("Adam", "torch_fused", 0.0015), _row("Adam", "fastoptim", 0.001)]
    runner._derive(rows, ceiling_gbps=40.0)
    data = {
        "command": "fastoptim bench --only Adam",
        "started": "now",
        "duration_s": 1.0,
        "environment": {
            "fastoptim": "0", "git_revision": "abc", "torch": "2.13", "numba": "0.6", "python": "3.11",
            "cpu": "cpu", "cpu_count": 2, "torch_threads": 2, "loadavg_start": [0.5, 0, 0],
            "loadavg_end": [0.5, 0, 0], "malloc_env": dict(runner.MALLOC_ENV),
        },
        "config": {"algorithms": ["Adam"], "dtype": "float32", "quick": False, "warmup": 3, "rounds": 10,
                   "budget_s": 1.0, "cold_set": "many", "cold_repeats": 1, "json_path": "a.json",
                   "markdown_path": "a.md"},
        "ceiling": {"numel": 1000, "bytes": 12000, "gbps": 40.0, "gbps_p25_p75": [39.0, 41.0],
                    "time_s": {"n": 5}, "checkpoints": [1, 2], "operation": "add_"},
        "param_sets": {"many": {"description": "d", "n_tensors": 10, "n_elements": 1_000_000,
                                "param_bytes": 4_000_000, "dtype": "float32", "largest_shape": [1000, 1000]}},
        "byte_model": {"Adam": {"reads": ["param", "grad"], "writes": ["param"], "tensors_per_element": 7,
                                "bytes_per_element": 28, "note": ""}},
        "results": rows, "variant_notes": {"Adam": {}}, "cold": [], "skipped": {"Muon": "compute-bound"},
        "method": {"timing": "t", "gbps": "g", "memory": "m", "cold": "c"},
    }  # fmt: skip
    text = report.markdown(data)
    adam = next(line for line in text.splitlines() if line.startswith("| Adam | 28 |"))
    # fastoptim: 1.00 ms median, p25 0.95, p75 1.10, 28 GB/s = 70% of 40 GB/s; 1.5x the fused variant
    assert "1.00 (0.950–1.10) · 70%" in adam
    assert "| 28.0 | – | – | – |" in adam and "1.50× (fused)" in adam  # no cell ceiling or own memory here
    rows[-1].update(cell_ceiling_gbps=35.0, own_memory_gbps=32.0)
    runner._derive(rows, ceiling_gbps=40.0)
    adam = next(line for line in report.markdown(data).splitlines() if line.startswith("| Adam | 28 |"))
    assert "| 28.0 | 35.0 | 32.0 | 88% |" in adam
    assert "MALLOC_MMAP_THRESHOLD_=33554432" in text
    assert "Muon: skipped" in text
    assert "fastoptim bench --only Adam" in text
    assert "1.00 ms" in report.summary(data) or "1.00" in report.summary(data)


@pytest.mark.parametrize(("seconds", "text"), [(0.0123456, "12.3"), (0.00012345, "0.123"), (1.5, "1500"), (None, "–")])
def test_fmt_ms(seconds, text):
    assert report.fmt_ms(seconds) == text


# --------------------------------------------------------------------------- parameter sets and variants


def test_full_size_parameter_sets_match_the_brief():
    many = paramsets.shapes("many")
    assert 140 <= len(many) <= 160
    assert 24e6 <= sum(math.prod(s) for s in many) <= 27e6
    assert paramsets.shapes("big") == [(8192, 8192)]
    tiny = paramsets.shapes("tiny")
    assert len(tiny) == 2000
    assert 90 <= sum(math.prod(s) for s in tiny) / len(tiny) <= 110
    with pytest.raises(KeyError):
        paramsets.shapes("huge")


def test_quick_and_scaled_sets_are_smaller():
    for name in paramsets.PARAM_SETS:
        full = sum(math.prod(s) for s in paramsets.shapes(name))
        quick = sum(math.prod(s) for s in paramsets.shapes(name, quick=True))
        tiny = sum(math.prod(s) for s in paramsets.shapes(name, quick=True, scale=0.01))
        assert tiny <= quick < full


def test_variants_follow_torchs_signatures():
    keys = {a: [v.key for v in variants_for(a)[0]] for a in ("SGD", "Adagrad", "RMSprop", "SparseAdam")}
    assert keys["SGD"] == ["torch_forloop", "torch_foreach", "torch_fused", "fastoptim"]
    assert keys["Adagrad"] == ["torch_forloop", "torch_foreach", "torch_fused", "fastoptim"]
    assert keys["RMSprop"] == ["torch_forloop", "torch_foreach", "fastoptim"]
    assert keys["SparseAdam"] == ["torch_forloop", "fastoptim"]  # torch's only implementation
    p = torch.zeros(3, requires_grad=True)
    made = {v.key: v.make([p]) for v in variants_for("Adam")[0]}
    assert made["torch_forloop"].defaults["foreach"] is False
    assert made["torch_fused"].defaults["fused"] is True
    assert isinstance(made["fastoptim"], fastoptim.Adam)


def test_memory_probe_sees_a_temporary():
    if not memory.supported():
        pytest.skip("cannot reset the peak RSS on this kernel")
    size = 64 * stats.MIB

    def allocate():
        t = torch.ones(size // 4)  # touched, so resident
        return float(t[-1])

    seen = memory.peak_extra(allocate, trials=2)["bytes"]
    assert 0.9 * size <= seen <= 1.5 * size
    assert memory.peak_extra(lambda: None, trials=2)["bytes"] < 4 * stats.MIB


# --------------------------------------------------------------------------- command line


def _args(*argv):
    return build_parser().parse_args(["bench", *argv])


def test_only_selects_case_insensitively_and_in_report_order():
    from fastoptim.cli.bench import build_config

    cfg = build_config(_args("--only", "sgd, ADAM"))
    assert cfg.algorithms == ["SGD", "Adam"]
    assert cfg.skipped == {}
    cfg = build_config(_args("--only", "Adam,Muon", "--quick", "--rounds", "5"))
    assert cfg.algorithms == ["Adam"] and "Muon" in cfg.skipped
    assert cfg.quick and cfg.rounds == 5 and cfg.warmup == runner.BenchConfig.quick_defaults()["warmup"]
    assert cfg.command == "fastoptim bench --quick --only Adam,Muon --rounds 5"
    assert build_config(_args("--only", "lbfgs,adam")).algorithms == ["Adam", "LBFGS"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "Adam,Adamm"], "unknown algorithm in --only: Adamm"),
        (["--only", "Muon"], "nothing to bench"),
        (["--only", ","], "at least one"),
        (["--sets", "many,huge"], "unknown parameter set"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--scale", "-1"], "--scale must be positive"),
    ],
)
def test_bad_arguments_are_cli_errors(argv, message, capsys):
    from fastoptim.cli.bench import build_config

    with pytest.raises(CLIError, match=message):
        build_config(_args(*argv))
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_bench_runs_end_to_end(tmp_path):
    """The real command on tiny sizes, through the re-executed worker, then the arithmetic of its output."""
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    rc = main(["bench", "--quick", "--scale", "0.01", "--only", "SGD,Adam", "--rounds", "2", "--threads", "1",
               "--ceiling-mib", "1", "--json", str(out_json), "--markdown", str(out_md), "--no-progress"])  # fmt: skip
    assert rc == 0
    data = json.loads(out_json.read_text())
    md = out_md.read_text()

    assert data["environment"]["malloc_env"] == runner.MALLOC_ENV
    assert data["config"]["algorithms"] == ["SGD", "Adam"]
    assert data["skipped"] == {}
    ceiling = data["ceiling"]
    assert ceiling["bytes"] == 3 * 4 * ceiling["numel"]
    assert ceiling["gbps"] == pytest.approx(ceiling["bytes"] / ceiling["time_s"]["median"] / 1e9)
    # sampled at the start and in each cell's rounds, every sample kept once
    checkpoints = {c["where"]: c["samples_s"] for c in ceiling["checkpoints"]}
    assert set(checkpoints) == {"start"} | {f"{a} / {s}" for a in ("SGD", "Adam") for s in data["param_sets"]}
    assert sum(len(v) for v in checkpoints.values()) == ceiling["time_s"]["n"]
    for key, taken in checkpoints.items():
        if key != "start":
            algorithm, set_name = key.split(" / ")
            cell_gbps = ceiling["bytes"] / stats.summarize(taken)["median"] / 1e9
            assert len(taken) >= data["config"]["rounds"]
            row = next(r for r in data["results"] if (r["algorithm"], r["param_set"]) == (algorithm, set_name))
            assert row["cell_ceiling_gbps"] == pytest.approx(cell_gbps)
    # the ceiling's operation on each cell's own parameters and gradients, in the same rounds
    own = {o["where"]: o for o in data["own_memory"]}
    assert set(own) == set(checkpoints) - {"start"}
    for key, record in own.items():
        algorithm, set_name = key.split(" / ")
        info = data["param_sets"][set_name]
        assert record["bytes"] == 3 * info["param_bytes"]
        assert len(record["samples_s"]) >= data["config"]["rounds"]
        own_gbps = record["bytes"] / stats.summarize(record["samples_s"])["median"] / 1e9
        for row in data["results"]:
            if (row["algorithm"], row["param_set"]) == (algorithm, set_name):
                assert row["own_memory_gbps"] == pytest.approx(own_gbps)
                assert row["pct_own_memory"] == pytest.approx(100 * row["gbps"] / own_gbps)

    cells = {(r["algorithm"], r["param_set"], r["variant"]): r for r in data["results"]}
    for algorithm in ("SGD", "Adam"):
        for set_name, info in data["param_sets"].items():
            variants = ("torch_forloop", "torch_foreach", "torch_fused", "fastoptim")
            rows = {v: cells[(algorithm, set_name, v)] for v in variants}
            per_element = data["byte_model"][algorithm]["bytes_per_element"]
            best = min((r for r in rows.values() if r["library"] == "torch"), key=lambda r: r["time_s"]["median"])
            for r in rows.values():
                assert r["error"] is None, r["error"]
                t = r["time_s"]
                assert t["n"] == len(r["samples_s"]) >= data["config"]["rounds"]
                assert t["min"] <= t["p25"] <= t["median"] <= t["p75"] <= t["max"]
                assert r["step_bytes"] == per_element * info["n_elements"]
                assert r["gbps"] == pytest.approx(r["step_bytes"] / t["median"] / 1e9)
                assert r["pct_ceiling"] == pytest.approx(100 * r["gbps"] / r["cell_ceiling_gbps"])
                assert r["speedup_vs_torch_best"] == pytest.approx(best["time_s"]["median"] / t["median"])
                assert r["torch_best"] == best["variant"]
                assert r["per_tensor_us"] == pytest.approx(1e6 * t["median"] / info["n_tensors"])
                assert r["peak_extra_bytes"] is None or r["peak_extra_bytes"] >= 0
            assert f"| {algorithm} | {per_element} |" in md

    cold = {(c["algorithm"], c["library"]): c for c in data["cold"]}
    assert set(cold) == {("SGD", "fastoptim"), ("Adam", "fastoptim")}
    assert all("error" not in c and c["total_s"]["median"] > 0 for c in cold.values())
    assert cold[("SGD", "fastoptim")]["import_s"]["median"] > 0  # first in its process: pays the import
    assert "## Cold first step" in md and "## Byte model" in md
    assert "MALLOC_TOP_PAD_=1073741824" in md


def test_algorithms_beyond_torch_are_benched_against_their_reference_packages():
    algorithms, _ = discover_algorithms()
    for name, (module, class_name, _) in REFERENCE_PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            continue
        assert name in algorithms and name in bytemodel.BYTE_MODEL
        variants, notes = variants_for(name)
        assert [v.library for v in variants][-1] == "fastoptim"
        assert {v.library for v in variants[:-1]} == {"reference"}
        assert notes["reference"].startswith(f"{module}.{class_name} ")
        p = torch.zeros(4, 3, requires_grad=True)
        for variant in variants:
            p.grad = torch.ones(4, 3)
            variant.make([p]).step()  # Schedule-Free ones come in train mode


def test_a_missing_reference_package_skips_its_algorithms(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "schedulefree" else real(name, *a))
    algorithms, skipped = discover_algorithms()
    assert "AdamWScheduleFree" not in algorithms and "schedulefree" in skipped["AdamWScheduleFree"]
    assert "Lion" in algorithms or importlib.util.find_spec("lion_pytorch") is None


def test_reference_rows_are_the_baseline_where_torch_has_none():
    rows = [
        {"algorithm": "Lion", "param_set": "big", "variant": v, "library": lib, "time_s": {"median": t}, "gbps": 1.0}
        for v, lib, t in (("reference", "reference", 2.0), ("fastoptim", "fastoptim", 0.5))
    ]
    runner._derive(rows, ceiling_gbps=2.0)
    assert rows[1]["torch_best"] == "reference" and rows[1]["speedup_vs_torch_best"] == 4.0
