"""How `make lab` reads and writes notebooks: they open unmodified and are saved without outputs.

The Jupyter server of `make lab` (lab/jupyter_lab_config.py) uses NotebookContentsManager, the
server's default contents manager with three changes:

- Reading: a notebook's `language_info` is completed to what its kernel will report. When a kernel
  connects, JupyterLab copies the kernel's `language_info` (name, version "3.11.7", mimetype,
  codemirror_mode, pygments_lexer, ...) into the notebook's metadata (NotebookPanel's
  `_updateLanguage`). Setting a metadata key to an equal value changes nothing; any other value
  marks the notebook modified (YNotebook.setMetadata in @jupyter/ydoc). The committed notebooks
  hold only `{"name": "python"}`, which does not depend on the machine's Python, so every notebook
  was marked modified as soon as its kernel started. Given the kernel's own value on reading, the
  notebook already holds what the kernel reports: the update is a no-op and the tab stays clean.
- Saving (`strip_outputs`, a pre-save hook): outputs, execution counts, the evaluated inline
  expressions (`user_expressions`, written by jupyterlab-myst), output display state, widget
  state, and the machine-specific part of `language_info` are removed, so a saved notebook is
  exactly what is committed: `git status` stays clean after running a notebook.
- Trust: a notebook without outputs or evaluated expressions has nothing to distrust, so it opens
  trusted without the server's "Notebook ... is not trusted" warning on every open (Jupyter signs
  such a notebook on its next save anyway); any other notebook is checked against its signature
  as before.
"""

from __future__ import annotations

import asyncio
import json
import sys

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

# Cell metadata that only describes outputs or a past execution
OUTPUT_METADATA = ("user_expressions", "execution", "collapsed", "scrolled")
# How jupyter_client starts a kernel whose argv begins with one of these: with the server's own
# interpreter (jupyter_client's KernelManager.format_kernel_cmd)
THIS_PYTHON = {
    "python",
    f"python{sys.version_info[0]}",
    "python{}.{}".format(*sys.version_info[:2]),
}
# Asks an interpreter for the `language_info` its IPython kernel reports in its kernel info
ASK_IPYKERNEL = (
    "import json; from ipykernel.ipkernel import IPythonKernel; "
    "print(json.dumps(IPythonKernel.language_info))"
)
_reported: dict[str, dict | None] = {}  # interpreter -> its kernel's language_info


def ipykernel_python(kernel_spec_manager, kernel_name: str) -> str | None:
    """The interpreter that runs the kernel `kernel_name` when it is an IPython kernel
    (`python -m ipykernel_launcher ...`), else None."""
    try:
        argv = list(kernel_spec_manager.get_kernel_spec(kernel_name).argv)
    except Exception:  # no such kernel here: JupyterLab asks which kernel to use
        return None
    if len(argv) < 3 or argv[1:3] != ["-m", "ipykernel_launcher"]:
        return None
    return sys.executable if argv[0] in THIS_PYTHON else argv[0]


async def reported_language_info(python: str) -> dict | None:
    """The `language_info` of an IPython kernel run by `python`, asked once per interpreter (the
    kernel reports a class attribute: the interpreter's version and fixed names); None when the
    interpreter cannot tell within a minute."""
    if python not in _reported:
        try:
            process = await asyncio.create_subprocess_exec(
                python,
                "-c",
                ASK_IPYKERNEL,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
            except asyncio.TimeoutError:
                process.kill()
                raise
            info = json.loads(out) if process.returncode == 0 else None
        except (OSError, ValueError, asyncio.TimeoutError):
            info = None
        _reported[python] = info if isinstance(info, dict) and "name" in info else None
    return _reported[python]


def strip_outputs(model: dict, **kwargs) -> None:
    """Pre-save hook: the notebook as it is committed, without anything a run produced."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    notebook = model["content"]
    metadata = notebook.get("metadata", {})
    metadata.pop("widgets", None)  # ipywidgets' saved widget state
    info = metadata.get("language_info")
    if isinstance(info, dict) and "name" in info:
        metadata["language_info"] = {"name": info["name"]}
    for cell in notebook.get("cells", []):
        cell_metadata = cell.get("metadata", {})
        for key in OUTPUT_METADATA:
            cell_metadata.pop(key, None)
        jupyter = cell_metadata.get("jupyter")
        if isinstance(jupyter, dict):
            jupyter.pop("outputs_hidden", None)
            if not jupyter:
                del cell_metadata["jupyter"]
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None


def nothing_to_distrust(notebook) -> bool:
    """Whether the notebook holds nothing that trust would let run or show: no outputs and no
    evaluated inline expressions (jupyterlab-myst's notary distrusts those too). The file's own
    `trusted` marks are ignored."""
    for cell in notebook.get("cells", []):
        if cell.get("outputs") or cell.get("metadata", {}).get("user_expressions"):
            return False
    return True


class NotebookContentsManager(AsyncLargeFileManager):
    """The server's default contents manager; a notebook read through it holds the full
    `language_info` of its kernel (see the module's docstring)."""

    async def get(self, path, content=True, type=None, format=None, require_hash=False):
        model = await super().get(
            path, content=content, type=type, format=format, require_hash=require_hash
        )
        if model.get("type") == "notebook" and model.get("content") is not None:
            await self.complete_language_info(model["content"])
        return model

    async def complete_language_info(self, notebook) -> None:
        """Put the `language_info` its kernel will report into the notebook's metadata (only a
        `language_info` that names the same language, or none, is completed)."""
        metadata = notebook.get("metadata", {})
        kernel_name = (metadata.get("kernelspec") or {}).get("name")
        if not kernel_name or self.parent is None:
            return
        python = ipykernel_python(self.parent.kernel_spec_manager, kernel_name)
        reported = await reported_language_info(python) if python else None
        if reported and (metadata.get("language_info") or {}).get("name") in (
            None,
            reported["name"],
        ):
            metadata["language_info"] = dict(reported)

    def mark_trusted_cells(self, nb, path=""):
        """Trust a notebook with nothing to distrust; check any other against its signature, as
        the server does."""
        if nothing_to_distrust(nb):
            self.notary.mark_cells(nb, True)
        else:
            super().mark_trusted_cells(nb, path)
