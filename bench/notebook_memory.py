"""Peak memory of each task notebook's kernel (and of the worker processes it trains in).

    .venv/bin/python bench/notebook_memory.py            # full protocol, $MLP_SEEDS seeds (default 3)
    MLP_SEEDS=1 .venv/bin/python bench/notebook_memory.py task2   # only notebooks whose name has "task2"

Every notebook in notebooks/task*.ipynb is executed headless, exactly as the report build does, with
one extra cell at the end that reads the kernel's high-water mark of resident memory (VmHWM in
/proc) and that of its still-running child processes (the joblib workers that trained the
networks). Linux only. Runs are never taken from the report's run cache.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
PROBE = r'''
import json, os
from pathlib import Path

def _hwm(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids

_kids = [k for k in _children(os.getpid()) if _hwm(k) is not None]
print("MEMORY-PROBE " + json.dumps({"kernel": _hwm(os.getpid()), "workers": [_hwm(k) for k in _kids]}))
'''


def main() -> int:
    if os.environ.get("MLP_MEMORY_KEEP_CACHE") != "1":   # set it to reuse $MLP_RUN_CACHE while iterating
        os.environ.pop("MLP_RUN_CACHE", None)
    os.environ.setdefault("TQDM_DISABLE", "1")
    limit = 400.0
    print(f"{'notebook':40s} {'seconds':>8s} {'kernel peak MB':>15s} {'worker peaks MB':>20s}")
    worst = 0.0
    wanted = sys.argv[1:]
    for path in sorted((REPO / "notebooks").glob("task*.ipynb")):
        if wanted and not any(w in path.name for w in wanted):
            continue
        nb = nbformat.read(path, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(PROBE))
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=None, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds = time.perf_counter() - t0
        text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
        probe = json.loads(text.split("MEMORY-PROBE ", 1)[1])
        workers = ", ".join(f"{w:.0f}" for w in probe["workers"]) or "-"
        worst = max(worst, probe["kernel"])
        print(f"{path.name:40s} {seconds:8.1f} {probe['kernel']:15.0f} {workers:>20s}", flush=True)
    print(f"largest kernel peak: {worst:.0f} MB (target <= {limit:.0f} MB: {'met' if worst <= limit else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
