"""Peak memory (resident set size) of a training run of each network, each in a fresh process.

    .venv/bin/python bench/measure_memory.py       # [64], [128], ten layers of 64; 1 epoch
    .venv/bin/python bench/measure_memory.py --epochs 2 --dtype float64 --network 64,10

Each run is a child process that loads the data, then trains one protocol run (no progress bar)
and reports, in MB: the resident size once the modules are imported, the process's peak while the
data is loaded and prepared, the resident size after that, and the peak during training alone (the
kernel's high-water mark is reset just before training, where Linux allows it). The peak of the
whole process is what a notebook kernel that trains this network would reach.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NETWORKS = {"[64]": (64, 10), "[128]": (128, 10), "10 x [64]": (64,) * 10 + (10,)}


def _status_mb(field: str) -> float | None:
    """A VmRSS/VmHWM line of /proc/self/status in MB (None where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    """This process's peak RSS in MB (since the last _reset_peak)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(layer_sizes: tuple[int, ...], epochs: int, dtype: str) -> dict:
    sys.path.insert(0, str(HERE.parent))
    import mlp_core as mlp

    out = {"after_import": _status_mb("VmRSS")}
    config = mlp.RunConfig(layer_sizes=layer_sizes, max_epochs=epochs, dtype=dtype)
    data = mlp.prepare_data(config.n_train, config.dtype, config.n_val)
    out["peak_data"] = _peak_mb()
    out["after_data"] = _status_mb("VmRSS")
    out["reset"] = _reset_peak()
    mlp.train(config, data, progress=False)
    out["peak_training"] = _peak_mb() if out["reset"] else None
    # (not ru_maxrss where VmHWM exists: Linux carries the parent's peak into it across fork + exec)
    out["peak_process"] = max(out["peak_data"], out["peak_training"] or _peak_mb())
    return out


def measure(
    layer_sizes: tuple[int, ...], epochs: int = 1, dtype: str = "float32", timeout: float = 600
) -> dict:
    """Run `child` in a fresh interpreter and return its figures (MB)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--network",
        ",".join(map(str, layer_sizes)),
        "--epochs",
        str(epochs),
        "--dtype",
        dtype,
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {layer_sizes} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict], dtype: str, epochs: int) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:,.0f}"  # noqa: E731
    lines = [
        f"Peak memory (RSS, MB) of a training run in a fresh process ({dtype}, {epochs} epoch(s)):",
        f"{'network':<11} {'after import':>12} {'peak, data':>11} {'after data':>11} "
        f"{'peak, training':>15} {'peak, process':>14}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<11} {fmt(r['after_import']):>12} {fmt(r['peak_data']):>11} "
            f"{fmt(r['after_data']):>11} "
            f"{fmt(r['peak_training']):>15} {fmt(r['peak_process']):>14}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--network",
        action="append",
        help="layer sizes, e.g. 64,10 (repeatable); default: all three",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        sizes = tuple(int(s) for s in args.network[0].split(","))
        print(json.dumps(child(sizes, args.epochs, args.dtype)))
        return 0
    nets = (
        {f"[{n}]": tuple(int(s) for s in n.split(",")) for n in args.network}
        if args.network
        else NETWORKS
    )
    results = {name: measure(sizes, args.epochs, args.dtype) for name, sizes in nets.items()}
    print(table(results, args.dtype, args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
