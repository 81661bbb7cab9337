"""The plot helpers draw on the axes they are given and return them; accuracies are in percent."""

import dataclasses

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mlp_core as mlp  # noqa: E402
import mlp_plots as plots  # noqa: E402


@pytest.fixture(scope="module")
def runs(small_data):
    cfg = mlp.RunConfig(
        n_train=640, n_val=500, max_epochs=2, record_grad_norms=True, layer_sizes=(16, 16, 16, 10)
    )
    return [
        mlp.train(cfg.replace(seed=s, name=f"seed {s}"), small_data, progress=False) for s in (0, 1)
    ]


def test_smooth():
    steps, mean, std = plots.smooth(np.arange(10.0), window=4)
    np.testing.assert_allclose(mean, [1.5, 5.5])
    np.testing.assert_allclose(std, np.std([0, 1, 2, 3]))
    np.testing.assert_allclose(steps, [1.5, 5.5])
    assert (
        len(plots.smooth(np.arange(5.0), window=125)[0]) == 1
    )  # a window longer than the run: one block


def test_plot_loss_and_accuracy(runs):
    fig, (a, b) = plt.subplots(1, 2)
    assert plots.plot_loss(runs, a, window=4, labels=["x", "y"]) is a
    assert len(a.lines) == 4 and len(a.collections) == 2
    assert [line.get_label() for line in a.lines][:2] == ["x (training)", "x (validation)"]
    assert plots.plot_accuracy(runs[0], b, train=False) is b
    assert (
        len(b.lines) == 1
        and b.lines[0].get_label() == "seed 0"
        and b.get_ylabel() == "accuracy (%)"
    )
    np.testing.assert_allclose(b.lines[0].get_ydata(), 100 * np.asarray(runs[0].val_acc))
    assert a.xaxis.get_major_formatter()(25000, 0) == "25,000"
    plt.close(fig)


def test_report_figures(runs):
    colors = {"seed 0": "C0", "seed 1": "C1"}
    fig, axes = plots.variant_panels(
        {"left": runs, "right": runs[:1]}, colors, "loss", wide="seed 1"
    )
    assert len(axes) == 2 and fig.legends
    fig2 = plots.pair_figure(runs, ["C0", "C1"], ["a", "b"], "accuracy", skip=1)
    fig3 = plots.pair_figure(runs, ["C0", "C1"], ["a", "b"], "loss", log_val=True)
    fig4 = plots.grad_profile_figure(runs, ["a", "b"])
    fig5 = plots.grad_ratio_figure(runs, ["C0", "C1"], ["a", "b"])
    assert [t.get_text() for t in fig4.axes[0].get_xticklabels()][0] == "$W_{1}$"
    fig6 = plots.activation_figure()
    assert [
        line.get_label() for line in fig6.axes[1].lines if not line.get_label().startswith("_")
    ] == ["sigmoid", "improved sigmoid"]
    for f in (fig, fig2, fig3, fig4, fig5, fig6):
        plt.close(f)


def test_loss_accuracy_figure_without_pyplot(runs):
    """The explorer's figure: a bare Figure (pyplot knows nothing of it), one legend below the two
    panels naming each run and the line styles, a loss axis that a diverged run does not squash;
    with no runs, the given text in both panels and the axes' units still there."""
    figures = plt.get_fignums()
    huge = [50.0 + i for i in range(len(runs[1].val_loss))]
    diverged = dataclasses.replace(runs[1], stop_reason="diverged", val_loss=huge)
    fig = plots.loss_accuracy_figure(
        [runs[0], diverged], colors=["C3", "C4"], labels=["#1 one", "#2 two (training…)"]
    )
    assert plt.get_fignums() == figures and fig.canvas.__class__.__name__ == "FigureCanvasAgg"
    ax_loss, ax_acc = fig.axes
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["#1 one", "#2 two (training…)", "training", "validation"]
    assert ax_loss.get_ylim()[1] == pytest.approx(1.15 * max(runs[0].val_loss[1:]))
    assert ax_acc.get_ylabel() == "accuracy (%)" and ax_loss.get_xlabel() == "gradient step"
    assert {line.get_color() for line in ax_acc.lines} == {"C3", "C4"}
    empty = plots.loss_accuracy_figure([], colors=[], labels=[], empty_text="nothing yet")
    assert not empty.legends and [t.get_text() for t in empty.axes[0].texts] == ["nothing yet"]
    assert empty.axes[1].get_ylabel() == "accuracy (%)"
