"""The measuring loop: ceiling, then every (algorithm, parameter set) cell, then cold starts.

How a cell is timed (the machine is shared and noisy, so every choice below is
about not letting the noise favour one side):

* all variants of a cell (torch for-loop / foreach / fused, fastoptim) step the
  *same* parameter and gradient tensors, each with its own optimizer state;
* warm-up: ``warmup`` interleaved steps per variant (state allocation, JIT);
* then ``rounds`` rounds; in each the variants run in a freshly shuffled order,
  each for its ``k`` steps back to back, every step timed on its own with
  ``time.perf_counter``.  ``k`` is picked from the warm-up so that every
  variant gets about ``budget`` seconds of timed steps; slow variants get fewer
  steps, never fewer than one per round;
* the bandwidth ceiling (``a.add_(b, alpha=s)``) takes part in every cell's
  rounds like one more variant, so each cell's % of ceiling compares with a
  ceiling measured under the same load, interleaved with it;
* so does the same operation on the cell's own memory (:class:`OwnMemory`:
  ``p.add_(g, alpha=0)`` over its parameters and gradients), because on a VM
  two allocations can run at different speeds at the same moment: the "% of
  own memory" shows how much of a row's distance to the ceiling is where its
  tensors landed;
* the garbage collector is off while timing (both sides allocate Python objects).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import bytemodel, memory, paramsets, stats
from .variants import BENCH_OPTIONS, Variant, closure_for, variants_for

__all__ = ["MALLOC_ENV", "BenchConfig", "malloc_env_is_set", "run"]

#: glibc malloc settings for every measured process, torch's and fastoptim's
#: alike: big blocks (>= 32 MiB) come from mmap, freed memory is not trimmed and
#: the heap grows in 1 GiB steps, so no step pays for page faults that another
#: step does not.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "1073741824",
}

SCHEMA = "fastoptim-bench/1"


def malloc_env_is_set(environ=os.environ) -> bool:
    return all(environ.get(k) == v for k, v in MALLOC_ENV.items())


@dataclass
class BenchConfig:
    """Everything a run depends on; stored in the JSON next to the results."""

    algorithms: list[str]
    sets: list[str] = field(default_factory=lambda: list(paramsets.PARAM_SETS))
    quick: bool = False
    scale: float = 1.0
    dtype: str = "float32"
    seed: int = 0
    warmup: int = 3
    rounds: int = 10
    budget_s: float = 1.0  # timed seconds per variant per cell
    max_steps_per_round: int = 50
    ceiling_mib: float = 256.0  # size of each of a and b
    ceiling_samples: int = 5  # at the start, before any cell (then every cell samples it in its rounds)
    memory: bool = True
    memory_trials: int = 3
    cold: bool = True
    cold_torch: bool = True
    cold_repeats: int = 3
    cold_set: str = "many"
    cold_one_process: bool = False  # all algorithms in one fresh process (--quick)
    threads: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    json_path: str = "fastoptim-bench.json"
    markdown_path: str = "fastoptim-bench.md"
    progress: bool = True
    command: str = "fastoptim bench"

    @classmethod
    def quick_defaults(cls) -> dict:
        """Overrides --quick applies: small sizes, few rounds, cold start of fastoptim only."""
        return dict(
            quick=True, warmup=1, rounds=2, budget_s=0.02, ceiling_mib=32.0, ceiling_samples=3,
            memory_trials=1, cold_torch=False, cold_repeats=1, cold_one_process=True,
        )  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BenchConfig:
        return cls(**json.loads(text))


# --------------------------------------------------------------------------- environment


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=here.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    import numpy

    import fastoptim

    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "numba": numba_version,
        "fastoptim": fastoptim.__version__,
        "git_revision": _git_revision(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "loadavg_start": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------- timing


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Ceiling:
    """``a.add_(b, alpha=s)`` over two tensors of ``mib`` MiB each: the bandwidth ceiling."""

    def __init__(self, mib: float, dtype: torch.dtype, seed: int) -> None:
        element_size = torch.empty((), dtype=dtype).element_size()
        self.numel = max(1, int(mib * stats.MIB) // element_size)
        generator = torch.Generator().manual_seed(seed)
        self.a = torch.rand(self.numel, generator=generator, dtype=dtype)
        self.b = torch.rand(self.numel, generator=generator, dtype=dtype)
        self.bytes = bytemodel.ceiling_bytes(self.numel, element_size)
        self.samples: list[float] = []
        self.checkpoints: list[dict] = []
        self._sign = 1.0

    def _step(self) -> None:
        # alternate the sign so a stays bounded however many samples are taken
        self._sign = -self._sign
        self.a.add_(self.b, alpha=self._sign * 1e-3)

    def step(self) -> None:
        self._step()

    def sample(self, n: int, label: str) -> None:
        self._step()  # warm: fault in pages, wake threads
        self.record([_timed(self._step) for _ in range(n)], label)

    def record(self, taken: list[float], label: str) -> dict:
        """Keep samples taken elsewhere (in a cell's rounds); returns their summary and GB/s."""
        self.samples += taken
        self.checkpoints.append({"where": label, "samples_s": taken})
        summary = stats.summarize(taken)
        return {"time_s": summary, "gbps": stats.gbps(self.bytes, summary["median"])}

    def release(self) -> None:
        del self.a, self.b

    def result(self) -> dict:
        summary = stats.summarize(self.samples)
        return {
            "operation": bytemodel.CEILING.note,
            "numel": self.numel,
            "bytes": self.bytes,
            "time_s": summary,
            "gbps": stats.gbps(self.bytes, summary["median"]),
            "gbps_p25_p75": [stats.gbps(self.bytes, summary["p75"]), stats.gbps(self.bytes, summary["p25"])],
            "checkpoints": self.checkpoints,
        }


class OwnMemory:
    """The ceiling's operation on a cell's own tensors: ``p.add_(g, alpha=0)`` for every parameter.

    It reads each parameter and gradient and writes the parameter back
    unchanged (the gradients are finite), one ``_foreach_add_`` call for the
    whole set, so it pays one small per-tensor cost in C++ and none in Python.
    SparseAdam's cells pair the parameters with the set's dense gradients.
    """

    def __init__(self, params: list[torch.Tensor], dense_grads: list[torch.Tensor]) -> None:
        self.params, self.grads = params, dense_grads
        self.bytes = sum(bytemodel.ceiling_bytes(p.numel(), p.element_size()) for p in params)

    @torch.no_grad()
    def step(self) -> None:
        torch._foreach_add_(self.params, self.grads, alpha=0.0)

    def result(self, taken: list[float]) -> dict:
        summary = stats.summarize(taken)
        return {"time_s": summary, "gbps": stats.gbps(self.bytes, summary["median"])}


def _describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


#: the ceiling's key among a cell's participants (never a variant's key)
CEILING_KEY = "ceiling"
#: the key of the ceiling's operation on the cell's own tensors (:class:`OwnMemory`)
OWN_MEMORY_KEY = "own_memory"

#: every time a step left torch's intra-op thread count changed: {variant, algorithm, set, from, to}
THREAD_CHANGES: list[dict] = []


def _restore_threads(expected: int, algorithm: str, set_name: str, culprit: str | None) -> None:
    """Put torch's thread count back if the previous step changed it, and remember who did.

    numba's OpenMP threading layer shares libgomp with torch, so starting its
    pool can change ``torch.get_num_threads()``; left alone, that would make
    the next variant run with another thread count than the one reported.
    """
    now = torch.get_num_threads()
    if now != expected:
        THREAD_CHANGES.append(
            {"after_variant": culprit, "algorithm": algorithm, "param_set": set_name, "from": expected, "to": now}
        )
        torch.set_num_threads(expected)


def _run_cell(
    algorithm: str,
    pset: paramsets.ParamSet,
    variants: list[Variant],
    cfg: BenchConfig,
    rng: random.Random,
    threads: int,
    ceiling: Ceiling,
    own_memory_log: list[dict],
) -> list[dict]:
    """Time every variant of one (algorithm, parameter set) cell, and the ceiling and own-memory add_ among them.

    Returns one result dict per variant, each carrying the cell's ceiling and
    own-memory GB/s; the own-memory samples go to ``own_memory_log``.
    """
    params = pset.fresh_params()
    if algorithm == "SparseAdam":
        grads = [paramsets.sparse_grad(g, seed=cfg.seed) for g in pset.grads]
    else:
        grads = [g.clone() for g in pset.grads]
    for p, g in zip(params, grads):
        p.grad = g
    nbytes = bytemodel.step_bytes(algorithm, params, grads, options=BENCH_OPTIONS.get(algorithm))
    # L-BFGS: step(closure), the same closure for every variant (it writes the gradients in place)
    closure = closure_for(algorithm, params)

    own_memory = OwnMemory(params, pset.grads if algorithm == "SparseAdam" else grads)
    rows = {v.key: {"variant": v.key, "label": v.label, "library": v.library, "error": None} for v in variants}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for v in variants:
        try:
            optimizers[v.key] = v.make(params)
        except Exception as exc:  # noqa: BLE001 - a broken variant is reported, the bench goes on
            rows[v.key]["error"] = _describe_error(exc)

    def stepper(key: str) -> Callable[[], object]:
        optimizer_step = optimizers[key].step
        return optimizer_step if closure is None else (lambda: optimizer_step(closure))

    last = [None]
    # the ceiling and the own-memory yardstick run in the same rounds, under keys no variant uses
    runners: dict[str, Callable[[], object]] = {CEILING_KEY: ceiling.step, OWN_MEMORY_KEY: own_memory.step}

    def step(key: str) -> float | None:
        _restore_threads(threads, algorithm, pset.name, last[0])
        last[0] = key
        try:
            return _timed(runners.get(key) or stepper(key))
        except Exception as exc:  # noqa: BLE001
            rows[key]["error"] = _describe_error(exc)
            del optimizers[key]
            return None

    def participants() -> list[str]:
        return [*optimizers, CEILING_KEY, OWN_MEMORY_KEY]

    warm: dict[str, list[float]] = {k: [] for k in participants()}
    for _ in range(cfg.warmup):
        for key in participants():
            t = step(key)
            if t is not None:
                warm[key].append(t)

    steps_per_round = {}
    for key, times in warm.items():
        if key in participants() and times:
            typical = stats.quantile(times[1:] or times, 0.5)  # the first step allocates state
            wanted = round(cfg.budget_s / cfg.rounds / max(typical, 1e-9))
            steps_per_round[key] = int(min(max(wanted, 1), cfg.max_steps_per_round))

    samples: dict[str, list[float]] = {k: [] for k in participants()}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(cfg.rounds):
            order = participants()
            rng.shuffle(order)
            for key in order:
                for _ in range(steps_per_round.get(key, 1)):
                    t = step(key)
                    if t is None:
                        break
                    samples[key].append(t)
    finally:
        if gc_was_enabled:
            gc.enable()

    mem: dict[str, dict] = {}
    if cfg.memory:
        gc.collect()
        for key in list(optimizers):
            _restore_threads(threads, algorithm, pset.name, last[0])
            last[0] = key
            try:
                mem[key] = memory.peak_extra(stepper(key), trials=cfg.memory_trials, collect=False)
            except Exception as exc:  # noqa: BLE001
                rows[key]["error"] = _describe_error(exc)

    cell_ceiling = own = None
    if samples[CEILING_KEY]:
        cell_ceiling = ceiling.record(samples[CEILING_KEY], f"{algorithm} / {pset.name}")
    if samples[OWN_MEMORY_KEY]:
        own = own_memory.result(samples[OWN_MEMORY_KEY])
        own_memory_log.append(
            {"where": f"{algorithm} / {pset.name}", "bytes": own_memory.bytes, "samples_s": samples[OWN_MEMORY_KEY]}
        )
    for v in variants:
        row = rows[v.key]
        row.update(algorithm=algorithm, param_set=pset.name, step_bytes=nbytes, n_tensors=pset.n_tensors)
        row["cell_ceiling_gbps"] = cell_ceiling["gbps"] if cell_ceiling else None
        row["own_memory_gbps"] = own["gbps"] if own else None
        times = samples.get(v.key)
        if row["error"] is None and times:
            summary = stats.summarize(times)
            row.update(
                time_s=summary,
                samples_s=times,
                steps_per_round=steps_per_round.get(v.key),
                first_step_s=warm[v.key][0] if warm.get(v.key) else None,
                gbps=stats.gbps(nbytes, summary["median"]),
                per_tensor_us=1e6 * summary["median"] / pset.n_tensors,
            )
            if v.key in mem:
                row.update(peak_extra_bytes=mem[v.key]["bytes"], memory_trials=mem[v.key]["trials"])
                if mem[v.key].get("error"):
                    row["memory_error"] = mem[v.key]["error"]
        elif row["error"] is None:
            row["error"] = "no timed steps"
    del optimizers, params, grads, closure, own_memory
    gc.collect()
    return list(rows.values())


def _derive(results: list[dict], ceiling_gbps: float | None) -> None:
    """Fill in the cross-variant numbers: % of ceiling and speed-up vs torch's best.

    For an algorithm torch.optim lacks, "torch's best" is the reference package's best variant.
    """
    cells: dict[tuple[str, str], list[dict]] = {}
    for row in results:
        cells.setdefault((row["algorithm"], row["param_set"]), []).append(row)
    for rows in cells.values():
        timed = [r for r in rows if r.get("time_s")]
        torch_rows = [r for r in timed if r["library"] == "torch"] or [r for r in timed if r["library"] == "reference"]
        best = min(torch_rows, key=lambda r: r["time_s"]["median"], default=None)
        for r in timed:
            # against the ceiling measured in the cell's own rounds when there is one
            r["pct_ceiling"] = stats.percent_of(r.get("gbps"), r.get("cell_ceiling_gbps") or ceiling_gbps)
            r["pct_own_memory"] = stats.percent_of(r.get("gbps"), r.get("own_memory_gbps"))
            r["torch_best"] = best["variant"] if best else None
            r["speedup_vs_torch_best"] = stats.speedup(
                best["time_s"]["median"] if best else None, r["time_s"]["median"]
            )


def _cold_probe(algorithms: list[str], library: str, cfg: BenchConfig) -> dict[str, dict]:
    """Run cold.py once in a fresh interpreter; {algorithm: timings or {"error": ...}}."""
    script = Path(__file__).with_name("cold.py")
    argv = [library, cfg.cold_set, "1" if cfg.quick else "0", str(cfg.scale), cfg.dtype, str(cfg.seed)]
    argv += [str(cfg.threads or 0), *algorithms]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {a: {"error": "timed out after 600 s"} for a in algorithms}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {a: {"error": (lines[-1] if lines else f"exit status {proc.returncode}")[:300]} for a in algorithms}
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {a: {"error": f"unreadable probe output: {proc.stdout[-200:]!r}"} for a in algorithms}
    for row in out.values():
        row["process_wall_s"] = wall
    return out


def _cold_row(algorithm: str, library: str, runs: list[dict], cfg: BenchConfig) -> dict:
    good = [r for r in runs if "error" not in r]
    row = {"algorithm": algorithm, "library": library, "param_set": cfg.cold_set, "runs": runs}
    if good:
        for key in ("total_s", "import_s", "first_step_s"):
            row[key] = stats.summarize([r[key] for r in good])
        row["fresh_process"] = all(r["fresh_process"] for r in good)
    else:
        row["error"] = runs[0].get("error", "not run") if runs else "not run"
    return row


def _byte_model_rows(algorithms: list[str]) -> dict[str, bytemodel.Traffic]:
    rows = {}
    for name in algorithms:
        model = bytemodel.model_for(name, BENCH_OPTIONS.get(name))  # L-BFGS: set by the bench's options
        if model is not None:
            rows[name] = model
        if name in bytemodel.VECTOR_BYTE_MODEL:
            rows[f"{name} (<2-D)"] = bytemodel.VECTOR_BYTE_MODEL[name]
    rows["ceiling"] = bytemodel.CEILING
    return rows


def _summarize_thread_changes() -> list[dict]:
    """One entry per (variant, from, to) with how many steps it happened after."""
    counts: dict[tuple, int] = {}
    for c in THREAD_CHANGES:
        key = (c["after_variant"], c["from"], c["to"])
        counts[key] = counts.get(key, 0) + 1
    return [{"after_variant": v, "from": a, "to": b, "times": n} for (v, a, b), n in counts.items()]


# --------------------------------------------------------------------------- driver


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fastoptim bench", unit="cell", disable=not enabled, file=sys.stderr, leave=True)


def run(cfg: BenchConfig) -> dict:
    """Run the whole bench; returns the JSON-able result (also written to ``cfg.json_path``)."""
    from . import report

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    THREAD_CHANGES.clear()
    dtype = getattr(torch, cfg.dtype)
    rng = random.Random(cfg.seed)
    env = environment()
    import fastoptim.kernels.dispatch  # noqa: F401 - imported by the first step otherwise

    # Everything imported so far lives until exit: keep it out of the collector's
    # way, or each gc.collect() below walks torch's whole object graph (~0.3 s).
    gc.collect()
    gc.freeze()
    started = time.time()

    n_cold = len(cfg.algorithms) * (1 + cfg.cold_torch) if cfg.cold else 0
    total = len(cfg.algorithms) * len(cfg.sets) + 1 + n_cold
    results: list[dict] = []
    notes: dict[str, dict[str, str]] = {}
    cold: list[dict] = []
    with _progress(total, cfg.progress) as bar:
        bar.set_postfix_str("building parameter sets")
        sets = {
            name: paramsets.build(name, quick=cfg.quick, scale=cfg.scale, dtype=dtype, seed=cfg.seed)
            for name in cfg.sets
        }
        bar.set_postfix_str("ceiling")
        ceiling = Ceiling(cfg.ceiling_mib, dtype, cfg.seed)
        ceiling.sample(cfg.ceiling_samples, "start")
        own_memory_log: list[dict] = []
        bar.update()
        for algorithm in cfg.algorithms:
            variants, notes[algorithm] = variants_for(algorithm)
            for name, pset in sets.items():
                bar.set_postfix_str(f"{algorithm} / {name}")
                results += _run_cell(algorithm, pset, variants, cfg, rng, threads, ceiling, own_memory_log)
                bar.update()
        ceiling.release()
        ceiling_result = ceiling.result()
        _derive(results, ceiling_result["gbps"])
        set_info = {name: pset.describe() for name, pset in sets.items()}
        del sets
        gc.collect()

        if cfg.cold:
            timed = {r["algorithm"] for r in results if r["library"] == "fastoptim" and r.get("time_s")}
            ran = [a for a in cfg.algorithms if a in timed]
            for library in ("fastoptim", "torch") if cfg.cold_torch else ("fastoptim",):
                runs: dict[str, list[dict]] = {a: [] for a in cfg.algorithms}
                # torch's cold start is probed for the algorithms torch.optim has
                probed = ran if library == "fastoptim" else [a for a in ran if hasattr(torch.optim, a)]
                batches = ([probed] if probed else []) if cfg.cold_one_process else [[a] for a in probed]
                for batch in batches:
                    # torch's cold start is a reference point only: one process is enough
                    for _ in range(cfg.cold_repeats if library == "fastoptim" else 1):
                        bar.set_postfix_str(f"cold start {library} {batch[0] if len(batch) == 1 else 'all'}")
                        for a, r in _cold_probe(batch, library, cfg).items():
                            runs[a].append(r)
                    bar.update(len(batch))
                for a in cfg.algorithms:
                    if library == "torch" and a in ran and a not in probed:
                        bar.update()
                    elif a in ran:
                        cold.append(_cold_row(a, library, runs[a], cfg))
                    else:
                        cold.append({"algorithm": a, "library": library, "error": "fastoptim variant failed"})
                        bar.update()

    env["loadavg_end"] = list(os.getloadavg())
    env["torch_threads_changed"] = _summarize_thread_changes()
    element_size = torch.empty((), dtype=dtype).element_size()
    data = {
        "schema": SCHEMA,
        "command": cfg.command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
        "environment": env,
        "config": asdict(cfg),
        "method": {
            "timing": __doc__.split("\n\n", 1)[1].strip(),
            "gbps": "minimum bytes of the byte model / median step time, decimal GB (1e9 B)",
            "memory": memory.MEMORY_METHOD.format(trials=cfg.memory_trials),
            "cold": "fresh interpreter, warm numba cache (the main process ran the same kernels first): "
            "import fastoptim + constructor + first step; the clock starts after import torch and building "
            "the parameters"
            + (
                "; --quick: ONE process for all algorithms, so only the first pays the import and later "
                "ones are understated"
                if cfg.cold_one_process
                else ""
            ),
        },
        "byte_model": {
            name: {
                "reads": list(t.reads),
                "writes": list(t.writes),
                "tensors_per_element": t.tensors_per_element,
                "bytes_per_element": t.bytes_per_element(element_size),
                "note": t.note,
            }
            for name, t in _byte_model_rows(cfg.algorithms).items()
        },
        "param_sets": set_info,
        "ceiling": ceiling_result,
        "own_memory": own_memory_log,
        "results": results,
        "variant_notes": notes,
        "cold": cold,
        "skipped": cfg.skipped,
    }
    for path in (cfg.json_path, cfg.markdown_path):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    gc.unfreeze()
    if cfg.json_path:
        with open(cfg.json_path, "w") as f:
            json.dump(data, f, indent=1)
    if cfg.markdown_path:
        with open(cfg.markdown_path, "w") as f:
            f.write(report.markdown(data))
    return data


def main(argv: list[str] | None = None) -> int:
    """Entry of the re-executed worker: ``python -m fastoptim.bench --config-json JSON``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fastoptim.bench")
    parser.add_argument("--config-json", required=True)
    args = parser.parse_args(argv)
    from . import report

    data = run(BenchConfig.from_json(args.config_json))
    print(report.summary(data))
    return 0
