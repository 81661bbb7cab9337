"""The ML core: a multi-layer perceptron for MNIST, from scratch in numpy. It prepares the data, defines
the network (any layer sizes, sigmoid or improved-sigmoid hidden units, softmax output), trains it with
mini-batch SGD and early stopping as the assignment's protocol prescribes, and checks its gradients
numerically; each equation of the report is written here once. Not here, on purpose: autodiff, GPUs,
biases beyond the input's bias column (the assignment's model), reading the MNIST files (mnist_files.py)
and what serves the report: plots, tables, stored runs, settings (mlp_report, mlp_plots, mlp_runs)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from mnist_files import MNIST, MNIST_FILES, MNISTDataError, load_mnist, mnist_dir  # noqa: F401 (re-exported)

NUM_CLASSES = 10
INPUT_SIZE = 28 * 28 + 1  # the bias trick appends a constant 1 to every image


# ==== The protocol's data: normalisation, bias column, one-hot targets ==============================


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation over all pixels, from a histogram (no float copy)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.size == 0:
        raise ValueError(
            f"images must be a non-empty uint8 array of raw pixels, got {images.dtype} {images.shape}"
        )
    flat, chunk = images.ravel(), 1 << 20  # bincount widens its input to int64: go chunk by chunk
    counts = sum(
        np.bincount(flat[i : i + chunk], minlength=256) for i in range(0, flat.size, chunk)
    ).astype(float)
    mean = float(counts @ (values := np.arange(256.0)) / counts.sum())
    return mean, float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))


def _check_dtype(dtype) -> np.dtype:
    _check_choice("dtype", str(dtype), ("float32", "float64"))
    return np.dtype(dtype)


def _check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def _check_int(name: str, value, least: int = 1, most: float = math.inf) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not least <= value <= most
    ):
        raise ValueError(
            f"{name} must be an integer >= {least}"
            + (f" and <= {most}" if most < math.inf else "")
            + f", got {value!r}"
        )
    return int(value)


def normalize(
    images: np.ndarray, mu: float, sigma: float, dtype="float32", out: np.ndarray | None = None
):
    """(x - mu) / sigma of raw pixels as `dtype`, looked up in a table of the 256 values (no float copy)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or not sigma > 0:
        raise ValueError(
            f"images must be uint8 raw pixels and sigma > 0, got {images.dtype} and {sigma}"
        )
    table = ((np.arange(256) - mu) / sigma).astype(_check_dtype(dtype))
    out = np.empty(images.shape, table.dtype) if out is None else out
    for i in range(0, len(images), 2048):  # np.take widens uint8 indices to int64: block by block
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


def _check_labels(labels, n: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    labels = np.asarray(labels)
    if (
        labels.shape != (n,)
        or not np.issubdtype(labels.dtype, np.integer)
        or (n and not 0 <= labels.min() <= labels.max() < num_classes)
    ):
        raise ValueError(
            f"labels must be {n} integers in [0, {num_classes - 1}], got {labels.dtype} {labels.shape}"
            + (f" from {labels.min()} to {labels.max()}" if labels.size else "")
        )
    return labels


@dataclass(frozen=True)
class Split:
    """One split ready for the network: X (N, 785) normalised with bias column, one-hot Y, labels."""

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


@functools.lru_cache(maxsize=8)
def prepare_data(
    n_train: int = 20_000,
    dtype: str = "float32",
    n_val: int | None = None,
    directory: str | None = None,
) -> Dataset:
    """The protocol's data (cached): the first `n_train` training images and the first `n_val` test images,
    normalised with mu and sigma of all 60,000 training images, bias column, one-hot targets."""
    _check_dtype(dtype)
    raw = load_mnist(directory)
    n_val = len(raw.test_labels) if n_val is None else n_val
    (
        _check_int("n_train", n_train, 1, len(raw.train_labels)),
        _check_int("n_val", n_val, 1, len(raw.test_labels)),
    )
    mu, sigma = pixel_stats(raw.train_images)

    def split(images, labels) -> Split:
        X = np.empty((len(images), INPUT_SIZE), dtype)  # filled in place: no temporary copies
        normalize(images, mu, sigma, dtype, out=X[:, :-1])
        X[:, -1] = 1  # the bias trick
        labels = labels.astype(np.int64)
        for arr in (X, labels):
            arr.flags.writeable = False
        return Split(X, one_hot(labels, dtype=dtype), labels)

    return Dataset(
        split(raw.train_images[:n_train], raw.train_labels[:n_train]),
        split(raw.test_images[:n_val], raw.test_labels[:n_val]),
        mu,
        sigma,
    )


# ==== Activations and loss ==========================================================================

_A, _B = 1.7159, 2.0 / 3.0  # LeCun's improved sigmoid A tanh(B z)


# Each activation f(z, out=None) beside its slope f'(z), written in terms of the output a = f(z) that
# the forward pass keeps anyway, so backward never needs z: slope(a, out=None). All work in place.


def _sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.tanh(
        np.multiply(z, 0.5, out=out), out=out
    )  # 1/(1+e^-z) = (1 + tanh(z/2))/2, no overflow
    out += 1
    out *= 0.5
    return out


def _sigmoid_slope(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.subtract(1, a, out=out)  # f'(z) = f(z) (1 - f(z))
    out *= a
    return out


def _improved_sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.tanh(np.multiply(z, _B, out=out), out=out)
    out *= _A
    return out


def _improved_sigmoid_slope(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.subtract(_A**2, np.multiply(a, a, out=out), out=out)  # f'(z) = AB (1 - tanh^2(Bz))
    out *= _B / _A  #       = (B/A) (A^2 - f(z)^2)
    return out


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "sigmoid": (_sigmoid, _sigmoid_slope),
    "improved_sigmoid": (_improved_sigmoid, _improved_sigmoid_slope),
}
INITIALISATIONS = ("uniform", "fan_in")


def _softmax_nll(z: np.ndarray, labels: np.ndarray | None = None, axis: int = 1):
    """Softmax of the logits z (classes along `axis`) and, given labels, each example's cross-entropy
    -log softmax(z)_y in float64: the one log-sum-exp of this module. z is shifted by its maximum, so exp
    never overflows, and the loss log sum_k exp(z_k - max) - (z_y - max) never takes log 0. (Evaluation
    passes z transposed: numpy reduces along long contiguous rows far faster than over many short ones.)"""
    shifted = z - z.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=axis, keepdims=True)
    if labels is None:
        return e / total, None
    rows = np.arange(len(labels))
    picked = shifted[rows, labels] if axis == 1 else shifted[labels, rows]
    return e / total, np.log(total.ravel(), dtype=np.float64) - picked


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of softmax(logits) against integer labels: finite for any finite logits."""
    return float(_softmax_nll(np.asarray(logits, dtype=np.float64), np.asarray(labels))[1].mean())


# ==== The network: one forward and one backward pass ================================================


def _check_layer_sizes(layer_sizes) -> tuple[int, ...]:
    sizes = tuple(layer_sizes) if isinstance(layer_sizes, Iterable) else ()
    if (
        not sizes
        or sizes[-1] != NUM_CLASSES
        or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0 for s in sizes)
    ):
        raise ValueError(
            f"layer_sizes must list positive integers, the hidden layers' widths and then the "
            f"{NUM_CLASSES} outputs, e.g. [64, 10] or [60, 60, 10]; got {layer_sizes!r}"
        )
    return tuple(int(s) for s in sizes)


class Workspace:
    """The arrays a pass over up to `rows` examples writes into, allocated once per run: outputs[l] is
    the output of W[l] (f(z), or the logits z_L last), deltas[l] = dC/dz there, grads[l] = dC/dW[l]."""

    def __init__(self, model: MLP, rows: int):
        self.rows, self.x = rows, None  # x: the input of the last forward pass
        sizes, dt = model.layer_sizes, model.dtype
        self.outputs, self.deltas = (
            [np.empty((rows, s), dt) for s in sizes],
            [np.empty((rows, s), dt) for s in sizes],
        )
        self.slopes = [np.empty((rows, s), dt) for s in sizes[:-1]]
        self.grads = [np.empty_like(w) for w in model.weights]


class MLP:
    """A fully connected network: inputs (with the bias column) -> hidden layers -> softmax. `layer_sizes`
    lists every layer after the input, the output last: [64, 10] (Task 2), [60, 60, 10]. Weights W[l]
    have shape (fan_in, fan_out), applied as a @ W[l]; only the input has a bias (X's constant column)."""

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
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("init", init, INITIALISATIONS)
        self.dtype, self.activation, self.init = _check_dtype(dtype), activation, init
        self.input_size = _check_int("input_size", input_size)
        self._f, self._slope = ACTIVATIONS[activation]
        rng, fans = np.random.default_rng(rng), (self.input_size,) + self.layer_sizes
        self.weights = [
            (
                rng.uniform(-1, 1, size=(i, o))
                if init == "uniform"
                else rng.normal(0, 1 / np.sqrt(i), size=(i, o))
            ).astype(self.dtype)
            for i, o in zip(fans[:-1], fans[1:])
        ]
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

    def _forward(self, a: np.ndarray, ws: Workspace | None = None, start: int = 0) -> np.ndarray:
        """Logits of `a`, the input of W[start] (X for 0): z_l = a_{l-1} W_l, hidden a_l = f(z_l), into ws."""
        if start == 0 and ws is not None:
            ws.x = a
        for l in range(start, len(self.weights)):
            out = None if ws is None else ws.outputs[l][: len(a)]
            z = np.matmul(
                a, self.weights[l], out=out
            )  # (N, fan_in) @ (fan_in, fan_out) -> (N, fan_out)
            a = z if l == len(self.weights) - 1 else self._f(z, out=z)
        return a

    def _backward(self, ws: Workspace, y_hat: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
        """dC/dW_l of the mean cross-entropy, for the batch of the last forward pass into `ws`."""
        n, W = len(Y), self.weights
        # Softmax and cross-entropy fused: dC/dz_L = (y_hat - y) / N, no Jacobian of softmax needed.
        delta = np.subtract(y_hat, Y, out=ws.deltas[-1][:n])
        delta *= 1.0 / n
        for l in range(len(W) - 1, -1, -1):
            a_in = ws.x if l == 0 else ws.outputs[l - 1][:n]  # the input of W_l
            np.matmul(
                a_in.T, delta, out=ws.grads[l]
            )  # (fan_in, N) @ (N, fan_out) -> (fan_in, fan_out)
            if l > 0:  # delta_j = f'(z_j) sum_k w_kj delta_k, with f'(z_j) from a_j = f(z_j)
                delta = np.matmul(delta, W[l].T, out=ws.deltas[l - 1][:n])
                delta *= self._slope(a_in, out=ws.slopes[l - 1][:n])
        return ws.grads

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities y_hat (N, 10); keeps what backward needs."""
        self._last = Workspace(self, len(X))
        return _softmax_nll(self._forward(self.check_inputs(X), self._last))[0]

    def backward(self, y_hat: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
        """Batch-averaged gradients dC/dW[l] for the batch of the last forward(); Y one-hot (N, 10)."""
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

    def loss(self, X: np.ndarray, labels: np.ndarray) -> float:  # mean cross-entropy on (X, labels)
        return cross_entropy(self._forward(self.check_inputs(X, labels)), labels)


def evaluate(model: MLP, split: Split, ws: Workspace | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on a split: a forward pass in chunks of 2,048 images."""
    X, labels, n = model.check_inputs(split.X), split.labels, len(split)
    ws = ws or Workspace(model, min(2048, n))
    loss_sum, correct = 0.0, 0
    for start in range(0, n, ws.rows):
        y = labels[start : start + ws.rows]
        z_t = model._forward(
            X[start : start + ws.rows], ws
        ).T.copy()  # (10, chunk): classes along rows
        correct += int(np.count_nonzero(z_t.argmax(axis=0) == y))
        loss_sum += float(_softmax_nll(z_t, y, axis=0)[1].sum())
    return loss_sum / n, correct / n


# ==== Optimiser =====================================================================================


class SGD:
    """Mini-batch SGD with optional momentum, as the assignment writes it:
    dW(t) = dC/dW + gamma * dW(t-1);  W <- W - lr * dW(t);  dW(-1) = 0."""

    def __init__(self, learning_rate: float, momentum: float = 0.0):
        real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)  # noqa: E731
        if not (real(learning_rate) and 0 < learning_rate < math.inf):
            raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
        if not (real(momentum) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.learning_rate, self.momentum = float(learning_rate), float(momentum)
        self.velocity: list[np.ndarray] | None = None  # dW(t-1), created on the first step
        self._scratch: list[np.ndarray] | None = None  # lr * dW(t), so a step allocates nothing

    def step(self, weights: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update `weights` in place from `grads`."""
        self._scratch = self._scratch or [np.empty_like(w) for w in weights]
        if self.momentum and self.velocity is None:
            self.velocity = [np.zeros_like(w) for w in weights]
        for w, g, tmp, v in zip(weights, grads, self._scratch, self.velocity or grads):
            if self.momentum:
                v *= self.momentum
                v += g
            w -= np.multiply(v, self.learning_rate, out=tmp)  # without momentum, v is g itself


# ==== Training ======================================================================================


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run; the defaults are the protocol's Task 2c network."""

    layer_sizes: tuple[int, ...] = (64, NUM_CLASSES)  # every layer after the input, output last
    activation: str = "sigmoid"  # "sigmoid" or "improved_sigmoid" (1.7159 tanh(2z/3))
    init: str = "uniform"  # "uniform" in [-1, 1] or "fan_in" normal with std 1/sqrt(fan_in)
    learning_rate: float = 0.1  # SGD step size alpha
    momentum: float = 0.0  # gamma; 0 switches momentum off
    batch_size: int = 32  # the last incomplete batch of an epoch is dropped
    max_epochs: int = 50  # upper bound on epochs
    n_train: int = 20_000  # the first n_train MNIST training images are the training set
    n_val: int = 10_000  # the first n_val MNIST test images are the validation set
    validations_per_epoch: int = 5  # validate every steps_per_epoch // this many steps, from step 0
    patience: int = 50  # stop after this many validations without a new lowest val loss
    seed: int = 0  # the one seed of every random draw (init and shuffling)
    dtype: str = "float32"  # "float32" (fast) or "float64"
    record_grad_norms: bool = False  # record each weight matrix's gradient norm at every validation
    name: str = ""  # label used in tables and legends

    def __post_init__(self):
        object.__setattr__(self, "layer_sizes", _check_layer_sizes(self.layer_sizes))
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("init", self.init, INITIALISATIONS)
        _check_dtype(self.dtype)
        SGD(self.learning_rate, self.momentum)  # validates both
        for name in (
            "batch_size",
            "max_epochs",
            "n_train",
            "n_val",
            "validations_per_epoch",
            "patience",
            "seed",
        ):
            _check_int(name, getattr(self, name), least=0 if name == "seed" else 1)
        if self.batch_size > self.n_train:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed n_train ({self.n_train})"
            )

    @property
    def label(self) -> str:
        """The name, or a short description such as '[64] sigmoid, uniform init, lr 0.1'."""
        momentum = f", momentum {self.momentum:g}" if self.momentum else ""
        return self.name or (
            f"{list(self.layer_sizes[:-1])} {self.activation.replace('_', ' ')}, "
            f"{self.init.replace('_', '-')} init, lr {self.learning_rate:g}{momentum}"
        )

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    @property
    def validation_interval(self) -> int:
        return max(1, self.steps_per_epoch // self.validations_per_epoch)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


# Diverged: a non-finite loss, or after the first epoch a validation loss above 10 ln 10 = 23, ten times a uniform guess's.
DIVERGED_LOSS = 10 * math.log(NUM_CLASSES)


@dataclass
class History:
    """Everything a run recorded. Steps count updates from 0; validation s follows the update of step s."""

    config: RunConfig
    train_loss: list[float] = field(default_factory=list)  # batch loss of every step
    val_steps: list[int] = field(default_factory=list)  # step of every validation
    train_loss_full: list[float] = field(default_factory=list)  # whole training set, at validations
    train_acc: list[float] = field(default_factory=list)  # whole training set, at validations
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    grad_norms: list[list[float]] = field(default_factory=list)  # per weight matrix, at validations
    init_grad_norms: list[float] = field(default_factory=list)  # per weight matrix, before training
    epoch_times: list[float] = field(default_factory=list)  # seconds per epoch
    step_times: list[float] = field(default_factory=list)  # of which in training steps
    stop_reason: str = (
        "not started"  # early_stopping | max_epochs | diverged | stopped | interrupted
    )
    message: str = ""  # why a run diverged, for display
    best_val_loss: float = math.inf
    best_step: int = -1
    final: dict[str, float] = field(default_factory=dict)  # whole-set metrics, final weights
    weights: list[np.ndarray] = field(default_factory=list)  # final weights

    @property
    def steps(self) -> int:  # gradient steps taken
        return len(self.train_loss)

    @property
    def completed(self) -> bool:  # ended as configured: by early stopping or after its last epoch
        return self.stop_reason in ("early_stopping", "max_epochs")

    def model(self) -> MLP:
        """The trained network (final weights)."""
        return initial_model(self.config, [w.copy() for w in self.weights])


def initial_model(config: RunConfig, weights: list[np.ndarray] | None = None) -> MLP:
    """The network as train(config) starts it (or with `weights`): seed stream 0 (shuffling uses 1)."""
    model = MLP(
        config.layer_sizes,
        activation=config.activation,
        init=config.init,
        dtype=config.dtype,
        rng=np.random.default_rng(np.random.SeedSequence(config.seed).spawn(2)[0]),
    )
    model.weights = weights or model.weights
    return model


def _blas_threads(n: int | None):
    """Cap BLAS threads: a step's products are too small to share, only evaluations use `blas_threads`."""
    return (
        contextlib.nullcontext()
        if n is None
        else _blas_controller().limit(limits=n, user_api="blas")
    )


@functools.cache
def _blas_controller():  # finds the loaded BLAS libraries once; setting a limit then takes microseconds
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def train(
    config: RunConfig = RunConfig(),
    data: Dataset | None = None,
    *,
    progress: bool = True,
    callback: Callable[[History], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    blas_threads: int | None = 1,
) -> History:
    """Train with the assignment's protocol: reshuffle every epoch (the last incomplete batch dropped),
    validate every validation_interval steps from step 0, stop early after `patience` validations
    without a new lowest validation loss, take the final metrics with the final weights. Divergence
    stops the run with a warning. `callback(history)` runs after each validation; `should_stop()`
    ends the run ("stopped"); Ctrl-C returns the history so far ("interrupted")."""
    from tqdm.auto import tqdm

    data = data or prepare_data(config.n_train, config.dtype, config.n_val)
    _check_int("n_train (for this data)", config.n_train, 1, len(data.train))
    _check_int("n_val (for this data)", config.n_val, 1, len(data.val))
    dt, bs = np.dtype(config.dtype), config.batch_size
    splits = [
        Split(s.X[:n].astype(dt, copy=False), s.Y[:n].astype(dt, copy=False), s.labels[:n])
        for s, n in ((data.train, config.n_train), (data.val, config.n_val))
    ]
    model, hist = initial_model(config), History(config=config, stop_reason="running")
    X, Y, labels = splits[0].X, np.empty_like(splits[0].Y), np.empty_like(splits[0].labels)
    model.check_inputs(X, splits[0].labels)
    shuffle_rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(2)[1])
    optimiser, batch = (
        SGD(config.learning_rate, config.momentum),
        np.empty((bs, model.input_size), dt),
    )
    ws, eval_ws = (
        Workspace(model, bs),
        Workspace(model, min(2048, max(config.n_train, config.n_val))),
    )
    if config.record_grad_norms:  # on the first 1,000 training images
        grads = model.backward(model.forward(X[:1000]), splits[0].Y[:1000])
        hist.init_grad_norms = [float(np.linalg.norm(g)) for g in grads]
    bar = tqdm(
        total=config.max_epochs * config.steps_per_epoch,
        unit="step",
        desc=config.label,
        disable=not progress,
        mininterval=0.5,
    )
    try:
        with (
            _blas_threads(1 if blas_threads else None),
            np.errstate(over="ignore", invalid="ignore"),
        ):
            for epoch in range(config.max_epochs):
                t_epoch, t_validating = time.perf_counter(), 0.0
                perm = shuffle_rng.permutation(config.n_train)
                # Targets are reordered once per epoch, images batch by batch: each image is then read
                # once, and is still in the cache when the backward pass needs it again.
                np.take(splits[0].Y, perm, axis=0, out=Y)
                np.take(splits[0].labels, perm, axis=0, out=labels)
                for k in range(config.steps_per_epoch):
                    step, rows = hist.steps, slice(k * bs, (k + 1) * bs)
                    np.take(X, perm[rows], axis=0, out=batch)
                    y_hat, losses = _softmax_nll(model._forward(batch, ws), labels[rows])
                    hist.train_loss.append(float(losses.sum()) / bs)
                    if not math.isfinite(hist.train_loss[-1]):
                        _diverged(hist, step, hist.train_loss[-1])
                        break
                    optimiser.step(model.weights, model._backward(ws, y_hat, Y[rows]))
                    if step % config.validation_interval == 0:
                        t0 = time.perf_counter()
                        with _blas_threads(blas_threads):
                            _validate(model, hist, step, splits, eval_ws, ws.grads)
                        t_validating += time.perf_counter() - t0
                        bar.set_postfix(
                            val_loss=f"{hist.val_loss[-1]:.4f}",
                            val_acc=f"{hist.val_acc[-1]:.4f}",
                            refresh=False,
                        )
                        bar.update(step + 1 - bar.n)
                        if callback is not None:
                            callback(hist)
                    if hist.stop_reason == "running" and should_stop is not None and should_stop():
                        hist.stop_reason = "stopped"
                    if hist.stop_reason != "running":
                        break
                hist.epoch_times.append(time.perf_counter() - t_epoch)
                hist.step_times.append(hist.epoch_times[-1] - t_validating)
                if hist.stop_reason != "running":
                    break
    except KeyboardInterrupt:
        hist.stop_reason = "interrupted"
    finally:
        bar.update(hist.steps - bar.n)
        bar.close()
    hist.stop_reason = "max_epochs" if hist.stop_reason == "running" else hist.stop_reason
    hist.weights = [w.copy() for w in model.weights]
    hist.final = dict.fromkeys(("train_loss", "train_acc", "val_loss", "val_acc"), math.nan)
    if all(np.isfinite(w).all() for w in model.weights):
        with _blas_threads(blas_threads):
            hist.final.update(
                zip(
                    hist.final,
                    evaluate(model, splits[0], eval_ws) + evaluate(model, splits[1], eval_ws),
                )
            )
    if hist.stop_reason != "diverged" and not hist.final["val_loss"] <= DIVERGED_LOSS:
        _diverged(hist, hist.steps, hist.final["val_loss"])
    return hist


def _validate(
    model: MLP,
    hist: History,
    step: int,
    splits: list[Split],
    ws: Workspace,
    grads: list[np.ndarray],
) -> None:
    """Record the whole-set metrics (and this step's gradient norms); stop by divergence or patience."""
    c = hist.config
    (train_loss, train_acc), (val_loss, val_acc) = (evaluate(model, s, ws) for s in splits)
    for values, value in (
        (hist.val_steps, step),
        (hist.train_loss_full, train_loss),
        (hist.train_acc, train_acc),
        (hist.val_loss, val_loss),
        (hist.val_acc, val_acc),
    ):
        values.append(value)
    if c.record_grad_norms:
        hist.grad_norms.append([float(np.linalg.norm(g)) for g in grads])
    if val_loss < hist.best_val_loss:
        hist.best_val_loss, hist.best_step = val_loss, step
    if step >= c.steps_per_epoch and not val_loss <= DIVERGED_LOSS:
        _diverged(hist, step, val_loss)
    elif (
        step - hist.best_step
    ) // c.validation_interval >= c.patience:  # validations since the best
        hist.stop_reason = "early_stopping"


def _diverged(hist: History, step: int, loss: float) -> None:
    c = hist.config
    hist.stop_reason = "diverged"
    hist.message = (
        f"{c.label} diverged: at step {step:,} the loss was {loss:.3g} (above {DIVERGED_LOSS:.0f}, "
        f"ten times a uniform guess's), so the run was stopped. Lower the learning rate (now "
        f"{c.learning_rate:g})" + (f" or the momentum (now {c.momentum:g})." if c.momentum else ".")
    )
    warnings.warn(hist.message, RuntimeWarning, stacklevel=4)


# ==== Gradient check and parameter counts ===========================================================


def gradient_check(model: MLP, X: np.ndarray, Y: np.ndarray, epsilon: float = 1e-3) -> float:
    """Largest |analytic - numerical| entry of dC/dW over every weight of a float64 `model`, the numerical
    gradient by central differences (C(w + eps) - C(w - eps)) / (2 eps) of the mean cross-entropy on
    (X, Y); ValueError when a weight, an input or a result is not finite. Moving W[l][i, j] moves only
    unit j of layer l, by eps * a_i (a: the input of W[l]): the fan_in moves of a unit go up as one batch."""
    X, Y = model.check_inputs(X), np.asarray(Y, dtype=model.dtype)
    if model.dtype != np.float64:
        raise ValueError(
            "gradient_check needs a float64 model: float32 rounding errors exceed epsilon^2"
        )
    if Y.shape != (len(X), NUM_CLASSES) or not epsilon > 0:
        raise ValueError(
            f"Y must be one-hot of shape {(len(X), NUM_CLASSES)} and epsilon > 0, got Y of "
            f"shape {Y.shape} and epsilon {epsilon}"
        )
    if not all(np.isfinite(a).all() for a in (X, Y, *model.weights)):
        raise ValueError(
            "gradient_check: the weights, X or Y hold non-finite values; no check can pass"
        )
    labels, L, worst = Y.argmax(axis=1), len(model.weights), 0.0
    analytic = model.backward(model.forward(X), Y)
    inputs, outputs = [X] + model._last.outputs[:-1], model._last.outputs  # of each W[l]
    for l, W in enumerate(model.weights):
        # Only unit j of layer l moves: the logits change in column j (output layer), or the next
        # pre-activation changes by (f(z_j') - f(z_j)) W[l+1][j], a rank-one update (hidden layer).
        nxt = (
            outputs[l] if l == L - 1 else outputs[l] @ model.weights[l + 1]
        )  # (N, width of layer l+1)
        for j in range(W.shape[1]):
            for i in range(
                0, W.shape[0], 64
            ):  # W[i:i+64, j] at a time: arrays small enough for the CPU cache
                mean_losses = []
                for sign in (1, -1):
                    z_j = (
                        inputs[l] @ W[:, j] + sign * epsilon * inputs[l][:, i : i + 64].T
                    )  # (64, N): W[i, j] moved
                    if l == L - 1:
                        z = np.repeat(nxt[None], len(z_j), axis=0)  # (64, N, 10)
                        z[:, :, j] = z_j
                    else:
                        z = (
                            nxt[None]
                            + (model._f(z_j) - outputs[l][:, j])[:, :, None]
                            * model.weights[l + 1][j]
                        )
                        z = (
                            z
                            if l + 1 == L - 1
                            else model._forward(model._f(z.reshape(-1, z.shape[2])), start=l + 2)
                        )
                    nll = _softmax_nll(z.reshape(-1, NUM_CLASSES), np.tile(labels, len(z_j)))[1]
                    mean_losses.append(nll.reshape(len(z_j), len(X)).mean(axis=1))
                error = np.abs(
                    (mean_losses[0] - mean_losses[1]) / (2 * epsilon) - analytic[l][i : i + 64, j]
                )
                if not np.isfinite(error).all():
                    raise ValueError(
                        f"gradient_check: a non-finite gradient in W[{l}][:, {j}]; no check can pass"
                    )
                worst = max(worst, float(error.max()))
    return worst


def count_parameters(
    layer_sizes: Sequence[int], input_size: int = INPUT_SIZE, output_bias: bool = False
) -> int:
    """Weights of a network of these layer sizes (input_size counts the bias), plus output biases."""
    fans = (int(input_size),) + _check_layer_sizes(layer_sizes)
    return sum(a * b for a, b in zip(fans[:-1], fans[1:])) + (fans[-1] if output_bias else 0)
