"""An interactive explorer for the MNIST MLP: ipywidgets controls over mlp_core and mlp_plots.

`Explorer` builds the controls of one training run (network, activation, initialisation, SGD
settings, data subsets, seed), trains with `mlp_core.train` in a background thread so the page stays
responsive (Stop works while it trains, also inside a long evaluation), redraws the loss and
accuracy curves at every validation, and keeps a table of every run of the session whose curves can
be overlaid for comparison.

Every number box is one row of `FIELDS`: its RunConfig field, label, CSS class, tooltip and its
lower and upper bounds with the reason for each upper bound. The bounds are shown beside the boxes
up front and checked here, all at once: every invalid box is marked and explained under itself, and
Train stays disabled while any box is invalid; nothing is clamped or ignored silently. Limits that
are about time (epochs, network size) state how long the run would take on this machine, from
`SpeedModel`, a cost model measured here in about a tenth of a second and corrected by every
finished run.

It holds no training or plotting math of its own: the configuration is a `mlp_core.RunConfig`, the
curves are `mlp_plots.plot_loss` and `plot_accuracy`. Plots are rendered off-screen with
matplotlib's Agg canvas into PNG bytes for an `ipywidgets.Image`, which is safe to update from the
training thread in JupyterLab, the classic Notebook and Voilà alike; pyplot is never touched.
matplotlib (through mlp_plots) and pandas are imported only when first needed, so the page shows
its controls without waiting for them.

Usage in a notebook: `ui = Explorer(); ui.widget`. In Voilà: `make explore` (explorer/serve.py).
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import re
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import ipywidgets as widgets
import numpy as np

import mlp_core
from mlp_core import History, RunConfig

__all__ = [
    "Explorer",
    "FIELDS",
    "SpeedModel",
    "SPEED",
    "parse_hidden_layers",
    "run_labels",
    "MAX_HIDDEN_LAYERS",
    "MAX_WIDTH",
    "MAX_EPOCHS",
    "MAX_LEARNING_RATE",
]

MAX_HIDDEN_LAYERS = 8
MAX_WIDTH = 2048
MAX_EPOCHS = 200
MAX_LEARNING_RATE = 10.0
N_TRAIN_IMAGES = 60_000
N_TEST_IMAGES = 10_000
PROTOCOL = RunConfig()  # the assignment's protocol, for the hints beside the controls
DEFAULTS = RunConfig(n_train=5_000, max_epochs=10)  # a run of a few seconds
# The largest network the explorer trains, on all training images: the reason for the size limits
LARGEST = RunConfig(
    layer_sizes=(MAX_WIDTH,) * MAX_HIDDEN_LAYERS + (mlp_core.NUM_CLASSES,), n_train=N_TRAIN_IMAGES
)
READY = "Set up a network on the left and press <b>Train</b>."
PLACEHOLDER = "Press Train to start a run, or select runs below to compare them."

# How a run ended (History.stop_reason), in words: the table's "ended by" and the status line
STOP_REASONS = {
    "max_epochs": ("last epoch", "reached the last epoch"),
    "early_stopping": (
        "early stopping",
        "stopped early (no new lowest validation loss for {patience} validations)",
    ),
    "stopped": ("stopped by you", "was stopped by you"),
    "diverged": ("diverged", "diverged"),
    "interrupted": ("interrupted", "was interrupted"),
}


def _number(value: float) -> str:
    """Learning rates and momenta, the same everywhere: three significant digits."""
    return f"{value:.3g}"


def _hidden_text(config: RunConfig) -> str:
    return ", ".join(map(str, config.layer_sizes[:-1]))


def _hidden_short(config: RunConfig) -> str:
    """The hidden layers in few characters: "64", "60, 60", "8 × 2048" for equal widths."""
    widths = config.layer_sizes[:-1]
    if len(widths) >= 3 and len(set(widths)) == 1:
        return f"{len(widths)} × {widths[0]}"
    return ", ".join(map(str, widths))


def _weights(layer_sizes) -> int:
    """Weights of a network, which are also its multiply-adds per image in a forward pass."""
    return mlp_core.count_parameters(layer_sizes)


def _duration(seconds: float) -> str:
    """A time in words, to about two significant digits: "0.4 s", "40 s", "3 min", "1.5 h"."""
    if seconds < 10:
        return f"{seconds:.1g} s" if seconds < 1 else f"{seconds:.0f} s"
    if seconds < 90:
        return f"{round(seconds, -1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.2g} min"
    return f"{seconds / 3600:.2g} h"


# ==== How long a run takes on this machine ========================================================


class SpeedModel:
    """Seconds per epoch of a RunConfig on this machine, from a cost model measured here.

    An epoch of S steps of batch B with V validations costs about

        S * (step_overhead + step_cost * B * W) + V * (n_train + n_val) * eval_cost * W

    seconds, W being the network's weights (its multiply-adds per image): the steps' Python
    overhead, the steps' forward and backward products, and the validations' forward passes over
    both subsets. `calibrate()` measures the three constants with mlp_core.train on random images
    (networks of 16 and 512 hidden units, the fastest of three tries, about 0.3 s after a warm-up
    that the first real run would pay anyway). Every finished run then rescales the estimates by
    the measured over the estimated seconds of all finished epochs so far (`observe`), so they
    follow this machine's load. On the development machine (2 shared cores) the calibrated
    estimates were within about 35 % of the measured epochs, from [64] on 5,000 images (0.2 s) to
    [1024, 1024] on 10,000 (9 s)."""

    PRIOR_SECONDS = 2.0

    def __init__(self):
        self._lock = threading.Lock()
        self.ready = threading.Event()  # set once calibrated
        self.step_overhead = math.nan  # seconds per step, whatever the network
        self.step_cost = math.nan  # seconds per multiply-add of a step, per image of the batch
        self.eval_cost = math.nan  # seconds per multiply-add of an evaluation, per image
        # measured / estimated seconds of the finished runs' epochs, the calibration counting as
        # PRIOR_SECONDS of agreement: long runs decide, a run of a split second barely counts
        self.correction = 1.0
        self._measured = self._estimated = self.PRIOR_SECONDS

    def calibrate(self) -> None:
        """Measure the cost model's constants on this machine (about 0.1 s, plus a warm-up).
        However it ends, `ready` is set; if it failed, the estimates stay None."""
        try:
            self._calibrate()
        finally:
            self.ready.set()

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
        with self._lock:
            self.step_overhead = overhead
            self.step_cost = max(0.0, step - overhead) / (batch * _weights((512, 10)))
            self.eval_cost = eval_cost

    @staticmethod
    def _time_epoch(data: mlp_core.Dataset, width: int, n_train: int, n_val: int):
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
            hist = mlp_core.train(config, data, progress=False)
        validating = hist.epoch_times[0] - hist.step_times[0]
        per_step = hist.step_times[0] / config.steps_per_epoch
        return per_step, validating / ((n_train + n_val) * _weights(config.layer_sizes))

    def _raw_epoch_seconds(self, config: RunConfig) -> float:
        weights = _weights(config.layer_sizes)
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
        final = (config.n_train + config.n_val) * self.eval_cost * _weights(config.layer_sizes)
        return config.max_epochs * epoch + final * self.correction

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


SPEED = SpeedModel()  # one per process (kernel): every Explorer shares the measurement
CALIBRATION_DELAY = 2.0  # seconds: Voilà sends the page when the cell ends; let it load first
WARMED_UP = threading.Event()  # set when the background thread is done (calibration, _warm_up)
_calibration_lock = threading.Lock()
_calibration_started = False


def _start_calibration(then: Callable[[], None]) -> None:
    """In a background thread, once per process: calibrate SPEED, then load what the first run
    needs (_warm_up). `then()` runs as soon as SPEED is ready."""
    global _calibration_started
    with _calibration_lock:
        first = not _calibration_started
        _calibration_started = True

    def calibrate_then() -> None:
        if first:
            time.sleep(CALIBRATION_DELAY)
            try:
                SPEED.calibrate()
            except Exception:  # an estimate is a nicety: without one the limits hold, unexplained
                pass
        SPEED.ready.wait()
        then()
        if first:
            try:
                _warm_up()
            finally:
                WARMED_UP.set()

    threading.Thread(target=calibrate_then, name="mlp-explorer-speed", daemon=True).start()


def _warm_up() -> None:
    """Load what the first Train needs while the user reads the page: matplotlib (through
    mlp_plots, about 1 s) and the default runs' dataset (about 0.5 s), if the MNIST files are
    there (never a download from here: the first run reports a missing file)."""
    folder = mlp_core.mnist_dir()
    if not all((folder / spec.name).is_file() for spec in mlp_core.MNIST_FILES.values()):
        return
    try:
        import mlp_plots  # noqa: F401

        _dataset(DEFAULTS)
    except Exception:  # the first run loads them again and reports what went wrong
        pass


# ==== The number boxes: one row each ==============================================================


def _lr_reason(values: dict) -> str:
    return (
        "larger steps overshoot (at α = 30 every network tried, of either activation and "
        "initialisation, with or without momentum, diverged or stayed below 45 % accuracy); "
        "the protocol uses 0.1"
    )


def _epochs_reason(values: dict) -> str:
    reason = f"the protocol trains at most {PROTOCOL.max_epochs} and stops early"
    settings = {k: v for k, v in values.items() if k != "max_epochs"}
    try:
        config = DEFAULTS.replace(**settings, max_epochs=MAX_EPOCHS)
    except ValueError:
        config = DEFAULTS.replace(max_epochs=MAX_EPOCHS)
    total = SPEED.run_seconds(config)
    if total is not None:
        epoch = SPEED.epoch_seconds(config)
        reason += (
            f", and {MAX_EPOCHS} epochs of these settings would take about {_duration(total)} "
            f"here ({_duration(epoch)} an epoch, estimated on this machine)"
        )
    return reason


def _size_reason() -> str:
    weights = _weights(LARGEST.layer_sizes)
    reason = f"{MAX_HIDDEN_LAYERS} layers of {MAX_WIDTH:,} ({weights / 1e6:.0f} million weights)"
    epoch = SPEED.epoch_seconds(LARGEST)
    if epoch is None:
        return reason + " are the largest network the explorer trains"
    return (
        reason + f" already take about {_duration(epoch)} an epoch on all "
        f"{N_TRAIN_IMAGES:,} training images here"
    )


@dataclass(frozen=True)
class Field:
    """One number box of the explorer, everything about it in one place."""

    name: str  # the RunConfig field it sets
    attr: str  # the Explorer attribute holding its box (ui.epochs)
    label: str  # the description beside the box
    words: str  # how messages name it
    css: str  # the box's CSS class (the browser tests find it by this)
    tooltip: str  # what it means
    section: str  # "Network", "Training" or "Data"
    kind: type = int  # int or float; the hidden layers have their own parser
    least: float = 1  # the smallest value allowed
    least_open: bool = False  # `least` itself is not allowed (a learning rate must be > 0)
    most: float | str | None = None  # the largest value, another field's name, or no limit
    most_open: bool = False  # `most` itself is not allowed (momentum < 1)
    why_most: str | Callable[[dict], str] = ""  # why `most` is the limit, from the other values

    def text(self, config: RunConfig) -> str:
        """The box's text for a configuration."""
        if self.name == "layer_sizes":
            return _hidden_text(config)
        value = getattr(config, self.name)
        return _number(value) if self.kind is float else str(value)

    @property
    def hint(self) -> str:
        """The limits in a few characters, shown beside the box."""
        if self.name == "layer_sizes":
            return f"≤ {MAX_HIDDEN_LAYERS} × {MAX_WIDTH:,}"
        low = f"{'>' if self.least_open else '≥'} {self.least:g}"
        if self.most is None:
            return low
        if isinstance(self.most, str):
            return f"≤ {FIELD[self.most].words}"
        if self.kind is int:
            return f"{self.least:,} to {self.most:,}"
        return f"{low}, {'<' if self.most_open else '≤'} {self.most:g}"

    def range_words(self) -> str:
        """The limits in words: "from 1 to 200", "of at least 1", "above 0 and at most 10"."""
        if self.name == "layer_sizes":
            return (
                f"widths from 1 to {MAX_WIDTH:,} separated by commas, at most {MAX_HIDDEN_LAYERS}"
            )
        if self.most is None:
            return f"of at least {self.least:,}" if self.kind is int else f"from {self.least:g}"
        if isinstance(self.most, str):
            most = f"the {FIELD[self.most].words}"
        else:
            most = f"{self.most:,g}"
        if self.kind is int:
            return f"from {self.least:,} to {most}"
        if self.least_open:
            return f"above {self.least:g} and {'below' if self.most_open else 'at most'} {most}"
        return (
            f"from {self.least:g} {'up to, but not including,' if self.most_open else 'to'} {most}"
        )

    def parse(self, text: str):
        """The box's value, or ValueError naming what is wrong and what to type instead."""
        if self.name == "layer_sizes":
            return parse_hidden_layers(text) + (mlp_core.NUM_CLASSES,)
        token = text.strip().replace("_", "")
        kind = "whole number" if self.kind is int else "number"
        if not token:
            raise ValueError(f"enter the {self.words}: a {kind} {self.range_words()}")
        if self.kind is int:
            if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+", token):  # thousands separators: 5,000
                token = token.replace(",", "")
            if not re.fullmatch(r"[+-]?\d+", token):
                raise ValueError(
                    f"{self.words} must be a whole number {self.range_words()}, "
                    f"got {text.strip()!r}"
                )
            return int(token)
        try:
            value = float(token)
        except ValueError:
            raise ValueError(
                f"{self.words} must be a number such as 0.1 or 1e-3 ({self.range_words()}), "
                f"got {text.strip()!r}"
            ) from None
        if not math.isfinite(value):
            raise ValueError(
                f"{self.words} must be a finite number {self.range_words()}, got {text.strip()!r}"
            )
        return value

    def check(self, value, values: dict) -> str:
        """What is wrong with a parsed value given the other boxes' values; "" if nothing."""
        if self.name == "layer_sizes":
            return ""  # parse_hidden_layers checks the widths and their number
        shown = f"{value:,}" if self.kind is int else f"{value:g}"
        below = value <= self.least if self.least_open else value < self.least
        if below:
            relation = "greater than" if self.least_open else "at least"
            return f"{self.words} must be {relation} {self.least:,g}, got {shown}"
        most = values.get(self.most) if isinstance(self.most, str) else self.most
        if most is None:
            return ""
        above = value >= most if self.most_open else value > most
        if not above:
            return ""
        if isinstance(self.most, str):
            limit = f"the {FIELD[self.most].words} ({most:,})"
        else:
            limit = f"{most:,g}"
        relation = "less than" if self.most_open else "at most"
        reason = self.why_most(values) if callable(self.why_most) else self.why_most
        return f"{self.words} must be {relation} {limit}, got {shown}: {reason}"


FIELDS = (
    Field(
        "layer_sizes",
        "hidden",
        "Hidden layers",
        "hidden layers",
        "mlp-hidden",
        "Widths of the hidden layers, separated by commas, e.g. 64 or 60, 60; the output layer "
        "(10 softmax units) is added",
        "Network",
    ),
    Field(
        "learning_rate",
        "learning_rate",
        "Learning rate α",
        "learning rate α",
        "mlp-learning-rate",
        "The SGD step size, e.g. 0.1 or 1e-3; the protocol uses 0.1",
        "Training",
        kind=float,
        least=0,
        least_open=True,
        most=MAX_LEARNING_RATE,
        why_most=_lr_reason,
    ),
    Field(
        "momentum",
        "momentum",
        "Momentum γ",
        "momentum γ",
        "mlp-momentum",
        "How much of the previous step each step keeps: 0 switches momentum off; Task 3 uses 0.9",
        "Training",
        kind=float,
        least=0,
        most=1,
        most_open=True,
        why_most="at γ = 1 past steps never fade and SGD never settles; Task 3 uses 0.9",
    ),
    Field(
        "batch_size",
        "batch_size",
        "Batch size",
        "batch size",
        "mlp-batch-size",
        "Images per SGD step; the last incomplete batch of an epoch is dropped",
        "Training",
        most="n_train",
        why_most="every step takes this many images of the training subset",
    ),
    Field(
        "max_epochs",
        "epochs",
        "Epochs (max)",
        "epochs",
        "mlp-epochs",
        "The most epochs to train; early stopping can end the run sooner",
        "Training",
        most=MAX_EPOCHS,
        why_most=_epochs_reason,
    ),
    Field(
        "patience",
        "patience",
        "Early-stop patience",
        "patience",
        "mlp-patience",
        "Stop after this many validations without a new lowest validation loss",
        "Training",
    ),
    Field(
        "n_train",
        "n_train",
        "Training subset",
        "training subset",
        "mlp-n-train",
        f"The first N of the {N_TRAIN_IMAGES:,} training images (protocol: {PROTOCOL.n_train:,})",
        "Data",
        most=N_TRAIN_IMAGES,
        why_most=f"MNIST has {N_TRAIN_IMAGES:,} training images",
    ),
    Field(
        "n_val",
        "n_val",
        "Validation subset",
        "validation subset",
        "mlp-n-val",
        f"The first N of the {N_TEST_IMAGES:,} test images (protocol: {PROTOCOL.n_val:,})",
        "Data",
        most=N_TEST_IMAGES,
        why_most=f"the validation images are MNIST's {N_TEST_IMAGES:,} test images",
    ),
    Field(
        "seed",
        "seed",
        "Seed",
        "seed",
        "mlp-seed",
        "Seeds the initial weights and the shuffling",
        "Data",
        least=0,
    ),
)
FIELD = {field.name: field for field in FIELDS}


def parse_hidden_layers(text: str) -> tuple[int, ...]:
    """Hidden-layer widths from text such as "64" or "60, 60"; ValueError says what is wrong."""
    if not text.strip():
        raise ValueError("enter at least one hidden-layer width, e.g. 64 or 60, 60")
    widths = []
    for i, token in enumerate(text.split(","), start=1):
        token = token.strip()
        if not token:
            raise ValueError(
                f"entry {i} is empty: separate the widths by single commas, e.g. 60, 60"
            )
        if not token.isdecimal():
            raise ValueError(
                f"{token!r} is not a whole number: widths are positive integers, e.g. 64"
            )
        width = int(token)
        if width < 1:
            raise ValueError(f"a layer needs at least 1 unit, got {width}")
        if width > MAX_WIDTH:
            raise ValueError(
                f"a layer has at most {MAX_WIDTH:,} units, got {width:,}: {_size_reason()}"
            )
        widths.append(width)
    if len(widths) > MAX_HIDDEN_LAYERS:
        raise ValueError(
            f"at most {MAX_HIDDEN_LAYERS} hidden layers, got {len(widths)}: {_size_reason()}"
        )
    return tuple(widths)


# ==== Labels of runs ==============================================================================

# A run's settings as legends and the Compare list write them, in this order
_SETTINGS = {
    "hidden": lambda c: f"[{_hidden_text(c)}]",
    "activation": lambda c: c.activation.replace("_", " "),
    "init": lambda c: f"{c.init.replace('_', '-')} init",
    "lr": lambda c: f"lr {_number(c.learning_rate)}",
    "momentum": lambda c: f"γ {_number(c.momentum)}",
    "batch": lambda c: f"batch {c.batch_size}",
    "epochs": lambda c: f"{c.max_epochs} epoch" + "s" * (c.max_epochs != 1),
    "n_train": lambda c: f"{c.n_train:,} training images",
    "n_val": lambda c: f"{c.n_val:,} validation images",
    "patience": lambda c: f"patience {c.patience}",
    "seed": lambda c: f"seed {c.seed}",
}
MAIN_SETTINGS = ("hidden", "activation", "init", "lr", "momentum", "batch")


def run_labels(configs, always=()) -> list[str]:
    """A label per run: its name (#n) and the settings in which the runs differ, plus `always`,
    e.g. ["#1 sigmoid, uniform init", "#2 improved sigmoid, fan-in init"]."""
    shown = [
        key
        for key, text in _SETTINGS.items()
        if key in always or len({text(c) for c in configs}) > 1
    ]
    labels = []
    for config in configs:
        parts = [_SETTINGS[key](config) for key in shown]
        if shown[:1] == ["hidden"] and len(parts) > 1:  # "[64] sigmoid, ..." not "[64], sigmoid"
            parts[:2] = [" ".join(parts[:2])]
        labels.append(" ".join([config.name] + [", ".join(parts)] * bool(parts)))
    return labels


# ==== The runs table: one row per column ==========================================================


@dataclass(frozen=True)
class Column:
    """One column of the runs table and of Explorer.results()."""

    name: str  # the DataFrame column
    header: str  # the table's header
    group: str  # the header above it
    value: Callable[[History], object]
    shown: Callable[[object], str] = str  # the table cell's text
    tooltip: str = ""


def _fixed(digits: int, unit: str = "") -> Callable[[float], str]:
    return lambda v: "–" if math.isnan(v) else f"{v:.{digits}f}{unit}"


def _final(key: str, scale: float = 1.0) -> Callable[[History], float]:
    return lambda h: scale * h.final.get(key, math.nan)


FINAL_NOTE = (
    "the final weights, evaluated once when the run ends, after its last step; the last "
    "validation can come a few steps earlier, so the final validation loss can sit a little above "
    "or below the lowest one. A stopped run has no final evaluation (–): its validations are in "
    "the plot."
)
COLUMNS = (
    Column("run", "run", "", lambda h: h.config.name, tooltip="as in the legends"),
    Column(
        "hidden",
        "hidden",
        "network",
        lambda h: _hidden_short(h.config),
        tooltip="widths of the hidden layers; 3 × 8: three layers of 8",
    ),
    Column("activation", "activation", "network", lambda h: h.config.activation.replace("_", " ")),
    Column("init", "init", "network", lambda h: h.config.init.replace("_", "-")),
    Column("lr", "lr", "training", lambda h: h.config.learning_rate, _number, "learning rate α"),
    Column("γ", "γ", "training", lambda h: h.config.momentum, _number, "momentum"),
    Column("batch", "batch", "training", lambda h: h.config.batch_size),
    Column("epochs", "epochs", "training", lambda h: h.config.max_epochs, tooltip="the most"),
    Column("train n", "train n", "data", lambda h: h.config.n_train, "{:,}".format),
    Column("val n", "val n", "data", lambda h: h.config.n_val, "{:,}".format),
    Column("seed", "seed", "data", lambda h: h.config.seed),
    Column("train loss", "train loss", "final weights", _final("train_loss"), _fixed(4)),
    Column("val loss", "val loss", "final weights", _final("val_loss"), _fixed(4), FINAL_NOTE),
    Column(
        "train acc (%)", "train acc", "final weights", _final("train_acc", 100), _fixed(2, " %")
    ),
    Column("val acc (%)", "val acc", "final weights", _final("val_acc", 100), _fixed(2, " %")),
    Column(
        "best val loss",
        "lowest val loss",
        "validations",
        lambda h: h.best_val_loss if h.val_steps else math.nan,
        _fixed(4),
        "the lowest validation loss of the validations during training (every 1/5 epoch)",
    ),
    Column(
        "best step",
        "at step",
        "validations",
        lambda h: h.best_step,
        lambda v: "–" if v < 0 else f"{v:,}",
        "the step of the lowest validation loss",
    ),
    Column("steps", "steps", "run", lambda h: h.steps, "{:,}".format, "gradient steps taken"),
    Column(
        "stopped by",
        "ended by",
        "run",
        lambda h: STOP_REASONS.get(h.stop_reason, (h.stop_reason,))[0],
    ),
    Column(
        "s / epoch",
        "s / epoch",
        "run",
        lambda h: _seconds_per_epoch(h, 0.0),
        _fixed(2),
        "seconds per epoch of training and validation (the explorer's live redraws not counted)",
    ),
)


def _seconds_per_epoch(hist: History, update_seconds: float) -> float:
    """Mean seconds per epoch, less the `update_seconds` the explorer's live updates took."""
    if not hist.epoch_times:
        return math.nan
    return max(0.0, sum(hist.epoch_times) - update_seconds) / len(hist.epoch_times)


def _table_html(rows: list[dict]) -> str:
    """The runs table of Explorer._rows(): a header of column groups, a row per run, and what
    "final" means."""
    groups = []  # (group, number of columns)
    for column in COLUMNS:
        if groups and groups[-1][0] == column.group:
            groups[-1][1] += 1
        else:
            groups.append([column.group, 1])
    top = "".join(
        f"<th colspan='{span}' class='mlp-group'>{html.escape(group)}</th>"
        for group, span in groups
    )
    head = "".join(
        f"<th title='{html.escape(column.tooltip, quote=True)}'>{html.escape(column.header)}</th>"
        for column in COLUMNS
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(column.shown(row[column.name]))}</td>" for column in COLUMNS)
        + "</tr>"
        for row in rows
    )
    note = (
        "<div class='mlp-table-note'><b>final weights</b>: "
        + html.escape(FINAL_NOTE)
        + " <b>lowest val loss</b>: the lowest of the validations, at the step shown.</div>"
    )
    return (
        f"<table class='mlp-explorer-table'><thead><tr>{top}</tr><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{note}"
    )


# ==== Helpers =====================================================================================


def _snapshot(hist: History) -> History:
    """A copy of the curves of a run in progress, safe to plot while training appends to them."""
    return dataclasses.replace(
        hist,
        train_loss=list(hist.train_loss),
        val_steps=list(hist.val_steps),
        train_loss_full=list(hist.train_loss_full),
        train_acc=list(hist.train_acc),
        val_loss=list(hist.val_loss),
        val_acc=list(hist.val_acc),
        grad_norms=[],
        init_grad_norms=[],
        epoch_times=list(hist.epoch_times),
        step_times=[],
        final={},
        weights=[],
    )


def _dataset(config: RunConfig) -> mlp_core.Dataset:
    """One prepared dataset serves every subset size up to the protocol's (train() slices it)."""
    n = PROTOCOL.n_train if config.n_train <= PROTOCOL.n_train else N_TRAIN_IMAGES
    return mlp_core.prepare_data(n, config.dtype)


def _run_id(hist: History) -> int:
    return int(hist.config.name.lstrip("#"))


def _color(run_id: int) -> str:
    return f"C{(run_id - 1) % 10}"


def _error_html(message: str) -> str:
    return f"<div class='mlp-error'>⚠ {html.escape(message)}</div>"


_CSS = """<style>
.mlp-explorer .mlp-hint { color: #666; font-size: 12px; white-space: nowrap; }
.mlp-explorer .mlp-message .widget-html-content { line-height: 1.3; }
.mlp-explorer .mlp-error { color: #b00020; font-size: 12px; line-height: 1.3; white-space: normal; }
.mlp-explorer .mlp-info { color: #555; font-size: 12px; line-height: 1.4; }
.mlp-explorer .mlp-invalid input { border-color: #b00020; box-shadow: inset 0 0 0 1px #b00020; }
.mlp-explorer .mlp-runs-list select { font-variant-numeric: tabular-nums; }
.mlp-explorer .mlp-placeholder { box-sizing: border-box; aspect-ratio: 912 / 372;
  border: 1px dashed rgba(128, 128, 128, 0.5); color: #777; }
.mlp-explorer .mlp-placeholder .widget-html-content { margin: auto; text-align: center; }
.mlp-explorer-table { border-collapse: collapse; font-size: 12px;
  font-variant-numeric: tabular-nums; }
.mlp-explorer-table th, .mlp-explorer-table td { padding: 2px 4px; text-align: right;
  white-space: nowrap; border-bottom: 1px solid rgba(128, 128, 128, 0.25); }
.mlp-explorer-table th { font-weight: 600; border-bottom: 1px solid rgba(128, 128, 128, 0.7); }
.mlp-explorer-table th[title]:not([title='']) { text-decoration: underline dotted; cursor: help; }
.mlp-explorer-table th.mlp-group { text-align: center; font-weight: 500; color: #555;
  border-bottom: 1px solid rgba(128, 128, 128, 0.4); }
.mlp-explorer-table td:first-child, .mlp-explorer-table th:first-child { text-align: left; }
.mlp-explorer-table tbody tr:hover { background: rgba(128, 128, 128, 0.1); }
.mlp-explorer .mlp-table-note { color: #666; font-size: 11px; line-height: 1.35;
  max-width: 1100px; margin-top: 4px; white-space: normal; }
</style>"""


# ==== The explorer ================================================================================


class Explorer:
    """Widgets to configure, train, stop and compare MLP runs on MNIST. Display `.widget`.

    `defaults` sets the initial control values (a RunConfig; the hidden layers, activation,
    initialisation, learning rate, momentum, batch size, epochs, subsets, patience and seed are
    taken from it). `redraw_interval` is the least number of seconds between two live redraws.
    The number boxes are text boxes: set them from Python with strings, e.g.
    `ui.epochs.value = "20"`.
    """

    def __init__(self, defaults: RunConfig = DEFAULTS, *, redraw_interval: float = 0.5):
        self.redraw_interval = float(redraw_interval)
        self.histories: list[History] = []  # finished runs, in order
        self._live: History | None = None  # snapshot of the run in progress
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._lock = threading.RLock()
        self._next_id = 1
        self._last_draw = 0.0
        self._callback_seconds = 0.0  # of the run in progress: its live updates
        self._update_seconds: dict[str, float] = {}  # of every finished run, by its name
        self._syncing_selection = False

        label = {"description_width": "140px"}
        wide = widgets.Layout(width="390px", margin="1px 0")

        def section(title: str) -> widgets.HTML:
            return widgets.HTML(
                f"<b>{html.escape(title)}</b>", layout=widgets.Layout(margin="6px 0 0 0")
            )

        # The number boxes, from FIELDS: the box, its limits beside it, its message under it
        self.boxes: dict[str, widgets.Text] = {}
        self.messages: dict[str, widgets.HTML] = {}
        rows: dict[str, widgets.VBox] = {}
        for field in FIELDS:
            reason = field.why_most if isinstance(field.why_most, str) else ""
            box = widgets.Text(
                value=field.text(defaults),
                description=field.label,
                tooltip=f"{field.tooltip}. Allowed: {field.range_words()}"
                + (f" ({reason})" if reason else ""),
                placeholder=field.hint,
                style=label,
                layout=widgets.Layout(width="280px", margin="1px 0"),
                continuous_update=True,
            )
            box.add_class(field.css)
            hint = widgets.HTML(
                field.hint, layout=widgets.Layout(width="104px", margin="1px 0 1px 6px")
            )
            hint.add_class("mlp-hint")
            message = widgets.HTML(
                "", layout=widgets.Layout(width="390px", margin="0 0 2px 0", display="none")
            )
            message.add_class("mlp-message")
            message.add_class(f"{field.css}-message")
            self.boxes[field.name] = box
            self.messages[field.name] = message
            setattr(self, field.attr, box)
            rows[field.name] = widgets.VBox([widgets.HBox([box, hint]), message])

        self.activation = widgets.Dropdown(
            options=[("sigmoid", "sigmoid"), ("improved sigmoid", "improved_sigmoid")],
            value=defaults.activation,
            description="Activation",
            tooltip="improved sigmoid: 1.7159 tanh(2z/3)",
            style=label,
            layout=wide,
        )
        self.init = widgets.Dropdown(
            options=[("uniform in [-1, 1]", "uniform"), ("normal, std 1/√fan-in", "fan_in")],
            value=defaults.init,
            description="Initialisation",
            style=label,
            layout=wide,
        )
        self.activation.add_class("mlp-activation")
        self.init.add_class("mlp-init")
        self.config_info = widgets.HTML(
            "", layout=widgets.Layout(width="390px", margin="4px 0 0 0")
        )
        self.config_info.add_class("mlp-config-info")

        self.train_button = widgets.Button(
            description="Train",
            button_style="primary",
            icon="play",
            tooltip="Train a network with these settings",
        )
        self.stop_button = widgets.Button(
            description="Stop",
            button_style="danger",
            icon="stop",
            disabled=True,
            tooltip="Stop the run now (within about a second, also during a validation)",
        )
        self.train_button.add_class("mlp-train")
        self.stop_button.add_class("mlp-stop")
        self.train_button.on_click(lambda _: self.train())
        self.stop_button.on_click(lambda _: self.stop())

        # Live view: a placeholder until there is something to plot (matplotlib is loaded then)
        self.plot = widgets.Image(
            format="png",
            layout=widgets.Layout(width="100%", max_width="912px", height="auto", display="none"),
        )
        self.plot.add_class("mlp-plot")
        self.placeholder = widgets.HTML(
            html.escape(PLACEHOLDER), layout=widgets.Layout(width="100%", max_width="912px")
        )
        self.placeholder.add_class("mlp-placeholder")
        self.progress = widgets.IntProgress(
            value=0, min=0, max=1, layout=widgets.Layout(width="98%")
        )
        self.progress.add_class("mlp-progress")
        self.status = widgets.HTML(READY, layout=widgets.Layout(width="98%"))
        self.status.add_class("mlp-status")

        # Runs
        self.runs = widgets.SelectMultiple(
            options=[],
            rows=6,
            description="Compare",
            tooltip="Select runs (Ctrl/Shift-click) to overlay their curves",
            layout=widgets.Layout(width="760px", max_width="100%"),
        )
        self.runs.add_class("mlp-runs-list")
        self.select_all_button = widgets.Button(
            description="Select all", icon="check-square", layout=widgets.Layout(width="140px")
        )
        self.clear_button = widgets.Button(
            description="Clear runs",
            icon="trash",
            layout=widgets.Layout(width="140px"),
            tooltip="Forget every finished run of this session",
        )
        self.clear_button.add_class("mlp-clear")
        self.select_all_button.on_click(lambda _: self.select_all())
        self.clear_button.on_click(lambda _: self.clear())
        self.runs.observe(self._on_selection, names="value")
        self.table = widgets.HTML("", layout=widgets.Layout(width="100%", overflow="auto"))
        self.table.add_class("mlp-runs")

        for control in (self.activation, self.init, *self.boxes.values()):
            control.observe(lambda _: self._check(), names="value")

        sections = {}
        for field in FIELDS:
            sections.setdefault(field.section, []).append(rows[field.name])
        sections["Network"] += [self.activation, self.init]
        controls = widgets.VBox(
            [item for title, items in sections.items() for item in (section(title), *items)]
            + [
                self.config_info,
                widgets.HBox(
                    [self.train_button, self.stop_button], layout=widgets.Layout(margin="6px 0 0 0")
                ),
            ],
            layout=widgets.Layout(width="400px", min_width="400px"),
        )
        live = widgets.VBox(
            [self.plot, self.placeholder, self.progress, self.status],
            layout=widgets.Layout(flex="1 1 560px", min_width="480px"),
        )
        runs = widgets.VBox(
            [
                widgets.HTML(
                    "<b>Runs of this session</b> — select runs to overlay their curves "
                    "(solid: training, dashed: validation)."
                ),
                widgets.HBox(
                    [self.runs, widgets.VBox([self.select_all_button, self.clear_button])]
                ),
                self.table,
            ],
            layout=widgets.Layout(margin="12px 0 0 0"),
        )
        self.widget = widgets.VBox(
            [
                widgets.HTML(_CSS, layout=widgets.Layout(display="none")),
                widgets.HBox(
                    [controls, live],
                    layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"),
                ),
                runs,
            ]
        )
        self.widget.add_class("mlp-explorer")

        self._check()
        self._update_table()
        _start_calibration(then=self._check)  # the time estimates appear when it is done

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -------------------------------------------------------------------------------- settings

    def config(self) -> RunConfig:
        """The RunConfig the controls describe; ValueError (in the page's words) if invalid."""
        config, problems = self._read()
        if problems:
            raise ValueError("; ".join(problems.values()))
        return config

    def problems(self) -> dict[str, str]:
        """{RunConfig field: message} of every invalid box, as shown under the boxes."""
        return self._read()[1]

    def _read(self) -> tuple[RunConfig | None, dict[str, str]]:
        """The RunConfig of the controls, or None and {field: message} for every invalid box."""
        values, problems = {}, {}
        for field in FIELDS:
            try:
                values[field.name] = field.parse(self.boxes[field.name].value)
            except ValueError as exc:
                problems[field.name] = str(exc)
        for field in FIELDS:  # after parsing all: a bound can be another box's value
            if field.name in values:
                message = field.check(values[field.name], values)
                if message:
                    problems[field.name] = message
        if problems:
            return None, problems
        try:
            config = RunConfig(activation=self.activation.value, init=self.init.value, **values)
        except ValueError as exc:  # not expected: FIELDS check what RunConfig checks, and more
            name = str(exc).split()[0]
            return None, {name if name in FIELD else "layer_sizes": str(exc)}
        return config, {}

    def _check(self) -> RunConfig | None:
        """Validate the boxes, explain every problem under its box and enable Train only when all
        is well. Train is disabled before a message appears and enabled after the last one went,
        so the page never shows a message beside an enabled Train."""
        with self._lock:
            config, problems = self._read()
            if config is None or self.running:
                self.train_button.disabled = True
            for field in FIELDS:
                self._show_problem(field, problems.get(field.name, ""))
            self.config_info.value = self._info(config, problems)
            if config is not None and not self.running:
                self.train_button.disabled = False
            return config

    def _show_problem(self, field: Field, message: str) -> None:
        box = self.boxes[field.name]
        note = self.messages[field.name]
        if message:
            box.add_class("mlp-invalid")
            note.value = _error_html(message)
            note.layout.display = None
        else:
            note.layout.display = "none"
            note.value = ""
            box.remove_class("mlp-invalid")

    @staticmethod
    def _info(config: RunConfig | None, problems: dict) -> str:
        """Above Train: what is left to fix, or the network, its steps and its estimated time."""
        if config is None:
            count = len(problems)
            return _error_html(
                f"Fix the {count} setting{'s' * (count > 1)} marked in red to train."
                if count > 1
                else "Fix the setting marked in red to train."
            )
        sizes = " → ".join(map(str, (mlp_core.INPUT_SIZE,) + config.layer_sizes))
        lines = [
            f"{sizes}: {_weights(config.layer_sizes):,} weights",
            f"{config.steps_per_epoch:,} steps per epoch, validation every "
            f"{config.validation_interval:,} steps",
        ]
        epoch = SPEED.epoch_seconds(config)
        total = SPEED.run_seconds(config)
        if epoch is None:
            lines.append("measuring this machine's speed…")
        else:
            epochs = f"{config.max_epochs} epoch" + "s" * (config.max_epochs != 1)
            lines.append(
                f"about {_duration(epoch)} per epoch here, {epochs} in about {_duration(total)}"
            )
        return (
            "<div class='mlp-info'>" + "<br>".join(html.escape(line) for line in lines) + "</div>"
        )

    # -------------------------------------------------------------------------------- actions

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def train(self) -> bool:
        """Start a run with the current settings in a background thread; False if nothing started
        (invalid settings, shown inline, or a run already in progress)."""
        if self.running:
            return False
        config = self._check()
        if config is None:
            return False
        config = config.replace(name=f"#{self._next_id}")
        self._next_id += 1
        self._stop_event.clear()
        self._callback_seconds = 0.0  # time of this run's live updates (not the network's)
        self.train_button.disabled = True
        self.stop_button.disabled = False
        self.progress.bar_style = ""
        self.progress.max = config.max_epochs * config.steps_per_epoch
        self.progress.value = 0
        self.status.value = f"Run {config.name}: loading MNIST…"
        self._thread = threading.Thread(
            target=self._work, args=(config,), name="mlp-explorer-train", daemon=True
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop the run in progress now: train() looks at the request after every step and between
        the chunks of an evaluation. Its history so far is kept."""
        if self.running and not self._stop_event.is_set():
            self._stop_event.set()
            self.stop_button.disabled = True
            self.status.value += " — stopping…"

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run in progress to end; True if no run is in progress any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def clear(self) -> None:
        """Forget every finished run (a run in progress is kept and added when it ends)."""
        with self._lock:
            self.histories = []
            self._update_seconds = {}
            if not self.running:
                self._next_id = 1
                self.progress.bar_style = ""
                self.progress.value = 0
                self.status.value = READY
            self._set_runs_options(selected=())
        self._update_table()
        self._draw()

    def select_all(self) -> None:
        self.runs.value = tuple(value for _, value in self.runs.options)

    def results(self):
        """A pandas DataFrame of every finished run, a column per COLUMNS entry: its settings,
        final metrics (accuracies in %), lowest validation loss and its step, steps taken, how it
        ended (in words) and seconds per epoch."""
        import pandas as pd

        return pd.DataFrame(self._rows(), columns=[column.name for column in COLUMNS])

    def _rows(self) -> list[dict]:
        """{column: value} of every finished run, as results() and the table show them."""
        with self._lock:
            histories = list(self.histories)
            update_seconds = dict(self._update_seconds)
        rows = []
        for hist in histories:
            row = {column.name: column.value(hist) for column in COLUMNS}
            updates = update_seconds.get(hist.config.name, 0.0)
            row["s / epoch"] = _seconds_per_epoch(hist, updates)
            rows.append(row)
        return rows

    # ------------------------------------------------------------------------------ training thread

    def _work(self, config: RunConfig) -> None:
        hist = None
        message = ""
        style = "danger"
        started = time.perf_counter()
        try:
            data = _dataset(config)
            if self._stop_event.is_set():
                message = f"Run {config.name} was stopped before it started."
                style = "warning"
                return
            self.status.value = f"Run {config.name}: training…"
            # train() warns (RuntimeWarning) when a run diverges; History.message is shown instead
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                hist = mlp_core.train(
                    config,
                    data,
                    progress=False,
                    callback=self._on_validation,
                    should_stop=self._stop_event.is_set,
                )
            message, style = self._summary(hist, time.perf_counter() - started)
            SPEED.observe(hist, callback_seconds=self._callback_seconds)
        except Exception as exc:  # never a traceback in the page: say what went wrong
            message = _error_html(f"Run {config.name} failed: {str(exc) or type(exc).__name__}")
        finally:
            try:
                with self._lock:
                    self._live = None
                    if hist is not None:
                        self.histories.append(hist)
                        self._update_seconds[config.name] = self._callback_seconds
                        self._set_runs_options(selected=tuple(self.runs.value) + (_run_id(hist),))
                if hist is not None:
                    self.progress.value = hist.steps
                    self._update_table()
                self._draw()
            finally:
                self.progress.bar_style = style
                self.status.value = message
                self.stop_button.disabled = True
                self._thread = None if threading.current_thread() is self._thread else self._thread
                self._check()

    def _on_validation(self, hist: History) -> None:
        started = time.perf_counter()
        try:
            self._show_validation(hist)
        finally:
            self._callback_seconds += time.perf_counter() - started

    def _show_validation(self, hist: History) -> None:
        snap = _snapshot(hist)
        with self._lock:
            self._live = snap
        config = hist.config
        epoch = min(config.max_epochs, hist.steps // config.steps_per_epoch + 1)
        self.progress.value = hist.steps
        self.status.value = (
            f"Run {config.name}: epoch {epoch} / {config.max_epochs}, step {hist.steps:,} / "
            f"{self.progress.max:,} — validation loss {hist.val_loss[-1]:.4f}, accuracy "
            f"{100 * hist.val_acc[-1]:.2f} %"
            + (" — stopping…" if self._stop_event.is_set() else "")
        )
        if time.monotonic() - self._last_draw >= self.redraw_interval:
            self._draw()

    @staticmethod
    def _summary(hist: History, seconds: float) -> tuple[str, str]:
        """The status line of a finished run and the progress bar's style."""
        config = hist.config
        if hist.stop_reason == "diverged":
            return _error_html(hist.message or f"Run {config.name} diverged."), "danger"
        reason = STOP_REASONS.get(hist.stop_reason, ("", hist.stop_reason))[1]
        text = f"Run {config.name} {reason.format(patience=config.patience)} after {hist.steps:,} "
        text += f"steps in {seconds:.1f} s: "
        final = hist.final
        if math.isfinite(final.get("val_loss", math.nan)):
            text += (
                f"validation loss {final['val_loss']:.4f}, accuracy {100 * final['val_acc']:.2f} % "
                f"(training accuracy {100 * final['train_acc']:.2f} %)."
            )
        elif hist.val_steps:
            text += (
                f"at its last validation (step {hist.val_steps[-1]:,}) the validation loss was "
                f"{hist.val_loss[-1]:.4f}, the accuracy {100 * hist.val_acc[-1]:.2f} %."
            )
        else:
            text += "it ended before its first validation."
        return text, ("success" if hist.completed else "warning")

    # -------------------------------------------------------------------------------- views

    def _set_runs_options(self, selected: tuple[int, ...]) -> None:
        self._syncing_selection = True
        try:
            labels = run_labels([h.config for h in self.histories], always=MAIN_SETTINGS)
            self.runs.options = [(label, _run_id(h)) for label, h in zip(labels, self.histories)]
            ids = {_run_id(h) for h in self.histories}
            self.runs.value = tuple(i for i in selected if i in ids)
        finally:
            self._syncing_selection = False

    def _on_selection(self, change) -> None:
        if not self._syncing_selection:
            self._draw()

    def _update_table(self) -> None:
        rows = self._rows()
        if not rows:
            self.table.value = "<i style='color:#777'>No runs yet.</i>"
        else:
            self.table.value = _table_html(rows)

    def _shown(self) -> tuple[list[History], History | None]:
        with self._lock:
            chosen = set(self.runs.value)
            shown = [h for h in self.histories if _run_id(h) in chosen]
            if self._live is not None:
                shown.append(self._live)
            return shown, self._live

    def figure(self):
        """A matplotlib Figure (no pyplot) of the selected runs and the run in progress: loss and
        accuracy (%) against gradient steps, one legend below naming each run by what differs."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D

        import mlp_plots

        shown, live = self._shown()
        labels = run_labels(
            [h.config for h in shown], always=MAIN_SETTINGS if len(shown) == 1 else ()
        )
        handles = [
            Line2D(
                [], [], color=_color(_run_id(h)), lw=2, label=label + " (training…)" * (h is live)
            )
            for h, label in zip(shown, labels)
        ]
        if shown:
            handles += [
                Line2D([], [], color="0.35", lw=1.2, label="training"),
                Line2D([], [], color="0.35", lw=1.2, ls="--", label="validation"),
            ]
        # the legend goes below both plots: the figure grows by a line per row of it
        widest = max((len(h.get_label()) for h in handles), default=0)
        if len(handles) <= 3:
            ncol = 1
        else:
            ncol = max(1, min(3, 110 // (widest + 6)))  # about 110 characters a line
        legend = 0.2 * math.ceil(len(handles) / ncol) + 0.1 if handles else 0.0
        height = 3.0 + legend
        fig = Figure(figsize=(7.6, height), dpi=120)
        FigureCanvasAgg(fig)
        # fixed margins: a constrained layout would double the cost of every live redraw
        margins = dict(
            left=0.08, right=0.99, bottom=(0.45 + legend) / height, top=1 - 0.27 / height
        )
        ax_loss, ax_acc = fig.subplots(1, 2, gridspec_kw=dict(wspace=0.24, **margins))
        for h in shown:
            color = [_color(_run_id(h))]
            mlp_plots.plot_loss(
                h, ax_loss, window=h.config.validation_interval, colors=color, band=True
            )
            mlp_plots.plot_accuracy(h, ax_acc, colors=color)
        ax_loss.set_title("Loss")
        ax_acc.set_title("Accuracy")
        if shown:
            _limit_loss_axis(ax_loss, shown)
            fig.legend(
                handles=handles,
                loc="lower center",
                bbox_to_anchor=(0.5, 0.0),
                ncols=ncol,
                fontsize=8,
                frameon=False,
            )
        else:
            for ax in (ax_loss, ax_acc):
                mlp_plots.steps_axis(ax)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.text(
                    0.5,
                    0.5,
                    PLACEHOLDER.replace(", or", ",\nor").rstrip("."),
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="0.5",
                )
            ax_loss.set_ylabel("cross-entropy loss")
            ax_acc.set_ylabel("accuracy (%)")
        return fig

    def _draw(self) -> None:
        """Render the figure into the plot image, or show the placeholder if there is nothing."""
        with self._lock:  # an older image never replaces a newer one
            self._last_draw = time.monotonic()
            shown, _ = self._shown()
            if not shown:
                self.placeholder.layout.display = None
                self.plot.layout.display = "none"
                return
            buffer = io.BytesIO()
            self.figure().savefig(buffer, format="png")
            self.plot.value = buffer.getvalue()
            self.plot.layout.display = None
            self.placeholder.layout.display = "none"


def _limit_loss_axis(ax, runs) -> None:
    """Keep the first validations' large losses, and diverged runs, from squashing the others."""
    kept = [h for h in runs if h.stop_reason != "diverged"] or runs
    tails = [v for h in kept for v in h.val_loss[1:] if math.isfinite(v)]
    if len(tails) >= 2:
        ax.set_ylim(0, 1.15 * max(tails))
