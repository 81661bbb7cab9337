"""The run store and the experiment runner: reuse, damaged and foreign entries, what is never
stored, parallel runs equal serial ones, and Ctrl-C."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import mlp_core as mlp
import mlp_runs

QUICK = dict(n_train=640, n_val=500, max_epochs=2)
REPO = Path(__file__).resolve().parent.parent


class _Exploit:
    """Unpickling this creates a file: proof that a store entry's pickle was run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def store(tmp_path):
    return mlp_runs.RunStore(tmp_path / "runs")


def same_history(a: mlp.History, b: mlp.History) -> bool:
    return (
        a.train_loss == b.train_loss
        and a.val_loss == b.val_loss
        and a.final == b.final
        and a.stop_reason == b.stop_reason
        and all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights))
    )


def test_a_stored_run_is_reused(store, monkeypatch):
    cfg = mlp.RunConfig(**QUICK, name="first name")
    (trained,) = mlp_runs.run_experiments([cfg], store=store, n_jobs=1, progress=False)
    assert len(list(store.folder.glob("run-*.npz"))) == 1
    monkeypatch.setattr(mlp, "train", lambda *a, **k: pytest.fail("a stored run was trained again"))
    (again,) = mlp_runs.run_experiments(
        [cfg.replace(name="another name")], store=store, n_jobs=1, progress=False
    )
    assert same_history(again, trained) and again.config.name == "another name"
    assert again.step_times == trained.step_times and again.grad_norms == trained.grad_norms


def test_the_key_covers_the_config_and_the_core(store):
    a, b = mlp.RunConfig(**QUICK), mlp.RunConfig(**QUICK, seed=1)
    assert mlp_runs.run_key(a) == mlp_runs.run_key(a.replace(name="x")) != mlp_runs.run_key(b)
    assert len(mlp_runs.code_digest()) == 64  # sha256 of mlp_core.py


def test_runs_differing_only_in_name_train_once(store, monkeypatch):
    calls = []
    real = mlp_runs._train_quietly
    monkeypatch.setattr(
        mlp_runs, "_train_quietly", lambda c, **kw: calls.append(c) or real(c, **kw)
    )
    a, b = mlp_runs.run_experiments(
        [mlp.RunConfig(**QUICK, name="A"), mlp.RunConfig(**QUICK, name="B")],
        store=store,
        n_jobs=1,
        progress=False,
    )
    assert len(calls) == 1 and a.config.name == "A" and b.config.name == "B" and a.final == b.final


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle", "foreign"])
def test_a_damaged_or_foreign_entry_is_set_aside_and_retrained(store, damage):
    cfg = mlp.RunConfig(**QUICK)
    (good,) = mlp_runs.run_experiments([cfg], store=store, n_jobs=1, progress=False)
    path = store.path(cfg)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "garbage":
        path.write_bytes(b"not an npz file at all")
    elif damage == "pickle":  # an entry holding a pickle that would run code if it were unpickled
        with open(path, "wb") as fh:
            np.savez(fh, header=np.array([_Exploit(path.parent / "pwned")], dtype=object))
    else:  # a valid entry of another run under this run's name
        other = mlp.RunConfig(**QUICK, seed=5)
        mlp_runs.run_experiments([other], store=store, n_jobs=1, progress=False)
        os.replace(store.path(other), path)
    with pytest.warns(
        RuntimeWarning,
        match=rf"run store: {path.name} could not be used .*moved aside to "
        rf"{path.stem}.damaged and the run .* will be trained again",
    ):
        (again,) = mlp_runs.run_experiments([cfg], store=store, n_jobs=1, progress=False)
    assert same_history(again, good)
    assert (
        path.with_suffix(".damaged").exists() and store.load(cfg) is not None
    )  # the new entry is good
    if damage == "pickle":
        assert not (path.parent / "pwned").exists()


def test_unfinished_runs_are_never_stored(store, small_data):
    stopped = mlp.train(
        mlp.RunConfig(**QUICK), small_data, progress=False, should_stop=lambda: True
    )
    assert stopped.stop_reason == "stopped" and not store.save(stopped)
    with pytest.warns(RuntimeWarning, match="diverged"):
        (diverged,) = mlp_runs.run_experiments(
            [mlp.RunConfig(**QUICK, learning_rate=1e6)], store=store, n_jobs=1, progress=False
        )
    assert diverged.stop_reason == "diverged" and list(store.folder.glob("*.npz")) == []


def test_ctrl_c_stops_a_serial_sweep(store, monkeypatch):
    """The kernel's interrupt (KeyboardInterrupt) ends the whole sweep, not one run of it."""
    real = mlp.train
    started = []

    def interrupted_after_one_validation(config, callback, **kwargs):
        started.append(config)

        def report_then_interrupt(hist):
            callback(hist)
            raise KeyboardInterrupt

        return real(config, **kwargs, callback=report_then_interrupt)

    monkeypatch.setattr(mlp, "train", interrupted_after_one_validation)
    with pytest.raises(KeyboardInterrupt):
        mlp_runs.run_experiments(
            [mlp.RunConfig(**QUICK, seed=s) for s in range(3)],
            store=store,
            n_jobs=1,
            progress=False,
        )
    assert len(started) == 1 and list(store.folder.glob("*.npz")) == []


def test_parallel_runs_equal_serial_runs(tmp_path):
    configs = [mlp.RunConfig(**QUICK, seed=s) for s in (0, 1)]
    serial = mlp_runs.run_experiments(
        configs, store=mlp_runs.RunStore(tmp_path / "a"), n_jobs=1, progress=False
    )
    parallel = mlp_runs.run_experiments(
        configs, store=mlp_runs.RunStore(tmp_path / "b"), n_jobs=2, progress=False
    )
    for a, b in zip(serial, parallel):
        assert a.config == b.config and same_history(a, b)


SWEEP = textwrap.dedent("""
    import sys
    import mlp_core as mlp, mlp_runs
    if __name__ == "__main__":
        store = mlp_runs.RunStore(sys.argv[1])
        configs = [mlp.RunConfig(seed=s) for s in range(4)]
        try:
            mlp_runs.run_experiments(configs, store=store, progress=False)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
""")


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.mark.slow
def test_sigint_ends_a_parallel_sweep_within_seconds(tmp_path, mnist_path):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "runs")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:  # the workers have started
        time.sleep(0.2)
    time.sleep(2)  # they are training now
    workers = [p for p in _children(proc.pid)]
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, _ = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 3, "the sweep took longer than 3 s to stop"
    assert (
        proc.returncode == 130
        and "interrupted" in out
        and "leaked" not in out
        and "Traceback" not in out
    )
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], "a worker process outlived the sweep"
    assert list((tmp_path / "runs").glob("*.tmp")) == []


def test_changing_one_experiment_trains_only_its_runs(store, monkeypatch):
    configs = [mlp.RunConfig(**QUICK, seed=s, name="a") for s in (0, 1)] + [
        mlp.RunConfig(**QUICK, seed=0, name="b")
    ]
    mlp_runs.run_experiments(configs, store=store, n_jobs=1, progress=False)
    trained = []
    real = mlp_runs._train_quietly
    monkeypatch.setattr(
        mlp_runs, "_train_quietly", lambda c, **kw: trained.append(c.name) or real(c, **kw)
    )
    changed = configs[:2] + [configs[2].replace(learning_rate=0.05)]
    mlp_runs.run_experiments(changed, store=store, n_jobs=1, progress=False)
    assert trained == ["b"]
