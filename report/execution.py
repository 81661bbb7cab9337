"""Executing the task notebooks for the report: kernels, inline expressions, progress, Ctrl-C.

* Each notebook runs in a kernel of its own (up to `jobs` at a time) over IPC sockets in a short
  private runtime folder (a Unix socket path is limited to 107 bytes, so never under the project,
  whose path may be long), removed when the build ends; no TCP ports, no files left behind.
* Markdown cells may hold MyST inline expressions, {eval}`expr` (or {eval}``expr`` when expr
  holds a backtick), found as jupyterlab-myst finds them (roles). As jupyterlab-myst does in
  JupyterLab, each is evaluated in the kernel (an execute request's `user_expressions`) once the
  code cells above it have run, and the results are stored in the cell's `user_expressions`
  metadata; the export puts them into the text. An expression that fails, an {eval} that is
  not a role and a role other than {eval} fail the build, naming the notebook and the cell.
* Progress: which notebooks run, their cell n / total and the elapsed time; redrawn on a
  terminal, a few plain lines a minute otherwise.
* Ctrl-C ends the kernels at once (a busy kernel would not answer a shutdown request) and the
  build within a second or two.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

# jupyterlab-myst's pattern of a role (markdown-it-myst, as installed): {name}, then a body between
# two runs of the same number of backticks, so that ``{eval}``"`"`` holds the expression "`"
ROLE = re.compile(r"\{\s*([^}]+?)\s*\}(`+)(?!`)(.+?)(?<!`)\2(?!`)", re.S)
EVAL_MARK = re.compile(r"\{\s*eval[\s}]")  # what starts an {eval} role, well formed or not
FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")  # a line opening or closing a fenced block
BACKTICKS = re.compile(r"`+")


class NotebookFailed(RuntimeError):
    """A notebook could not be executed; the message names the notebook, the cell and the error."""


@dataclasses.dataclass(frozen=True)
class Role:
    """A MyST role in a Markdown text: text[start:end] is {name}`body` as written (options after
    the name, any number of backticks)."""

    start: int
    end: int
    name: str
    body: str


def roles(source: str) -> list[Role]:
    """The MyST roles of a Markdown text where jupyterlab-myst finds them: in its paragraphs, not
    in fenced code, code spans or $math$, not after a backslash, each body exactly as written.
    ValueError naming the first {eval} that is not a role (JupyterLab shows it as typed) and the
    first role other than {eval} (the report would print it as typed)."""
    found = []
    for offset, paragraph in _paragraphs(source):
        for role in _roles_in(paragraph):
            found.append(
                dataclasses.replace(role, start=offset + role.start, end=offset + role.end)
            )
    for role in found:
        if role.name != "eval":
            raise ValueError(
                f"{source[role.start : role.end]!r} is a {{{role.name}}} role, which the report "
                "would print as typed: only {eval} roles are rendered"
            )
    return found


def _paragraphs(source: str) -> list[tuple[int, str]]:
    """(offset, text) of each paragraph of `source`: the runs of lines between blank lines and
    fence lines, with fenced code left out (a directive's fence, ```{note}, holds Markdown)."""
    paragraphs, lines = [], []
    code = None  # the fence of the code block we are in
    directives = []  # the fences of the directives we are in, innermost last
    offset = 0
    for line in source.splitlines(keepends=True):
        fence = FENCE.fullmatch(line.rstrip("\r\n"))
        if code is not None or fence or not line.strip():
            if lines:
                paragraphs.append((offset - sum(map(len, lines)), "".join(lines)))
                lines = []
            bare = fence is not None and not fence.group(2).strip()
            if code is not None:
                code = None if bare and fence.group(1).startswith(code) else code
            elif fence and fence.group(2).lstrip().startswith("{"):
                directives.append(fence.group(1))
            elif bare and directives and fence.group(1).startswith(directives[-1]):
                directives.pop()
            elif fence:
                code = fence.group(1)
        else:
            lines.append(line)
        offset += len(line)
    if lines:
        paragraphs.append((offset - sum(map(len, lines)), "".join(lines)))
    return paragraphs


def _roles_in(text: str) -> list[Role]:
    """The roles of one paragraph, read left to right as markdown-it reads it: at each position
    math ($...$ or $$...$$) first, then a backslash escape, a role, a code span."""
    found = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2
        elif char == "$":
            mark = "$$" if text.startswith("$$", pos) else "$"
            close = _unescaped(text, mark, pos + len(mark))
            pos = pos + len(mark) if close < 0 else close + len(mark)  # a lone $ is text
        elif char == "{" and text[pos - 1 : pos] == "\\":  # after an escaped backslash, as there
            pos += 1
        elif char == "{" and (role := ROLE.match(text, pos)):
            found.append(Role(pos, role.end(), role.group(1).split()[0], role.group(3)))
            pos = role.end()
        elif char == "{" and EVAL_MARK.match(text, pos):
            line = text[pos:].split("\n", 1)[0]
            raise ValueError(
                f"{line!r} holds an {{eval}} that is not a role: write {{eval}}`expression`, or "
                "{eval}``expression`` when the expression holds a backtick"
            )
        elif char == "`":
            run = BACKTICKS.match(text, pos).group()
            close = re.compile(f"(?<!`){run}(?!`)").search(text, pos + len(run))
            pos = close.end() if close else pos + len(run)  # a code span, or literal backticks
        else:
            pos += 1
    return found


def _unescaped(text: str, mark: str, start: int) -> int:
    """Where `mark` next occurs in `text` from `start` with no backslash escaping it, or -1."""
    found = text.find(mark, start)
    while found >= 0 and (found - len(text[:found].rstrip("\\"))) % 2:
        found = text.find(mark, found + 1)
    return found


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


class NotebookProgress:
    """What the notebooks are doing: 'notebooks: task2 cell 14/30, task3 cell 5/46 | 00:34'.

    On a terminal one line is redrawn (at most twice a second); otherwise a line is printed when
    a notebook starts or ends and a status line every `log_interval` seconds."""

    def __init__(self, stream=None, log_interval: float = 30.0):
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty()
        self.log_interval = log_interval
        self.cells: dict[str, tuple[int, int]] = {}  # notebook -> (cell, cells)
        self.t0 = time.monotonic()
        self.last_line = 0.0
        self.drawn = False
        self.lock = threading.Lock()

    def started(self, name: str, cells: int) -> None:
        with self.lock:
            self.cells[name] = (0, cells)
            if not self.terminal:
                self._write(f"  executing {name} ({cells} cells)")

    def cell(self, name: str, index: int) -> None:
        with self.lock:
            self.cells[name] = (index, self.cells.get(name, (0, index))[1])

    def finished(self, name: str, seconds: float) -> None:
        with self.lock:
            self.cells.pop(name, None)
            self._write(f"  executed {name} in {seconds:.1f} s")

    def status(self) -> str:
        running = ", ".join(
            f"{name.split('_')[0]} cell {cell}/{cells}"
            for name, (cell, cells) in self.cells.items()
        )
        return f"notebooks: {running or 'starting'} | {_clock(time.monotonic() - self.t0)}"

    def tick(self) -> None:
        """Redraw the status (terminal) or print it if a while has passed (log)."""
        with self.lock:
            now = time.monotonic()
            if self.terminal:
                self.stream.write("\r\x1b[K" + self.status())
                self.stream.flush()
                self.drawn = True
            elif self.cells and now - self.last_line >= self.log_interval:
                self._write("  " + self.status())

    def close(self) -> None:
        with self.lock:
            if self.drawn:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self.drawn = False

    def _write(self, line: str) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False
        self.stream.write(line + "\n")
        self.stream.flush()
        self.last_line = time.monotonic()


def _report_client_class():
    from jupyter_core.utils import ensure_async
    from nbclient import NotebookClient

    class ReportClient(NotebookClient):
        """nbclient's executor, which also evaluates the inline expressions of Markdown cells
        after the code cells before them, and reports every cell to the progress display."""

        def __init__(self, nb, *, name: str, progress: NotebookProgress, **kwargs):
            super().__init__(nb, **kwargs)
            self.name = name
            self.progress = progress

        async def async_execute_cell(self, cell, cell_index, execution_count=None, **kwargs):
            self.progress.cell(self.name, cell_index + 1)
            if cell.cell_type == "markdown":
                await self._evaluate_inline(cell, cell_index)
                return cell
            return await super().async_execute_cell(cell, cell_index, execution_count, **kwargs)

        async def _evaluate_inline(self, cell, cell_index: int) -> None:
            cell.metadata.pop("user_expressions", None)
            try:
                found = roles(cell.source)
            except ValueError as exc:
                raise NotebookFailed(
                    f"{self.name}.ipynb, cell {cell_index + 1} (Markdown): {exc}"
                ) from None
            written = {}  # each expression once, in order: the role as written
            for role in found:
                written.setdefault(role.body, cell.source[role.start : role.end])
            if not written:
                return
            request = {str(i): expression for i, expression in enumerate(written)}
            msg_id = await ensure_async(
                self.kc.execute("", silent=True, store_history=False, user_expressions=request)
            )
            reply = await self.async_wait_for_reply(msg_id, cell)
            results = (reply or {}).get("content", {}).get("user_expressions", {})
            stored = []
            for key, expression in request.items():
                result = results.get(key, {"status": "error", "ename": "no reply", "evalue": ""})
                if result.get("status") != "ok":
                    error = f"{result.get('ename')}: {result.get('evalue')}".rstrip(": ")
                    raise NotebookFailed(
                        f"{self.name}.ipynb, cell {cell_index + 1} (Markdown): the inline "
                        f"expression {written[expression]} failed: {error}"
                    )
                shown = result.get("data", {}).get("text/plain", "")
                if re.match(r"^np\.\w+\(", shown):
                    raise NotebookFailed(
                        f"{self.name}.ipynb, cell {cell_index + 1} (Markdown): "
                        f"{written[expression]} is a numpy number and would read {shown}: "
                        f"format it with num(), pct(), count() or sci() of mlp_report"
                    )
                stored.append({"expression": expression, "result": result})
            cell.metadata["user_expressions"] = stored

    return ReportClient


def _cell_error(name: str, nb, exc) -> str:
    """'task3.ipynb, cell 14: NameError: name 'x' is not defined' from a CellExecutionError."""
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{name}.ipynb, cell {index + 1}: {out.get('ename')}: {out.get('evalue')}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{name}.ipynb: {text[-1] if text else type(exc).__name__}"


class Executor:
    """Executes notebooks (up to `jobs` at a time) in kernels whose runtime files live in a
    private temporary folder; `close()` (or leaving the `with` block) removes it."""

    def __init__(self, jobs: int, progress: NotebookProgress):
        self.jobs = jobs
        self.progress = progress
        self.runtime = Path(tempfile.mkdtemp(prefix="mlp-"))  # /tmp/mlp-XXXXXXXX: short
        self.clients: list = []
        self.stopping = threading.Event()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._kill_kernels()
        shutil.rmtree(self.runtime, ignore_errors=True)

    def run(self, todo: list[tuple[Path, Path]], write) -> dict[str, float]:
        """Execute every (notebook, executed copy) of `todo`; `write(path, nb)` saves a copy.
        Returns the seconds per notebook."""
        return self._run_interruptibly(lambda: self._execute_all(todo, write))

    async def _execute_all(self, todo, write) -> dict[str, float]:
        semaphore = asyncio.Semaphore(self.jobs)
        seconds = {}

        async def one(path: Path, out: Path) -> None:
            async with semaphore:
                seconds[path.stem] = await self._execute(path, out, write)
                self.progress.finished(path.stem, seconds[path.stem])

        await asyncio.gather(*(one(path, out) for path, out in todo))
        return seconds

    async def _execute(self, path: Path, out: Path, write) -> float:
        import nbformat
        from jupyter_client.manager import AsyncKernelManager
        from nbclient.exceptions import CellExecutionError

        if self.stopping.is_set():  # Ctrl-C came: start no more kernels
            raise asyncio.CancelledError
        nb = nbformat.read(path, as_version=4)
        tag = path.stem.split("_")[0]
        km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(self.runtime / tag))
        km.connection_file = str(self.runtime / f"kernel-{tag}.json")
        client = _report_client_class()(
            nb,
            km=km,
            name=path.stem,
            progress=self.progress,
            timeout=None,
            resources={"metadata": {"path": str(path.parent)}},
        )
        self.clients.append(client)
        self.progress.started(path.stem, len(nb.cells))
        t0 = time.perf_counter()
        try:
            await client.async_execute()
        except CellExecutionError as exc:
            failed = out.with_suffix(".failed.ipynb")
            write(failed, nb)
            raise NotebookFailed(
                f"{_cell_error(path.stem, nb, exc)} (traceback: {failed})"
            ) from None
        except NotebookFailed:
            write(out.with_suffix(".failed.ipynb"), nb)
            raise
        write(out, nb)
        return time.perf_counter() - t0

    def _run_interruptibly(self, make_coroutine):
        """Run the notebooks' event loop in a thread of its own, so that Ctrl-C always reaches
        the main thread (nbclient would take SIGINT over on the loop), then end the kernels at
        once. A second Ctrl-C is ignored while that happens."""
        loop = asyncio.new_event_loop()
        outcome = {}

        def run() -> None:
            try:
                outcome["result"] = loop.run_until_complete(make_coroutine())
            except BaseException as exc:  # handed to the main thread
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="notebooks", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.25)
                self.progress.tick()
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.stopping.set()
            self._kill_kernels()
            loop.call_soon_threadsafe(lambda: [task.cancel() for task in asyncio.all_tasks(loop)])
            thread.join(1)
            raise
        finally:
            self.progress.close()
            self._kill_kernels()
        if "error" in outcome:
            raise outcome["error"]
        loop.close()
        return outcome["result"]

    def _kill_kernels(self) -> None:
        """No kernel outlives the build: kill each kernel's process group, and drop nbclient's
        exit-time clean-up of it (which would wait about a second per kernel on its sockets)."""
        for client in self.clients:
            atexit.unregister(client._cleanup_kernel)
            km = client.km
            pid = getattr(getattr(km, "provisioner", None), "pid", None) if km else None
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)  # kernels run in their own process group
                except (ProcessLookupError, PermissionError):
                    pass
