"""Timing of shapes, device facts and ceilings (``docs/profiling.md``).

GPU (``CudaTimer``): warm up 3 times on a side stream, capture one CUDA graph, then replay it
between two CUDA events; before each replay zero a 256 MiB buffer outside the events to evict
the L2 (as ``triton.testing.do_bench`` does); repeat until at least 5 replays and 150 ms were
timed, at most 30; record the median (and min, p10, p90, n). A shape whose capture fails is
timed eagerly and marked so. CPU (``CpuTimer``): ``time.perf_counter`` around each call, the
minimum as the statistic (more robust than the median under co-tenant load, §6.1), with the
thread count set by the caller (one by default: OpenMP barriers stall on shared cores, §6.2).
All shapes run in one shuffled order (``grid.plan``).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sim.profile.grid import Shape

MIB = 1 << 20

#: Dense bf16 peak FLOP/s and nominal memory bandwidth (B/s) from NVIDIA's datasheets, matched
#: by substring of the device name in this order (first match wins).
DATASHEET: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.4e12, 4.8e12), ("H100 NVL", 835e12, 3.9e12), ("H100 PCIe", 756e12, 2.0e12),
    ("H100", 989.4e12, 3.35e12), ("A100 80GB PCIe", 312e12, 1.935e12),
    ("A100-SXM4-80GB", 312e12, 2.039e12), ("A100", 312e12, 1.555e12),
    ("L40S", 362e12, 0.864e12), ("L4", 121e12, 0.3e12))


@dataclass(frozen=True)
class TimerConfig:
    """How one shape is timed (counts; milliseconds; bytes)."""

    method: str
    warmup: int
    min_iters: int
    max_iters: int
    target_ms: float
    statistic: str
    l2_flush_bytes: int
    cuda_graph: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the order rule."""
        return {**asdict(self), "order": "shuffled"}


CUDA_TIMER = TimerConfig("cuda_events+cuda_graph_replay", 3, 5, 30, 150.0, "median",
                         256 * MIB, True)
CPU_TIMER = TimerConfig("perf_counter", 1, 5, 20, 60.0, "min", 0, False)


@dataclass(frozen=True)
class Timing:
    """Statistics of one shape's repeated timings (ms) and how it ran."""

    median_ms: float
    min_ms: float
    p10_ms: float
    p90_ms: float
    n: int
    mode: str


def summarize(times_ms: Sequence[float], mode: str) -> Timing:
    """Median, min, 10th and 90th percentiles of the repeats."""
    t = np.asarray(times_ms, dtype=float)
    return Timing(float(np.median(t)), float(t.min()), float(np.percentile(t, 10)),
                  float(np.percentile(t, 90)), len(t), mode)


def _enough(times: list[float], cfg: TimerConfig) -> bool:
    return len(times) >= cfg.max_iters or (len(times) >= cfg.min_iters
                                           and sum(times) >= cfg.target_ms)


class CpuTimer:
    """Wall-clock timing with ``perf_counter`` (the CPU fallback)."""

    def __init__(self, cfg: TimerConfig = CPU_TIMER) -> None:
        self.cfg = cfg

    def time(self, fn: Callable[[], Any]) -> Timing:
        """Warm up, then time ``fn`` until ``min_iters`` and ``target_ms`` (or ``max_iters``)."""
        for _ in range(self.cfg.warmup):
            fn()
        times: list[float] = []
        while not _enough(times, self.cfg):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return summarize(times, "eager")


class CudaTimer:
    """CUDA-graph replays between CUDA events, with an L2 flush before each (see module doc)."""

    def __init__(self, device: str, cfg: TimerConfig = CUDA_TIMER) -> None:
        import torch

        self.torch, self.cfg = torch, cfg
        self.flush = (torch.empty(cfg.l2_flush_bytes // 4, dtype=torch.int32, device=device)
                      if cfg.l2_flush_bytes else None)
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def _capture(self, fn: Callable[[], Any]) -> Any:
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                fn()
        except RuntimeError:
            torch.cuda.synchronize()
            return None
        return graph

    def time(self, fn: Callable[[], Any]) -> Timing:
        """Warm up on a side stream, capture (if enabled), then time replays."""
        torch, cfg = self.torch, self.cfg
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(cfg.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = self._capture(fn) if cfg.cuda_graph else None
        run, mode = (graph.replay, "graph") if graph is not None else (fn, "eager")
        times: list[float] = []
        while not _enough(times, cfg):
            if self.flush is not None:
                self.flush.zero_()
            self.start.record()
            run()
            self.end.record()
            self.end.synchronize()
            times.append(self.start.elapsed_time(self.end))
        del graph, run
        return summarize(times, mode)


Progress = Callable[[int, int, Shape, Timing], None]


def measure(shapes: Sequence[Shape], make: Callable[[Shape], Callable[[], Any]],
            timer: CpuTimer | CudaTimer, progress: Progress | None = None
            ) -> list[tuple[Shape, Timing]]:
    """Time every shape in the given (already shuffled) order.

    Args:
        shapes: the plan.
        make: builds a shape's closure (inputs prepared outside the timed region).
        timer: ``CpuTimer`` or ``CudaTimer``.
        progress: called after each shape with (index, count, shape, timing).
    """
    out = []
    for i, shape in enumerate(shapes):
        fn = make(shape)
        timing = timer.time(fn)
        del fn
        out.append((shape, timing))
        if progress is not None:
            progress(i, len(shapes), shape, timing)
    return out


# -- device facts ---------------------------------------------------------------------------------


def nvidia_smi(fields: str) -> list[str] | None:
    """Read-only ``nvidia-smi --query-gpu`` of the first GPU (None when unavailable)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.strip().splitlines()
    return [v.strip() for v in lines[0].split(",")] if lines else None


def clocks_mhz() -> dict[str, Any] | None:
    """Current SM and memory clocks (MHz), temperature (C) and power (W), read-only."""
    vals = nvidia_smi("clocks.sm,clocks.mem,temperature.gpu,power.draw")
    return None if vals is None else dict(zip(("sm", "mem", "temp_c", "power_w"), vals,
                                              strict=False))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_memory_bytes() -> int:
    """Physical memory of the host (bytes)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_info(device: str) -> dict[str, Any]:
    """Name, memory, SMs, L2, driver of the GPU; or model, cores, memory of the CPU."""
    import torch

    if device == "cpu":
        return {"kind": "cpu", "name": cpu_model(), "count": 1, "logical_cores": os.cpu_count(),
                "total_memory_bytes": host_memory_bytes(), "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    drv = nvidia_smi("driver_version")
    return {"kind": "cuda", "name": props.name, "count": torch.cuda.device_count(),
            "sm_count": props.multi_processor_count,
            "l2_bytes": getattr(props, "L2_cache_size", None),
            "total_memory_bytes": int(torch.cuda.mem_get_info(device)[1]),
            "capability": f"{props.major}.{props.minor}", "driver": drv[0] if drv else None}


def software_info() -> dict[str, Any]:
    """Python, torch, CUDA, cuDNN, numpy and scipy versions."""
    import scipy
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "numpy": np.__version__,
            "scipy": scipy.__version__, "platform": platform.platform()}


def _median_ms(fn: Callable[[], Any], device: str, reps: int = 5) -> float:
    import torch

    fn()
    times = []
    for _ in range(reps):
        if device == "cpu":
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        else:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    return float(np.median(times))


def ceilings(device: str, dtype: Any) -> dict[str, float]:
    """Measured copy bandwidth (read + write bytes / s) and GEMM FLOP/s (§8 step 2).

    GPU: a 1 GiB device-to-device copy and an 8192^3 GEMM in ``dtype``; CPU: 64 MiB and 512^3.
    """
    import torch

    n_bytes, n = (1 << 30, 8192) if device != "cpu" else (64 * MIB, 512)
    src = torch.empty(n_bytes // 4, dtype=torch.int32, device=device).random_()
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src), device)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    gemm_ms = _median_ms(lambda: a @ b, device)
    return {"copy_bytes_per_s": 2 * n_bytes / (copy_ms * 1e-3),
            "gemm_flops_per_s": 2 * n**3 / (gemm_ms * 1e-3), "gemm_n": n,
            "copy_bytes": n_bytes}


def datasheet(name: str) -> tuple[float, float] | None:
    """(dense bf16 FLOP/s, HBM B/s) of a GPU by name, None when unknown."""
    for key, flops, bw in DATASHEET:
        if key.lower() in name.lower():
            return flops, bw
    return None
