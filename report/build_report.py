"""Build the report: train what the task notebooks need, execute them, export one PDF and one HTML.

    python report/build_report.py                 # what `make report` runs (full protocol, 3 seeds)
    MLP_SMOKE=1 python report/build_report.py     # a quick smoke build (tests)
    python report/build_report.py --strict        # a claim the runs do not support fails the build
    python report/build_report.py --fresh         # retrain every run instead of reusing the store

1. Plan: the cell tagged `experiments` of every task notebook (notebooks/task*.ipynb) is run on its
   own to list the networks it needs. Runs found in the run store (mlp_runs) are reused; the others
   are trained in one pool of worker processes, under one progress bar.
2. The notebooks are executed (up to four at a time, kernels over IPC) against the store. A notebook
   whose source, code and runs are unchanged since the last build is not executed again.
3. They are merged under a title block and exported with the code hidden: report/report.pdf through
   nbconvert's LaTeX route (xelatex, template in report/templates/mlp_report) and report/report.html
   (MathML formulas, no network requests). Both are written to temporary files and renamed: an
   interrupted or failed build leaves the previous report untouched. Without LaTeX the HTML is
   still built, and the output says how to get the PDF.

Claims the runs do not support (mlp_report.check) are listed at the end; with --strict they fail
the build, naming the claim. Ctrl-C stops the build within seconds: workers and kernels are ended
and finished runs stay in the store.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS, REPORT = REPO / "notebooks", REPO / "report"
BUILD = Path(
    os.environ.get("MLP_REPORT_BUILD") or REPORT / "build"
)  # executed notebooks, the merged notebook, report.tex
TEMPLATES = REPORT / "templates"
CACHE = REPO / ".cache"
TITLE = "Multi Layer Networks"
SUBTITLE = "Assignment 2: a multi-layer perceptron for MNIST, from scratch in numpy"
COURSE = "TDT4265 Computer Vision and Deep Learning"
WIDGET_MIME = (
    "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json",
)


def say(text: str) -> None:
    print(text, flush=True)


def _environment() -> None:
    """Caches in the project (never $HOME); what the notebooks' kernels inherit; quiet libraries."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # kernels killed by Ctrl-C are expected
    for var, sub in (
        ("MPLCONFIGDIR", "matplotlib"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTER_CONFIG_DIR", "jupyter/config"),
        ("JUPYTER_DATA_DIR", "jupyter/data"),
        ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"),
    ):
        os.environ.setdefault(var, str(CACHE / sub))
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
    os.environ["MLP_STRICT"] = (
        "0"  # kernels only note unsupported claims; the build decides what they mean
    )
    os.environ["MPLBACKEND"] = (
        "module://matplotlib_inline.backend_inline"  # figures as outputs, whatever the caller set
    )
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # no debugger chatter from the kernels


# ---- 1. the plan ----------------------------------------------------------------------------------------


def notebook_experiments(path: Path):
    """Run a notebook's `experiments` cell on its own and return its EXPERIMENTS."""
    import nbformat

    import mlp_core
    import mlp_report

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "experiments" in c.metadata.get("tags", [])]
    namespace = {"mlp": mlp_core, "rep": mlp_report}
    for cell in cells:
        exec(compile(cell.source, f"{path.name} (experiments cell)", "exec"), namespace)  # noqa: S102
    return namespace.get("EXPERIMENTS")


def train_plan(paths: list[Path], fresh: bool) -> dict:
    """Train every run the notebooks need that the store does not hold; returns counts for the summary."""
    import mlp_runs

    configs = []
    for path in paths:
        exps = notebook_experiments(path)
        configs += exps.configs() if exps is not None else []
    store = mlp_runs.RunStore()
    unique = {c.replace(name=""): c for c in configs}
    if fresh:
        for config in unique:
            store.path(config).unlink(missing_ok=True)
    stored = sum(config in store for config in unique)
    folder = store.folder.relative_to(REPO) if store.folder.is_relative_to(REPO) else store.folder
    say(
        f"Plan: {len(unique)} runs for {len(paths)} notebooks; {stored} in the run store ({folder}), {len(unique) - stored} to train."
    )
    t0 = time.perf_counter()
    # every run goes through run_experiments: a damaged stored entry is then named and retrained here
    histories = mlp_runs.run_experiments(list(unique.values()), store=store, desc="training")
    return {
        "runs": len(unique),
        "trained": len(unique) - stored,
        "reused": stored,
        "train_seconds": time.perf_counter() - t0,
        "failed": [h.config.label for h in histories if not h.completed],
    }


# ---- 2. executing the notebooks ---------------------------------------------------------------------------


def project_modules(text: str, found: set[str] | None = None) -> set[str]:
    """The project's modules that code importing them needs, found from its `import` lines."""
    found = set() if found is None else found
    for name in re.findall(r"^\s*(?:import|from)\s+(\w+)", text, flags=re.M):
        if name not in found and (REPO / f"{name}.py").exists():
            found.add(name)
            project_modules((REPO / f"{name}.py").read_text(), found)
    return found


def source_key(path: Path, smoke: bool) -> str:
    """What an executed notebook depends on: its source, the project modules it imports (whose code
    covers the run store's keys) and the settings. Strict mode changes nothing a build keeps."""
    import nbformat

    digest = hashlib.sha256(path.read_bytes())
    code = "\n".join(
        c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"
    )
    for module in sorted(project_modules(code)):
        digest.update((REPO / f"{module}.py").read_bytes())
    digest.update(json.dumps([smoke, os.environ.get("MLP_SEEDS", "")]).encode())
    return digest.hexdigest()


class NotebookFailed(RuntimeError):
    """A notebook raised an error while executing; the message names the notebook and the error."""


async def _execute(path: Path, out: Path, kernels: list, stopping) -> float:
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    if stopping.is_set():  # Ctrl-C came: start no more kernels
        raise asyncio.CancelledError
    # IPC sockets in the runtime folder: no TCP ports, and no "running over TCP" warning from the kernel
    ipc = Path(os.environ["JUPYTER_RUNTIME_DIR"]) / f"mlp-{os.getpid()}-{path.stem.split('_')[0]}"
    km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(ipc))
    kernels.append(km)
    client = NotebookClient(
        nb, km=km, timeout=None, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    t0 = time.perf_counter()
    try:
        await client.async_execute()
    except CellExecutionError as exc:
        write_atomic(out.with_suffix(".failed.ipynb"), nbformat.writes(nb))
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the traceback's terminal colours
        raise NotebookFailed(f"{path.name}: {text[-2500:]}") from None
    nb.metadata["mlp_build_key"] = out.stem
    write_atomic(out, nbformat.writes(nb))
    return time.perf_counter() - t0


async def _execute_all(
    todo: list[tuple[Path, Path]], jobs: int, kernels: list, stopping
) -> dict[str, float]:
    semaphore, seconds = asyncio.Semaphore(jobs), {}

    async def one(path: Path, out: Path):
        async with semaphore:
            say(f"  executing {path.stem} …")
            seconds[path.stem] = await _execute(path, out, kernels, stopping)
            say(f"  executed {path.stem} in {seconds[path.stem]:.1f} s")

    await asyncio.gather(*(one(path, out) for path, out in todo))
    return seconds


def execute_notebooks(paths: list[Path], smoke: bool, jobs: int) -> tuple[list, dict]:
    """Execute the notebooks that changed since the last build; returns the executed notebooks (in
    order) and per-notebook seconds (None for a notebook reused from the last build)."""
    import nbformat

    cache = BUILD / "executed"
    cache.mkdir(parents=True, exist_ok=True)
    outs = {p: cache / f"{p.stem}-{source_key(p, smoke)[:20]}.ipynb" for p in paths}
    todo = [(p, out) for p, out in outs.items() if not out.exists()]
    for p, out in outs.items():  # executed copies of older sources are of no further use
        for old in cache.glob(f"{p.stem}-*.ipynb"):
            if old != out:
                old.unlink()
    kernels: list = []
    say(
        f"Notebooks: {len(paths) - len(todo)} unchanged since the last build, {len(todo)} to execute."
    )
    stopping = threading.Event()
    seconds = (
        run_interruptibly(lambda: _execute_all(todo, jobs, kernels, stopping), kernels, stopping)
        if todo
        else {}
    )
    return [nbformat.read(outs[p], as_version=4) for p in paths], {
        p.stem: seconds.get(p.stem) for p in paths
    }


def run_interruptibly(make_coroutine, kernels: list, stopping):
    """Run the notebooks' event loop in a thread of its own, so that Ctrl-C always reaches this one
    (nbclient would otherwise take SIGINT over on the loop), then end the kernels at once: a busy
    kernel would not answer a shutdown request. A second Ctrl-C is ignored while that happens."""
    loop, outcome = asyncio.new_event_loop(), {}

    def run():
        try:
            outcome["result"] = loop.run_until_complete(make_coroutine())
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="notebooks", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopping.set()
        _kill_kernels(kernels)
        loop.call_soon_threadsafe(lambda: [task.cancel() for task in asyncio.all_tasks(loop)])
        thread.join(2)
        raise
    finally:
        _kill_kernels(kernels)
    if "error" in outcome:
        raise outcome["error"]
    loop.close()
    return outcome["result"]


def _kill_kernels(kernels: list) -> None:
    """Make sure no kernel outlives the build (nbclient shuts them down; this covers an interrupt),
    and remove their IPC socket files."""
    for km in kernels:
        pid = getattr(getattr(km, "provisioner", None), "pid", None)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)  # kernels run in their own session and process group
            except (ProcessLookupError, PermissionError):
                pass
        for socket_file in Path(km.ip).parent.glob(Path(km.ip).name + "-*"):
            socket_file.unlink(missing_ok=True)


# ---- 3. merging and exporting ------------------------------------------------------------------------------


def write_atomic(target: Path, data: str | bytes) -> None:
    """Write a file so that a reader sees the old or the new content, never half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def clean_outputs(cell) -> None:
    """Keep only what a reader should see: no stderr, no widgets or their text fallbacks, no empty outputs."""
    kept = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            continue
        if out.get("output_type") in ("display_data", "execute_result"):
            for mime in WIDGET_MIME:
                out.get("data", {}).pop(mime, None)
            text = out.get("data", {}).get("text/plain", "")
            if not out.get("data") or (
                set(out["data"]) == {"text/plain"}
                and text.startswith(("HBox(", "VBox(", "IntProgress(", "FloatProgress(", "Output("))
            ):
                continue
        kept.append(out)
    cell["outputs"] = kept


def unsupported_claims(nb) -> list[str]:
    return [
        out["metadata"]["mlp_claim"]["claim"]
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if "mlp_claim" in out.get("metadata", {})
    ]


def strict_failures(paths: list[Path], notebooks: list) -> list[str]:
    """Under --strict, the unsupported claims of the notebooks (executed now or reused), as errors."""
    return [
        f"{path.name}: claim not supported by these runs: {claim!r}"
        for path, nb in zip(paths, notebooks)
        for claim in unsupported_claims(nb)
    ]


def merge(notebooks: list, smoke: bool) -> object:
    import nbformat

    merged = nbformat.v4.new_notebook()
    note = f"Built {dt.datetime.now(dt.timezone.utc).strftime('%d %B %Y, %H:%M UTC')}"
    if smoke:
        note += " (SMOKE BUILD: tiny training runs, the numbers are not the protocol's)"
    merged.metadata.update(
        title=TITLE,
        subtitle=SUBTITLE,
        course=COURSE,
        build_note=note,
        kernelspec=notebooks[0].metadata.get("kernelspec", {}),
        language_info=notebooks[0].metadata.get("language_info", {}),
    )
    for k, nb in enumerate(notebooks):
        for i, cell in enumerate(nb.cells):
            cell = copy.deepcopy(cell)
            if cell.cell_type == "code":
                clean_outputs(cell)
                if not cell.outputs:
                    continue
            cell["id"] = f"nb{k}-cell{i}"
            merged.cells.append(cell)
    return merged


def pandoc_fragments(
    sources: list[str], to: str, *options: str, source_format: str = "markdown"
) -> list[str]:
    """Convert many Markdown snippets with one pandoc call (nbconvert calls pandoc twice per cell)."""
    if not sources:
        return []
    separator = "<!-- mlp-report-cell -->" if to == "html" else "MLPREPORTSNIPPETBREAK"
    out = subprocess.run(
        ["pandoc", f"--from={source_format}", f"--to={to}", "--wrap=none", *options],
        input=f"\n\n{separator}\n\n".join(sources),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fragments = out.split(separator)
    if len(fragments) != len(sources):
        raise RuntimeError(
            f"pandoc returned {len(fragments)} fragments for {len(sources)} pieces of Markdown"
        )
    return fragments


def markdown_places(nb) -> list[tuple]:
    """Every piece of Markdown of the notebook: (markdown cell, None) or (code cell, its Markdown output)."""
    return [
        (cell, None) if cell.cell_type == "markdown" else (cell, out)
        for cell in nb.cells
        for out in ([None] if cell.cell_type == "markdown" else cell.get("outputs", []))
        if out is None or "text/markdown" in out.get("data", {})
    ]


def export_pdf(nb, target: Path) -> None:
    import nbformat
    from nbconvert import LatexExporter, PDFExporter

    nb = copy.deepcopy(nb)
    places = markdown_places(nb)
    sources = [cell.source if out is None else out["data"]["text/markdown"] for cell, out in places]
    latex = pandoc_fragments(sources, "latex", source_format="markdown+tex_math_double_backslash")
    for (cell, out), source, fragment in zip(places, sources, latex):
        if source.lstrip().startswith(
            "**Figure"
        ):  # a caption: in a minipage, which LaTeX never splits from its figure
            fragment = (
                "\\par\\nopagebreak\\noindent\\begin{minipage}{\\linewidth}\n"
                + fragment.strip()
                + "\n\\end{minipage}\\par"
            )
        if out is None:
            nb.cells[nb.cells.index(cell)] = nbformat.v4.new_raw_cell(
                fragment, metadata={"raw_mimetype": "text/latex"}
            )
        else:
            out["data"] = {"text/latex": fragment}
    opts = dict(
        template_name="mlp_report",
        extra_template_basedirs=[str(TEMPLATES)],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        raw_mimetypes=["text/latex"],
    )
    write_atomic(
        BUILD / "report.tex", LatexExporter(**opts).from_notebook_node(nb)[0]
    )  # for inspection
    exporter = PDFExporter(**opts)
    exporter.verbose = False
    exporter.latex_count = (
        1  # no cross-references or table of contents: one xelatex pass is the whole PDF
    )
    pdf, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "report"}})
    write_atomic(target, pdf)


def figure_captions(nb) -> list[str]:
    """The caption of every figure, in order: the next paragraph that starts with **Figure, as plain text."""
    captions, pending = [], 0
    for cell in nb.cells:
        texts = (
            [cell.source]
            if cell.cell_type == "markdown"
            else [o.get("data", {}).get("text/markdown", "") for o in cell.get("outputs", [])]
        )
        pending += sum(
            any(m in o.get("data", {}) for m in ("image/svg+xml", "image/png"))
            for o in cell.get("outputs", [])
        )
        caption = next((t for t in texts if t.lstrip().startswith("**Figure")), None)
        if caption and pending:
            captions += [re.sub(r"[*$\\{}]", "", " ".join(caption.split()))] * pending
            pending = 0
    return captions


def describe_figures(page: str, captions: list[str]) -> str:
    """Give every figure of the HTML page its caption as its alternative text (nbconvert writes "No
    description has been provided for this image")."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page, features="html.parser")
    images = soup.select(".jp-RenderedSVG img, .jp-RenderedImage img")
    if len(images) != len(captions):
        raise RuntimeError(
            f"{len(images)} figures in the HTML report but {len(captions)} captions: every figure needs one"
        )
    for image, caption in zip(images, captions):
        image["alt"] = caption
    return str(soup)


HTML_STYLE = """<style>
math { font-size: 1.1em; }
.mlp-table caption { font-size: 0.9em; caption-side: top; text-align: left; padding-bottom: 0.4em; }
.jp-OutputArea-output { padding-left: var(--jp-code-padding, 5px); }  /* align with the written text */
.mlp-math sub, .mlp-math sup { font-size: 0.75em; }
</style>"""


def export_html(nb, target: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    md = nb.metadata
    title = nbformat.v4.new_markdown_cell(
        f"# {md['title']}\n\n**{md['subtitle']}**  \n{md['course']}  \n*{md['build_note']}*"
    )
    nb.cells.insert(0, title)
    captions = figure_captions(nb)
    places = markdown_places(nb)
    sources = [cell.source if out is None else out["data"]["text/markdown"] for cell, out in places]
    # every piece of Markdown becomes HTML with MathML formulas, which browsers draw themselves
    for (cell, out), fragment in zip(places, pandoc_fragments(sources, "html", "--mathml")):
        block = (
            '<div class="mlp-prose">'
            + "\n".join(line for line in fragment.strip().splitlines() if line.strip())
            + "</div>"
        )
        if out is None:
            cell.source = block
        else:
            out["data"] = {"text/html": block}
    title.source = HTML_STYLE + "\n" + title.source
    exporter = HTMLExporter(
        template_name="mlp_html",
        extra_template_basedirs=[str(TEMPLATES)],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    page, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": md["title"]}})
    write_atomic(target, describe_figures(page, captions))


# ---- the build ------------------------------------------------------------------------------------------------


def missing_tools() -> list[str]:
    return [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pattern", default="task*.ipynb", help="which notebooks to build (glob in notebooks/)"
    )
    parser.add_argument("--out", default=str(REPORT), help="folder for report.pdf and report.html")
    parser.add_argument(
        "--jobs",
        type=int,
        default=4,
        help="notebooks executed at a time (default 4: their kernels spend much of their time waiting)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on a claim the runs do not support"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="retrain every run instead of reusing the run store"
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import mlp_report

    smoke, strict = mlp_report.smoke_mode(), args.strict or mlp_report.strict_mode()
    _environment()
    paths = sorted(NOTEBOOKS.glob(args.pattern))
    if not paths:
        raise SystemExit(f"no notebooks match {NOTEBOOKS / args.pattern}")
    out = Path(args.out)
    t_start = time.perf_counter()
    say(
        f"Building the report ({'smoke mode' if smoke else 'full protocol'}, {mlp_report.n_seeds()} seed(s) per network"
        f"{', strict claims' if strict else ''})."
    )
    try:
        counts = train_plan(paths, args.fresh)
        notebooks, seconds = execute_notebooks(paths, smoke, args.jobs)
        if strict and (failures := strict_failures(paths, notebooks)):
            raise NotebookFailed("\n".join(failures))
        merged = merge(notebooks, smoke)
        t0, lacking = time.perf_counter(), missing_tools()
        content = hashlib.sha256(
            json.dumps([merged.cells, lacking, str(out)], sort_keys=True).encode()
        ).hexdigest()
        wanted = ["report.html"] + ([] if lacking else ["report.pdf"])
        unchanged = (
            (BUILD / "report.key").exists()
            and (BUILD / "report.key").read_text() == content
            and all((out / name).exists() for name in wanted)
        )
        if not unchanged:
            write_atomic(BUILD / "report.ipynb", json.dumps(merged, indent=1))
            export_html(merged, out / "report.html") if shutil.which("pandoc") else None
            if not lacking:
                export_pdf(merged, out / "report.pdf")
            write_atomic(BUILD / "report.key", content)
        exported = time.perf_counter() - t0
    except KeyboardInterrupt:
        signal.signal(
            signal.SIGINT, signal.SIG_IGN
        )  # a second Ctrl-C cannot interrupt the clean-up
        say(
            "\nInterrupted: finished runs are kept in the run store; the previous report (if any) is untouched."
        )
        return 130
    except NotebookFailed as exc:
        say(f"\nThe build failed, the previous report (if any) is untouched.\n{exc}")
        return 1
    say("")
    say(
        f"Report built in {time.perf_counter() - t_start:.0f} s: runs {counts['trained']} trained and {counts['reused']} reused "
        f"({counts['train_seconds']:.0f} s); notebooks "
        + ", ".join(
            f"{name.split('_')[0]} {'reused' if s is None else f'{s:.1f} s'}"
            for name, s in seconds.items()
        )
        + (
            "; the report itself is unchanged, so it was kept."
            if unchanged
            else f"; export {exported:.1f} s."
        )
    )
    if lacking:
        say(
            f"Only report/report.html was written: {', '.join(lacking)} not found. For the PDF install them "
            f"(Debian/Ubuntu: `make system-deps`, macOS: `brew install pandoc basictex`), then run `make report` again."
        )
    else:
        say(f"  {out / 'report.pdf'}\n  {out / 'report.html'}")
    if counts["failed"]:
        say(f"Runs that did not complete (left out of the tables): {', '.join(counts['failed'])}.")
    claims = [
        f"{nb_path.stem}: {claim}"
        for nb_path, nb in zip(paths, notebooks)
        for claim in unsupported_claims(nb)
    ]
    write_atomic(BUILD / "claims.txt", "".join(f"{c}\n" for c in claims))
    if claims:
        say(
            f"{len(claims)} claim(s) not supported by these runs, marked in the report"
            + (
                " (expected in a smoke build or with one seed)"
                if smoke or mlp_report.n_seeds() < 2
                else ""
            )
            + ":"
        )
        for claim in claims[:10]:
            say(f"  {claim}")
        if len(claims) > 10:
            say(f"  … and {len(claims) - 10} more: report/build/claims.txt lists them all.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
