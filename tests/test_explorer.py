"""The interactive explorer without a browser: its widgets are driven from Python (no kernel is
needed; ipywidgets then uses a dummy comm) and the training thread is awaited with Explorer.wait."""

import math
import time

import pytest

import mlp_core


@pytest.fixture(scope="module", autouse=True)
def _quiet_home(tmp_path_factory):
    """Keep matplotlib's and Jupyter's caches out of $HOME."""
    base = tmp_path_factory.mktemp("explorer-home")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MPLCONFIGDIR", "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
            mp.setenv(var, str(base / var.lower()))
        yield


@pytest.fixture
def ui():
    import mlp_explorer
    explorer = mlp_explorer.Explorer()
    yield explorer
    explorer.stop()
    assert explorer.wait(30), "the training thread did not end"


def quick(ui, *, n_train=300, epochs=1, hidden="16"):
    ui.hidden.value = hidden
    ui.n_train.value = n_train
    ui.n_val.value = 500
    ui.epochs.value = epochs
    ui.batch_size.value = 32


def test_parse_hidden_layers():
    from mlp_explorer import parse_hidden_layers
    assert parse_hidden_layers("64") == (64,)
    assert parse_hidden_layers(" 60, 60 ") == (60, 60)
    for bad in ("", "  ", "64,,a", "0", "64, -3", "abc", "64,", "1e3", "99999", ",".join(["8"] * 9)):
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
    for col in ("train loss", "val loss", "train acc", "val acc"):
        assert math.isfinite(df.loc[0, col]), col
    assert df.loc[0, "stopped by"] == "max_epochs"
    hist = ui.histories[0]
    assert hist.config.layer_sizes == (16, 10) and hist.steps == 300 // 32
    assert bytes(ui.plot.value) != bytes(empty_plot) and bytes(ui.plot.value).startswith(b"\x89PNG")
    assert ui.runs.value == (1,)                       # the new run is shown
    assert "<table" in ui.table.value and "#1" in ui.table.value
    assert ui.progress.value == hist.steps and ui.progress.bar_style == "success"
    assert "#1" in ui.status.value and not ui.train_button.disabled and ui.stop_button.disabled


@pytest.mark.parametrize("text", ["64,,a", "0", "", "64, x"])
def test_bad_hidden_layers_show_an_inline_error_and_start_nothing(ui, text):
    status = ui.status.value
    ui.hidden.value = text
    assert "⚠" in ui.hidden_error.value
    assert ui.train_button.disabled
    ui.train_button.click()  # a disabled button's handlers still run when clicked from Python
    assert not ui.running and ui.histories == [] and ui.status.value == status
    with pytest.raises(ValueError):
        ui.config()
    ui.hidden.value = "60, 60"
    assert ui.hidden_error.value == "" and not ui.train_button.disabled
    assert ui.config().layer_sizes == (60, 60, 10)


def test_invalid_combination_uses_runconfig_message(ui):
    ui.n_train.value = 500
    ui.batch_size.value = 600
    assert "batch size (600) must not exceed training subset (500)" in ui.config_info.value
    assert ui.train_button.disabled
    assert ui.train() is False and not ui.running
    ui.batch_size.value = 50
    assert "⚠" not in ui.config_info.value and not ui.train_button.disabled


def test_controls_have_bounds(ui):
    ui.epochs.value = 0
    ui.n_train.value = 10**9
    ui.momentum.value = 1.5
    assert ui.epochs.value >= 1 and ui.n_train.value <= 60_000 and ui.momentum.value < 1
    assert ui.config().momentum < 1


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
    assert ui.results().loc[0, "stopped by"] == "stopped"
    assert ui.progress.bar_style == "warning" and "stopped" in ui.status.value


def test_selection_overlays_runs_and_clear_empties_the_table(ui):
    quick(ui, n_train=200)
    for lr in (0.1, 0.5):
        ui.learning_rate.value = lr
        assert ui.train() and ui.wait(30)
    assert len(ui.results()) == 2 and ui.runs.value == (1, 2)
    both = bytes(ui.plot.value)
    ui.runs.value = (2,)
    assert bytes(ui.plot.value) != both
    ui.select_all()
    assert ui.runs.value == (1, 2)

    ui.clear_button.click()
    assert ui.results().empty and ui.histories == [] and ui.runs.options == ()
    assert "No runs yet" in ui.table.value
    assert ui.train() and ui.wait(30)
    assert list(ui.results()["run"]) == ["#1"]  # numbering starts again


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
