"""Benchmark session helpers: each step benchmark's result is recorded, and at the end of the session a table sets
every joint step against the equal-FLOP limit (``equal_flop_passes`` FP32 single-width steps of the same network),
with the FP32 step timed alongside that joint step (``unit_seconds``) or else the FP32 benchmark's median.
The same table goes into the saved JSON (``equal_flop`` key, and ``equal_flop_ratio`` in each benchmark's
``extra_info``), so the records that ``--benchmark-compare`` reads keep it."""
from __future__ import annotations

import pytest

RESULTS: list[dict] = []  # {"extra_info": ..., "stats": {"median": ...}}, as in pytest-benchmark's JSON


@pytest.fixture
def step_benchmark(benchmark):
    """pytest-benchmark's ``benchmark``, whose result joins the session's table once the test has run."""
    yield benchmark
    if benchmark.stats is not None:
        RESULTS.append({"extra_info": dict(benchmark.extra_info), "stats": {"median": benchmark.stats.stats.median}})


def ratio_rows(benchmarks: list[dict]) -> list[dict]:
    """One row per joint step whose architecture also has its FP32 unit step measured."""
    units = {b["extra_info"]["arch"]: b["stats"]["median"] for b in benchmarks if b["extra_info"].get("role") == "unit"}
    rows = []
    for b in benchmarks:
        info, median = b["extra_info"], b["stats"]["median"]
        if info.get("role") != "joint" or ("unit_seconds" not in info and info["arch"] not in units):
            continue
        unit = info.get("unit_seconds", units[info["arch"]])
        limit = info["equal_flop_passes"] * unit
        rows.append({"arch": info["arch"], "step": info["step"], "seconds": median, "unit_seconds": unit,
                     "limit_seconds": limit,
                     "ratio": median / limit, "images_per_s": info["batch"] / median,
                     "peak_memory_gib": info.get("peak_memory_gib")})
    return sorted(rows, key=lambda r: (r["arch"], r["ratio"]))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    rows = ratio_rows(output_json["benchmarks"])
    output_json["equal_flop"] = rows
    by_step = {(r["arch"], r["step"]): r["ratio"] for r in rows}
    for b in output_json["benchmarks"]:
        ratio = by_step.get((b["extra_info"].get("arch"), b["extra_info"].get("step")))
        if ratio is not None:
            b["extra_info"]["equal_flop_ratio"] = round(ratio, 3)


def pytest_terminal_summary(terminalreporter):
    rows = ratio_rows(RESULTS)
    if not rows:
        return
    tr = terminalreporter
    tr.section("joint step vs equal-FLOP limit (median seconds)")
    unit = {b["extra_info"]["arch"]: b for b in RESULTS if b["extra_info"].get("role") == "unit"}
    for arch, b in unit.items():
        info = b["extra_info"]
        tr.write_line(f"{arch}: batch {info['batch']} at {info['size']}x{info['size']}, {info['device']}, "
                      f"torch {info['torch']}, OMP_WAIT_POLICY={info['omp_wait_policy']}, load average "
                      f"{info['loadavg']}; FP32 single-width step {b['stats']['median']:.3f} s "
                      f"({info['batch'] / b['stats']['median']:.0f} img/s)")
    memory = any(r["peak_memory_gib"] is not None for r in rows)
    tr.write_line(f"{'arch':10} {'joint step':26} {'seconds':>8} {'FP32 step':>9} {'limit':>7} {'ratio':>6} {'img/s':>7}"
                  + (f" {'peak GiB':>8}" if memory else ""))
    for r in rows:
        tr.write_line(f"{r['arch']:10} {r['step']:26} {r['seconds']:8.3f} {r['unit_seconds']:9.3f} {r['limit_seconds']:7.3f} "
                      f"{r['ratio']:6.2f} {r['images_per_s']:7.1f}"
                      + (f" {r['peak_memory_gib'] or float('nan'):8.2f}" if memory else ""))
