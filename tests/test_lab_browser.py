"""The notebooks in JupyterLab as `make lab` serves them (lab/jupyter_lab_config.py), driven in
headless Chromium by Playwright:

- every notebook (task1-task4, explorer) opens clean: once its kernel is idle and its kernel info
  has been copied into the notebook, the tab shows no modified mark, and closing it asks nothing;
- the "official Jupyter news" question never shows;
- after Run All (task1, and task2 in smoke mode with a private run store), the Markdown cells show
  their {eval} inline expressions as values (jupyterlab-myst), and saving writes the notebook byte
  for byte as committed: `git status --porcelain notebooks/` stays empty.

The server runs on copies of the notebooks in a temporary git repository (the working tree's
notebooks, committed there), so the test never writes into the tracked notebooks, does not depend
on anyone's uncommitted work, and sees any stray file the save would leave beside them. The server
gets an empty $HOME and private Jupyter, IPython, matplotlib, XDG and npm folders; the test fails if
anything is written into that $HOME. Screenshots go to tests/artifacts/ (git-ignored).

Needs Debian's chromium (/usr/bin/chromium, or $CHROMIUM) and the playwright Python package; never
downloads a browser. Skipped without them (`sudo make system-deps` installs chromium).
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import interrupts
import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS
from test_build import notebook
from test_inline import FOUND, roles

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LAB_CONFIG = REPO / "lab" / "jupyter_lab_config.py"  # what `make lab` passes as --config
ARTIFACTS = REPO / "tests" / "artifacts"
VENV_BIN = Path(sys.executable).parent
NOTEBOOKS = [
    "task1_backpropagation",
    "task2_two_layer_network",
    "task3_tricks_of_the_trade",
    "task4_topology",
    "explorer",
]
NEWS = "official Jupyter news"
SERVER_START = 120  # seconds for the server to accept connections (a busy machine)
LAB_READY = 180_000  # milliseconds for JupyterLab's page to load
KERNEL_IDLE = 180_000  # milliseconds for a notebook's kernel to start and be idle
RUN_ALL = 900_000  # milliseconds for Run All (task2 trains tiny runs in smoke mode)
SCREEN = {"width": 1280, "height": 800}


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A temporary folder for the repository copy, the server's $HOME and private folders."""
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="module")
def repo(work):
    """A git repository with copies of the working tree's notebooks and .gitignore, committed."""
    if shutil.which("git") is None:
        pytest.skip("git not found")
    root = work / "repo"
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".*"))
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    git = ["git", "-C", str(root), "-c", "user.name=test", "-c", "user.email=test@invalid"]
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "notebooks"]):
        subprocess.run([*git, *args], check=True, env=env, capture_output=True)

    def run_git(*args) -> str:
        return subprocess.run(
            [*git, *args], check=True, env=env, capture_output=True, text=True
        ).stdout

    return SimpleNamespace(path=root, git=run_git)


@pytest.fixture(scope="module")
def lab_env(work):
    """The server's environment: `make lab`'s, with every folder it writes to in `work`."""
    env = {**os.environ}
    for var in (
        "HOME",
        "JUPYTER_CONFIG_DIR",
        "JUPYTER_DATA_DIR",
        "JUPYTER_RUNTIME_DIR",
        "IPYTHONDIR",
        "MPLCONFIGDIR",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        "npm_config_cache",
        "MLP_RUN_STORE",
    ):
        env[var] = str(work / var.lower())
        Path(env[var]).mkdir(mode=0o700)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLP_SMOKE"] = "1"  # task2 trains tiny runs
    for var in ("MPLBACKEND", "TQDM_DISABLE", "JUPYTER_PATH", "JUPYTER_CONFIG_PATH"):
        env.pop(var, None)  # the kernels draw inline figures and bars, as for a student
    return env


@pytest.fixture(scope="module")
def lab(repo, lab_env, work):
    """JupyterLab as `make lab` starts it, on the repository copy's notebooks: its URL, with the
    app exposed as window.jupyterapp so that the test can wait for kernels and models."""
    assert "--config=$(LAB_CONFIG)" in (REPO / "Makefile").read_text(), "make lab changed"
    token = secrets.token_hex(16)
    argv = [
        VENV_BIN / "jupyter-lab",
        f"--config={LAB_CONFIG}",
        "--port=0",  # a free port, which the server picks and names in its server file
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={repo.path / 'notebooks'}",
        "--LabApp.expose_app_in_browser=True",
    ]
    log = open(work / "server.log", "w+")
    proc = subprocess.Popen(
        [str(a) for a in argv],
        cwd=repo.path,
        env=lab_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=interrupts.default_dispositions,  # its SIGTERM below, whatever we inherited
    )
    interrupts.assert_default(proc.pid, signal.SIGTERM)
    server_file = Path(lab_env["JUPYTER_RUNTIME_DIR"]) / f"jpserver-{proc.pid}.json"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None or time.monotonic() - started > SERVER_START:
                log.seek(0)
                pytest.fail(f"jupyter lab did not start (exit code {proc.poll()}):\n{log.read()}")
            try:
                port = json.loads(server_file.read_text())["port"]
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except (OSError, ValueError, KeyError):  # not written yet, or not listening yet
                time.sleep(0.3)
        print(f"\nserver accepts connections after {time.monotonic() - started:.1f} s")
        yield f"http://127.0.0.1:{port}/lab?token={token}", Path(log.name)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server shuts its kernels down
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
    written = sorted(str(p.relative_to(lab_env["HOME"])) for p in Path(lab_env["HOME"]).rglob("*"))
    assert not written, f"make lab's server wrote into $HOME: {written}"


@pytest.fixture(scope="module")
def page(lab, lab_env, work):
    """One JupyterLab page in Chromium (its own profile and $HOME), loaded and ready."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`sudo make system-deps`)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright Python package is not installed"
    )
    url, _ = lab
    home = work / "chromium-home"
    home.mkdir()
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            work / "chromium-profile",
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            timeout=60_000,
            env={**lab_env, "HOME": str(home)},
            viewport=SCREEN,
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        dialogs = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))  # window.confirm etc.
        page.browser_dialogs = dialogs
        started = time.monotonic()
        page.goto(url, timeout=LAB_READY)
        page.wait_for_function(
            "window.jupyterapp && document.querySelector('#jp-main-dock-panel')",
            timeout=LAB_READY,
        )
        page.evaluate("window.jupyterapp.restored")
        print(f"JupyterLab loaded in {time.monotonic() - started:.1f} s")
        yield page
        context.close()


# ------------------------------------------------------------------------------------- helpers

# The current notebook panel's state once its kernel is idle and the kernel's info and spec have
# been copied into the notebook (NotebookPanel._onKernelChanged): whether the model and the tab are
# marked modified, and the notebook's language_info against the kernel's.
_OPENED = """async (path) => {
    const app = window.jupyterapp;
    const widget = app.shell.currentWidget;
    const kernel = widget.sessionContext.session.kernel;
    const info = await kernel.info;
    await kernel.spec;
    await new Promise(resolve => setTimeout(resolve, 2000));  // any update after them
    const tab = [...document.querySelectorAll('#jp-main-dock-panel .lm-TabBar-tab')].find(
        t => t.classList.contains('lm-mod-current'));
    return {
        path: widget.context.path,
        dirty: widget.context.model.dirty,
        tabDirty: tab.classList.contains('jp-mod-dirty'),
        metadataLanguage: widget.context.model.getMetadata('language_info'),
        kernelLanguage: info.language_info,
    };
}"""

_KERNEL_IDLE = """(path) => {
    const widget = window.jupyterapp.shell.currentWidget;
    const kernel = widget && widget.context && widget.context.path === path
        && widget.sessionContext.session && widget.sessionContext.session.kernel;
    return kernel && kernel.status === "idle"
        && widget.sessionContext.kernelDisplayStatus === "idle";
}"""

# During Run All: the first error of a code cell, whether every code cell ran (and the kernel is
# idle), and the Markdown cells with {eval} whose expressions jupyterlab-myst has not evaluated yet
# (no user_expressions metadata) or that failed
_RUN_ALL_STATE = """() => {
    const widget = window.jupyterapp.shell.currentWidget;
    const cells = Array.from(widget.model.cells);
    for (const cell of cells) {
        if (cell.type !== 'code') continue;
        const error = cell.outputs.toJSON().find(o => o.output_type === 'error');
        if (error) return {error: `${error.ename}: ${error.evalue}`};
    }
    const kernel = widget.sessionContext.session.kernel;
    const withEval = cells.filter(
        c => c.type === 'markdown' && c.sharedModel.getSource().includes('{eval}'));
    const values = c => c.getMetadata('user_expressions') || [];
    return {
        codeDone: kernel.status === 'idle'
            && cells.every(c => c.type !== 'code' || c.executionCount !== null),
        expressionCells: withEval.length,
        missing: withEval.filter(c => !values(c).length).map(c => c.id),
        failed: withEval.flatMap(values).filter(e => e.result.status !== 'ok')
            .map(e => `${e.expression}: ${e.result.evalue}`),
    };
}"""
# Each Markdown cell of the current notebook: its source and the expressions jupyterlab-myst
# evaluated in it (its user_expressions metadata)
_EXPRESSIONS = """() => Array.from(window.jupyterapp.shell.currentWidget.model.cells)
    .filter(c => c.type === 'markdown')
    .map(c => ({
        source: c.sharedModel.getSource(),
        expressions: (c.getMetadata('user_expressions') || []).map(e => e.expression),
    }))"""
EXPRESSIONS_AFTER_CODE = 60  # seconds for the last expressions once every code cell ran


def _open(page, name: str) -> dict:
    """Open notebooks/<name>.ipynb as a student does (File Browser, double click), wait until its
    kernel is idle and its kernel info applied; the panel's state (see _OPENED)."""
    path = f"{name}.ipynb"
    started = time.monotonic()
    name_text = page.locator(".jp-DirListing-itemText", has_text=path)
    page.locator(".jp-DirListing-item", has=name_text).dblclick()
    page.wait_for_function(_KERNEL_IDLE, arg=path, timeout=KERNEL_IDLE)
    state = page.evaluate(_OPENED, path)
    state["seconds"] = time.monotonic() - started
    print(f"{path}: kernel idle {state['seconds']:.1f} s after the double click")
    return state


def _tab(page, name: str):
    return page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text=f"{name}.ipynb")


def _close_without_a_dialog(page, name: str) -> None:
    """Close the notebook's tab with its × as a student does; no dialog may ask anything."""
    tab = _tab(page, name)
    tab.hover()
    tab.locator(".lm-TabBar-tabCloseIcon").click()
    dialog = page.locator(".jp-Dialog")
    deadline = time.monotonic() + 30
    while tab.count() and time.monotonic() < deadline:
        assert dialog.count() == 0, f"closing {name} asked: {dialog.first.inner_text()}"
        page.wait_for_timeout(200)
    assert tab.count() == 0, f"{name}'s tab did not close"
    page.wait_for_timeout(1000)
    assert dialog.count() == 0, f"closing {name} asked: {dialog.first.inner_text()}"
    # the kernel is not needed any more (JupyterLab keeps it running after a close)
    page.evaluate("window.jupyterapp.serviceManager.sessions.shutdownAll()")


def _run_all(page, name: str) -> float:
    """Run All on the current notebook, right after it opened; seconds until every cell ran and
    every Markdown cell's inline expressions were evaluated, none with an error."""
    started = time.monotonic()
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        f"(() => {{ const s = ({_RUN_ALL_STATE})(); return s.error || s.codeDone; }})",
        timeout=RUN_ALL,
        polling=500,
    )
    deadline = time.monotonic() + EXPRESSIONS_AFTER_CODE
    state = page.evaluate(_RUN_ALL_STATE)
    while state.get("missing") and not state.get("error") and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        state = page.evaluate(_RUN_ALL_STATE)
    seconds = time.monotonic() - started
    assert "error" not in state, f"{name}: a cell failed in JupyterLab: {state['error']}"
    assert not state["missing"], f"{name}: inline expressions never evaluated in cells {state}"
    assert state["expressionCells"] > 0 and not state["failed"], state
    print(f"{name}: Run All took {seconds:.1f} s ({state['expressionCells']} cells with values)")
    return seconds


def _save(page, name: str) -> None:
    """Save with Ctrl+S and wait until the notebook is no longer marked modified."""
    page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})  # focus the notebook
    page.keyboard.press("Escape")  # command mode
    page.keyboard.press("Control+s")
    page.wait_for_function("!window.jupyterapp.shell.currentWidget.context.model.dirty")
    _tab(page, name).locator(".lm-TabBar-tabLabel").wait_for()
    assert "jp-mod-dirty" not in (_tab(page, name).get_attribute("class") or "")


# The text a reader sees in a rendered cell: not the hidden editor holding its source, and formulas
# once (KaTeX's HTML), not also their MathML copy
_SHOWN_TEXT = """(element) => {
    const copy = element.cloneNode(true);
    copy.querySelectorAll('.jp-InputArea-editor, .katex-mathml').forEach(node => node.remove());
    return copy.textContent;
}"""


def _rendered_markdown(page, text: str):
    """The rendered Markdown cell showing `text`, and the text it shows (whitespace as spaces)."""
    cell = page.locator(".jp-MarkdownCell.jp-mod-rendered .jp-Cell-inputArea", has_text=text).first
    cell.wait_for(timeout=60_000)
    return cell, " ".join(cell.evaluate(_SHOWN_TEXT).split())


def _assert_no_news(page) -> None:
    assert page.get_by_text(NEWS).count() == 0, "JupyterLab asked about Jupyter news"


# ------------------------------------------------------------------------------------- tests


def test_notebooks_open_clean_and_close_without_a_dialog(page, repo):
    """Each notebook opens without a modified mark once its kernel runs, and closes silently."""
    _assert_no_news(page)
    for name in NOTEBOOKS:
        state = _open(page, name)
        assert state["path"] == f"{name}.ipynb", state
        assert state["metadataLanguage"] == state["kernelLanguage"], state
        assert not state["dirty"] and not state["tabDirty"], f"{name} is marked modified: {state}"
        if name == NOTEBOOKS[0]:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / "lab-opened-clean.png")
        _close_without_a_dialog(page, name)
        _assert_no_news(page)
    assert page.browser_dialogs == []
    assert repo.git("status", "--porcelain", "notebooks/") == ""
    # the setting behind the missing question, as JupyterLab's settings service reports it
    schema = page.evaluate(
        """async () => (await window.jupyterapp.serviceManager.settings.fetch(
            '@jupyterlab/apputils-extension:notification')).schema.properties"""
    )
    assert schema["fetchNews"]["default"] == "false" and not schema["checkForUpdates"]["default"]


def test_run_all_shows_inline_values_and_saves_the_notebook_as_committed(page, repo, lab):
    """Run All right after opening: every Markdown cell's {eval} expressions are evaluated (those
    below the screen too) and shown as values, not sources; saving keeps the file as committed."""
    _, server_log = lab
    committed = {
        name: (repo.path / "notebooks" / f"{name}.ipynb").read_bytes() for name in NOTEBOOKS
    }

    _open(page, "task1_backpropagation")
    _run_all(page, "task1_backpropagation")
    _, table = _rendered_markdown(page, "Table 1.1:")
    assert re.search(r"\(\d+ inputs including the bias input, \d+ hidden units", table), table
    assert "{eval}" not in table and "INPUT_SIZE" not in table, table
    _save(page, "task1_backpropagation")
    _close_without_a_dialog(page, "task1_backpropagation")

    _open(page, "task2_two_layer_network")
    _run_all(page, "task2_two_layer_network")
    cell, text = _rendered_markdown(page, "33.318421")
    assert "the mean is μ = 33.318421" in text, text
    assert "{eval}" not in text and "num(mu, 6)" not in text, text
    cell.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "lab-run-all-inline-values.png")
    _save(page, "task2_two_layer_network")
    _close_without_a_dialog(page, "task2_two_layer_network")
    _assert_no_news(page)

    for name in NOTEBOOKS:
        saved = (repo.path / "notebooks" / f"{name}.ipynb").read_bytes()
        assert saved == committed[name], f"saving {name} in JupyterLab changed the file"
    assert repo.git("status", "--porcelain", "--ignored=no", "notebooks/") == ""
    log = server_log.read_text(errors="replace")
    assert "Saving file at /task2_two_layer_network.ipynb" in log
    assert "Pre-save hook failed" not in log and "is not trusted" not in log, log[-3000:]


def test_jupyterlab_myst_evaluates_the_roles_the_build_finds(page, repo):
    """The build finds inline expressions as jupyterlab-myst does: in a notebook with a Markdown
    cell for each case of test_inline.FOUND (backtick runs, code spans, math, escapes, fences),
    Run All has jupyterlab-myst evaluate exactly the expressions execution.roles finds there."""
    cells = [("code", "x = 1"), *(("markdown", source) for source, _ in FOUND)]
    notebook(repo.path / "notebooks", "roles_check", cells)  # in the server's folder
    page.evaluate(  # the opened widget is not returned: it cannot be serialised
        "async () => { await window.jupyterapp.commands.execute("
        "'docmanager:open', {path: 'roles_check.ipynb'}); }"
    )
    page.wait_for_function(_KERNEL_IDLE, arg="roles_check.ipynb", timeout=KERNEL_IDLE)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    with_roles = sum(bool(expected) for _, expected in FOUND)
    page.wait_for_function(
        f"({_EXPRESSIONS})().filter(c => c.expressions.length).length === {with_roles}",
        timeout=RUN_ALL,
        polling=500,
    )
    page.wait_for_timeout(2000)  # any late evaluation of a cell that should have none
    in_lab = {cell["source"]: cell["expressions"] for cell in page.evaluate(_EXPRESSIONS)}
    assert list(in_lab) == [source for source, _ in FOUND]  # every cell, as written
    assert in_lab == {source: expected for source, expected in FOUND}
    assert in_lab == {source: [role.body for role in roles(source)] for source in in_lab}
