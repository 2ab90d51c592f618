"""Open the report in headless Chromium: it renders, every image loads, nothing errors.

The page carries a small script that records script errors, content-policy violations (any
attempt to fetch from the network) and images that failed to load into ``#render-check``;
Chromium's ``--dump-dom`` gives the DOM after the load event, and its console goes to stderr
(``--enable-logging=stderr``), where any console message fails the test. A full-page screenshot
is kept as ``tests/artifacts/report.png`` (git-ignored).

A second report, of 20 strategies (16 registered strategies and four labelled round-robin
copies on a 12-second smoke scenario), checks that many strategies stay readable: the page is
no wider than the window (wide tables scroll inside their box), the verdict names a best
strategy per headline metric, and its screenshot is ``tests/artifacts/report-20.png``.

Skips when Chromium is absent (``.ci/run`` installs Debian's ``chromium`` where it can). Set
``SIMLB_BROWSER_RESULTS`` to a results folder (e.g. ``results/bursty``) to check that report
instead of the smoke scenario's; its screenshot is ``tests/artifacts/report-<folder>.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report_build import smoke_report

from sim.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


class _CheckFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str | None] = {}
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.images += tag == "img"
        if dict(attrs).get("id") == "render-check":
            self.attrs = dict(attrs)


def render_check(index: Path, profile: Path, width: int = 1400) -> dict[str, object]:
    """Load ``index`` in Chromium (a ``width``-pixel window); the render-check record and any
    console lines."""
    done = _chromium([f"--window-size={width},2000", "--dump-dom", index.as_uri()], profile)
    assert done.returncode == 0, done.stderr[-2000:]
    finder = _CheckFinder()
    finder.feed(done.stdout)
    attrs = finder.attrs
    return {"status": attrs.get("data-status"), "images": int(attrs.get("data-images") or -1),
            "img_tags": finder.images,
            "broken": json.loads(attrs.get("data-broken") or "null"),
            "errors": json.loads(attrs.get("data-errors") or "null"),
            "overflow_x": int(attrs.get("data-overflow-x") or -1),
            "console": [line for line in done.stderr.splitlines() if ":CONSOLE" in line]}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The report to check and the name of its screenshot."""
    other = os.environ.get("SIMLB_BROWSER_RESULTS")
    if not other:
        return smoke_report(tmp_path_factory) / "index.html", "report.png"
    out = tmp_path_factory.mktemp("browser-report") / "report"
    return build_report([other], out), f"report-{Path(other).resolve().name}.png"


def test_report_renders_every_image_without_errors(report: tuple[Path, str],
                                                   tmp_path: Path) -> None:
    """Every <img> loads (naturalWidth > 0), no script error, no blocked fetch, no console."""
    index, _ = report
    check = render_check(index, tmp_path / "profile")
    assert check["status"] == "ok", check
    assert check["images"] == check["img_tags"] >= 7
    assert check["broken"] == [] and check["errors"] == []
    assert check["console"] == []


def test_screenshot_is_kept_as_an_artefact(report: tuple[Path, str], tmp_path: Path) -> None:
    """A full-page screenshot lands in tests/artifacts/ (git-ignored)."""
    index, name = report
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    done = _chromium(["--hide-scrollbars", "--window-size=1280,9000",
                      f"--screenshot={shot}", index.as_uri()], tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_render_check_catches_broken_images_and_fetches(report: tuple[Path, str],
                                                        tmp_path: Path) -> None:
    """Negative control: a broken image and a network image make the check fail."""
    index, _ = report
    html = index.read_text(encoding="utf-8")
    bad = ('<img alt="broken-one" src="data:image/png;base64,AAAA">'
           '<img alt="remote-one" src="https://example.invalid/x.png">')
    page = tmp_path / "bad.html"
    page.write_text(re.sub(r"<main>", "<main>" + bad, html, count=1), encoding="utf-8")
    check = render_check(page, tmp_path / "profile")
    assert check["status"] == "failed"
    assert {"broken-one", "remote-one"} <= set(check["broken"])  # type: ignore[arg-type]
    assert any("content policy" in e for e in check["errors"])  # type: ignore[union-attr]


#: the 20-strategy report: 16 registered strategies and four labelled round-robin copies
TWENTY = ["round_robin", "random", "least_loaded", "power_of_two", "jsq", "least_kv",
          "least_work", "cache_locality", "consistent_hash", "dynamo_kv", "llm_d",
          "sglang_cache_aware", "token_aware", "session_affinity", "hash", "dynamic"]


@pytest.fixture(scope="module")
def twenty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of 20 strategies x 2 replications of a 12-second smoke scenario."""
    import yaml
    from test_report_build import SMOKE

    from sim import app

    root = tmp_path_factory.mktemp("twenty")
    raw = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    raw.update(name="twenty", duration_s=12, warmup_s=2, replications=2)
    raw["router"]["strategies"] = [{"name": n} for n in TWENTY] + [
        {"name": "round_robin", "label": f"rr{i}"} for i in range(1, 5)]
    scenario = root / "twenty.yaml"
    scenario.write_text(yaml.safe_dump(raw), encoding="utf-8")
    app.run_all(app.load(scenario), root / "out", keep_records=False)
    return build_report([root / "out" / "twenty"], root / "report")


@pytest.mark.slow
def test_twenty_strategies_render_and_fit_the_window(twenty: Path, tmp_path: Path) -> None:
    """With 20 strategies every figure loads, nothing errors, the page does not overflow a
    1400-pixel window, and a screenshot is kept (tests/artifacts/report-20.png)."""
    check = render_check(twenty, tmp_path / "profile")
    assert check["status"] == "ok", check
    assert check["overflow_x"] == 0, check
    html = twenty.read_text(encoding="utf-8")
    assert html.count('class="verdict"') == 1 and "headline metrics" in html
    assert all(f">{name}<" in html or f">{name} <" in html for name in ("rr4", "dynamic"))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-20.png"
    shot.unlink(missing_ok=True)
    done = _chromium(["--hide-scrollbars", "--window-size=1400,2000", f"--screenshot={shot}",
                      twenty.as_uri()], tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
