"""The notebook runs top to bottom on a fresh checkout and is committed without outputs.

Executed with nbclient in a Jupyter kernel; skips when nbclient, nbformat or a Python kernel
is unavailable. Its results go to a temporary folder (``SIMLB_NOTEBOOK_RESULTS``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_strategies.ipynb"


def _read() -> object:
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_committed_without_outputs() -> None:
    """Outputs are stripped; the first cell is markdown naming the question and the results."""
    nb = _read()
    first = nb.cells[0]  # type: ignore[attr-defined]
    assert first.cell_type == "markdown"
    assert "Question" in first.source and "results/notebook/smoke" in first.source
    for cell in nb.cells:  # type: ignore[attr-defined]
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow
def test_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell runs without error in a fresh kernel."""
    nb = _read()
    nbclient = pytest.importorskip("nbclient")
    kernelspec = pytest.importorskip("jupyter_client.kernelspec")
    try:
        kernelspec.KernelSpecManager().get_kernel_spec("python3")
    except kernelspec.NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel (install ipykernel)")
    monkeypatch.setenv("SIMLB_NOTEBOOK_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    assert (tmp_path / "results" / "smoke" / "round_robin" / "seed-1" / "summary.json").is_file()
    errors = [o for c in nb.cells if c.cell_type == "code"  # type: ignore[attr-defined]
              for o in c.outputs if o.output_type == "error"]
    assert not errors
