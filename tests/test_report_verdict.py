"""Reports that decide (issue 12.6): the verdict (best strategy per headline metric, tested by
the paired difference over replications, one sentence why), n=1 for identical replications,
the trace's workload and input rows, herding, and figures that stay readable with 20
strategies."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim import app
from sim.report import build_report, plots, stats
from sim.report.stats import Estimate

REPO = Path(__file__).resolve().parents[1]


def _summaries() -> pd.DataFrame:
    """Three strategies x three seeds: ``cache`` is faster and hits the cache far more than
    the baseline ``base`` on every seed; ``noisy`` is as fast on average, not consistently."""
    rows = []
    for seed, jitter in zip((1, 2, 3), (0.0, 0.01, -0.01), strict=True):
        rows += [
            {"strategy": "base", "seed": seed, "latency_s.ttft.p99": 0.50 + jitter,
             "cache.hit_rate": 0.10, "herding.index": 0.0},
            {"strategy": "cache", "seed": seed, "latency_s.ttft.p99": 0.30 + jitter,
             "cache.hit_rate": 0.33, "herding.index": 0.2},
            {"strategy": "noisy", "seed": seed, "latency_s.ttft.p99": 0.31 + 3 * jitter,
             "cache.hit_rate": 0.10, "herding.index": 0.0},
        ]
    return pd.DataFrame(rows)


def test_verdict_names_the_best_tests_it_and_says_why() -> None:
    ttft = stats.VERDICT_METRICS[0]
    hits = stats.VERDICT_METRICS[4]
    found = stats.verdicts(_summaries(), ["base", "cache", "noisy"], "base",
                           [ttft, hits, stats.HERDING])
    first, second, third = found
    assert first.best == ("cache",) and first.runner_up == "noisy"
    assert first.test == "not significant"  # 10 ms ahead of a noisy runner-up
    assert first.why.startswith("TTFT p99 \u221240 %") and "cache hits +23.0 points" in first.why
    assert first.why.endswith("vs base")
    assert second.best == ("cache",) and second.test == "significant"
    assert third.best == ("base", "noisy") and third.runner_up == "cache"
    assert third.why.endswith("vs cache")  # the best is the baseline: against the runner-up
    assert stats.overall(found) == (("cache",), 2)
    assert stats.overall(found[2:]) == (("base", "noisy"), 1)


def test_verdict_with_one_replication_is_untested_and_ties_name_no_winner() -> None:
    one = _summaries().query("seed == 1")
    found = stats.verdicts(one, ["base", "cache", "noisy"], "base", [stats.VERDICT_METRICS[0]])
    assert found[0].test == "untested" and found[0].best == ("cache",)
    same = one.assign(**{"cache.hit_rate": 0.5})
    tie = stats.verdicts(same, ["base", "cache"], "base", [stats.VERDICT_METRICS[4]])[0]
    assert tie.best == () and "same value" in tie.why


@pytest.fixture(scope="module")
def identical(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace replay (no jitter) with 2 replications: identical requests."""
    root = tmp_path_factory.mktemp("identical")
    resolved = app.load(REPO / "scenarios" / "trace_mooncake.yaml", ["duration_s=30"],
                        replications=2, strategies=("round_robin", "least_kv"))
    results = app.run_all(resolved, root / "out", keep_records=False)
    assert results[0].summary["input"]["replications_identical"]
    return build_report([root / "out"], root / "report")


def test_identical_replications_are_shown_as_one_run(identical: Path) -> None:
    """No interval from replications that replayed the same requests; the page says n=1 and
    how to vary them; the trace's workload and input rows are filled; herding is a row."""
    html = identical.read_text(encoding="utf-8")
    assert "±" not in html.split('<table class="metrics">')[1].split("</table>")[0]
    assert "n=1" in html and "replications identical" in html
    assert "jitter_within_s: auto" in html
    assert re.search(r"trace \(mooncake\) [^<]*: [\d,]+ rows, [\d,]+ requests replayed, "
                     r"0 dropped, 0 beyond the context", html)
    assert "<td>input</td><td>" in html and "none dropped" in html
    assert "herding index" in html and "untested: one replication" in html
    md = (identical.parent / "summary.md").read_text(encoding="utf-8")
    assert "### Verdict" in md and "n=1" in md


def test_report_lists_dropped_rows_and_rejections(tmp_path: Path) -> None:
    """The input row names drops by reason and requests beyond the context."""
    resolved = app.load(REPO / "scenarios" / "trace_burstgpt.yaml", ["duration_s=30"],
                        strategies=("round_robin",))
    app.run_all(resolved, tmp_path / "out", keep_records=False)
    html = build_report([tmp_path / "out"], tmp_path / "report").read_text(encoding="utf-8")
    row = html.split("<td>input</td><td>")[1].split("</td>")[0]
    assert "dropped (" in row and "failed" in row and "unmapped model" in row
    assert "beyond the 8,192-token context" in row


def _estimates(names: list[str]) -> dict[str, Estimate]:
    return {s: Estimate(float(i + 1), 0.1 * (i + 1), 2) for i, s in enumerate(names)}


def test_figures_stay_readable_with_twenty_strategies() -> None:
    """20 strategies: distinct colours, the latency tail as small multiples, legends outside
    the axes, horizontal headline bars with every name on the shared axis."""
    names = [f"s{i:02d}" for i in range(20)]
    colours = plots.strategy_colours(names)
    assert len(set(colours.values())) == 20
    rng = np.random.default_rng(0)
    cdf = plots.latency_cdf({s: rng.lognormal(size=200) for s in names}, colours, what="TTFT")
    visible = [ax for ax in cdf.axes if ax.get_visible()]
    assert len(visible) == 20 and {ax.get_title() for ax in visible} == set(names)
    table = pd.DataFrame({"strategy": np.repeat(names, 5), "t_s": np.tile(np.arange(5.0), 20),
                          "cv": rng.random(100)})
    cv = plots.cv_over_time(table, names, colours, sense="busy", window=(0.0, 5.0))
    assert {ax.get_title() for ax in cv.axes if ax.get_visible()} == set(names)
    lines = table.rename(columns={"cv": "value"})
    kvq = plots.kv_and_queue(lines, lines, names, colours, window=(0.0, 5.0))
    assert kvq.legends and all(ax.get_legend() is None for ax in kvq.axes)
    bars = plots.headline_bars({"p99 TTFT (ms)": _estimates(names),
                                "goodput (req/s)": _estimates(names)}, colours,
                               lower={"p99 TTFT (ms)"})
    first = bars.axes[0]
    assert [t.get_text() for t in first.get_yticklabels()] == names
    widths = [p.get_width() for p in first.patches]
    assert widths == pytest.approx([float(i + 1) for i in range(20)])  # horizontal bars
    assert first.patches[0].get_edgecolor()[:3] == (0.0, 0.0, 0.0)  # best: lowest p99
    assert bars.axes[1].patches[-1].get_edgecolor()[:3] == (0.0, 0.0, 0.0)  # highest goodput
