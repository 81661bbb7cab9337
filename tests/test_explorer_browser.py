"""The explorer notebook in a real browser: Voilà (and JupyterLab and the classic Notebook) serve
notebooks/explorer.ipynb on 127.0.0.1, headless Chromium driven by Playwright changes controls,
presses Train and waits for the run to appear in the runs table. Screenshots go to tests/artifacts/.

Needs Debian's chromium (/usr/bin/chromium, or $CHROMIUM) and the playwright Python package; never
downloads a browser. Every server runs in its own process group and is killed when the test ends.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explorer.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
VENV_BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START = 60      # seconds for a server to accept connections
UI_READY = 60_000      # milliseconds for the notebook to show the explorer
RUN_DONE = 60_000      # milliseconds for a small run to appear in the table


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (or set $CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    page.set_default_timeout(30_000)
    yield page
    page.close()


@pytest.fixture(scope="module")
def jupyter_env(tmp_path_factory):
    """The environment of the servers and their kernels: every Jupyter, IPython and matplotlib
    folder in a temporary directory (the venv's share/jupyter is still found through sys.prefix)."""
    base = tmp_path_factory.mktemp("jupyter-home")
    env = dict(os.environ)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR"):
        env[var] = str(base / var.lower())
        Path(env[var]).mkdir()
    # no "would you like news?" pop-up over the JupyterLab screenshot
    labconfig = Path(env["JUPYTER_CONFIG_DIR"]) / "labconfig"
    labconfig.mkdir()
    (labconfig / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLP_SMOKE", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start_server(jupyter_env, tmp_path):
    """start_server(argv, port, cwd) runs a server in its own process group and waits until it
    accepts connections on 127.0.0.1:port; every server is killed at the end of the test."""
    procs = []

    def start(argv, port, cwd):
        log = open(tmp_path / f"server-{len(procs)}.log", "w+")
        proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=jupyter_env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append((proc, log))
        deadline = time.monotonic() + SERVER_START
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        log.seek(0)
        tail = log.read()[-3000:]
        pytest.fail(f"{argv[0]} did not start on port {port} (exit code {proc.poll()}):\n{tail}")

    yield start
    for proc, log in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # servers shut their kernels down on SIGTERM
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def _set_number(page, css, value):
    box = page.locator(f"{css} input")
    box.fill(str(value))
    box.press("Enter")  # number boxes send their value on Enter or blur


def _train_small_run(page, *, run="#1", hidden="32"):
    """Set a small run up through the controls, train it, and wait for its row in the table."""
    page.wait_for_selector("button.mlp-train", timeout=UI_READY)
    hidden_box = page.locator(".mlp-hidden input")
    hidden_box.fill("64,,a")
    page.get_by_text("entry 2 is empty").wait_for()
    assert page.locator("button.mlp-train").is_disabled()
    hidden_box.fill(hidden)
    _set_number(page, ".mlp-n-train", 1000)
    _set_number(page, ".mlp-epochs", 2)
    page.wait_for_function("!document.querySelector('button.mlp-train').disabled")
    page.get_by_text("31 steps per epoch").wait_for()  # the kernel has the new subset size
    page.locator("button.mlp-train").click()
    row = page.locator(".mlp-runs table tbody tr").first
    row.wait_for(timeout=RUN_DONE)
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == run and cells[1] == hidden and "1000" in cells, cells
    page.get_by_text("reached the last epoch").wait_for()
    return cells


def test_voila_serves_the_explorer_and_trains_a_run(page, start_server):
    port = _free_port()
    start_server([VENV_BIN / "voila", NOTEBOOK.relative_to(REPO), "--no-browser", f"--port={port}",
                  "--Voila.ip=127.0.0.1"], port, cwd=REPO)
    page.goto(f"http://127.0.0.1:{port}/", timeout=UI_READY)
    _train_small_run(page)
    page.wait_for_timeout(500)  # let the last plot image paint
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "explorer.png", full_page=True)


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_jupyter_runs_the_explorer_notebook(page, start_server, tmp_path, app):
    # a copy, so that autosave can never write outputs into the committed notebook
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    # expose_app_in_browser gives the page window.jupyterapp, to run the cells by command;
    # the read-only extension manager never asks PyPI (Notebook 7 does not load with it)
    extra = (["--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly"] if app == "lab"
             else ["--JupyterNotebookApp.expose_app_in_browser=True"])
    start_server([VENV_BIN / f"jupyter-{app}", "--no-browser", "--allow-root", f"--port={port}",
                  "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                  *extra], port, cwd=root)
    path = "lab/tree" if app == "lab" else "notebooks"
    page.goto(f"http://127.0.0.1:{port}/{path}/{NOTEBOOK.name}?token={token}", timeout=UI_READY)
    page.wait_for_function(
        """() => {
            const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const kernel = panel && panel.sessionContext && panel.sessionContext.session
                && panel.sessionContext.session.kernel;
            return kernel && kernel.status === "idle";
        }""", timeout=UI_READY)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    _train_small_run(page)
    page.locator(".mlp-explorer").scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"explorer-{app}.png")
