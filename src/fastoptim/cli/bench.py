"""``fastoptim bench``: time every algorithm against torch.optim's variants, in one interleaved run.

The measuring happens in a worker process started with the glibc malloc
settings of :data:`fastoptim.bench.runner.MALLOC_ENV` (they only take effect at
process start); when this process already has them it measures itself.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from . import CLIError

DESCRIPTION = """\
Measure, in one run with interleaved rounds: the memory-bandwidth ceiling
(a.add_(b, alpha=s)), torch.optim's for-loop / foreach / fused variants and
fastoptim's default, for every algorithm both libraries have, on three parameter
sets (many transformer-like tensors, one big tensor, many tiny tensors).
Reports median and spread of the step time, GB/s from each algorithm's minimum
memory traffic, % of the ceiling, speed-up vs torch's best variant, peak extra
memory of a step and the cold first-step time; writes JSON and Markdown.
"""

# option dest -> (flag, default) for the options that change the measurement; used
# to write the command line into the report exactly as an equivalent invocation
_ECHOED = [
    ("quick", "--quick"),
    ("only", "--only"),
    ("sets", "--sets"),
    ("dtype", "--dtype"),
    ("scale", "--scale"),
    ("rounds", "--rounds"),
    ("warmup", "--warmup"),
    ("budget", "--budget"),
    ("threads", "--threads"),
    ("seed", "--seed"),
    ("ceiling_mib", "--ceiling-mib"),
    ("no_memory", "--no-memory"),
    ("no_cold", "--no-cold"),
    ("cold_repeats", "--cold-repeats"),
    ("json", "--json"),
    ("markdown", "--markdown"),
]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark fastoptim against torch.optim (bandwidth, memory, cold start)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (under a minute)")
    p.add_argument("--only", metavar="ALGS", help="comma-separated algorithms, e.g. Adam,SGD (default: all)")
    p.add_argument("--sets", metavar="SETS", help="comma-separated parameter sets: many,big,tiny (default: all)")
    p.add_argument("--json", metavar="PATH", default="fastoptim-bench.json", help="JSON output (default: %(default)s)")
    p.add_argument(
        "--markdown", metavar="PATH", default="fastoptim-bench.md", help="Markdown output (default: %(default)s)"
    )
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="parameter dtype")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every set's element count (smoke tests)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds per cell (default 10, --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed steps per variant per cell (default 3, --quick 2)")
    p.add_argument("--budget", type=float, help="seconds of timed steps per variant per cell (default 1, --quick 0.04)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the run (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed for data and for the round order")
    p.add_argument("--ceiling-mib", type=float, help="size of each ceiling tensor (default 256, --quick 32)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-extra-memory measurement")
    p.add_argument("--no-cold", action="store_true", help="skip the cold first-step subprocesses")
    p.add_argument("--cold-repeats", type=int, help="fresh processes per cold measurement (default 3, --quick 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _select_algorithms(only: str | None) -> tuple[list[str], dict[str, str]]:
    from fastoptim.bench.variants import discover_algorithms

    algorithms, skipped = discover_algorithms()
    if only is None:
        return algorithms, skipped
    known = {name.lower(): name for name in [*algorithms, *skipped]}
    wanted = _split(only)
    if not wanted:
        raise CLIError("--only needs at least one algorithm name")
    unknown = [w for w in wanted if w.lower() not in known]
    if unknown:
        raise CLIError(
            f"unknown algorithm{'s' if len(unknown) > 1 else ''} in --only: {', '.join(unknown)} "
            f"(known: {', '.join(known.values())})"
        )
    names = list(dict.fromkeys(known[w.lower()] for w in wanted))
    chosen = [n for n in algorithms if n in names]
    skipped = {n: why for n, why in skipped.items() if n in names}
    if not chosen:
        raise CLIError(
            "nothing to bench: " + "; ".join(f"{n} is skipped ({why})" for n, why in skipped.items())
        )
    return chosen, skipped


def _command_line(args: argparse.Namespace) -> str:
    words = ["fastoptim", "bench"]
    defaults = {"json": "fastoptim-bench.json", "markdown": "fastoptim-bench.md", "dtype": "float32", "scale": 1.0,
                "seed": 0}  # fmt: skip
    for dest, flag in _ECHOED:
        value = getattr(args, dest)
        if value is None or value is False or value == defaults.get(dest):
            continue
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def build_config(args: argparse.Namespace):
    """Validate the arguments and turn them into a :class:`BenchConfig`; raises CLIError."""
    from fastoptim.bench import paramsets
    from fastoptim.bench.runner import BenchConfig

    algorithms, skipped = _select_algorithms(args.only)
    sets = _split(args.sets) if args.sets is not None else list(paramsets.PARAM_SETS)
    unknown = [s for s in sets if s not in paramsets.PARAM_SETS]
    if unknown or not sets:
        raise CLIError(f"unknown parameter set in --sets: {', '.join(unknown) or '(none)'} "
                       f"(known: {', '.join(paramsets.PARAM_SETS)})")  # fmt: skip
    for name, minimum in (("rounds", 1), ("warmup", 1), ("cold_repeats", 1), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise CLIError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")
    for name in ("scale", "budget", "ceiling_mib"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise CLIError(f"--{name.replace('_', '-')} must be positive, got {value}")

    fields = BenchConfig.quick_defaults() if args.quick else {}
    explicit = {
        "rounds": args.rounds,
        "warmup": args.warmup,
        "budget_s": args.budget,
        "ceiling_mib": args.ceiling_mib,
        "cold_repeats": args.cold_repeats,
        "threads": args.threads,
    }
    fields.update({k: v for k, v in explicit.items() if v is not None})
    return BenchConfig(
        algorithms=algorithms,
        skipped=skipped,
        sets=list(dict.fromkeys(sets)),
        dtype=args.dtype,
        scale=args.scale,
        seed=args.seed,
        memory=not args.no_memory,
        cold=not args.no_cold,
        json_path=args.json,
        markdown_path=args.markdown,
        progress=not args.no_progress,
        command=_command_line(args),
        **fields,
    )


def _worker_env() -> dict[str, str]:
    """This environment plus the malloc settings, importing the same fastoptim as this process."""
    import fastoptim
    from fastoptim.bench.runner import MALLOC_ENV

    env = {**os.environ, **MALLOC_ENV}
    source_root = str(Path(fastoptim.__file__).resolve().parents[1])
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != source_root]
    env["PYTHONPATH"] = os.pathsep.join([source_root, *rest])
    return env


def run(args: argparse.Namespace) -> int:
    from fastoptim.bench import report
    from fastoptim.bench.runner import malloc_env_is_set
    from fastoptim.bench.runner import run as run_bench

    cfg = build_config(args)
    if not malloc_env_is_set():
        from fastoptim.bench.runner import MALLOC_ENV

        settings = " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
        print(f"fastoptim bench: measuring in a worker process with {settings}", file=sys.stderr)
        worker = [sys.executable, "-m", "fastoptim.bench", "--config-json", cfg.to_json()]
        return subprocess.run(worker, env=_worker_env()).returncode
    data = run_bench(cfg)
    print(report.summary(data))
    return 0
