"""The explorer notebook in a real browser: Voilà (and JupyterLab and the classic Notebook) serve
notebooks/explorer.ipynb on 127.0.0.1, headless Chromium driven by Playwright changes controls,
presses Train and waits for the run to appear in the runs table. Screenshots go to tests/artifacts/.

Needs Debian's chromium (/usr/bin/chromium, or $CHROMIUM) and the playwright Python package; never
downloads a browser. Every server runs in its own process group and is killed when the test ends.
Nothing is written into $HOME: Chromium gets a profile folder, and Chromium and the servers get
XDG, Jupyter, IPython, matplotlib and npm folders, all in temporary directories.
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

import psutil  # a dependency of ipykernel
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explorer.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
VENV_BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START = 60  # seconds for a server to accept connections
UI_READY = 90_000  # milliseconds for the notebook to show the explorer
RUN_DONE = 60_000  # milliseconds for a small run to appear in the table
SCREEN = {"width": 1280, "height": 720}


def voila_command(port: int, cull_idle_timeout: int = 600, cull_interval: int = 60) -> list:
    """`make explore`'s command: Voilà on 127.0.0.1 that shuts down the kernel of a page closed or
    reloaded once it has been idle for cull_idle_timeout seconds, checking every cull_interval
    seconds. (Voilà's own shutdown request on page unload fails, voila-dashboards/voila#1458.) A page
    still open keeps its kernel however long it is idle: cull_connected must stay False (its default),
    or an open explorer stops responding once its kernel has been culled."""
    return [
        VENV_BIN / "voila",
        NOTEBOOK.relative_to(REPO),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        f"--MappingKernelManager.cull_idle_timeout={cull_idle_timeout}",
        f"--MappingKernelManager.cull_interval={cull_interval}",
    ]


# ------------------------------------------------------------------------------------- fixtures

HOME_PATHS = [
    ".config/chromium",
    ".cache/chromium",
    ".cache/dconf",
    ".pki",
    ".jupyter",
    ".ipython",
    ".local/share/jupyter",
    ".cache/fontconfig",
    ".npm/_cacache",
]


@pytest.fixture(scope="module")
def quiet_home():
    """Fails the module if a browser or server created one of its usual folders in $HOME."""
    home = Path.home()
    before = {p for p in HOME_PATHS if (home / p).exists()}
    yield
    created = sorted(p for p in HOME_PATHS if (home / p).exists() and p not in before)
    assert not created, f"the browser tests wrote into $HOME: {created}"


@pytest.fixture(scope="module")
def private_env(tmp_path_factory, quiet_home):
    """Environment variables that keep every cache and setting in a temporary folder."""
    base = tmp_path_factory.mktemp("explorer-home")
    env = {}
    for var in (
        "JUPYTER_CONFIG_DIR",
        "JUPYTER_DATA_DIR",
        "JUPYTER_RUNTIME_DIR",
        "IPYTHONDIR",
        "MPLCONFIGDIR",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        "XDG_RUNTIME_DIR",
        "npm_config_cache",
    ):
        env[var] = str(base / var.lower())
        Path(env[var]).mkdir(mode=0o700)
    return env


@pytest.fixture(scope="module")
def browser(private_env, tmp_path_factory):
    """A Chromium context with its own profile folder (--user-data-dir) in a temporary directory."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (or set $CHROMIUM)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright Python package is not installed"
    )
    home = tmp_path_factory.mktemp(
        "chromium-home"
    )  # for anything that still asks for $HOME (NSS's .pki)
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            timeout=60_000,
            env={**os.environ, **private_env, "HOME": str(home)},
            viewport=SCREEN,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    page.set_viewport_size(SCREEN)
    page.set_default_timeout(30_000)
    yield page
    if not page.is_closed():
        page.close()


@pytest.fixture(scope="module")
def jupyter_env(private_env):
    """The environment of the servers and their kernels (the venv's share/jupyter is still found
    through sys.prefix)."""
    env = {**os.environ, **private_env}
    # no "would you like news?" pop-up over the JupyterLab screenshot
    labconfig = Path(env["JUPYTER_CONFIG_DIR"]) / "labconfig"
    labconfig.mkdir(exist_ok=True)
    (labconfig / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}'
    )
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLP_SMOKE", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start_server(jupyter_env, tmp_path):
    """start_server(argv, port, cwd) runs a server in its own process group, waits until it accepts
    connections on 127.0.0.1:port and returns its Popen; every server is killed at the end of the test."""
    procs = []

    def start(argv, port, cwd):
        log = open(tmp_path / f"server-{len(procs)}.log", "w+")
        proc = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            env=jupyter_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append((proc, log))
        deadline = time.monotonic() + SERVER_START
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc
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


# ------------------------------------------------------------------------------------- helpers


def _kernels(server: subprocess.Popen) -> list[psutil.Process]:
    """The kernels the server runs: its ipykernel child processes."""
    found = []
    for child in psutil.Process(server.pid).children(recursive=True):
        try:
            if any("ipykernel" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def _type(page, css, value):
    box = page.locator(f"{css} input")
    box.fill(str(value))
    box.press("Enter")


def _status(page) -> str:
    return page.locator(".mlp-status").inner_text()


def _rows(page):
    return page.locator(".mlp-runs table tbody tr")


def _train(page, n_rows_after: int) -> list[str]:
    """Press Train and wait for the run's row in the table; its cells."""
    page.wait_for_function("!document.querySelector('button.mlp-train').disabled")
    page.locator("button.mlp-train").click()
    row = _rows(page).nth(n_rows_after - 1)
    row.wait_for(timeout=RUN_DONE)
    page.wait_for_function("!document.querySelector('button.mlp-train').disabled")
    return row.locator("td").all_inner_texts()


def _small_run(page, hidden="32"):
    _type(page, ".mlp-hidden", hidden)
    _type(page, ".mlp-n-train", 1000)
    _type(page, ".mlp-epochs", 2)
    page.get_by_text("31 steps per epoch").wait_for()  # the kernel has the new subset size


def _train_small_run(page, *, run="#1", hidden="32"):
    """Set a small run up through the controls, train it, and wait for its row in the table."""
    page.wait_for_selector("button.mlp-train", timeout=UI_READY)
    _type(page, ".mlp-hidden", "64,,a")
    page.get_by_text("entry 2 is empty").wait_for()
    assert page.locator("button.mlp-train").is_disabled()
    _small_run(page, hidden)
    cells = _train(page, 1)
    assert cells[0] == run and cells[1] == hidden and "1,000" in cells, cells
    page.get_by_text("reached the last epoch").wait_for()
    return cells


# The widest text of each <select> of the explorer (dropdowns and the Compare list) must fit its box
_CUT_OFF = """() => {
    const ctx = document.createElement("canvas").getContext("2d");
    const cut = [];
    for (const select of document.querySelectorAll(".mlp-explorer select")) {
        const style = getComputedStyle(select);
        ctx.font = style.font;
        const room = select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)
            - (select.multiple ? 0 : 20);  // the dropdown's arrow
        for (const option of select.options) {
            if (ctx.measureText(option.text).width > room) cut.push(option.text);
        }
    }
    return cut;
}"""


# ------------------------------------------------------------------------------------- tests


def test_voila_explorer_on_a_laptop_screen(page, start_server):
    """At 1280x720 the controls are in view; invalid values are explained; two runs that differ in
    activation and initialisation are told apart; a diverged run is a failure; Clear resets all."""
    port = _free_port()
    start_server(voila_command(port), port, cwd=REPO)
    page.goto(f"http://127.0.0.1:{port}/", timeout=UI_READY)
    train_button = page.locator("button.mlp-train")
    train_button.wait_for(timeout=UI_READY)
    page.wait_for_timeout(500)  # let the empty plot paint
    box = train_button.bounding_box()
    assert box and box["y"] + box["height"] < SCREEN["height"], f"Train is below the fold: {box}"
    assert not page.locator("details").first.evaluate("d => d.open")  # the help is folded away
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "explorer-1280x720.png")
    assert page.evaluate(_CUT_OFF) == []

    # out of range: explained next to Train, which stays disabled; the value is left as typed
    for css, typed, message, good in (
        (".mlp-epochs", 0, "epochs must be an integer ≥ 1, got 0", 10),
        (".mlp-learning-rate", 0, "learning rate α must be a finite number > 0, got 0.0", 0.1),
        (".mlp-momentum", 1.5, "momentum γ must be in [0, 1), got 1.5", 0),
        (".mlp-n-train", 70000, "training subset must be at most 60,000", 5000),
    ):
        _type(page, css, typed)
        page.locator(".mlp-config-info").get_by_text(message).wait_for()
        assert train_button.is_disabled()
        assert page.locator(f"{css} input").input_value() == str(typed)  # not clamped
        assert page.locator(f"{css}.mlp-invalid").count() == 1
        _type(page, css, good)
        page.wait_for_function("!document.querySelector('button.mlp-train').disabled")
    _type(page, ".mlp-epochs", 1000)  # beyond the old limit of 500: fine
    page.get_by_text("156 steps per epoch").wait_for()
    assert (
        train_button.is_enabled() and page.locator(".mlp-config-info").inner_text().count("⚠") == 0
    )
    _small_run(page)
    assert page.locator(".mlp-invalid").count() == 0

    # two runs that differ in activation and initialisation
    cells = _train(page, 1)
    assert cells[0] == "#1" and "last epoch" in cells and "max_epochs" not in cells, cells
    page.get_by_text("reached the last epoch").wait_for()
    assert page.locator(".mlp-progress .progress-bar-success").count() == 1
    page.locator(".mlp-activation select").select_option(label="improved sigmoid")
    page.locator(".mlp-init select").select_option(label="normal, std 1/√fan-in")
    cells = _train(page, 2)
    assert cells[:5] == ["#2", "32", "improved sigmoid", "fan-in", "0.1"], cells
    options = [
        t.replace("\xa0", " ") for t in page.locator(".mlp-runs-list option").all_inner_texts()
    ]
    assert options == [
        "#1 [32] sigmoid, uniform init, lr 0.1, γ 0, batch 32",
        "#2 [32] improved sigmoid, fan-in init, lr 0.1, γ 0, batch 32",
    ], options
    assert page.evaluate(_CUT_OFF) == []
    assert "%" in cells[13] and "%" in cells[14], cells  # accuracies in percent, as the plot's axis
    page.set_viewport_size(
        {"width": SCREEN["width"], "height": 1100}
    )  # Voilà scrolls inside the page:
    page.wait_for_timeout(700)  # a taller window shows the table too; let the last plot image paint
    page.screenshot(path=ARTIFACTS / "explorer-compare-activation.png")

    # a diverging run fails: red bar and the reason, never the green bar
    _type(page, ".mlp-learning-rate", "1e6")
    page.wait_for_function("!document.querySelector('button.mlp-train').disabled")
    cells = _train(page, 3)
    assert cells[0] == "#3" and "diverged" in cells and "1e+06" in cells, cells
    page.locator(".mlp-status").get_by_text("Lower the learning rate").wait_for()
    assert page.locator(".mlp-progress .progress-bar-danger").count() == 1
    assert page.locator(".mlp-progress .progress-bar-success").count() == 0
    page.screenshot(path=ARTIFACTS / "explorer-diverged.png")

    # Clear runs forgets the runs and resets the status line and the progress bar
    page.locator("button.mlp-clear").click()
    page.get_by_text("No runs yet").wait_for()
    page.wait_for_function(
        "document.querySelector('.mlp-status').innerText.startsWith('Set up a network')"
    )
    bar = page.locator(".mlp-progress .progress-bar")
    assert "danger" not in bar.get_attribute("class") and "success" not in bar.get_attribute(
        "class"
    )
    assert bar.evaluate("b => b.getBoundingClientRect().width") == 0
    assert page.locator(".mlp-runs-list option").count() == 0


def test_voila_culls_the_kernels_of_closed_pages(browser, start_server):
    """Every page load starts a kernel; once a page is reloaded or closed its kernel is shut down
    after the idle timeout, while the kernel of a page still open keeps working."""
    idle, interval = 10, 2  # seconds; `make explore` uses 600 and 60
    port = _free_port()
    server = start_server(voila_command(port, idle, interval), port, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    kept = browser.new_page()
    kept.goto(url, timeout=UI_READY)
    kept.wait_for_selector("button.mlp-train", timeout=UI_READY)
    assert len(_kernels(server)) == 1

    most = 1
    for i in range(5):  # open, reload and close a page, five times
        page = browser.new_page()
        page.goto(url, timeout=UI_READY)
        page.wait_for_selector("button.mlp-train", timeout=UI_READY)
        if i % 2:
            page.reload(timeout=UI_READY)
            page.wait_for_selector("button.mlp-train", timeout=UI_READY)
        most = max(most, len(_kernels(server)))
        page.close()
    assert most >= 2  # every page had a kernel of its own

    deadline = time.monotonic() + idle + interval + 60
    while len(_kernels(server)) > 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(_kernels(server)) == 1, "the kernels of closed pages were not culled"
    # the page still open was idle longer than the timeout, yet its kernel still trains
    _small_run(kept)
    cells = _train(kept, 1)
    assert cells[0] == "#1", cells
    kept.close()
    deadline = time.monotonic() + idle + interval + 60
    while _kernels(server) and time.monotonic() < deadline:
        time.sleep(1)
    assert _kernels(server) == [], "the kernel of the last closed page was not culled"


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_jupyter_runs_the_explorer_notebook(page, start_server, tmp_path, app):
    # a copy, so that autosave can never write outputs into the committed notebook
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    # expose_app_in_browser gives the page window.jupyterapp, to run the cells by command;
    # the read-only extension manager never asks PyPI (Notebook 7 does not load with it)
    extra = (
        ["--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly"]
        if app == "lab"
        else ["--JupyterNotebookApp.expose_app_in_browser=True"]
    )
    start_server(
        [
            VENV_BIN / f"jupyter-{app}",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            *extra,
        ],
        port,
        cwd=root,
    )
    page.set_viewport_size({"width": 1400, "height": 1700})
    path = "lab/tree" if app == "lab" else "notebooks"
    page.goto(f"http://127.0.0.1:{port}/{path}/{NOTEBOOK.name}?token={token}", timeout=UI_READY)
    page.wait_for_function(
        """() => {
            const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const kernel = panel && panel.sessionContext && panel.sessionContext.session
                && panel.sessionContext.session.kernel;
            return kernel && kernel.status === "idle";
        }""",
        timeout=UI_READY,
    )
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    _train_small_run(page)
    page.locator(".mlp-explorer").scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"explorer-{app}.png")
