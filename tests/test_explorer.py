"""The interactive explorer without a browser: its widgets are driven from Python (no kernel is
needed; ipywidgets then uses a dummy comm) and the training thread is awaited with Explorer.wait."""

import html
import math
import time
import warnings

import pytest

import mlp_core


@pytest.fixture(scope="module", autouse=True)
def _quiet_home(tmp_path_factory):
    """Keep matplotlib's and Jupyter's caches out of $HOME."""
    base = tmp_path_factory.mktemp("explorer-home")
    with pytest.MonkeyPatch.context() as mp:
        for var in (
            "MPLCONFIGDIR",
            "IPYTHONDIR",
            "JUPYTER_CONFIG_DIR",
            "JUPYTER_DATA_DIR",
            "JUPYTER_RUNTIME_DIR",
        ):
            mp.setenv(var, str(base / var.lower()))
        yield


@pytest.fixture
def ui():
    import mlp_explorer

    explorer = mlp_explorer.Explorer()
    yield explorer
    explorer.stop()
    assert explorer.wait(30), "the training thread did not end"


def settings(ui, **values):
    """Type values into the controls, as a user would: number boxes are text boxes."""
    for name, value in values.items():
        control = getattr(ui, name)
        control.value = value if name in ("activation", "init") else str(value)


def quick(ui, *, n_train=300, epochs=1, hidden="16", **more):
    settings(ui, hidden=hidden, n_train=n_train, n_val=500, epochs=epochs, batch_size=32, **more)


def train(ui, timeout=60):
    assert ui.train(), ui.config_info.value
    assert ui.wait(timeout)
    return ui.histories[-1]


def test_parse_hidden_layers():
    from mlp_explorer import parse_hidden_layers

    assert parse_hidden_layers("64") == (64,)
    assert parse_hidden_layers(" 60, 60 ") == (60, 60)
    for bad in (
        "",
        "  ",
        "64,,a",
        "0",
        "64, -3",
        "abc",
        "64,",
        "1e3",
        "99999",
        ",".join(["8"] * 9),
    ):
        with pytest.raises(ValueError):
            parse_hidden_layers(bad)


def test_train_adds_a_run_and_redraws(ui):
    quick(ui)
    empty_plot = bytes(ui.plot.value)
    assert not ui.train_button.disabled
    ui.train_button.click()
    assert ui.running and ui.train_button.disabled and not ui.stop_button.disabled
    assert ui.wait(30)

    df = ui.results()
    assert len(df) == 1 and df.loc[0, "run"] == "#1"
    assert df.loc[0, "train n"] == 300 and df.loc[0, "val n"] == 500 and df.loc[0, "hidden"] == "16"
    for col in ("train loss", "val loss", "train acc (%)", "val acc (%)"):
        assert math.isfinite(df.loc[0, col]), col
    assert df.loc[0, "stopped by"] == "last epoch"
    hist = ui.histories[0]
    assert hist.config.layer_sizes == (16, 10) and hist.steps == 300 // 32
    assert bytes(ui.plot.value) != bytes(empty_plot) and bytes(ui.plot.value).startswith(b"\x89PNG")
    assert ui.runs.value == (1,)  # the new run is shown
    assert "<table" in ui.table.value and "#1" in ui.table.value and "last epoch" in ui.table.value
    assert ui.progress.value == hist.steps and ui.progress.bar_style == "success"
    assert "#1 reached the last epoch" in ui.status.value
    assert not ui.train_button.disabled and ui.stop_button.disabled


@pytest.mark.parametrize("text", ["64,,a", "0", "", "64, x"])
def test_bad_hidden_layers_show_an_inline_error_and_start_nothing(ui, text):
    status = ui.status.value
    ui.hidden.value = text
    assert "⚠" in ui.config_info.value and "mlp-invalid" in ui.hidden._dom_classes
    assert ui.train_button.disabled
    ui.train_button.click()  # a disabled button's handlers still run when clicked from Python
    assert not ui.running and ui.histories == [] and ui.status.value == status
    with pytest.raises(ValueError):
        ui.config()
    ui.hidden.value = "60, 60"
    assert "⚠" not in ui.config_info.value and "mlp-invalid" not in ui.hidden._dom_classes
    assert not ui.train_button.disabled
    assert ui.config().layer_sizes == (60, 60, 10)


def test_invalid_combination_uses_runconfig_message(ui):
    settings(ui, n_train=500, batch_size=600)
    assert "batch size (600) must not exceed training subset (500)" in ui.config_info.value
    assert "mlp-invalid" in ui.batch_size._dom_classes
    assert ui.train_button.disabled
    assert ui.train() is False and not ui.running
    settings(ui, batch_size=50)
    assert "⚠" not in ui.config_info.value and not ui.train_button.disabled


@pytest.mark.parametrize(
    "control, typed, message",
    [
        ("epochs", "0", "epochs must be an integer ≥ 1, got 0"),
        ("epochs", "-5", "epochs must be an integer ≥ 1, got -5"),
        ("epochs", "2.5", "epochs must be a whole number, got '2.5'"),
        ("epochs", "", "enter the epochs"),
        ("learning_rate", "0", "learning rate α must be a finite number > 0, got 0.0"),
        ("learning_rate", "-1", "learning rate α must be a finite number > 0, got -1.0"),
        (
            "learning_rate",
            "fast",
            "learning rate α must be a number such as 0.1 or 1e-3, got 'fast'",
        ),
        ("learning_rate", "inf", "learning rate α must be a finite number > 0, got inf"),
        ("momentum", "1.5", "momentum γ must be in [0, 1), got 1.5"),
        ("momentum", "1", "momentum γ must be in [0, 1), got 1.0"),
        (
            "n_train",
            "70000",
            "training subset must be at most 60,000 (the MNIST training images), got 70,000",
        ),
        (
            "n_val",
            "10001",
            "validation subset must be at most 10,000 (the MNIST test images), got 10,001",
        ),
        ("n_val", "0", "validation subset must be an integer ≥ 1, got 0"),
        ("patience", "0", "patience must be an integer ≥ 1, got 0"),
        ("seed", "-1", "seed must be an integer ≥ 0, got -1"),
    ],
)
def test_out_of_range_values_are_explained_not_clamped(ui, control, typed, message):
    box = getattr(ui, control)
    before = box.value
    box.value = typed
    assert box.value == typed  # nothing is changed behind the user's back
    assert html.escape(message) in ui.config_info.value, ui.config_info.value
    assert "mlp-invalid" in box._dom_classes
    assert ui.train_button.disabled and ui.train() is False and not ui.running
    with pytest.raises(ValueError, match="must|enter"):
        ui.config()
    box.value = before
    assert "⚠" not in ui.config_info.value and "mlp-invalid" not in box._dom_classes
    assert not ui.train_button.disabled


def test_values_beyond_the_old_limits_are_accepted(ui):
    settings(ui, epochs=1000, learning_rate=50, n_train="20,000", seed=2**40)
    config = ui.config()
    assert (config.max_epochs, config.learning_rate, config.n_train, config.seed) == (
        1000,
        50.0,
        20_000,
        2**40,
    )
    assert not ui.train_button.disabled and "⚠" not in ui.config_info.value


def test_problems_are_explained_until_none_is_left(ui):
    settings(ui, epochs="ten", n_val="lots", momentum=2)
    text = ui.config_info.value
    assert (
        "epochs must be a whole number" in text
        and "validation subset must be a whole number" in text
    )
    assert text.count("⚠") == 2  # every box that does not hold a number; then RunConfig's checks
    settings(ui, epochs=10, n_val=500)
    assert (
        "momentum γ must be in [0, 1), got 2.0" in ui.config_info.value and ui.train_button.disabled
    )
    settings(ui, momentum=0.9)
    assert "⚠" not in ui.config_info.value and not ui.train_button.disabled


def test_dropdown_labels_fit_their_boxes(ui):
    """No "improved sigmoid 1.7159 tanh(2…" cut off (the browser test measures the rendered text)."""
    for dropdown in (ui.activation, ui.init):
        longest = max(len(label) for label, _ in dropdown.options)
        box = int(dropdown.layout.width.rstrip("px")) - int(
            dropdown.style.description_width.rstrip("px")
        )
        assert longest * 8 < box - 30, (longest, box)  # 8 px a character, 30 px for the arrow


def test_legend_labels_distinguish_activation_and_initialisation(ui):
    from mlp_explorer import run_labels

    quick(ui)
    first = train(ui)
    settings(ui, activation="improved_sigmoid", init="fan_in")
    second = train(ui)
    assert ui.runs.value == (1, 2)
    legend = [t.get_text() for t in ui.figure().legends[0].get_texts()]
    assert legend[:2] == ["#1 sigmoid, uniform init", "#2 improved sigmoid, fan-in init"], legend
    assert legend[2:] == ["training", "validation"]
    # the Compare list names every run in full, however they differ
    options = [label for label, _ in ui.runs.options]
    assert options == [
        "#1 [16] sigmoid, uniform init, lr 0.1, γ 0, batch 32",
        "#2 [16] improved sigmoid, fan-in init, lr 0.1, γ 0, batch 32",
    ]
    # what differs is named, whatever it is; always the run number
    assert run_labels([first.config, first.config.replace(name="#3", seed=4)]) == [
        "#1 seed 0",
        "#3 seed 4",
    ]
    assert run_labels(
        [first.config, second.config.replace(learning_rate=0.01, layer_sizes=(8, 8, 10))]
    ) == [
        "#1 [16] sigmoid, uniform init, lr 0.1",
        "#2 [8, 8] improved sigmoid, fan-in init, lr 0.01",
    ]
    ui.runs.value = (2,)
    legend = [t.get_text() for t in ui.figure().legends[0].get_texts()]
    assert (
        legend[0] == "#2 [16] improved sigmoid, fan-in init, lr 0.1, γ 0, batch 32"
    )  # one run: in full


def test_numbers_axes_and_stop_reasons_agree(ui):
    quick(ui, learning_rate="0.0316228")
    train(ui)
    fig = ui.figure()
    ax_loss, ax_acc = fig.axes
    assert ax_acc.get_ylabel() == "accuracy (%)" and ax_loss.get_xlabel() == "gradient step"
    top = max(max(line.get_ydata()) for line in ax_acc.get_lines())
    assert 1 < top <= 100  # percent, as the table and the status line
    acc = ui.results().loc[0, "val acc (%)"]
    assert f"{acc:.2f} %" in ui.table.value and f"accuracy {acc:.2f} %" in ui.status.value
    # the learning rate reads the same in the Compare list, the legend and the table: 3 digits
    assert "lr 0.0316," in ui.runs.options[0][0]
    assert "lr 0.0316," in fig.legends[0].get_texts()[0].get_text()
    assert "<td>0.0316</td>" in ui.table.value and "0.0316228" not in ui.table.value
    # how a run ended, in words
    from mlp_explorer import STOP_REASONS

    assert {words for words, _ in STOP_REASONS.values()} >= {
        "last epoch",
        "early stopping",
        "stopped by you",
        "diverged",
    }
    for code in ("max_epochs", "early_stopping", "stopped", "diverged", "interrupted"):
        assert code in STOP_REASONS
    assert "max_epochs" not in ui.table.value and "last epoch" in ui.table.value
    # an empty plot still says percent
    ui.runs.value = ()
    assert ui.figure().axes[1].get_ylabel() == "accuracy (%)"


def test_early_stopping_is_named_in_words(ui):
    quick(ui, n_train=320, epochs=50, patience=1, learning_rate=0.5)
    hist = train(ui)
    assert hist.stop_reason == "early_stopping"
    assert ui.results().loc[0, "stopped by"] == "early stopping"
    assert "stopped early" in ui.status.value and ui.progress.bar_style == "success"


@pytest.mark.parametrize(
    "lr, momentum, activation", [(3.16, 0.9, "improved_sigmoid"), (1e6, 0, "sigmoid")]
)
def test_a_diverged_run_is_shown_as_a_failure(ui, lr, momentum, activation):
    quick(
        ui,
        n_train=2000,
        epochs=3,
        learning_rate=lr,
        momentum=momentum,
        activation=activation,
        init="fan_in",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = train(ui)
    assert not [
        w for w in caught if issubclass(w.category, RuntimeWarning)
    ]  # shown on the page instead
    assert hist.stop_reason == "diverged" and hist.message
    assert ui.progress.bar_style == "danger"  # never the green bar
    assert "⚠" in ui.status.value and "diverged" in ui.status.value
    assert "Lower the learning rate" in ui.status.value
    assert html.escape(hist.message) in ui.status.value
    assert ui.results().loc[0, "stopped by"] == "diverged"
    assert bytes(ui.plot.value).startswith(b"\x89PNG")  # a diverged run still plots
    assert not ui.train_button.disabled  # and the next run can start


def test_stop_ends_a_run_early_and_keeps_its_history(ui):
    quick(ui, n_train=2000, epochs=300)
    ui.train_button.click()
    deadline = time.monotonic() + 20
    while ui.progress.value == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ui.progress.value > 0, "no validation within 20 s"
    ui.stop_button.click()
    assert ui.wait(20)
    hist = ui.histories[-1]
    assert hist.stop_reason == "stopped"
    assert 0 < hist.steps < 300 * (2000 // 32) and hist.val_steps
    assert math.isfinite(hist.final["val_loss"])
    assert ui.results().loc[0, "stopped by"] == "stopped by you"
    assert ui.progress.bar_style == "warning" and "stopped by you" in ui.status.value


def test_selection_overlays_runs_and_clear_resets_everything(ui):
    quick(ui, n_train=200)
    for lr in (0.1, 0.5):
        settings(ui, learning_rate=lr)
        train(ui)
    assert len(ui.results()) == 2 and ui.runs.value == (1, 2)
    both = bytes(ui.plot.value)
    ui.runs.value = (2,)
    assert bytes(ui.plot.value) != both
    ui.select_all()
    assert ui.runs.value == (1, 2)

    empty = type(ui)()
    ui.clear_button.click()
    assert ui.results().empty and ui.histories == [] and ui.runs.options == ()
    assert "No runs yet" in ui.table.value
    # no message or green bar of a forgotten run under the empty plot
    assert ui.status.value == empty.status.value and "#2" not in ui.status.value
    assert ui.progress.value == 0 and ui.progress.bar_style == ""
    assert bytes(ui.plot.value) == bytes(empty.plot.value)
    train(ui)
    assert list(ui.results()["run"]) == ["#1"]  # numbering starts again


def test_clear_during_a_run_keeps_the_run_going(ui):
    quick(ui, n_train=2000, epochs=300)
    assert ui.train()
    ui.clear()
    assert ui.running and "Run #1" in ui.status.value
    ui.stop()
    assert ui.wait(20)
    assert [h.config.name for h in ui.histories] == ["#1"]


def test_a_failing_run_is_reported_inline(ui, monkeypatch):
    import mlp_explorer

    def broken(config):
        raise mlp_core.MNISTDataError("train-images-idx3-ubyte.gz: MNIST file not found")

    monkeypatch.setattr(mlp_explorer, "_dataset", broken)
    quick(ui)
    assert ui.train() and ui.wait(10)
    assert "failed" in ui.status.value and "MNIST file not found" in ui.status.value
    assert "Traceback" not in ui.status.value
    assert ui.progress.bar_style == "danger" and ui.histories == [] and not ui.train_button.disabled


def test_notebook_is_clean_and_short():
    """Saved as JupyterLab writes it, without outputs; the introduction leaves room for the controls."""
    import json
    from pathlib import Path

    nb = json.loads(
        (Path(__file__).resolve().parents[1] / "notebooks" / "explorer.ipynb").read_text("utf-8")
    )
    assert nb["metadata"] == {
        "kernelspec": {
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
    }
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    intro = "".join(nb["cells"][0]["source"])
    visible = intro.split("<details>")[0]
    assert "<details>" in intro and "</details>" in intro and len(visible) < 400
    for stale in ("results_table", "mlp_core.plot_loss", "describe"):
        assert stale not in intro
