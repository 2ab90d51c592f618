"""How the loop cost per request grows with prompt and output length (issue 18).

Runs the conversation benchmark scenario (benchmarks/scenarios/conv.yaml, round robin) with a
70B-class profile whose context holds the longest cells (H100 Llama-3.1-70B TP4) on a grid of
median prompt and output lengths, the arrival rate scaled so that the offered work per node
stays about that of the conv case, and prints per cell: microseconds of loop per request (two
runs), SimPy events per request, node iterations (rows of events that end an iteration or a
fast-forwarded decode run) and arrivals per request, and the mean batch occupancy.

    python benchmarks/bench_lengths.py                 # the default grid, 4 nodes, 6,000 requests
    python benchmarks/bench_lengths.py --requests 20000 --prompts 250 1000 4000 --outputs 250
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from bench_throughput import count_events  # type: ignore[import-not-found]

from sim import app
from sim.runner import simulate, workload_for

HERE = Path(__file__).resolve().parent


def cell(prompt: int, output: int, nodes: int, n_requests: int, profile: str) -> str:
    # token work per request relative to the conv case: decode dominates on this profile
    work = (prompt / 1200 + 4 * output / 260) / 5
    rate = 0.8 * nodes / work
    duration = n_requests / rate
    overrides = [
        f"cluster.node_groups.0.count={nodes}",
        f"cluster.node_groups.0.cost_model.params.profile={profile}",
        f"workload.arrivals.params.rate_rps={rate}",
        f"workload.prompt_tokens.params={{median_tokens: {prompt}, sigma: 0.6, "
        f"max_tokens: {3 * prompt}}}",
        f"workload.output_tokens.params={{median_tokens: {output}, sigma: 0.7, "
        f"max_tokens: {3 * output}}}",
        f"duration_s={duration}", f"warmup_s={duration / 10}",
    ]
    resolved = app.load(HERE / "scenarios" / "conv.yaml", overrides)
    workload = workload_for(resolved, 0)
    n = len(workload)
    times = []
    for _ in range(2):
        result = simulate(resolved, resolved.strategies[0], 0, workload)
        times.append(result.wall_s)
    counts: collections.Counter[str] = collections.Counter()
    with count_events(counts):
        simulate(resolved, resolved.strategies[0], 0, workload)
    iters = sum(v for k, v in counts.items() if "_end_iteration" in k)
    arrivals = sum(v for k, v in counts.items() if "_arrive" in k)
    occ = result.summary["utilization"]["batch_occupancy"]["mean"]  # type: ignore[index]
    return (f"{prompt:7d} {output:7d} {n:7,d} {1e6 * min(times) / n:8.1f}-"
            f"{1e6 * max(times) / n:<6.1f} {result.events / n:7.2f} {iters / n:8.2f} "
            f"{arrivals / n:6.2f} {occ:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--profile", default="h100/llama-3.1-70b-tp4-aic",
                        help="a 70B-class profile with a context beyond 4k tokens")
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--prompts", type=int, nargs="+", default=[250, 1000, 3000])
    parser.add_argument("--outputs", type=int, nargs="+", default=[60, 250, 1000])
    args = parser.parse_args()
    print("prompt  output  requests  us/request   events/req  iter/req  arr/req  batch_occ")
    for prompt in args.prompts:
        for output in args.outputs:
            print(cell(prompt, output, args.nodes, args.requests, args.profile), flush=True)


if __name__ == "__main__":
    main()
