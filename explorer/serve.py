"""Serve notebooks/explorer.ipynb with Voilà on 127.0.0.1: `make explore` and the browser tests.

    python explorer/serve.py [--port=8866] [more Voilà options]

Every setting of the explorer's server is here, with its reason:

- The notebook is trusted (signed) first, in the Jupyter data folder (`.cache/jupyter/data` under
  make): otherwise every page load logs "Notebook explorer.ipynb is not trusted".
- Kernels talk to the server over IPC sockets in Voilà's private connection folder instead of TCP
  ports on 127.0.0.1: no other user of the machine can connect to them, and the kernel does not log
  "Kernel is running over TCP without encryption".
- WebSocket pings are off. jupyter_server pings every `ws_ping_interval` ms itself and hands the
  same two numbers to tornado (6.5 and later), which reads them as its own settings and logs
  "websocket_ping_timeout (90000) cannot be longer than the websocket_ping_interval (30000)". No
  pair of values pleases both: tornado wants timeout <= interval, and jupyter_server then closes a
  healthy socket whenever a ping is answered a millisecond late. Pings detect connections that died
  without closing, which does not happen between a browser and a server on the same machine: a
  closed or crashed browser closes its sockets at once.
- Voilà's connection folder (the kernels' IPC sockets) is made in the system's temporary folder,
  or in /tmp when that path is so long that a socket's path would pass the 107 bytes a Unix socket
  allows.
- The page uses the template `mlp-explorer` (explorer/jupyter/voila/templates/): Voilà's lab
  template without its two Font Awesome stylesheets on a CDN, which Voilà's own script bundle
  already carries, so the page makes no request that leaves the machine.
- The page loads only the two JupyterLab extensions it needs, the widget manager and Voilà's
  adapter for it: every other extension installed in the environment (the notebook and MyST
  extensions, pygments' styles) would be fetched, parsed and started on every page load for
  nothing.
- A closed or reloaded page's kernel is shut down at once. Voilà's page sends a shutdown request on
  `beforeunload`, which failed with 403 "'_xsrf' argument missing from POST"
  (voila-dashboards/voila#1458): nothing in a Voilà page creates the `_xsrf` cookie the request
  must carry. A prelaunch hook creates it before the page is sent.
- A kernel whose page vanished without that request (a browser killed) is culled after
  CULL_IDLE_TIMEOUT idle seconds, looked at every CULL_INTERVAL seconds: within 40 s. A page still
  open keeps its kernel however long it is idle: the culler spares every kernel with a connected
  websocket (`cull_connected` stays False), and an open page stays connected.
- Culling an idle kernel is logged at INFO, not as jupyter_server's WARNING: it is the behaviour
  configured here, nothing for the person running the server to act on. The line is still there
  at the default level and with --debug, and gone with --Voila.log_level=WARN. A kernel culled
  because it died stays a warning.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOTEBOOK = REPO / "notebooks" / "explorer.ipynb"
TEMPLATES = HERE / "jupyter"  # a Jupyter data folder holding voila/templates/mlp-explorer
TEMPLATE = "mlp-explorer"
EXTENSIONS = ["@jupyter-widgets/jupyterlab-manager", "@voila-dashboards/widgets-manager8"]
HOST = "127.0.0.1"
CULL_IDLE_TIMEOUT = 30  # seconds
CULL_INTERVAL = 10  # seconds


def connection_root() -> str:
    """Where Voilà makes its private connection folder: a socket's path there is that folder plus
    about 70 bytes (voila_xxxxxxxx/kernel-<uuid>-ipc-<port>), and must stay under 107."""
    root = tempfile.gettempdir()
    return root if len(root.encode()) <= 36 else "/tmp"


def trust(notebook: Path) -> None:
    """Sign the notebook in this Jupyter data folder's signature store, as `jupyter trust` does."""
    import nbformat
    from nbformat.sign import NotebookNotary

    NotebookNotary().sign(nbformat.read(notebook, as_version=4))


class IdleCullingIsInfo(logging.Filter):
    """On Voilà's logger: jupyter_server's "Culling 'idle' kernel …" becomes an INFO record, which
    the handler then shows or not by the log level like any other."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith("Culling '%s' kernel"):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


def create_xsrf_cookie(handler, notebook, cwd):
    """Voilà's prelaunch hook, run before the page is sent: reading tornado's `xsrf_token` sets the
    `_xsrf` cookie that the page's shutdown request on unload must echo. Changes nothing else."""
    handler.xsrf_token
    return None


def config():
    """The traitlets configuration of the explorer's Voilà server."""
    from traitlets.config import Config

    config = Config()
    config.Voila.ip = HOST
    config.Voila.open_browser = False
    config.Voila.root_dir = str(REPO)
    config.Voila.connection_dir_root = connection_root()
    config.Voila.tornado_settings = {"ws_ping_interval": 0}
    config.VoilaConfiguration.template = TEMPLATE
    config.VoilaConfiguration.extension_allowlist = EXTENSIONS
    config.VoilaConfiguration.prelaunch_hook = create_xsrf_cookie
    config.KernelManager.transport = "ipc"
    config.MappingKernelManager.cull_idle_timeout = CULL_IDLE_TIMEOUT
    config.MappingKernelManager.cull_interval = CULL_INTERVAL
    # merged into traitlets' logging configuration of the "Voila" logger, the kernels' logger too
    config.Voila.logging_config = {
        "filters": {"idle_culling_is_info": {"()": IdleCullingIsInfo}},
        "loggers": {"Voila": {"filters": ["idle_culling_is_info"]}},
    }
    return config


def main(argv: list[str] | None = None) -> None:
    """Trust the notebook and run Voilà on it until Ctrl-C (or SIGTERM)."""
    argv = sys.argv[1:] if argv is None else argv
    # Voilà finds templates in the Jupyter data folders; JUPYTER_PATH adds this one before the rest
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        path for path in (str(TEMPLATES), os.environ.get("JUPYTER_PATH", "")) if path
    )
    trust(NOTEBOOK)
    from voila.app import Voila

    Voila.launch_instance([str(NOTEBOOK), *argv], config=config())


if __name__ == "__main__":
    main()
