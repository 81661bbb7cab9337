"""An interactive explorer for the MNIST MLP: ipywidgets controls over mlp_core and mlp_plots.

`Explorer` builds the controls of one training run (network, activation, initialisation, SGD
settings, data subsets, seed), trains with `mlp_core.train` in a background thread so the page stays
responsive (Stop works while it trains), redraws the loss and accuracy curves at every validation,
and keeps a table of every run of the session whose curves can be overlaid for comparison.

It holds no training or plotting math of its own: the configuration is a `mlp_core.RunConfig` (its
ValueError messages, in the controls' words, are the inline error messages), the curves are
`mlp_plots.plot_loss` and `plot_accuracy`. The numbers are typed into plain text boxes and checked
here, so that nothing is clamped or ignored silently: whatever is invalid is explained above Train,
which stays disabled until it is fixed. Plots are rendered off-screen with matplotlib's Agg canvas
into PNG bytes for an `ipywidgets.Image`, which is safe to update from the training thread in
JupyterLab, the classic Notebook and Voilà alike; pyplot is never touched.

Usage in a notebook: `ui = Explorer(); ui.widget`.
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

import ipywidgets as widgets

import mlp_core
import mlp_plots
from mlp_core import History, RunConfig

__all__ = ["Explorer", "parse_hidden_layers", "run_labels", "MAX_HIDDEN_LAYERS", "MAX_WIDTH"]

MAX_HIDDEN_LAYERS = 8
MAX_WIDTH = 2048
PROTOCOL = RunConfig()  # the assignment's protocol, for the hints beside the controls
N_TRAIN_IMAGES = 60_000
N_TEST_IMAGES = 10_000
DEFAULTS = RunConfig(n_train=5_000, max_epochs=10)  # a run of a few seconds
READY = "Set up a network on the left and press <b>Train</b>."

# RunConfig's field names as the controls are labelled, to turn its messages into the page's words
_FIELD_LABELS = {
    "batch_size": "batch size",
    "max_epochs": "epochs",
    "n_train": "training subset",
    "n_val": "validation subset",
    "learning_rate": "learning rate α",
    "momentum": "momentum γ",
    "patience": "patience",
    "seed": "seed",
    "layer_sizes": "layer sizes",
    ">=": "≥",
    "<=": "≤",
}
# How a run ended (History.stop_reason), in words: the table's "stopped by" and the status line
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
    for c in configs:
        parts = [_SETTINGS[key](c) for key in shown]
        if (
            shown[:1] == ["hidden"] and len(parts) > 1
        ):  # "[64] sigmoid, ..." rather than "[64], sigmoid"
            parts[:2] = [" ".join(parts[:2])]
        labels.append(" ".join([c.name] + [", ".join(parts)] * bool(parts)))
    return labels


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
        if not 1 <= width <= MAX_WIDTH:
            raise ValueError(f"a layer width must be between 1 and {MAX_WIDTH}, got {width}")
        widths.append(width)
    if len(widths) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"at most {MAX_HIDDEN_LAYERS} hidden layers, got {len(widths)}")
    return tuple(widths)


def _parse_int(text: str, label: str) -> int:
    token = text.strip().replace("_", "")
    if re.fullmatch(r"\d{1,3}(,\d{3})+", token):  # thousands separators: 5,000
        token = token.replace(",", "")
    if not re.fullmatch(r"[+-]?\d+", token):
        raise ValueError(
            f"{label} must be a whole number, got {text.strip()!r}"
            if text.strip()
            else f"enter the {label}"
        )
    return int(token)


def _parse_float(text: str, label: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(
            f"{label} must be a number such as 0.1 or 1e-3, got {text.strip()!r}"
            if text.strip()
            else f"enter the {label}"
        ) from None


def _friendly(message: str) -> str:
    for name, label in _FIELD_LABELS.items():
        message = message.replace(name, label)
    return message


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


_CSS = """<style>
.mlp-explorer-table { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
.mlp-explorer-table th, .mlp-explorer-table td { padding: 3px 6px; text-align: right; white-space: nowrap;
  border-bottom: 1px solid rgba(128, 128, 128, 0.25); }
.mlp-explorer-table th { font-weight: 600; border-bottom: 1px solid rgba(128, 128, 128, 0.7); }
.mlp-explorer-table td:first-child, .mlp-explorer-table th:first-child { text-align: left; }
.mlp-explorer-table tbody tr:hover { background: rgba(128, 128, 128, 0.1); }
.mlp-explorer .mlp-invalid input { border-color: #b00020; box-shadow: inset 0 0 0 1px #b00020; }
.mlp-explorer .mlp-runs-list select { font-variant-numeric: tabular-nums; }
</style>"""


class Explorer:
    """Widgets to configure, train, stop and compare MLP runs on MNIST. Display `.widget`.

    `defaults` sets the initial control values (a RunConfig; the hidden layers, activation,
    initialisation, learning rate, momentum, batch size, epochs, subsets, patience and seed are
    taken from it). `redraw_interval` is the least number of seconds between two live redraws.
    The number boxes are text boxes: set them from Python with strings, e.g. `ui.epochs.value = "20"`.
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
        self._syncing_selection = False

        d = defaults
        label = {"description_width": "140px"}
        wide = widgets.Layout(width="390px", margin="1px 0")

        def section(title: str) -> widgets.HTML:
            return widgets.HTML(
                f"<b>{html.escape(title)}</b>", layout=widgets.Layout(margin="6px 0 0 0")
            )

        def number(value, description: str, css: str, tooltip: str = "") -> widgets.Text:
            box = widgets.Text(
                value=str(value),
                description=description,
                tooltip=tooltip,
                style=label,
                layout=wide,
                continuous_update=True,
            )
            box.add_class(css)
            return box

        # Network
        self.hidden = widgets.Text(
            value=_hidden_text(d),
            description="Hidden layers",
            placeholder="e.g. 64 or 60, 60",
            tooltip="Widths of the hidden layers, separated by commas; the output layer (10) is added",
            style=label,
            layout=wide,
            continuous_update=True,
        )
        self.hidden.add_class("mlp-hidden")
        self.activation = widgets.Dropdown(
            options=[("sigmoid", "sigmoid"), ("improved sigmoid", "improved_sigmoid")],
            value=d.activation,
            description="Activation",
            tooltip="improved sigmoid: 1.7159 tanh(2z/3)",
            style=label,
            layout=wide,
        )
        self.init = widgets.Dropdown(
            options=[("uniform in [-1, 1]", "uniform"), ("normal, std 1/√fan-in", "fan_in")],
            value=d.init,
            description="Initialisation",
            style=label,
            layout=wide,
        )
        self.activation.add_class("mlp-activation")
        self.init.add_class("mlp-init")
        # Training
        self.learning_rate = number(
            _number(d.learning_rate),
            "Learning rate α",
            "mlp-learning-rate",
            "A number > 0, e.g. 0.1 or 1e-3",
        )
        self.momentum = number(
            _number(d.momentum),
            "Momentum γ",
            "mlp-momentum",
            "From 0 (no momentum) up to, but not including, 1; the assignment uses 0.9",
        )
        self.batch_size = number(d.batch_size, "Batch size", "mlp-batch-size")
        self.epochs = number(d.max_epochs, "Epochs (max)", "mlp-epochs")
        self.patience = number(
            d.patience,
            "Early-stop patience",
            "mlp-patience",
            "Stop after this many validations without a new lowest validation loss",
        )
        # Data
        self.n_train = number(
            d.n_train,
            "Training subset",
            "mlp-n-train",
            f"The first N of the {N_TRAIN_IMAGES:,} training images (protocol: {PROTOCOL.n_train:,})",
        )
        self.n_val = number(
            d.n_val,
            "Validation subset",
            "mlp-n-val",
            f"The first N of the {N_TEST_IMAGES:,} test images (protocol: {PROTOCOL.n_val:,})",
        )
        self.seed = number(
            d.seed, "Seed", "mlp-seed", "Seeds the initial weights and the shuffling"
        )
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
            tooltip="Stop the run at its next validation",
        )
        self.train_button.add_class("mlp-train")
        self.stop_button.add_class("mlp-stop")
        self.train_button.on_click(lambda _: self.train())
        self.stop_button.on_click(lambda _: self.stop())

        # Live view
        self.plot = widgets.Image(
            format="png", layout=widgets.Layout(width="100%", max_width="912px", height="auto")
        )
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

        # the controls RunConfig's messages name, to mark the one a message is about
        self._fields = {
            "layer_sizes": self.hidden,
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            "batch_size": self.batch_size,
            "max_epochs": self.epochs,
            "patience": self.patience,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "seed": self.seed,
        }
        for control in (self.hidden, self.activation, self.init, *self._fields.values()):
            control.observe(lambda _: self._check(), names="value")

        controls = widgets.VBox(
            [
                section("Network"),
                self.hidden,
                self.activation,
                self.init,
                section("Training"),
                self.learning_rate,
                self.momentum,
                self.batch_size,
                self.epochs,
                self.patience,
                section("Data"),
                self.n_train,
                self.n_val,
                self.seed,
                self.config_info,
                widgets.HBox(
                    [self.train_button, self.stop_button], layout=widgets.Layout(margin="6px 0 0 0")
                ),
            ],
            layout=widgets.Layout(width="400px", min_width="400px"),
        )
        live = widgets.VBox(
            [self.plot, self.progress, self.status],
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
        self._draw()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -------------------------------------------------------------------------------- settings

    def config(self) -> RunConfig:
        """The RunConfig the controls describe; ValueError (in the page's words) if they are invalid."""
        config, problems = self._read()
        if problems:
            raise ValueError("; ".join(problems.values()))
        return config

    def _read(self) -> tuple[RunConfig | None, dict]:
        """The RunConfig of the controls, or None and {control: message} of everything that is wrong."""
        values, problems = {}, {}
        for name, control in self._fields.items():
            try:
                if name == "layer_sizes":
                    values[name] = parse_hidden_layers(control.value) + (mlp_core.NUM_CLASSES,)
                else:
                    parse = _parse_float if name in ("learning_rate", "momentum") else _parse_int
                    values[name] = parse(control.value, _FIELD_LABELS[name])
            except ValueError as exc:
                problems[control] = str(exc)
        for name, most, what in (
            ("n_train", N_TRAIN_IMAGES, "MNIST training images"),
            ("n_val", N_TEST_IMAGES, "MNIST test images"),
        ):
            if values.get(name, 0) > most:
                problems[self._fields[name]] = (
                    f"{_FIELD_LABELS[name]} must be at most {most:,} (the {what}), "
                    f"got {values[name]:,}"
                )
        if problems:
            return None, problems
        try:
            return RunConfig(activation=self.activation.value, init=self.init.value, **values), {}
        except ValueError as exc:  # RunConfig's message begins with the field it is about
            control = self._fields.get(str(exc).split()[0], self.hidden)
            return None, {control: _friendly(str(exc))}

    def _check(self) -> RunConfig | None:
        """Validate the controls, explain what is wrong inline and enable Train only when all is well."""
        config, problems = self._read()
        for control in self._fields.values():
            (control.add_class if control in problems else control.remove_class)("mlp-invalid")
        if config is None:
            self.config_info.value = "".join(_error_html(message) for message in problems.values())
        else:
            sizes = " → ".join(map(str, (mlp_core.INPUT_SIZE,) + config.layer_sizes))
            weights = mlp_core.count_parameters(config.layer_sizes)
            self.config_info.value = (
                f"<div style='color:#555;font-size:12px;line-height:1.4'>{sizes}: {weights:,} weights<br>"
                f"{config.steps_per_epoch:,} steps per epoch, validation every "
                f"{config.validation_interval:,} steps</div>"
            )
        self.train_button.disabled = config is None or self.running
        return config

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
        """Ask the run in progress to stop at its next validation; its history is kept."""
        if self.running:
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
            if not self.running:
                self._next_id = 1
                self.progress.bar_style, self.progress.value = "", 0
                self.status.value = READY
            self._set_runs_options(selected=())
        self._update_table()
        self._draw()

    def select_all(self) -> None:
        self.runs.value = tuple(value for _, value in self.runs.options)

    def results(self):
        """A pandas DataFrame of every finished run: its settings, final metrics (accuracies in %),
        best validation loss and its step, steps taken, how it ended (in words) and seconds per epoch."""
        import pandas as pd

        with self._lock:
            histories = list(self.histories)
        rows = []
        for h in histories:
            c, final = h.config, h.final
            rows.append(
                {
                    "run": c.name,
                    "hidden": _hidden_text(c),
                    "activation": c.activation.replace("_", " "),
                    "init": c.init.replace("_", "-"),
                    "lr": c.learning_rate,
                    "γ": c.momentum,
                    "batch": c.batch_size,
                    "epochs": c.max_epochs,
                    "train n": c.n_train,
                    "val n": c.n_val,
                    "seed": c.seed,
                    "train loss": final.get("train_loss", math.nan),
                    "val loss": final.get("val_loss", math.nan),
                    "train acc (%)": 100 * final.get("train_acc", math.nan),
                    "val acc (%)": 100 * final.get("val_acc", math.nan),
                    "best val loss": h.best_val_loss if h.val_steps else math.nan,
                    "best step": h.best_step,
                    "steps": h.steps,
                    "stopped by": STOP_REASONS.get(h.stop_reason, (h.stop_reason,))[0],
                    "s / epoch": sum(h.epoch_times) / len(h.epoch_times)
                    if h.epoch_times
                    else math.nan,
                }
            )
        return pd.DataFrame(rows, columns=list(rows[0]) if rows else None)

    # -------------------------------------------------------------------------------- training thread

    def _work(self, config: RunConfig) -> None:
        hist, message, style = None, "", "danger"
        started = time.perf_counter()
        try:
            data = _dataset(config)
            if self._stop_event.is_set():
                message, style = f"Run {config.name} was stopped before it started.", "warning"
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
        except Exception as exc:  # never a traceback in the page: say what went wrong
            message = _error_html(
                f"Run {config.name} failed: {_friendly(str(exc)) or type(exc).__name__}"
            )
        finally:
            try:
                with self._lock:
                    self._live = None
                    if hist is not None:
                        self.histories.append(hist)
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
        snap = _snapshot(hist)
        with self._lock:
            self._live = snap
        c = hist.config
        epoch = min(c.max_epochs, hist.steps // c.steps_per_epoch + 1)
        self.progress.value = hist.steps
        self.status.value = (
            f"Run {c.name}: epoch {epoch} / {c.max_epochs}, step {hist.steps:,} / {self.progress.max:,} — "
            f"validation loss {hist.val_loss[-1]:.4f}, accuracy {100 * hist.val_acc[-1]:.2f} %"
            + (" — stopping…" if self._stop_event.is_set() else "")
        )
        if time.monotonic() - self._last_draw >= self.redraw_interval:
            self._draw()

    @staticmethod
    def _summary(hist: History, seconds: float) -> tuple[str, str]:
        """The status line of a finished run and the progress bar's style."""
        c = hist.config
        if hist.stop_reason == "diverged":
            return _error_html(hist.message or f"Run {c.name} diverged."), "danger"
        reason = STOP_REASONS.get(hist.stop_reason, ("", hist.stop_reason))[1].format(
            patience=c.patience
        )
        final = hist.final
        text = (
            f"Run {c.name} {reason} after {hist.steps:,} steps in {seconds:.1f} s: validation loss "
            f"{final['val_loss']:.4f}, accuracy {100 * final['val_acc']:.2f} % "
            f"(training accuracy {100 * final['train_acc']:.2f} %)."
        )
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
        df = self.results()
        if df.empty:
            self.table.value = "<i style='color:#777'>No runs yet.</i>"
            return
        fixed = lambda digits, unit="": lambda v: "–" if math.isnan(v) else f"{v:.{digits}f}{unit}"  # noqa: E731
        formatters = {
            "train loss": fixed(4),
            "val loss": fixed(4),
            "best val loss": fixed(4),
            "train acc (%)": fixed(2, " %"),
            "val acc (%)": fixed(2, " %"),
            "lr": _number,
            "γ": _number,
            "s / epoch": fixed(2),
            "best step": lambda v: "–" if v < 0 else f"{v:,}",
            "steps": "{:,}".format,
            "train n": "{:,}".format,
            "val n": "{:,}".format,
        }
        body = df.rename(columns={"train acc (%)": "train acc", "val acc (%)": "val acc"}).to_html(
            index=False,
            border=0,
            classes="mlp-explorer-table",
            na_rep="–",
            formatters={k.replace(" (%)", ""): f for k, f in formatters.items()},
        )
        self.table.value = _CSS + body

    def figure(self):
        """A matplotlib Figure (no pyplot) of the selected runs and the run in progress: loss and
        accuracy (%) against gradient steps, one legend below naming each run by what differs."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D

        with self._lock:
            chosen = set(self.runs.value)
            shown = [h for h in self.histories if _run_id(h) in chosen]
            if self._live is not None:
                shown.append(self._live)
            live = self._live
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
        ncol = (
            1 if len(handles) <= 3 else max(1, min(3, 110 // (widest + 6)))
        )  # ~110 characters a line
        legend = 0.2 * math.ceil(len(handles) / ncol) + 0.1 if handles else 0.0
        height = 3.0 + legend
        fig = Figure(figsize=(7.6, height), dpi=120)
        FigureCanvasAgg(fig)
        # fixed margins: a constrained layout would double the cost of every live redraw
        ax_loss, ax_acc = fig.subplots(
            1,
            2,
            gridspec_kw=dict(
                left=0.08,
                right=0.99,
                bottom=(0.45 + legend) / height,
                top=1 - 0.27 / height,
                wspace=0.24,
            ),
        )
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
                    "Press Train to start a run,\nor select runs below to compare them",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="0.5",
                )
            ax_loss.set_ylabel("cross-entropy loss")
            ax_acc.set_ylabel("accuracy (%)")
        return fig

    def _draw(self) -> None:
        """Render the figure into the plot image."""
        with self._lock:  # an older image never replaces a newer one
            self._last_draw = time.monotonic()
            buffer = io.BytesIO()
            self.figure().savefig(buffer, format="png")
            self.plot.value = buffer.getvalue()


def _limit_loss_axis(ax, runs) -> None:
    """Keep the first validations' large losses, and diverged runs, from squashing the other curves."""
    kept = [h for h in runs if h.stop_reason != "diverged"] or runs
    tails = [v for h in kept for v in h.val_loss[1:] if math.isfinite(v)]
    if len(tails) >= 2:
        ax.set_ylim(0, 1.15 * max(tails))


def _error_html(message: str) -> str:
    return (
        f"<div style='color:#b00020;font-size:12px;line-height:1.4'>⚠ {html.escape(message)}</div>"
    )
