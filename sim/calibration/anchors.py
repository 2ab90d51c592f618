"""Published and analytic reference figures a cost profile is checked against.

From the profiling design study (analytic KV capacities by vLLM's rule, bf16 roofline
step times, published measurements: Vidur's per-op kernel times summed, gpt-fast,
Splitwise-sim), keyed by profile name ``<gpu>/<model>[-tp<N>]``. Used by
``sim.calibration.derive`` (the shipped, derived profiles) and ``simlb profile check`` (any
profile). Standard library only, so the
profiler can use it on a GPU machine without pydantic.
"""

from __future__ import annotations

from typing import Any

#: profile name -> [(quantity, expected value or [low, high], source)]
ANCHORS: dict[str, list[tuple[str, Any, str]]] = {
    "h100/llama-2-7b": [
        *((f"lin_ms@{n}", v, "Vidur H100 mlp.csv summed (profiling.md §4.3)") for n, v in (
            (1, 5.60), (64, 5.86), (128, 6.37), (256, 9.15), (512, 11.98), (1024, 21.0),
            (2048, 40.3), (4096, 83.5))),
        ("decode_ms@B1_ctx1024", 4.9, "roofline, profiling.md §4.2"),
        ("decode_ms@B64_ctx1024", 16.2, "roofline, profiling.md §4.2"),
        ("prefill_ms@2048", 44.0, "roofline, profiling.md §4.2"),
        ("kv_capacity_tokens", 117000, "analytic, profiling.md §3.2"),
    ],
    "h100/llama-3-8b": [
        ("lin_ms@1", [5.0, 6.5], "expected range, profiling.md §4.3 (weights / 70-85% of BW)"),
        ("lin_slope_us_per_token", [17.0, 23.0], "expected range, profiling.md §4.3"),
        ("decode_ctx_slope_ns_per_token", [44.0, 52.0], "expected range, profiling.md §4.3"),
        ("head_ms@1", 0.35, "1.05 GB / 3 TB/s, profiling.md §4.3"),
        ("decode_ms@B1_ctx1024", 5.4, "roofline, profiling.md §4.2"),
        ("decode_ms@B64_ctx1024", 8.2, "roofline, profiling.md §4.2"),
        ("prefill_ms@2048", 48.0, "roofline, profiling.md §4.2"),
        ("kv_capacity_tokens", 448000, "analytic, profiling.md §3.2"),
    ],
    "a100/llama-2-7b": [
        ("lin_ms@1", 9.28, "Vidur A100 mlp.csv summed (profiling.md §4.3)"),
        ("lin_ms@128", 12.24, "Vidur A100 mlp.csv summed (profiling.md §4.3)"),
        ("lin_ms@4096", 258.0, "Vidur A100 mlp.csv summed (profiling.md §4.3)"),
        ("decode_ms@B1_ctx1024", 9.5, "gpt-fast batch 1 at 330 W, profiling.md §4.3"),
        ("kv_capacity_tokens", 118000, "analytic, profiling.md §3.2"),
    ],
    "a100/llama-3-8b": [
        ("lin_ms@1", 9.70, "Vidur A100 mlp.csv summed (profiling.md §4.3)"),
        ("lin_ms@128", 13.18, "Vidur A100 mlp.csv summed (profiling.md §4.3)"),
        ("lin_ms@4096", 274.0, "Vidur A100 mlp.csv summed (profiling.md §4.3)"),
        ("kv_capacity_tokens", 451000, "analytic, profiling.md §3.2"),
    ],
    "a100/llama-2-70b-tp2": [
        ("prefill_ms@2048", [686.0, 689.0], "Splitwise-sim DGX-A100 perf_model.csv, §4.3"),
        ("decode_ms@B1_ctx1024", 54.0, "Splitwise-sim DGX-A100, batch 1 (context unstated)"),
    ],
    "h100/llama-2-70b-tp2": [
        ("prefill_ms@2048", [300.0, 312.0], "Splitwise-sim DGX-H100 perf_model.csv, §4.3"),
        ("decode_ms@B1_ctx1024", 37.0, "Splitwise-sim DGX-H100, batch 1 (context unstated)"),
    ],
    "h200/llama-3-8b": [
        ("kv_capacity_tokens", 896000, "analytic, profiling.md §3.2"),
        ("lin_slope_us_per_token", [17.0, 23.0],
         "the H100 range of profiling.md §4.3 (same GH100 compute; an assumption)"),
        ("decode_ctx_slope_ns_per_token", [30.5, 38.5],
         "128 KiB / 3.4-4.3 TB/s (the H200's measured copy rate, profiling.md §1)"),
    ],
    "h200/llama-2-7b": [("kv_capacity_tokens", 229000, "analytic, profiling.md §3.2")],
}


def anchor_key(gpu: str, model: str, tensor_parallel: int = 1) -> str:
    """The ``ANCHORS`` key of a GPU kind, model name and tensor-parallel degree."""
    return f"{gpu}/{model}" + (f"-tp{tensor_parallel}" if tensor_parallel > 1 else "")


def compare_with_anchors(key: str, figs: dict[str, float]) -> list[dict[str, Any]]:
    """One row per anchor of profile ``key`` that ``figs`` has: the relative error in % (3
    significant digits), or for a range whether the figure lies inside it."""
    out = []
    for quantity, expected, source in ANCHORS.get(key, []):
        got = figs.get(quantity)
        if got is None:
            continue
        row: dict[str, Any] = {"quantity": quantity, "expected": expected, "got": got,
                               "source": source}
        if isinstance(expected, list):
            row["in_range"] = bool(expected[0] <= got <= expected[1])
        else:
            row["rel_err_pct"] = float(f"{(got / expected - 1.0) * 100.0:.3g}")
        out.append(row)
    return out
