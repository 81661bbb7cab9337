"""The assignment's training protocol around the network of mlp_core, and what makes it fast.

`train(RunConfig(...))` trains one network as the protocol prescribes: mini-batch SGD on the
reshuffled training set (the last incomplete batch dropped), a validation every
`validation_interval` steps from step 0 (loss and accuracy on the whole validation set and on the
whole training set), early stopping after `patience` validations without a new lowest validation
loss, divergence named as such, and the final metrics with the final weights. It returns the
History of everything the run recorded. Every step and every evaluation calls the one forward and
backward pass of mlp_core.MLP.

The speed lives here, not in the core: evaluations go in chunks (each chunk's first-layer product
in cache-sized blocks, one MLP.layer call each), BLAS runs on one thread (a step's products
are too small to share), and a run that trains alone validates on a second core while its steps
go on: the History and weights are those of the serial path, bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np

import mlp_checks as rules
from mlp_core import (
    ACTIVATIONS,
    INITIALISATIONS,
    MLP,
    NUM_CLASSES,
    SGD,
    Buffers,
    softmax_and_losses,
)
from mlp_data import Dataset, Split, prepare_data

# ==== A run: its configuration and what it records ================================================


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run; the defaults are the protocol's Task 2c network.
    Every field is checked by its rule in RULES; numpy numbers are stored as Python numbers."""

    layer_sizes: tuple[int, ...] = (64, NUM_CLASSES)  # every layer after the input, output last
    activation: str = "sigmoid"  # "sigmoid" or "improved_sigmoid" (1.7159 tanh(2z/3))
    init: str = "uniform"  # "uniform" in [-1, 1] or "fan_in": normal with std 1/sqrt(fan_in)
    learning_rate: float = 0.1  # SGD step size alpha
    momentum: float = 0.0  # gamma; 0 switches momentum off
    batch_size: int = 32  # the last incomplete batch of an epoch is dropped
    max_epochs: int = 50  # upper bound on epochs
    n_train: int = 20_000  # the first n_train MNIST training images are the training set
    n_val: int = 10_000  # the first n_val MNIST test images are the validation set
    validations_per_epoch: int = 5  # validate every steps_per_epoch // this, from step 0
    patience: int = 50  # stop after this many validations without a new lowest val loss
    seed: int = 0  # the one seed of every random draw (init and shuffling)
    dtype: str = "float32"  # "float32" (fast) or "float64"
    record_grad_norms: bool = False  # record every weight matrix's gradient norm at validations
    name: str = ""  # label used in tables and legends

    RULES: ClassVar[dict[str, Callable]] = {  # field: its check, returning the value to keep
        "layer_sizes": lambda name, value: rules.check_layer_sizes(value, NUM_CLASSES),
        "activation": lambda name, value: rules.check_choice(name, value, ACTIVATIONS),
        "init": lambda name, value: rules.check_choice(name, value, INITIALISATIONS),
        "learning_rate": rules.POSITIVE_REAL,
        "momentum": rules.FRACTION,
        "batch_size": rules.POSITIVE_INT,
        "max_epochs": rules.POSITIVE_INT,
        "n_train": rules.POSITIVE_INT,
        "n_val": rules.POSITIVE_INT,
        "validations_per_epoch": rules.POSITIVE_INT,
        "patience": rules.POSITIVE_INT,
        "seed": rules.at_least(0),
        "dtype": lambda name, value: rules.check_dtype(value).name,
        "record_grad_norms": rules.FLAG,
        "name": rules.TEXT,
    }

    def __post_init__(self):
        for name, rule in self.RULES.items():
            object.__setattr__(self, name, rule(name, getattr(self, name)))
        if self.batch_size > self.n_train:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed n_train ({self.n_train})"
            )

    @property
    def label(self) -> str:
        """The name, or a short description such as '[64] sigmoid, uniform init, lr 0.1'."""
        if self.name:
            return self.name
        momentum = f", momentum {self.momentum:g}" if self.momentum else ""
        activation = self.activation.replace("_", " ")
        init = self.init.replace("_", "-")
        hidden = list(self.layer_sizes[:-1])
        return f"{hidden} {activation}, {init} init, lr {self.learning_rate:g}{momentum}"

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    @property
    def validation_interval(self) -> int:
        return max(1, self.steps_per_epoch // self.validations_per_epoch)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


# Diverged: a non-finite loss, or after the first epoch a validation loss above 10 ln 10 = 23,
# ten times a uniform guess's.
DIVERGED_LOSS = 10 * math.log(NUM_CLASSES)
COMPLETED = ("early_stopping", "max_epochs")  # the stop reasons of a run that ended as configured
STOP_REASONS = COMPLETED + ("diverged", "stopped", "interrupted")  # every way a run can end
FINAL_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")  # History.final, table order


@dataclass
class History:
    """Everything a run recorded. Steps count updates from 0; validation s follows step s."""

    config: RunConfig
    train_loss: list[float] = field(default_factory=list)  # batch loss of every step
    val_steps: list[int] = field(default_factory=list)  # step of every validation
    train_loss_full: list[float] = field(default_factory=list)  # whole training set
    train_acc: list[float] = field(default_factory=list)  # whole training set
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    grad_norms: list[list[float]] = field(default_factory=list)  # per weight matrix
    init_grad_norms: list[float] = field(default_factory=list)  # per weight matrix, at step 0
    epoch_times: list[float] = field(default_factory=list)  # seconds per epoch
    step_times: list[float] = field(default_factory=list)  # of which in training steps
    stop_reason: str = "not started"  # one of STOP_REASONS once the run has ended
    message: str = ""  # why a run diverged, for display
    best_val_loss: float = math.inf
    best_step: int = -1
    final: dict[str, float] = field(default_factory=dict)  # whole-set metrics, final weights
    weights: list[np.ndarray] = field(default_factory=list)  # final weights

    @property
    def steps(self) -> int:  # gradient steps taken
        return len(self.train_loss)

    @property
    def completed(self) -> bool:  # ended as configured: by early stopping or its last epoch
        return self.stop_reason in COMPLETED

    def model(self) -> MLP:
        """The trained network (final weights)."""
        return initial_model(self.config, [w.copy() for w in self.weights])


def _seed_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The two generators of a run, both from its one seed: initial weights, then shuffling."""
    init, shuffling = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(init), np.random.default_rng(shuffling)


def initial_model(config: RunConfig, weights: list[np.ndarray] | None = None) -> MLP:
    """The network as train(config) starts it (or with `weights` instead of the initial ones)."""
    model = MLP(
        config.layer_sizes,
        activation=config.activation,
        init=config.init,
        dtype=config.dtype,
        rng=_seed_streams(config.seed)[0],
    )
    model.weights = weights or model.weights
    return model


# ==== Evaluation: a whole split, chunk by chunk ===================================================

EVAL_CHUNK = 2048  # images per forward pass of an evaluation
EVAL_BLOCK = 512  # images per first-layer product in a chunk (its inputs stay in the cache)
_EVAL_CHUNK_FLOPS = 2e9  # a chunk costs at most about this much work, so a Stop is seen quickly


class StopRequested(Exception):
    """Raised inside an evaluation when its `should_stop()` became true; train() catches it."""


class EvaluationBuffers(Buffers):
    """The buffers of an evaluation chunk, and its logits transposed (classes along rows)."""

    def __init__(self, model: MLP, rows: int):
        super().__init__(model, rows)
        self.logits_t = np.empty((model.layer_sizes[-1], rows), model.dtype)


def evaluation_rows(model: MLP) -> int:
    """Images per chunk of an evaluation: EVAL_CHUNK, fewer for a network so large that a chunk
    would take long (so `should_stop` is looked at often); the protocol's networks use 2,048."""
    flops_per_image = 2 * sum(a * b for a, b in model.shapes)
    return int(min(EVAL_CHUNK, max(64, _EVAL_CHUNK_FLOPS // flops_per_image)))


def _row_blocks(n: int, rows: int) -> list[tuple[int, int]]:
    """[0, n) cut into equal blocks of at most `rows`, none under rows / 2 unless n is.

    A BLAS takes another kernel for small products, which may sum in another order: blocks of at
    least half of EVAL_BLOCK keep the first layer's product on the kernel a whole chunk takes."""
    parts = -(-n // rows)
    edges = [n * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _evaluate_chunk(model: MLP, X, labels, buffers: EvaluationBuffers) -> tuple[float, int]:
    """Summed cross-entropy and number of correct predictions on up to buffers.rows images."""
    n = len(X)
    first = buffers.outputs[0][:n]  # the first layer block by block: its inputs stay in the cache
    for lo, hi in _row_blocks(n, EVAL_BLOCK):
        model.layer(0, X[lo:hi], out=first[lo:hi])
    logits = model.logits(first, buffers, start=1) if len(model.weights) > 1 else first
    correct = int(np.count_nonzero(logits.argmax(axis=1) == labels))
    # numpy sums along long contiguous rows far faster than across many short ones
    logits_t = buffers.logits_t[:, :n]
    np.copyto(logits_t, logits.T)
    return float(softmax_and_losses(logits_t, labels, axis=0)[1].sum()), correct


def _chunks(split: Split, rows: int) -> list[slice]:
    return [slice(start, start + rows) for start in range(0, len(split), rows)]


def evaluate(
    model: MLP,
    split: Split,
    buffers: EvaluationBuffers | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on a split, a forward pass chunk by chunk.

    `should_stop()` is asked before every chunk; when it is true, StopRequested is raised."""
    if len(split) == 0:
        raise ValueError("evaluate needs a non-empty split")
    X = rules.check_inputs(split.X, model.input_size, model.dtype)  # as the network's dtype
    buffers = buffers or EvaluationBuffers(model, min(evaluation_rows(model), len(split)))

    def chunk_results():
        for rows in _chunks(split, buffers.rows):
            if should_stop is not None and should_stop():
                raise StopRequested
            yield _evaluate_chunk(model, X[rows], split.labels[rows], buffers)

    return _totals(chunk_results(), len(split))


def _totals(chunk_results, n: int) -> tuple[float, float]:
    """Mean loss and accuracy over n images from the chunks' sums, added up in their order."""
    loss_sum = 0.0
    correct = 0
    for chunk_loss, chunk_correct in chunk_results:
        loss_sum += chunk_loss
        correct += chunk_correct
    return loss_sum / n, correct / n


# ==== BLAS threads: one setting of the whole process ==============================================


class _BlasThreads:
    """The BLAS thread count is one setting of the process, so every training in it agrees on
    it: one thread while any run trains (a run's bits depend on it), the process's own setting
    again when the last one ends. A run that evaluates on more threads changes it for the whole
    process, so it trains only alone.

    OpenBLAS is set through its own openblas_set_num_threads, from whichever thread trains:
    threadpoolctl lets only the first thread that limited OpenBLAS change it again."""

    def __init__(self):
        self.lock = threading.Lock()
        self.runs = 0  # trainings in progress
        self.alone = False  # one of them evaluates on several threads
        self.original: list[int] = []  # each BLAS library's thread count before the first run

    @contextlib.contextmanager
    def training(self, evaluation_threads: int):
        with self.lock:
            if self.alone or (self.runs and evaluation_threads != 1):
                raise RuntimeError(
                    "another train() is running in this process, and runs with "
                    "blas_threads other than 1 change the BLAS thread count of the whole "
                    "process: wait for it to end, or train with blas_threads=1"
                )
            if not self.runs:
                self.original = [lib.get_num_threads() for lib in _blas_libraries()]
                _set_blas_threads([1] * len(self.original))
            self.runs += 1
            self.alone = evaluation_threads != 1
        try:
            yield
        finally:
            with self.lock:
                self.runs -= 1
                self.alone = False
                if not self.runs:
                    _set_blas_threads(self.original)

    @contextlib.contextmanager
    def evaluating(self, threads: int):
        """`threads` BLAS threads for an evaluation (only a run that trains alone asks for >1)."""
        if threads == 1:
            yield
            return
        libraries = _blas_libraries()
        _set_blas_threads([threads] * len(libraries))
        try:
            yield
        finally:
            _set_blas_threads([1] * len(libraries))


BLAS_THREADS = _BlasThreads()
_OPENBLAS_SETTERS = (  # the name of openblas_set_num_threads in the builds numpy and scipy ship
    "openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
)


@functools.cache
def _blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded (found once)."""
    from threadpoolctl import ThreadpoolController

    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


def _set_blas_threads(counts: list[int]) -> None:
    for lib, n in zip(_blas_libraries(), counts):
        setter = None
        if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") != "openmp":
            setter = next(
                (f for name in _OPENBLAS_SETTERS if (f := getattr(lib.dynlib, name, None))), None
            )
        if setter is not None:
            setter(n)
        else:  # other BLAS libraries take a limit from any thread
            lib.set_num_threads(n)


# ==== Validations: in the training thread, or on a second core ====================================


class _Validations:
    """The validations of a run, measured in the training thread and recorded at once.

    validate(step, norms) validates the weights as they are after step `step` (whose gradients
    had the norms `norms`, or None); finish() records what is still in flight (nothing, here);
    measure() gives (loss, accuracy) of every split now.
    Each recorded validation is passed to `shown(hist)`: the progress bar and the callback."""

    def __init__(self, model, hist, splits, rows, should_stop, threads, shown):
        self.model = model
        self.hist = hist
        self.splits = splits
        self.buffers = EvaluationBuffers(model, rows)
        self.should_stop = should_stop
        self.threads = threads
        self.shown = shown
        self.seconds = 0.0  # spent validating in the training thread, this epoch

    def validate(self, step: int, norms: list[float] | None) -> None:
        t0 = time.perf_counter()
        _record(self.hist, step, self.measure(), norms)
        self.seconds += time.perf_counter() - t0
        self.shown(self.hist)

    def finish(self, stopping: bool = False) -> None:
        """Record the validation still in flight, if any (`stopping`: unless a stop cuts it)."""

    def measure(self) -> list[tuple[float, float]]:
        with BLAS_THREADS.evaluating(self.threads):
            return [evaluate(self.model, s, self.buffers, self.should_stop) for s in self.splits]

    def close(self) -> None:
        pass


def _norms(grads: list[np.ndarray]) -> list[float]:
    return [float(np.linalg.norm(g)) for g in grads]


class _SecondCoreValidations(_Validations):
    """The validations of a run on a second thread, while the training thread goes on with the
    steps: at most one validation is in flight, on a snapshot of the weights of its step.

    validate() first records the validation in flight, then copies the weights and hands the
    chunks of both splits to the helper thread. finish(), at the next validation or when the
    steps end, takes the chunks the helper has not started (from the last one back), waits for
    the rest, adds them up in evaluate()'s order (the same numbers, bit for bit) and records the
    validation. If that ends the run (early stopping, divergence), the run goes back to the
    validation's step, its weights and batch losses, where the serial path would have stopped."""

    def __init__(self, model, hist, splits, rows, should_stop, threads, shown):
        super().__init__(model, hist, splits, rows, should_stop, threads, shown)
        self.snapshot = copy.copy(model)  # the network of the validation in flight
        self.snapshot.weights = [w.copy() for w in model.weights]
        self.helper_buffers = EvaluationBuffers(model, rows)
        self.chunks = [(split, chunk) for split in splits for chunk in _chunks(split, rows)]
        self.helper = ThreadPoolExecutor(1, thread_name_prefix="validations")
        self.in_flight = None  # (step, gradient norms, the futures of its chunks)

    def validate(self, step: int, norms: list[float] | None) -> None:
        self.finish()
        if self.hist.stop_reason != "running":
            return
        self.in_flight = (step, norms, self._post())

    def _post(self) -> list:
        for kept, w in zip(self.snapshot.weights, self.model.weights):
            np.copyto(kept, w)
        return [self.helper.submit(self._chunk, c, self.helper_buffers) for c in self.chunks]

    def _chunk(self, chunk, buffers) -> tuple[float, int]:
        split, rows = chunk
        return _evaluate_chunk(self.snapshot, split.X[rows], split.labels[rows], buffers)

    def _collect(self, futures: list) -> list[tuple[float, float]]:
        """The metrics of every split from the chunks: those not started are evaluated here."""
        t0 = time.perf_counter()
        results = [None] * len(futures)
        for i in reversed(range(len(futures))):
            if not futures[i].cancel():
                break  # this one and every one before it are taken by the helper
            if self.should_stop is not None and self.should_stop():
                raise StopRequested
            results[i] = self._chunk(self.chunks[i], self.buffers)
        results = [r if r is not None else f.result() for r, f in zip(results, futures)]
        metrics = [
            _totals([r for (s, _), r in zip(self.chunks, results) if s is split], len(split))
            for split in self.splits
        ]
        self.seconds += time.perf_counter() - t0
        return metrics

    def finish(self, stopping: bool = False) -> None:
        if self.in_flight is None:
            return
        step, norms, futures = self.in_flight
        self.in_flight = None
        try:
            metrics = self._collect(futures)
        except StopRequested:
            if stopping:  # the run stops anyway: without this validation
                return
            raise
        _record(self.hist, step, metrics, norms)
        if self.hist.stop_reason != "running":  # it ended the run: go back to its step
            for w, kept in zip(self.model.weights, self.snapshot.weights):
                np.copyto(w, kept)
            del self.hist.train_loss[step + 1 :]  # the steps taken after it are undone
        self.shown(self.hist)

    def measure(self) -> list[tuple[float, float]]:
        return self._collect(self._post())

    def close(self) -> None:
        self.helper.shutdown(wait=True, cancel_futures=True)


def _record(hist: History, step: int, metrics, grad_norms) -> None:
    """Record a validation: the whole-set metrics (and this step's gradient norms); stop by
    divergence or patience."""
    config = hist.config
    (train_loss, train_acc), (val_loss, val_acc) = metrics
    hist.val_steps.append(step)
    hist.train_loss_full.append(train_loss)
    hist.train_acc.append(train_acc)
    hist.val_loss.append(val_loss)
    hist.val_acc.append(val_acc)
    if grad_norms is not None:
        hist.grad_norms.append(grad_norms)
    if val_loss < hist.best_val_loss:
        hist.best_val_loss = val_loss
        hist.best_step = step
    validations_since_best = (step - hist.best_step) // config.validation_interval
    if step >= config.steps_per_epoch and not val_loss <= DIVERGED_LOSS:
        _diverged(hist, step, val_loss)
    elif validations_since_best >= config.patience:
        hist.stop_reason = "early_stopping"


def _diverged(hist: History, step: int, loss: float) -> None:
    config = hist.config
    lower = f"Lower the learning rate (now {config.learning_rate:g})"
    if config.momentum:
        lower += f" or the momentum (now {config.momentum:g})"
    hist.stop_reason = "diverged"
    hist.message = (
        f"{config.label} diverged: at step {step:,} the loss was {loss:.3g} (above "
        f"{DIVERGED_LOSS:.0f}, ten times a uniform guess's), so the run was stopped. {lower}."
    )
    warnings.warn(hist.message, RuntimeWarning, stacklevel=4)


# ==== Training ====================================================================================


def train(
    config: RunConfig = RunConfig(),
    data: Dataset | None = None,
    *,
    progress: bool = True,
    callback: Callable[[History], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    blas_threads: int = 1,
    second_core: bool | None = None,
) -> History:
    """Train with the assignment's protocol and return the History.

    Reshuffle every epoch (the last incomplete batch dropped), validate every validation_interval
    steps from step 0, stop early after `patience` validations without a new lowest validation
    loss, take the final metrics with the final weights. Divergence stops the run with a warning.
    `callback(history)` runs after each validation. `should_stop()` is asked after every step and
    between the chunks of an evaluation, and ends the run ("stopped"); Ctrl-C returns the history
    so far ("interrupted"). A stopped or interrupted run has no final metrics (NaN): its last
    validation says where it got.

    `blas_threads`: BLAS threads of the evaluations (the steps always use one); other than 1
    only for a run that trains alone in its process. `second_core`: validate on a second thread
    while the steps go on (the History and weights are the same, bit for bit). The default
    (None) does so where the machine has a core to spare and evaluations use one BLAS thread;
    worker pools, which train one run per core, pass False."""
    from tqdm.auto import tqdm

    blas_threads = rules.check("blas_threads", blas_threads, rules.POSITIVE_INT)
    data = data or prepare_data(config.n_train, config.dtype, config.n_val)
    rules.check("n_train (for this data)", config.n_train, rules.between(1, len(data.train)))
    rules.check("n_val (for this data)", config.n_val, rules.between(1, len(data.val)))
    train_set = data.train.first(config.n_train, config.dtype)
    val_set = data.val.first(config.n_val, config.dtype)
    model = initial_model(config)
    rules.check_inputs(train_set.X, model.input_size, model.dtype)
    rules.check_labels(train_set.labels, len(train_set.X), NUM_CLASSES)
    hist = History(config=config, stop_reason="running")
    if second_core is None:
        second_core = len(os.sched_getaffinity(0)) > 1 and blas_threads == 1
    bar = tqdm(
        total=config.max_epochs * config.steps_per_epoch,
        unit="step",
        desc=config.label,
        disable=not progress,
        mininterval=0.5,
    )

    def shown(hist: History) -> None:
        losses = dict(val_loss=f"{hist.val_loss[-1]:.4f}", val_acc=f"{hist.val_acc[-1]:.4f}")
        bar.set_postfix(losses, refresh=False)
        bar.update(hist.steps - bar.n)
        if callback is not None:
            callback(hist)

    kind = _SecondCoreValidations if second_core else _Validations
    rows = min(evaluation_rows(model), max(config.n_train, config.n_val))
    final = None  # the whole-set metrics of the final weights
    with BLAS_THREADS.training(blas_threads):
        if config.record_grad_norms:  # at the start, on the first 1,000 training images
            grads = model.backward(model.forward(train_set.X[:1000]), train_set.Y[:1000])
            hist.init_grad_norms = _norms(grads)
        validations = kind(
            model, hist, (train_set, val_set), rows, should_stop, blas_threads, shown
        )
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                _train_epochs(model, hist, train_set, validations, should_stop)
                if hist.stop_reason == "running":
                    hist.stop_reason = "max_epochs"
                finite = all(np.isfinite(w).all() for w in model.weights)
                if finite and hist.stop_reason in COMPLETED + ("diverged",):
                    final = validations.measure()
        except KeyboardInterrupt:
            hist.stop_reason = "interrupted"
            final = None
        except StopRequested:
            hist.stop_reason = "stopped"
        finally:
            validations.close()
            bar.update(hist.steps - bar.n)
            bar.close()
    hist.weights = [w.copy() for w in model.weights]
    hist.final = dict.fromkeys(FINAL_METRICS, math.nan)
    if final is not None:
        hist.final["train_loss"], hist.final["train_acc"] = final[0]
        hist.final["val_loss"], hist.final["val_acc"] = final[1]
    if hist.completed and not hist.final["val_loss"] <= DIVERGED_LOSS:
        _diverged(hist, hist.steps, hist.final["val_loss"])
    return hist


def _train_epochs(model, hist, train_set, validations, should_stop):
    """The epochs of train(): steps, and a validation every validation_interval steps."""
    config = hist.config
    batch_size = config.batch_size
    shuffling = _seed_streams(config.seed)[1]
    optimiser = SGD(config.learning_rate, config.momentum)
    buffers = Buffers(model, batch_size)  # what a step's forward and backward pass write into
    batch = np.empty((batch_size, model.input_size), model.dtype)  # the images of one step
    targets = np.empty_like(train_set.Y)  # one-hot targets, in this epoch's order
    labels = np.empty_like(train_set.labels)  # the same, as integers
    interval = config.validation_interval
    for epoch in range(config.max_epochs):
        t_epoch = time.perf_counter()
        validations.seconds = 0.0
        order = shuffling.permutation(config.n_train)
        # Targets are reordered once per epoch, images batch by batch: each image is then read
        # once, and is still in the cache when the backward pass needs it again. mode="clip":
        # given `out`, np.take's default mode="raise" copies through a buffer; a permutation's
        # indices are always in range.
        np.take(train_set.Y, order, axis=0, out=targets, mode="clip")
        np.take(train_set.labels, order, axis=0, out=labels, mode="clip")
        ending = None  # why the steps end before the protocol says: a non-finite loss, a stop
        for k in range(config.steps_per_epoch):
            step = hist.steps
            rows = slice(k * batch_size, (k + 1) * batch_size)
            np.take(train_set.X, order[rows], axis=0, out=batch, mode="clip")
            y_hat, losses = softmax_and_losses(model.logits(batch, buffers), labels[rows])
            hist.train_loss.append(float(losses.sum()) / batch_size)
            if not math.isfinite(hist.train_loss[-1]):
                ending = "a non-finite loss"
                break
            grads = model.backward(y_hat, targets[rows], buffers)
            validating = step % interval == 0
            norms = _norms(grads) if validating and config.record_grad_norms else None
            optimiser.step(model.weights, grads)  # uses the gradients up
            if validating:
                validations.validate(step, norms)
                if hist.stop_reason != "running":
                    break
            if should_stop is not None and should_stop():
                ending = "stopped"
                break
        last = ending or hist.stop_reason != "running" or epoch == config.max_epochs - 1
        if last:  # the validation in flight comes first: it may end the run at its own step
            validations.finish(stopping=ending == "stopped")
        hist.epoch_times.append(time.perf_counter() - t_epoch)
        hist.step_times.append(hist.epoch_times[-1] - validations.seconds)
        if last:
            break
    if hist.stop_reason == "running" and ending == "a non-finite loss":
        _diverged(hist, hist.steps - 1, hist.train_loss[-1])
    elif hist.stop_reason == "running" and ending == "stopped":
        hist.stop_reason = "stopped"
    epochs = -(-hist.steps // config.steps_per_epoch)
    del hist.epoch_times[epochs:]  # a run taken back to a validation's step ends in its epoch
    del hist.step_times[epochs:]
