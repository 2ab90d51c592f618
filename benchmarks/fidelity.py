"""Fidelity against every measured run in ../shared/ground_truth: per-run table, medians over
runs, and the peer simulator's (BLIS ``sim.json``) TTFT errors beside simlb's for the w5/w7
cells. Runs use the same code as ``simlb fidelity``.

    python benchmarks/fidelity.py                          # all runs, default profiles
    python benchmarks/fidelity.py --profile h100/qwen3-14b --set cost_model.params.cpu_overhead_ms=2
    python benchmarks/fidelity.py --train 'sweep_*' --test 'w?_sweep/*'   # split by run name
    python benchmarks/fidelity.py --max-requests 2000 --json out.json --report out/

The residency runs (Qwen3-14B, H100) use ``--profile``, by default the first shipped
``h100/qwen3-14b*`` profile, else ``h100/llama-3-8b`` (a stand-in, said in the output). The
vLLM 0.19 runs (LLMServingSim) use a shipped profile whose GPU and model match the run's, and
are listed as skipped with the reason when none does.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
import time
from pathlib import Path

from rich.console import Console

from sim.fidelity.evaluate import Evaluated, evaluate_one, find_runs, to_json
from sim.fidelity.score import aggregate
from sim.fidelity.table import fidelity_table, summary_lines
from sim.model.profile import shipped_profile_names, shipped_profiles_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def default_profile() -> str:
    """The Qwen3-14B H100 profile when shipped, else the Llama-3-8B stand-in."""
    names = [n for n in shipped_profile_names() if n.startswith("h100/qwen3-14b")]
    return names[0] if names else "h100/llama-3-8b"


def matching_profile(model: str, gpu: str, tp: int) -> str | None:
    """A shipped profile for this model (name after the org), GPU and TP, or None."""
    want_model = _norm(model.split("/")[-1])
    want_gpu = _norm(gpu)
    for name in shipped_profile_names():
        try:
            data = json.loads((shipped_profiles_dir() / f"{name}.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        hw, md = data.get("hardware", {}), data.get("model", {})
        have_gpu = _norm(str(hw.get("gpu", "")))
        if (_norm(str(md.get("name", ""))) == want_model and want_gpu and have_gpu
                and (have_gpu in want_gpu or want_gpu in have_gpu)
                and int(hw.get("tensor_parallel", 1)) == tp):
            return name
    return None


def _selected(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)


def _peer_table(results: list[Evaluated]) -> list[str]:
    lines = ["peer (BLIS sim.json) vs simlb: median over tenants of |TTFT error| %",
             f"{'run':24s} {'simlb p50':>10s} {'peer p50':>10s} {'simlb p99':>10s} "
             f"{'peer p99':>10s}"]
    for ev in results:
        peer = ev.score.peer
        if not peer:
            continue
        m = peer["median_abs_over_tenants"]
        lines.append(f"{ev.score.name:24s} {m['simlb_p50_err']:10.1f} {m['peer_p50_err']:10.1f} "
                     f"{m['simlb_p99_err']:10.1f} {m['peer_p99_err']:10.1f}")
    return lines if len(lines) > 2 else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED, help="the ../shared folder")
    ap.add_argument("--profile", help="profile for the residency (Qwen3-14B H100) runs")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY.PATH=VALUE", help="override, as simlb fidelity --set")
    ap.add_argument("--train", action="append", default=[], metavar="GLOB",
                    help="run-name pattern of the training split (repeatable)")
    ap.add_argument("--test", action="append", default=[], metavar="GLOB",
                    help="run-name pattern of the test split (repeatable; default: the "
                         "runs not in --train)")
    ap.add_argument("--max-requests", type=int, help="replay each run's first N requests")
    ap.add_argument("--json", type=Path, help="write fidelity.json here")
    ap.add_argument("--report", type=Path, help="write fidelity.html into this folder")
    args = ap.parse_args()
    root = args.shared / "ground_truth"
    if not root.is_dir():
        print(f"no measured runs at {root}; nothing to do")
        return 0
    profile = args.profile or default_profile()
    console = Console(width=220)
    note = "" if "qwen3" in profile or args.profile else " (stand-in: no Qwen3-14B profile yet)"
    console.print(f"residency runs: profile {profile}{note}; overrides: "
                  f"{', '.join(args.overrides) or 'none'}")
    started = time.perf_counter()
    results: list[Evaluated] = []
    skipped: list[tuple[str, str]] = []
    for layout, path in find_runs([root]):
        if layout == "tracev2":
            prof: str | None = profile
        else:
            from sim.fidelity.readers import read_run

            eng = read_run(layout, path).engine
            prof = matching_profile(eng.model, eng.gpu, eng.tp)
            if prof is None:
                skipped.append((str(path.relative_to(root)),
                                f"no shipped profile for {eng.model} on {eng.gpu} TP{eng.tp}"
                                + (f" DP{eng.dp}" if eng.dp > 1 else "")))
                continue
            if eng.dp > 1:
                skipped.append((str(path.relative_to(root)),
                                f"data parallel {eng.dp}: one-engine replay not comparable"))
                continue
        results.append(evaluate_one(layout, path, prof, args.overrides,
                                    max_requests=args.max_requests))
    wall = time.perf_counter() - started
    splits: dict[str, list[Evaluated]] = {"all": results}
    if args.train:
        splits["train"] = [r for r in results if _selected(r.score.name, args.train)]
        splits["test"] = [r for r in results if (_selected(r.score.name, args.test)
                                                 if args.test else
                                                 not _selected(r.score.name, args.train))]
    for split, chosen in splits.items():
        if not chosen:
            console.print(f"{split}: no runs")
            continue
        scores = [r.score for r in chosen]
        summary = aggregate(scores)
        console.print(fidelity_table(scores, summary, f"{split}: {len(chosen)} runs"))
        for line in summary_lines(summary):
            console.print(line)
    for line in _peer_table(results):
        console.print(line)
    for name, why in skipped:
        console.print(f"skipped {name}: {why}")
    replay_s = sum(r.prediction.wall_s for r in results)
    console.print(f"{len(results)} runs, {sum(r.score.rows for r in results)} requests in "
                  f"{wall:.1f} s wall ({replay_s:.1f} s in the simulation loop)")
    doc = to_json(results, profile, args.overrides, wall)
    doc["skipped"] = [{"run": n, "reason": w} for n, w in skipped]
    if args.json:
        from sim.results import dumps_json

        args.json.write_text(dumps_json(doc), encoding="utf-8")
    if args.report:
        from sim.fidelity.page import write_page

        write_page(results, doc["summary"], profile, args.overrides,
                   args.report / "fidelity.html")
    return 0 if all(math.isfinite(r.score.error["e2e"]["mean"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
