"""The figures of the report and the explorer, drawn with matplotlib from training histories.

Every helper draws on the axes it is given (or a new figure) and returns them, so figures can be
composed; nothing changes matplotlib's global settings on import (mlp_report.setup_notebook does,
when called). Training loss is the per-step batch loss smoothed over blocks of steps; accuracies
are in percent; step axes carry thousands separators.
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, StrMethodFormatter

import mlp_core as mlp

STEPS = StrMethodFormatter("{x:,.0f}")  # gradient steps: 25,000 rather than 25000


def smooth(values: Sequence[float], window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation of a noisy per-step series over consecutive blocks of `window`
    steps: (centre step, mean, std), one point per full block."""
    v = np.asarray(values, dtype=np.float64)
    window = max(1, min(int(window), len(v))) if len(v) else 1
    blocks = v[: len(v) // window * window].reshape(-1, window)
    return (
        np.arange(len(blocks)) * window + (window - 1) / 2,
        blocks.mean(axis=1),
        blocks.std(axis=1),
    )


def _runs(histories) -> list[mlp.History]:
    return [histories] if isinstance(histories, mlp.History) else list(histories)


def _style(i: int, h: mlp.History, colors, labels) -> tuple[str, str]:
    return (
        colors[i] if colors is not None else f"C{i % 10}",
        labels[i] if labels is not None else h.config.label,
    )


def steps_axis(ax, log: bool = False, linear_until: float = 1.0):
    """A gradient-step x axis: thousands separators; `log` makes it linear up to `linear_until` and
    logarithmic beyond."""
    if log:
        ax.set_xscale("symlog", linthresh=linear_until, linscale=0.4)
        ax.set_xlim(left=0)
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    ax.xaxis.set_major_formatter(STEPS)
    ax.set_xlabel("gradient step")
    ax.grid(True, alpha=0.3)
    return ax


def plot_loss(
    histories,
    ax=None,
    *,
    window: int | None = None,
    train: bool = True,
    val: bool = True,
    band: bool = True,
    colors=None,
    labels=None,
):
    """Training loss (the batch loss smoothed over blocks of `window` steps, default: the validation
    interval, with a ±1 std band) as solid lines, validation loss dashed, against gradient steps."""
    ax = ax or plt.gca()
    for i, h in enumerate(_runs(histories)):
        color, name = _style(i, h, colors, labels)
        train_xy = None
        if train:
            s, m, sd = smooth(h.train_loss, window or h.config.validation_interval)
            train_xy = (s, m)
            if band:
                ax.fill_between(s, m - sd, m + sd, color=color, alpha=0.15, lw=0)
        _train_and_val(ax, color, name, train_xy, h.val_loss if val else None, h)
    ax.set_ylabel("cross-entropy loss")
    return steps_axis(ax)


def plot_accuracy(
    histories, ax=None, *, train: bool = True, val: bool = True, colors=None, labels=None
):
    """Training (solid) and validation (dashed) accuracy in % at every validation, against steps."""
    ax = ax or plt.gca()
    for i, h in enumerate(_runs(histories)):
        color, name = _style(i, h, colors, labels)
        train_acc = (h.val_steps, 100 * np.asarray(h.train_acc)) if train else None
        _train_and_val(ax, color, name, train_acc, 100 * np.asarray(h.val_acc) if val else None, h)
    ax.set_ylabel("accuracy (%)")
    return steps_axis(ax)


def _train_and_val(ax, color: str, name: str, train_xy, val_values, h: mlp.History) -> None:
    """One run's training curve (solid, at its own steps) and validation curve (dashed, at the
    validation steps) in one colour; the legend names the curve only when both are drawn."""
    both = train_xy is not None and val_values is not None
    if train_xy is not None:
        ax.plot(*train_xy, color=color, lw=1.2, label=f"{name} (training)" if both else name)
    if val_values is not None:
        label = f"{name} (validation)" if both else name
        ax.plot(h.val_steps, val_values, color=color, lw=1.2, ls="--", label=label)


def line_key(colors: dict[str, str], wide: str | None = None, width: float = 1.5) -> list[Line2D]:
    """Legend entries: one colour per network, `width` wide (`wide` drawn thicker), then solid =
    training and dashed = validation."""
    return [
        Line2D([], [], color=c, lw=3 if name == wide else width, label=name)
        for name, c in colors.items()
    ] + [
        Line2D([], [], color="0.35", lw=1.2, label="training"),
        Line2D([], [], color="0.35", lw=1.2, ls="--", label="validation"),
    ]


def zoom(
    series: Sequence[Sequence[float]], skip: int, pad: float = 0.08, lo=None, hi=None
) -> tuple[float, float]:
    """y-limits that fit every series after its first `skip` points, with a margin."""
    tail = np.concatenate(
        [np.asarray(s, dtype=float)[min(skip, max(len(s) - 1, 0)) :] for s in series]
    )
    tail = tail[np.isfinite(tail)]
    bottom, top = float(tail.min()), float(tail.max())
    span = (top - bottom) or 0.1 * abs(top) or 1.0
    bottom, top = bottom - pad * span, top + pad * span
    return (bottom if lo is None else max(bottom, lo)), (top if hi is None else min(top, hi))


def plain_log_labels(ax):
    """Log-scale y ticks written 0.2, 0.5, 1, 2, 5 instead of powers of ten."""

    def label(y, _):
        mantissa = y / 10 ** np.floor(np.log10(y)) if y > 0 else 0
        return f"{y:g}" if np.isclose(mantissa, [1, 2, 5]).any() else ""

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))
    return ax


def variant_panels(
    panels: dict[str, Sequence[mlp.History]],
    colors: dict[str, str],
    kind: str,
    *,
    wide: str | None = None,
    height: float = 3.3,
):
    """Two panels of runs side by side (title -> runs, coloured by run name; `wide` drawn thicker so
    that a run on top of it stays visible), one legend below them. `kind`: "loss" or "accuracy"."""
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5, height), sharex=True, sharey=True)
    for ax, (title, runs) in zip(axes, panels.items()):
        cs = [colors[h.config.name] for h in runs]
        if kind == "loss":
            plot_loss(runs, ax, band=False, colors=cs)
        else:
            plot_accuracy(runs, ax, colors=cs)
        ax.set_title(title)
        for line in ax.get_lines():
            if wide and line.get_color() == colors[wide]:
                line.set(lw=2.6, alpha=0.75, zorder=1.9)
    axes[1].set_ylabel("")
    fig.tight_layout()
    fig.legend(
        handles=line_key(colors, wide),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=4,
        frameon=False,
    )
    return fig, axes


def pair_figure(
    runs: Sequence[mlp.History],
    colors: Sequence[str],
    names: Sequence[str],
    kind: str,
    *,
    log_val: bool = False,
    skip: int = 0,
):
    """Training (left) and validation (right) curves of several networks, one legend above. `kind`
    "loss": smoothed training loss on a log scale; "accuracy": both accuracies. The y-ranges fit the
    values after the first `skip` validations; `log_val` puts the validation loss on a log scale."""
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(7.5, 3.0))
    if kind == "loss":
        plot_loss(runs, ax_t, val=False, band=False, colors=colors, labels=names)
        means = [smooth(h.train_loss, h.config.validation_interval)[1] for h in runs]
        low, high = 0.7 * min(m.min() for m in means), 1.4 * max(m.max() for m in means)
        decade = 10 ** np.floor(np.log10(low))  # extend down to a labelled power of ten when close
        ax_t.set(
            yscale="log",
            ylim=(decade if low / decade < 2.5 else low, high),
            title="training loss (moving mean, log scale)",
        )
        plot_loss(runs, ax_v, train=False, colors=colors, labels=names)
        if log_val:
            ax_v.set(
                yscale="log",
                title="validation loss (log scale)",
                ylim=(
                    0.85 * min(min(h.val_loss) for h in runs),
                    1.15 * max(max(h.val_loss) for h in runs),
                ),
            )
            plain_log_labels(ax_v)
        else:
            ax_v.set(ylim=zoom([h.val_loss for h in runs], skip, lo=0), title="validation loss")
    else:
        for ax, train, title, values in (
            (ax_t, True, "training accuracy", [h.train_acc for h in runs]),
            (ax_v, False, "validation accuracy", [h.val_acc for h in runs]),
        ):
            plot_accuracy(runs, ax, train=train, val=not train, colors=colors, labels=names)
            ax.set(ylim=zoom([100 * np.asarray(v) for v in values], skip, hi=100.2), title=title)
    ax_v.set_ylabel("")
    return _legend_above(fig, ax_t.get_legend_handles_labels()[0], columns=len(runs))


def activation_figure(names: Sequence[str] = ("sigmoid", "improved_sigmoid"), colors=("C0", "C2")):
    """Each activation of mlp_core.ACTIVATIONS (left) and its slope (right) on z in [-5, 5], with
    the lines z = ±1 and f = ±1 dotted."""
    z = np.linspace(-5, 5, 2001)
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.6), layout="constrained")
    for name, color in zip(names, colors):
        f, slope = mlp.ACTIVATIONS[name]
        axes[0].plot(z, f(z), color=color, label=name.replace("_", " "))
        axes[1].plot(z, slope(f(z)), color=color, label=name.replace("_", " "))
    for ax, ylabel in zip(axes, ("$f(z)$", "$f'(z)$")):
        for x in (-1, 1):
            ax.axvline(x, color="0.6", lw=0.8, ls=":")
        ax.set(xlabel="$z$", ylabel=ylabel)
        ax.grid(True, alpha=0.3)
    for y in (-1, 1):
        axes[0].axhline(y, color="0.6", lw=0.8, ls=":")
    axes[1].set_ylim(top=1.45)
    axes[1].legend(loc="upper right")
    return fig


def grad_profile_figure(runs: Sequence[mlp.History], titles: Sequence[str]):
    """Per layer (W1 = input ... WL = output), the gradient norm of each run at initialisation
    (bars) and its median with the 25-75 % range over the validations (dots), log scale, one
    panel per run."""
    fig, axes = plt.subplots(1, len(runs), figsize=(7.5, 2.9), sharey=True)
    for ax, h, title in zip(axes, runs, titles):
        init, during = np.asarray(h.init_grad_norms), np.asarray(h.grad_norms)
        layers = np.arange(1, len(init) + 1)
        median, (q1, q3) = np.median(during, axis=0), np.percentile(during, [25, 75], axis=0)
        ax.bar(layers, init, color="0.7")
        ax.errorbar(
            layers,
            median,
            yerr=[median - q1, q3 - median],
            fmt="o",
            color="black",
            ms=3.5,
            capsize=2,
            lw=1,
        )
        ax.set_yscale("log")
        ax.set_xticks(layers, [f"$W_{{{i}}}$" for i in layers], fontsize=7.5)
        ax.set(xlabel="weight matrix (input → output)", title=title)
        ax.grid(True, axis="y", alpha=0.3, which="both")
    axes[0].set_ylabel("gradient norm")
    during = "during training: median and 25–75 % range over validations"
    handles = [
        Patch(color="0.7", label="at initialisation"),
        Line2D([], [], color="black", marker="o", ms=3.5, lw=1, label=during),
    ]
    return _legend_above(fig, handles)


def _legend_above(fig, handles, columns: int = 2):
    """One legend of `handles` above the panels; the figure, laid out."""
    fig.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=columns, frameon=False
    )
    fig.tight_layout()
    return fig


def grad_ratio_figure(runs: Sequence[mlp.History], colors: Sequence[str], names: Sequence[str]):
    """Gradient norm of the input side over the output side at every validation: W2/W(L-1) solid,
    W1/WL dotted, one colour per run; log scale, 1 marked."""
    fig, ax = plt.subplots(figsize=(7.5, 2.7))
    for h, color, name in zip(runs, colors, names):
        n, last = np.asarray(h.grad_norms), len(h.grad_norms[0])
        inner = f"{name}: $W_2 / W_{{{last - 1}}}$"
        ax.plot(
            h.val_steps, n[:, 1] / n[:, -2], color=color, lw=1.1, marker="o", ms=2.5, label=inner
        )
        outer = f"{name}: $W_1 / W_{{{last}}}$"
        ax.plot(h.val_steps, n[:, 0] / n[:, -1], color=color, lw=0.9, ls=":", label=outer)
    ax.axhline(1, color="black", lw=0.8)
    ax.set(yscale="log", ylabel="gradient norm ratio")
    plain_log_labels(ax)
    steps_axis(ax, log=True, linear_until=runs[0].config.validation_interval)
    ax.grid(True, alpha=0.3, which="both")
    return _legend_above(fig, ax.get_legend_handles_labels()[0])


def loss_accuracy_figure(
    runs: Sequence[mlp.History],
    *,
    colors: Sequence[str],
    labels: Sequence[str],
    empty_text: str = "",
):
    """Loss (left, the training loss smoothed over each validation interval with a ±1 std band)
    and accuracy in % (right) of every run against gradient steps, one legend below them naming
    each run by its label in its colour; with no runs, `empty_text` in both panels. The figure
    is a bare matplotlib Figure with an Agg canvas, never pyplot's, so any thread can draw it (the
    explorer draws it while it trains); it grows by a line per row of its legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    handles = line_key(dict(zip(labels, colors)), width=2) if runs else []
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
    margins = dict(left=0.08, right=0.99, bottom=(0.45 + legend) / height, top=1 - 0.27 / height)
    ax_loss, ax_acc = fig.subplots(1, 2, gridspec_kw=dict(wspace=0.24, **margins))
    for h, color in zip(runs, colors):
        plot_loss(h, ax_loss, window=h.config.validation_interval, colors=[color], band=True)
        plot_accuracy(h, ax_acc, colors=[color])
    ax_loss.set_title("Loss")
    ax_acc.set_title("Accuracy")
    if runs:
        _fit_loss_axis(ax_loss, runs)
        fig.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, 0.0),
            ncols=ncol,
            fontsize=8,
            frameon=False,
        )
        return fig
    for ax in (ax_loss, ax_acc):
        steps_axis(ax)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_ylabel("accuracy (%)")
    return fig


def _fit_loss_axis(ax, runs: Sequence[mlp.History]) -> None:
    """Keep the first validations' large losses, and diverged runs, from squashing the others."""
    kept = [h for h in runs if h.stop_reason != "diverged"] or runs
    tails = [v for h in kept for v in h.val_loss[1:] if math.isfinite(v)]
    if len(tails) >= 2:
        ax.set_ylim(0, 1.15 * max(tails))


def log_steps_axis(ax, first: float, last: float):
    """A logarithmic gradient-step axis from `first` to `last` steps, with ticks at round step
    counts (12, 50, 125, 500, 2,000, 10,000) within it."""
    ticks = [t for t in (12, 50, 125, 500, 2_000, 10_000) if first <= t <= last]
    ax.set_xscale("log")
    ax.set(xlim=(first, last), xticks=ticks)
    ax.xaxis.set_major_formatter(STEPS)
    return ax
