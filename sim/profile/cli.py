"""``simlb profile``: measure a cost profile on this machine, refit it, check it.

    simlb profile run --model llama-3-8b --device cuda --out h100-llama-3-8b.json
    simlb profile --model tiny --device cpu --out tiny.json          (same as ``run``)
    simlb profile fit SAMPLES -o FILE
    simlb profile check PROFILE [--calibration DIR]

``python -m sim.profile ...`` is the same command line without the ``simlb`` entry point (for
GPU machines without pydantic or SimPy). Heavy modules (torch, numpy, scipy) are imported
inside the commands, so ``simlb --help`` stays fast. Bad input prints one line and exits 2.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sim.errors import InputError


@dataclass(frozen=True)
class RunOptions:
    """Options of ``simlb profile run`` (see the click options for their meaning)."""

    model: str
    device: str
    out: Path
    grid: str | None = None
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    seed: int = 0
    threads: int | None = None
    cuda_graph: bool = True
    samples: Path | None = None
    quiet: bool = False
    command: str = "simlb profile run"


def check_writable(path: Path) -> None:
    """Refuse an output path that is a folder or whose folder cannot be written.

    Raises:
        InputError: naming the path and the reason.
    """
    if path.is_dir():
        raise InputError("is a folder; give a file name for the profile", source=str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".simlb-write-test"):
            pass
    except OSError as exc:
        raise InputError(f"cannot write the output file ({exc.strerror or exc})",
                         source=str(path)) from None


def import_torch(device: str) -> Any:
    """torch, checked to run on ``device``.

    Raises:
        InputError: torch missing, or CUDA requested but unavailable.
    """
    try:
        import torch
    except ImportError:
        raise InputError("the profiler needs PyTorch: pip install -e '.[profile]' (or use a "
                         "machine that has it)", field="--device") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(f"CUDA is not available to torch {torch.__version__} on this machine "
                         f"(use --device cpu for the CPU test path)", field="--device cuda")
    return torch


def assemble(measurement: Any) -> dict[str, Any]:
    """Fit a measurement and add the reference-figure checks (the same for run and fit)."""
    from sim.profile import check, fit

    data = fit.build_profile(measurement)
    anchors = check.anchor_checks(data)
    if anchors:
        data["checks"]["anchors"] = anchors
    return data


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write JSON via a temporary file and ``os.replace`` (for the samples file)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True, indent=1, allow_nan=False)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def run_profile(opts: RunOptions, echo: Callable[[str], None]) -> dict[str, Any]:
    """Measure, fit and write a profile (``docs/profiling.md``); returns its dict.

    Raises:
        InputError: bad options (unknown model, no CUDA, unwritable output, failed gate).
    """
    from sim.profile.shapes import resolve_shape

    shape = resolve_shape(opts.model)
    for path in (opts.out, opts.samples):
        if path is not None:
            check_writable(path)
    torch = import_torch(opts.device)
    from sim.model.profile import write_profile
    from sim.profile import measure_profile

    measurement = measure_profile(torch, shape, opts, echo)
    if opts.samples is not None:
        write_json_atomic(measurement.to_json(), opts.samples)
        echo(f"samples: {opts.samples}")
    data = assemble(measurement)
    write_profile(data, opts.out)
    return data


def summary_lines(data: dict[str, Any], path: Path) -> list[str]:
    """What ``run`` and ``fit`` print about the profile they wrote."""
    q, f = data["fit_quality"], data["checks"]["key_figures"]
    held, grid = q.get("heldout", {}), q.get("grid", {})
    lines = [f"wrote {path} ({data['name']}, {data['hardware']['gpu']})",
             f"  lin(1) {f['lin_ms@1']} ms, lin slope {f['lin_slope_us_per_token']} us/token, "
             f"head(1) {f['head_ms@1']} ms, decode B64/ctx1024 {f['decode_ms@B64_ctx1024']} ms,"
             f" prefill 2048 {f['prefill_ms@2048']} ms, KV {f['kv_capacity_tokens']} tokens",
             f"  fit: grid MAPE {grid.get('mape_pct')}% (n={grid.get('n')}), held-out MAPE "
             f"{held.get('mape_pct')}% max {held.get('max_ape_pct')}% (n={held.get('n')}), "
             f"lin LOO {q.get('lin_loo_mape_pct')}%, repeatability "
             f"{q.get('repeatability_pct')}%"]
    base = q.get("baselines", {})
    if base:
        lines.append("  baselines (held-out MAPE): " + ", ".join(
            f"{k} {v.get('heldout_mape_pct')}%" for k, v in base.items()))
    lines += [f"  warning: {w}" for w in q.get("warnings", [])]
    return lines


def _errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print ``InputError`` as one line and exit 2 (as ``sim.cli`` does)."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            click.echo(f"simlb: error: {exc}", err=True)
            sys.exit(2)
    return wrapper


_RUN_OPTIONS = (
    click.option("--model", metavar="NAME|CONFIG", help="Built-in shape (llama-3-8b, "
                 "llama-2-7b, mistral-7b, qwen2.5-7b, tiny) or a Hugging Face config.json."),
    click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda",
                 show_default=True, help="Where to run (cpu: the test path, fp32)."),
    click.option("--out", type=click.Path(path_type=Path), help="Profile file to write."),
    click.option("--grid", type=click.Choice(["full", "quick", "ci"]),
                 help="Measurement grid [default: full on cuda, ci on cpu]."),
    click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True),
                 default=0.9, show_default=True, help="vLLM's fraction of total memory."),
    click.option("--max-num-batched-tokens", type=click.IntRange(min=1), default=8192,
                 show_default=True, help="Tokens of the KV-sizing profile run."),
    click.option("--max-num-seqs", type=click.IntRange(min=1), default=256,
                 show_default=True, help="Logits rows of the KV-sizing profile run."),
    click.option("--block-size", type=click.IntRange(min=1), default=16, show_default=True,
                 help="KV block size in tokens."),
    click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Seed of weights, inputs, shape order and held-out draws."),
    click.option("--threads", type=click.IntRange(min=1),
                 help="CPU threads for torch [default: 1 on cpu]."),
    click.option("--no-cuda-graph", is_flag=True, help="Time eager steps (no CUDA graphs)."),
    click.option("--samples", type=click.Path(path_type=Path),
                 help="Also write the raw samples here (before fitting)."),
    click.option("--quiet", "-q", is_flag=True, help="No progress lines."),
)


def _run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_RUN_OPTIONS):
        func = option(func)
    return func


def _run(kw: dict[str, Any]) -> None:
    if not kw.get("model") or not kw.get("out"):
        raise click.UsageError("--model and --out are required")
    opts = RunOptions(model=kw["model"], device=kw["device"], out=kw["out"], grid=kw["grid"],
                      gpu_memory_utilization=kw["gpu_memory_utilization"],
                      max_num_batched_tokens=kw["max_num_batched_tokens"],
                      max_num_seqs=kw["max_num_seqs"], block_size=kw["block_size"],
                      seed=kw["seed"], threads=kw["threads"], cuda_graph=not kw["no_cuda_graph"],
                      samples=kw["samples"], quiet=kw["quiet"], command=" ".join(sys.argv))

    def echo(line: str) -> None:
        if not opts.quiet:
            click.echo(line, err=True)

    t0 = time.perf_counter()
    data = run_profile(opts, echo)
    for line in summary_lines(data, opts.out):
        click.echo(line)
    click.echo(f"  total {time.perf_counter() - t0:.1f} s")


@click.group(name="profile", invoke_without_command=True)
@_run_options
@click.pass_context
@_errors
def profile(ctx: click.Context, **kw: Any) -> None:
    """Calibrate a cost profile on this machine (sub-commands run, fit, check).

    Without a sub-command the options are those of 'run'.
    """
    if ctx.invoked_subcommand is not None:
        if kw.get("model") or kw.get("out"):
            raise click.UsageError("give the run options after 'run', or no sub-command")
        return
    if not kw.get("model"):
        click.echo(ctx.get_help())
        return
    _run(kw)


@profile.command(name="run")
@_run_options
@_errors
def run_cmd(**kw: Any) -> None:
    """Build the model with random weights, time a grid of steps, fit, write the profile."""
    _run(kw)


@profile.command(name="fit")
@click.argument("samples", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Profile file to write.")
@_errors
def fit_cmd(samples: Path, out: Path) -> None:
    """Refit a profile from the raw samples of a profile or samples file."""
    from sim.model.profile import write_profile
    from sim.profile import fit

    data = read_json(samples)
    check_writable(out)
    result = assemble(fit.measurement_from_json(data, str(samples)))
    write_profile(result, out)
    for line in summary_lines(result, out):
        click.echo(line)


@profile.command(name="check")
@click.argument("profile_ref", metavar="PROFILE")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="Calibration root holding vidur/ [default: ../shared/calibration].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_errors
def check_cmd(profile_ref: str, calibration: Path | None, as_json: bool) -> None:
    """Compare PROFILE with its held-out samples and the published GPU measurements."""
    from sim.model.profile import load_profile
    from sim.profile import check

    prof = load_profile(profile_ref)
    assert prof.path is not None
    report = check.check(read_json(prof.path), prof, calibration or check.default_calibration())
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "lines"}, indent=1))
    else:
        for line in report["lines"]:
            click.echo(line)


def read_json(path: Path) -> Any:
    """Read a JSON file, as ``InputError`` when missing or invalid."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror})", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg} at line {exc.lineno}",
                         source=str(path)) from None


def main(argv: list[str] | None = None, prog_name: str = "python -m sim.profile") -> None:
    """Entry point of ``python -m sim.profile``."""
    profile.main(args=argv, prog_name=prog_name)


__all__ = ["RunOptions", "assemble", "main", "profile", "run_profile"]
