"""The plot helpers draw on the axes they are given and return them."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mlp_core as mlp  # noqa: E402


@pytest.fixture(scope="module")
def runs(small_data):
    cfg = mlp.RunConfig(n_train=640, n_val=500, max_epochs=2, record_grad_norms=True, layer_sizes=(16, 16, 10))
    return [mlp.train(cfg.replace(seed=s), small_data, progress=False) for s in (0, 1)]


def test_smooth():
    steps, mean, std = mlp.smooth(np.arange(10.0), window=4)
    np.testing.assert_allclose(mean, [1.5, 5.5])
    np.testing.assert_allclose(std, np.std([0, 1, 2, 3]))
    np.testing.assert_allclose(steps, [1.5, 5.5])


def test_plot_loss_and_accuracy(runs):
    fig, (a, b) = plt.subplots(1, 2)
    assert mlp.plot_loss(runs, a, window=4, labels=["x", "y"], ylim=(0, 3)) is a
    assert len(a.lines) == 4 and len(a.collections) == 2 and a.get_ylim() == (0, 3)
    assert [line.get_label() for line in a.lines][:2] == ["x (training)", "x (validation)"]
    assert mlp.plot_accuracy(runs[0], b, train=False) is b
    assert len(b.lines) == 1 and b.lines[0].get_label() == runs[0].config.label
    np.testing.assert_array_equal(b.lines[0].get_ydata(), runs[0].val_acc)
    plt.close(fig)


def test_plot_grad_norms(runs):
    fig, ax = plt.subplots()
    mlp.plot_grad_norms(runs[0], ax)
    assert [line.get_label() for line in ax.lines] == ["W1", "W2", "W3"] and ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="record_grad_norms=True"):
        mlp.plot_grad_norms(mlp.train(mlp.RunConfig(n_train=640, n_val=500, max_epochs=1), progress=False), ax)
    plt.close(fig)
