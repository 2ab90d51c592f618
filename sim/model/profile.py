"""Read, validate and write cost profiles (``simlb.profile/v1`` JSON files).

A profile describes one (GPU, model, tensor-parallel degree) setup: the hardware, the model
shape, the KV-cache memory terms and the per-step cost model (``docs/profile-format.md``).
This module needs only the standard library, so the GPU profiler that writes these files runs
where pydantic and SimPy are absent. Full field reference: ``docs/profile-format.md``.

Schema (times in ms, sizes in bytes, rates per second; every number finite and >= 0)::

    schema      "simlb.profile/v1"
    name        "h100/llama-3-8b" (shipped profiles: their path under profiles/)
    source      kind "derived"|"measured"; method (prose); data [{path, sha256, licence}];
                created "YYYY-MM-DD"; tool (program that wrote the file)
    hardware    gpu; tensor_parallel (GPUs of the node); memory_bytes_per_gpu;
                peak_bf16_flops_per_gpu; hbm_bandwidth_bytes_per_s (nominal);
                effective_bandwidth_bytes_per_s; optional effective_gemm_flops_per_gpu,
                effective_attention_flops_per_gpu (roofline inputs, or null); notes
    model       name, num_layers, hidden_size, num_heads, num_kv_heads, head_dim,
                intermediate_size, vocab_size, params, dtype, max_position (context limit)
    kv_cache    dtype; kv_bytes_per_token_per_gpu (= 2*L*H_kv*D*dtype_bytes / TP);
                block_size (tokens); gpu_memory_utilization; total_bytes_per_gpu (as
                cudaMemGetInfo reports); weights_bytes_per_gpu; peak_activation_bytes_per_gpu;
                non_torch_bytes_per_gpu; capacity_tokens (whole node, at the stored
                utilisation and block size; must equal the vLLM rule below); method (prose)
    step_model  units "ms";
                lin  {x_tokens, y_ms, extrapolation {kind "linear", slope_ms_per_token,
                      max_factor}}: token-linear work (GEMMs, norms, RoPE) vs tokens N;
                comm null | same shape as lin: tensor-parallel all-reduce time vs N;
                head {x_seqs, y_ms, extrapolation {kind, slope_ms_per_seq, max_factor}}:
                      LM head + sampling vs logits rows S;
                attn_decode  {features ["const","batch","sum_ctx"], coef [c0, c1, c2]};
                attn_prefill {features ["per_chunk","chunk_tokens","attn_pairs"],
                              coef [p0, p1, p2]};
                mixed_factor (> 0); cpu_overhead_ms (host time per step);
                optional cpu_per_seq_ms (host time per sequence in the step, default 0) and
                gpu_time_scale (multiplier on the GPU terms, in [0.5, 2], default 1);
                optional api_latency_ms, api_latency_us_per_prompt_token and
                api_latency_us_per_active_request (time a request spends outside the engine
                core: HTTP, chat template, tokenisation, streaming, growing with the streams
                the front end serves; added to its TTFT and end-to-end latency, default 0)
    fit_quality, checks   free-form objects (numbers, strings, lists)
    samples, metadata     optional free-form objects (raw measurements, profiler details)

Tables: ``x`` strictly increasing integers >= 1, ``y_ms`` non-decreasing, equal lengths. A
table gives ``y[0]`` below ``x[0]``, interpolates linearly inside, and continues with the
stated slope above ``x[-1]`` (the simulator refuses steps beyond ``max_factor * x[-1]``).

KV capacity (vLLM ``Worker.determine_num_available_blocks``, profiling.md §3.2), per GPU::

    blocks = floor((total*util - weights - peak_activation - non_torch)
                   / (block_size * kv_bytes_per_token_per_gpu))
    capacity_tokens = blocks * block_size

Every GPU of a tensor-parallel node holds its share of the KV heads of *every* token, so the
per-GPU block count is the node's block count; the node's memory is the sum over its GPUs.
"""

from __future__ import annotations

import copyreg
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sim.errors import ProfileError
from sim.model.profile_types import (  # noqa: F401  (re-exported: the types of a profile)
    DECODE_FEATURES,
    DTYPE_BYTES,
    PREFILL_FEATURES,
    SCHEMA_ID,
    DataFile,
    Hardware,
    KvCache,
    LinearTerm,
    ModelShape,
    Profile,
    Source,
    StepModel,
    Table,
    vllm_kv_blocks,
)


def _read_only(mapping: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(mapping)


# Profiles travel to the worker processes of ``simlb run --jobs``; their read-only mappings
# pickle as the dicts they wrap.
copyreg.pickle(MappingProxyType, lambda m: (_read_only, (dict(m),)))

#: Environment variable that overrides the folder of shipped profiles.
PROFILES_DIR_ENV = "SIMLB_PROFILES_DIR"


def _show(value: Any) -> str:
    """A short repr for error messages (one line, at most about 60 characters)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(path: str, key: str) -> str:
    """The dotted path of ``key`` inside ``path`` (the top level has the empty path)."""
    return f"{path}.{key}" if path else key


class _Checker:
    """Walks a profile dict and raises ``ProfileError`` naming the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, message: str) -> ProfileError:
        return ProfileError(message, source=self.source, field=field)

    def obj(self, value: Any, path: str, required: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object, got {type(value).__name__}")
        for key in required:
            if key not in value:
                raise self.fail(_at(path, key), "missing required field")
        extra = sorted(set(value) - set(required) - set(optional))
        if extra:
            raise self.fail(_at(path, extra[0]), f"unknown field (expected one of "
                                   f"{', '.join(sorted((*required, *optional)))})")
        return value

    def text(self, d: dict[str, Any], key: str, path: str) -> str:
        value = d[key]
        if not isinstance(value, str):
            raise self.fail(_at(path, key), f"expected a string, got {_show(value)}")
        return value

    def num(self, d: dict[str, Any], key: str, path: str, *, integer: bool = False,
            positive: bool = False) -> Any:
        return self.number(d[key], _at(path, key), integer=integer, positive=positive)

    def number(self, value: Any, where: str, *, integer: bool = False,
               positive: bool = False) -> Any:
        kind = "an integer" if integer else "a number"
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            raise self.fail(where, f"expected {kind}, got {_show(value)}")
        if not math.isfinite(value):
            raise self.fail(where, f"expected a finite number, got {_show(value)}")
        if value < 0 or (positive and value == 0):
            raise self.fail(where, f"expected {kind} {'> 0' if positive else '>= 0'}, "
                                   f"got {_show(value)}")
        return value if integer else float(value)

    def numbers(self, d: dict[str, Any], key: str, path: str, *, integer: bool = False) -> tuple:
        value = d[key]
        if not isinstance(value, list) or not value:
            raise self.fail(f"{path}.{key}", f"expected a non-empty list, got {_show(value)}")
        return tuple(self.number(v, f"{path}.{key}[{i}]", integer=integer)
                     for i, v in enumerate(value))


def _parse_table(c: _Checker, value: Any, path: str, x_key: str, slope_key: str) -> Table:
    """Validate a ``{x_*, y_ms, extrapolation}`` table."""
    d = c.obj(value, path, (x_key, "y_ms", "extrapolation"))
    xs = c.numbers(d, x_key, path, integer=True)
    ys = c.numbers(d, "y_ms", path)
    if len(xs) != len(ys):
        raise c.fail(f"{path}.y_ms", f"expected {len(xs)} values (one per {x_key}), "
                                     f"got {len(ys)}")
    for i in range(1, len(xs)):
        if xs[i] <= xs[i - 1]:
            raise c.fail(f"{path}.{x_key}[{i}]", f"expected strictly increasing values, got "
                                                 f"{xs[i]} after {xs[i - 1]}")
        if ys[i] < ys[i - 1]:
            raise c.fail(f"{path}.y_ms[{i}]", f"expected a non-decreasing table, got {ys[i]} "
                                              f"after {ys[i - 1]}")
    if xs[0] < 1:
        raise c.fail(f"{path}.{x_key}[0]", f"expected values >= 1, got {xs[0]}")
    ext = c.obj(d["extrapolation"], f"{path}.extrapolation", ("kind", slope_key, "max_factor"))
    if ext["kind"] != "linear":
        raise c.fail(f"{path}.extrapolation.kind", f"expected 'linear', got {_show(ext['kind'])}")
    slope = c.num(ext, slope_key, f"{path}.extrapolation")
    factor = c.num(ext, "max_factor", f"{path}.extrapolation")
    if factor < 1.0:
        raise c.fail(f"{path}.extrapolation.max_factor", f"expected >= 1, got {factor}")
    return Table(xs, ys, slope, factor)


def _parse_term(c: _Checker, value: Any, path: str, features: tuple[str, ...]) -> LinearTerm:
    """Validate a ``{features, coef}`` linear attention term."""
    d = c.obj(value, path, ("features", "coef"))
    if d["features"] != list(features):
        raise c.fail(f"{path}.features", f"expected {list(features)}, got {_show(d['features'])}")
    coef = c.numbers(d, "coef", path)
    if len(coef) != len(features):
        raise c.fail(f"{path}.coef", f"expected {len(features)} coefficients, got {len(coef)}")
    return LinearTerm(features, coef)


def _parse_source(c: _Checker, value: Any) -> Source:
    d = c.obj(value, "source", ("kind", "method", "data", "created", "tool"))
    kind = c.text(d, "kind", "source")
    if kind not in ("derived", "measured"):
        raise c.fail("source.kind", f"expected 'derived' or 'measured', got {_show(kind)}")
    if not isinstance(d["data"], list):
        raise c.fail("source.data", f"expected a list, got {_show(d['data'])}")
    files = []
    for i, item in enumerate(d["data"]):
        p = f"source.data[{i}]"
        f = c.obj(item, p, ("path", "sha256", "licence"))
        files.append(DataFile(c.text(f, "path", p), c.text(f, "sha256", p),
                              c.text(f, "licence", p)))
    return Source(kind, c.text(d, "method", "source"), tuple(files),
                  c.text(d, "created", "source"), c.text(d, "tool", "source"))


def _parse_hardware(c: _Checker, value: Any) -> Hardware:
    opt = ("effective_gemm_flops_per_gpu", "effective_attention_flops_per_gpu")
    d = c.obj(value, "hardware", ("gpu", "tensor_parallel", "memory_bytes_per_gpu",
                                  "peak_bf16_flops_per_gpu", "hbm_bandwidth_bytes_per_s",
                                  "effective_bandwidth_bytes_per_s", "notes"), opt)
    extra = [None if d.get(k) is None else c.num(d, k, "hardware", positive=True) for k in opt]
    return Hardware(
        c.text(d, "gpu", "hardware"),
        c.num(d, "tensor_parallel", "hardware", integer=True, positive=True),
        c.num(d, "memory_bytes_per_gpu", "hardware", integer=True, positive=True),
        *(c.num(d, k, "hardware", positive=True) for k in (
            "peak_bf16_flops_per_gpu", "hbm_bandwidth_bytes_per_s",
            "effective_bandwidth_bytes_per_s")),
        extra[0], extra[1], c.text(d, "notes", "hardware"))


def _parse_model(c: _Checker, value: Any, tp: int) -> ModelShape:
    ints = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
            "intermediate_size", "vocab_size", "params", "max_position")
    d = c.obj(value, "model", ("name", "dtype", *ints))
    nums = {k: c.num(d, k, "model", integer=True, positive=True) for k in ints}
    if nums["num_kv_heads"] % tp or nums["num_heads"] % nums["num_kv_heads"]:
        raise c.fail("model.num_kv_heads", f"expected a divisor of num_heads that "
                                           f"tensor_parallel={tp} divides, "
                                           f"got {nums['num_kv_heads']}")
    return ModelShape(name=c.text(d, "name", "model"), dtype=c.text(d, "dtype", "model"), **nums)


def _parse_kv(c: _Checker, value: Any, model: ModelShape, tp: int) -> KvCache:
    ints = ("kv_bytes_per_token_per_gpu", "block_size", "total_bytes_per_gpu",
            "weights_bytes_per_gpu", "peak_activation_bytes_per_gpu",
            "non_torch_bytes_per_gpu", "capacity_tokens")
    d = c.obj(value, "kv_cache", ("dtype", "gpu_memory_utilization", "method", *ints))
    nums = {k: c.num(d, k, "kv_cache", integer=True) for k in ints}
    util = c.num(d, "gpu_memory_utilization", "kv_cache", positive=True)
    if util > 1.0:
        raise c.fail("kv_cache.gpu_memory_utilization", f"expected a fraction <= 1, got {util}")
    for key in ("kv_bytes_per_token_per_gpu", "block_size", "total_bytes_per_gpu"):
        if nums[key] == 0:
            raise c.fail(f"kv_cache.{key}", "expected an integer > 0, got 0")
    dtype = c.text(d, "dtype", "kv_cache")
    if dtype in DTYPE_BYTES:
        want = 2 * model.num_layers * model.num_kv_heads * model.head_dim * DTYPE_BYTES[dtype]
        if nums["kv_bytes_per_token_per_gpu"] != want // tp:
            raise c.fail("kv_cache.kv_bytes_per_token_per_gpu",
                         f"expected 2*L*H_kv*D*bytes/TP = {want // tp}, "
                         f"got {nums['kv_bytes_per_token_per_gpu']}")
    return KvCache(dtype=dtype, gpu_memory_utilization=util,
                   method=c.text(d, "method", "kv_cache"), **nums)


def _parse_step_model(c: _Checker, value: Any) -> StepModel:
    p = "step_model"
    d = c.obj(value, p, ("units", "lin", "comm", "head", "attn_decode", "attn_prefill",
                         "mixed_factor", "cpu_overhead_ms"),
              ("cpu_per_seq_ms", "gpu_time_scale", *API_LATENCY_KEYS))
    if d["units"] != "ms":
        raise c.fail(f"{p}.units", f"expected 'ms', got {_show(d['units'])}")
    comm = None if d["comm"] is None else _parse_table(
        c, d["comm"], f"{p}.comm", "x_tokens", "slope_ms_per_token")
    return StepModel(
        lin=_parse_table(c, d["lin"], f"{p}.lin", "x_tokens", "slope_ms_per_token"),
        comm=comm,
        head=_parse_table(c, d["head"], f"{p}.head", "x_seqs", "slope_ms_per_seq"),
        attn_decode=_parse_term(c, d["attn_decode"], f"{p}.attn_decode", DECODE_FEATURES),
        attn_prefill=_parse_term(c, d["attn_prefill"], f"{p}.attn_prefill", PREFILL_FEATURES),
        mixed_factor=c.num(d, "mixed_factor", p, positive=True),
        cpu_overhead_ms=c.num(d, "cpu_overhead_ms", p),
        gpu_time_scale=_gpu_time_scale(c, d, p),
        **{key: c.num(d, key, p) for key in ("cpu_per_seq_ms", *API_LATENCY_KEYS) if key in d},
    )


#: Optional step-model fields of the request's time outside the engine core (ms, us, us).
API_LATENCY_KEYS = ("api_latency_ms", "api_latency_us_per_prompt_token",
                    "api_latency_us_per_active_request")

#: Bounds of ``step_model.gpu_time_scale``: a calibration may correct the GPU terms of a
#: profile by at most this factor either way (beyond it the profile itself is wrong).
GPU_TIME_SCALE_BOUNDS = (0.5, 2.0)


def _gpu_time_scale(c: _Checker, d: dict[str, Any], p: str) -> float:
    if "gpu_time_scale" not in d:
        return 1.0
    value = c.num(d, "gpu_time_scale", p, positive=True)
    lo, hi = GPU_TIME_SCALE_BOUNDS
    if not lo <= value <= hi:
        raise c.fail(f"{p}.gpu_time_scale", f"expected a factor in [{lo:g}, {hi:g}], "
                                             f"got {_show(value)}")
    return value


def parse_profile(data: Any, source: str = "<profile>", path: Path | None = None) -> Profile:
    """Validate a decoded profile object and return it as a frozen ``Profile``.

    Raises:
        ProfileError: naming ``source`` and the dotted field path of the first problem.
    """
    c = _Checker(source)
    top = c.obj(data, "", ("schema", "name", "source", "hardware", "model", "kv_cache",
                           "step_model", "fit_quality", "checks"), ("samples", "metadata"))
    if top["schema"] != SCHEMA_ID:
        raise c.fail("schema", f"expected {SCHEMA_ID!r}, got {_show(top['schema'])}")
    hardware = _parse_hardware(c, top["hardware"])
    tp = hardware.tensor_parallel
    model = _parse_model(c, top["model"], tp)
    for key in ("fit_quality", "checks"):
        if not isinstance(top[key], dict):
            raise c.fail(key, f"expected an object, got {_show(top[key])}")
    profile = Profile(
        name=c.text(top, "name", ""), source=_parse_source(c, top["source"]),
        hardware=hardware, model=model, kv_cache=_parse_kv(c, top["kv_cache"], model, tp),
        step_model=_parse_step_model(c, top["step_model"]),
        fit_quality=MappingProxyType(dict(top["fit_quality"])),
        checks=MappingProxyType(dict(top["checks"])), path=path,
    )
    want = profile.kv_capacity_tokens()
    if profile.kv_cache.capacity_tokens != want:
        raise c.fail("kv_cache.capacity_tokens", f"expected {want} (vLLM rule from the stored "
                                                 f"terms), got {profile.kv_cache.capacity_tokens}")
    return profile


def shipped_profiles_dir() -> Path:
    """The folder of shipped profiles: ``$SIMLB_PROFILES_DIR`` or ``<repo>/profiles``."""
    env = os.environ.get(PROFILES_DIR_ENV)
    if env:
        return Path(env)
    import sim  # the package root; cheap, imports neither pydantic nor SimPy

    return Path(sim.__file__).resolve().parent.parent / "profiles"


def shipped_profile_names(profiles_dir: Path | None = None) -> list[str]:
    """Names of the shipped profiles (``gpu/model``), sorted."""
    root = shipped_profiles_dir() if profiles_dir is None else profiles_dir
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.json"))


def resolve_profile(ref: str | Path, base_dir: Path | None = None) -> Path:
    """Find the file ``ref`` names: a path (absolute, or relative to ``base_dir`` or the cwd)
    or a shipped profile name; ``.json`` may be omitted.

    Raises:
        ProfileError: nothing matches; the message lists the shipped profile names.
    """
    ref_path = Path(ref).expanduser()
    roots = [None] if ref_path.is_absolute() else [
        *([base_dir] if base_dir is not None else []), Path.cwd(), shipped_profiles_dir()]
    for root in roots:
        base = ref_path if root is None else root / ref_path
        for cand in (base, base.with_name(base.name + ".json")):
            if cand.is_file():
                return cand
    names = shipped_profile_names()
    raise ProfileError(
        f"no profile file or shipped profile of that name (looked "
        f"{'at the path' if ref_path.is_absolute() else 'in ' + ', '.join(map(str, roots))}); "
        f"shipped profiles: {', '.join(names) or 'none'}", source=str(ref))


def load_profile(ref: str | Path, base_dir: Path | None = None) -> Profile:
    """Load and validate a profile by path or shipped name (see ``resolve_profile``).

    Raises:
        ProfileError: missing file, invalid JSON or any schema violation, with the file
            as ``source`` and the dotted field path as ``field``.
    """
    path = resolve_profile(ref, base_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read the file ({exc.strerror})", source=str(path)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                           source=str(path)) from None
    return parse_profile(data, source=str(path), path=path)


def write_profile(data: Mapping[str, Any], path: str | Path) -> Path:
    """Validate ``data`` and write it as JSON atomically (sorted keys, 2-space indent).

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so readers never see a half-written profile.

    Raises:
        ProfileError: ``data`` is not a valid profile (nothing is written).
    """
    path = Path(path)
    parse_profile(data, source=str(path))
    text = json.dumps(data, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a profile is a shareable data file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
