"""Wall time of a 100-point sweep of the smoke scenario, and how it scales with workers.

    python benchmarks/bench_sweep.py [--points-per-axis 10] [--jobs 1,2,4] [--ray]

The grid is 10 x 10 values of the smoke scenario's two MMPP rates (``low_rps`` x
``high_rps``), shortened to ``duration_s=20``, one replication, every strategy of the
scenario (3): 100 points, 300 simulations. Each measurement starts from an empty output
folder (nothing cached) and includes validating and resolving every point, starting the
workers and writing the table (not the report). ``parent CPU s`` is this process's CPU time
(planning, collecting, caching: with --jobs 1 it includes the simulations), ``sim CPU s``
the CPU time the simulations themselves took, summed over workers: on a machine shared with
other work, wall time alone misleads. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from sim.sweep.sweep import SweepSpec, plan, run_sweep

REPO = Path(__file__).resolve().parents[1]


def spec(n: int) -> SweepSpec:
    """The benchmark's sweep: ``n`` x ``n`` points."""
    low = ",".join(str(2 + 0.5 * i) for i in range(n))
    high = ",".join(str(8 + i) for i in range(n))
    return SweepSpec(REPO / "scenarios" / "smoke.yaml",
                     (f"workload.arrivals.params.low_rps={low}",
                      f"workload.arrivals.params.high_rps={high}"),
                     ("duration_s=20", "warmup_s=2"), replications=1)


def measure(s: SweepSpec, executor: str, jobs: int) -> tuple[float, float, float, int]:
    """(wall seconds, parent CPU seconds, workers' CPU seconds in simulations, simulations)
    of one uncached sweep."""
    with tempfile.TemporaryDirectory() as tmp:
        cpu, started = time.process_time(), time.perf_counter()
        result = run_sweep(s, Path(tmp), executor=executor, jobs=jobs)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        tasks = sum(json.loads(p.read_text())["cpu_s"] for p in Path(tmp).glob("cache/*.json"))
    assert not result.failures and result.cached == 0
    return wall, cpu, tasks, result.simulated


def main() -> None:
    """Run the measurements and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points-per-axis", type=int, default=10)
    parser.add_argument("--jobs", default="1,2,4")
    parser.add_argument("--ray", action="store_true", help="also measure --executor ray")
    args = parser.parse_args()
    s = spec(args.points_per_axis)
    started = time.perf_counter()
    points, tasks, _ = plan(s)
    print(f"{len(points)} points, {len(tasks)} simulations; validating and resolving the "
          f"points: {time.perf_counter() - started:.2f} s; cores usable: "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}")
    runs = [("local", int(j)) for j in args.jobs.split(",")]
    runs += [("ray", int(j)) for j in args.jobs.split(",") if args.ray and int(j) > 1]
    base = None
    print(f"{'executor':>8} {'jobs':>4} {'wall s':>8} {'sims/s':>8} {'speed-up':>8} "
          f"{'parent CPU s':>12} {'sim CPU s':>9}")
    for executor, jobs in runs:
        wall, cpu, sims, n = measure(s, executor, jobs)
        base = base or wall
        print(f"{executor:>8} {jobs:>4} {wall:8.2f} {n / wall:8.1f} {base / wall:8.2f} "
              f"{cpu:12.2f} {sims:9.2f}")
    print(f"load average now: {os.getloadavg()[0]:.1f} (other work shares these cores)")


if __name__ == "__main__":
    main()
