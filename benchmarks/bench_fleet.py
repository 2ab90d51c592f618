"""Fleet scale (issue 18): a diurnal day of conversation traffic on 512 nodes; wall time, loop
time and peak memory against the number of requests.

The day is benchmarks/scenarios/conv.yaml (A100 Llama-2-70B TP2, round robin) on ``--nodes``
nodes with piecewise-Poisson arrivals over 24 hourly pieces (night trough at 0.35 of the mean,
afternoon peak at 1.7). 10M requests make a real 86,400 s day at 116 req/s on average (0.23
req/s per node, 0.39 at the peak: the nodes run at about a quarter to a half of capacity);
fewer requests compress the same day (``period = 86,400 s x N / 10M``), so every run sees one
whole cycle at the same per-node load and the cost per request is comparable. The over-time
series use 60 s buckets (a 1 s timeline of 512 nodes over a day would be 44M rows).

    python benchmarks/bench_fleet.py --requests 1000000
    python benchmarks/bench_fleet.py --requests 3000000 --fold 1000000
    python benchmarks/bench_fleet.py --requests 10000000 --stream

``--stream`` draws the day an hour at a time and streams the requests through the run
(``sim.runner_stream``): bounded memory whatever the number of requests. It is another draw of
the same traffic than the whole-workload one (``sim.workload.stream``).

Run each size in its own process: peak memory is the process's high-water mark. With
``--out`` the result directory is written too (``requests.parquet`` in row groups).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: relative request rate of each hour of the day (mean 1.0)
DIURNAL = [0.45, 0.38, 0.35, 0.35, 0.38, 0.48, 0.68, 0.95, 1.22, 1.42, 1.55, 1.62,
           1.65, 1.68, 1.70, 1.66, 1.55, 1.40, 1.25, 1.10, 0.95, 0.80, 0.65, 0.53]
DAY_S = 86_400.0
FULL_DAY_REQUESTS = 10_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=512)
    parser.add_argument("--fold", type=int, default=None, metavar="ROWS",
                        help="fold the run log and node series every ROWS rows "
                             "(sim.runner.simulate's fold_rows) instead of keeping them")
    parser.add_argument("--strategy", default=None,
                        help="route with this strategy instead of the scenario's round robin")
    parser.add_argument("--autoscale", type=float, default=None, metavar="CONCURRENCY",
                        help="scale the fleet with an HPA-style autoscaler on requests in "
                             "flight per node (64 to --nodes nodes, 5 min cold start)")
    parser.add_argument("--stream", action="store_true",
                        help="stream the requests in by the hour of the day and the records "
                             "out by page (sim.runner_stream; folds every --fold rows, by "
                             "default sim.runner_stream.FOLD_ROWS)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the result directory under this folder")
    args = parser.parse_args()
    t0 = time.perf_counter()
    c0 = time.process_time()
    from sim import app
    from sim.runner import simulate, workload_for

    mean = sum(DIURNAL) / len(DIURNAL)
    shape = [r / mean for r in DIURNAL]
    period = DAY_S * args.requests / FULL_DAY_REQUESTS
    mean_rps = args.requests / period
    rates = ", ".join(f"{mean_rps * s:.6g}" for s in shape)
    overrides = [
        f"cluster.node_groups.0.count={args.nodes}",
        f"workload.arrivals={{name: piecewise, params: {{rates_rps: [{rates}], "
        f"period_s: {period}}}}}",
        f"duration_s={period}", f"warmup_s={period / 24}", "drain_timeout_s=600",
        "metrics.bucket_s=60", "metrics.monitor_interval_s=60",
    ]
    if args.autoscale is not None:
        overrides.append(
            f"autoscaling=[{{group: a100, metric: concurrency, target: {args.autoscale}, "
            f"min_nodes: 64, initial_nodes: {args.nodes // 2}, interval_s: 60, "
            f"scale_down_window_s: 600, cold_start_s: 300}}]")
    resolved = app.load(HERE / "scenarios" / "conv.yaml", overrides, limits=False,
                        strategies=(args.strategy,) if args.strategy else ())
    if args.stream:
        result, n, t1, rss_workload = _streamed(resolved, period, args)
    else:
        workload = workload_for(resolved, 0)
        n = len(workload)
        t1 = time.perf_counter()
        rss_workload = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = simulate(resolved, resolved.strategies[0], 0, workload, fold_rows=args.fold)
        del workload
    t2 = time.perf_counter()
    if args.out is not None and not args.stream:
        app._write(resolved, result, args.out, True)
    t3 = time.perf_counter()
    c3 = time.process_time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mode = ("streamed" if args.stream else "folding every " + format(args.fold, ",") + " rows"
            if args.fold else "whole log")
    print(f"fleet: {args.nodes} nodes, {n:,} requests over {period:,.0f} s, {mode} "
          f"(mean {mean_rps:.1f} req/s, {mean_rps / args.nodes:.3f} per node)")
    print(f"  imports, load, workload  {t1 - t0:8.1f} s   (max RSS then {rss_workload:,.0f} MB)")
    print(f"  simulation loop          {result.wall_s:8.1f} s  -> {n / result.wall_s:9,.0f} "
          f"requests/s, {result.events / n:.2f} events per request, "
          f"{result.cpu_s * 1e6 / n:.0f} us of CPU per request")
    print(f"  summary and timeline     {t2 - t1 - result.wall_s:8.1f} s")
    if args.out is not None and not args.stream:
        print(f"  writing results          {t3 - t2:8.1f} s")
    print(f"  whole run                {t3 - t0:8.1f} s wall, {c3 - c0:.1f} s CPU")
    print(f"  peak memory (max RSS)    {peak:8,.0f} MB ({peak * 1024 * 1024 / n:,.0f} bytes "
          f"per request)")
    s = result.summary
    elastic = s.get("elasticity")
    if elastic is not None:
        counts = elastic["node_count"]["provisioned"]  # type: ignore[index]
        print(f"  autoscaled: {min(counts)}-{max(counts)} nodes provisioned, "
              f"{elastic['gpu_hours']:,.0f} GPU-hours, "  # type: ignore[index]
              f"availability {elastic['availability']:.4f}")  # type: ignore[index]
    print(f"  sanity: completed {s['requests']['completed']:,}, "  # type: ignore[index]
          f"p99 TTFT {s['latency_s']['ttft']['p99']:.3f} s")  # type: ignore[index]


def _streamed(resolved: object, period: float,
              args: argparse.Namespace) -> tuple[object, int, float, float]:
    """The day drawn an hour at a time and streamed through the run."""
    from sim.runner_stream import simulate_streamed
    from sim.workload.replay import node_limits
    from sim.workload.stream import ChunkSource, iter_chunks

    sc = resolved.scenario  # type: ignore[attr-defined]
    chunks = iter_chunks(sc.workload, sc.duration_s, sc.seed, chunk_s=period / 24,
                         limits=node_limits(resolved.node_specs))  # type: ignore[attr-defined]
    source = ChunkSource(chunks)
    t1 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "requests.parquet"
    fold = {} if args.fold is None else {"fold_rows": args.fold}
    result = simulate_streamed(resolved, resolved.strategies[0], 0,  # type: ignore[attr-defined]
                               source, requests_path=path, **fold)
    return result, source.requests, t1, rss


if __name__ == "__main__":
    main()
