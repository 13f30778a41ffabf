"""Markdown and terminal views of a bench result (the dict ``runner.run`` returns / the JSON)."""

from __future__ import annotations

from . import stats

__all__ = ["fmt_ms", "markdown", "summary"]

_VARIANT_ORDER = ["torch_forloop", "torch_foreach", "torch_fused", "reference_forloop", "reference", "fastoptim"]


def _sig(x: float, digits: int = 3) -> str:
    """``x`` with about ``digits`` significant digits, no exponent for everyday sizes."""
    if x == 0:
        return "0"
    magnitude = len(str(int(abs(x)))) if abs(x) >= 1 else 0
    decimals = max(0, digits - magnitude) if abs(x) >= 1 else digits
    if abs(x) < 1:
        # leading zeros after the point do not count as significant
        lead = 0
        y = abs(x)
        while y < 0.1 and lead < 6:
            y *= 10
            lead += 1
        decimals = digits + lead
    return f"{x:.{decimals}f}"


def fmt_ms(seconds: float | None) -> str:
    return "–" if seconds is None else _sig(seconds * 1e3)


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def _mib(nbytes: int | None) -> str:
    return "–" if nbytes is None else f"{nbytes / stats.MIB:.1f}"


def _short(label: str) -> str:
    """'torch fused' -> 'fused'."""
    return label.removeprefix("torch ")


def _variant_cell(row: dict | None) -> str:
    if row is None:
        return "n/a"
    if row.get("error"):
        return "error"
    t = row["time_s"]
    pct = row.get("pct_ceiling")
    text = f"{fmt_ms(t['median'])} ({fmt_ms(t['p25'])}–{fmt_ms(t['p75'])})"
    return text + (f" · {pct:.0f}%" if pct is not None else "")


def _cells(data: dict) -> dict[tuple[str, str], dict[str, dict]]:
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for row in data["results"]:
        out.setdefault((row["algorithm"], row["param_set"]), {})[row["variant"]] = row
    return out


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _set_table(data: dict, set_name: str) -> list[str]:
    cells = _cells(data)
    algorithms = [a for a in data["config"]["algorithms"] if (a, set_name) in cells]
    present = [v for v in _VARIANT_ORDER if any(v in cells[(a, set_name)] for a in algorithms)]
    labels = {r["variant"]: r["label"] for r in data["results"]}
    header = ["Algorithm", "B/elem"] + [labels[v] for v in present]
    header += [
        "fastoptim GB/s", "ceiling GB/s", "own-memory GB/s", "fastoptim % of own memory", "vs best torch",
        "peak extra MiB (fastoptim / best torch)",
    ]  # fmt: skip
    tiny = set_name == "tiny"
    if tiny:
        header.append("µs/tensor (fastoptim / best torch)")
    rows = []
    for a in algorithms:
        variants = cells[(a, set_name)]
        ours = variants.get("fastoptim", {})
        best = variants.get(ours.get("torch_best") or "", {})
        model, vector = data["byte_model"].get(a), data["byte_model"].get(f"{a} (<2-D)")
        row = [a, (str(model["bytes_per_element"]) if model else "–") + (
            f" ({vector['bytes_per_element']} <2-D)" if vector else "")]
        row += [_variant_cell(variants.get(v)) if v in variants else "n/a" for v in present]
        ok = not ours.get("error") and ours.get("time_s")
        speed = ours.get("speedup_vs_torch_best") if ok else None
        row += [
            _fmt(ours.get("gbps") if ok else None, "{:.1f}"),
            _fmt(ours.get("cell_ceiling_gbps"), "{:.1f}"),
            _fmt(ours.get("own_memory_gbps"), "{:.1f}"),
            _fmt(ours.get("pct_own_memory") if ok else None, "{:.0f}%"),
            "–" if speed is None else f"{speed:.2f}× ({_short(labels.get(ours['torch_best'], '?'))})",
            f"{_mib(ours.get('peak_extra_bytes'))} / {_mib(best.get('peak_extra_bytes'))}",
        ]
        if tiny:
            row.append(f"{_fmt(ours.get('per_tensor_us') if ok else None, '{:.2f}')} / "
                       f"{_fmt(best.get('per_tensor_us'), '{:.2f}')}")  # fmt: skip
        rows.append(row)
    return _table(header, rows)


def _cold_table(data: dict) -> list[str]:
    by_alg: dict[str, dict[str, dict]] = {}
    for row in data["cold"]:
        by_alg.setdefault(row["algorithm"], {})[row["library"]] = row
    with_torch = any("torch" in v for v in by_alg.values())
    header = ["Algorithm", "fastoptim: import + constructor + first step, s", "of which import, s", "first step, s"]
    if with_torch:
        header.append("torch default: constructor + first step, s")
    rows = []

    def spread(row: dict | None, key: str) -> str:
        if not row:
            return "–"
        if row.get("error"):
            return "error"
        s = row[key]
        mark = "" if row.get("fresh_process", True) else " †"
        return f"{s['median']:.3f}" + (f" ({s['min']:.3f}–{s['max']:.3f})" if s["n"] > 1 else "") + mark

    for a, libs in by_alg.items():
        ours = libs.get("fastoptim")
        row = [a, spread(ours, "total_s"), spread(ours, "import_s"), spread(ours, "first_step_s")]
        if with_torch:
            row.append(spread(libs.get("torch"), "total_s"))
        rows.append(row)
    return _table(header, rows)


def _reference_note(data: dict) -> list[str]:
    """Which reference package stands in for torch for the algorithms torch.optim lacks."""
    packages = [f"{a}: `{per['reference']}`" for a, per in data["variant_notes"].items() if "reference" in per]
    if not packages:
        return []
    return [
        "",
        "Algorithms torch.optim lacks are timed against the reference package their tests match, in its default "
        "configuration (\"reference default\") and its for-loop path where it has one; \"vs best torch\" is then "
        "vs the reference's best: " + "; ".join(packages) + ".",
    ]


def markdown(data: dict) -> str:
    env, cfg, ceiling = data["environment"], data["config"], data["ceiling"]
    out = ["# fastoptim bench", ""]
    out += [
        f"Command: `{data['command']}`  ",
        f"Started {data['started']}, took {data['duration_s']:.0f} s; fastoptim {env['fastoptim']} "
        f"(git {env['git_revision'] or 'unknown'}), torch {env['torch']}, numba {env['numba']}, "
        f"Python {env['python']}.  ",
        f"CPU: {env['cpu']}, {env['cpu_count']} logical CPUs, torch threads {env['torch_threads']}; "
        f"load average {env['loadavg_start'][0]:.2f} at start, {env['loadavg_end'][0]:.2f} at end.  ",
        "Measured processes (torch's and fastoptim's steps alike) ran with "
        + " ".join(f"`{k}={v}`" for k, v in env["malloc_env"].items())
        + ".  ",
        *[
            f"**Warning:** a {c['after_variant'] or 'setup'} step changed torch.get_num_threads() from "
            f"{c['from']} to {c['to']} ({c['times']}×); the bench set it back before the next step.  "
            for c in env.get("torch_threads_changed", [])
        ],
        *(
            [
                f"**Warning:** the machine was loaded (load average {env['loadavg_start'][0]:.1f} on "
                f"{env['cpu_count']} CPUs): times are inflated and noisy, multi-threaded steps most of all.  "
            ]
            if max(env["loadavg_start"][0], env["loadavg_end"][0]) > (env["cpu_count"] or 1)
            else []
        ),
        f"dtype {cfg['dtype']}; {'--quick sizes; ' if cfg['quick'] else ''}"
        f"{cfg['warmup']} warm-up steps, {cfg['rounds']} interleaved rounds, "
        f"~{cfg['budget_s']:g} s of timed steps per variant per cell.",
        "",
        "## Bandwidth ceiling",
        "",
        f"`a.add_(b, alpha=s)` over two tensors of {ceiling['numel']:,} elements "
        f"({ceiling['bytes'] / 3 / stats.MIB:.0f} MiB each, {ceiling['bytes'] / stats.GB:.2f} GB moved): "
        f"**{ceiling['gbps']:.1f} GB/s** median, IQR {ceiling['gbps_p25_p75'][0]:.1f}–"
        f"{ceiling['gbps_p25_p75'][1]:.1f} GB/s over the whole run ({ceiling['time_s']['n']} samples: at the start "
        f"and in every cell's rounds, interleaved with the optimizers).",
        "",
        "Step-time cells: median ms (p25–p75) · % of the ceiling (GB/s from the byte model below, over the "
        "ceiling measured in the same cell's rounds: the \"ceiling GB/s\" column). "
        "\"own-memory GB/s\": the ceiling's operation on the cell's own parameters and gradients "
        "(`p.add_(g, alpha=0)` for each, one `_foreach_add_`), in the same rounds; fastoptim's GB/s as a % of it "
        "is next to it (allocations can differ in speed on a VM). "
        "\"vs best torch\" = best torch variant's median / fastoptim's median (>1: fastoptim faster). "
        "n/a: torch has no such variant on CPU.",
        *_reference_note(data),
    ]
    for set_name, info in data["param_sets"].items():
        out += [
            "",
            f"## {set_name}: {info['description']}",
            "",
            f"{info['n_tensors']:,} tensors, {info['n_elements']:,} parameters "
            f"({info['param_bytes'] / stats.MIB:.1f} MiB {info['dtype']}), largest {tuple(info['largest_shape'])}.",
            "",
        ]
        out += _set_table(data, set_name)
    if data["cold"]:
        out += [
            "",
            "## Cold first step",
            "",
            data["method"]["cold"] + f"; parameter set `{cfg['cold_set']}`; fastoptim: median (min–max) of "
            f"{cfg['cold_repeats']} fresh process(es); torch: one.",
            "",
        ]
        out += _cold_table(data)
        if any(not r.get("fresh_process", True) for r in data["cold"]):
            out += ["", "† not the first algorithm in its process: fastoptim was already imported (understated)."]
    out += ["", "## Byte model (minimum traffic per element, default configuration)", ""]
    rows = [
        [name, ", ".join(m["reads"]), ", ".join(m["writes"]), str(m["tensors_per_element"]),
         str(m["bytes_per_element"]), m["note"]]
        for name, m in data["byte_model"].items()
    ]  # fmt: skip
    out += _table(
        ["Algorithm", "reads", "writes", "tensors", f"bytes ({cfg['dtype']})", "note"], rows, "lllrrl"
    )
    notes = [
        f"- {a}: {v.removeprefix('torch_')}: {why}"
        for a, per in data["variant_notes"].items()
        for v, why in per.items()
        if "fails" in why
    ]
    errors = [
        f"- {r['algorithm']} / {r['param_set']} / {r['label']}: {r['error']}" for r in data["results"] if r["error"]
    ]
    errors += [f"- cold start {r['algorithm']} ({r['library']}): {r['error']}" for r in data["cold"] if r.get("error")]
    if data["skipped"] or notes or errors:
        out += ["", "## Not measured", ""]
        out += [f"- {a}: skipped: {why}" for a, why in data["skipped"].items()] + notes + errors
    out += [
        "",
        "## Method",
        "",
        data["method"]["timing"],
        "",
        f"GB/s: {data['method']['gbps']}.  ",
        f"Peak extra memory: {data['method']['memory']}.",
        "",
    ]
    return "\n".join(out)


def summary(data: dict) -> str:
    """A few lines for the terminal: the ceiling and fastoptim's standing per cell."""
    ceiling = data["ceiling"]
    lines = [f"ceiling {ceiling['gbps']:.1f} GB/s ({ceiling['operation']})"]
    for row in data["results"]:
        if row["variant"] != "fastoptim":
            continue
        if row.get("error"):
            lines.append(f"{row['algorithm']:<10} {row['param_set']:<5} fastoptim error: {row['error']}")
            continue
        pct, speed = row.get("pct_ceiling"), row.get("speedup_vs_torch_best")
        lines.append(
            f"{row['algorithm']:<10} {row['param_set']:<5} {fmt_ms(row['time_s']['median']):>8} ms "
            f"{_fmt(row.get('gbps'), '{:6.1f}')} GB/s {_fmt(pct, '{:5.0f}')}% of ceiling "
            f"{_fmt(row.get('pct_own_memory'), '{:4.0f}')}% of own memory  "
            f"{_fmt(speed, '{:5.2f}')}x vs torch {row.get('torch_best') or '-'}"
        )
    for row in data["cold"]:
        if row["library"] == "fastoptim" and not row.get("error"):
            lines.append(f"cold first step {row['algorithm']:<10} {row['total_s']['median']:.3f} s")
    cfg = data["config"]
    lines += [f"wrote {p}" for p in (cfg["json_path"], cfg["markdown_path"]) if p]
    return "\n".join(lines)
