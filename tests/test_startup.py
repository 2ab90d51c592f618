"""Start-up (issue 18): a synthetic run loads none of the heavy libraries it does not use.

Timing is a benchmark (``benchmarks/scenarios/one_request.yaml``, docs/performance.md); this
test checks the cause instead: after ``simlb run`` of a synthetic scenario in a fresh
interpreter, pandas, scipy and matplotlib are not among the loaded modules (pandas costs about
0.35 s of imports, scipy.special 0.2 s, matplotlib more).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUN_AND_LIST = """
import json, sys
from click.testing import CliRunner
from sim.cli import main
result = CliRunner().invoke(main, ["run", sys.argv[1], "--strategy", "round_robin",
                                   "--set", "duration_s=3", "--set", "warmup_s=0",
                                   "--out", sys.argv[2], "--quiet", "--json"])
print(json.dumps({"code": result.exit_code, "output": result.output[-500:],
                  "modules": sorted(m for m in sys.modules if "." not in m)}))
"""


def test_synthetic_run_imports_no_pandas_scipy_matplotlib(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", RUN_AND_LIST,
                           str(REPO / "scenarios" / "smoke.yaml"), str(tmp_path)],
                          capture_output=True, text=True, check=True, cwd=REPO)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, report["output"]
    assert (tmp_path / "smoke" / "round_robin" / "seed-1" / "requests.parquet").exists()
    loaded = set(report["modules"])
    assert not loaded & {"pandas", "scipy", "matplotlib"}, sorted(
        loaded & {"pandas", "scipy", "matplotlib"})


def test_help_imports_no_simulator() -> None:
    """``simlb --help`` stays fast: it loads neither numpy nor the simulation model."""
    code = ("import sys\nfrom click.testing import CliRunner\nfrom sim.cli import main\n"
            "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'pandas', 'simpy', 'sim'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=REPO)
    loaded = set(done.stdout.split())
    assert "pandas" not in loaded and "simpy" not in loaded
    assert not any(m.startswith("sim.model") for m in loaded)
