"""Build the report: execute every task notebook headless, then export one PDF and one HTML.

    python report/build_report.py            # full protocol (what `make report` runs)
    MLP_SMOKE=1 python report/build_report.py  # quick smoke build (tests)

The task notebooks (notebooks/task*.ipynb, in name order, two at a time) are executed with
nbclient in notebooks/, saved to report/build/executed/, merged into one notebook with a title block, and
exported with code hidden: report/report.pdf through nbconvert's LaTeX route (xelatex) with the
template in report/templates/mlp_report, and report/report.html. Progress bars are switched off
and stderr output is dropped so that no widget or progress residue reaches the report.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
REPORT = REPO / "report"
BUILD = REPORT / "build"
TEMPLATES = REPORT / "templates"

TITLE = "Multi Layer Networks"
SUBTITLE = "Assignment 2: a multi-layer perceptron for MNIST, from scratch in numpy"
COURSE = "TDT4265 Computer Vision and Deep Learning"
DROPPED_MIME = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")


def task_notebooks(pattern: str = "task*.ipynb") -> list[Path]:
    found = sorted(NOTEBOOKS.glob(pattern))
    if not found:
        raise SystemExit(f"no notebooks match {NOTEBOOKS / pattern}")
    return found


class NotebookFailed(RuntimeError):
    """A notebook raised an error while executing."""


def execute(path: Path, out_dir: Path) -> tuple[nbformat.NotebookNode, float]:
    """Execute one notebook in notebooks/ and save the executed copy; returns it and the seconds."""
    t0 = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        nbformat.write(nb, out_dir / path.name)
        raise NotebookFailed(f"{path.name} failed while executing (partial output in "
                             f"{out_dir / path.name}):\n{exc}") from None
    nbformat.write(nb, out_dir / path.name)
    return nb, time.perf_counter() - t0


def execute_all(paths: list[Path], out_dir: Path, jobs: int) -> list[nbformat.NotebookNode]:
    """Execute the notebooks, up to `jobs` at a time in name order (each in its own process and
    kernel). Networks that several notebooks train are trained once: they share the run cache, and
    a run that one notebook is training is waited for by the others."""
    from concurrent.futures import ProcessPoolExecutor
    if jobs <= 1:
        results = [execute(p, out_dir) for p in paths]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(execute, p, out_dir) for p in paths]
            results = [f.result() for f in futures]
    for path, (_, seconds) in zip(paths, results):
        print(f"executed {path.name:40s} {seconds:7.1f} s", flush=True)
    return [nb for nb, _ in results]


def clean_outputs(cell: nbformat.NotebookNode) -> None:
    """Keep only what a reader should see: no stderr, no widget views, no empty outputs."""
    kept = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            continue
        if out.get("output_type") in ("display_data", "execute_result"):
            for mime in DROPPED_MIME:
                out.get("data", {}).pop(mime, None)
            if not out.get("data"):
                continue
            # a widget's text/plain fallback ("IntProgress(...)", "HBox(...)") is residue too
            if set(out["data"]) == {"text/plain"} and out["data"]["text/plain"].startswith(
                    ("HBox(", "VBox(", "IntProgress(", "FloatProgress(", "Output(")):
                continue
        kept.append(out)
    cell["outputs"] = kept


def merge(notebooks: list[nbformat.NotebookNode], smoke: bool) -> nbformat.NotebookNode:
    merged = nbformat.v4.new_notebook()
    built = dt.datetime.now(dt.timezone.utc).strftime("%d %B %Y, %H:%M UTC")
    note = f"Built {built}"
    if smoke:
        note += " (SMOKE BUILD: tiny training runs, the numbers are not the protocol's)"
    merged.metadata.update(title=TITLE, subtitle=SUBTITLE, course=COURSE, build_note=note,
                           kernelspec=notebooks[0].metadata.get("kernelspec", {}),
                           language_info=notebooks[0].metadata.get("language_info", {}))
    for k, nb in enumerate(notebooks):
        for i, cell in enumerate(nb.cells):
            cell = copy.deepcopy(cell)
            if "remove-cell" in cell.get("metadata", {}).get("tags", []):
                continue
            if cell.cell_type == "code":
                clean_outputs(cell)
                if not cell.outputs:
                    continue
            cell["id"] = f"nb{k}-cell{i}"
            merged.cells.append(cell)
    return merged


def export_pdf(nb: nbformat.NotebookNode, target: Path) -> None:
    from nbconvert import LatexExporter, PDFExporter
    nb = copy.deepcopy(nb)
    unbreakable_captions(nb)
    opts = dict(template_name="mlp_report", extra_template_basedirs=[str(TEMPLATES)], exclude_input=True,
                exclude_input_prompt=True, exclude_output_prompt=True)
    latex, _ = LatexExporter(**opts).from_notebook_node(nb)
    (BUILD / "report.tex").write_text(latex)  # for inspection; the PDF is built from the same nb
    exporter = PDFExporter(**opts)
    exporter.verbose = False
    pdf, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "report"}})
    target.write_bytes(pdf)


_SEPARATOR = "<!-- mlp-report-cell -->"


def pandoc_fragments(sources: list[str], to: str, *options: str) -> list[str]:
    """Convert many Markdown snippets with one pandoc call (one call per snippet would be slow)."""
    import subprocess
    if not sources:
        return []
    # HTML keeps a comment between the snippets; LaTeX keeps only text, so a word stands between them
    separator = _SEPARATOR if to == "html" else "MLPREPORTSNIPPETBREAK"
    out = subprocess.run(["pandoc", "--from=markdown", f"--to={to}", "--wrap=none", *options],
                         input=f"\n\n{separator}\n\n".join(sources), capture_output=True, text=True,
                         check=True).stdout
    fragments = out.split(separator)
    if len(fragments) != len(sources):
        raise RuntimeError(f"pandoc returned {len(fragments)} fragments for {len(sources)} pieces of Markdown")
    return fragments


def markdown_to_mathml(nb: nbformat.NotebookNode) -> None:
    """Turn every piece of Markdown (markdown cells and generated Markdown outputs) into HTML with
    MathML formulas: browsers draw MathML themselves, so the HTML report shows its mathematics
    without loading MathJax from the internet."""
    places = []  # (cell, output or None)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            places.append((cell, None))
        elif cell.cell_type == "code":
            places += [(cell, out) for out in cell.outputs if "text/markdown" in out.get("data", {})]
    sources = [cell.source if out is None else out["data"]["text/markdown"] for cell, out in places]
    for (cell, out), fragment in zip(places, pandoc_fragments(sources, "html", "--mathml")):
        # one HTML block without blank lines, so the notebook's Markdown renderer passes it through
        block = '<div class="mlp-prose">' + "\n".join(l for l in fragment.strip().splitlines() if l.strip()) + "</div>"
        if out is None:
            cell.source = block
        else:
            out["data"] = {"text/html": block}


def unbreakable_captions(nb: nbformat.NotebookNode) -> None:
    """For the PDF: set every generated figure caption ("**Figure ...") in a minipage, which LaTeX
    never splits across pages; with the \\nopagebreak after each figure, a figure and its caption
    always share a page."""
    outs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
            if out.get("data", {}).get("text/markdown", "").lstrip().startswith("**Figure")]
    latex = pandoc_fragments([out["data"]["text/markdown"] for out in outs], "latex")
    for out, fragment in zip(outs, latex):
        out["data"] = {"text/latex": "\\par\\nopagebreak\\noindent\\begin{minipage}{\\linewidth}\n"
                                     + fragment.strip() + "\n\\end{minipage}\\par"}


def export_html(nb: nbformat.NotebookNode, target: Path) -> None:
    from nbconvert import HTMLExporter
    nb = copy.deepcopy(nb)
    md = nb.metadata
    title = nbformat.v4.new_markdown_cell(
        f"# {md['title']}\n\n**{md['subtitle']}**  \n{md['course']}  \n*{md['build_note']}*")
    nb.cells.insert(0, title)
    markdown_to_mathml(nb)
    title.source = "<style>math { font-size: 1.1em; } .mlp-table caption { font-size: 0.9em; }</style>\n" + title.source
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": md["title"]}})
    target.write_text(html)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pattern", default="task*.ipynb", help="which notebooks to execute (glob in notebooks/)")
    parser.add_argument("--out", default=str(REPORT), help="folder for report.pdf and report.html")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="notebooks executed at the same time (default: 2, or 1 on a single core)")
    args = parser.parse_args(argv)

    for var in ("MPLCONFIGDIR", "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        if os.environ.get(var):
            Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
    from mlp_core import smoke_mode
    smoke = smoke_mode()
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for people, not for the report
    os.environ["MLP_REPORT"] = "1"
    # A network trained by one notebook is reused by the next (same config, same code) in this
    # build only: the cache starts empty every time.
    run_cache = BUILD / "runs"
    shutil.rmtree(run_cache, ignore_errors=True)
    os.environ["MLP_RUN_CACHE"] = str(run_cache)
    executed_dir = BUILD / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    try:
        executed = execute_all(task_notebooks(args.pattern), executed_dir, args.jobs)
    except NotebookFailed as exc:
        raise SystemExit(str(exc)) from None
    print(f"notebooks executed in {time.perf_counter() - t_start:.1f} s", flush=True)
    merged = merge(executed, smoke)
    nbformat.write(merged, BUILD / "report.ipynb")
    t0 = time.perf_counter()
    export_pdf(merged, out / "report.pdf")
    print(f"exported {out / 'report.pdf'} in {time.perf_counter() - t0:.1f} s", flush=True)
    export_html(merged, out / "report.html")
    print(f"exported {out / 'report.html'}", flush=True)
    print(f"report built in {time.perf_counter() - t_start:.1f} s{' (smoke mode)' if smoke else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
