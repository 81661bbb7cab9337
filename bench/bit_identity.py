"""Bit-identity check of two mlp_core.py files: do they train exactly alike on this machine?

    .venv/bin/python bench/bit_identity.py --old 3546f01      # the working tree file vs 3546f01
    .venv/bin/python bench/bit_identity.py --old 3546f01 --new /tmp/bench-proposal/mlp_core.py
    .venv/bin/python bench/bit_identity.py --old 3546f01 --quick              # fewer, smaller runs

Both files are imported into one process (the old one from git, or from a path) and train the same
short runs from the same data: float32 and float64, the protocol's network on the protocol's full
data (tails of 1,568 and 1,808 images in the last evaluation chunks), wider, deeper and narrower
networks, the improved sigmoid with momentum, recorded gradient norms, early stopping, divergence,
and splits whose sizes leave odd tails. Every list, number and string of each History (not the
epoch and step times) and every final weight must be equal: lists and numbers with ==, arrays with
np.array_equal (NaN equal to NaN only where both are NaN at the same places, for diverged runs).
Then evaluate() of both on trained weights over splits of many sizes. Prints each comparison and
exits 1 if any differs. Timings are not measured here: see bench.py.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench import load_core_at, load_core_file  # noqa: E402

TIMINGS = ("epoch_times", "step_times")  # History fields that are clocks, not results


def load_core(ref: str, name: str):
    """A path to a file, or a git commit of this repository."""
    return load_core_file(ref, name) if Path(ref).is_file() else load_core_at(ref)


def same(a, b) -> bool:
    """Exact equality of History values: floats bit for bit (NaN equal to NaN), arrays and lists
    element by element."""
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


def compare_histories(old_hist, new_hist) -> list[str]:
    """The History fields that differ (timings left out)."""
    fields = [f for f in vars(old_hist) if f not in TIMINGS and f != "config"]
    differ = [f for f in fields if not same(getattr(old_hist, f), getattr(new_hist, f, None))]
    if len(old_hist.epoch_times) != len(new_hist.epoch_times):
        differ.append("number of epochs")
    return differ


def runs(quick: bool) -> list[tuple[str, dict, tuple[int, int]]]:
    """(description, RunConfig fields, (n_train, n_val) of the data) of every compared run."""
    full = (20_000, 10_000)
    small = (3_000, 2_100)  # evaluation tails: 952 (two blocks) and 52 (one block of 52 rows)
    cases = [
        ("protocol [64] float32, 1 epoch", dict(max_epochs=1), full),
        ("protocol [64] float64, 1 epoch", dict(max_epochs=1, dtype="float64"), full),
        (
            "[128] improved sigmoid, fan-in, momentum 0.9, grad norms, float32, 3 epochs",
            dict(
                layer_sizes=(128, 10),
                activation="improved_sigmoid",
                init="fan_in",
                momentum=0.9,
                learning_rate=0.02,
                record_grad_norms=True,
                max_epochs=3,
            ),
            small,
        ),
        (
            "10 x [64] float32, 2 epochs",
            dict(layer_sizes=(64,) * 10 + (10,), init="fan_in", max_epochs=2),
            small,
        ),
        ("[60, 60] float64, 2 epochs", dict(layer_sizes=(60, 60, 10), dtype="float64"), small),
        ("narrow [8] float32, 2 epochs", dict(layer_sizes=(8, 10), max_epochs=2), small),
        (
            "10 x [64] improved sigmoid, momentum 0.5, float64, 1 epoch",
            dict(
                layer_sizes=(64,) * 10 + (10,),
                activation="improved_sigmoid",
                init="fan_in",
                momentum=0.5,
                learning_rate=0.02,
                dtype="float64",
                max_epochs=1,
            ),
            small,
        ),
        ("no hidden layer [10] float32, 2 epochs", dict(layer_sizes=(10,)), small),
        ("no hidden layer [10] float64, 2 epochs", dict(layer_sizes=(10,), dtype="float64"), small),
        ("early stopping (patience 2), float32", dict(patience=2, max_epochs=20), (640, 500)),
        ("divergence (lr 40), float32", dict(learning_rate=40.0, max_epochs=3), (640, 500)),
        ("n_train 2,050, n_val 2,049: tails of 2 and 1 images", dict(max_epochs=1), (2050, 2049)),
    ]
    if quick:
        cases = [c for c in cases if c[2] != full]
        cases.insert(0, ("[64] float32, 1 epoch, 4,000 + 3,000 images", {}, (4000, 3000)))
    return cases


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="a git commit or a path to an mlp_core.py")
    p.add_argument(
        "--new",
        default=str(HERE.parent / "mlp_core.py"),
        help="a path to an mlp_core.py or a git commit (default: the working tree's mlp_core.py)",
    )
    p.add_argument("--quick", action="store_true", help="leave out the full-size protocol runs")
    args = p.parse_args(argv)
    old = load_core(args.old, "mlp_core_old")
    new = load_core(args.new, "mlp_core_new")
    print(f"old: {args.old} ({old.__name__}); new: {args.new} ({new.__name__})")
    failures = 0
    datasets = {}
    for description, fields, (n_train, n_val) in runs(args.quick):
        fields = {"max_epochs": 2, **fields, "n_train": n_train, "n_val": n_val}
        key = (n_train, n_val, fields.get("dtype", "float32"))
        if key not in datasets:  # the old module's data, given to both: the same input arrays
            datasets[key] = old.prepare_data(n_train, key[2], n_val)
        data = datasets[key]
        histories = []
        for core in (old, new):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the divergence run warns
                histories.append(core.train(core.RunConfig(**fields), data, progress=False))
        differ = compare_histories(*histories)
        failures += bool(differ)
        h = histories[0]
        print(
            f"{'DIFFER' if differ else 'same  '} {description}: {h.steps} steps, "
            f"{len(h.val_loss)} validations, {h.stop_reason}"
            + (f"; differing: {', '.join(differ)}" if differ else "")
        )
    failures += compare_evaluate(old, new, datasets)
    print("all bit-identical" if not failures else f"{failures} comparison(s) differ")
    return 1 if failures else 0


def compare_evaluate(old, new, datasets) -> int:
    """evaluate() of both modules on splits of many sizes, with trained weights."""
    data = next(d for (n_train, n_val, dtype), d in datasets.items() if dtype == "float32")
    config = old.RunConfig(max_epochs=1, n_train=len(data.train), n_val=len(data.val))
    trained = old.train(config, data, progress=False).weights
    sizes = [1, 2, 19, 20, 31, 255, 256, 257, 511, 512, 513, 1023, 2047, 2048, 2049, 2600]
    sizes = [n for n in sizes if n <= len(data.train)]
    failures = 0
    for layers, weights in (((64, 10), trained), ((128, 10), None), ((30, 20, 10), None)):
        models = []
        for core in (old, new):
            model = core.MLP(layers, rng=3)
            model.weights = [w.copy() for w in weights] if weights is not None else model.weights
            models.append(model)
        for n in sizes:
            split = old.Split(data.train.X[:n], data.train.Y[:n], data.train.labels[:n])
            a = old.evaluate(models[0], split)
            b = new.evaluate(models[1], split)
            if not same(list(a), list(b)):
                failures += 1
                print(f"DIFFER evaluate() of {list(layers)} on {n} images: {a} vs {b}")
    print(
        f"{'same  ' if not failures else 'DIFFER'} evaluate() of three networks on splits of "
        f"{len(sizes)} sizes from 1 to {max(sizes):,} images"
    )
    return failures


if __name__ == "__main__":
    sys.exit(main())
