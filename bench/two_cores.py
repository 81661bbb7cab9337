"""Prototype of "both cores for one run" (issue 16, point 2), with its measurement.

    .venv/bin/python bench/two_cores.py --core /tmp/bench-proposal/mlp_core.py   # time + check
    .venv/bin/python bench/two_cores.py --check-only          # bit-identity on short runs only
    .venv/bin/python bench/two_cores.py --quick               # small data, a few rounds

train_two_cores() is a copy of mlp_core.train()'s loop in which the validations run on a second
thread on a snapshot of the weights while the steps go on:

* at a validation step s the training thread copies the weights (and, if recorded, takes the
  gradient norms of step s) and posts the validation: tasks of TASK_CHUNKS chunks of 2,048
  images of both splits;
* a helper thread evaluates the tasks of the posted validation, one at a time (RowsEvaluator:
  each layer's product chunk by chunk, at evaluate()'s sizes, so with its BLAS kernels and bits;
  the activations over the whole task; the softmax and loss chunk by chunk as evaluate() does.
  Few numpy calls per image, so the helper rarely takes the GIL from the training thread);
* the training thread runs the next steps; at the next validation step (or when the run ends,
  diverges or is told to stop) it first finishes the validation in flight: it evaluates the tasks
  the helper has not taken, waits for the helper's last one, and records the validation exactly
  as train() does (the chunks' sums added in chunk order, so the numbers are bit for bit those
  of evaluate()). At most one validation is in flight, so the training thread never runs more
  than one validation interval ahead;
* if the recorded validation stops the run (early stopping, divergence), the run returns to step
  s: the snapshot's weights, the batch losses up to step s, the epochs up to s's. That is where
  train() stopped, with the same History;
* the final metrics are evaluated by both threads, task by task, summed in the same order.

So the History (every list, number and string but the clock times) and the final weights are
bit-identical to train()'s: the script checks that on short runs (early stopping, divergence,
momentum, gradient norms, float64) and on the protocol epoch, and times one protocol epoch of
[64] both ways (float32, one BLAS thread per thread), interleaved, medians over the rounds, and
gives the ratio two-thread / one-thread of each round (issue 16's target: at most 0.7), over all
rounds and over the rounds in which other processes left both cores free (from /proc/stat).

Each thread's products run on one BLAS thread (the limit is per process), and numpy releases the
GIL in its products and large ufunc loops, so the two threads overlap. Not handled here (a
prototype): a callback sees the History when a validation is recorded, one interval late; Ctrl-C
drops the validation in flight; no progress bar. Works with the mlp_core.py of 3546f01, of b36cba4
and with the proposal in /tmp/bench-proposal (its internals: Workspace, SGD, _softmax_nll,
_diverged, _blas_threads, MLP._forward/_backward/_f).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import os
import statistics
import sys
import threading
import time
import types
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bit_identity import compare_histories  # noqa: E402

from bench import load_core_file  # noqa: E402

CHUNK = 2048  # evaluate()'s chunk: the loss is summed chunk by chunk
TASK_CHUNKS = 2  # chunks per task that a thread takes
QUIET = 0.15  # a round is quiet when other processes used less than this share of a core


class RowsEvaluator:
    """A thread's evaluation of a run of whole chunks (up to TASK_CHUNKS of them), layer by layer:
    each layer's product chunk by chunk (the products of evaluate(): the same sizes, so the same
    BLAS kernels and bits), each activation over all the rows at once, the softmax and the loss
    chunk by chunk on the chunk's logits transposed and contiguous, as evaluate() computes them (a
    reduction over the classes of a single image sums in another order than over many). Fewer
    numpy calls per image than evaluate(), so the thread needs the GIL less often while the other
    one trains."""

    def __init__(self, core, model, rows: int):
        self.core = core
        self.outputs = [np.empty((rows, s), model.dtype) for s in model.layer_sizes]
        params = inspect.signature(core._softmax_nll).parameters
        self.nll_options = {"probabilities": False} if "probabilities" in params else {}

    def __call__(self, model, X: np.ndarray, labels: np.ndarray) -> tuple[list[float], int]:
        """The summed loss of each chunk of X, and the number of correct predictions."""
        n, last = len(X), len(model.weights) - 1
        a = X
        for l, W in enumerate(model.weights):
            z = self.outputs[l][:n]
            for lo in range(0, n, CHUNK):
                np.matmul(a[lo : lo + CHUNK], W, out=z[lo : lo + CHUNK])
            if l < last:
                model._f(z, out=z)
            a = z
        correct = int(np.count_nonzero(a.argmax(axis=1) == labels))
        sums = []
        for lo in range(0, n, CHUNK):
            z_t = a[lo : lo + CHUNK].T.copy()  # (classes, chunk), contiguous
            nll = self.core._softmax_nll(z_t, labels[lo : lo + CHUNK], 0, **self.nll_options)[1]
            sums.append(float(nll.sum()))
        return sums, correct


class Validation:
    """One whole-set evaluation of a snapshot model, cut into tasks of up to TASK_CHUNKS chunks
    that either thread may take."""

    def __init__(self, step: int, model, splits, grad_norms=None):
        self.step = step
        self.model = model
        self.splits = splits
        self.grad_norms = grad_norms
        rows = CHUNK * TASK_CHUNKS
        self.tasks = [
            (s, start, min(start + rows, len(split)))
            for s, split in enumerate(splits)
            for start in range(0, len(split), rows)
        ]
        self.results: list[tuple[list[float], int] | None] = [None] * len(self.tasks)
        self.taken = 0
        self.left = len(self.tasks)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def work(self, evaluator: RowsEvaluator) -> None:
        """Evaluate tasks not yet taken, until none is left."""
        while True:
            with self.lock:
                if self.taken == len(self.tasks):
                    return
                i = self.taken
                self.taken += 1
            s, start, stop = self.tasks[i]
            split = self.splits[s]
            try:
                self.results[i] = evaluator(
                    self.model, split.X[start:stop], split.labels[start:stop]
                )
            except BaseException as exc:  # handed to the training thread
                self.error = exc
            with self.lock:
                self.left -= 1
                if self.left == 0:
                    self.done.set()

    def cancel(self) -> None:
        """Leave the tasks not yet taken."""
        with self.lock:
            self.left -= len(self.tasks) - self.taken
            self.taken = len(self.tasks)
            if self.left == 0:
                self.done.set()

    def metrics(self) -> list[tuple[float, float]]:
        """(mean loss, accuracy) of each split, the chunks' sums added in chunk order as
        evaluate() adds them."""
        if self.error is not None:
            raise self.error
        out = []
        for s, split in enumerate(self.splits):
            loss_sum, correct = 0.0, 0
            for (task_split, _, _), (sums, right) in zip(self.tasks, self.results):
                if task_split == s:
                    for chunk_sum in sums:
                        loss_sum += chunk_sum
                    correct += right
            out.append((loss_sum / len(split), correct / len(split)))
        return out


class Helper:
    """The second thread: evaluates the chunks of each posted validation."""

    def __init__(self, core, model, rows: int):
        self.evaluator = RowsEvaluator(core, model, rows)
        self.posted: Validation | None = None
        self.wake = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="validation-helper", daemon=True)
        self.thread.start()

    def post(self, validation: Validation) -> None:
        with self.wake:
            self.posted = validation
            self.wake.notify()

    def _run(self) -> None:
        while True:
            with self.wake:
                while self.posted is None and not self.closed:
                    self.wake.wait()
                if self.closed:
                    return
                validation, self.posted = self.posted, None
            validation.work(self.evaluator)

    def close(self) -> None:
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.thread.join()


def _record(core, hist, validation: Validation) -> None:
    """Record a finished validation and decide on stopping: mlp_core._validate after its
    evaluations, line for line."""
    c = hist.config
    step = validation.step
    (train_loss, train_acc), (val_loss, val_acc) = validation.metrics()
    for values, value in (
        (hist.val_steps, step),
        (hist.train_loss_full, train_loss),
        (hist.train_acc, train_acc),
        (hist.val_loss, val_loss),
        (hist.val_acc, val_acc),
    ):
        values.append(value)
    if c.record_grad_norms:
        hist.grad_norms.append(validation.grad_norms)
    if val_loss < hist.best_val_loss:
        hist.best_val_loss, hist.best_step = val_loss, step
    if step >= c.steps_per_epoch and not val_loss <= core.DIVERGED_LOSS:
        core._diverged(hist, step, val_loss)
    elif (step - hist.best_step) // c.validation_interval >= c.patience:
        hist.stop_reason = "early_stopping"


def train_two_cores(
    config,
    data=None,
    *,
    core: types.ModuleType,
    callback: Callable | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """core.train(config, data, progress=False, blas_threads=1), the validations on a second thread;
    the same History and final weights (see the module docstring)."""
    data = data or core.prepare_data(config.n_train, config.dtype, config.n_val)
    dt, bs = np.dtype(config.dtype), config.batch_size
    splits = [
        core.Split(s.X[:n].astype(dt, copy=False), s.Y[:n].astype(dt, copy=False), s.labels[:n])
        for s, n in ((data.train, config.n_train), (data.val, config.n_val))
    ]
    model, hist = core.initial_model(config), core.History(config=config, stop_reason="running")
    X, Y, labels = splits[0].X, np.empty_like(splits[0].Y), np.empty_like(splits[0].labels)
    model.check_inputs(X, splits[0].labels)
    shuffle_rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(2)[1])
    optimiser = core.SGD(config.learning_rate, config.momentum)
    batch = np.empty((bs, model.input_size), dt)
    rows = min(CHUNK * TASK_CHUNKS, max(config.n_train, config.n_val))
    ws, evaluator = core.Workspace(model, bs), RowsEvaluator(core, model, rows)
    if config.record_grad_norms:
        grads = model.backward(model.forward(X[:1000]), splits[0].Y[:1000])
        hist.init_grad_norms = [float(np.linalg.norm(g)) for g in grads]
    helper = Helper(core, model, rows)
    pending: Validation | None = None
    epoch_of = {}  # step -> epoch, for a run that returns to an earlier step

    def post(step: int) -> Validation:
        snapshot = copy.copy(model)  # the same network, with a copy of this step's weights
        snapshot.weights = [w.copy() for w in model.weights]
        norms = [float(np.linalg.norm(g)) for g in ws.grads] if config.record_grad_norms else None
        validation = Validation(step, snapshot, splits, norms)
        helper.post(validation)
        return validation

    def finish(validation: Validation | None) -> bool:
        """Help with and record the validation in flight; True if it stops the run (the run has
        then returned to its step)."""
        if validation is None:
            return False
        validation.work(evaluator)
        validation.done.wait()
        _record(core, hist, validation)
        if callback is not None:
            callback(hist)
        if hist.stop_reason == "running":
            return False
        del hist.train_loss[validation.step + 1 :]
        model.weights = validation.model.weights
        stop_epoch = epoch_of[validation.step]
        del hist.epoch_times[stop_epoch:]
        del hist.step_times[stop_epoch:]
        return True

    stopped_at_earlier_step = False
    try:
        with (
            core._blas_threads(1),
            np.errstate(over="ignore", invalid="ignore"),
        ):
            for epoch in range(config.max_epochs):
                t_epoch, t_validating = time.perf_counter(), 0.0
                perm = shuffle_rng.permutation(config.n_train)
                np.take(splits[0].Y, perm, axis=0, out=Y)
                np.take(splits[0].labels, perm, axis=0, out=labels)
                for k in range(config.steps_per_epoch):
                    step, rows_k = hist.steps, slice(k * bs, (k + 1) * bs)
                    np.take(X, perm[rows_k], axis=0, out=batch)
                    y_hat, losses = core._softmax_nll(model._forward(batch, ws), labels[rows_k])
                    hist.train_loss.append(float(losses.sum()) / bs)
                    if not math.isfinite(hist.train_loss[-1]):
                        t0 = time.perf_counter()
                        stopped_at_earlier_step = finish(pending)
                        pending = None
                        t_validating += time.perf_counter() - t0
                        if not stopped_at_earlier_step:
                            core._diverged(hist, step, hist.train_loss[-1])
                        break
                    optimiser.step(model.weights, model._backward(ws, y_hat, Y[rows_k]))
                    if step % config.validation_interval == 0:
                        t0 = time.perf_counter()
                        stopped_at_earlier_step = finish(pending)
                        pending = None
                        if not stopped_at_earlier_step:
                            epoch_of[step] = epoch
                            pending = post(step)
                        t_validating += time.perf_counter() - t0
                    if stopped_at_earlier_step:
                        break
                    if should_stop is not None and should_stop():
                        stopped_at_earlier_step = finish(pending)
                        pending = None
                        if not stopped_at_earlier_step:
                            hist.stop_reason = "stopped"
                        break
                if epoch == config.max_epochs - 1 and hist.stop_reason == "running":
                    t0 = time.perf_counter()  # the last epoch ends with its last validation
                    stopped_at_earlier_step = finish(pending)
                    pending = None
                    t_validating += time.perf_counter() - t0
                # after a return to an earlier epoch's step, this entry stands for that epoch
                hist.epoch_times.append(time.perf_counter() - t_epoch)
                hist.step_times.append(hist.epoch_times[-1] - t_validating)
                if hist.stop_reason != "running":
                    break
    except KeyboardInterrupt:
        hist.stop_reason = "interrupted"
        if pending is not None:
            pending.cancel()
        pending = None
    finally:
        helper.close()
    hist.stop_reason = "max_epochs" if hist.stop_reason == "running" else hist.stop_reason
    hist.weights = [w.copy() for w in model.weights]
    hist.final = dict.fromkeys(("train_loss", "train_acc", "val_loss", "val_acc"), math.nan)
    if all(np.isfinite(w).all() for w in model.weights):
        with core._blas_threads(1):
            final = Validation(hist.steps, model, splits)
            helper = Helper(core, model, rows)
            try:
                helper.post(final)
                final.work(evaluator)
                final.done.wait()
            finally:
                helper.close()
            (train_loss, train_acc), (val_loss, val_acc) = final.metrics()
            hist.final.update(
                train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc
            )
    if hist.stop_reason != "diverged" and not hist.final["val_loss"] <= core.DIVERGED_LOSS:
        core._diverged(hist, hist.steps, hist.final["val_loss"])
    return hist


# ---- check and measurement ----------------------------------------------------------------------


def check(core, quick: bool) -> int:
    """train() against train_two_cores() on the runs of bench/bit_identity.py; the number that
    differ."""
    from bit_identity import runs

    failures = 0
    datasets = {}
    for description, fields, (n_train, n_val) in runs(quick):
        fields = {"max_epochs": 2, **fields, "n_train": n_train, "n_val": n_val}
        key = (n_train, n_val, fields.get("dtype", "float32"))
        if key not in datasets:
            datasets[key] = core.prepare_data(n_train, key[2], n_val)
        config = core.RunConfig(**fields)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the divergence run warns
            serial = core.train(config, datasets[key], progress=False)
            both = train_two_cores(config, datasets[key], core=core)
        differ = compare_histories(serial, both)
        failures += bool(differ)
        print(
            f"{'DIFFER' if differ else 'same  '} {description}: {serial.steps} steps, "
            f"{len(serial.val_loss)} validations, {serial.stop_reason}"
            + (f"; differing: {', '.join(differ)}" if differ else "")
        )
    return failures


def _busy_seconds() -> float:
    """CPU seconds all processes of the machine have run (and the hypervisor stole), from
    /proc/stat (Linux; nan elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _timed_epoch(fn) -> tuple[object, float]:
    """fn()'s History and the CPU cores' worth that other processes used meanwhile."""
    busy, own, t0 = _busy_seconds(), _own_seconds(), time.perf_counter()
    hist = fn()
    wall = time.perf_counter() - t0
    others = (_busy_seconds() - busy) - (_own_seconds() - own)
    return hist, max(0.0, others / wall)


def measure(core, rounds: int, quick: bool) -> None:
    """One protocol epoch of [64] float32, train() on one thread and train_two_cores() on two,
    interleaved (alternating which goes first), after a warm-up of each."""
    n_train, n_val = (4000, 3000) if quick else (20_000, 10_000)
    data = core.prepare_data(n_train, "float32", n_val)
    config = core.RunConfig(max_epochs=1, n_train=n_train, n_val=n_val)
    ways = {
        "train(), one thread": lambda: core.train(config, data, progress=False),
        "train_two_cores(), two threads": lambda: train_two_cores(config, data, core=core),
    }
    for fn in ways.values():
        fn()
    epochs = {name: [] for name in ways}
    steps = {name: [] for name in ways}
    others = []  # per round: the most cores' worth other processes used during either epoch
    last = {}
    for r in range(rounds):
        busy = 0.0
        for name in list(ways) if r % 2 == 0 else list(ways)[::-1]:
            last[name], share = _timed_epoch(ways[name])
            busy = max(busy, share)
            epochs[name].append(last[name].epoch_times[0])
            steps[name].append(last[name].step_times[0])
        others.append(busy)
    one, two = ways
    ratios = [b / a for a, b in zip(epochs[one], epochs[two])]
    quiet = [x for x, busy in zip(ratios, others) if busy < QUIET]
    print(
        f"One protocol epoch of [64] float32 ({n_train:,} + {n_val:,} images, "
        f"{config.steps_per_epoch} steps, "
        f"5 validations), medians of {rounds} interleaved rounds:"
    )
    for name in ways:
        print(
            f"  {name:<32} epoch {statistics.median(epochs[name]) * 1e3:7.1f} ms "
            f"(range {min(epochs[name]) * 1e3:.0f}-{max(epochs[name]) * 1e3:.0f}), "
            f"steps (the training thread outside validations) "
            f"{statistics.median(steps[name]) * 1e3:6.1f} ms"
        )
    print(
        f"  other processes on this machine used {statistics.median(others):.2f} cores' worth "
        f"(median over the rounds; {os.cpu_count()} CPUs): two threads need both cores free"
    )
    if quiet:
        print(
            f"  rounds in which other processes used less than {QUIET:.0%} of a core: "
            f"{len(quiet)}, two threads / one thread {statistics.median(quiet):.3f} "
            f"(lowest {min(quiet):.3f}, highest {max(quiet):.3f})"
        )
    else:
        print(f"  no round in which other processes used less than {QUIET:.0%} of a core")
    differ = compare_histories(last[one], last[two])
    print(
        f"  two threads / one thread: {statistics.median(ratios):.3f} (median of the per-round "
        f"ratios; lowest {min(ratios):.3f}, highest {max(ratios):.3f}); target <= 0.7; "
        f"History and weights {'bit-identical' if not differ else 'DIFFER: ' + ', '.join(differ)}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--core", metavar="PATH", help="an mlp_core.py file (default: the project's)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds of the timing")
    p.add_argument("--quick", action="store_true", help="small data and the quick checks")
    p.add_argument("--check-only", action="store_true", help="the bit-identity checks only")
    args = p.parse_args(argv)
    if args.core:
        core = load_core_file(args.core)
    else:
        import mlp_core as core
    print(f"core: {core.__file__}")
    failures = check(core, args.quick)
    print("all bit-identical" if not failures else f"{failures} run(s) differ")
    if not args.check_only:
        measure(core, args.rounds if not args.quick else min(args.rounds, 3), args.quick)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
