"""Bit-identity check: does this checkout train exactly as an earlier commit did, on this machine?

    .venv/bin/python bench/bit_identity.py                      # the working tree against 4ee7e7e
    .venv/bin/python bench/bit_identity.py --old HEAD~3 --quick  # fewer, smaller runs
    .venv/bin/python bench/bit_identity.py --kernels Haswell Sandybridge   # under each kernel
    .venv/bin/python bench/bit_identity.py --new /tmp/proposal   # another tree, against 4ee7e7e

Each side is a whole tree of the project (a commit is extracted with `git archive`; the working
tree is used as it is), and trains in a fresh process of its own with that tree first on the
import path, so a side is every module of its commit, whatever its layout. Both sides train the
same runs through the API the notebooks use (`mlp_core.prepare_data`, `RunConfig`, `train`), on
their own prepared data from the same MNIST files: float32 and float64, the protocol's network
on the protocol's full data (tails of 1,568 and 1,808 images in the last evaluation chunks),
[128] with the improved sigmoid and momentum, ten hidden layers of 64, a narrow and a
hidden-layer-free network, recorded gradient norms, early stopping, divergence, splits whose
sizes leave odd tails, and the validations on a second core and without one. Every list, number
and string of each History (not the epoch and step times) and every final weight must be equal:
numbers with ==, arrays with np.array_equal (NaN equal to NaN only at the same places). Then
`evaluate()` of both on trained weights over splits of many sizes.

Both sides run with OPENBLAS_NUM_THREADS=1. A run's products all take one BLAS thread, but at
4ee7e7e the initial gradient norms (record_grad_norms) took the process's default number (one per
core), so they depended on the machine's core count; tests/test_training.py checks that a run no
longer depends on it.

With --kernels, everything is done once per OpenBLAS kernel (OPENBLAS_CORETYPE), both sides under
the same kernel: results differ between kernels, so a change is only judged kernel by kernel.
Prints each comparison and exits 1 if any differs. Timings are not measured here: see bench.py.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = "4ee7e7e"  # the last commit before the core was split into modules (issue 20)
TIMINGS = ("epoch_times", "step_times")  # History fields that are clocks, not results
FULL = (20_000, 10_000)
SMALL = (3_000, 2_100)  # evaluation tails: 952 (two blocks) and 52 (one block of 52 rows)
DEEP = (64,) * 10 + (10,)
TRICKS = dict(activation="improved_sigmoid", init="fan_in", momentum=0.9, learning_rate=0.02)


def cases(quick: bool) -> list[tuple[str, dict, tuple[int, int]]]:
    """(description, RunConfig fields and train() options, (n_train, n_val)) of every run."""
    listed = [
        ("protocol [64] float32, 1 epoch", dict(max_epochs=1), FULL),
        ("protocol [64] float32, 1 epoch, no second core", dict(max_epochs=1, _serial=1), FULL),
        ("protocol [64] float64, 1 epoch", dict(max_epochs=1, dtype="float64"), FULL),
        ("protocol [128] float32, 1 epoch", dict(layer_sizes=(128, 10), max_epochs=1), FULL),
        ("protocol 10 x [64] float32, 1 epoch", dict(layer_sizes=DEEP, max_epochs=1), FULL),
        (
            "[128] improved sigmoid, fan-in, momentum 0.9, grad norms, float32, 3 epochs",
            dict(layer_sizes=(128, 10), record_grad_norms=True, max_epochs=3, **TRICKS),
            SMALL,
        ),
        (
            "[128] improved sigmoid, momentum 0.9, grad norms, 3 epochs, no second core",
            dict(layer_sizes=(128, 10), record_grad_norms=True, max_epochs=3, _serial=1, **TRICKS),
            SMALL,
        ),
        ("10 x [64] float32, 2 epochs", dict(layer_sizes=DEEP, init="fan_in"), SMALL),
        ("10 x [64] float32, 2 epochs, no second core", dict(layer_sizes=DEEP, _serial=1), SMALL),
        ("[60, 60] float64, 2 epochs", dict(layer_sizes=(60, 60, 10), dtype="float64"), SMALL),
        ("narrow [8] float32, 2 epochs", dict(layer_sizes=(8, 10)), SMALL),
        (
            "10 x [64] improved sigmoid, momentum 0.5, float64, 1 epoch",
            dict(layer_sizes=DEEP, dtype="float64", max_epochs=1, **dict(TRICKS, momentum=0.5)),
            SMALL,
        ),
        ("no hidden layer [10] float32, 2 epochs", dict(layer_sizes=(10,)), SMALL),
        ("no hidden layer [10] float64, 2 epochs", dict(layer_sizes=(10,), dtype="float64"), SMALL),
        ("early stopping (patience 2), float32", dict(patience=2, max_epochs=20), (640, 500)),
        (
            "early stopping (patience 2), no second core",
            dict(patience=2, max_epochs=20, _serial=1),
            (640, 500),
        ),
        ("divergence (lr 40), float32", dict(learning_rate=40.0, max_epochs=3), (640, 500)),
        (
            "divergence (lr 40), no second core",
            dict(learning_rate=40.0, max_epochs=3, _serial=1),
            (640, 500),
        ),
        ("n_train 2,050, n_val 2,049: tails of 2 and 1 images", dict(max_epochs=1), (2050, 2049)),
    ]
    if quick:
        listed = [c for c in listed if c[2] != FULL]
        listed.insert(0, ("[64] float32, 1 epoch, 4,000 + 3,000 images", {}, (4000, 3000)))
    return listed


EVALUATE_SIZES = [1, 2, 19, 20, 31, 255, 256, 257, 511, 512, 513, 1023, 2047, 2048, 2049, 2600]


# ---- one side: train every case in this process and write what it recorded ----------------------


def record(tree: Path, out: Path, quick: bool) -> None:
    """Train every case with the modules of `tree` and pickle what each recorded to `out`."""
    sys.path.insert(0, str(tree))
    import numpy as np

    import mlp_core as mlp

    results = {}
    datasets = {}
    for description, fields, (n_train, n_val) in cases(quick):
        fields = {"max_epochs": 2, **fields, "n_train": n_train, "n_val": n_val}
        serial = bool(fields.pop("_serial", 0))
        key = (n_train, n_val, fields.get("dtype", "float32"))
        if key not in datasets:
            datasets[key] = mlp.prepare_data(n_train, key[2], n_val)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the divergence runs warn
            hist = mlp.train(
                mlp.RunConfig(**fields),
                datasets[key],
                progress=False,
                second_core=False if serial else True,
            )
        results[description] = {
            name: value
            for name, value in vars(hist).items()
            if name not in TIMINGS and name != "config"
        } | {"number of epochs": len(hist.epoch_times)}
    data = next(d for (n_train, n_val, dtype), d in datasets.items() if dtype == "float32")
    config = mlp.RunConfig(max_epochs=1, n_train=len(data.train), n_val=len(data.val))
    trained = mlp.train(config, data, progress=False, second_core=False).weights
    for layers, weights in (((64, 10), trained), ((128, 10), None), ((30, 20, 10), None)):
        model = mlp.MLP(layers, rng=3)
        if weights is not None:
            model.weights = [w.copy() for w in weights]
        sizes = [n for n in EVALUATE_SIZES if n <= len(data.train)]
        results[f"evaluate() of {list(layers)} on splits of {len(sizes)} sizes, 1 to 2,600"] = {
            f"{n} images": list(mlp.evaluate(model, mlp.Split(*subset(data.train, n))))
            for n in sizes
        }
    results["numpy"] = {"version": np.__version__}
    out.write_bytes(pickle.dumps(results))


def subset(split, n: int):
    return split.X[:n], split.Y[:n], split.labels[:n]


# ---- the comparison ----------------------------------------------------------------------------


def same(a, b) -> bool:
    """Exact equality: floats bit for bit (NaN equal to NaN), arrays and lists by element."""
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def tree_of(ref: str, scratch: Path) -> Path:
    """A folder holding the project as `ref` names it: a folder itself, or a commit (extracted)."""
    if Path(ref).is_dir():
        return Path(ref).resolve()
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not commit:
        raise SystemExit(
            f"{ref!r} is neither a folder nor a commit of this clone (a shallow clone lacks "
            f"the history: `git fetch --unshallow`)"
        )
    tree = scratch / commit[:12]
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def run_side(tree: Path, kernel: str | None, quick: bool, scratch: Path) -> dict:
    """What the modules of `tree` recorded, trained in a process of their own under `kernel`."""
    out = Path(tempfile.mkstemp(dir=scratch, suffix=".pickle")[1])
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OPENBLAS_NUM_THREADS="1")
    env.setdefault("MNIST_DIR", str(mnist_folder()))
    if kernel:
        env["OPENBLAS_CORETYPE"] = kernel
    env.pop("PYTHONPATH", None)
    command = [sys.executable, str(Path(__file__).resolve()), "--record", str(tree), str(out)]
    done = subprocess.run(command + (["--quick"] if quick else []), cwd=tree, env=env)
    if done.returncode != 0:
        raise SystemExit(f"training with the modules of {tree} failed (exit {done.returncode})")
    return pickle.loads(out.read_bytes())


def mnist_folder() -> Path:
    sys.path.insert(0, str(REPO))
    from mnist_files import mnist_dir

    return mnist_dir()


def blas_kernel(kernel: str | None) -> str:
    env = dict(os.environ, **({"OPENBLAS_CORETYPE": kernel} if kernel else {}))
    script = (
        "import numpy; from threadpoolctl import threadpool_info; "
        "print(*[i.get('architecture') for i in threadpool_info() if i['user_api'] == 'blas'])"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def compare(old: dict, new: dict) -> int:
    failures = 0
    for description, recorded in old.items():
        if description == "numpy":
            continue
        other = new.get(description, {})
        differ = [name for name in recorded if not same(recorded[name], other.get(name))]
        failures += bool(differ)
        summary = ""
        if "train_loss" in recorded:
            summary = (
                f": {len(recorded['train_loss'])} steps, {len(recorded['val_loss'])} "
                f"validations, {recorded['stop_reason']}"
            )
        verdict = "DIFFER" if differ else "same  "
        differing = f"; differing: {', '.join(differ)}" if differ else ""
        print(f"  {verdict} {description}{summary}{differing}")
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", default=REFERENCE, help=f"a commit or a folder (default {REFERENCE})")
    p.add_argument("--new", default=str(REPO), help="a folder or a commit (default: this tree)")
    p.add_argument("--quick", action="store_true", help="leave out the full-size protocol runs")
    p.add_argument("--kernels", nargs="*", help="OPENBLAS_CORETYPE values to check under, in turn")
    p.add_argument("--record", nargs=2, metavar=("TREE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.record:
        record(Path(args.record[0]), Path(args.record[1]), args.quick)
        return 0
    failures = 0
    with tempfile.TemporaryDirectory(prefix="mlp-bit-identity-") as scratch:
        scratch = Path(scratch)
        old_tree, new_tree = tree_of(args.old, scratch), tree_of(args.new, scratch)
        for kernel in args.kernels or [None]:
            print(
                f"old: {args.old}; new: {args.new}; OpenBLAS kernel {blas_kernel(kernel)}"
                + (f" (OPENBLAS_CORETYPE={kernel})" if kernel else "")
            )
            old = run_side(old_tree, kernel, args.quick, scratch)
            new = run_side(new_tree, kernel, args.quick, scratch)
            failures += compare(old, new)
    print("all bit-identical" if not failures else f"{failures} comparison(s) differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
