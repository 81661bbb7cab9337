"""Peak memory of each task notebook's kernel, and of the worker processes it trains in.

    .venv/bin/python bench/notebook_memory.py              # full protocol, $MLP_SEEDS seeds (3)
    MLP_SEEDS=1 .venv/bin/python bench/notebook_memory.py task2   # notebooks named *task2*
    MLP_SMOKE=1 .venv/bin/python bench/notebook_memory.py   # tiny runs: checks that it works

Every notebook in notebooks/task*.ipynb is executed headless, as the report build executes it, with
two extra cells: a first one that starts a thread in the kernel which watches the kernel's worker
processes (those mlp_runs.run_experiments trains in) and keeps each one's high-water mark of
resident memory (VmHWM in /proc, read every 0.2 s), and a last one that reports the kernel's own
high-water mark and the workers'. Unlike the report build, which trains every run before it
executes the notebooks, the notebooks here train their runs themselves, in a fresh, empty run
store ($MLP_RUN_STORE), so the figures are those of a notebook run by hand on a machine that has
trained nothing yet (the store is deleted afterwards). Set MLP_MEMORY_KEEP_STORE=1 to use the
project's run store instead (then stored runs are loaded, not trained).
Linux only.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
LIMIT_MB = 400.0  # the target for a notebook kernel's peak

WATCH = r'''
import os as _os, threading as _threading, time as _time
from pathlib import Path as _Path

_WORKER_PEAKS = {}  # pid of every worker process seen -> its peak resident size (MB)


def _worker_pids():
    """Child processes of this kernel that multiprocessing spawned as workers."""
    for stat in _Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == _os.getpid() and \
                    b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                yield int(stat.parent.name)
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            pass


def _watch_workers():
    while True:
        for pid in _worker_pids():
            try:
                text = _Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
                    _WORKER_PEAKS[pid] = max(_WORKER_PEAKS.get(pid, 0.0), peak)
        _time.sleep(0.2)


_threading.Thread(target=_watch_workers, name="worker-memory-watch", daemon=True).start()
'''

PROBE = r"""
import json as _json
_status = _Path("/proc/self/status").read_text().splitlines()
_kernel_peak = next(int(line.split()[1]) / 1024 for line in _status if line.startswith("VmHWM:"))
_probe = {"kernel": _kernel_peak, "workers": sorted(_WORKER_PEAKS.values())}
print("MEMORY-PROBE " + _json.dumps(_probe))
"""


def _environment(scratch: Path) -> None:
    """Caches in the project (never $HOME), as the report build sets them, and an empty run store in
    `scratch` unless MLP_MEMORY_KEEP_STORE=1."""
    for var, sub in (
        ("MPLCONFIGDIR", "matplotlib"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTER_CONFIG_DIR", "jupyter/config"),
        ("JUPYTER_DATA_DIR", "jupyter/data"),
        ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"),
    ):
        os.environ.setdefault(var, str(REPO / ".cache" / sub))
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if os.environ.get("MLP_MEMORY_KEEP_STORE") != "1":
        os.environ["MLP_RUN_STORE"] = str(scratch / "runs")


def measure(path: Path, scratch: Path) -> tuple[float, dict]:
    """Execute the notebook at `path` with the watch and probe cells (the kernel's sockets in
    `scratch`); its seconds and the probe's figures."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(WATCH))
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    # over IPC, as the report build runs its kernels (over TCP, every kernel warns that it is
    # unencrypted)
    km = KernelManager(
        kernel_name="python3", transport="ipc", ip=str(scratch / path.stem.split("_")[0])
    )
    t0 = time.perf_counter()
    try:
        NotebookClient(
            nb, km=km, timeout=None, resources={"metadata": {"path": str(path.parent)}}
        ).execute()
        seconds = time.perf_counter() - t0
    finally:
        if km.has_kernel:  # a kernel manager passed in is ours to shut down
            km.shutdown_kernel()
    text = "".join(
        o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream"
    )
    if "MEMORY-PROBE " not in text:
        raise RuntimeError(f"{path.name}: the memory probe printed nothing (is this Linux?)")
    return seconds, json.loads(text.split("MEMORY-PROBE ", 1)[1])


def main(argv: list[str] | None = None) -> int:
    wanted = sys.argv[1:] if argv is None else argv
    paths = [
        p
        for p in sorted((REPO / "notebooks").glob("task*.ipynb"))
        if not wanted or any(w in p.name for w in wanted)
    ]
    if not paths:
        print(f"no task notebook matches {wanted}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mlp-memory-") as scratch:
        _environment(Path(scratch))
        print(
            f"{'notebook':40s} {'seconds':>8s} {'kernel peak MB':>15s} {'workers':>8s} "
            f"{'worker peak MB':>15s}"
        )
        worst = 0.0
        for path in paths:
            seconds, probe = measure(path, Path(scratch))
            workers = probe["workers"]
            worker_peak = f"{max(workers):.0f}" if workers else "-"
            worst = max(worst, probe["kernel"])
            print(
                f"{path.name:40s} {seconds:8.1f} {probe['kernel']:15.0f} {len(workers):8d} "
                f"{worker_peak:>15s}",
                flush=True,
            )
    print(
        f"largest kernel peak: {worst:.0f} MB (target <= {LIMIT_MB:.0f} MB: "
        f"{'met' if worst <= LIMIT_MB else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
