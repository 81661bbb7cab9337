"""The floor of one protocol epoch on this machine: the least time its work can take in numpy.

    floor = validations per epoch x (the first layer's product over the images a validation
            evaluates: (n_train + n_val) x 785 @ 785 x width, one call)
          + steps per epoch x (the per-call cost of every numpy primitive a training step calls,
            each call timed alone in a loop, its data hot in the cache, at the step's shapes)

float32, one BLAS thread, wall-clock time. What a real epoch spends above the floor: the Python
around the calls, the batch's images coming from memory instead of the cache, and the rest of each
validation (the activations and the output layer over 30,000 images, softmax, loss, accuracy).
For deeper networks the floor leaves out the hidden layers' products over the validation images,
so it is lower than what any implementation can reach there.

bench.py times the floor in every round beside the epochs and prints epochs as ratios to it;
`python bench/floor.py` prints the floor of the protocol's Task 2 network alone.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlp_core as mlp  # noqa: E402

CALL_LOOP_SECONDS = 0.002  # each primitive is called in a loop of about this long, best of 3 loops
A, B = 1.7159, 2.0 / 3.0  # the improved sigmoid A tanh(B z)


@dataclass
class Floor:
    """One measurement: the first-layer product and the per-call cost of each step primitive."""

    product: float  # seconds of one first-layer product over the validated images
    primitives: dict[str, float]  # seconds per call of each primitive of a training step
    steps: int  # per protocol epoch
    validations: int  # per protocol epoch

    @property
    def step(self) -> float:
        """The floor of one training step: the sum of its primitives' per-call costs."""
        return sum(self.primitives.values())

    @property
    def steps_part(self) -> float:
        return self.steps * self.step

    @property
    def validations_part(self) -> float:
        return self.validations * self.product

    @property
    def total(self) -> float:
        return self.steps_part + self.validations_part


class _Outputs:
    """Output arrays for the timed calls, one per shape and use (allocated once, reused)."""

    def __init__(self):
        self.arrays: dict[tuple, np.ndarray] = {}

    def __call__(self, like: np.ndarray, use: str = "") -> np.ndarray:
        key = (like.shape, like.dtype.str, use)
        if key not in self.arrays:
            self.arrays[key] = np.empty_like(like)
        return self.arrays[key]


def per_call(
    fn: Callable[[], object], repeats: int = 3, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds per call of fn, in a loop of about CALL_LOOP_SECONDS, best of `repeats` loops."""
    fn()
    t0 = clock()
    fn()
    once = max(clock() - t0, 1e-7)
    calls = max(1, min(5000, round(CALL_LOOP_SECONDS / once)))
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        for _ in range(calls):
            fn()
        best = min(best, (clock() - t0) / calls)
    return best


class FloorProblem:
    """The arrays of one protocol epoch of `config` (float32 data), set up once, and the floor's
    primitives as closures over them. The values are those of a real first step, so that the
    ufuncs see realistic numbers."""

    def __init__(self, config: mlp.RunConfig, data: mlp.Dataset, core=mlp):
        if config.dtype != "float32" or data.train.X.dtype != np.float32:
            raise ValueError("the floor is measured for float32")
        self.config = config
        n_train, n_val, bs = config.n_train, config.n_val, config.batch_size
        model = core.initial_model(config)  # core: the mlp_core module whose RunConfig this is
        self.weights = [w.copy() for w in model.weights]
        self.images = np.ascontiguousarray(
            np.concatenate([data.train.X[:n_train], data.val.X[:n_val]])
        )
        self.first_out = np.empty((len(self.images), self.weights[0].shape[1]), np.float32)
        self.X = data.train.X[:n_train]
        perm = np.random.default_rng(0).permutation(n_train)
        self.index = perm[:bs]
        self.labels = data.train.labels[:n_train][self.index]
        self.Y = data.train.Y[:n_train][self.index]
        self.batch = np.take(self.X, self.index, axis=0)
        self.flat_label_index = np.arange(bs) * mlp.NUM_CLASSES + self.labels
        # one real forward and backward pass, its arrays kept for the primitives
        self.a = [self.batch]  # the input of each layer
        self.z = []  # the output of each layer's product
        for l, w in enumerate(self.weights):
            z = self.a[-1] @ w
            self.z.append(z)
            if l < len(self.weights) - 1:
                self.a.append(self._activation(z.copy()))
        logits = self.z[-1]
        self.max = logits.max(axis=1, keepdims=True)
        self.shifted = logits - self.max
        self.exp = np.exp(self.shifted)
        self.total = self.exp.sum(axis=1, keepdims=True)
        self.y_hat = self.exp / self.total
        self.picked = self.shifted.ravel()[self.flat_label_index]
        self.log_total = np.log(self.total.ravel(), dtype=np.float64)
        self.losses = self.log_total - self.picked
        self.deltas = [np.empty_like(z) for z in self.z]
        self.deltas[-1] = (self.y_hat - self.Y) / bs
        for l in range(len(self.weights) - 1, 0, -1):
            self.deltas[l - 1] = (self.deltas[l] @ self.weights[l].T) * self._slope(self.a[l])
        self.grads = [a.T @ d for a, d in zip(self.a, self.deltas)]
        self.scratch = [np.empty_like(w) for w in self.weights]
        self.velocity = [np.zeros_like(w) for w in self.weights]

    def _activation(self, z: np.ndarray) -> np.ndarray:
        if self.config.activation == "sigmoid":
            return (np.tanh(z * 0.5) + 1) * 0.5
        return A * np.tanh(B * z)

    def _slope(self, a: np.ndarray) -> np.ndarray:
        if self.config.activation == "sigmoid":
            return (1 - a) * a
        return (A**2 - a * a) * (B / A)

    def product(self) -> None:
        """The first layer's product over every image a validation evaluates, in one call."""
        np.matmul(self.images, self.weights[0], out=self.first_out)

    def primitives(self) -> dict[str, Callable[[], object]]:
        """Every numpy call of one training step (mlp_core's step, written out), by name. Each call
        reads arrays that stay fixed and writes into its own output (an in-place call repeated in a
        loop would drift its values towards zero or subnormal numbers, which are slower)."""
        bs, W, last = self.config.batch_size, self.weights, len(self.weights) - 1
        out = _Outputs()
        prims: dict[str, Callable[[], object]] = {
            f"gather the batch: np.take {bs} image rows": lambda: np.take(
                self.X, self.index, axis=0, out=self.batch, mode="clip"
            ),
        }
        for l, w in enumerate(W):
            a, z = self.a[l], self.z[l]
            prims[f"forward {l + 1}: matmul {a.shape} @ {w.shape}"] = lambda a=a, w=w, z=z: (
                np.matmul(a, w, out=z)
            )
            if l < last:
                prims.update(self._activation_calls(l + 1, z, out))
        deltas = self.deltas
        prims.update(
            {
                "softmax: max over classes": lambda: self.z[-1].max(axis=1, keepdims=True),
                "softmax: subtract the max": lambda: np.subtract(
                    self.z[-1], self.max, out=self.shifted
                ),
                "softmax: exp": lambda: np.exp(self.shifted, out=self.exp),
                "softmax: sum over classes": lambda: self.exp.sum(axis=1, keepdims=True),
                "softmax: divide by the sum": lambda: np.divide(
                    self.exp, self.total, out=self.y_hat
                ),
                "loss: the label's logit (take)": lambda: np.take(
                    self.shifted, self.flat_label_index, mode="clip"
                ),
                "loss: log of the sum (float64)": lambda: np.log(
                    self.total.ravel(), dtype=np.float64
                ),
                "loss: subtract the label's logit": lambda: np.subtract(
                    self.log_total, self.picked, out=self.losses
                ),
                "loss: sum over the batch": lambda: float(self.losses.sum()),
                "backward: y_hat - y": lambda o=out(deltas[-1]): np.subtract(
                    self.y_hat, self.Y, out=o
                ),
                "backward: scale by 1/N": lambda o=out(deltas[-1], "scaled"): np.multiply(
                    deltas[-1], 1.0 / bs, out=o
                ),
            }
        )
        for l in range(last, -1, -1):
            a, d, g = self.a[l], deltas[l], self.grads[l]
            prims[f"gradient {l + 1}: matmul {a.T.shape} @ {d.shape}"] = lambda a=a, d=d, g=g: (
                np.matmul(a.T, d, out=g)
            )
            if l > 0:
                d_in = deltas[l - 1]
                prims[f"backward {l}: matmul {d.shape} @ {W[l].T.shape}"] = (
                    lambda d=d, w=W[l], d_in=d_in, o=out(d_in): np.matmul(d, w.T, out=o)
                )
                prims.update(self._slope_calls(l, a, d_in, out))
        momentum, lr = self.config.momentum, self.config.learning_rate
        for l, (w, g, v) in enumerate(zip(W, self.grads, self.velocity)):
            if momentum:
                prims[f"SGD {l + 1}: velocity *= momentum"] = lambda v=v, o=out(v): np.multiply(
                    v, momentum, out=o
                )
                prims[f"SGD {l + 1}: velocity += gradient"] = lambda v=v, g=g, o=out(v, "sum"): (
                    np.add(v, g, out=o)
                )
            step = self.scratch[l]
            prims[f"SGD {l + 1}: lr x step {w.shape}"] = lambda g=g, step=step: np.multiply(
                g, lr, out=step
            )
            prims[f"SGD {l + 1}: weights -= lr x step"] = lambda w=w, step=step, o=out(w): (
                np.subtract(w, step, out=o)
            )
        return prims

    def _activation_calls(
        self, layer: int, z: np.ndarray, out: _Outputs
    ) -> dict[str, Callable[[], object]]:
        """The in-place ufuncs of a hidden layer's activation, each on its real input."""
        if self.config.activation == "sigmoid":  # (tanh(z / 2) + 1) / 2
            half = z * 0.5
            t = np.tanh(half)
            calls = {
                "z * 0.5": lambda o=out(z): np.multiply(z, 0.5, out=o),
                "tanh": lambda o=out(z): np.tanh(half, out=o),
                "+ 1": lambda o=out(z): np.add(t, 1, out=o),
                "* 0.5": lambda o=out(z): np.multiply(t, 0.5, out=o),
            }
        else:  # A tanh(B z)
            bz = z * B
            t = np.tanh(bz)
            calls = {
                "z * B": lambda o=out(z): np.multiply(z, B, out=o),
                "tanh": lambda o=out(z): np.tanh(bz, out=o),
                "* A": lambda o=out(z): np.multiply(t, A, out=o),
            }
        return {f"hidden {layer}: {name}": fn for name, fn in calls.items()}

    def _slope_calls(
        self, layer: int, a: np.ndarray, delta: np.ndarray, out: _Outputs
    ) -> dict[str, Callable[[], object]]:
        """The slope f'(z) from the layer's output a, and delta *= slope."""
        slope = self._slope(a)
        if self.config.activation == "sigmoid":  # a (1 - a)
            calls = {
                "1 - a": lambda o=out(a): np.subtract(1, a, out=o),
                "slope *= a": lambda o=out(a): np.multiply(slope, a, out=o),
            }
        else:  # (B / A) (A^2 - a^2)
            calls = {
                "a * a": lambda o=out(a): np.multiply(a, a, out=o),
                "A^2 - a^2": lambda o=out(a): np.subtract(A**2, a, out=o),
                "slope *= B/A": lambda o=out(a): np.multiply(slope, B / A, out=o),
            }
        calls["delta *= slope"] = lambda o=out(delta): np.multiply(delta, slope, out=o)
        return {f"slope {layer}: {name}": fn for name, fn in calls.items()}

    def measure(
        self, product_repeats: int = 2, clock: Callable[[], float] = time.perf_counter
    ) -> Floor:
        """One measurement, on one BLAS thread: the product best of `product_repeats` calls.
        `clock`: wall-clock time by default; time.thread_time gives the CPU time of this thread,
        which other processes sharing the cores disturb less."""
        with threadpool_limits(1, user_api="blas"), np.errstate(over="ignore", invalid="ignore"):
            product = min(_timed(self.product, clock) for _ in range(product_repeats))
            costs = {name: per_call(fn, clock=clock) for name, fn in self.primitives().items()}
        return Floor(product, costs, self.config.steps_per_epoch, self.config.validations_per_epoch)


def _timed(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def table(floor: Floor, title: str = "") -> str:
    """The floor, part by part: the product, and each primitive per call and per epoch."""
    lines = [title] if title else []
    lines.append(
        f"  first-layer product over the validated images, one call: {floor.product * 1e3:8.2f} ms"
        f"  x {floor.validations} validations = {floor.validations_part * 1e3:7.1f} ms"
    )
    lines.append(f"  {'step primitive (each call timed alone)':<52} {'µs/call':>8} {'ms/epoch':>9}")
    for name, seconds in floor.primitives.items():
        lines.append(f"  {name:<52} {seconds * 1e6:8.2f} {seconds * floor.steps * 1e3:9.2f}")
    lines.append(
        f"  {'one step (sum of its primitives)':<52} {floor.step * 1e6:8.2f} "
        f"{floor.steps_part * 1e3:9.2f}  ({floor.steps} steps)"
    )
    lines.append(
        f"  floor of the protocol epoch: {floor.total * 1e3:.1f} ms "
        f"({floor.validations_part / floor.total:.0%} validations' products, "
        f"{floor.steps_part / floor.total:.0%} step primitives)"
    )
    return "\n".join(lines)


def main() -> int:
    data = mlp.prepare_data(20_000, "float32", 10_000)
    problem = FloorProblem(mlp.RunConfig(max_epochs=1), data)
    print(
        table(problem.measure(), "Floor of one protocol epoch of [64] (float32, one BLAS thread):")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
