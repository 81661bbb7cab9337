"""The interactive explorer without a browser: its widgets are driven from Python (no kernel is
needed; ipywidgets then uses a dummy comm) and the training thread is awaited with Explorer.wait.
Also the explorer's Voilà launcher (explorer/serve.py) and `make explore`, as far as they can be
checked without a server; tests/test_explorer_browser.py runs the server."""

import html
import importlib.util
import json
import math
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import mlp_core

REPO = Path(__file__).resolve().parents[1]


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
    assert explorer.wait(60), "the training thread did not end"


@pytest.fixture(scope="module")
def speed():
    """The explorer's speed model, calibrated on this machine."""
    import mlp_explorer
    import mlp_speed

    mlp_explorer.Explorer()  # starts the calibration, once per process
    assert mlp_explorer.WARMED_UP.wait(120), "calibration and warm-up did not end within 120 s"
    # again, with no training thread of an earlier test competing for the interpreter, as in a
    # kernel that has just shown its page
    mlp_speed.SPEED.calibrate()
    assert mlp_speed.SPEED.epoch_seconds(mlp_explorer.DEFAULTS) is not None
    return mlp_speed.SPEED


def settings(ui, **values):
    """Type values into the controls, as a user would: number boxes are text boxes."""
    for name, value in values.items():
        control = getattr(ui.controls, name)
        control.value = value if name in ("activation", "init") else str(value)


def quick(ui, *, n_train=300, n_val=500, epochs=1, hidden="16", **more):
    settings(ui, hidden=hidden, n_train=n_train, n_val=n_val, epochs=epochs, batch_size=32, **more)


def train(ui, timeout=60):
    assert ui.train(), ui.problems()
    assert ui.wait(timeout)
    return ui.histories[-1]


def shown(message_widget) -> bool:
    return message_widget.layout.display != "none" and "⚠" in message_widget.value


def test_stop_words_are_keyed_by_the_stop_reasons_of_mlp_core():
    """One home for the ways a run can end: the explorer words exactly mlp_core's."""
    from mlp_explorer import STOP_WORDS

    assert tuple(STOP_WORDS) == mlp_core.STOP_REASONS


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
        "-5",
        "abc",
        "64,",
        "1e3",
        "99999",
        ",".join(["8"] * 9),
    ):
        with pytest.raises(ValueError):
            parse_hidden_layers(bad)


def test_first_display_needs_neither_matplotlib_nor_pandas():
    """The page shows its controls before matplotlib and pandas are imported (about 1.5 s of the
    first page load): a fresh interpreter builds the explorer without loading either."""
    code = (
        "import sys, mlp_explorer\n"
        "ui = mlp_explorer.Explorer()\n"
        "loaded = [m for m in ('matplotlib', 'pandas', 'scipy', 'mlp_plots') if m in sys.modules]\n"
        "print(loaded, ui.live.placeholder.layout.display, ui.live.plot.layout.display)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[] None none", result.stdout + result.stderr


def test_train_adds_a_run_and_redraws(ui):
    quick(ui)
    assert ui.live.plot.layout.display == "none" and ui.live.placeholder.layout.display is None
    assert not ui.controls.train_button.disabled
    ui.controls.train_button.click()
    assert ui.running and ui.controls.train_button.disabled and not ui.controls.stop_button.disabled
    assert ui.wait(30)

    df = ui.results()
    assert len(df) == 1 and df.loc[0, "run"] == "#1"
    assert df.loc[0, "train n"] == 300 and df.loc[0, "val n"] == 500 and df.loc[0, "hidden"] == "16"
    for col in ("train loss", "val loss", "train acc (%)", "val acc (%)", "best val loss"):
        assert math.isfinite(df.loc[0, col]), col
    assert df.loc[0, "stopped by"] == "last epoch"
    hist = ui.histories[0]
    assert hist.config.layer_sizes == (16, 10) and hist.steps == 300 // 32
    assert bytes(ui.live.plot.value).startswith(b"\x89PNG")
    assert ui.live.plot.layout.display is None and ui.live.placeholder.layout.display == "none"
    assert ui.runs_panel.compare.value == (1,)  # the new run is shown
    assert (
        "<table" in ui.runs_panel.table.value
        and "#1" in ui.runs_panel.table.value
        and "last epoch" in ui.runs_panel.table.value
    )
    assert ui.live.progress.value == hist.steps and ui.live.progress.bar_style == "success"
    assert "#1 reached the last epoch" in ui.live.status.value
    assert not ui.controls.train_button.disabled and ui.controls.stop_button.disabled


def test_every_limit_is_stated_beside_its_box_and_defined_once(ui):
    from mlp_explorer import FIELDS

    assert len({f.name for f in FIELDS}) == len({f.css for f in FIELDS}) == len(FIELDS)
    for field in FIELDS:
        box = ui.controls.boxes[field.name]
        assert box is getattr(ui.controls, field.short) and field.css in box._dom_classes
        assert field.css == "mlp-" + field.short.replace("_", "-")  # derived, never typed
        assert box.description == field.label and field.hint == box.placeholder
        assert field.range_words() in box.tooltip  # the limits, in words, in the tooltip
        if field.upper is not None:
            assert field.why, f"{field.name}: an upper bound without its reason"
    hints = {f.name: f.hint for f in FIELDS}
    assert hints["max_epochs"] == "1 to 200" and hints["learning_rate"] == "> 0, ≤ 10"
    assert hints["momentum"] == "≥ 0, < 1" and hints["n_train"] == "1 to 60,000"
    assert hints["layer_sizes"] == "≤ 8 × 2,048" and hints["batch_size"] == "≤ training subset"


def test_every_invalid_box_is_marked_at_once_with_its_own_message(ui):
    settings(ui, momentum=1, epochs=0)
    problems = ui.problems()
    assert set(problems) == {"momentum", "max_epochs"}
    for name, box in (("momentum", ui.controls.momentum), ("max_epochs", ui.controls.epochs)):
        assert "mlp-invalid" in box._dom_classes and shown(ui.controls.messages[name])
        assert html.escape(problems[name]) in ui.controls.messages[name].value
    assert "epochs must be at least 1, got 0" in problems["max_epochs"]
    assert "momentum γ must be less than 1, got 1" in problems["momentum"]
    assert "Fix the 2 settings marked in red" in ui.controls.config_info.value
    assert ui.controls.train_button.disabled and ui.train() is False and not ui.running
    settings(ui, epochs=10)  # one fixed: the other stays marked, Train stays disabled
    assert (
        not shown(ui.controls.messages["max_epochs"])
        and "mlp-invalid" not in ui.controls.epochs._dom_classes
    )
    assert shown(ui.controls.messages["momentum"]) and ui.controls.train_button.disabled
    assert "Fix the setting marked in red" in ui.controls.config_info.value
    settings(ui, momentum=0.9)
    assert (
        not any(shown(m) for m in ui.controls.messages.values())
        and not ui.controls.train_button.disabled
    )
    assert "⚠" not in ui.controls.config_info.value


def test_six_problems_at_once_each_under_its_box(ui):
    settings(ui, hidden="64,,a", learning_rate=50, momentum=2, epochs="ten", n_val="lots")
    settings(ui, n_train=70000)
    assert set(ui.problems()) == {
        "layer_sizes",
        "learning_rate",
        "momentum",
        "max_epochs",
        "n_train",
        "n_val",
    }
    assert sum(shown(m) for m in ui.controls.messages.values()) == 6
    assert (
        ui.controls.config_info.value.count("⚠") == 1
        and "Fix the 6 settings" in ui.controls.config_info.value
    )


def test_train_is_disabled_before_any_message_appears(ui):
    """The page processes the button's and each message's updates separately, in the order the
    kernel sends them: Train must never be enabled while a message shows (the race the browser
    test once hit), so it is disabled first and enabled only after the last message is gone."""
    events = []
    ui.controls.train_button.observe(
        lambda c: events.append(("disabled", c["new"])), names="disabled"
    )
    for name, message in ui.controls.messages.items():
        message.observe(lambda c, name=name: events.append((name, bool(c["new"]))), names="value")
    settings(ui, epochs=0)
    settings(ui, epochs=10)
    assert events == [
        ("disabled", True),
        ("max_epochs", True),
        ("max_epochs", False),
        ("disabled", False),
    ], events


@pytest.mark.parametrize("text", ["64,,a", "0", "", "64, x", "4096", "8, 8, 8, 8, 8, 8, 8, 8, 8"])
def test_bad_hidden_layers_show_an_inline_error_and_start_nothing(ui, text):
    status = ui.live.status.value
    ui.controls.hidden.value = text
    assert (
        shown(ui.controls.messages["layer_sizes"])
        and "mlp-invalid" in ui.controls.hidden._dom_classes
    )
    assert ui.controls.train_button.disabled
    # a disabled button's handlers still run when it is clicked from Python
    ui.controls.train_button.click()
    assert not ui.running and ui.histories == [] and ui.live.status.value == status
    with pytest.raises(ValueError):
        ui.config()
    ui.controls.hidden.value = "60, 60"
    assert (
        not shown(ui.controls.messages["layer_sizes"])
        and "mlp-invalid" not in ui.controls.hidden._dom_classes
    )
    assert not ui.controls.train_button.disabled
    assert ui.config().layer_sizes == (60, 60, 10)


@pytest.mark.parametrize(
    "text, message",
    [
        ("-5", "widths must be positive: a layer needs at least 1 unit, got -5"),
        ("64, -3", "widths must be positive: a layer needs at least 1 unit, got -3"),
        ("0", "widths must be positive: a layer needs at least 1 unit, got 0"),
        ("64, x", "'x' is not a whole number: widths are positive integers, e.g. 64"),
        ("2.5", "'2.5' is not a whole number: widths are positive integers, e.g. 64"),
        ("²", "'²' is not a whole number: widths are positive integers, e.g. 64"),
    ],
)
def test_hidden_layers_messages_name_the_real_problem(ui, text, message):
    """A negative width is a whole number that is not positive, and is called so (issue 21,
    point 6: "-5" was "not a whole number")."""
    ui.controls.hidden.value = text
    assert ui.problems() == {"layer_sizes": message}
    assert html.escape(message) in ui.controls.messages["layer_sizes"].value


def test_batch_size_is_checked_against_the_training_subset(ui):
    settings(ui, n_train=500, batch_size=600)
    assert ui.problems() == {
        "batch_size": "batch size must be at most the training subset (500), got 600: every "
        "step takes this many images of the training subset"
    }
    assert (
        "mlp-invalid" in ui.controls.batch_size._dom_classes and ui.controls.train_button.disabled
    )
    settings(ui, n_train=1000)  # fixed by the other box
    assert ui.problems() == {} and not ui.controls.train_button.disabled


@pytest.mark.parametrize(
    "control, typed, message",
    [
        ("epochs", "0", "epochs must be at least 1, got 0"),
        ("epochs", "-5", "epochs must be at least 1, got -5"),
        ("epochs", "201", "epochs must be at most 200, got 201: the protocol trains at most 50"),
        ("epochs", "2.5", "epochs must be a whole number from 1 to 200, got '2.5'"),
        ("epochs", "", "enter the epochs: a whole number from 1 to 200"),
        ("learning_rate", "0", "learning rate α must be greater than 0, got 0"),
        ("learning_rate", "-1", "learning rate α must be greater than 0, got -1"),
        (
            "learning_rate",
            "50",
            "learning rate α must be at most 10, got 50: larger steps overshoot",
        ),
        (
            "learning_rate",
            "fast",
            "learning rate α must be a number such as 0.1 or 1e-3 (above 0 and at most 10), "
            "got 'fast'",
        ),
        ("learning_rate", "inf", "learning rate α must be a finite number above 0 and at most 10"),
        ("momentum", "1.5", "momentum γ must be less than 1, got 1.5: at γ = 1 past steps"),
        ("momentum", "1", "momentum γ must be less than 1, got 1"),
        ("momentum", "-0.1", "momentum γ must be at least 0, got -0.1"),
        (
            "n_train",
            "70000",
            "training subset must be at most 60,000, got 70,000: MNIST has 60,000 training images",
        ),
        (
            "n_val",
            "10001",
            "validation subset must be at most 10,000, got 10,001: the validation images are "
            "MNIST's 10,000 test images",
        ),
        ("n_val", "0", "validation subset must be at least 1, got 0"),
        ("patience", "0", "patience must be at least 1, got 0"),
        ("seed", "-1", "seed must be at least 0, got -1"),
    ],
)
def test_out_of_range_values_are_explained_not_clamped(ui, control, typed, message):
    box = getattr(ui.controls, control)
    name = next(name for name, b in ui.controls.boxes.items() if b is box)
    before = box.value
    box.value = typed
    assert box.value == typed  # nothing is changed behind the user's back
    assert ui.problems()[name].startswith(message), ui.problems()
    assert html.escape(message) in ui.controls.messages[name].value
    assert "mlp-invalid" in box._dom_classes
    assert ui.controls.train_button.disabled and ui.train() is False and not ui.running
    with pytest.raises(ValueError, match="must|enter"):
        ui.config()
    box.value = before
    assert not shown(ui.controls.messages[name]) and "mlp-invalid" not in box._dom_classes
    assert not ui.controls.train_button.disabled


def test_values_at_the_limits_are_accepted(ui):
    settings(ui, epochs=200, learning_rate=10, n_train="60,000", n_val=10000, seed=2**40)
    settings(ui, hidden=", ".join(["2048"] * 8), momentum=0.999, batch_size=60000)
    config = ui.config()
    assert (config.max_epochs, config.learning_rate, config.n_train, config.seed) == (
        200,
        10.0,
        60_000,
        2**40,
    )
    assert config.layer_sizes == (2048,) * 8 + (10,) and config.batch_size == 60_000
    assert not ui.controls.train_button.disabled and ui.problems() == {}


def test_time_limits_say_how_long_a_run_would_take_here(ui, speed):
    from mlp_explorer import LARGEST
    from mlp_explorer import _time_in_words as _duration

    ui.check()  # as when the calibration ends
    config = ui.config()
    assert (
        f"about {_duration(speed.epoch_seconds(config))} per epoch here"
        in ui.controls.config_info.value
    )
    total = speed.run_seconds(config.replace(max_epochs=200))
    settings(ui, epochs=1000)
    assert (
        f"200 epochs of these settings would take about {_duration(total)} here"
        in ui.problems()["max_epochs"]
    )
    settings(ui, epochs=10, hidden="4096")
    largest = _duration(speed.epoch_seconds(LARGEST))
    assert (
        f"8 layers of 2,048 (31 million weights) already take about {largest} an epoch on all "
        "60,000 training images here" in ui.problems()["layer_sizes"]
    )


def test_speed_estimates_follow_measured_runs(ui, speed):
    """The calibrated estimate of an epoch is of the right size (a generous factor of 4: the
    machine is shared), and a finished run moves the estimates towards its measured speed."""
    ui.redraw_interval = math.inf  # no live redraws: their time is not the network's
    quick(ui, hidden="128", n_train=5000, n_val=2000, epochs=2)
    estimated = speed.epoch_seconds(ui.config())
    hist = train(ui)
    measured = sum(hist.epoch_times) / len(hist.epoch_times)
    print(f"epoch of [128] on 5,000 images: estimated {estimated:.3f} s, measured {measured:.3f} s")
    assert measured / 4 < estimated < measured * 4
    corrected = speed.epoch_seconds(hist.config)
    assert abs(corrected - measured) < abs(estimated - measured) or estimated == measured


def test_dropdown_labels_fit_their_boxes(ui):
    """No "improved sigmoid 1.7159 tanh(2…" cut off (the browser test measures the rendered
    text)."""
    for dropdown in (ui.controls.activation, ui.controls.init):
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
    assert ui.runs_panel.compare.value == (1, 2)
    legend = [t.get_text() for t in ui.figure().legends[0].get_texts()]
    assert legend[:2] == ["#1 sigmoid, uniform init", "#2 improved sigmoid, fan-in init"], legend
    assert legend[2:] == ["training", "validation"]
    # the Compare list names every run in full, however they differ
    options = [label for label, _ in ui.runs_panel.compare.options]
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
    ui.runs_panel.compare.value = (2,)
    legend = [t.get_text() for t in ui.figure().legends[0].get_texts()]
    assert legend[0] == "#2 [16] improved sigmoid, fan-in init, lr 0.1, γ 0, batch 32"  # in full


def test_numbers_axes_and_stop_reasons_agree(ui):
    quick(ui, learning_rate="0.0316228")
    train(ui)
    fig = ui.figure()
    ax_loss, ax_acc = fig.axes
    assert ax_acc.get_ylabel() == "accuracy (%)" and ax_loss.get_xlabel() == "gradient step"
    top = max(max(line.get_ydata()) for line in ax_acc.get_lines())
    assert 1 < top <= 100  # percent, as the table and the status line
    acc = ui.results().loc[0, "val acc (%)"]
    assert (
        f"{acc:.2f} %" in ui.runs_panel.table.value
        and f"accuracy {acc:.2f} %" in ui.live.status.value
    )
    # the learning rate reads the same in the Compare list, the legend and the table: 3 digits
    assert "lr 0.0316," in ui.runs_panel.compare.options[0][0]
    assert "lr 0.0316," in fig.legends[0].get_texts()[0].get_text()
    assert (
        "<td>0.0316</td>" in ui.runs_panel.table.value
        and "0.0316228" not in ui.runs_panel.table.value
    )
    # how a run ended, in words
    from mlp_explorer import STOP_WORDS

    assert {ending.short for ending in STOP_WORDS.values()} >= {
        "last epoch",
        "early stopping",
        "stopped by you",
        "diverged",
    }
    assert (
        "max_epochs" not in ui.runs_panel.table.value and "last epoch" in ui.runs_panel.table.value
    )
    # an empty plot still says percent
    ui.runs_panel.compare.value = ()
    assert ui.figure().axes[1].get_ylabel() == "accuracy (%)"


def test_the_table_says_what_final_and_lowest_val_loss_are(ui):
    """ "lowest val loss" 0.7522 above "val loss" 0.7518 in one row is explained where it shows."""
    quick(ui)
    train(ui)
    table = ui.runs_panel.table.value
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    groups = re.findall(r"<th colspan='\d+' class='mlp-group'>([^<]*)</th>", table)
    assert groups == ["", "network", "training", "data", "final weights", "validations", "run"]
    assert {"val loss", "lowest val loss", "at step", "s / epoch"} <= set(headers)
    assert "evaluated once when the run ends, after its last step" in table
    assert "the final validation loss can sit a little above or below the lowest one" in table
    val_loss_header = re.search(r"<th title='([^']*)'>val loss</th>", table).group(1)
    assert "after its last step" in html.unescape(val_loss_header)


def test_early_stopping_is_named_in_words(ui):
    quick(ui, n_train=320, epochs=50, patience=1, learning_rate=0.5)
    hist = train(ui)
    assert hist.stop_reason == "early_stopping"
    assert ui.results().loc[0, "stopped by"] == "early stopping"
    assert "stopped early" in ui.live.status.value and ui.live.progress.bar_style == "success"


@pytest.mark.parametrize(
    "lr, momentum, activation", [(3.16, 0.9, "improved_sigmoid"), (10, 0, "improved_sigmoid")]
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
    runtime_warnings = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not runtime_warnings  # shown on the page instead
    assert hist.stop_reason == "diverged" and hist.message
    assert ui.live.progress.bar_style == "danger"  # never the green bar
    assert "⚠" in ui.live.status.value and "diverged" in ui.live.status.value
    assert "Lower the learning rate" in ui.live.status.value
    assert html.escape(hist.message) in ui.live.status.value
    assert ui.results().loc[0, "stopped by"] == "diverged"
    assert bytes(ui.live.plot.value).startswith(b"\x89PNG")  # a diverged run still plots
    assert not ui.controls.train_button.disabled  # and the next run can start


def test_stop_ends_a_run_early_and_keeps_its_history(ui):
    quick(ui, n_train=2000, epochs=200)
    ui.controls.train_button.click()
    deadline = time.monotonic() + 20
    while ui.live.progress.value == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ui.live.progress.value > 0, "no validation within 20 s"
    ui.controls.stop_button.click()
    assert "stopping…" in ui.live.status.value and ui.controls.stop_button.disabled  # at once
    assert ui.wait(20)
    hist = ui.histories[-1]
    assert hist.stop_reason == "stopped"
    assert 0 < hist.steps < 200 * (2000 // 32) and hist.val_steps
    assert ui.results().loc[0, "stopped by"] == "stopped by you"
    assert ui.live.progress.bar_style == "warning" and "was stopped by you" in ui.live.status.value
    # a stopped run has no final evaluation (mlp_core.train): its last validation is shown
    assert math.isnan(hist.final["val_loss"]) and "<td>–</td>" in ui.runs_panel.table.value
    assert f"at its last validation (step {hist.val_steps[-1]:,})" in ui.live.status.value
    assert f"{hist.val_loss[-1]:.4f}" in ui.live.status.value


@pytest.mark.slow
def test_stop_on_the_largest_network_takes_about_a_second(ui):
    """Stop during the first validation of 8 × 2,048 on all 60,000 images (a validation takes
    minutes here): the run ends within a few seconds. The bound is generous (the machine is
    shared); the measured time is printed."""
    settings(ui, hidden=", ".join(["2048"] * 8), n_train=60000, n_val=10000, epochs=1)
    assert ui.problems() == {}
    ui.controls.train_button.click()
    deadline = time.monotonic() + 120
    while "training…" not in ui.live.status.value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "training…" in ui.live.status.value, f"not training after 120 s: {ui.live.status.value}"
    time.sleep(2)  # step 0 takes a fraction of a second: now inside the first validation
    assert ui.running and ui.live.progress.value == 0, "the first validation already ended"
    started = time.perf_counter()
    ui.controls.stop_button.click()
    assert "stopping…" in ui.live.status.value  # the page says so at once
    assert ui.wait(30), "the run did not stop within 30 s"
    latency = time.perf_counter() - started
    print(f"stop latency on 8 x 2048, 60,000 images: {latency:.2f} s")
    assert latency < 10
    assert ui.histories[-1].stop_reason == "stopped"
    assert "was stopped by you" in ui.live.status.value


def test_selection_overlays_runs_and_clear_resets_everything(ui):
    quick(ui, n_train=200)
    for lr in (0.1, 0.5):
        settings(ui, learning_rate=lr)
        train(ui)
    assert len(ui.results()) == 2 and ui.runs_panel.compare.value == (1, 2)
    both = bytes(ui.live.plot.value)
    ui.runs_panel.compare.value = (2,)
    assert bytes(ui.live.plot.value) != both
    ui.select_all()
    assert ui.runs_panel.compare.value == (1, 2)

    empty = type(ui)()
    ui.runs_panel.clear_button.click()
    assert ui.results().empty and ui.histories == [] and ui.runs_panel.compare.options == ()
    assert "No runs yet" in ui.runs_panel.table.value
    # no message or green bar of a forgotten run under the empty plot
    assert ui.live.status.value == empty.live.status.value and "#2" not in ui.live.status.value
    assert ui.live.progress.value == 0 and ui.live.progress.bar_style == ""
    assert ui.live.plot.layout.display == "none" and ui.live.placeholder.layout.display is None
    train(ui)
    assert list(ui.results()["run"]) == ["#1"]  # numbering starts again


def test_clear_during_a_run_keeps_the_run_going(ui):
    quick(ui, n_train=2000, epochs=200)
    assert ui.train()
    ui.clear()
    assert ui.running and "Run #1" in ui.live.status.value
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
    assert "failed" in ui.live.status.value and "MNIST file not found" in ui.live.status.value
    assert "Traceback" not in ui.live.status.value
    assert (
        ui.live.progress.bar_style == "danger"
        and ui.histories == []
        and not ui.controls.train_button.disabled
    )


def test_notebook_is_clean_and_short():
    """Saved as JupyterLab writes it, without outputs; the introduction leaves room for the
    controls."""
    nb = json.loads((REPO / "notebooks" / "explorer.ipynb").read_text("utf-8"))
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
    for stale in ("results_table", "mlp_core.plot_loss", "describe", "at its next validation"):
        assert stale not in intro


def _load_serve():
    """explorer/serve.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("serve", REPO / "explorer" / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    return serve


def test_voila_server_settings():
    """explorer/serve.py: every setting that keeps the terminal quiet, the page local and the
    kernels few (the browser test checks what they do)."""
    serve = _load_serve()
    config = serve.config()
    assert config.KernelManager.transport == "ipc"
    assert config.Voila.tornado_settings == {"ws_ping_interval": 0}
    assert config.Voila.ip == "127.0.0.1"
    assert config.VoilaConfiguration.prelaunch_hook is serve.create_xsrf_cookie
    cull = config.MappingKernelManager
    assert cull.cull_idle_timeout + cull.cull_interval <= 60  # a lost page's kernel within a minute
    assert "cull_connected" not in cull  # open pages keep their kernels
    template = serve.TEMPLATES / "voila" / "templates" / config.VoilaConfiguration.template
    assert json.loads((template / "conf.json").read_text()) == {"base_template": "lab"}
    assert "cdn" in (template / "index.html.j2").read_text()  # it drops the CDN links
    assert config.VoilaConfiguration.extension_allowlist == serve.EXTENSIONS
    socket = (
        Path(config.Voila.connection_dir_root) / "voila_12345678" / f"kernel-{'0' * 36}-ipc-65535"
    )
    assert len(str(socket).encode()) < 107  # a Unix socket's path is at most 107 bytes


@pytest.mark.parametrize(
    "options, shown", [([], True), (["--debug"], True), (["--Voila.log_level=WARN"], False)]
)
def test_idle_culling_is_logged_at_info(capsys, options, shown):
    """jupyter_server's culling WARNING reaches the terminal as an INFO line, through Voilà's own
    logging configuration with serve.py's settings: shown at the default level and with --debug,
    not at WARN; a dead kernel's culling stays a warning. The browser test sees a real cull."""
    from voila.app import Voila

    Voila.clear_instance()
    app = Voila(config=_load_serve().config())
    app.parse_command_line(options)
    app.log.warning(
        "Culling '%s' kernel '%s' (%s) with %d connections due to %s seconds of inactivity.",
        *("idle", "python3", "k1", 0, 31),
    )
    app.log.warning("Culling '%s' dead kernel '%s' (%s).", "dead", "python3", "k2")
    lines = capsys.readouterr().err.splitlines()
    idle = "[Voila] Culling 'idle' kernel 'python3' (k1) with 0 connections due to 31 seconds"
    assert [line for line in lines if "(k1)" in line] == ([idle + " of inactivity."] * shown)
    assert "[Voila] WARNING | Culling 'dead' dead kernel 'python3' (k2)." in lines
    Voila.clear_instance()


def test_make_explore_runs_the_launcher():
    """`make explore` starts the server the browser tests start: explorer/serve.py."""
    recipe = re.search(r"^explore:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe, "no explore target in the Makefile"
    assert "explorer/serve.py" in recipe.group(1) and "voila " not in recipe.group(1)
