"""The report build's mechanics, on tiny notebooks of their own (seconds each, no training):
inline expressions, the answers page, checked references, the PDF and HTML replaced together,
nothing written when nothing changed, short private runtime files, builds with different
settings side by side, and errors of one or two lines."""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import interrupts
import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "report" / "build_report.py"
sys.path.insert(0, str(BUILD.parent))  # build_report and export, for the tests that call them
needs_latex = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("xelatex", "pandoc")),
    reason="xelatex or pandoc not found: install them with `sudo make system-deps`",
)
needs_pandoc = pytest.mark.skipif(shutil.which("pandoc") is None, reason="pandoc not found")

TINY = [
    ("markdown", "# Task 9 — A tiny section\n\n## Task 9a — Numbers"),
    ("code", "x = 2.5\nbig = 1.45e-8"),
    ("markdown", "Two and a half is {eval}`x`; small is {eval}`rep.sci(big)`, see Table 9.1."),
    ("markdown", "**Table 9.1:** A table."),
    ("code", "import pandas as pd\n\nrep.Table(pd.DataFrame({'a': [1]}))"),
    ("markdown", "**Task 9a.** The answer is {eval}`x`."),
]


def notebook(folder: Path, name: str, cells=TINY) -> Path:
    """Write a tiny task notebook; its last cell is tagged as the answer."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells.append(nbformat.v4.new_code_cell("import mlp_report as rep"))
    for i, (kind, source) in enumerate(cells, start=1):
        cell = (nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell)(
            source
        )
        if i == len(cells):
            cell.metadata["tags"] = ["answer"]
        nb.cells.append(cell)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def env(tmp_path):
    """Smoke mode with private store, build folder and temporary folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    environment = dict(
        os.environ,
        MLP_SMOKE="1",
        MLP_RUN_STORE=str(tmp_path / "runs"),
        MLP_REPORT_BUILD=str(tmp_path / "build"),
        TMPDIR=str(tmp),
        MLP_STRICT="0",
    )
    for name in ("MLP_SEEDS", "MLP_FRESH", "MLP_VERBOSE"):
        environment.pop(name, None)
    return environment


def build(env, notebooks: Path, out: Path, **extra) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BUILD), "--notebooks", str(notebooks), "--out", str(out)]
    return subprocess.run(
        command, cwd=REPO, env=dict(env, **extra), capture_output=True, text=True, timeout=600
    )


def failure(result) -> list[str]:
    """The lines after 'The build failed' (the short message), and the whole output's check."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text[-3000:]
    lines = text.split("The build failed; the previous report is untouched.\n", 1)[1]
    return [line for line in lines.splitlines() if line.strip()]


@needs_pandoc
def test_inline_values_go_into_the_text_and_the_answers_page(env, tmp_path):
    notebook(tmp_path / "nb", "task9_tiny")
    result = build(env, tmp_path / "nb", tmp_path / "out")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Two and a half is 2.5; small is" in page and "{eval}" not in page
    assert "<msup>" in page and "Answers at a glance" in page
    assert 'href="#task-9a"' in page and 'id="task-9a"' in page
    assert page.count("The answer is 2.5.") == 1  # moved to the answers page, not repeated
    assert "Provenance" in page and "SHA-256" in page and "train-images-idx3-ubyte.gz" in page


@needs_pandoc
@pytest.mark.parametrize(
    "text, message",
    [
        (
            "A value: {eval}`undefined_name + 1`.",
            "the inline expression {eval}`undefined_name + 1` failed: NameError: name "
            "'undefined_name' is not defined",
        ),
        (
            "A value: {eval}`x, never closed.",
            "'{eval}`x, never closed.' holds an {eval} that is not a role: write "
            "{eval}`expression`, or {eval}``expression`` when the expression holds a backtick",
        ),
    ],
    ids=["failing", "not a role"],
)
def test_an_inline_expression_that_cannot_be_shown_names_its_cell(env, tmp_path, text, message):
    cells = list(TINY)
    cells[2] = ("markdown", text)
    notebook(tmp_path / "nb", "task9_tiny", cells)
    result = build(env, tmp_path / "nb", tmp_path / "out")
    assert result.returncode == 1
    lines = failure(result)
    assert lines[0] == f"task9_tiny.ipynb, cell 4 (Markdown): {message}"
    assert len(lines) <= 2 and not (tmp_path / "out" / "report.html").exists()


@needs_pandoc
def test_a_double_backtick_role_is_evaluated(env, tmp_path):
    """``{eval}``"`"`` (two backticks around an expression that holds one, the Markdown way and
    jupyterlab-myst's) is evaluated like any other role, not printed as typed."""
    cells = list(TINY)
    cells[2] = ("markdown", 'A backtick: {eval}``"`"``; and {eval}`x`, see Table 9.1.')
    notebook(tmp_path / "nb", "task9_tiny", cells)
    result = build(env, tmp_path / "nb", tmp_path / "out")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "A backtick: `; and 2.5, see" in page and "{eval}" not in page


@needs_pandoc
def test_a_raw_numpy_number_in_the_text_is_refused(env, tmp_path):
    """numpy 2 shows np.float64(2.5) for a bare number: the build asks for a formatter."""
    cells = list(TINY)
    cells[1] = ("code", "import numpy as np\n\nx = np.float64(2.5)\nbig = 1.45e-8")
    notebook(tmp_path / "nb", "task9_tiny", cells)
    result = build(env, tmp_path / "nb", tmp_path / "out")
    assert result.returncode == 1
    (line, *_) = failure(result)
    assert line.startswith("task9_tiny.ipynb, cell 4 (Markdown): {eval}`x` is a numpy number")


@needs_pandoc
def test_a_reference_without_a_caption_fails_the_build(env, tmp_path):
    cells = list(TINY)
    cells[2] = ("markdown", "Figure 9.4 shows nothing, and Tables 9.1–9.2 are named.")
    notebook(tmp_path / "nb", "task9_tiny", cells)
    result = build(env, tmp_path / "nb", tmp_path / "out")
    assert result.returncode == 1
    (line, *_) = failure(result)
    assert "task9_tiny.ipynb, cell 4 refers to Figure 9.4" in line
    assert "refers to Table 9.2" in line and "Table 9.1" not in line


@needs_latex
def test_a_latex_error_names_its_cell_and_leaves_both_old_files(env, tmp_path):
    notebook(tmp_path / "nb", "task9_tiny")
    out = tmp_path / "out"
    assert build(env, tmp_path / "nb", out).returncode == 0
    before = {name: (out / name).read_bytes() for name in ("report.pdf", "report.html")}
    cells = list(TINY)
    cells[3] = ("markdown", "**Table 9.1:** A table with $\\undefinedmacro{x}$ in it.")
    notebook(tmp_path / "nb", "task9_tiny", cells)
    result = build(env, tmp_path / "nb", out)
    assert result.returncode == 1
    lines = failure(result)
    tex = Path(env["MLP_REPORT_BUILD"]) / "smoke-1-seeds" / "report.tex"  # where it really is
    assert re.fullmatch(
        rf"LaTeX failed on task9_tiny\.ipynb, cell 5: Undefined control sequence \(line (\d+) "
        rf"of {re.escape(str(tex))}\)",
        lines[0],
    )
    assert len(lines) <= 2 and tex.is_file()
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == [".report.key", "report.html", "report.pdf"]


@needs_latex
def test_a_line_too_long_for_latex_names_its_cell_and_the_tex_file(env, tmp_path):
    """A 1 MB value makes a line longer than TeX's buffer: xelatex's error does not start a line
    of its log and names no line; the message still quotes it and names the cell and the line."""
    cells = list(TINY)
    cells[1] = ("code", "x = 2.5\nbig = 1.45e-8\nhuge = 'a' * 1_000_000")
    cells[2] = ("markdown", "Huge: {eval}`huge`, see Table 9.1.")
    notebook(tmp_path / "nb", "task9_tiny", cells)
    result = build(env, tmp_path / "nb", tmp_path / "out")
    assert result.returncode == 1
    lines = failure(result)
    tex = Path(env["MLP_REPORT_BUILD"]) / "smoke-1-seeds" / "report.tex"
    found = re.fullmatch(
        r"LaTeX failed on task9_tiny\.ipynb, cell 4: Unable to read an entire line---bufsize=\d+ "
        rf"\(line (\d+) of {re.escape(str(tex))}, ([\d,]+) bytes long\)",
        lines[0],
    )
    assert found and len(lines) <= 2, lines
    line = tex.read_text().splitlines()[int(found[1]) - 1]
    assert len(line.encode()) == int(found[2].replace(",", "")) > 1_000_000


@needs_pandoc
def test_an_unchanged_build_writes_nothing_and_leaves_no_runtime_files(env, tmp_path):
    """Nothing changed: nothing is written (a read-only clone with everything built works), and no
    kernel connection file or socket is left in the temporary folder, after either build."""
    notebook(tmp_path / "nb", "task9_tiny")
    out = tmp_path / "out"
    assert build(env, tmp_path / "nb", out).returncode == 0
    assert list(Path(env["TMPDIR"]).iterdir()) == []

    def snapshot():
        files = [*out.rglob("*"), *Path(env["MLP_REPORT_BUILD"]).rglob("*")]
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in files}

    before = snapshot()
    again = build(env, tmp_path / "nb", out)
    assert again.returncode == 0 and "unchanged, so it was kept" in again.stdout
    assert snapshot() == before
    assert list(Path(env["TMPDIR"]).iterdir()) == []


TIMED = [
    ("markdown", "# Task 9 — A timed network\n\n## Task 9a — Its time"),
    (
        "code",
        "import mlp_core as mlp\n\n"
        "EXPERIMENTS = rep.experiments({'A': mlp.RunConfig()}, timed=['A'])",
    ),
    ("code", "ms = 1000 * rep.epoch_seconds(EXPERIMENTS)['A']"),
    ("markdown", "**Task 9a.** An epoch takes {eval}`f'{ms:.6f}'` ms."),
]


@needs_pandoc
def test_a_timing_measured_anew_executes_its_notebook_again(env, tmp_path):
    """A later build replaces a noisy kept timing by a new measurement: the notebook that states
    it is executed again, not reused with the old number (it was: the timings were not part of
    what an executed notebook depends on)."""
    path = notebook(tmp_path / "nb", "task9_timed", TIMED)
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].metadata["tags"] = ["experiments"]
    nbformat.write(nb, path)
    out = tmp_path / "out"
    first = build(env, tmp_path / "nb", out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (kept,) = (Path(env["MLP_RUN_STORE"]) / "timings").glob("epoch-*.json")
    record = json.loads(kept.read_text())
    assert f"An epoch takes {1000 * record['seconds']:.6f} ms." in (out / "report.html").read_text()
    kept.write_text(json.dumps(dict(record, seconds=12.345, quiet=True)))  # as a new one is kept
    again = build(env, tmp_path / "nb", out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "1 to execute" in again.stdout
    assert "An epoch takes 12345.000000 ms." in (out / "report.html").read_text()


def test_only_a_quiet_timing_measured_anew_changes_what_a_notebook_depends_on(
    tmp_path, monkeypatch
):
    """A build re-measures a noisy timing. Measured noisy again (a machine that stays busy), the
    notebook is reused; measured quiet, it is executed again with the better number."""
    import build_report

    import mlp_report

    monkeypatch.setenv("MLP_SMOKE", "1")
    monkeypatch.setenv("MLP_RUN_STORE", str(tmp_path / "runs"))
    path = notebook(tmp_path / "nb", "task9_timed", TIMED)
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].metadata["tags"] = ["experiments"]
    nbformat.write(nb, path)
    mlp_report.epoch_seconds(build_report.notebook_experiments(path))  # one kept timing
    (kept,) = (tmp_path / "runs" / "timings").glob("epoch-*.json")
    record = json.loads(kept.read_text())

    def key_with(seconds: float, quiet: bool) -> str:
        kept.write_text(json.dumps(dict(record, seconds=seconds, quiet=quiet)))
        return build_report.source_key(path)

    assert key_with(0.5, quiet=False) == key_with(0.7, quiet=False)
    assert key_with(0.7, quiet=False) != key_with(0.7, quiet=True) != key_with(0.8, quiet=True)


@needs_pandoc
def test_a_clone_at_a_long_path_builds(env, tmp_path):
    """Kernel sockets live in a short private folder, not under the project (a Unix socket path
    has at most 107 bytes): a clone at a long path executes its notebooks."""
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "course" / "assignment-2"
    clone = deep / "mlp-from-scratch"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout
    for name in files.split():
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    assert len(str(clone)) > 120
    notebook(clone / "notebooks", "task9_tiny")
    command = [sys.executable, str(clone / "report" / "build_report.py")]
    command += ["--pattern", "task9*.ipynb", "--out", str(tmp_path / "out")]
    environment = dict(env, MNIST_DIR=str(REPO / "data" / "mnist"))
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@needs_pandoc
def test_builds_with_different_settings_side_by_side(env, tmp_path):
    notebook(tmp_path / "nb", "task9_tiny")
    command = [sys.executable, str(BUILD), "--notebooks", str(tmp_path / "nb")]
    procs = [
        subprocess.Popen(
            command + ["--out", str(tmp_path / f"out{seeds}")],
            cwd=REPO,
            env=dict(env, MLP_SEEDS=str(seeds)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seeds in (1, 2)
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    executed = sorted(p.parent.parent.name for p in Path(env["MLP_REPORT_BUILD"]).rglob("*.ipynb"))
    assert "smoke-1-seeds" in executed and "smoke-2-seeds" in executed


@pytest.mark.parametrize(
    "setting, message",
    [
        (dict(MLP_STRICT="maybe"), "MLP_STRICT='maybe' is not understood: use 1"),
        (dict(MLP_FRESH="perhaps"), "MLP_FRESH='perhaps' is not understood"),
        (dict(MLP_SMOKE="maybe"), "MLP_SMOKE='maybe' is not understood"),
        (dict(MLP_SEEDS="0"), "MLP_SEEDS must be a positive integer such as 3, got '0'"),
        (dict(MLP_SEEDS="²"), "MLP_SEEDS must be a positive integer such as 3, got '²'"),
        (dict(MLP_DASK_TIMEOUT="soon"), "MLP_DASK_TIMEOUT must be a number of seconds > 0"),
    ],
)
def test_bad_settings_are_one_line(env, tmp_path, setting, message):
    notebook(tmp_path / "nb", "task9_tiny")
    result = build(env, tmp_path / "nb", tmp_path / "out", **setting)
    assert result.returncode == 1
    lines = failure(result)
    assert lines[0].startswith(message) and len(lines) <= 2


def test_a_malformed_dask_scheduler_ends_the_build_at_once(env, tmp_path):
    """MLP_DASK_SCHEDULER=garbage is checked with the other settings, before the data is read or
    any run is planned: one line, and no dask Client is left for its finaliser (which waited 60 s
    and then printed a `Client.__del__ ... TimeoutError` traceback)."""
    notebook(tmp_path / "nb", "task9_tiny")
    t0 = time.monotonic()
    result = build(env, tmp_path / "nb", tmp_path / "out", MLP_DASK_SCHEDULER="garbage")
    seconds = time.monotonic() - t0
    print(f"MLP_DASK_SCHEDULER=garbage: the build ended after {seconds:.1f} s")
    assert result.returncode == 1 and "Plan:" not in result.stdout
    lines = failure(result)
    assert lines[0] == (
        "MLP_DASK_SCHEDULER='garbage' is not a Dask scheduler address (it names no host:port): "
        "write it as tcp://host:8786, or unset MLP_DASK_SCHEDULER to train on this machine"
    )
    assert len(lines) <= 2 and "__del__" not in result.stderr
    assert seconds < 50, "as long as the finaliser's wait"  # generous: a busy machine


def test_missing_mnist_files_are_one_line(env, tmp_path, closed_port):
    notebook(tmp_path / "nb", "task9_tiny")
    empty = tmp_path / "no-data"
    empty.mkdir()
    mirror = f"http://127.0.0.1:{closed_port}/"
    result = build(
        env, tmp_path / "nb", tmp_path / "out", MNIST_DIR=str(empty), MNIST_MIRROR=mirror
    )
    assert result.returncode == 1
    lines = failure(result)
    assert lines[0].startswith(f"train-images-idx3-ubyte.gz: download from {mirror}")
    assert "copy the four MNIST .gz files into" in lines[0] and len(lines) <= 2


def test_make_data_without_data_or_network_is_one_line(tmp_path, closed_port):
    result = subprocess.run(
        [sys.executable, str(REPO / "mnist_files.py"), str(tmp_path / "empty")],
        env=dict(os.environ, MNIST_MIRROR=f"http://127.0.0.1:{closed_port}/"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_experiments_cell_that_is_not_experiments_names_its_notebook(env, tmp_path):
    path = notebook(tmp_path / "nb", "task9_tiny")
    nb = nbformat.read(path, as_version=4)
    cell = nbformat.v4.new_code_cell('EXPERIMENTS = {"a": mlp.RunConfig()}')
    cell.metadata["tags"] = ["experiments"]
    nb.cells.insert(1, cell)
    nbformat.write(nb, path)
    result = build(env, tmp_path / "nb", tmp_path / "out")
    assert result.returncode == 1
    (line, *_) = failure(result)
    assert line == (
        "task9_tiny.ipynb: its experiments cell must set EXPERIMENTS = rep.experiments({...}), "
        "got dict"
    )


def test_the_makefile_passes_yes_no_values_to_the_one_parser():
    result = subprocess.run(
        ["make", "-n", "report", "STRICT=on", "FRESH=maybe"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert 'MLP_STRICT="on"' in result.stdout and 'MLP_FRESH="maybe"' in result.stdout


def test_ctrl_c_in_the_first_second_is_one_line(env, tmp_path):
    """Ctrl-C (SIGINT to the build's process group, as a terminal sends it) while the build
    starts: exit code 130 and one line. The build gets SIGINT's default disposition whatever the
    suite inherited (under nohup or `make test &` it would inherit it ignored, and rightly keep
    it), and the signal is sent once its handler is in place."""
    notebook(tmp_path / "nb", "task9_tiny")
    command = [sys.executable, str(BUILD), "--notebooks", str(tmp_path / "nb")]
    proc = interrupts.start_in_own_session(
        command + ["--out", str(tmp_path / "out")], cwd=REPO, env=env
    )
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Interrupted" in out and "Traceback" not in out, out


def test_ctrl_c_that_numpy_turns_into_an_import_error_is_an_interruption(monkeypatch, capsys):
    """A SIGINT inside numpy's C-extension import comes out as numpy's ImportError, without the
    KeyboardInterrupt (seen in 2 of 120 Ctrl-Cs sent 55-95 ms after start, and in the suite on a
    busy machine): the build still says it was interrupted and exits with 130."""
    import build_report

    def import_cut_short(argv=None):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # as numpy's import does: the interrupt is lost
        raise ImportError("Importing the numpy C-extensions failed.")

    monkeypatch.setattr(build_report, "main", import_cut_short)
    with interrupts.sigint_raises():
        assert build_report.run([]) == 130
    out = capsys.readouterr().out
    assert "Interrupted" in out and "ImportError" not in out and "failed" not in out


def test_an_unwritable_build_folder_is_named_before_any_training(env, tmp_path):
    notebook(tmp_path / "nb", "task9_tiny")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = build(env, tmp_path / "nb", tmp_path / "out", MLP_REPORT_BUILD=str(blocker))
    assert result.returncode == 1 and "Plan:" not in result.stdout
    assert failure(result)[:2] == [
        f"The build folder {blocker}/smoke-1-seeds cannot be written: {blocker} is a file, not a "
        "folder.",
        "Fix: point MLP_REPORT_BUILD at a writable folder.",
    ]


# ---- a full disk -----------------------------------------------------------------------------

MOUNT = ["unshare", "--mount", "--propagation", "private"]  # a mount that only the child sees


def _why_no_tmpfs(folder: Path) -> str:
    """'' when a tmpfs can be mounted on `folder` in a private mount namespace, else why not."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        [*MOUNT, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"a tmpfs cannot be mounted ({probe.stderr.strip() or probe.returncode})"
    return ""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_pandoc
def test_a_full_file_system_under_out_keeps_the_report_and_says_what_to_do(env, tmp_path):
    """--out on a real full file system: a 4 MB tmpfs mounted in a private mount namespace (as
    root; nothing outside the test sees it), the previous report copied in and the rest filled.
    The build names the folder, the file it was writing, the reason and the fix, in the run
    store's words; the previous report is left as it was, and no temporary file."""
    out = tmp_path / "out"
    out.mkdir()
    why_not = _why_no_tmpfs(out)
    if why_not:
        pytest.skip(f"needs a real full file system: {why_not}")
    old = tmp_path / "old"
    notebook(tmp_path / "nb", "task9_tiny")
    assert build(env, tmp_path / "nb", old).returncode == 0
    cells = list(TINY)
    cells[2] = ("markdown", "Changed: {eval}`x`, see Table 9.1.")
    notebook(tmp_path / "nb", "task9_tiny", cells)  # so that the report is written again
    script = (
        'mount -t tmpfs -o size=4m tmpfs "$OUT" && cp -a "$OLD"/. "$OUT"/ || exit 99\n'
        'head -c 8M /dev/zero > "$OUT/filler" 2>/dev/null\n'
        '"$@"; code=$?\n'
        'echo "== in --out:"; ls -A "$OUT"; sha256sum "$OUT/report.html" "$OUT/report.pdf"\n'
        "exit $code\n"
    )
    command = [sys.executable, str(BUILD), "--notebooks", str(tmp_path / "nb"), "--out", str(out)]
    result = subprocess.run(
        [*MOUNT, "sh", "-c", script, "sh", *command],
        cwd=REPO,
        env=dict(env, OUT=str(out), OLD=str(old)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    said, listing = result.stdout.split("== in --out:\n")
    lines = failure(subprocess.CompletedProcess(result.args, 1, said, result.stderr))
    assert lines[:2] == [
        f"The report folder {out} cannot be written: the disk is full (report.html was being "
        "written).",
        "Fix: free some space there, or use --out to write the report elsewhere.",
    ]
    *names, html, pdf = listing.splitlines()
    assert sorted(names) == [".report.key", "filler", "report.html", "report.pdf"]
    assert html.split()[0] == _sha256(old / "report.html")  # the previous report, untouched
    assert pdf.split()[0] == _sha256(old / "report.pdf")


def test_a_simulated_full_disk_under_out_names_folder_file_and_fix(tmp_path, monkeypatch):
    """The same without a real full disk: the HTML export meets ENOSPC half-way."""
    import build_report
    import export

    import mlp_store

    out, folder = tmp_path / "out", tmp_path / "build" / "smoke-1-seeds"
    out.mkdir()
    (out / "report.html").write_text("the previous report")

    def half_written(nb, target):
        target.write_text("half of a new rep")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "export_html", half_written)
    with pytest.raises(mlp_store.FolderNotWritable) as failed:
        with build_report.writes_named(out, folder):
            export.export(None, out, folder, pdf=False)
    assert str(failed.value) == (
        f"The report folder {out} cannot be written: the disk is full (report.html was being "
        "written).\nFix: free some space there, or use --out to write the report elsewhere."
    )
    assert [p.name for p in out.iterdir()] == ["report.html"]
    assert (out / "report.html").read_text() == "the previous report"


def test_a_simulated_full_disk_in_the_build_folder_names_it(tmp_path, monkeypatch):
    """A full disk while the build folder is written (inside --out here; by default
    it is .cache/report-build): the build folder is named, with its own fix."""
    import build_report
    import export

    import mlp_store

    out = tmp_path / "report"
    folder = out / "build" / "smoke-1-seeds"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export.os, "fdopen", full)
    with pytest.raises(mlp_store.FolderNotWritable) as failed:
        with build_report.writes_named(out, folder):
            export.write_atomic(folder / "report.ipynb", "{}")
    assert str(failed.value) == (
        f"The build folder {folder} cannot be written: the disk is full (report.ipynb was being "
        "written).\nFix: free some space there, or point MLP_REPORT_BUILD at a writable folder."
    )
    assert list(folder.iterdir()) == []  # no temporary file left
