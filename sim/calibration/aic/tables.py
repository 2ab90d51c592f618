"""Read aiconfigurator-core's measured op tables and look shapes up in them.

The PyPI package ``aiconfigurator-core`` (NVIDIA, Apache-2.0) ships per-GPU kernel latencies
measured inside the serving engines: ``systems/data/<system>/<op>/<engine>/<version>/*.parquet``
(every ``latency`` is milliseconds per kernel call) and one ``systems/<system>.yaml`` per GPU
(datasheet memory, bandwidth, FLOP/s). Only the data files are read, with pandas/pyarrow; the
package's compiled module is never imported.

Lookup assumptions (all stated again in each derived profile's ``source.method``):

* GEMMs: bf16 ``torch.nn.functional.linear`` rows (``vllm_default`` in older tables).
* GEMM latency in the token count ``m`` is interpolated linearly in (log m, log latency)
  between measured ``m``; each (n, k) curve is first made non-decreasing in ``m`` by isotonic
  regression (the table holds ``m`` and ``m + 1`` pairs whose noise is up to ±30%).
* Shapes between measured ``n`` or ``k`` are interpolated bilinearly in (log n, log k, log
  latency). Beyond the measured range a dimension is scaled proportionally (a GEMM with twice the
  columns does twice the FLOPs and reads twice the weights), counted in ``Tables.scaled``.
* Beyond the largest measured ``m`` the latency grows proportionally to ``m`` (compute-bound).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import isotonic_regression

from sim.errors import InputError

ENGINE = "vllm"
#: vLLM's custom all-reduce handles tensors up to 8 MiB (CustomAllreduce max_size); NCCL above
CUSTOM_ALLREDUCE_MAX_BYTES = 8 * 1024 * 1024
LICENCE = "Apache-2.0 (NVIDIA aiconfigurator-core, PyPI)"


def package_root() -> Path:
    """The installed ``aiconfigurator_core`` folder.

    Raises:
        InputError: the package is not installed (``pip install -e '.[calibrate]'``).
    """
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("needs the aiconfigurator-core package: pip install -e '.[calibrate]'")
    return Path(next(iter(spec.submodule_search_locations)))


def package_version() -> str:
    """The installed aiconfigurator-core version (from its distribution metadata)."""
    from importlib import metadata

    try:
        return metadata.version("aiconfigurator-core")
    except metadata.PackageNotFoundError:
        return "unknown"


def systems() -> list[str]:
    """Systems (GPU kinds) that have vLLM GEMM data."""
    data = package_root() / "systems" / "data"
    return sorted(p.name for p in data.iterdir() if (p / "gemm" / ENGINE).is_dir())


def engine_versions(system: str) -> list[str]:
    """vLLM versions with both GEMM and attention tables for ``system``, oldest first."""
    base = package_root() / "systems" / "data" / system
    have = [set(_versions(base / op / ENGINE)) for op in ("gemm", "attention")]
    return sorted(have[0] & have[1], key=_vkey)


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in v.replace("rc", ".").split("."))


def _versions(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if any(p.glob("*.parquet"))), key=_vkey)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@cache
def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def _monotone_curve(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median per x, then least-squares non-decreasing in x (scipy isotonic regression)."""
    s = pd.Series(y).groupby(x).median().sort_index()
    return s.index.to_numpy(float), isotonic_regression(s.to_numpy(float)).x


def _loglog(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Interpolate in (log x, log y); below x[0] flat, above x[-1] proportional to x."""
    at = np.asarray(at, float)
    inside = np.exp(np.interp(np.log(np.clip(at, x[0], x[-1])), np.log(x), np.log(y)))
    return np.where(at > x[-1], y[-1] * at / x[-1], inside)


def _bracket(grid: np.ndarray, v: float) -> tuple[float, float, float]:
    """(lo, hi, weight of hi in log space) for ``v`` inside ``grid``; a grid edge if outside."""
    if v <= grid[0]:
        return grid[0], grid[0], 0.0
    if v >= grid[-1]:
        return grid[-1], grid[-1], 0.0
    i = int(np.searchsorted(grid, v))
    lo, hi = grid[i - 1], grid[i]
    return lo, hi, float(np.log(v / lo) / np.log(hi / lo))


@dataclass
class Tables:
    """The measured tables of one system and vLLM version, with lookup helpers.

    ``used`` collects the files read (for ``source.data``); ``scaled`` and ``extrapolated``
    record lookups outside the measured shapes (``fit_quality.lookups``).
    """

    system: str
    version: str
    used: set[Path] = field(default_factory=set)
    scaled: dict[str, str] = field(default_factory=dict)
    extrapolated: dict[str, str] = field(default_factory=dict)
    gemm_noise: dict[str, float] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return package_root() / "systems" / "data" / self.system

    def file(self, op: str, name: str, version: str | None = None) -> Path:
        path = self.base / op / ENGINE / (version or self.version) / name
        if not path.is_file():
            raise InputError(f"aiconfigurator-core has no {op}/{ENGINE}/{version or self.version}"
                             f"/{name} for {self.system}")
        self.used.add(path)
        return path

    def system_yaml(self) -> dict[str, Any]:
        path = package_root() / "systems" / f"{self.system}.yaml"
        self.used.add(path)
        return yaml.safe_load(path.read_text())

    # --- GEMM -------------------------------------------------------------------------------
    def gemm_frame(self) -> pd.DataFrame:
        return _bf16_gemm(self.file("gemm", "gemm_perf.parquet"))

    def device(self) -> str:
        """The GPU's name as the tables record it (``torch.cuda.get_device_name``)."""
        return str(self.gemm_frame().device.iloc[0])

    def _gemm_curve(self, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _gemm_curve(self.file("gemm", "gemm_perf.parquet"), int(n), int(k))

    def gemm_ms(self, m: np.ndarray, n: int, k: int, label: str) -> np.ndarray:
        """bf16 GEMM latency (ms) of [m, k] x [k, n] at each m (``GEMM_KERNELS``)."""
        df = self.gemm_frame()
        ns, ks = np.sort(df.n.unique()).astype(float), np.sort(df.k.unique()).astype(float)
        factor = 1.0
        for dim, v, grid in (("n", n, ns), ("k", k, ks)):
            if v > grid[-1]:
                factor *= v / grid[-1]
                self.scaled[f"{label}.{dim}"] = (f"{v} > measured {int(grid[-1])}: "
                                                 f"x{v / grid[-1]:.3g}")
            elif v < grid[0]:
                self.scaled[f"{label}.{dim}"] = f"{v} < measured {int(grid[0])}: clamped up"
        n0, n1, wn = _bracket(ns, n)
        k0, k1, wk = _bracket(ks, k)
        logs = 0.0
        for nn, ww_n in ((n0, 1 - wn), (n1, wn)):
            for kk, ww_k in ((k0, 1 - wk), (k1, wk)):
                if ww_n * ww_k == 0.0:
                    continue
                x, y = self._gemm_curve(int(nn), int(kk))
                logs = logs + ww_n * ww_k * np.log(_loglog(x, y, m))
                noise = _gemm_noise(self.file("gemm", "gemm_perf.parquet"), int(nn), int(kk))
                self.gemm_noise[label] = max(self.gemm_noise.get(label, 0.0), noise)
        m_max = int(df.m.max())
        if np.max(m) > m_max:
            self.extrapolated["gemm.m"] = f"m up to {int(np.max(m))} > measured {m_max}"
        return factor * np.exp(logs)

    # --- MoE --------------------------------------------------------------------------------
    def moe_ms(self, m: np.ndarray, hidden: int, inter: int, topk: int, experts: int,
               tp: int) -> tuple[np.ndarray, str]:
        """Fused-MoE block latency (ms) at m tokens, bf16 unquantized Triton kernel (A100 0.14:
        ``vllm_fused_moe``), balanced routing (where not measured: the mildest power law,
        recorded in ``scaled``), experts split by tensor parallelism (moe_tp = tp, ep = 1,
        vLLM's default).

        An unmeasured shape is scaled from the nearest measured one (same topk if possible) by
        the ratio of roofline times max(weight bytes of the distinct experts N tokens activate
        under uniform routing / bw, FLOPs / F), and recorded in ``extrapolated``.
        """
        df = _read(self.file("moe", "moe_perf.parquet"))
        df = df[(df.moe_dtype == "bfloat16") & (df.moe_ep_size == 1) & (df.moe_tp_size == tp)]
        kernels = set(df.kernel_source.unique())
        kernel = next((k for k in MOE_KERNELS if k in kernels), min(kernels, default=""))
        dists = sorted(df.distribution.unique())
        dist_ = "balanced" if "balanced" in dists else (dists[0] if dists else "")
        if dist_ and dist_ != "balanced":
            self.scaled["moe.distribution"] = f"no balanced rows; {dist_} (the mildest skew)"
        df = df[(df.kernel_source == kernel) & (df.distribution == dist_)]
        keys = ["hidden_size", "inter_size", "topk", "num_experts"]
        exact = df[(df.hidden_size == hidden) & (df.inter_size == inter) & (df.topk == topk)
                   & (df.num_experts == experts)]
        if len(exact):
            x, y = _monotone_curve(exact.num_tokens.to_numpy(), exact.latency.to_numpy())
            return _loglog(x, y, m), f"measured {hidden}/{inter}/top{topk}/{experts}e/tp{tp}"
        shapes = df[keys].drop_duplicates().to_numpy()
        if not len(shapes):
            raise InputError(f"aiconfigurator-core has no bf16 MoE data at moe_tp={tp} for "
                             f"{self.system} vllm {self.version}")

        def dist(s: np.ndarray) -> float:
            return float(abs(np.log(s[0] * s[1] * s[3] / (hidden * inter * experts)))
                         + abs(np.log(s[2] / topk)) + abs(np.log(s[0] / hidden)))

        ref = min(shapes, key=lambda s: (dist(s), tuple(s)))
        rows = df[(df[keys] == ref).all(axis=1)]
        x, y = _monotone_curve(rows.num_tokens.to_numpy(), rows.latency.to_numpy())

        def roof(h: int, i: int, k: int, e: int) -> np.ndarray:
            # bytes / FLOPs of gate+up and down of the active experts; the crossover at
            # FLOP/byte = 300 is an H100-like ratio (only the ratio of two roofs is used)
            mm = np.asarray(m, float)
            active = e * (1.0 - (1.0 - k / e) ** mm)
            return np.maximum(active * 3 * h * i / tp * 2, 2 * 3 * h * i / tp * k * mm / 300)

        scale = roof(hidden, inter, topk, experts) / roof(*(int(v) for v in ref))
        note = (f"scaled from measured {ref[0]}/{ref[1]}/top{ref[2]}/{ref[3]}e by roofline "
                f"ratio {float(scale.min()):.3g}..{float(scale.max()):.3g}")
        self.extrapolated["moe"] = note
        return _loglog(x, y, m) * scale, note

    # --- communication ----------------------------------------------------------------------
    def allreduce_ms(self, elements: np.ndarray, gpus: int, graph: np.ndarray) -> np.ndarray:
        """All-reduce latency (ms) of bf16 tensors of ``elements`` values, as vLLM picks it: its
        custom all-reduce up to 8 MiB (backend ``vllm_graph`` where ``graph``, i.e. CUDA-graph
        steps, else ``vllm_eager``), NCCL above; log-log in size. The tables' ``message_size``
        is an element count (aiconfigurator-core's communication shim factors it into tokens x
        per-token elements), not bytes."""
        versions = _versions(self.base / "comm" / ENGINE)
        version = self.version if self.version in versions else None
        if version is None:
            older = [v for v in versions if _vkey(v) <= _vkey(self.version)]
            if not older:
                raise InputError(f"no vllm all-reduce data for {self.system}; comm versions: "
                                 f"{', '.join(versions) or 'none'}")
            version = older[-1]
            self.scaled["comm.version"] = f"all-reduce from vllm {version} (no {self.version})"
        df = _read(self.file("comm", "custom_allreduce_perf.parquet", version))
        size = np.asarray(elements, float)
        big = size * 2 > CUSTOM_ALLREDUCE_MAX_BYTES
        out = np.empty(len(size))
        for backend, mask in (("vllm_graph", graph & ~big), ("vllm_eager", ~graph & ~big)):
            rows = df[(df.num_gpus == gpus) & (df.backend == backend)]
            if not len(rows):
                raise InputError(f"no {gpus}-GPU all-reduce data for {self.system} vllm "
                                 f"{version}; measured GPU counts: "
                                 f"{sorted(df.num_gpus.unique().tolist())}")
            x, y = _monotone_curve(rows.message_size.to_numpy(), rows.latency.to_numpy())
            out[mask] = _loglog(x, y, size[mask])
        if big.any():
            x, y = self._nccl_allreduce(gpus)
            out[big] = _loglog(x, y, size[big])
        return out

    def _nccl_allreduce(self, gpus: int) -> tuple[np.ndarray, np.ndarray]:
        """NCCL all-reduce curve (fp16 rows, element counts) of the system's NCCL version
        (``misc.nccl_version`` of the YAML; else the newest measured)."""
        folder = self.base / "comm" / "nccl"
        have = _versions(folder)
        want = str(self.system_yaml().get("misc", {}).get("nccl_version", ""))
        version = want if want in have else (have[-1] if have else None)
        if version is None:
            raise InputError(f"no NCCL data for {self.system}")
        path = folder / version / "nccl_perf.parquet"
        self.used.add(path)
        df = _read(path)
        rows = df[(df.op_name == "all_reduce") & (df.nccl_dtype == "half")
                  & (df.num_gpus == gpus)]
        if not len(rows):
            raise InputError(f"no {gpus}-GPU NCCL all-reduce data for {self.system}")
        return _monotone_curve(rows.message_size.to_numpy(), rows.latency.to_numpy())

    # --- attention --------------------------------------------------------------------------
    def attention_rows(self, phase: str, q_heads: int, kv_heads: int,
                       head_dim: int) -> tuple[pd.DataFrame, tuple[int, int, int]]:
        """Rows of ``context`` or ``generation`` attention for the nearest measured layout
        (bf16 KV cache, no sliding window, FlashAttention-3 where measured; the kernel is
        recorded in ``kernels``), and that layout."""
        df = _read(self.file("attention", f"{phase}_attention_perf.parquet"))
        df = df[(df.kv_cache_dtype == "bfloat16") & (df.attn_dtype == "bfloat16")]
        if "window_size" in df.columns:
            df = df[df.window_size == 0]
        counts = df.kernel_source.value_counts()
        if counts.empty:
            raise InputError(f"no bf16 {phase} attention rows for {self.system} vllm "
                             f"{self.version}")
        # FlashAttention-3 where measured, else the kernel with the most rows (e.g. Blackwell's
        # FlashInfer prefill kernel for context attention)
        kernel = ("vllm_flash_attn_fa3" if "vllm_flash_attn_fa3" in counts.index
                  else str(max(counts.index, key=lambda k: (counts[k], k))))
        self.kernels[phase] = kernel
        df = df[df.kernel_source == kernel]
        layouts = df[["num_heads", "num_key_value_heads", "head_dim"]].drop_duplicates()

        def dist(r: tuple[int, int, int]) -> tuple[float, tuple[int, int, int]]:
            return (abs(np.log(r[0] / q_heads)) + abs(np.log(r[1] / kv_heads))
                    + 4 * abs(np.log(r[2] / head_dim)), r)

        best = min((tuple(int(v) for v in r) for r in layouts.to_numpy()), key=dist)
        rows = df[(df.num_heads == best[0]) & (df.num_key_value_heads == best[1])
                  & (df.head_dim == best[2])]
        return rows, best  # type: ignore[return-value]


#: bf16 fused-MoE kernel names, preferred first (vLLM 0.24 tables; the A100's 0.14 tables)
MOE_KERNELS = ("vllm_unquantizedfusedmoe_triton_tritonexperts", "vllm_fused_moe")
#: bf16 GEMM kernel names, preferred first (vLLM 0.24 tables; the A100's 0.14 tables)
GEMM_KERNELS = ("torch.nn.functional.linear", "vllm_default")


@cache
def _bf16_gemm(path: Path) -> pd.DataFrame:
    df = _read(path)
    df = df[df.gemm_dtype == "bfloat16"]
    have = set(df.kernel_source.unique())
    kernel = next((k for k in GEMM_KERNELS if k in have), None)
    if kernel is None:
        raise InputError(f"{path.name}: no bf16 GEMM kernel among {sorted(have)}")
    return df[df.kernel_source == kernel]


@cache
def _gemm_curve(path: Path, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    df = _bf16_gemm(path)
    rows = df[(df.n == n) & (df.k == k)]
    return _monotone_curve(rows.m.to_numpy(), rows.latency.to_numpy())


@cache
def _gemm_noise(path: Path, n: int, k: int) -> float:
    """Mean absolute % deviation of the measured rows from the monotone curve through them."""
    rows = _bf16_gemm(path)
    rows = rows[(rows.n == n) & (rows.k == k)]
    x, y = _gemm_curve(path, n, k)
    fit = np.interp(rows.m.to_numpy(float), x, y)
    return float(np.mean(np.abs(rows.latency.to_numpy() / fit - 1.0)) * 100.0)
