"""A sweep far larger than usual says what it will cost before it starts (issue 21, point 7): the
plan line of mlp_runs.SweepProgress (a sweep's first progress line) names mlp_speed's estimate
when that is over LONG_SWEEP (30 minutes); a small plan's line names none, and an obviously small
plan does not even have the machine measured. No run is trained to its end here."""

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mlp_core as mlp
import mlp_runs
import mlp_speed

REPO = Path(__file__).resolve().parents[1]
QUICK = dict(n_train=320, n_val=100, max_epochs=2, layer_sizes=(16, 10))
PROTOCOL = mlp.RunConfig()  # 20,000 training images, up to 50 epochs
# the development machine's worker processes, as SpeedModel.calibrate measured them (rounded)
MEASURED_HERE = mlp_speed.SpeedModel.fixed(step_overhead=2e-4, step_cost=2e-10, eval_cost=5e-11)


@pytest.fixture(autouse=True)
def shown(monkeypatch):
    """Progress displays switched on (the test setup switches them off with TQDM_DISABLE)."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


@pytest.fixture
def never_calibrate(monkeypatch):
    """Any measurement of this machine fails the test."""

    def refuse(self):
        raise AssertionError("the machine was measured for an obviously small sweep")

    monkeypatch.setattr(mlp_speed.SpeedModel, "calibrate", refuse)


@pytest.fixture
def measured_here(monkeypatch):
    """The sweep estimates of a machine of known speed (this one's, as measured once)."""
    monkeypatch.setattr(mlp_speed, "WORKER_SPEED", MEASURED_HERE)
    return MEASURED_HERE


def plan_line(configs, mode="lines", **kwargs) -> str:
    """The first line a sweep of `configs` in 2 worker processes prints."""
    log = io.StringIO()
    progress = mlp_runs.SweepProgress(
        configs, where="in 2 worker processes", workers=2, file=log, mode=mode, **kwargs
    )
    progress.close("stopped")
    return log.getvalue().splitlines()[0]  # before a bar's first "\r"


def test_an_obviously_small_plan_is_not_measured_and_names_no_estimate(never_calibrate):
    configs = [mlp.RunConfig(**QUICK, seed=s) for s in range(20)]
    assert plan_line(configs) == "training: 20 runs to train in 2 worker processes."


def test_a_plan_of_a_few_minutes_names_no_estimate(measured_here):
    """33 protocol runs (the default report's size): a slow machine could take over 30 minutes,
    so the machine's measurement decides, and here it says a few minutes."""
    configs = [PROTOCOL.replace(seed=s) for s in range(33)]
    assert mlp_speed.SLOW_MACHINE.sweep_seconds(configs, 2) > mlp_runs.SweepProgress.LONG_SWEEP
    assert measured_here.sweep_seconds(configs, 2) < mlp_runs.SweepProgress.LONG_SWEEP
    assert plan_line(configs) == "training: 33 runs to train in 2 worker processes."


@pytest.mark.parametrize("mode", ["lines", "bar"])
def test_the_plan_line_of_a_large_plan_names_its_estimate(measured_here, mode):
    """1,100 protocol runs, as MLP_SEEDS=100 plans them: the plan line gives the estimate, in a
    log's plain lines and above a terminal's bar alike."""
    configs = [PROTOCOL.replace(seed=s) for s in range(1100)]
    seconds = measured_here.sweep_seconds(configs, 2)
    assert seconds > 2 * 3600
    line = plan_line(configs, mode)
    clock = re.fullmatch(
        r"training: 1100 runs to train in 2 worker processes; estimated to take up to "
        r"(\d+):(\d\d):(\d\d) here \(every run to its last epoch\)\.",
        line,
    )
    assert clock, line
    hours, minutes, secs = map(int, clock.groups())
    assert abs(3600 * hours + 60 * minutes + secs - seconds) <= 1


def test_a_dask_sweep_or_a_switched_off_display_measures_nothing(never_calibrate):
    configs = [PROTOCOL.replace(seed=s) for s in range(1100)]
    log = io.StringIO()
    mlp_runs.SweepProgress(configs, where="on a Dask cluster", workers=None, file=log, mode="lines")
    assert log.getvalue() == "training: 1100 runs to train on a Dask cluster.\n"
    quiet = mlp_runs.SweepProgress(configs, workers=2, enabled=False, file=log)
    assert quiet.mode == "off" and quiet.estimate_seconds is None


@pytest.mark.slow
def test_mlp_seeds_100_says_what_the_build_will_cost_before_training(tmp_path):
    """`MLP_SEEDS=100` make report, as a user starts it (an empty run store, output to a file):
    the sweep's first line names this machine's estimate, measured there and then. The build is
    killed as soon as that line is out."""
    env = {
        **os.environ,
        "MLP_SEEDS": "100",
        "MLP_RUN_STORE": str(tmp_path / "store"),
        "MLP_REPORT_BUILD": str(tmp_path / "build"),
    }
    for name in ("TQDM_DISABLE", "MLP_SMOKE", "MLP_DASK_SCHEDULER"):
        env.pop(name, None)
    command = [sys.executable, str(REPO / "report" / "build_report.py"), "--out", str(tmp_path)]
    build = subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its worker processes too are ended with os.killpg
    )
    started = time.monotonic()
    output = queue.Queue()  # its stderr lines, read in a thread: a silent build cannot hang this
    threading.Thread(
        target=lambda: [output.put(line) for line in build.stderr], daemon=True
    ).start()
    lines = []
    try:
        while not lines or "runs to train" not in lines[-1]:
            lines.append(output.get(timeout=max(0.1, 300 - (time.monotonic() - started))))
    except queue.Empty:
        pass
    finally:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait(30)
    lines = [line.rstrip("\n") for line in lines]
    print(f"plan line after {time.monotonic() - started:.1f} s: {lines[-1] if lines else None}")
    assert lines and lines[-1].startswith("training: 1100 runs to train in "), lines
    assert "; estimated to take up to " in lines[-1], lines
    assert "here (every run to its last epoch)." in lines[-1]
