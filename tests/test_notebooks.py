"""Execute notebooks/quickstart.ipynb end to end (service, curation job, training) with nbclient.

The committed notebook has no outputs; the test runs a copy in a kernel on this interpreter
(a kernelspec written to a temporary JUPYTER_PATH, so no user-wide kernel registration is needed
and the kernel can import the project's packages), then checks that no cell raised and that the
training cell printed five finite losses.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
KERNEL = "flywheel-test-python"


@pytest.fixture
def kernel_on_this_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (flywheel test)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return output["text"]
    return output.get("data", {}).get("text/plain", "")


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path: Path, kernel_on_this_python: str, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"

    monkeypatch.setenv("QUICKSTART_DIR", str(tmp_path / "quickstart"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, kernel_name=kernel_on_this_python, timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    nbformat.write(nb, tmp_path / "quickstart.executed.ipynb")  # kept for a failing run's inspection

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]
    assert errors == []

    loss_lines = [line for o in outputs for line in _text(o).splitlines() if line.startswith("losses:")]
    assert len(loss_lines) == 1
    losses = json.loads(loss_lines[0].removeprefix("losses:"))
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    assert any(o["output_type"] == "display_data" and "image/png" in o["data"] for o in outputs)
    assert "service stopped" in "".join(_text(o) for o in outputs)
