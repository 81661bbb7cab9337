"""How long training takes on this machine: a cost model measured here in well under a second.

`SpeedModel` estimates the seconds of an epoch, a run or a whole sweep of RunConfigs from three
constants it measures with mlp_core.train on random images. The explorer uses `SPEED` (runs as
the explorer trains them, validating on a second core where there is one) to state its time
limits; mlp_runs uses `WORKER_SPEED` (runs as a sweep's worker processes train them, one run per
core) to say what a sweep far larger than usual will cost before it starts (`sweep_estimate`).
Nothing is measured on import: a model is calibrated when first asked for an estimate that needs
it, in the process that asks.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Sequence

import numpy as np

import mlp_core
from mlp_core import History, RunConfig

__all__ = ["SpeedModel", "SPEED", "WORKER_SPEED", "SLOW_MACHINE", "sweep_estimate"]


class SpeedModel:
    """Seconds per epoch of a RunConfig on this machine, from a cost model measured here.

    An epoch of S steps of batch B with V validations costs about

        S * (step_overhead + step_cost * B * W) + V * (n_train + n_val) * eval_cost * W

    seconds, W being the network's weights (mlp_core.count_parameters, which are also its
    multiply-adds per image): the steps' Python overhead, the steps' forward and backward
    products, and the validations' forward passes over both subsets. `calibrate()` measures the
    three constants with mlp_core.train on random images (networks of 16 and 512 hidden units, the
    fastest of three tries, about 0.3 s after a warm-up that the first real run would pay anyway).
    Every finished run then rescales the estimates by the measured over the estimated seconds of
    all finished epochs so far (`observe`), so they follow this machine's load. On the development
    machine (2 shared cores) the calibrated estimates were within about 35 % of the measured
    epochs, from [64] on 5,000 images (0.2 s) to [1024, 1024] on 10,000 (9 s).

    `second_core` is passed to mlp_core.train when calibrating: None (its default) for runs as the
    explorer trains them, False for runs as a sweep's worker processes train them."""

    PRIOR_SECONDS = 2.0

    def __init__(self, second_core: bool | None = None):
        self.second_core = second_core
        self._lock = threading.Lock()
        self._calibrating = threading.RLock()  # one calibration at a time
        self.ready = threading.Event()  # set once calibrated
        self.step_overhead = math.nan  # seconds per step, whatever the network
        self.step_cost = math.nan  # seconds per multiply-add of a step, per image of the batch
        self.eval_cost = math.nan  # seconds per multiply-add of an evaluation, per image
        # measured / estimated seconds of the finished runs' epochs, the calibration counting as
        # PRIOR_SECONDS of agreement: long runs decide, a run of a split second barely counts
        self.correction = 1.0
        self._measured = self._estimated = self.PRIOR_SECONDS

    @classmethod
    def fixed(cls, step_overhead: float, step_cost: float, eval_cost: float) -> SpeedModel:
        """A model of given constants, never measured (a machine described, not this one)."""
        model = cls()
        model.step_overhead, model.step_cost, model.eval_cost = step_overhead, step_cost, eval_cost
        model.ready.set()
        return model

    def calibrate(self) -> None:
        """Measure the cost model's constants on this machine (about 0.1 s, plus a warm-up).
        However it ends, `ready` is set; if it failed, the estimates stay None."""
        with self._calibrating:
            try:
                self._calibrate()
            finally:
                self.ready.set()

    def calibrated(self) -> SpeedModel:
        """This model, calibrated first unless it already is (or another thread just did)."""
        with self._calibrating:
            if not self.ready.is_set():
                self.calibrate()
        return self

    def _calibrate(self) -> None:
        rng = np.random.default_rng(0)
        images = rng.standard_normal((3200, mlp_core.INPUT_SIZE), dtype=np.float32)
        images[:, -1] = 1
        labels = rng.integers(0, mlp_core.NUM_CLASSES, len(images))
        split = mlp_core.Split(images, mlp_core.one_hot(labels), labels)
        data = mlp_core.Dataset(split, split, 0.0, 1.0)
        self._time_epoch(data, width=16, n_train=320, n_val=32)  # warm-up: imports, BLAS pools
        # the fastest of three: what this machine does when nothing else gets in the way (a busy
        # machine slows real runs too, and their measurements then correct the estimates)
        overheads, steps, eval_costs = [], [], []
        for _ in range(3):
            overheads.append(self._time_epoch(data, width=16, n_train=3200, n_val=32)[0])
            step, eval_cost = self._time_epoch(data, width=512, n_train=640, n_val=1408)
            steps.append(step)
            eval_costs.append(eval_cost)
        overhead = min(overheads)
        step = min(steps)
        eval_cost = min(eval_costs)
        batch = RunConfig().batch_size
        weights = mlp_core.count_parameters((512, mlp_core.NUM_CLASSES))
        with self._lock:
            self.step_overhead = overhead
            self.step_cost = max(0.0, step - overhead) / (batch * weights)
            self.eval_cost = eval_cost

    def _time_epoch(self, data: mlp_core.Dataset, width: int, n_train: int, n_val: int):
        """Seconds per step, and per multiply-add and image of its one validation, of one epoch."""
        config = RunConfig(
            layer_sizes=(width, mlp_core.NUM_CLASSES),
            n_train=n_train,
            n_val=n_val,
            max_epochs=1,
            validations_per_epoch=1,
            learning_rate=0.01,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hist = mlp_core.train(config, data, progress=False, second_core=self.second_core)
        if hist.stop_reason == "interrupted":  # train() took the Ctrl-C: it is the caller's
            raise KeyboardInterrupt
        validating = hist.epoch_times[0] - hist.step_times[0]
        per_step = hist.step_times[0] / config.steps_per_epoch
        weights = mlp_core.count_parameters(config.layer_sizes)
        return per_step, validating / ((n_train + n_val) * weights)

    def _raw_epoch_seconds(self, config: RunConfig) -> float:
        weights = mlp_core.count_parameters(config.layer_sizes)
        steps = config.steps_per_epoch
        validations = steps / config.validation_interval
        with self._lock:
            training = steps * (self.step_overhead + self.step_cost * config.batch_size * weights)
            validating = validations * (config.n_train + config.n_val) * self.eval_cost * weights
        return training + validating

    def epoch_seconds(self, config: RunConfig) -> float | None:
        """Estimated seconds per epoch of `config` here; None until calibrated."""
        if not self.ready.is_set():
            return None
        seconds = self._raw_epoch_seconds(config) * self.correction
        return seconds if math.isfinite(seconds) else None

    def run_seconds(self, config: RunConfig) -> float | None:
        """Estimated seconds of all of config's epochs and its final evaluation; None until
        calibrated."""
        epoch = self.epoch_seconds(config)
        if epoch is None:
            return None
        weights = mlp_core.count_parameters(config.layer_sizes)
        final = (config.n_train + config.n_val) * self.eval_cost * weights
        return config.max_epochs * epoch + final * self.correction

    def sweep_seconds(self, configs: Sequence[RunConfig], workers: int) -> float | None:
        """Estimated seconds of training every config, each to its last epoch, in `workers`
        processes side by side: their share of the total, or the longest run if that is longer;
        None until calibrated."""
        runs = [self.run_seconds(config) for config in configs]
        if not runs or None in runs:
            return None
        return max(sum(runs) / max(1, workers), max(runs))

    def observe(self, hist: History, callback_seconds: float = 0.0) -> None:
        """Rescale the estimates by a finished run's measured seconds of its complete epochs,
        less the `callback_seconds` its train() callback took (the explorer's live redraws)."""
        epochs = hist.epoch_times if hist.stop_reason == "max_epochs" else hist.epoch_times[:-1]
        if not self.ready.is_set() or not epochs:
            return
        share = sum(epochs) / sum(hist.epoch_times)  # of the callbacks, in the complete epochs
        measured = max(0.0, sum(epochs) - share * callback_seconds)
        estimated = len(epochs) * self._raw_epoch_seconds(hist.config)
        if not math.isfinite(estimated) or estimated <= 0:
            return
        with self._lock:
            self._measured += measured
            self._estimated += estimated
            self.correction = min(4.0, max(0.25, self._measured / self._estimated))


SPEED = SpeedModel()  # runs as the explorer trains them; one per process (kernel)
WORKER_SPEED = SpeedModel(second_core=False)  # runs as a sweep's worker processes train them
# A machine about five times slower than the development machine's worker processes (measured
# there: 1.8e-4 s per step, 2e-10 s per multiply-add of a step and 4.5e-11 of an evaluation, per
# image): a sweep it trains within the time asked about is obviously short, on any machine.
SLOW_MACHINE = SpeedModel.fixed(step_overhead=1e-3, step_cost=1e-9, eval_cost=2.5e-10)


def sweep_estimate(configs: Sequence[RunConfig], workers: int, longer_than: float) -> float | None:
    """Estimated seconds of training `configs` in `workers` local processes on this machine, each
    run to its last epoch, if that is more than `longer_than` seconds; None if it is not, or if
    the calibration failed. WORKER_SPEED is calibrated (in this process, under a second) only if
    SLOW_MACHINE would take longer than that: an obviously short sweep costs no measurement."""
    if SLOW_MACHINE.sweep_seconds(configs, workers) <= longer_than:
        return None
    try:
        seconds = WORKER_SPEED.calibrated().sweep_seconds(configs, workers)
    except Exception:  # an estimate is a courtesy: without one the sweep still trains
        return None
    return seconds if seconds is not None and seconds > longer_than else None
