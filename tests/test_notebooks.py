"""Every notebook runs headless in smoke mode, and `make report`'s build produces the PDF and HTML."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("task*.ipynb"))
TASK_HEADINGS = {
    "task1": ["Task 1a", "Task 1b"],
    "task2": ["Task 2a", "Task 2b", "Task 2c", "Task 2d"],
    "task3": ["Task 3a", "Task 3b", "Task 3c"],
    "task4": ["Task 4a", "Task 4b", "Task 4c", "Task 4d", "Task 4e"],
}


@pytest.fixture(scope="module")
def smoke_env():
    old = dict(os.environ)
    os.environ.update(MLP_SMOKE="1", TQDM_DISABLE="1")
    yield
    os.environ.clear()
    os.environ.update(old)


def test_notebooks_are_committed_clean():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, smoke_env):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in TASK_HEADINGS.get(path.stem.split("_")[0], []):
        assert f"## {heading}" in text, f"{path.name} lacks the heading {heading}"


@pytest.mark.slow
def test_smoke_report_builds(tmp_path):
    env = dict(os.environ, MLP_SMOKE="1")
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, str(REPO / "report" / "build_report.py"), "--out", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pdf, html = out / "report.pdf", out / "report.html"
    assert pdf.stat().st_size > 10_000 and html.stat().st_size > 10_000
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    present = {p.stem.split("_")[0] for p in NOTEBOOKS}
    for task in sorted(present):
        for heading in TASK_HEADINGS.get(task, []):
            assert heading in text, f"the PDF lacks the heading {heading}"
    # the Task 2c table is a real table with its numbers, not code or monospace text
    assert "Table 2.2" in text and "val acc (%)" in text and "train loss" in text
    assert "import mlp_core" not in text and "def " not in text
    assert "Traceback" not in text and "it/s" not in text   # no errors, no progress-bar residue
    html_text = html.read_text()
    assert "<table" in html_text and "Table 2.2" in html_text and "Task 2c" in html_text
    assert "application/vnd.jupyter.widget-view" not in html_text
    assert "<math" in html_text and "$\\mu$" not in html_text  # formulas as MathML, drawn offline
