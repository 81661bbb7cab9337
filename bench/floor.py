"""The floor of one protocol epoch on this machine: the least time its work can take in numpy.

    floor = validations x (over the n_train + n_val images a validation evaluates, each as one
            call: every layer's product, every hidden layer's activation, the softmax with the
            cross-entropy and the argmax of the logits)
          + steps x (the per-call cost of every call a training step needs, each timed alone in
            a loop at the step's shapes with its data in the cache: the batch's rows, every
            layer's forward product and activation, softmax and loss, the output delta, every
            weight gradient, every delta sent back with its slope, the SGD update)

float32, one BLAS thread, wall-clock time; the calls are mlp_core's own (its activations, slopes,
softmax_and_losses) and numpy's. What a real epoch spends above it: the Python around the calls,
the batch's images coming from memory, the bookkeeping of a run, evaluation in chunks.
`python bench/floor.py` prints the floor of each network of the benchmark, part by part.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlp_core as mlp  # noqa: E402
import mlp_train  # noqa: E402

CALL_LOOP_SECONDS = 0.002  # each call is repeated in a loop of about this long, best of 3 loops


@dataclass
class Floor:
    """Seconds per protocol epoch of each part of the floor."""

    parts: dict[str, float]  # "steps: ..." and "validations: ..." parts, each per epoch

    def part(self, kind: str) -> float:
        return sum(v for k, v in self.parts.items() if k.startswith(kind))

    @property
    def steps(self) -> float:
        return self.part("steps")

    @property
    def validations(self) -> float:
        return self.part("validations")

    @property
    def total(self) -> float:
        return self.steps + self.validations


def per_call(fn: Callable[[], object], repeats: int = 3) -> float:
    """Seconds per call of fn, in a loop of about CALL_LOOP_SECONDS, best of `repeats` loops."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    calls = max(1, min(5000, round(CALL_LOOP_SECONDS / once)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def measure(config: mlp.RunConfig, data: mlp.Dataset) -> Floor:
    """The floor of one protocol epoch of `config` (float32) on `data`, measured now."""
    if config.dtype != "float32":
        raise ValueError("the floor is measured for float32")
    with mlp_train.BLAS_THREADS.training(1):
        return Floor({**_step_parts(config, data), **_validation_parts(config, data)})


def _step_parts(config: mlp.RunConfig, data: mlp.Dataset) -> dict[str, float]:
    model = mlp_train.initial_model(config)
    W = model.weights
    n = config.batch_size
    X = data.train.X[: config.n_train]
    index = np.random.default_rng(0).permutation(config.n_train)[:n]
    batch = np.take(X, index, axis=0)
    labels = data.train.labels[index]
    Y = data.train.Y[index]
    buffers = mlp.Buffers(model, n)
    y_hat = model.forward(batch, buffers)
    model.backward(y_hat, Y, buffers)
    a = [batch] + [o[:n] for o in buffers.outputs]  # a[l]: the input of W[l]; a[-1] the logits
    delta = [d[:n] for d in buffers.deltas]
    last = len(W) - 1
    calls: dict[str, Callable[[], object]] = {
        "batch rows": lambda: np.take(X, index, axis=0, out=batch, mode="clip")
    }
    z = [np.empty_like(o) for o in a[1:]]
    for l in range(last + 1):
        calls[f"forward product {l + 1}"] = lambda l=l: np.matmul(a[l], W[l], out=z[l])
        if l < last:
            calls[f"activation {l + 1}"] = lambda l=l: model.f(z[l], out=z[l])
    calls["softmax and loss"] = lambda: mlp.softmax_and_losses(a[-1], labels)
    out_delta = np.empty_like(delta[-1])
    calls["output delta"] = lambda: np.subtract(y_hat, Y, out=out_delta)
    calls["output delta / N"] = lambda: np.multiply(out_delta, 1.0 / n, out=out_delta)
    grads = [np.empty_like(w) for w in W]
    slopes = [np.empty_like(s) for s in delta[:-1]]
    back = [np.empty_like(s) for s in delta[:-1]]
    for l in range(last, -1, -1):
        calls[f"weight gradient {l + 1}"] = lambda l=l: np.matmul(a[l].T, delta[l], out=grads[l])
        if l > 0:
            calls[f"delta back {l}"] = lambda l=l: np.matmul(delta[l], W[l].T, out=back[l - 1])
            calls[f"slope {l}"] = lambda l=l: model.slope(a[l], out=slopes[l - 1])
            calls[f"delta x slope {l}"] = lambda l=l: np.multiply(
                back[l - 1], slopes[l - 1], out=back[l - 1]
            )
    weights = [w.copy() for w in W]
    scaled = [np.empty_like(w) for w in W]
    for l in range(last + 1):
        calls[f"SGD lr x grad {l + 1}"] = lambda l=l: np.multiply(
            grads[l], config.learning_rate, out=scaled[l]
        )
        calls[f"SGD update {l + 1}"] = lambda l=l: np.subtract(
            weights[l], scaled[l], out=weights[l]
        )
    steps = config.steps_per_epoch
    return {f"steps: {name}": steps * per_call(fn) for name, fn in calls.items()}


def _validation_parts(config: mlp.RunConfig, data: mlp.Dataset) -> dict[str, float]:
    model = mlp_train.initial_model(config)
    images = np.concatenate([data.train.X[: config.n_train], data.val.X[: config.n_val]])
    labels = np.concatenate([data.train.labels[: config.n_train], data.val.labels[: config.n_val]])
    outputs = [np.empty((len(images), w.shape[1]), np.float32) for w in model.weights]
    a = [images] + outputs
    last = len(model.weights) - 1
    calls: dict[str, Callable[[], object]] = {}
    for l, W in enumerate(model.weights):
        calls[f"product {l + 1}"] = lambda l=l, W=W: np.matmul(a[l], W, out=outputs[l])
        if l < last:
            calls[f"activation {l + 1}"] = lambda l=l: model.f(outputs[l], out=outputs[l])
    for fn in calls.values():  # the logits of a real forward pass, for the loss
        fn()
    logits = outputs[-1]
    logits_t = np.ascontiguousarray(logits.T)
    rows = per_call(lambda: mlp.softmax_and_losses(logits, labels), repeats=2)
    columns = per_call(lambda: mlp.softmax_and_losses(logits_t, labels, axis=0), repeats=2)
    times = {name: per_call(fn, repeats=2) for name, fn in calls.items()}
    times["softmax and loss"] = min(rows, columns)
    times["argmax"] = per_call(lambda: logits.argmax(axis=1), repeats=2)
    validations = config.steps_per_epoch // config.validation_interval
    return {f"validations: {name}": validations * t for name, t in times.items()}


def main() -> int:
    from bench import NETWORKS

    data = mlp.prepare_data(20_000, "float32", 10_000)
    for name, layers in NETWORKS.items():
        floor = measure(mlp.RunConfig(layer_sizes=layers, max_epochs=1), data)
        print(
            f"{name}: floor {1e3 * floor.total:.0f} ms per protocol epoch: steps "
            f"{1e3 * floor.steps:.0f} ms, validations {1e3 * floor.validations:.0f} ms"
        )
        for part, seconds in sorted(floor.parts.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {1e3 * seconds:7.1f} ms  {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
