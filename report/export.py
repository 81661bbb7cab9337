"""Turning the executed task notebooks into one report: report.pdf and report.html.

* The values of the inline expressions {eval}`...` (evaluated while the notebooks ran, kept in
  each Markdown cell's `user_expressions`) are put into the text, in place of each role as
  execution.roles finds it (as jupyterlab-myst does).
* The notebooks are merged under a title block and a first page with the answer of every task
  (the Markdown cells tagged `answer`, each linked to its section), and end with a provenance
  block: commit, data, software, machine, seeds, date.
* Every reference to a figure or a table ("Figure 3.2", "Tables 3.1–3.3") must name one that has
  a caption, or the build fails.
* Export with the code hidden: the PDF through nbconvert's LaTeX route (xelatex; a LaTeX error is
  reported as one line naming the notebook cell it comes from), the HTML with MathML formulas
  and nothing fetched from the network. Both are written to temporary files first and replace the
  previous report together, only when both succeeded.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path

from execution import NotebookFailed, roles

from mlp_report import powers_as_math

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"
OUTPUTS_ONLY = dict(  # both exports: the project's templates, the cells' outputs without code
    extra_template_basedirs=[str(TEMPLATES)],
    exclude_input=True,
    exclude_input_prompt=True,
    exclude_output_prompt=True,
)
TITLE = "Multi Layer Networks"
SUBTITLE = "Assignment 2: a multi-layer perceptron for MNIST, from scratch in numpy"
COURSE = "TDT4265 Computer Vision and Deep Learning"
WIDGET_MIME = (
    "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json",
)
PROGRESS_TEXT = ("HBox(", "VBox(", "IntProgress(", "FloatProgress(", "Output(")
HEADING = re.compile(r"^(#{1,3}) (Task (\d[a-e]?))\b(.*)$", re.M)
ANSWER = re.compile(r"^\s*\*\*Task (\d[a-e])\.?\*\*\.?\s*")
CAPTION = re.compile(r"^\s*\*\*(Figure|Table) (\d+\.\d+):\*\*")
REFERENCE = re.compile(r"\b(Figures?|Tables?)\s+(\d+\.\d+(?:\s*(?:,|and|–|-|to)\s*\d+\.\d+)*)")


class ReportError(RuntimeError):
    """The report cannot be exported; the message names the notebook cell to look at."""


# ---- inline values ------------------------------------------------------------------------------


def _value_markdown(text: str) -> str:
    """An expression's plain-text value as Markdown: Markdown characters escaped, powers of ten
    (1.45 × 10⁻⁸, from mlp_report.sci) set as math."""
    text = re.sub(r"^(['\"])(.*)\1$", r"\2", text.strip(), flags=re.S)  # as jupyterlab-myst
    text = re.sub(r"([\\`*_\[\]<>#$])", r"\\\1", text)
    return powers_as_math(text)


def substitute_inline(nb, name: str) -> None:
    """Put the stored value of every inline expression into the text of its Markdown cell."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        try:
            found = roles(cell.source)
        except ValueError as exc:
            raise ReportError(f"{name}.ipynb, cell {index + 1}: {exc}") from None
        values = {}
        for entry in cell.metadata.get("user_expressions", []):
            data = entry.get("result", {}).get("data", {})
            values[entry.get("expression")] = data.get("text/plain", "")
        for role in reversed(found):  # from the end: the offsets before it stay valid
            if role.body not in values:
                raise ReportError(
                    f"{name}.ipynb, cell {index + 1}: no value for "
                    f"{cell.source[role.start : role.end]} (was the notebook executed by the "
                    "report build?)"
                )
            value = _value_markdown(values[role.body])
            cell.source = cell.source[: role.start] + value + cell.source[role.end :]
        cell.metadata.pop("user_expressions", None)


# ---- merging ------------------------------------------------------------------------------------


def clean_outputs(cell) -> None:
    """Keep what a reader should see: no stderr, no widgets or their text, no empty outputs."""
    kept = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            continue
        if out.get("output_type") in ("display_data", "execute_result"):
            data = out.get("data", {})
            for mime in WIDGET_MIME:
                data.pop(mime, None)
            text = data.get("text/plain", "")
            if not data or (set(data) == {"text/plain"} and text.startswith(PROGRESS_TEXT)):
                continue
        kept.append(out)
    cell["outputs"] = kept


def _anchor(task: str) -> str:
    return f"task-{task.lower()}"


def merge(notebooks: dict[str, object], build_note: str, provenance: str):
    """One notebook: the answers page, the task notebooks (code cells only where they show
    something, answer cells moved to the answers page), the provenance block."""
    import nbformat

    merged = nbformat.v4.new_notebook()
    first = next(iter(notebooks.values()))
    merged.metadata.update(
        title=TITLE,
        subtitle=SUBTITLE,
        course=COURSE,
        build_note=build_note,
        kernelspec=first.metadata.get("kernelspec", {}),
        language_info=first.metadata.get("language_info", {}),
    )
    answers, body, anchors = [], [], set()
    for name, nb in notebooks.items():
        for index, cell in enumerate(nb.cells):
            cell = copy.deepcopy(cell)
            cell.metadata["mlp_source"] = {"notebook": name, "cell": index + 1}
            if cell.cell_type == "markdown":
                anchors.update(_anchor(m.group(3)) for m in HEADING.finditer(cell.source))
                cell.source = HEADING.sub(
                    lambda m: f"{m.group(0)} {{#{_anchor(m.group(3))}}}", cell.source
                )
                if "answer" in cell.metadata.get("tags", []):
                    answers.append((name, index, cell.source))
                    continue
            if cell.cell_type == "code":
                clean_outputs(cell)
                if not cell.outputs:
                    continue
            cell["id"] = f"c{len(body)}"
            body.append(cell)
    lines = []
    for name, index, source in answers:
        found = ANSWER.match(source)
        if not found or _anchor(found.group(1)) not in anchors:
            raise ReportError(
                f"{name}.ipynb, cell {index + 1}: an answer cell must start with **Task 2c.** "
                f"naming a task whose section heading (## Task 2c ...) exists"
            )
        task = found.group(1)
        text = re.sub(r"[ \t\n]+", " ", source[found.end() :]).strip()  # non-breaking spaces stay
        lines.append(f"- [**{task}**](#{_anchor(task)}) {text}")
    front = "## Answers at a glance\n\n" + "\n".join(lines)
    merged.cells.append(nbformat.v4.new_markdown_cell(front, id="answers"))
    merged.cells += body
    merged.cells.append(nbformat.v4.new_markdown_cell(provenance, id="provenance"))
    return merged


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def provenance(seeds: int, smoke: bool) -> str:
    """Where the numbers of this report came from, as a Markdown section (no date: the build
    adds it to the title block, so that an unchanged report keeps its key)."""
    import numpy as np
    from threadpoolctl import threadpool_info

    import mlp_core

    commit = _git("rev-parse", "HEAD") or "not a git checkout"
    if commit != "not a git checkout" and _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    data_dir = mlp_core.mnist_dir()
    digests = []
    for spec in mlp_core.MNIST_FILES.values():
        digest = hashlib.sha256((data_dir / spec.name).read_bytes()).hexdigest()
        digests.append(f"- {spec.name}:  \n  `{digest}`")
    blas = [
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    cpu = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
        )
    except (OSError, StopIteration):
        pass
    mode = "smoke mode (tiny runs, not the protocol)" if smoke else "the full protocol"
    rows = [
        ("Code", f"commit {commit}"),
        (
            "Runs",
            f"{mode}, " + ("one seed (0)" if seeds == 1 else f"{seeds} seeds (0–{seeds - 1})"),
        ),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("numpy, BLAS", f"numpy {np.__version__}; {', '.join(blas) or 'BLAS not found'}"),
        ("Machine", f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"),
    ]
    lines = "\n".join(f"- **{key}:** {value}" for key, value in rows)
    files = "\n".join("  " + line for digest in digests for line in digest.splitlines())
    return (
        f"## Provenance\n\nWhere the numbers of this report come from.\n\n{lines}\n"
        f"- **MNIST files** (SHA-256 of each file as read):\n\n{files}\n"
    )


def build_note(smoke: bool) -> str:
    note = f"Built {dt.datetime.now(dt.timezone.utc).strftime('%d %B %Y, %H:%M UTC')}"
    if smoke:
        note += " (SMOKE BUILD: tiny training runs, the numbers are not the protocol's)"
    return note


# ---- references to figures and tables -----------------------------------------------------------


def _texts(nb):
    """(where, Markdown text) of every Markdown cell and Markdown output."""
    for cell in nb.cells:
        where = cell.metadata.get("mlp_source", {})
        place = f"{where.get('notebook', '?')}.ipynb, cell {where.get('cell', '?')}"
        if cell.cell_type == "markdown":
            yield place, cell.source
        for out in cell.get("outputs", []):
            if "text/markdown" in out.get("data", {}):
                yield place, out["data"]["text/markdown"]


def _numbers(text: str) -> list[str]:
    numbers = []
    parts = re.split(r"\s*(,|and|–|-|to)\s*", text)
    for i in range(0, len(parts), 2):
        numbers.append(parts[i])
        if i >= 2 and parts[i - 1] in ("–", "-", "to"):
            (major, low), (major2, high) = (p.split(".") for p in (parts[i - 2], parts[i]))
            if major == major2:
                numbers += [f"{major}.{n}" for n in range(int(low) + 1, int(high))]
    return numbers


def check_references(nb) -> None:
    """Every 'Figure x.y' or 'Table x.y' named in the text has a caption '**Figure x.y:**'."""
    captions = set()
    for _, text in _texts(nb):
        for paragraph in text.split("\n\n"):
            found = CAPTION.match(paragraph)
            if found:
                captions.add((found.group(1), found.group(2)))
    missing = []
    for place, text in _texts(nb):
        for found in REFERENCE.finditer(text):
            kind = "Figure" if found.group(1).startswith("Figure") else "Table"
            for number in _numbers(found.group(2)):
                if (kind, number) not in captions:
                    missing.append(f"{place} refers to {kind} {number}")
    if missing:
        raise ReportError(
            "references to figures or tables without a caption: " + "; ".join(sorted(set(missing)))
        )


# ---- export -------------------------------------------------------------------------------------


def pandoc_fragments(sources: list[str], to: str, *options: str) -> list[str]:
    """Convert many Markdown snippets with one pandoc call (nbconvert calls it twice a cell)."""
    if not sources:
        return []
    separator = "<!-- mlp-report-cell -->" if to == "html" else "MLPREPORTSNIPPETBREAK"
    result = subprocess.run(
        [
            "pandoc",
            "--from=markdown+tex_math_double_backslash",
            f"--to={to}",
            "--wrap=none",
            *options,
        ],
        input=f"\n\n{separator}\n\n".join(sources),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ReportError(f"pandoc failed: {result.stderr.strip().splitlines()[-1:]}")
    fragments = result.stdout.split(separator)
    if len(fragments) != len(sources):
        raise ReportError(f"pandoc returned {len(fragments)} pieces for {len(sources)}")
    return fragments


def markdown_places(nb) -> list[tuple]:
    """Every piece of Markdown: (Markdown cell, None) or (code cell, its Markdown output)."""
    places = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            places.append((cell, None))
        else:
            places += [
                (cell, out)
                for out in cell.get("outputs", [])
                if "text/markdown" in out.get("data", {})
            ]
    return places


def _sources(places) -> list[str]:
    return [cell.source if out is None else out["data"]["text/markdown"] for cell, out in places]


def _latex_failure(exc, latex: str, tex_file: Path) -> ReportError:
    """One line from xelatex's log: the error (TeX starts it with "! ", at the start of a line or
    right after a file it opened), the notebook cell its line of `latex` comes from, and that line
    of `tex_file` (a copy of `latex`)."""
    log = getattr(exc, "output", "") or str(exc)
    if isinstance(log, bytes):
        log = log.decode(errors="replace")
    found = re.search(r"(?:^|(?<=\)))! (.+)", log, flags=re.M)
    error = found.group(1).strip().rstrip(".") if found else "xelatex stopped, naming no error"
    line = re.search(r"^l\.(\d+)", log, flags=re.M)
    number = int(line.group(1)) if line else None
    lines = latex.splitlines()
    where = str(tex_file)
    overflow = re.search(r"bufsize=(\d+)", error)
    if number is None and overflow:  # TeX names no line for one longer than its buffer
        too_long = [n for n, text in enumerate(lines, 1) if len(text.encode()) >= int(overflow[1])]
        if too_long:
            number = too_long[0]
            where = f"line {number} of {tex_file}, {len(lines[number - 1].encode()):,} bytes long"
    elif number is not None:
        where = f"line {number} of {tex_file}"
    marks = [text for text in lines[:number] if text.startswith("% mlp-source: ")] if number else []
    if marks:
        cell = marks[-1][len("% mlp-source: ") :].strip()
        return ReportError(f"LaTeX failed on {cell}: {error} ({where})")
    return ReportError(f"LaTeX failed on {where}: {error}")


def _keep_with_table(nb, index: int) -> None:
    """Move the table caption of raw cell `index` into the table below it, both in a minipage,
    which LaTeX never splits across pages."""
    caption = nb.cells[index]
    following = nb.cells[index + 1] if index + 1 < len(nb.cells) else None
    outputs = following.get("outputs", []) if following is not None else []
    tables = [o for o in outputs if "\\begin{tabular}" in o.get("data", {}).get("text/latex", "")]
    if not tables:
        return
    mark, text = caption.source.split("\n", 1)
    table = tables[0]["data"]["text/latex"]
    tables[0]["data"]["text/latex"] = (
        f"{mark}\n\\par\\noindent\\begin{{minipage}}{{\\linewidth}}\n{text.strip()}\\par\\smallskip\n"
        f"{table}\n\\end{{minipage}}\\par\\medskip"
    )
    caption.source = mark


def export_pdf(nb, target: Path, tex_copy: Path) -> None:
    """The PDF through LaTeX, into `target` (a temporary name: publish() renames it)."""
    import nbformat
    from nbconvert import LatexExporter, PDFExporter
    from nbconvert.exporters.pdf import LatexFailed

    nb = copy.deepcopy(nb)
    places = markdown_places(nb)
    for (cell, out), fragment in zip(places, pandoc_fragments(_sources(places), "latex")):
        where = cell.metadata.get("mlp_source", {})
        notebook = where.get("notebook", "the title page")
        mark = f"% mlp-source: {notebook}.ipynb, cell {where.get('cell', '?')}\n"
        source = cell.source if out is None else out["data"]["text/markdown"]
        if CAPTION.match(source) and "Figure" in source.split(":", 1)[0]:
            # a figure's caption: in a minipage, which LaTeX never separates from its figure
            fragment = (
                "\\par\\nopagebreak\\noindent\\begin{minipage}{\\linewidth}\n"
                + fragment.strip()
                + "\n\\end{minipage}\\par"
            )
        if out is None:
            index = nb.cells.index(cell)
            nb.cells[index] = nbformat.v4.new_raw_cell(
                mark + fragment, metadata={"raw_mimetype": "text/latex"}
            )
            if CAPTION.match(source) and "Table" in source.split(":", 1)[0]:
                _keep_with_table(nb, index)
        else:
            out["data"] = {"text/latex": mark + fragment}
    options = dict(template_name="mlp_report", raw_mimetypes=["text/latex"], **OUTPUTS_ONLY)
    latex = LatexExporter(**options).from_notebook_node(nb)[0]
    write_atomic(tex_copy, latex)  # for inspection
    exporter = PDFExporter(**options)
    exporter.verbose = False
    exporter.latex_count = 1  # no cross-references or contents: one xelatex pass is the PDF
    try:
        pdf, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "report"}})
    except LatexFailed as exc:
        raise _latex_failure(exc, latex, tex_copy) from None
    target.write_bytes(pdf)


def figure_captions(nb) -> list[str]:
    """The caption of every figure in order: the next paragraph starting **Figure, as text."""
    captions = []
    pending = 0
    for cell in nb.cells:
        outputs = cell.get("outputs", [])
        texts = (
            [cell.source]
            if cell.cell_type == "markdown"
            else [o.get("data", {}).get("text/markdown", "") for o in outputs]
        )
        pending += sum(
            any(m in o.get("data", {}) for m in ("image/svg+xml", "image/png")) for o in outputs
        )
        caption = next((t for t in texts if t.lstrip().startswith("**Figure")), None)
        if caption and pending:
            captions += [re.sub(r"[*$\\{}]", "", " ".join(caption.split()))] * pending
            pending = 0
    return captions


def describe_figures(page: str, captions: list[str]) -> str:
    """Every figure of the HTML page gets its caption as its alternative text."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page, features="html.parser")
    images = soup.select(".jp-RenderedSVG img, .jp-RenderedImage img")
    if len(images) != len(captions):
        raise ReportError(
            f"{len(images)} figures in the HTML report but {len(captions)} captions: "
            f"every figure needs one"
        )
    for image, caption in zip(images, captions):
        image["alt"] = caption
    return str(soup)


HTML_STYLE = """<style>
math { font-size: 1.1em; }
.mlp-table { margin: 0.2em 0 0.8em 0; }
.jp-OutputArea-output { padding-left: var(--jp-code-padding, 5px); }  /* align with the text */
.mlp-math sub, .mlp-math sup { font-size: 0.75em; }
</style>"""


def export_html(nb, target: Path) -> None:
    """The HTML report into `target` (a temporary name: publish() renames it)."""
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
    # every piece of Markdown becomes HTML with MathML formulas, which browsers draw themselves
    for (cell, out), fragment in zip(
        places, pandoc_fragments(_sources(places), "html", "--mathml")
    ):
        lines = [line for line in fragment.strip().splitlines() if line.strip()]
        block = '<div class="mlp-prose">' + "\n".join(lines) + "</div>"
        if out is None:
            cell.source = block
        else:
            out["data"] = {"text/html": block}
    title.source = HTML_STYLE + "\n" + title.source
    exporter = HTMLExporter(template_name="mlp_html", embed_images=True, **OUTPUTS_ONLY)
    page, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": md["title"]}})
    target.write_text(describe_figures(page, captions))


@contextlib.contextmanager
def _writing(target: Path):
    """An OSError while `target` is written names `target` as its file, unless it names one in
    another folder: a failed write of an open file names none, and a temporary file beside
    `target` is not what a reader should look for."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc.filename, str) and Path(exc.filename).parent != target.parent:
            raise
        raise OSError(exc.errno, exc.strerror, str(target)) from exc


def write_atomic(target: Path, data: str | bytes) -> None:
    """Write a file so that a reader sees the old or the new content, never half of it; an
    OSError names `target`."""
    with _writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode() if isinstance(data, str) else data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)


def export(nb, out: Path, build: Path, pdf: bool) -> list[Path]:
    """Export the HTML (and the PDF) to temporary files in `out`, then replace the previous
    report with both at once; on any failure or Ctrl-C the previous report stays as it was."""
    out.mkdir(parents=True, exist_ok=True)
    targets = {"report.html": export_html}
    if pdf:
        targets["report.pdf"] = lambda nb, path: export_pdf(nb, path, build / "report.tex")
    temporary = {}
    try:
        for name, write in targets.items():
            with _writing(out / name):
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
                os.close(fd)
                temporary[name] = Path(tmp)
                write(nb, temporary[name])
                os.chmod(temporary[name], 0o644)
        for name, tmp in temporary.items():  # both exist now: the renames take microseconds
            with _writing(out / name):
                os.replace(tmp, out / name)
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)
    return [out / name for name in targets]


__all__ = [
    "NotebookFailed",
    "ReportError",
    "build_note",
    "check_references",
    "export",
    "merge",
    "provenance",
    "substitute_inline",
    "write_atomic",
]
