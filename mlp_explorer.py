"""An interactive explorer for the MNIST MLP: ipywidgets controls over mlp_core.

`Explorer` builds the controls of one training run (network, activation, initialisation, SGD
settings, data subsets, seed), trains with `mlp_core.train` in a background thread so the page stays
responsive (Stop works while it trains), redraws the loss and accuracy curves at every validation,
and keeps a table of every run of the session whose curves can be overlaid for comparison.

It holds no training or plotting logic of its own: the configuration is a `mlp_core.RunConfig`
(its ValueError messages are the inline error messages), the curves are `mlp_core.plot_loss` and
`plot_accuracy`, the table is `mlp_core.results_table`. Plots are rendered off-screen with
matplotlib's Agg canvas into PNG bytes for an `ipywidgets.Image`, which is safe to update from the
training thread in JupyterLab, the classic Notebook and Voilà alike; pyplot is never touched.

Usage in a notebook: `ui = Explorer(); ui.widget`.
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import threading
import time
import warnings

import ipywidgets as widgets

import mlp_core
from mlp_core import History, RunConfig

__all__ = ["Explorer", "parse_hidden_layers", "MAX_HIDDEN_LAYERS", "MAX_WIDTH"]

MAX_HIDDEN_LAYERS = 8
MAX_WIDTH = 2048
PROTOCOL = RunConfig()  # the assignment's protocol, for the hints beside the controls
N_TRAIN_IMAGES = 60_000
N_TEST_IMAGES = 10_000
DEFAULTS = RunConfig(n_train=5_000, max_epochs=10)  # a run of a few seconds

# RunConfig's field names, as the controls are labelled, to turn its messages into the UI's words
_FIELD_LABELS = {
    "batch_size": "batch size", "max_epochs": "epochs", "n_train": "training subset",
    "n_val": "validation subset", "learning_rate": "learning rate", "momentum": "momentum γ",
    "patience": "patience", "seed": "seed", "layer_sizes": "layer sizes",
}
_STOP_REASONS = {
    "max_epochs": "reached the last epoch",
    "early_stopping": "stopped early (no new lowest validation loss for {patience} validations)",
    "stopped": "stopped by you",
    "non_finite_loss": "the training loss became non-finite",
    "interrupted": "interrupted",
}


def parse_hidden_layers(text: str) -> tuple[int, ...]:
    """Hidden-layer widths from text such as "64" or "60, 60"; ValueError says what is wrong."""
    if not text.strip():
        raise ValueError("enter at least one hidden-layer width, e.g. 64 or 60, 60")
    widths = []
    for i, token in enumerate(text.split(","), start=1):
        token = token.strip()
        if not token:
            raise ValueError(f"entry {i} is empty: separate the widths by single commas, e.g. 60, 60")
        if not token.isdecimal():
            raise ValueError(f"{token!r} is not a whole number: widths are positive integers, e.g. 64")
        width = int(token)
        if not 1 <= width <= MAX_WIDTH:
            raise ValueError(f"a layer width must be between 1 and {MAX_WIDTH}, got {width}")
        widths.append(width)
    if len(widths) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"at most {MAX_HIDDEN_LAYERS} hidden layers, got {len(widths)}")
    return tuple(widths)


def _friendly(message: str) -> str:
    for name, label in _FIELD_LABELS.items():
        message = message.replace(name, label)
    return message


def _snapshot(hist: History) -> History:
    """A copy of the curves of a run in progress, safe to plot while training appends to them."""
    return dataclasses.replace(
        hist, train_loss=list(hist.train_loss), val_steps=list(hist.val_steps),
        train_loss_full=list(hist.train_loss_full), train_acc=list(hist.train_acc),
        val_loss=list(hist.val_loss), val_acc=list(hist.val_acc), grad_norms=[], init_grad_norms=[],
        epoch_times=list(hist.epoch_times), final={}, weights=[])


def _dataset(config: RunConfig) -> mlp_core.Dataset:
    """One prepared dataset serves every subset size up to the protocol's (train() slices it)."""
    n = PROTOCOL.n_train if config.n_train <= PROTOCOL.n_train else N_TRAIN_IMAGES
    return mlp_core.prepare_data(n, config.dtype)


def _run_id(hist: History) -> int:
    return int(hist.config.name.lstrip("#"))


def _color(run_id: int) -> str:
    return f"C{(run_id - 1) % 10}"


def _hidden_text(config: RunConfig) -> str:
    return ", ".join(map(str, config.layer_sizes[:-1]))


_CSS = """<style>
.mlp-explorer-table { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
.mlp-explorer-table th, .mlp-explorer-table td { padding: 3px 8px; text-align: right; white-space: nowrap;
  border-bottom: 1px solid rgba(128, 128, 128, 0.25); }
.mlp-explorer-table th { font-weight: 600; border-bottom: 1px solid rgba(128, 128, 128, 0.7); }
.mlp-explorer-table td:first-child, .mlp-explorer-table th:first-child { text-align: left; }
.mlp-explorer-table tbody tr:hover { background: rgba(128, 128, 128, 0.1); }
</style>"""


class Explorer:
    """Widgets to configure, train, stop and compare MLP runs on MNIST. Display `.widget`.

    `defaults` sets the initial control values (a RunConfig; the hidden layers, activation,
    initialisation, learning rate, momentum, batch size, epochs, subsets, patience and seed are
    taken from it). `redraw_interval` is the least number of seconds between two live redraws.
    """

    def __init__(self, defaults: RunConfig = DEFAULTS, *, redraw_interval: float = 0.5):
        self.redraw_interval = float(redraw_interval)
        self.histories: list[History] = []  # finished runs, in order
        self._live: History | None = None     # snapshot of the run in progress
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._lock = threading.RLock()
        self._next_id = 1
        self._last_draw = 0.0
        self._syncing_selection = False

        d = defaults
        label = {"description_width": "140px"}
        wide = widgets.Layout(width="390px")

        def section(title: str) -> widgets.HTML:
            return widgets.HTML(f"<b>{html.escape(title)}</b>", layout=widgets.Layout(margin="8px 0 2px 0"))

        # Network
        self.hidden = widgets.Text(
            value=_hidden_text(d), description="Hidden layers", placeholder="e.g. 64 or 60, 60",
            tooltip="Widths of the hidden layers, separated by commas; the output layer (10) is added",
            style=label, layout=wide, continuous_update=True)
        self.hidden_error = widgets.HTML("", layout=widgets.Layout(margin="0 0 0 146px", width="244px"))
        self.activation = widgets.Dropdown(
            options=[("sigmoid", "sigmoid"), ("improved sigmoid  1.7159 tanh(2z/3)", "improved_sigmoid")],
            value=d.activation, description="Activation", style=label, layout=wide)
        self.init = widgets.Dropdown(
            options=[("uniform in [-1, 1]", "uniform"), ("fan-in normal  N(0, 1/fan-in)", "fan_in")],
            value=d.init, description="Initialisation", style=label, layout=wide)
        # Optimisation
        self.learning_rate = widgets.FloatLogSlider(
            value=d.learning_rate, base=10, min=-4, max=0.5, step=0.05, description="Learning rate α",
            readout_format=".3g", style=label, layout=wide, continuous_update=False)
        self.momentum = widgets.FloatSlider(
            value=d.momentum, min=0.0, max=0.99, step=0.01, description="Momentum γ",
            tooltip="0 switches momentum off; the assignment uses 0.9", readout_format=".2f",
            style=label, layout=wide, continuous_update=False)
        self.batch_size = widgets.BoundedIntText(
            value=d.batch_size, min=1, max=N_TRAIN_IMAGES, description="Batch size", style=label, layout=wide)
        self.epochs = widgets.BoundedIntText(
            value=d.max_epochs, min=1, max=500, description="Epochs (max)", style=label, layout=wide)
        self.patience = widgets.BoundedIntText(
            value=d.patience, min=1, max=10_000, description="Early-stop patience",
            tooltip="Stop after this many validations without a new lowest validation loss",
            style=label, layout=wide)
        # Data
        self.n_train = widgets.BoundedIntText(
            value=d.n_train, min=1, max=N_TRAIN_IMAGES, description="Training subset",
            tooltip=f"The first N training images (protocol: {PROTOCOL.n_train:,})", style=label, layout=wide)
        self.n_val = widgets.BoundedIntText(
            value=d.n_val, min=1, max=N_TEST_IMAGES, description="Validation subset",
            tooltip=f"The first N test images (protocol: {PROTOCOL.n_val:,})", style=label, layout=wide)
        self.seed = widgets.BoundedIntText(
            value=d.seed, min=0, max=2**31 - 1, description="Seed", style=label, layout=wide)
        self.config_info = widgets.HTML("", layout=widgets.Layout(width="390px", margin="6px 0 0 0"))

        self.train_button = widgets.Button(description="Train", button_style="primary", icon="play",
                                           tooltip="Train a network with these settings")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop",
                                          disabled=True, tooltip="Stop the run at its next validation")
        self.train_button.add_class("mlp-train")
        self.stop_button.add_class("mlp-stop")
        self.train_button.on_click(lambda _: self.train())
        self.stop_button.on_click(lambda _: self.stop())

        # Live view
        self.plot = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="912px",
                                                                          height="auto"))
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="98%"))
        self.status = widgets.HTML("Set up a network on the left and press <b>Train</b>.",
                                   layout=widgets.Layout(width="98%"))

        # Runs
        self.runs = widgets.SelectMultiple(options=[], rows=6, description="Compare",
                                           tooltip="Select runs (Ctrl/Shift-click) to overlay their curves",
                                           layout=widgets.Layout(width="520px"))
        self.select_all_button = widgets.Button(description="Select all", icon="check-square",
                                                layout=widgets.Layout(width="140px"))
        self.clear_button = widgets.Button(description="Clear runs", icon="trash",
                                           layout=widgets.Layout(width="140px"),
                                           tooltip="Forget every finished run of this session")
        self.clear_button.add_class("mlp-clear")
        self.select_all_button.on_click(lambda _: self.select_all())
        self.clear_button.on_click(lambda _: self.clear())
        self.runs.observe(self._on_selection, names="value")
        self.table = widgets.HTML("", layout=widgets.Layout(width="100%", overflow="auto"))
        self.table.add_class("mlp-runs")

        for control in (self.hidden, self.activation, self.init, self.learning_rate, self.momentum,
                        self.batch_size, self.epochs, self.patience, self.n_train, self.n_val, self.seed):
            control.observe(lambda _: self._check(), names="value")
        for control, css in ((self.hidden, "mlp-hidden"), (self.epochs, "mlp-epochs"),
                             (self.n_train, "mlp-n-train"), (self.n_val, "mlp-n-val"),
                             (self.batch_size, "mlp-batch-size")):
            control.add_class(css)

        controls = widgets.VBox([
            section("Network"), self.hidden, self.hidden_error, self.activation, self.init,
            section("Training"), self.learning_rate, self.momentum, self.batch_size, self.epochs, self.patience,
            section("Data"), self.n_train, self.n_val, self.seed,
            self.config_info,
            widgets.HBox([self.train_button, self.stop_button], layout=widgets.Layout(margin="8px 0 0 0")),
        ], layout=widgets.Layout(width="400px", min_width="400px"))
        live = widgets.VBox([self.plot, self.progress, self.status],
                            layout=widgets.Layout(flex="1 1 560px", min_width="480px"))
        runs = widgets.VBox([
            widgets.HTML("<b>Runs of this session</b> — select runs to overlay their curves "
                         "(solid: training, dashed: validation)."),
            widgets.HBox([self.runs, widgets.VBox([self.select_all_button, self.clear_button])]),
            self.table,
        ], layout=widgets.Layout(margin="12px 0 0 0"))
        self.widget = widgets.VBox([
            widgets.HBox([controls, live], layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start")),
            runs,
        ])
        self.widget.add_class("mlp-explorer")

        self._check()
        self._update_table()
        self._draw()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -------------------------------------------------------------------------------- settings

    def config(self) -> RunConfig:
        """The RunConfig the controls describe; ValueError (in the UI's words) if they are invalid."""
        hidden = parse_hidden_layers(self.hidden.value)
        try:
            return RunConfig(
                layer_sizes=hidden + (mlp_core.NUM_CLASSES,), activation=self.activation.value,
                init=self.init.value, learning_rate=float(self.learning_rate.value),
                momentum=float(self.momentum.value), batch_size=int(self.batch_size.value),
                max_epochs=int(self.epochs.value), n_train=int(self.n_train.value), n_val=int(self.n_val.value),
                patience=int(self.patience.value), seed=int(self.seed.value))
        except ValueError as exc:
            raise ValueError(_friendly(str(exc))) from None

    def _check(self) -> RunConfig | None:
        """Validate the controls, show what is wrong inline and enable Train only when all is well."""
        config = None
        try:
            parse_hidden_layers(self.hidden.value)
            self.hidden_error.value = ""
        except ValueError as exc:
            self.hidden_error.value = _error_html(str(exc))
        else:
            try:
                config = self.config()
            except ValueError as exc:
                self.config_info.value = _error_html(str(exc))
        if config is not None:
            sizes = " → ".join(map(str, (mlp_core.INPUT_SIZE,) + config.layer_sizes))
            weights = mlp_core.count_parameters(config.layer_sizes)
            self.config_info.value = (
                f"<div style='color:#555;font-size:12px;line-height:1.5'>{sizes}: {weights:,} weights<br>"
                f"{config.steps_per_epoch:,} steps per epoch, validation every "
                f"{config.validation_interval:,} steps<br>"
                f"Protocol: {PROTOCOL.n_train:,} training and {PROTOCOL.n_val:,} validation images</div>")
        elif self.hidden_error.value:
            self.config_info.value = ""
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
        self._thread = threading.Thread(target=self._work, args=(config,), name="mlp-explorer-train",
                                        daemon=True)
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
            self._set_runs_options(selected=())
        self._update_table()
        self._draw()

    def select_all(self) -> None:
        self.runs.value = tuple(value for _, value in self.runs.options)

    def results(self):
        """The table of every finished run: its settings, then mlp_core.results_table's metrics."""
        import pandas as pd
        with self._lock:
            histories = list(self.histories)
        columns = ["run", "hidden", "activation", "init", "lr", "γ", "batch", "epochs", "train n", "val n",
                   "seed"]
        metrics = mlp_core.results_table(histories)
        if metrics.empty:
            return pd.DataFrame(columns=columns + ["train loss", "val loss", "train acc", "val acc",
                                                   "best val loss", "best step", "steps", "stopped by",
                                                   "s / epoch"])
        settings = pd.DataFrame([{
            "hidden": _hidden_text(c), "activation": c.activation.replace("_", " "),
            "init": c.init.replace("_", "-"), "lr": c.learning_rate, "γ": c.momentum, "batch": c.batch_size,
            "epochs": c.max_epochs, "train n": c.n_train, "val n": c.n_val,
        } for c in (h.config for h in histories)])
        return pd.concat([metrics[["run"]], settings, metrics[["seed"]], metrics.drop(columns=["run", "seed"])],
                         axis=1)

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
            # train() warns (RuntimeWarning) when the loss diverges; show that inline, not on stderr
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                hist = mlp_core.train(config, data, progress=False, callback=self._on_validation,
                                      should_stop=self._stop_event.is_set)
            message, style = self._summary(hist, time.perf_counter() - started, caught)
        except Exception as exc:  # never a traceback in the page: say what went wrong
            message = _error_html(f"Run {config.name} failed: {_friendly(str(exc)) or type(exc).__name__}")
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
            + (" — stopping…" if self._stop_event.is_set() else ""))
        if time.monotonic() - self._last_draw >= self.redraw_interval:
            self._draw()

    def _summary(self, hist: History, seconds: float, caught) -> tuple[str, str]:
        c = hist.config
        reason = _STOP_REASONS.get(hist.stop_reason, hist.stop_reason).format(patience=c.patience)
        if hist.stop_reason == "non_finite_loss":
            detail = "; ".join(str(w.message) for w in caught) or "try a smaller learning rate"
            return _error_html(f"Run {c.name}: {reason}. {detail}"), "danger"
        final = hist.final
        text = (f"Run {c.name} {reason} after {hist.steps:,} steps in {seconds:.1f} s: validation loss "
                f"{final['val_loss']:.4f}, accuracy {100 * final['val_acc']:.2f} % "
                f"(training accuracy {100 * final['train_acc']:.2f} %).")
        return text, ("warning" if hist.stop_reason == "stopped" else "success")

    # -------------------------------------------------------------------------------- views

    def _set_runs_options(self, selected: tuple[int, ...]) -> None:
        self._syncing_selection = True
        try:
            self.runs.options = [(f"{h.config.name}  {mlp_core.describe(h.config)}, batch {h.config.batch_size}",
                                  _run_id(h)) for h in self.histories]
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
        percent = lambda v: "–" if math.isnan(v) else f"{100 * v:.2f} %"
        number = lambda v: "–" if math.isnan(v) else f"{v:.4f}"
        formatters = {"train loss": number, "val loss": number, "best val loss": number,
                      "train acc": percent, "val acc": percent, "lr": lambda v: f"{v:.3g}",
                      "γ": lambda v: f"{v:g}", "s / epoch": lambda v: "–" if math.isnan(v) else f"{v:.2f}"}
        body = df.to_html(index=False, border=0, classes="mlp-explorer-table", formatters=formatters,
                          na_rep="–")
        self.table.value = _CSS + body

    def _draw(self) -> None:
        """Render the selected runs and the run in progress into the plot image."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D

        with self._lock:
            self._last_draw = time.monotonic()
            chosen = set(self.runs.value)
            shown = [h for h in self.histories if _run_id(h) in chosen]
            if self._live is not None:
                shown.append(self._live)
            fig = Figure(figsize=(7.6, 3.0), dpi=120)
            FigureCanvasAgg(fig)
            # fixed margins: a constrained layout would double the cost of every live redraw
            ax_loss, ax_acc = fig.subplots(1, 2, gridspec_kw=dict(left=0.08, right=0.99, bottom=0.15, top=0.91,
                                                                   wspace=0.24))
            handles = []
            for h in shown:
                color = _color(_run_id(h))
                window = h.config.validation_interval
                mlp_core.plot_loss(h, ax=ax_loss, window=window, colors=[color], band=True)
                mlp_core.plot_accuracy(h, ax=ax_acc, colors=[color])
                live = " (training…)" if h is self._live else ""
                handles.append(Line2D([], [], color=color, lw=2, label=_legend_label(h.config) + live))
            ax_loss.set_title("Loss")
            ax_acc.set_title("Accuracy")
            if shown:
                _limit_loss_axis(ax_loss, shown)
                handles += [Line2D([], [], color="0.35", lw=1.2, label="training"),
                            Line2D([], [], color="0.35", lw=1.2, ls="--", label="validation")]
                ax_acc.legend(handles=handles, loc="lower right", fontsize=8, ncols=2 if len(handles) > 6 else 1)
            else:
                for ax in (ax_loss, ax_acc):
                    ax.set_xlabel("gradient step")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.text(0.5, 0.5, "Press Train to start a run,\nor select runs below to compare them",
                            ha="center", va="center", transform=ax.transAxes, color="0.5")
                ax_loss.set_ylabel("cross-entropy loss")
                ax_acc.set_ylabel("accuracy")
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
            self.plot.value = buffer.getvalue()  # inside the lock: an older image never replaces a newer one


def _legend_label(c: RunConfig) -> str:
    momentum = f", γ {c.momentum:g}" if c.momentum else ""
    return f"{c.name} [{_hidden_text(c)}], lr {c.learning_rate:.3g}{momentum}"


def _limit_loss_axis(ax, runs) -> None:
    """Keep the first validations' large losses from squashing the rest of the loss curves."""
    tails = [v for h in runs for v in h.val_loss[1:] if math.isfinite(v)]
    if len(tails) >= 2:
        ax.set_ylim(0, 1.15 * max(tails))


def _error_html(message: str) -> str:
    return (f"<div style='color:#b00020;font-size:12px;line-height:1.4'>⚠ "
            f"{html.escape(message)}</div>")
