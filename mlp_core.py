"""A multi-layer perceptron for MNIST, from scratch in numpy: the math of the report, in its order.

The activations and their slopes, softmax with the cross-entropy loss, the network (any layer
sizes; one forward and one backward pass), SGD with momentum, the numerical gradient check and
the parameter counts. Each equation of the report is written here once, and everything else calls
it. Not here: the training protocol and its speed (mlp_train: the loop, early stopping,
evaluation in chunks, the second core), the data (mlp_data: normalisation, bias column, splits),
the argument rules (mlp_checks) and the MNIST files (mnist_files). Their names can be reached from
here too, so `import mlp_core as mlp; mlp.train(mlp.RunConfig())` trains the protocol.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import numpy as np

from mlp_checks import (
    FRACTION,
    POSITIVE_INT,
    POSITIVE_REAL,
    check,
    check_choice,
    check_dtype,
    check_inputs,
    check_labels,
    check_layer_sizes,
)

NUM_CLASSES = 10
INPUT_SIZE = 28 * 28 + 1  # the bias trick appends a constant 1 to every image


# ==== Activations and their slopes ================================================================

# Each activation f(z, out=None) beside its slope f'(z), written in terms of the output a = f(z)
# that the forward pass keeps anyway, so backward never needs z: slope(a, out=None). All in place.

A, B = 1.7159, 2 / 3  # LeCun's improved sigmoid A tanh(B z)


def sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # 1/(1+e^-z) = (1 + tanh(z/2))/2: the same function, and it never overflows
    out = np.tanh(np.multiply(z, 0.5, out=out), out=out)
    out += 1
    out *= 0.5
    return out


def sigmoid_slope(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.subtract(1, a, out=out)  # f'(z) = f(z) (1 - f(z))
    out *= a
    return out


def improved_sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.tanh(np.multiply(z, B, out=out), out=out)
    out *= A
    return out


def improved_sigmoid_slope(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # f'(z) = A B (1 - tanh^2(B z)) = (B / A) (A^2 - f(z)^2)
    out = np.subtract(A**2, np.multiply(a, a, out=out), out=out)
    out *= B / A
    return out


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "sigmoid": (sigmoid, sigmoid_slope),
    "improved_sigmoid": (improved_sigmoid, improved_sigmoid_slope),
}
INITIALISATIONS = ("uniform", "fan_in")  # uniform in [-1, 1]; normal with std 1/sqrt(fan_in)


# ==== Softmax and the cross-entropy loss ==========================================================


def softmax_and_losses(z: np.ndarray, labels: np.ndarray | None = None, axis: int = 1):
    """The softmax y_hat of the logits z (classes along `axis`) and, given labels, each example's
    cross-entropy -log y_hat_y in float64 (None without labels).

    z is shifted by its maximum m first, so exp never overflows, and the loss is taken as
    log sum_k exp(z_k - m) - (z_y - m), which never takes log 0."""
    shifted = z - z.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=axis, keepdims=True)
    y_hat = e / total
    if labels is None:
        return y_hat, None
    rows = np.arange(len(labels))
    picked = shifted[rows, labels] if axis == 1 else shifted[labels, rows]
    return y_hat, np.log(total.ravel(), dtype=np.float64) - picked


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy C of softmax(logits) (N, classes) against integer labels (N,)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be a non-empty (N, classes) array, got {logits.shape}")
    labels = check_labels(labels, len(logits), logits.shape[1])
    return float(softmax_and_losses(logits, labels)[1].mean())


# ==== The network: one forward and one backward pass ==============================================


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
        self.layer_sizes = check_layer_sizes(layer_sizes, NUM_CLASSES)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.init = check_choice("init", init, INITIALISATIONS)
        self.dtype = check_dtype(dtype)
        self.input_size = check("input_size", input_size, POSITIVE_INT)
        self.shapes = weight_shapes(self.layer_sizes, self.input_size)  # (fan_in, fan_out) of W[l]
        self.f, self.slope = ACTIVATIONS[activation]
        rng = np.random.default_rng(rng)
        self.weights = []
        for fan_in, fan_out in self.shapes:
            if init == "uniform":
                w = rng.uniform(-1, 1, size=(fan_in, fan_out))
            else:
                w = rng.normal(0, 1 / np.sqrt(fan_in), size=(fan_in, fan_out))
            self.weights.append(w.astype(self.dtype))
        self._last: Buffers | None = None  # the buffers of the last pass without any given

    def forward(self, X: np.ndarray, buffers: Buffers | None = None) -> np.ndarray:
        """The class probabilities y_hat = softmax(z_L) of the inputs X (N, 785)."""
        return softmax_and_losses(self.logits(X, buffers))[0]

    def logits(
        self, X: np.ndarray, buffers: Buffers | None = None, *, start: int = 0
    ) -> np.ndarray:
        """The forward pass: the logits z_L of the inputs X. z_l = a_{l-1} W_l for every layer,
        a_l = f(z_l) for the hidden ones, a_0 = X.

        Every layer's output is written into `buffers` (new ones if none are given): what
        backward needs. `start`: X is the input of W[start] (a hidden layer's output) instead of
        the images."""
        X = check_inputs(X, self.shapes[start][0], self.dtype)
        n = len(X)
        if buffers is None:
            buffers = self._last = Buffers(self, n)
        buffers.x = a = X
        for l in range(start, len(self.weights)):
            a = self.layer(l, a, out=buffers.outputs[l][:n])
        return a

    def layer(self, l: int, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The output of layer l for its input a: f(a W_l) if it is hidden, a W_L (the logits)
        if it is the last. Written into `out` when given."""
        z = np.dot(a, self.weights[l], out=out)  # (rows, fan_in) @ (fan_in, fan_out)
        return self.f(z, out=z) if l < len(self.weights) - 1 else z

    def backward(
        self, y_hat: np.ndarray, Y: np.ndarray, buffers: Buffers | None = None
    ) -> list[np.ndarray]:
        """dC/dW_l of the mean cross-entropy C for the batch of the last forward pass into
        `buffers` (without: the last pass that made its own), Y one-hot. The gradients are
        written into the buffers and returned."""
        buffers = buffers or self._last
        if buffers is None:
            raise RuntimeError("backward() needs a forward() call first")
        n = len(buffers.x)
        Y = np.asarray(Y, dtype=self.dtype)
        if Y.shape != (n, NUM_CLASSES) or y_hat.shape != Y.shape:
            raise ValueError(f"Y must be one-hot of shape {(n, NUM_CLASSES)}, got {Y.shape}")
        # Softmax and cross-entropy fused: dC/dz_L = (y_hat - y) / N, no softmax Jacobian needed.
        delta = np.subtract(y_hat, Y, out=buffers.deltas[-1][:n])
        delta *= 1.0 / n
        for l in range(len(self.weights) - 1, -1, -1):
            a_in = buffers.x if l == 0 else buffers.outputs[l - 1][:n]  # the input of W_l
            # (fan_in, N) @ (N, fan_out) -> (fan_in, fan_out)
            np.dot(a_in.T, delta, out=buffers.grads[l])
            if l > 0:  # delta_j = f'(z_j) sum_k w_kj delta_k, with f'(z_j) from a_j = f(z_j)
                delta = np.dot(delta, self.weights[l].T, out=buffers.deltas[l - 1][:n])
                delta *= self.slope(a_in, out=buffers.slopes[l - 1][:n])
        return buffers.grads

    @property
    def n_parameters(self) -> int:
        return sum(w.size for w in self.weights)

    def hidden_outputs(self, X: np.ndarray) -> list[np.ndarray]:
        """The output f(z_l) of every hidden layer for the inputs X, input side first."""
        buffers = Buffers(self, len(X))
        self.logits(X, buffers)
        return buffers.outputs[:-1]

    def loss(self, X: np.ndarray, labels: np.ndarray) -> float:
        """The mean cross-entropy C on (X, labels)."""
        X = check_inputs(X, self.input_size, self.dtype)
        check_labels(labels, len(X), NUM_CLASSES)
        return cross_entropy(self.logits(X), labels)


class Buffers:
    """The arrays a pass over up to `rows` examples writes into, allocated once and reused.

    x is the last pass's input; outputs[l] the output of W[l] (f(z), the logits z_L last);
    deltas[l] = dC/dz there; slopes[l] = f'(z) of hidden layer l; grads[l] = dC/dW[l]."""

    def __init__(self, model: MLP, rows: int):
        self.rows = rows
        self.x: np.ndarray | None = None
        self.outputs = [np.empty((rows, s), model.dtype) for s in model.layer_sizes]
        self.deltas = [np.empty((rows, s), model.dtype) for s in model.layer_sizes]
        self.slopes = [np.empty((rows, s), model.dtype) for s in model.layer_sizes[:-1]]
        self.grads = [np.empty(shape, model.dtype) for shape in model.shapes]


# ==== The optimiser ===============================================================================


class SGD:
    """Mini-batch SGD with optional momentum, as the assignment writes it:
    dW(t) = dC/dW + gamma * dW(t-1);  W <- W - lr * dW(t);  dW(-1) = 0."""

    def __init__(self, learning_rate: float, momentum: float = 0.0):
        self.learning_rate = check("learning_rate", learning_rate, POSITIVE_REAL)
        self.momentum = check("momentum", momentum, FRACTION)
        self.velocity: list[np.ndarray] | None = None  # dW(t-1), created on the first step

    def step(self, weights: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update `weights` in place from `grads` (one gradient per weight matrix, same shapes).
        The gradients are used up: each holds lr * dW(t) afterwards, so a step allocates nothing
        and moves no more memory than it must."""
        if self.velocity is None:
            shapes = [w.shape for w in weights]
            if [g.shape for g in grads] != shapes:
                raise ValueError(
                    f"grads must match the weights one to one, got shapes "
                    f"{[g.shape for g in grads]} for weights {shapes}"
                )
            self.velocity = [np.zeros_like(w) for w in weights] if self.momentum else []
        for w, g, v in zip(weights, grads, self.velocity or grads):
            if self.momentum:
                v *= self.momentum
                v += g
            w -= np.multiply(v, self.learning_rate, out=g)  # without momentum, v is g itself


# ==== The numerical gradient check ================================================================


def gradient_check(model: MLP, X: np.ndarray, Y: np.ndarray, epsilon: float = 1e-3) -> float:
    """Largest |analytic - numerical| over every weight of a float64 `model`, the numerical
    gradient of each weight w the central difference (C(w + eps) - C(w - eps)) / (2 eps) of the
    mean cross-entropy C on (X, Y). ValueError when a weight, an input or a result is not finite.

    Moving one weight W[l][i, j] changes only the pre-activation z_j of layer l, by its step
    times a_i (a: the input of W[l]); so C is computed for every i of a column j at once, the
    fan_in moved versions of z_j going through the layers above as one batch."""
    X = check_inputs(X, model.input_size, model.dtype)
    Y = np.asarray(Y, dtype=model.dtype)
    epsilon = check("epsilon", epsilon, POSITIVE_REAL)
    if model.dtype != np.float64:
        raise ValueError("gradient_check needs a float64 model: float32 rounding exceeds eps^2")
    if len(X) == 0 or Y.shape != (len(X), NUM_CLASSES):
        raise ValueError(
            f"gradient_check needs a non-empty batch X and one-hot Y of shape "
            f"{(len(X), NUM_CLASSES)}, got {len(X)} images and Y of shape {Y.shape}"
        )
    if not all(np.isfinite(a).all() for a in (X, Y, *model.weights)):
        raise ValueError("gradient_check: the weights, X or Y hold non-finite values")
    labels = Y.argmax(axis=1)
    analytic = model.backward(model.forward(X), Y)
    inputs = [X] + model.hidden_outputs(X)  # inputs[l]: the input of W[l]
    worst = 0.0
    for l, W in enumerate(model.weights):
        z = inputs[l] @ W  # (N, fan_out): the pre-activations of layer l, unmoved
        for j in range(W.shape[1]):
            c_plus = _losses_with_unit_moved(model, l, z, j, +epsilon * inputs[l], labels)
            c_minus = _losses_with_unit_moved(model, l, z, j, -epsilon * inputs[l], labels)
            error = np.abs((c_plus - c_minus) / (2 * epsilon) - analytic[l][:, j])
            if not np.isfinite(error).all():
                raise ValueError(f"gradient_check: a non-finite gradient in W[{l}][:, {j}]")
            worst = max(worst, float(error.max()))
    return worst


def _losses_with_unit_moved(model: MLP, l: int, z, j: int, moves, labels) -> np.ndarray:
    """C with z[:, j] (unit j of layer l) moved by moves[:, i], for every i: a vector (fan_in,).
    The moved versions go through the layers above 64 at a time, as one batch."""
    n, width = z.shape
    losses = np.empty(moves.shape[1])
    for start in range(0, moves.shape[1], 64):
        block = moves[:, start : start + 64].T  # (k, N): version r moves W[l][start + r, j]
        moved = np.repeat(z[None], len(block), axis=0)  # (k, N, width)
        moved[:, :, j] += block
        logits = moved.reshape(-1, width)
        if l < len(model.weights) - 1:
            logits = model.logits(model.f(logits), start=l + 1)
        nll = softmax_and_losses(logits, np.tile(labels, len(block)))[1]
        losses[start : start + len(block)] = nll.reshape(len(block), n).mean(axis=1)
    return losses


# ==== Weight shapes and parameter counts ==========================================================


def weight_shapes(layer_sizes: Sequence[int], input_size=INPUT_SIZE) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every weight matrix of a network of these layer sizes, input first."""
    fans = (int(input_size),) + check_layer_sizes(layer_sizes, NUM_CLASSES)
    return list(zip(fans[:-1], fans[1:]))


def count_parameters(layer_sizes: Sequence[int], input_size=INPUT_SIZE, output_bias=False) -> int:
    """Weights of a network of these layer sizes (input_size counts the bias), plus output biases
    if `output_bias`."""
    weights = sum(a * b for a, b in weight_shapes(layer_sizes, input_size))
    return weights + (layer_sizes[-1] if output_bias else 0)


# ==== The names of the modules around the core ====================================================

ELSEWHERE = {  # module: the names it defines that can be reached from here (imported on first use)
    "mlp_train": "RunConfig History train evaluate initial_model DIVERGED_LOSS COMPLETED "
    "STOP_REASONS FINAL_METRICS",
    "mlp_data": "Dataset Split prepare_data pixel_stats normalize add_bias one_hot",
    "mnist_files": "MNIST MNIST_FILES MNISTDataError load_mnist mnist_dir",
}
_HOME = {name: module for module, names in ELSEWHERE.items() for name in names.split()}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'mlp_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
