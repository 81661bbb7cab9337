"""An interactive explorer for the MNIST MLP: ipywidgets controls over mlp_core and mlp_plots.

`Explorer` puts together four parts, each a class of its own below:

- `Controls`, the settings of one training run (network, activation, initialisation, SGD settings,
  data subsets, seed): a number box per row of `FIELDS`, with its limits beside it and its message
  under it; the lines above Train; Train and Stop;
- `LiveView`, the loss and accuracy curves (mlp_plots.loss_accuracy_figure), the progress bar and
  the status line;
- `RunsPanel`, every run of the session: the Compare list whose selected runs are overlaid, and
  the table (a row per run, a column per entry of `COLUMNS`);
- `Training`, the run in progress, trained by mlp_core.train in a background thread so the page
  stays responsive (Stop works while it trains, also inside a long evaluation), and the finished
  runs.

The bounds of every box are shown beside it up front and checked here, all at once: every invalid
box is marked and explained under itself, and Train stays disabled while any box is invalid;
nothing is clamped or ignored silently. Limits that are about time (epochs, network size) state
how long the run would take on this machine, from mlp_speed's cost model, measured here in the
background once the page is shown and corrected by every finished run.

It holds no training or plotting math of its own. Plots are rendered off-screen with matplotlib's
Agg canvas into PNG bytes for an `ipywidgets.Image`, which is safe to update from the training
thread in JupyterLab, the classic Notebook and Voilà alike; pyplot is never drawn with. matplotlib
(through mlp_plots) and pandas are imported only when first needed, so the page shows its controls
without waiting for them. The page's styles are explorer/explorer.css.

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
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import ipywidgets as widgets

import mlp_core
from mlp_core import History, RunConfig
from mlp_speed import SPEED
from mnist_files import MNIST_FILES

__all__ = [
    "Explorer",
    "FIELDS",
    "STOP_WORDS",
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
TRAINING_IMAGES = MNIST_FILES["train_images"].count
TEST_IMAGES = MNIST_FILES["test_images"].count
PROTOCOL = RunConfig()  # the assignment's protocol, for the hints beside the controls
DEFAULTS = RunConfig(n_train=5_000, max_epochs=10)  # a run of a few seconds
# The largest network the explorer trains, on all training images: the reason for the size limits
LARGEST = RunConfig(
    layer_sizes=(MAX_WIDTH,) * MAX_HIDDEN_LAYERS + (mlp_core.NUM_CLASSES,), n_train=TRAINING_IMAGES
)
READY = "Set up a network on the left and press <b>Train</b>."
PLACEHOLDER = "Press Train to start a run, or select runs below to compare them."
LABEL_STYLE = {"description_width": "140px"}  # the room for the labels left of the controls
CSS = (Path(__file__).resolve().parent / "explorer" / "explorer.css").read_text(encoding="utf-8")


class Ending(NamedTuple):
    """How a run ended, in words."""

    short: str  # the table's "ended by" column
    sentence: str  # the status line: "Run #1 <sentence> after 1,560 steps …"


STOP_WORDS = {  # History.stop_reason -> Ending, for each of mlp_core.STOP_REASONS
    "early_stopping": Ending(
        "early stopping",
        "stopped early (no new lowest validation loss for {patience} validations)",
    ),
    "max_epochs": Ending("last epoch", "reached the last epoch"),
    "diverged": Ending("diverged", "diverged"),
    "stopped": Ending("stopped by you", "was stopped by you"),
    "interrupted": Ending("interrupted", "was interrupted"),
}


def _ending(hist: History) -> Ending:
    """How a run ended, in words (a reason STOP_WORDS lacks as it is)."""
    return STOP_WORDS.get(hist.stop_reason, Ending(hist.stop_reason, hist.stop_reason))


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


def _time_in_words(seconds: float) -> str:
    """A time to about two significant digits: "0.4 s", "40 s", "3 min", "1.5 h"."""
    if seconds < 10:
        return f"{seconds:.1g} s" if seconds < 1 else f"{seconds:.0f} s"
    if seconds < 90:
        return f"{round(seconds, -1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.2g} min"
    return f"{seconds / 3600:.2g} h"


def _error_html(message: str) -> str:
    return f"<div class='mlp-error'>⚠ {html.escape(message)}</div>"


# ==== Measuring this machine in the background, once per process ==================================

CALIBRATION_DELAY = 2.0  # seconds: Voilà sends the page when the cell ends; let it load first
WARMED_UP = threading.Event()  # set when the background thread is done (calibration, _warm_up)
_background_lock = threading.Lock()
_background_started = False


def _calibrate_in_background(then: Callable[[], None]) -> None:
    """In a background thread, once per process: calibrate SPEED, then load what the first run
    needs (_warm_up). `then()` runs as soon as SPEED is ready."""
    global _background_started
    with _background_lock:
        first = not _background_started
        _background_started = True

    def calibrate_then() -> None:
        if first:
            time.sleep(CALIBRATION_DELAY)
            try:
                SPEED.calibrated()
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
    if not all((folder / spec.name).is_file() for spec in MNIST_FILES.values()):
        return
    try:
        import mlp_plots  # noqa: F401

        _dataset(DEFAULTS)
    except Exception:  # the first run loads them again and reports what went wrong
        pass


def _dataset(config: RunConfig) -> mlp_core.Dataset:
    """One prepared dataset serves every subset size up to the protocol's (train() slices it)."""
    n = PROTOCOL.n_train if config.n_train <= PROTOCOL.n_train else TRAINING_IMAGES
    return mlp_core.prepare_data(n, config.dtype)


# ==== The number boxes: a row of FIELDS each ======================================================


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
            f", and {MAX_EPOCHS} epochs of these settings would take about "
            f"{_time_in_words(total)} here ({_time_in_words(epoch)} an epoch, estimated on this "
            "machine)"
        )
    return reason


def _size_reason() -> str:
    weights = mlp_core.count_parameters(LARGEST.layer_sizes)
    reason = f"{MAX_HIDDEN_LAYERS} layers of {MAX_WIDTH:,} ({weights / 1e6:.0f} million weights)"
    epoch = SPEED.epoch_seconds(LARGEST)
    if epoch is None:
        return reason + " are the largest network the explorer trains"
    return (
        reason + f" already take about {_time_in_words(epoch)} an epoch on all "
        f"{TRAINING_IMAGES:,} training images here"
    )


@dataclass(frozen=True)
class Field:
    """One number box of the explorer: the RunConfig field it sets, then by keyword what it shows
    and its limits. Its other names come from these: its attribute on Controls is `short` (the
    field's name unless given), its CSS class "mlp-" and that name (mlp-n-train; the browser tests
    find it by this), and messages name it by `words` (its label in lower case unless given)."""

    name: str  # the RunConfig field it sets
    _: KW_ONLY
    label: str  # the description beside the box
    section: str  # "Network", "Training" or "Data"
    tooltip: str  # what it means
    short: str = ""  # the box's own name where the field's is long: epochs for max_epochs
    words: str = ""  # how messages name it where that is not the label in lower case
    kind: type = int  # int or float
    lower: float = 1  # the smallest value allowed
    lower_open: bool = False  # `lower` itself is not allowed (a learning rate must be > 0)
    upper: float | str | None = None  # the largest value, another field's name, or no limit
    upper_open: bool = False  # `upper` itself is not allowed (momentum < 1)
    why: str | Callable[[dict], str] = ""  # why `upper` is the limit, from the other values

    def __post_init__(self):
        object.__setattr__(self, "short", self.short or self.name)
        object.__setattr__(self, "words", self.words or self.label.lower())

    @property
    def css(self) -> str:
        return "mlp-" + self.short.replace("_", "-")

    def help(self) -> str:
        """The box's tooltip: what it means, its limits in words and, if fixed, their reason."""
        reason = f" ({self.why})" if self.why and isinstance(self.why, str) else ""
        return f"{self.tooltip}. Allowed: {self.range_words()}{reason}"

    def text(self, config: RunConfig) -> str:
        """The box's text for a configuration."""
        value = getattr(config, self.name)
        return _number(value) if self.kind is float else str(value)

    @property
    def hint(self) -> str:
        """The limits in a few characters, shown beside the box."""
        low = f"{'>' if self.lower_open else '≥'} {self.lower:g}"
        if self.upper is None:
            return low
        if isinstance(self.upper, str):
            return f"≤ {FIELD[self.upper].words}"
        if self.kind is int:
            return f"{self.lower:,} to {self.upper:,}"
        return f"{low}, {'<' if self.upper_open else '≤'} {self.upper:g}"

    def range_words(self) -> str:
        """The limits in words: "from 1 to 200", "of at least 1", "above 0 and at most 10"."""
        if self.upper is None:
            return f"of at least {self.lower:,}" if self.kind is int else f"from {self.lower:g}"
        if isinstance(self.upper, str):
            upper = f"the {FIELD[self.upper].words}"
        else:
            upper = f"{self.upper:,g}"
        if self.kind is int:
            return f"from {self.lower:,} to {upper}"
        if self.lower_open:
            return f"above {self.lower:g} and {'below' if self.upper_open else 'at most'} {upper}"
        including = "up to, but not including," if self.upper_open else "to"
        return f"from {self.lower:g} {including} {upper}"

    def parse(self, text: str):
        """The box's value, or ValueError naming what is wrong and what to type instead."""
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
        shown = f"{value:,}" if self.kind is int else f"{value:g}"
        below = value <= self.lower if self.lower_open else value < self.lower
        if below:
            relation = "greater than" if self.lower_open else "at least"
            return f"{self.words} must be {relation} {self.lower:,g}, got {shown}"
        upper = values.get(self.upper) if isinstance(self.upper, str) else self.upper
        if upper is None:
            return ""
        above = value >= upper if self.upper_open else value > upper
        if not above:
            return ""
        if isinstance(self.upper, str):
            limit = f"the {FIELD[self.upper].words} ({upper:,})"
        else:
            limit = f"{upper:,g}"
        relation = "less than" if self.upper_open else "at most"
        reason = self.why(values) if callable(self.why) else self.why
        return f"{self.words} must be {relation} {limit}, got {shown}: {reason}"


class HiddenLayersField(Field):
    """The hidden layers' box: widths separated by commas, read by parse_hidden_layers, which
    checks the widths and their number."""

    def text(self, config: RunConfig) -> str:
        return _hidden_text(config)

    @property
    def hint(self) -> str:
        return f"≤ {MAX_HIDDEN_LAYERS} × {MAX_WIDTH:,}"

    def range_words(self) -> str:
        return f"widths from 1 to {MAX_WIDTH:,} separated by commas, at most {MAX_HIDDEN_LAYERS}"

    def parse(self, text: str) -> tuple[int, ...]:
        return parse_hidden_layers(text) + (mlp_core.NUM_CLASSES,)

    def check(self, value, values: dict) -> str:
        return ""


FIELDS = (
    HiddenLayersField(
        "layer_sizes",
        short="hidden",
        label="Hidden layers",
        section="Network",
        tooltip="Widths of the hidden layers, separated by commas, e.g. 64 or 60, 60; the output "
        f"layer ({mlp_core.NUM_CLASSES} softmax units) is added",
    ),
    Field(
        "learning_rate",
        label="Learning rate α",
        section="Training",
        tooltip=f"The SGD step size, e.g. 0.1 or 1e-3; the protocol uses {PROTOCOL.learning_rate}",
        kind=float,
        lower=0,
        lower_open=True,
        upper=MAX_LEARNING_RATE,
        why="larger steps overshoot (at α = 30 every network tried, of either activation and "
        "initialisation, with or without momentum, diverged or stayed below 45 % accuracy); "
        f"the protocol uses {PROTOCOL.learning_rate}",
    ),
    Field(
        "momentum",
        label="Momentum γ",
        section="Training",
        tooltip="How much of the previous step each step keeps: 0 switches momentum off; Task 3 "
        "uses 0.9",
        kind=float,
        lower=0,
        upper=1,
        upper_open=True,
        why="at γ = 1 past steps never fade and SGD never settles; Task 3 uses 0.9",
    ),
    Field(
        "batch_size",
        label="Batch size",
        section="Training",
        tooltip="Images per SGD step; the last incomplete batch of an epoch is dropped",
        upper="n_train",
        why="every step takes this many images of the training subset",
    ),
    Field(
        "max_epochs",
        short="epochs",
        label="Epochs (max)",
        words="epochs",
        section="Training",
        tooltip="The most epochs to train; early stopping can end the run sooner",
        upper=MAX_EPOCHS,
        why=_epochs_reason,
    ),
    Field(
        "patience",
        label="Early-stop patience",
        words="patience",
        section="Training",
        tooltip="Stop after this many validations without a new lowest validation loss",
    ),
    Field(
        "n_train",
        label="Training subset",
        section="Data",
        tooltip=f"The first N of the {TRAINING_IMAGES:,} training images (protocol: "
        f"{PROTOCOL.n_train:,})",
        upper=TRAINING_IMAGES,
        why=f"MNIST has {TRAINING_IMAGES:,} training images",
    ),
    Field(
        "n_val",
        label="Validation subset",
        section="Data",
        tooltip=f"The first N of the {TEST_IMAGES:,} test images (protocol: {PROTOCOL.n_val:,})",
        upper=TEST_IMAGES,
        why=f"the validation images are MNIST's {TEST_IMAGES:,} test images",
    ),
    Field(
        "seed",
        label="Seed",
        section="Data",
        tooltip="Seeds the initial weights and the shuffling",
        lower=0,
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
        if not re.fullmatch(r"[+-]?\d+", token):
            raise ValueError(
                f"{token!r} is not a whole number: widths are positive integers, e.g. 64"
            )
        width = int(token)
        if width < 1:
            raise ValueError(f"widths must be positive: a layer needs at least 1 unit, got {width}")
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


def _settings_summary(config: RunConfig | None, problems: dict) -> str:
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
        f"{sizes}: {mlp_core.count_parameters(config.layer_sizes):,} weights",
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
            f"about {_time_in_words(epoch)} per epoch here, {epochs} in about "
            f"{_time_in_words(total)}"
        )
    return "<div class='mlp-info'>" + "<br>".join(html.escape(line) for line in lines) + "</div>"


# ==== The controls ===============================================================================


class Controls:
    """The settings of a run: a number box per FIELDS row (each also an attribute by its short
    name: `controls.epochs`), its limits beside it and its message under it; the activation and
    initialisation dropdowns; above Train, the network or what is left to fix; Train and Stop.
    The number boxes are text boxes: set them from Python with strings."""

    def __init__(self, defaults: RunConfig):
        self.boxes: dict[str, widgets.Text] = {}  # by RunConfig field
        self.messages: dict[str, widgets.HTML] = {}  # under each box, shown when it is invalid
        self.rows: dict[str, widgets.VBox] = {}  # box, limits and message of each field
        for field in FIELDS:
            self._add_number_box(field, defaults)
        wide = widgets.Layout(width="390px", margin="1px 0")
        self.activation = widgets.Dropdown(
            options=[("sigmoid", "sigmoid"), ("improved sigmoid", "improved_sigmoid")],
            value=defaults.activation,
            description="Activation",
            tooltip="improved sigmoid: 1.7159 tanh(2z/3)",
            style=LABEL_STYLE,
            layout=wide,
        )
        self.activation.add_class("mlp-activation")
        self.init = widgets.Dropdown(
            options=[("uniform in [-1, 1]", "uniform"), ("normal, std 1/√fan-in", "fan_in")],
            value=defaults.init,
            description="Initialisation",
            style=LABEL_STYLE,
            layout=wide,
        )
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
        self.train_button.add_class("mlp-train")
        self.stop_button = widgets.Button(
            description="Stop",
            button_style="danger",
            icon="stop",
            disabled=True,
            tooltip="Stop the run now (within about a second, also during a validation)",
        )
        self.stop_button.add_class("mlp-stop")

    def _add_number_box(self, field: Field, defaults: RunConfig) -> None:
        box = widgets.Text(
            value=field.text(defaults),
            description=field.label,
            tooltip=field.help(),
            placeholder=field.hint,
            style=LABEL_STYLE,
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
        self.rows[field.name] = widgets.VBox([widgets.HBox([box, hint]), message])
        setattr(self, field.short, box)

    def on_change(self, callback: Callable[[], object]) -> None:
        """Call `callback()` whenever a box or dropdown changes."""
        for control in (self.activation, self.init, *self.boxes.values()):
            control.observe(lambda _: callback(), names="value")

    def read(self) -> tuple[RunConfig | None, dict[str, str]]:
        """The RunConfig the controls describe, or None and {field: message} for every invalid
        box."""
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

    def show(self, config: RunConfig | None, problems: dict[str, str], running: bool) -> None:
        """Explain every problem under its box and enable Train only when all is well and no run
        is in progress. Train is disabled before a message appears and enabled after the last one
        went, so the page never shows a message beside an enabled Train."""
        if config is None or running:
            self.train_button.disabled = True
        for field in FIELDS:
            self._show_problem(field, problems.get(field.name, ""))
        self.config_info.value = _settings_summary(config, problems)
        if config is not None and not running:
            self.train_button.disabled = False

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


# ==== The live view ==============================================================================


class LiveView:
    """The plot of the selected runs and the run in progress (a placeholder until there is one
    to plot: matplotlib is loaded then), the progress bar of the run in progress and the status
    line."""

    def __init__(self):
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

    def show_figure(self, figure) -> None:
        """Show a matplotlib Figure (with an Agg canvas) in place of the placeholder."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        self.plot.value = buffer.getvalue()
        self.plot.layout.display = None
        self.placeholder.layout.display = "none"

    def show_placeholder(self) -> None:
        self.placeholder.layout.display = None
        self.plot.layout.display = "none"

    def reset(self) -> None:
        """No run: an empty bar and the first status line."""
        self.progress.bar_style = ""
        self.progress.value = 0
        self.status.value = READY


# ==== The runs of the session: the Compare list and the table =====================================

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


def _run_id(hist: History) -> int:
    return int(hist.config.name.lstrip("#"))


def _color(run_id: int) -> str:
    return f"C{(run_id - 1) % 10}"


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


FINAL_NOTE = (
    "the final weights, evaluated once when the run ends, after its last step; the last "
    "validation can come a few steps earlier, so the final validation loss can sit a little above "
    "or below the lowest one. A stopped run has no final evaluation (–): its validations are in "
    "the plot."
)


def _final(metric: str, scale: float = 1.0) -> Callable[[History], float]:
    return lambda h: scale * h.final.get(metric, math.nan)


def _final_column(metric: str) -> Column:
    """The column of one of mlp_core.FINAL_METRICS: losses to 4 decimals, accuracies in %."""
    header = metric.replace("_", " ")  # "val loss"
    if metric.endswith("_acc"):
        return Column(
            f"{header} (%)", header, "final weights", _final(metric, 100), _fixed(2, " %")
        )
    tooltip = FINAL_NOTE if metric == "val_loss" else ""
    return Column(header, header, "final weights", _final(metric), _fixed(4), tooltip)


def _seconds_per_epoch(hist: History, update_seconds: float) -> float:
    """Mean seconds per epoch, less the `update_seconds` the explorer's live updates took."""
    if not hist.epoch_times:
        return math.nan
    return max(0.0, sum(hist.epoch_times) - update_seconds) / len(hist.epoch_times)


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
    *(_final_column(metric) for metric in mlp_core.FINAL_METRICS),
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
        lambda h: _ending(h).short,
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


def table_rows(histories: list[History], update_seconds: dict[str, float]) -> list[dict]:
    """{column: value} of every run, as Explorer.results() and the table show them; the seconds
    per epoch without the `update_seconds` (by run name) that the live updates took."""
    rows = []
    for hist in histories:
        row = {column.name: column.value(hist) for column in COLUMNS}
        row["s / epoch"] = _seconds_per_epoch(hist, update_seconds.get(hist.config.name, 0.0))
        rows.append(row)
    return rows


def _table_html(rows: list[dict]) -> str:
    """The runs table of table_rows(): a header of column groups, a row per run, and what "final"
    means."""
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


class RunsPanel:
    """Every finished run of the session: the Compare list (its selected runs are plotted),
    Select all, Clear runs, and the table. `on_selection()` is called when the user changes the
    selection, not when `set_runs()` does."""

    def __init__(self, on_selection: Callable[[], object]):
        self.compare = widgets.SelectMultiple(
            options=[],
            rows=6,
            description="Compare",
            tooltip="Select runs (Ctrl/Shift-click) to overlay their curves",
            layout=widgets.Layout(width="760px", max_width="100%"),
        )
        self.compare.add_class("mlp-runs-list")
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
        self.table = widgets.HTML("", layout=widgets.Layout(width="100%", overflow="auto"))
        self.table.add_class("mlp-runs")
        self._on_selection = on_selection
        self._listing = False  # set_runs() is changing the selection, not the user
        self.compare.observe(self._selection_changed, names="value")

    def _selection_changed(self, change) -> None:
        if not self._listing:
            self._on_selection()

    def set_runs(self, histories: list[History], selected: tuple[int, ...]) -> None:
        """List these runs, each by what differs, with the runs of the `selected` ids selected."""
        self._listing = True
        try:
            labels = run_labels([h.config for h in histories], always=MAIN_SETTINGS)
            self.compare.options = [(label, _run_id(h)) for label, h in zip(labels, histories)]
            ids = {_run_id(h) for h in histories}
            self.compare.value = tuple(i for i in selected if i in ids)
        finally:
            self._listing = False

    def select_all(self) -> None:
        self.compare.value = tuple(value for _, value in self.compare.options)

    def show_rows(self, rows: list[dict]) -> None:
        self.table.value = _table_html(rows) if rows else "<i style='color:#777'>No runs yet.</i>"


# ==== Training in a background thread =============================================================


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


class Training:
    """The run in progress, trained by mlp_core.train in a background thread, and every finished
    run of the session (`histories`, in order), all under one lock. The page learns what happens
    through the callbacks: `on_training(config)` once the data is loaded, `on_validation(history)`
    after every validation, `on_end(config, history or None, seconds, error or "")` when the run
    ended (under the lock, with the run already among the finished), `on_idle()` once it is no
    longer running."""

    def __init__(
        self,
        *,
        on_training: Callable[[RunConfig], object],
        on_validation: Callable[[History], object],
        on_end: Callable[[RunConfig, History | None, float, str], object],
        on_idle: Callable[[], object],
    ):
        self.lock = threading.RLock()
        self.histories: list[History] = []  # finished runs, in order
        self.live: History | None = None  # snapshot of the run in progress
        self.callback_seconds = 0.0  # of the run in progress: its live updates
        self.update_seconds: dict[str, float] = {}  # of every finished run, by its name
        self._next_id = 1
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._on_training = on_training
        self._on_validation = on_validation
        self._on_end = on_end
        self._on_idle = on_idle

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def as_next_run(self, config: RunConfig) -> RunConfig:
        """The configuration named as the next run: #1, #2, ..."""
        return config.replace(name=f"#{self._next_id}")

    def start(self, config: RunConfig) -> None:
        """Train a config named by as_next_run() in a background thread."""
        self._next_id += 1
        self._stop_event.clear()
        self.callback_seconds = 0.0
        self._thread = threading.Thread(
            target=self._run, args=(config,), name="mlp-explorer-train", daemon=True
        )
        self._thread.start()

    def stop(self) -> bool:
        """Ask the run in progress to stop (train() looks after every step and between the chunks
        of an evaluation); False if there is none or it was asked already."""
        if not self.running or self._stop_event.is_set():
            return False
        self._stop_event.set()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run in progress to end; True if no run is in progress any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def forget(self) -> None:
        """Forget every finished run; the numbering starts again unless a run is in progress."""
        with self.lock:
            self.histories = []
            self.update_seconds = {}
            if not self.running:
                self._next_id = 1

    def finished(self) -> tuple[list[History], dict[str, float]]:
        """Copies of the finished runs and of their live updates' seconds by name."""
        with self.lock:
            return list(self.histories), dict(self.update_seconds)

    def _run(self, config: RunConfig) -> None:
        hist = None
        error = ""
        started = time.perf_counter()
        try:
            data = _dataset(config)
            if not self._stop_event.is_set():
                self._on_training(config)
                # train() warns (RuntimeWarning) when a run diverges; the page shows its message
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    hist = mlp_core.train(
                        config,
                        data,
                        progress=False,
                        callback=self._validated,
                        should_stop=self._stop_event.is_set,
                    )
                SPEED.observe(hist, callback_seconds=self.callback_seconds)
        except Exception as exc:  # never a traceback in the page: say what went wrong
            error = str(exc) or type(exc).__name__
        finally:
            try:
                with self.lock:
                    self.live = None
                    if hist is not None:
                        self.histories.append(hist)
                        self.update_seconds[config.name] = self.callback_seconds
                    self._on_end(config, hist, time.perf_counter() - started, error)
            finally:
                if threading.current_thread() is self._thread:
                    self._thread = None
                self._on_idle()

    def _validated(self, hist: History) -> None:
        started = time.perf_counter()
        try:
            snapshot = _snapshot(hist)
            with self.lock:
                self.live = snapshot
            self._on_validation(hist)
        finally:
            self.callback_seconds += time.perf_counter() - started


def _end_status(
    config: RunConfig, hist: History | None, seconds: float, error: str
) -> tuple[str, str]:
    """The status line of a run that ended and the progress bar's style."""
    if error:
        return _error_html(f"Run {config.name} failed: {error}"), "danger"
    if hist is None:
        return f"Run {config.name} was stopped before it started.", "warning"
    if hist.stop_reason == "diverged":
        return _error_html(hist.message or f"Run {config.name} diverged."), "danger"
    ending = _ending(hist).sentence.format(patience=config.patience)
    text = f"Run {config.name} {ending} after {hist.steps:,} steps in {seconds:.1f} s: "
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


# ==== The layout ==================================================================================


def _page(controls: Controls, live: LiveView, runs: RunsPanel) -> widgets.VBox:
    """The settings on the left and the live view beside them (below them on a narrow screen),
    the runs of the session under both; the styles of explorer/explorer.css first."""

    def section(title: str) -> widgets.HTML:
        return widgets.HTML(
            f"<b>{html.escape(title)}</b>", layout=widgets.Layout(margin="6px 0 0 0")
        )

    sections: dict[str, list] = {}
    for field in FIELDS:
        sections.setdefault(field.section, []).append(controls.rows[field.name])
    sections["Network"] += [controls.activation, controls.init]
    buttons = widgets.HBox(
        [controls.train_button, controls.stop_button], layout=widgets.Layout(margin="6px 0 0 0")
    )
    settings = widgets.VBox(
        [item for title, items in sections.items() for item in (section(title), *items)]
        + [controls.config_info, buttons],
        layout=widgets.Layout(width="400px", min_width="400px"),
    )
    plots = widgets.VBox(
        [live.plot, live.placeholder, live.progress, live.status],
        layout=widgets.Layout(flex="1 1 560px", min_width="480px"),
    )
    session = widgets.VBox(
        [
            widgets.HTML(
                "<b>Runs of this session</b> — select runs to overlay their curves "
                "(solid: training, dashed: validation)."
            ),
            widgets.HBox([runs.compare, widgets.VBox([runs.select_all_button, runs.clear_button])]),
            runs.table,
        ],
        layout=widgets.Layout(margin="12px 0 0 0"),
    )
    page = widgets.VBox(
        [
            widgets.HTML(f"<style>\n{CSS}</style>", layout=widgets.Layout(display="none")),
            widgets.HBox(
                [settings, plots],
                layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"),
            ),
            session,
        ]
    )
    page.add_class("mlp-explorer")
    return page


# ==== The explorer ================================================================================


class Explorer:
    """Widgets to configure, train, stop and compare MLP runs on MNIST. Display `.widget`.

    `defaults` sets the initial control values (a RunConfig; the hidden layers, activation,
    initialisation, learning rate, momentum, batch size, epochs, subsets, patience and seed are
    taken from it). `redraw_interval` is the least number of seconds between two live redraws.
    Its parts: `controls` (the number boxes are text boxes: set them from Python with strings,
    e.g. `ui.controls.epochs.value = "20"`), `live`, `runs_panel` and `training`.
    """

    def __init__(self, defaults: RunConfig = DEFAULTS, *, redraw_interval: float = 0.5):
        self.redraw_interval = float(redraw_interval)
        self._last_draw = 0.0
        self.controls = Controls(defaults)
        self.live = LiveView()
        self.runs_panel = RunsPanel(on_selection=self._draw)
        self.training = Training(
            on_training=self._show_training,
            on_validation=self._show_validation,
            on_end=self._show_end,
            on_idle=self.check,
        )
        self.widget = _page(self.controls, self.live, self.runs_panel)
        self.controls.on_change(self.check)
        self.controls.train_button.on_click(lambda _: self.train())
        self.controls.stop_button.on_click(lambda _: self.stop())
        self.runs_panel.select_all_button.on_click(lambda _: self.select_all())
        self.runs_panel.clear_button.on_click(lambda _: self.clear())
        self.check()
        self._update_table()
        _calibrate_in_background(then=self.check)  # the time estimates appear when it is done

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def histories(self) -> list[History]:
        """Every finished run of the session, in order."""
        return self.training.histories

    @property
    def running(self) -> bool:
        return self.training.running

    # -------------------------------------------------------------------------------- settings

    def config(self) -> RunConfig:
        """The RunConfig the controls describe; ValueError (in the page's words) if invalid."""
        config, problems = self.controls.read()
        if problems:
            raise ValueError("; ".join(problems.values()))
        return config

    def problems(self) -> dict[str, str]:
        """{RunConfig field: message} of every invalid box, as shown under the boxes."""
        return self.controls.read()[1]

    def check(self) -> RunConfig | None:
        """Read the controls, show what is wrong under the boxes and enable Train only when all
        is well and no run is in progress; the RunConfig, or None if a box is invalid."""
        with self.training.lock:
            config, problems = self.controls.read()
            self.controls.show(config, problems, running=self.running)
            return config

    # -------------------------------------------------------------------------------- actions

    def train(self) -> bool:
        """Start a run with the current settings in a background thread; False if nothing started
        (invalid settings, shown inline, or a run already in progress)."""
        if self.running:
            return False
        config = self.check()
        if config is None:
            return False
        config = self.training.as_next_run(config)
        self.controls.train_button.disabled = True
        self.controls.stop_button.disabled = False
        self.live.progress.bar_style = ""
        self.live.progress.max = config.max_epochs * config.steps_per_epoch
        self.live.progress.value = 0
        self.live.status.value = f"Run {config.name}: loading MNIST…"
        self.training.start(config)
        return True

    def stop(self) -> None:
        """Stop the run in progress now: train() looks at the request after every step and between
        the chunks of an evaluation. Its history so far is kept."""
        if self.training.stop():
            self.controls.stop_button.disabled = True
            self.live.status.value += " — stopping…"

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run in progress to end; True if no run is in progress any more."""
        return self.training.wait(timeout)

    def clear(self) -> None:
        """Forget every finished run (a run in progress is kept and added when it ends)."""
        with self.training.lock:
            self.training.forget()
            if not self.running:
                self.live.reset()
            self.runs_panel.set_runs([], selected=())
        self._update_table()
        self._draw()

    def select_all(self) -> None:
        self.runs_panel.select_all()

    def results(self):
        """A pandas DataFrame of every finished run, a column per COLUMNS entry: its settings,
        final metrics (accuracies in %), lowest validation loss and its step, steps taken, how it
        ended (in words) and seconds per epoch."""
        import pandas as pd

        rows = table_rows(*self.training.finished())
        return pd.DataFrame(rows, columns=[column.name for column in COLUMNS])

    # --------------------------------------------------------------- what the training thread shows

    def _show_training(self, config: RunConfig) -> None:
        self.live.status.value = f"Run {config.name}: training…"

    def _show_validation(self, hist: History) -> None:
        config = hist.config
        epoch = min(config.max_epochs, hist.steps // config.steps_per_epoch + 1)
        self.live.progress.value = hist.steps
        self.live.status.value = (
            f"Run {config.name}: epoch {epoch} / {config.max_epochs}, step {hist.steps:,} / "
            f"{self.live.progress.max:,} — validation loss {hist.val_loss[-1]:.4f}, accuracy "
            f"{100 * hist.val_acc[-1]:.2f} %" + (" — stopping…" if self.training.stopping else "")
        )
        if time.monotonic() - self._last_draw >= self.redraw_interval:
            self._draw()

    def _show_end(
        self, config: RunConfig, hist: History | None, seconds: float, error: str
    ) -> None:
        message, style = _end_status(config, hist, seconds, error)
        try:
            if hist is not None:
                selected = tuple(self.runs_panel.compare.value) + (_run_id(hist),)
                self.runs_panel.set_runs(self.training.histories, selected)
                self.live.progress.value = hist.steps
                self._update_table()
            self._draw()
        finally:
            self.live.progress.bar_style = style
            self.live.status.value = message
            self.controls.stop_button.disabled = True

    # -------------------------------------------------------------------------------- views

    def _update_table(self) -> None:
        self.runs_panel.show_rows(table_rows(*self.training.finished()))

    def _shown(self) -> tuple[list[History], History | None]:
        """The selected runs and the run in progress (last), and the latter alone."""
        with self.training.lock:
            chosen = set(self.runs_panel.compare.value)
            shown = [h for h in self.training.histories if _run_id(h) in chosen]
            live = self.training.live
            if live is not None:
                shown.append(live)
            return shown, live

    def figure(self):
        """A matplotlib Figure (no pyplot) of the selected runs and the run in progress: loss and
        accuracy (%) against gradient steps, one legend below naming each run by what differs."""
        import mlp_plots

        shown, live = self._shown()
        labels = run_labels(
            [h.config for h in shown], always=MAIN_SETTINGS if len(shown) == 1 else ()
        )
        return mlp_plots.loss_accuracy_figure(
            shown,
            colors=[_color(_run_id(h)) for h in shown],
            labels=[label + " (training…)" * (h is live) for h, label in zip(shown, labels)],
            empty_text=PLACEHOLDER.replace(", or", ",\nor").rstrip("."),
        )

    def _draw(self) -> None:
        """Render the figure into the plot image, or show the placeholder if there is nothing."""
        with self.training.lock:  # an older image never replaces a newer one
            self._last_draw = time.monotonic()
            if self._shown()[0]:
                self.live.show_figure(self.figure())
            else:
                self.live.show_placeholder()
