"""``simlb calibrate RUN... --profile P -o P2``: fit a profile's engine host time and API
latency to measured runs, split train/test by run, print the held-out error, write the
calibrated profile with its provenance (method: ``sim.calibration.engine_fit``).

Bad input (an unreadable run, an unknown term, an unwritable output) prints one line and exits
with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from sim.commands.fidelity import _engine_settings


@click.command(name="calibrate")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--profile", required=True, metavar="NAME|PATH",
              help="Profile to start from: a shipped name or a JSON path.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Calibrated profile to write (JSON).")
@click.option("--test", "test_patterns", multiple=True, metavar="PATTERN",
              help="Hold out the runs whose name matches (glob, repeatable); default: every "
                   "other workload in order of rate.")
@click.option("--fit", "terms", default="cpu_overhead_ms,cpu_per_seq_ms", show_default=True,
              help="Engine terms to search (cpu_overhead_ms, cpu_per_seq_ms, gpu_time_scale); "
                   "the API latency is always fitted.")
@click.option("--max-evaluations", type=click.IntRange(min=4), default=40, show_default=True,
              help="Replays of the training runs the search may spend.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override the replayed node, as in simlb fidelity. Repeatable.")
@click.option("--engine", "engine", multiple=True, metavar="KEY=VALUE",
              help="Engine setting the runs lack or to replace, as in simlb fidelity.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(runs: tuple[Path, ...], profile: str, out: Path, test_patterns: tuple[str, ...],
            terms: str, max_evaluations: int, overrides: tuple[str, ...],
            engine: tuple[str, ...], as_json: bool) -> None:
    """Fit PROFILE's engine host time and API latency to measured RUNS; report held-out
    errors; write the calibrated profile to --out."""
    from sim.calibration.engine_fit import ENGINE_TERMS, calibrated_profile, fit, split_runs
    from sim.errors import InputError
    from sim.fidelity.evaluate import find_runs
    from sim.fidelity.readers import read_run
    from sim.model.profile import load_profile, write_profile
    from sim.profile.cli import check_writable, read_json

    chosen = tuple(t.strip() for t in terms.split(",") if t.strip())
    bad = [t for t in chosen if t not in ENGINE_TERMS]
    if bad or not chosen:
        raise InputError(f"cannot fit {bad[0] if bad else terms!r}; expected a comma list of "
                         f"{', '.join(ENGINE_TERMS)}", field="--fit")
    check_writable(out)
    start_profile = load_profile(profile)
    assert start_profile.path is not None
    settings = _engine_settings(engine)
    measured = [read_run(layout, path, engine=settings) for layout, path in find_runs(runs)]
    if not measured:
        raise InputError("no measured runs found", source=" ".join(map(str, runs)))
    train, test = split_runs(measured, test_patterns)
    if not train:
        raise InputError("every run is held out by --test; nothing left to fit on",
                         field="--test")
    say = (lambda _: None) if as_json else (lambda m: click.echo(m, err=True))
    say(f"calibrate: {len(train)} training runs, {len(test)} held out; "
        f"searching {', '.join(chosen)} (up to {max_evaluations} replays of the training set)")
    before = _median_errors(test, profile, overrides)
    sm = start_profile.step_model
    cal = fit(train, profile, overrides, terms=chosen, max_evaluations=max_evaluations,
              start={t: float(getattr(sm, t)) for t in chosen})
    cal.test = [r.name for r in test]
    fitted = [*overrides, *cal.overrides()]
    trained, held_out = _median_errors(train, profile, fitted), _median_errors(test, profile,
                                                                                fitted)
    command_line = "simlb calibrate " + " ".join(sys.argv[2:])
    data = calibrated_profile(read_json(start_profile.path), cal, held_out, trained, before,
                              command_line)
    write_profile(data, out)
    result = {"profile": str(out), "values": cal.values, "train": cal.train, "test": cal.test,
              "median_abs_error_pct": {"before_test": before, "train": trained,
                                       "test": held_out}}
    if as_json:
        click.echo(json.dumps(result, indent=1, default=float))
        return
    for key, value in cal.values.items():
        click.echo(f"  {key:36s} {value:.4g}")
    click.echo("median |error| %          before (test)   train   test")
    for key in before:
        click.echo(f"  {key:24s} {_fmt(before[key]):>13s} {_fmt(trained[key]):>7s} "
                   f"{_fmt(held_out[key]):>6s}")
    click.echo(f"wrote {out}")


def _median_errors(runs: list, profile: str, overrides: Any) -> dict[str, float]:
    """Median over ``runs`` of |error| (%) of mean/p99 E2E, mean/p99 TTFT and mean ITL."""
    from sim.fidelity.replay import replay
    from sim.fidelity.score import aggregate, score_run

    if not runs:
        return {}
    summary = aggregate([score_run(run, replay(run, profile, overrides)) for run in runs])
    err = summary["error"]
    return {f"{m}_{s}": float(err[m][s]["median_abs"])
            for m, s in (("e2e", "mean"), ("e2e", "p99"), ("ttft", "mean"), ("ttft", "p99"),
                         ("itl", "mean"))}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
