"""``simlb profile check``: a profile against its own held-out samples and published data.

Three comparisons, each skipped with a message when its data are missing:

1. **Held-out samples** (measured profiles only): the stored step model predicts the raw
   samples of the ``heldout`` set (never fitted) and the fitted grid; MAPE and max APE.
2. **Vidur calibration data** (``shared/calibration``, SOURCES.md): where the same GPU kind and
   model shape were measured, the profile's ``lin(N)`` against Vidur's per-op medians summed
   as ``num_layers * (9 layer ops) + emb`` at every measured N (``sim.calibration.vidur``).
   Vidur times kernels only (PyTorch profiler, fp16); a measured profile includes the small
   gaps between kernels of a CUDA-graph replay, so a few percent above is expected.
3. **Reference figures** for the same GPU and model (``ANCHORS``, from
   ``sim.calibration.anchors``: analytic KV capacities, roofline step times, published
   measurements).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import sim.profile.fit as fit  # the submodule, not the package: no check <-> __init__ edge
from sim.calibration.anchors import anchor_key, compare_with_anchors
from sim.calibration.vidur import sig
from sim.model.profile import Profile

VIDUR_GPUS = ("h100", "a100", "a40")


def gpu_key(name: str) -> str:
    """A short GPU key from a device name: ``NVIDIA H100 80GB HBM3`` -> ``h100``."""
    low = name.lower()
    if low.startswith("cpu"):
        return "cpu"
    for key in ("h200", "h100", "a100", "a40", "l40s", "l4", "a10g"):
        if key in low:
            return key
    words = low.replace("nvidia", "").replace("-", " ").split()
    return words[0] if words else "gpu"


def anchor_checks(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Key figures of a profile dict against ``ANCHORS`` for its GPU and model."""
    figs = data.get("checks", {}).get("key_figures") or fit.key_figures(
        data["step_model"], data["kv_cache"]["capacity_tokens"])
    key = anchor_key(gpu_key(data["hardware"]["gpu"]), data["model"]["name"],
                     int(data["hardware"].get("tensor_parallel", 1)))
    return compare_with_anchors(key, figs)


def heldout_check(data: dict[str, Any]) -> dict[str, Any] | None:
    """Predicted vs measured on the stored samples (None when the file has none)."""
    samples = data.get("samples")
    if not isinstance(samples, dict) or "rows" not in samples:
        return None
    sm = data["step_model"]
    held, held_t, repeat = fit.heldout_steps(samples)
    pred = fit.predict_ms(sm, held["P"], held["K"], held["B"], held["C"])
    grid = fit.columns(samples, fit.STEP_SETS)
    ape = np.abs(pred / held_t - 1.0) * 100.0 if len(held_t) else np.zeros(0)
    worst = [{"P": int(held["P"][i]), "K": int(held["K"][i]), "B": int(held["B"][i]),
              "C": int(held["C"][i]), "measured_ms": sig(held_t[i], 4),
              "predicted_ms": sig(pred[i], 4), "ape_pct": sig(ape[i], 3)}
             for i in np.argsort(-ape)[:5]]
    return {"heldout": fit.metrics(pred, held_t), "repeatability_pct": repeat,
            "grid": fit.metrics(fit.predict_ms(sm, grid["P"], grid["K"], grid["B"], grid["C"]),
                                grid["t"]),
            "worst_heldout": worst}


def default_calibration() -> Path:
    """``$SIMLB_SHARED/calibration``, else ``<repo>/../shared/calibration``."""
    env = os.environ.get("SIMLB_SHARED")
    if env:
        return Path(env) / "calibration"
    import sim

    return Path(sim.__file__).resolve().parents[2] / "shared" / "calibration"


def _find_vidur_model(root: Path, profile: Profile) -> str | None:
    """The Vidur model folder whose config has the profile's shape (vocab aside: ``lin``
    reads the embedding by gather, so the vocabulary does not change it)."""
    from sim.calibration import vidur

    m = profile.model
    want = (m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_size)
    for path in sorted((root / "model_configs" / "meta-llama").glob("*.yml")):
        cfg = vidur.read_yaml(path)
        have = tuple(cfg.get(k) for k in ("embedding_dim", "num_layers", "num_q_heads",
                                          "num_kv_heads", "mlp_hidden_dim"))
        if have == want:
            return path.stem
    return None


def calibration_check(profile: Profile, calibration: Path) -> dict[str, Any]:
    """``lin(N)`` against Vidur's summed per-op medians; ``{"skipped": reason}`` if no match."""
    from sim.calibration import vidur

    root = calibration / "vidur"
    if not root.is_dir():
        return {"skipped": f"calibration data not found at {calibration}"}
    key = gpu_key(profile.hardware.gpu)
    if key not in VIDUR_GPUS:
        return {"skipped": f"no published measurements for this GPU ({profile.hardware.gpu}); "
                           f"the calibration data cover {', '.join(VIDUR_GPUS)}"}
    model_dir = _find_vidur_model(root, profile)
    path = vidur.mlp_csv(root, key, model_dir or "")
    if model_dir is None or not path.is_file():
        return {"skipped": f"no published {key} measurements of a model with the shape of "
                           f"{profile.model.name}"}
    try:
        ops = vidur.op_medians(path, profile.hardware.tensor_parallel)
    except ValueError as exc:
        return {"skipped": str(exc)}
    sums = vidur.step_sums(ops, profile.model.num_layers)
    n, ref = sums.index.to_numpy(dtype=float), sums.to_numpy(dtype=float)
    pred = np.asarray([profile.step_model.lin.at(v) for v in n])
    shown = [v for v in (1, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384) if v in n]
    return {"data": str(path.relative_to(calibration)), "n": len(n),
            "mape_pct": sig(float(np.mean(np.abs(pred / ref - 1))) * 100, 4),
            "max_ape_pct": sig(float(np.max(np.abs(pred / ref - 1))) * 100, 4),
            "mean_err_pct": sig(float(np.mean(pred / ref - 1)) * 100, 3),
            "rows": [{"N": int(v), "vidur_ms": sig(ref[list(n).index(v)], 4),
                      "profile_ms": sig(profile.step_model.lin.at(v), 4)} for v in shown]}


def report_lines(name: str, held: dict[str, Any] | None, calib: dict[str, Any],
                 anchors: list[dict[str, Any]]) -> list[str]:
    """The human-readable report of ``simlb profile check``."""
    lines = [f"profile {name}"]
    if held is None:
        lines.append("  held-out: skipped (no raw samples in this profile; derived profiles "
                     "have none)")
    else:
        h, g = held["heldout"], held["grid"]
        lines.append(f"  held-out: n={h['n']} MAPE {h.get('mape_pct')}% max "
                     f"{h.get('max_ape_pct')}% R2 {h.get('r2')}; repeatability "
                     f"{held['repeatability_pct']}%; grid: n={g['n']} MAPE "
                     f"{g.get('mape_pct')}% max {g.get('max_ape_pct')}%")
        lines += [f"    worst: P={w['P']} K={w['K']} B={w['B']} C={w['C']} measured "
                  f"{w['measured_ms']} ms predicted {w['predicted_ms']} ms ({w['ape_pct']}%)"
                  for w in held["worst_heldout"][:3]]
    if "skipped" in calib:
        lines.append(f"  calibration: skipped ({calib['skipped']})")
    else:
        lines.append(f"  calibration: lin(N) vs {calib['data']} (summed per-op medians x "
                     f"layers) at {calib['n']} N: MAPE {calib['mape_pct']}% max "
                     f"{calib['max_ape_pct']}% mean {calib['mean_err_pct']:+}%")
        lines += [f"    N={r['N']:>5}: vidur {r['vidur_ms']:>8} ms  profile "
                  f"{r['profile_ms']:>8} ms" for r in calib["rows"]]
    if not anchors:
        lines.append("  reference figures: none for this GPU and model (profiling.md §4.3)")
    for a in anchors:
        verdict = (("in range" if a["in_range"] else "OUT OF RANGE") if "in_range" in a
                   else f"{a['rel_err_pct']:+}%")
        lines.append(f"  {a['quantity']}: {a['got']} vs {a['expected']} ({verdict}; "
                     f"{a['source']})")
    return lines


def check(data: dict[str, Any], profile: Profile, calibration: Path) -> dict[str, Any]:
    """All three comparisons as one JSON-ready dict (``lines`` holds the report)."""
    held = heldout_check(data)
    calib = calibration_check(profile, calibration)
    anchors = anchor_checks(data)
    return {"heldout": held, "calibration": calib, "anchors": anchors,
            "lines": report_lines(profile.name, held, calib, anchors)}
