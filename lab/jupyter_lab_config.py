"""The Jupyter server of `make lab`: `jupyter lab --config=lab/jupyter_lab_config.py`.

Every setting, with its reason:

- Notebooks are read and saved by lab_contents.NotebookContentsManager: a notebook opens
  unmodified although its kernel reports a `language_info` with this machine's Python version, and
  saving strips outputs, execution counts and evaluated inline expressions (lab_contents.py says
  why and how), so the tracked notebooks never change by running them.
- JupyterLab's settings defaults come from lab/settings/overrides.json (LabApp.app_settings_dir):
  never fetch or ask about "official Jupyter news" and never look for JupyterLab updates (both
  would contact a website; the question covers the first notebook). A student can still change
  either in the Settings Editor; user settings and workspaces go to $JUPYTER_CONFIG_DIR/lab,
  which the Makefile puts in .cache/jupyter, never in $HOME.
- overrides.json also renders every cell when a notebook opens (notebook windowing mode "none",
  as in JupyterLab 3). JupyterLab 4.6's default ("contentVisibility") starts the cells below the
  screen as placeholders and renders them in idle time, seconds later; jupyterlab-myst 2.7.0
  evaluates a Markdown cell's {eval} expressions from the cell's rendered MyST tree, so a Run All
  right after opening left every cell not yet rendered without values (its expressions shown as
  code) until that cell was run again. Our notebooks have at most about 60 cells: rendering them
  all at once costs nothing noticeable.
- The extension manager is read-only: it lists the installed extensions (jupyterlab-myst, which
  renders the notebooks' {eval} inline expressions, and ipywidgets) and never asks PyPI.
- The server listens on 127.0.0.1 only, opens no browser (it prints the URL with its token) and
  runs as root too (`make lab` in a container).
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # lab_contents, imported by the server by name

c = get_config()  # noqa: F821  (defined by traitlets when it runs a config file)

c.ServerApp.root_dir = str(HERE.parent / "notebooks")
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.open_browser = False
c.ServerApp.allow_root = True
c.ServerApp.contents_manager_class = "lab_contents.NotebookContentsManager"
c.ContentsManager.pre_save_hook = "lab_contents.strip_outputs"
c.LabApp.app_settings_dir = str(HERE / "settings")
c.LabApp.extension_manager = "readonly"
