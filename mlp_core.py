"""The ML core: a multi-layer perceptron for MNIST, from scratch in numpy.

It prepares the data, defines the network (any layer sizes, sigmoid or improved-sigmoid hidden
units, softmax output), trains it with mini-batch SGD and early stopping as the assignment's
protocol prescribes, and checks its gradients numerically; each equation of the report is written
here once. Not here, on purpose: autodiff, GPUs, biases beyond the input's bias column (the
assignment's model), reading the MNIST files (mnist_files.py) and what serves the report: plots,
tables, stored runs, settings (mlp_report, mlp_plots, mlp_runs).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import numbers
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from mnist_files import (  # noqa: F401 (re-exported)
    MNIST,
    MNIST_FILES,
    MNISTDataError,
    load_mnist,
    mnist_dir,
)

NUM_CLASSES = 10
INPUT_SIZE = 28 * 28 + 1  # the bias trick appends a constant 1 to every image


# ==== Checks of arguments =========================================================================


def _check_choice(name: str, value, choices: Iterable[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def _check_dtype(dtype) -> np.dtype:
    name = str(dtype)
    if not isinstance(dtype, str):
        with contextlib.suppress(TypeError):
            name = np.dtype(dtype).name
    _check_choice("dtype", name, ("float32", "float64"))
    return np.dtype(name)


def _check_int(name: str, value, least: int = 1, most: float = math.inf) -> int:
    """An integer (Python or numpy, not bool) in [least, most], returned as a Python int."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_int or not least <= value <= most:
        upper = f" and <= {most}" if most < math.inf else ""
        raise ValueError(f"{name} must be an integer >= {least}{upper}, got {value!r}")
    return int(value)


def _check_real(name: str, value, rule: str, holds: Callable[[float], bool]) -> float:
    """A real number (Python or numpy, not bool) for which `holds` is true, as a Python float."""
    is_real = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if not is_real or not holds(float(value)):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return float(value)


def _check_labels(labels, n: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    labels = np.asarray(labels)
    in_range = n == 0 or 0 <= labels.min() <= labels.max() < num_classes
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or not in_range:
        found = f" from {labels.min()} to {labels.max()}" if labels.size else ""
        raise ValueError(
            f"labels must be {n} integers in [0, {num_classes - 1}], "
            f"got {labels.dtype} {labels.shape}{found}"
        )
    return labels


# ==== The protocol's data: normalisation, bias column, one-hot targets ===========================


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation over all pixels, from a histogram (no float copy)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.size == 0:
        raise ValueError(
            f"images must be a non-empty uint8 array of raw pixels, got {images.dtype} "
            f"{images.shape}"
        )
    flat = images.ravel()
    chunk = 1 << 20  # bincount widens its input to int64: go chunk by chunk
    counts = np.zeros(256, np.int64)
    for start in range(0, flat.size, chunk):
        counts += np.bincount(flat[start : start + chunk], minlength=256)
    counts = counts.astype(float)
    values = np.arange(256.0)
    mean = float(counts @ values / counts.sum())
    return mean, float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))


def normalize(images, mu: float, sigma: float, dtype="float32", out=None) -> np.ndarray:
    """(x - mu) / sigma of raw pixels as `dtype`, looked up in a table of the 256 values."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or not sigma > 0:
        raise ValueError(
            f"images must be uint8 raw pixels and sigma > 0, got {images.dtype} and {sigma}"
        )
    table = ((np.arange(256) - mu) / sigma).astype(_check_dtype(dtype))
    if out is None:
        out = np.empty(images.shape, table.dtype)
    for i in range(0, len(images), 2048):  # np.take widens uint8 indices to int64: in blocks
        np.take(table, images[i : i + 2048], out=out[i : i + 2048])
    return out


def add_bias(X: np.ndarray) -> np.ndarray:
    """Append the constant-1 bias column: (N, D) -> (N, D + 1)."""
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (N, D), got shape {X.shape}")
    return np.hstack([X, np.ones((len(X), 1), X.dtype)])


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES, dtype=np.float32) -> np.ndarray:
    """Integer labels (N,) -> one-hot targets (N, num_classes)."""
    labels = _check_labels(labels, len(labels), num_classes)
    return np.eye(num_classes, dtype=dtype)[labels]


@dataclass(frozen=True)
class Split:
    """One split ready for the network: X (N, 785) normalised, with the bias column; Y; labels."""

    X: np.ndarray
    Y: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """The protocol's training and validation splits and the normalisation constants."""

    train: Split
    val: Split
    mu: float
    sigma: float


def _split(images: np.ndarray, labels: np.ndarray, mu: float, sigma: float, dtype) -> Split:
    X = np.empty((len(images), INPUT_SIZE), dtype)  # filled in place: no temporary copies
    normalize(images, mu, sigma, dtype, out=X[:, :-1])
    X[:, -1] = 1  # the bias trick
    labels = labels.astype(np.int64)
    X.flags.writeable = False
    labels.flags.writeable = False
    return Split(X, one_hot(labels, dtype=dtype), labels)


@functools.lru_cache(maxsize=8)
def prepare_data(
    n_train: int = 20_000,
    dtype: str = "float32",
    n_val: int | None = None,
    directory: str | None = None,
) -> Dataset:
    """The protocol's data (cached): the first `n_train` training and first `n_val` test images,
    normalised with mu and sigma of all 60,000 training images, bias column, one-hot targets."""
    _check_dtype(dtype)
    raw = load_mnist(directory)
    n_val = len(raw.test_labels) if n_val is None else n_val
    _check_int("n_train", n_train, 1, len(raw.train_labels))
    _check_int("n_val", n_val, 1, len(raw.test_labels))
    mu, sigma = pixel_stats(raw.train_images)
    train = _split(raw.train_images[:n_train], raw.train_labels[:n_train], mu, sigma, dtype)
    val = _split(raw.test_images[:n_val], raw.test_labels[:n_val], mu, sigma, dtype)
    return Dataset(train, val, mu, sigma)


# ==== Activations and loss ========================================================================

# LeCun's improved sigmoid A tanh(B z)
_A = 1.7159
_B = 2.0 / 3.0

# Each activation f(z, out=None) beside its slope f'(z), written in terms of the output a = f(z)
# that the forward pass keeps anyway, so backward never needs z: slope(a, out=None). All in place.


def _sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # 1/(1+e^-z) = (1 + tanh(z/2))/2: the same function, and it never overflows
    half = np.multiply(z, 0.5, out=out)
    out = np.tanh(half, out=out)
    out += 1
    out *= 0.5
    return out


def _sigmoid_slope(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.subtract(1, a, out=out)  # f'(z) = f(z) (1 - f(z))
    out *= a
    return out


def _improved_sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    scaled = np.multiply(z, _B, out=out)
    out = np.tanh(scaled, out=out)
    out *= _A
    return out


def _improved_sigmoid_slope(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # f'(z) = A B (1 - tanh^2(B z)) = (B / A) (A^2 - f(z)^2)
    square = np.multiply(a, a, out=out)
    out = np.subtract(_A**2, square, out=out)
    out *= _B / _A
    return out


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "sigmoid": (_sigmoid, _sigmoid_slope),
    "improved_sigmoid": (_improved_sigmoid, _improved_sigmoid_slope),
}
INITIALISATIONS = ("uniform", "fan_in")


def _softmax_nll(
    z: np.ndarray,
    labels: np.ndarray | None = None,
    axis: int = 1,
    probabilities: bool = True,
):
    """Softmax of the logits z (classes along `axis`) and, given labels, each example's
    cross-entropy -log softmax(z)_y in float64: the one log-sum-exp of this module.

    z is shifted by its maximum, so exp never overflows, and the loss
    log sum_k exp(z_k - max) - (z_y - max) never takes log 0. (Evaluation passes z transposed:
    numpy reduces along long contiguous rows far faster than over many short ones; it needs only
    the loss, so it asks for no probabilities and gets None for them.)"""
    shifted = z - z.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=axis, keepdims=True)
    y_hat = e / total if probabilities else None
    if labels is None:
        return y_hat, None
    rows = np.arange(len(labels))
    picked = shifted[rows, labels] if axis == 1 else shifted[labels, rows]
    return y_hat, np.log(total.ravel(), dtype=np.float64) - picked


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of softmax(logits) against integer labels: finite for finite logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be a non-empty (N, classes) array, got {logits.shape}")
    labels = _check_labels(labels, len(logits), logits.shape[1])
    return float(_softmax_nll(logits, labels)[1].mean())


# ==== The network: one forward and one backward pass ==============================================


def _check_layer_sizes(layer_sizes) -> tuple[int, ...]:
    sizes = tuple(layer_sizes) if isinstance(layer_sizes, Iterable) else ()
    positive = all(
        isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) and s > 0
        for s in sizes
    )
    if not sizes or sizes[-1] != NUM_CLASSES or not positive:
        raise ValueError(
            f"layer_sizes must list positive integers, the hidden layers' widths and then the "
            f"{NUM_CLASSES} outputs, e.g. [64, 10] or [60, 60, 10]; got {layer_sizes!r}"
        )
    return tuple(int(s) for s in sizes)


class Workspace:
    """The arrays a pass over up to `rows` examples writes into, allocated once per run.

    outputs[l] is the output of W[l] (f(z), or the logits z_L last), deltas[l] = dC/dz there,
    slopes[l] = f'(z) of hidden layer l, grads[l] = dC/dW[l]; x is the last forward pass's input;
    logits_t holds an evaluation chunk's logits transposed (classes along rows)."""

    def __init__(self, model: MLP, rows: int):
        self.rows = rows
        self.x: np.ndarray | None = None
        self.outputs = [np.empty((rows, s), model.dtype) for s in model.layer_sizes]
        self.deltas = [np.empty((rows, s), model.dtype) for s in model.layer_sizes]
        self.slopes = [np.empty((rows, s), model.dtype) for s in model.layer_sizes[:-1]]
        self.grads = [np.empty_like(w) for w in model.weights]
        self.logits_t = np.empty((model.layer_sizes[-1], rows), model.dtype)


class MLP:
    """A fully connected network: inputs (with the bias column) -> hidden layers -> softmax.

    `layer_sizes` lists every layer after the input, the output last: [64, 10] (Task 2),
    [60, 60, 10]. Weights W[l] have shape (fan_in, fan_out), applied as a @ W[l]; only the input
    has a bias (X's constant column)."""

    def __init__(
        self,
        layer_sizes: Sequence[int] = (64, NUM_CLASSES),
        *,
        activation: str = "sigmoid",
        init: str = "uniform",
        input_size: int = INPUT_SIZE,
        rng: np.random.Generator | int | None = 0,
        dtype="float32",
    ):
        self.layer_sizes = _check_layer_sizes(layer_sizes)
        self.activation = _check_choice("activation", activation, ACTIVATIONS)
        self.init = _check_choice("init", init, INITIALISATIONS)
        self.dtype = _check_dtype(dtype)
        self.input_size = _check_int("input_size", input_size)
        self._f, self._slope = ACTIVATIONS[activation]
        rng = np.random.default_rng(rng)
        fans = (self.input_size,) + self.layer_sizes
        self.weights = []
        for fan_in, fan_out in zip(fans[:-1], fans[1:]):
            if init == "uniform":
                w = rng.uniform(-1, 1, size=(fan_in, fan_out))
            else:
                w = rng.normal(0, 1 / np.sqrt(fan_in), size=(fan_in, fan_out))
            self.weights.append(w.astype(self.dtype))
        self._last: Workspace | None = None  # the workspace of the last forward(), for backward()

    @property
    def n_parameters(self) -> int:
        return sum(w.size for w in self.weights)

    def check_inputs(self, X: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Validate an input batch (and labels) and return X as this model's dtype."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.input_size or not np.issubdtype(X.dtype, np.floating):
            raise ValueError(
                f"X must be a floating-point array of shape (N, {self.input_size}) (normalised "
                f"pixels plus the bias column: see prepare_data), got {X.dtype} {X.shape}"
            )
        if labels is not None:
            _check_labels(labels, len(X))
        return X.astype(self.dtype, copy=False)

    def _forward(self, x: np.ndarray, ws: Workspace | None = None) -> np.ndarray:
        """Logits of the inputs x: z_l = a_{l-1} W_l, and a_l = f(z_l) for hidden layers.

        With a workspace, every layer's output is written into it (what backward needs)."""
        if ws is not None:
            ws.x = x
        a = x
        last = len(self.weights) - 1
        for l, W in enumerate(self.weights):
            out = None if ws is None else ws.outputs[l][: len(x)]
            z = np.matmul(a, W, out=out)  # (N, fan_in) @ (fan_in, fan_out) -> (N, fan_out)
            a = z if l == last else self._f(z, out=z)
        return a

    def _backward(self, ws: Workspace, y_hat: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
        """dC/dW_l of the mean cross-entropy, for the batch of the last forward pass into `ws`."""
        n = len(Y)
        # Softmax and cross-entropy fused: dC/dz_L = (y_hat - y) / N, no softmax Jacobian needed.
        delta = np.subtract(y_hat, Y, out=ws.deltas[-1][:n])
        delta *= 1.0 / n
        for l in range(len(self.weights) - 1, -1, -1):
            a_in = ws.x if l == 0 else ws.outputs[l - 1][:n]  # the input of W_l
            # (fan_in, N) @ (N, fan_out) -> (fan_in, fan_out)
            np.matmul(a_in.T, delta, out=ws.grads[l])
            if l > 0:  # delta_j = f'(z_j) sum_k w_kj delta_k, with f'(z_j) from a_j = f(z_j)
                delta = np.matmul(delta, self.weights[l].T, out=ws.deltas[l - 1][:n])
                delta *= self._slope(a_in, out=ws.slopes[l - 1][:n])
        return ws.grads

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities y_hat (N, 10); keeps what backward needs."""
        X = self.check_inputs(X)
        self._last = Workspace(self, len(X))
        return _softmax_nll(self._forward(X, self._last))[0]

    def backward(self, y_hat: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
        """Batch-averaged gradients dC/dW[l] for the batch of the last forward(); Y one-hot."""
        if self._last is None:
            raise RuntimeError("backward() needs a forward() call first")
        Y = np.asarray(Y, dtype=self.dtype)
        if Y.shape != y_hat.shape:
            raise ValueError(f"Y must be one-hot of shape {y_hat.shape}, got {Y.shape}")
        return [g.copy() for g in self._backward(self._last, y_hat, Y)]

    def hidden_outputs(self, X: np.ndarray) -> list[np.ndarray]:
        """The output f(z_l) of every hidden layer for the inputs X, input side first."""
        self.forward(X)
        return self._last.outputs[:-1]

    def loss(self, X: np.ndarray, labels: np.ndarray) -> float:
        """The mean cross-entropy C on (X, labels)."""
        return cross_entropy(self._forward(self.check_inputs(X, labels)), labels)


# ==== Evaluation ==================================================================================

EVAL_CHUNK = 2048  # images per forward pass of an evaluation
_EVAL_CHUNK_FLOPS = 2e9  # a chunk costs at most about this much work, so a Stop is seen quickly


class StopRequested(Exception):
    """Raised inside an evaluation when its `should_stop()` became true; train() catches it."""


def evaluation_rows(model: MLP) -> int:
    """Images per chunk of an evaluation: EVAL_CHUNK, fewer for a network so large that a chunk
    would take long (so `should_stop` is looked at often); the protocol's networks use 2,048."""
    sizes = (model.input_size,) + model.layer_sizes
    flops_per_image = 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return int(min(EVAL_CHUNK, max(64, _EVAL_CHUNK_FLOPS // flops_per_image)))


def evaluate(
    model: MLP,
    split: Split,
    ws: Workspace | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on a split, a forward pass chunk by chunk.

    `should_stop()` is asked before every chunk; when it is true, StopRequested is raised."""
    X = model.check_inputs(split.X)
    n = len(split)
    if n == 0:
        raise ValueError("evaluate needs a non-empty split")
    ws = ws or Workspace(model, min(evaluation_rows(model), n))
    loss_sum = 0.0
    correct = 0
    for start in range(0, n, ws.rows):
        if should_stop is not None and should_stop():
            raise StopRequested
        stop = start + ws.rows
        chunk_loss, chunk_correct = _evaluate_chunk(
            model, X[start:stop], split.labels[start:stop], ws
        )
        loss_sum += chunk_loss
        correct += chunk_correct
    return loss_sum / n, correct / n


EVAL_BLOCK = 512  # images per first-layer product in an evaluation chunk (sized for the cache)


def _row_blocks(n: int, rows: int) -> Iterable[tuple[int, int]]:
    """[0, n) cut into equal blocks of at most `rows`, none under rows / 2 unless n is.

    A BLAS takes another kernel for small products, which may sum in another order: blocks of at
    least half of EVAL_BLOCK keep the first layer's product on the kernel a whole chunk takes."""
    parts = -(-n // rows)
    edges = [n * i // parts for i in range(parts + 1)]
    return zip(edges[:-1], edges[1:])


def _evaluate_chunk(
    model: MLP, X: np.ndarray, labels: np.ndarray, ws: Workspace
) -> tuple[float, int]:
    """Summed cross-entropy and number of correct predictions on up to ws.rows images.

    The first layer's product and activation go block by block (EVAL_BLOCK images: a block's
    inputs are read once, its outputs stay in the cache); the later layers, the accuracy and the
    loss go over the whole chunk, as one forward pass would compute them, bit for bit."""
    size = len(X)
    last = len(model.weights) - 1
    a = ws.outputs[0][:size]  # the first layer's output
    for lo, hi in _row_blocks(size, EVAL_BLOCK):
        block = np.matmul(X[lo:hi], model.weights[0], out=a[lo:hi])
        if last > 0:
            model._f(block, out=block)
    for l in range(1, last + 1):  # the later layers over the whole chunk
        z = np.matmul(a, model.weights[l], out=ws.outputs[l][:size])
        a = z if l == last else model._f(z, out=z)
    logits = a
    correct = int(np.count_nonzero(logits.argmax(axis=1) == labels))
    logits_t = ws.logits_t[:, :size]
    np.copyto(logits_t, logits.T)
    nll = _softmax_nll(logits_t, labels, axis=0, probabilities=False)[1]
    return float(nll.sum()), correct


# ==== Optimiser ===================================================================================


class SGD:
    """Mini-batch SGD with optional momentum, as the assignment writes it:
    dW(t) = dC/dW + gamma * dW(t-1);  W <- W - lr * dW(t);  dW(-1) = 0."""

    def __init__(self, learning_rate: float, momentum: float = 0.0):
        self.learning_rate = _check_real(
            "learning_rate", learning_rate, "a finite number > 0", lambda v: 0 < v < math.inf
        )
        self.momentum = _check_real("momentum", momentum, "in [0, 1)", lambda v: 0 <= v < 1)
        self.velocity: list[np.ndarray] | None = None  # dW(t-1), created on the first step
        self._scratch: list[np.ndarray] | None = None  # lr * dW(t), so a step allocates nothing

    def step(self, weights: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update `weights` in place from `grads` (one gradient per weight matrix, same shapes)."""
        if self._scratch is None:
            shapes = [w.shape for w in weights]
            if [g.shape for g in grads] != shapes:
                raise ValueError(
                    f"grads must match the weights one to one, got shapes "
                    f"{[g.shape for g in grads]} for weights {shapes}"
                )
            self._scratch = [np.empty_like(w) for w in weights]
        if self.momentum and self.velocity is None:
            self.velocity = [np.zeros_like(w) for w in weights]
        for w, g, tmp, v in zip(weights, grads, self._scratch, self.velocity or grads):
            if self.momentum:
                v *= self.momentum
                v += g
            w -= np.multiply(v, self.learning_rate, out=tmp)  # without momentum, v is g itself


# ==== Runs: their configuration and what they record ==============================================


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run; the defaults are the protocol's Task 2c network.
    Every field is checked; numpy numbers are stored as Python numbers."""

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

    def __post_init__(self):
        def store(name, value):
            object.__setattr__(self, name, value)

        store("layer_sizes", _check_layer_sizes(self.layer_sizes))
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("init", self.init, INITIALISATIONS)
        store("dtype", _check_dtype(self.dtype).name)
        optimiser = SGD(self.learning_rate, self.momentum)  # checks both
        store("learning_rate", optimiser.learning_rate)
        store("momentum", optimiser.momentum)
        for name in ("batch_size", "max_epochs", "n_train", "n_val", "validations_per_epoch"):
            store(name, _check_int(name, getattr(self, name)))
        store("patience", _check_int("patience", self.patience))
        store("seed", _check_int("seed", self.seed, least=0))
        if not isinstance(self.record_grad_norms, (bool, np.bool_)):
            raise ValueError(
                f"record_grad_norms must be True or False, got {self.record_grad_norms!r}"
            )
        store("record_grad_norms", bool(self.record_grad_norms))
        if not isinstance(self.name, str):
            raise ValueError(f"name must be a string, got {self.name!r}")
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
    stop_reason: str = "not started"  # a COMPLETED reason, diverged, stopped or interrupted
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


# ==== Training ====================================================================================


def _blas_threads(n: int | None):
    """Cap BLAS threads: a step's products are too small to share; evaluations use `n`."""
    if n is None:
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=n, user_api="blas")


@functools.cache
def _blas_controller():  # finds the BLAS libraries once; setting a limit then takes microseconds
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _run_splits(config: RunConfig, data: Dataset) -> tuple[Split, Split]:
    """The first n_train training and n_val validation images of `data`, as the run's dtype."""
    _check_int("n_train (for this data)", config.n_train, 1, len(data.train))
    _check_int("n_val (for this data)", config.n_val, 1, len(data.val))
    dtype = np.dtype(config.dtype)
    splits = []
    for split, n in ((data.train, config.n_train), (data.val, config.n_val)):
        X = split.X[:n].astype(dtype, copy=False)
        splits.append(Split(X, split.Y[:n].astype(dtype, copy=False), split.labels[:n]))
    return splits[0], splits[1]


def train(
    config: RunConfig = RunConfig(),
    data: Dataset | None = None,
    *,
    progress: bool = True,
    callback: Callable[[History], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    blas_threads: int | None = 1,
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

    `second_core`: validate on a second thread while the steps go on (the History and weights
    are the same, bit for bit). The default (None) does so where the machine has a core to
    spare and evaluations use one BLAS thread; worker pools, which train one run per core,
    pass False."""
    from tqdm.auto import tqdm

    data = data or prepare_data(config.n_train, config.dtype, config.n_val)
    train_set, val_set = _run_splits(config, data)
    model = initial_model(config)
    model.check_inputs(train_set.X, train_set.labels)
    hist = History(config=config, stop_reason="running")
    if config.record_grad_norms:  # at the start, on the first 1,000 training images
        grads = model.backward(model.forward(train_set.X[:1000]), train_set.Y[:1000])
        hist.init_grad_norms = [float(np.linalg.norm(g)) for g in grads]
    if second_core is None:
        second_core = len(os.sched_getaffinity(0)) > 1 and blas_threads == 1
    kind = _SecondCoreValidations if second_core else _Validations
    rows = min(evaluation_rows(model), max(config.n_train, config.n_val))
    validations = kind(model, hist, (train_set, val_set), rows, should_stop, blas_threads)
    bar = tqdm(
        total=config.max_epochs * config.steps_per_epoch,
        unit="step",
        desc=config.label,
        disable=not progress,
        mininterval=0.5,
    )
    final = None  # the whole-set metrics of the final weights
    try:
        with _blas_threads(1 if blas_threads else None):
            with np.errstate(over="ignore", invalid="ignore"):
                _train_epochs(model, hist, train_set, validations, bar, callback, should_stop)
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


def _train_epochs(model, hist, train_set, validations, bar, callback, should_stop):
    """The epochs of train(): steps, and a validation every validation_interval steps."""
    config = hist.config
    batch_size = config.batch_size
    shuffling = _seed_streams(config.seed)[1]
    optimiser = SGD(config.learning_rate, config.momentum)
    step_buffers = Workspace(model, batch_size)
    batch = np.empty((batch_size, model.input_size), model.dtype)  # the images of one step
    targets = np.empty_like(train_set.Y)  # one-hot targets, in this epoch's order
    labels = np.empty_like(train_set.labels)  # the same, as integers
    shown = 0  # validations shown to the progress bar and the callback

    def show_validations() -> None:
        nonlocal shown
        if len(hist.val_steps) > shown:
            shown = len(hist.val_steps)
            val_loss = f"{hist.val_loss[-1]:.4f}"
            val_acc = f"{hist.val_acc[-1]:.4f}"
            bar.set_postfix(val_loss=val_loss, val_acc=val_acc, refresh=False)
            bar.update(hist.steps - bar.n)
            if callback is not None:
                callback(hist)

    for _epoch in range(config.max_epochs):
        t_epoch = time.perf_counter()
        validations.seconds = 0.0
        order = shuffling.permutation(config.n_train)
        # Targets are reordered once per epoch, images batch by batch: each image is then read
        # once, and is still in the cache when the backward pass needs it again. mode="clip":
        # given `out`, np.take's default mode="raise" copies through a buffer; a permutation's
        # indices are always in range.
        np.take(train_set.Y, order, axis=0, out=targets, mode="clip")
        np.take(train_set.labels, order, axis=0, out=labels, mode="clip")
        for k in range(config.steps_per_epoch):
            step = hist.steps
            rows = slice(k * batch_size, (k + 1) * batch_size)
            np.take(train_set.X, order[rows], axis=0, out=batch, mode="clip")
            logits = model._forward(batch, step_buffers)
            y_hat, losses = _softmax_nll(logits, labels[rows])
            hist.train_loss.append(float(losses.sum()) / batch_size)
            if not math.isfinite(hist.train_loss[-1]):
                validations.settle()  # a validation before this step may have ended the run
                if hist.stop_reason == "running":
                    _diverged(hist, step, hist.train_loss[-1])
                break
            grads = model._backward(step_buffers, y_hat, targets[rows])
            optimiser.step(model.weights, grads)
            if step % config.validation_interval == 0:
                validations.settle()
                if hist.stop_reason == "running":
                    validations.start(step, grads)
                show_validations()
            if hist.stop_reason == "running" and should_stop is not None and should_stop():
                with contextlib.suppress(StopRequested):  # a validation done may end it first
                    validations.settle()
                show_validations()
                if hist.stop_reason == "running":
                    hist.stop_reason = "stopped"
            if hist.stop_reason != "running":
                break
        if hist.stop_reason == "running" and _epoch == config.max_epochs - 1:
            validations.settle()  # the last validation may stop the run at its step
            show_validations()
        hist.epoch_times.append(time.perf_counter() - t_epoch)
        hist.step_times.append(hist.epoch_times[-1] - validations.seconds)
        if hist.stop_reason != "running":
            break
    epochs = hist.steps // config.steps_per_epoch + (hist.steps % config.steps_per_epoch > 0)
    del hist.epoch_times[epochs:]  # a run taken back to a validation's step ends in its epoch
    del hist.step_times[epochs:]


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


class _Validations:
    """The validations of a run, in the training thread: each measured and recorded at once."""

    def __init__(self, model, hist, splits, rows, should_stop, blas_threads):
        self.model = model
        self.hist = hist
        self.splits = splits
        self.ws = Workspace(model, rows)
        self.should_stop = should_stop
        self.blas_threads = blas_threads
        self.seconds = 0.0  # spent validating in the training thread, this epoch

    def start(self, step: int, grads: list[np.ndarray]) -> None:
        """Validate the weights as they are after step `step`, whose gradients are `grads`."""
        t0 = time.perf_counter()
        norms = (
            [float(np.linalg.norm(g)) for g in grads]
            if self.hist.config.record_grad_norms
            else None
        )
        _record(self.hist, step, self.measure(), norms)
        self.seconds += time.perf_counter() - t0

    def measure(self) -> list[tuple[float, float]]:
        """(loss, accuracy) of the model on each split, now."""
        with _blas_threads(self.blas_threads):
            return [evaluate(self.model, s, self.ws, self.should_stop) for s in self.splits]

    def settle(self) -> None:
        """Record the validations started so far: here, each is recorded when started."""

    def close(self) -> None:
        pass


class _SecondCoreValidations(_Validations):
    """The validations of a run on a second thread, on a snapshot of the weights, while the
    training thread goes on with the steps.

    start() copies the weights and posts the chunks evaluate() takes of both splits; a helper
    thread works through them. settle(), at the next validation step or at the end, takes the
    chunks left in the training thread as well, waits for the helper's last one, adds the
    chunks up in evaluate()'s order (the same numbers, bit for bit) and records the
    validation. If it ends the run (early stopping, divergence), the run goes back to that
    validation's step: its weights and batch losses, where the serial path would have stopped.
    One validation is in flight at a time, so the steps are at most one interval ahead."""

    def __init__(self, model, hist, splits, rows, should_stop, blas_threads):
        super().__init__(model, hist, splits, rows, should_stop, blas_threads)
        self.snapshot = copy.copy(model)  # the network of the validation in flight
        self.snapshot.weights = [w.copy() for w in model.weights]
        self.helper_ws = Workspace(model, rows)
        self.chunks = [(i, start) for i, s in enumerate(splits) for start in range(0, len(s), rows)]
        self.todo: list[tuple[int, int]] = []  # chunks not taken yet
        self.results: dict[tuple[int, int], tuple[float, int]] = {}
        self.busy = 0  # chunks the helper is evaluating
        self.posted: tuple[int, list[float] | None] | None = None  # (step, its gradient norms)
        self.failure: BaseException | None = None
        self.closing = False
        self.lock = threading.Condition()
        self.helper = threading.Thread(target=self._help, name="validations", daemon=True)
        self.helper.start()

    def start(self, step: int, grads: list[np.ndarray]) -> None:
        config = self.hist.config
        norms = [float(np.linalg.norm(g)) for g in grads] if config.record_grad_norms else None
        self._post()
        self.posted = (step, norms)

    def _post(self) -> None:
        for kept, w in zip(self.snapshot.weights, self.model.weights):
            np.copyto(kept, w)
        with self.lock:
            self.results = {}
            self.todo = list(self.chunks)
            self.lock.notify_all()

    def _evaluate(self, chunk: tuple[int, int], ws: Workspace) -> tuple[float, int]:
        split = self.splits[chunk[0]]
        rows = slice(chunk[1], chunk[1] + ws.rows)
        return _evaluate_chunk(self.snapshot, split.X[rows], split.labels[rows], ws)

    def _help(self) -> None:
        """The helper thread: evaluate posted chunks until the run ends."""
        while True:
            with self.lock:
                while not self.todo and not self.closing:
                    self.lock.wait()
                if self.closing:
                    return
                chunk = self.todo.pop(0)
                self.busy += 1
            try:
                result = self._evaluate(chunk, self.helper_ws)
            except BaseException as exc:  # handed to the training thread
                self.failure = exc
                result = None
            with self.lock:
                self.results[chunk] = result
                self.busy -= 1
                self.lock.notify_all()

    def _collect(self) -> list[tuple[float, float]]:
        """Evaluate the chunks left here too, wait for the helper's, add them up in order."""
        t0 = time.perf_counter()
        while True:
            with self.lock:
                if not self.todo and not self.busy:
                    break
                if not self.todo:
                    self.lock.wait()
                    continue
                chunk = self.todo.pop(0)
            if self.should_stop is not None and self.should_stop():
                raise StopRequested
            result = self._evaluate(chunk, self.ws)
            with self.lock:
                self.results[chunk] = result
        if self.failure is not None:
            raise self.failure
        metrics = []
        for i, split in enumerate(self.splits):
            loss_sum = 0.0
            correct = 0
            for start in range(0, len(split), self.ws.rows):
                chunk_loss, chunk_correct = self.results[(i, start)]
                loss_sum += chunk_loss
                correct += chunk_correct
            metrics.append((loss_sum / len(split), correct / len(split)))
        self.seconds += time.perf_counter() - t0
        return metrics

    def settle(self) -> None:
        if self.posted is None:
            return
        step, norms = self.posted
        self.posted = None
        _record(self.hist, step, self._collect(), norms)
        if self.hist.stop_reason != "running":  # the run ends at that step: go back there
            for w, kept in zip(self.model.weights, self.snapshot.weights):
                np.copyto(w, kept)
            del self.hist.train_loss[step + 1 :]

    def measure(self) -> list[tuple[float, float]]:
        self._post()
        return self._collect()

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.todo = []
            self.lock.notify_all()
        self.helper.join()


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


# ==== Gradient check and parameter counts =========================================================


def gradient_check(model: MLP, X: np.ndarray, Y: np.ndarray, epsilon: float = 1e-3) -> float:
    """Largest |analytic - numerical| over every weight of a float64 `model`, the numerical
    gradient the central difference (C(w + eps) - C(w - eps)) / (2 eps) of the mean cross-entropy
    C on (X, Y). ValueError when a weight, an input or a result is not finite."""
    X = model.check_inputs(X)
    Y = np.asarray(Y, dtype=model.dtype)
    if model.dtype != np.float64:
        raise ValueError(
            "gradient_check needs a float64 model: float32 rounding errors exceed epsilon^2"
        )
    if len(X) == 0 or Y.shape != (len(X), NUM_CLASSES):
        raise ValueError(
            f"gradient_check needs a non-empty batch X and one-hot Y of shape "
            f"{(len(X), NUM_CLASSES)}, got {len(X)} images and Y of shape {Y.shape}"
        )
    _check_real("epsilon", epsilon, "a finite number > 0", lambda v: 0 < v < math.inf)
    if not all(np.isfinite(a).all() for a in (X, Y, *model.weights)):
        raise ValueError("gradient_check: the weights, X or Y hold non-finite values")
    labels = Y.argmax(axis=1)
    analytic = model.backward(model.forward(X), Y)
    worst = 0.0
    for l, W in enumerate(model.weights):
        for j in range(W.shape[1]):
            # C with each weight W[l][i, j] of column j moved by +eps, and by -eps (one per i)
            c_plus = _losses_with_column_moved(model, X, labels, l, j, +epsilon)
            c_minus = _losses_with_column_moved(model, X, labels, l, j, -epsilon)
            numerical = (c_plus - c_minus) / (2 * epsilon)
            error = np.abs(numerical - analytic[l][:, j])
            if not np.isfinite(error).all():
                raise ValueError(f"gradient_check: a non-finite gradient in W[{l}][:, {j}]")
            worst = max(worst, float(error.max()))
    return worst


def _losses_with_column_moved(model, X, labels, l: int, j: int, step: float) -> np.ndarray:
    """C(W) with the one weight W[l][i, j] moved by `step`, for every i of column j: a vector.

    The same numbers as moving each weight in turn and calling model.loss, computed faster:
    moving W[l][i, j] changes only unit j of layer l, whose pre-activation z_j gains step * a_i
    (a: the input of W[l]). So the fan_in moved versions of that unit go through the layers
    above together, as one batch, 64 of them at a time (arrays that fit in the CPU cache)."""
    W = model.weights
    last = len(W) - 1
    a = [X] + model.hidden_outputs(X)  # a[l]: the input of W[l]; a[l + 1]: its output
    z_j = a[l] @ W[l][:, j]  # (N,): unit j's pre-activation, unmoved
    logits = a[last] @ W[last]  # (N, 10), unmoved
    next_z = logits if l == last else a[l + 1] @ W[l + 1]  # (N, width): layer l + 1, unmoved
    losses = np.empty(W[l].shape[0])
    for start in range(0, W[l].shape[0], 64):
        moved = z_j + step * a[l][:, start : start + 64].T  # (block, N): row r moves W[start+r]
        if l == last:  # only the logit of class j changes
            z = np.repeat(logits[None], len(moved), axis=0)
            z[:, :, j] = moved
        else:  # layer l + 1 changes by (f(z_j') - f(z_j)) W[l + 1][j]: a rank-one update
            change = model._f(moved) - a[l + 1][:, j]
            z = next_z[None] + change[:, :, None] * W[l + 1][j]
            for k in range(l + 2, last + 1):  # the rest of the network, the moved rows batched
                z = model._f(z) @ W[k]
        nll = _softmax_nll(z.reshape(-1, NUM_CLASSES), np.tile(labels, len(moved)))[1]
        losses[start : start + len(moved)] = nll.reshape(len(moved), len(X)).mean(axis=1)
    return losses


def count_parameters(layer_sizes: Sequence[int], input_size=INPUT_SIZE, output_bias=False) -> int:
    """Weights of a network of these layer sizes (input_size counts the bias), plus output biases
    if `output_bias`."""
    fans = (int(input_size),) + _check_layer_sizes(layer_sizes)
    weights = sum(a * b for a, b in zip(fans[:-1], fans[1:]))
    return weights + (fans[-1] if output_bias else 0)
