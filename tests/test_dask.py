"""Sweeps on a Dask cluster (`pytest -k dask`): a LocalCluster of two worker processes trains a
small sweep bit for bit like the local pool, stores it on the client's side, is found through
MLP_DASK_SCHEDULER, and is left with no busy worker by Ctrl-C or an error; a missing extra, a
malformed address, a bad MLP_DASK_TIMEOUT, an unreachable scheduler or one that never answers is
one clear error (the last two after MLP_DASK_TIMEOUT seconds)."""

import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

# Dask reads its configuration folder at import: never $HOME (before anything imports dask)
_DASK_HOME = Path(tempfile.mkdtemp(prefix="mlp-test-dask-"))
os.environ.setdefault("DASK_CONFIG", str(_DASK_HOME / "config"))

import interrupts  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mlp_core as mlp  # noqa: E402
import mlp_runs  # noqa: E402
import mlp_store  # noqa: E402

TINY = dict(n_train=320, n_val=200, max_epochs=2)
LONG = dict(
    n_train=2000, n_val=500, max_epochs=2000, patience=10**6
)  # many minutes, unless stopped


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip(
        "distributed", reason=f"the Dask extra is not installed: {mlp_runs.DASK_EXTRA_HINT}"
    )
    import dask

    scratch = _DASK_HOME / "scratch"
    with dask.config.set({"temporary-directory": str(scratch)}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=":0",  # a free port: 8787 may be taken (another cluster, a suite)
            local_directory=str(scratch),
            silence_logs=logging.ERROR,
        )
        with cluster, distributed.Client(cluster, set_as_default=False) as dask_client:
            yield dask_client


def _fields(h: mlp.History) -> dict:
    """Everything a run computes (not its timings), weights as bytes."""
    return dict(
        config=h.config,
        lists=[getattr(h, name) for name in mlp_store._LISTS if not name.endswith("_times")],
        stop=(h.stop_reason, h.message, h.best_val_loss, h.best_step, h.final),
        weights=[(w.dtype, w.shape, w.tobytes()) for w in h.weights],
    )


def _idle(client, within: float = 10.0) -> bool:
    """True once no task is processing on the scheduler and no worker executes one."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(client.processing().values()) and not any(_executing(client)):
            return True
        time.sleep(0.2)
    return False


def test_a_dask_sweep_equals_the_local_pool_bit_for_bit(client, tmp_path):
    configs = [mlp.RunConfig(**TINY, seed=s, name=f"seed {s}") for s in (0, 1)]
    configs.append(mlp.RunConfig(**TINY, activation="improved_sigmoid", init="fan_in"))
    on_dask = mlp_runs.run_experiments(
        configs, store=mlp_store.RunStore(tmp_path / "dask"), client=client, progress=False
    )
    local = mlp_runs.run_experiments(
        configs, store=mlp_store.RunStore(tmp_path / "local"), n_jobs=2, progress=False
    )
    for a, b in zip(on_dask, local):
        assert a.completed and _fields(a) == _fields(b)
    # stored on the client's side, and found there again without the cluster
    stored = mlp_store.RunStore(tmp_path / "dask")
    assert all(config in stored for config in configs)
    again = mlp_runs.run_experiments(configs, store=stored, n_jobs=1, progress=False)
    assert [_fields(h) for h in again] == [_fields(h) for h in on_dask]


def test_mlp_dask_scheduler_sends_the_sweep_to_that_cluster(client, tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_DASK_SCHEDULER", client.scheduler.address)
    for local in ("_train_here", "_train_in_pool"):
        monkeypatch.setattr(mlp_runs, local, lambda *a: pytest.fail("trained on this machine"))
    log = []
    monkeypatch.setattr(mlp_runs.SweepProgress, "_print", lambda self, line: log.append(line))
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # not a terminal: plain lines
    configs = [mlp.RunConfig(**TINY, seed=s) for s in (3, 4)]
    histories = mlp_runs.run_experiments(configs, store=mlp_store.RunStore(tmp_path))
    sys.stderr.close()
    assert all(h.completed for h in histories)
    where = f"on the Dask cluster at {client.scheduler.address} (2 worker threads now)"
    assert log[0] == f"training: 2 runs to train {where}."
    assert log[-1].startswith("training: 2/2 runs done in ")


def _executing(client) -> list[int]:
    return list(client.run(lambda dask_worker: len(dask_worker.state.executing)).values())


def _interrupt_when_both_train(client, fired: list) -> None:
    """Ctrl-C (a real SIGINT) once both workers are training."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _executing(client) == [1, 1]:
            time.sleep(1.0)  # into their steps
            fired.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.1)


def test_ctrl_c_cancels_every_dask_task(client, tmp_path):
    """A real SIGINT to this process while both workers train. SIGINT raises KeyboardInterrupt
    here whatever the suite inherited (under nohup or `make test &` it arrives ignored)."""
    configs = [mlp.RunConfig(**LONG, seed=s) for s in range(3)]  # two train, one waits
    fired = []
    interrupter = threading.Thread(target=_interrupt_when_both_train, args=(client, fired))
    interrupter.start()
    try:
        with interrupts.sigint_raises(), pytest.raises(KeyboardInterrupt):
            mlp_runs.run_experiments(
                configs, store=mlp_store.RunStore(tmp_path), client=client, progress=False
            )
    finally:
        interrupter.join()
    assert fired, "the runs never started on the cluster"
    assert time.monotonic() - fired[0] < 30, "the sweep went on long after Ctrl-C"
    assert _idle(client), "a Dask worker was still busy after Ctrl-C"
    assert list(tmp_path.glob("*")) == []


def test_an_error_on_a_worker_cancels_the_rest(client, tmp_path):
    long_run = mlp.RunConfig(**LONG)
    impossible = mlp.RunConfig(**dict(TINY, n_train=70_000))  # MNIST has 60,000 training images
    with pytest.raises(ValueError, match="n_train"):
        mlp_runs.run_experiments(
            [long_run, impossible],
            store=mlp_store.RunStore(tmp_path),
            client=client,
            progress=False,
        )
    assert _idle(client), "a Dask worker was still busy after the error"


def test_a_missing_dask_extra_is_named(tmp_path, monkeypatch, closed_port):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    monkeypatch.setenv("MLP_DASK_SCHEDULER", f"tcp://127.0.0.1:{closed_port}")
    with pytest.raises(ImportError, match=r"dask\[distributed\]: pip install -e '\.\[dask\]'"):
        mlp_runs.run_experiments(
            [mlp.RunConfig(**TINY)], store=mlp_store.RunStore(tmp_path), progress=False
        )


@pytest.mark.parametrize(
    "address, problem",
    [
        ("garbage", "it names no host:port"),
        ("tcp://127.0.0.1:99999", "the port '99999' is not a number from 1 to 65535"),
        ("tcp://host:8786/", "the port '8786/' is not a number from 1 to 65535"),
        ("http://host:8786", "unknown scheme http://"),
    ],
)
def test_a_malformed_scheduler_address_makes_no_client(tmp_path, monkeypatch, address, problem):
    """A bad MLP_DASK_SCHEDULER is refused before a dask Client is made: a Client that fails on
    its address is left half-made for its finaliser, which waited 60 s and then printed a
    TimeoutError traceback."""
    distributed = pytest.importorskip("distributed", reason=mlp_runs.DASK_EXTRA_HINT)
    monkeypatch.setattr(distributed, "Client", lambda *a, **k: pytest.fail("a Client was made"))
    monkeypatch.setenv("MLP_DASK_SCHEDULER", address)
    message = f"MLP_DASK_SCHEDULER={address!r} is not a Dask scheduler address ({problem}): "
    with pytest.raises(ValueError, match=re.escape(message + "write it as tcp://host:8786")):
        mlp_runs.run_experiments(
            [mlp.RunConfig(**TINY)], store=mlp_store.RunStore(tmp_path), progress=False
        )


def test_an_unreachable_dask_scheduler_is_announced_and_named(
    tmp_path, monkeypatch, capsys, closed_port
):
    """Nothing listens at the address: the sweep says at once where it connects and how long it
    waits, and gives up after MLP_DASK_TIMEOUT seconds with a line naming the address."""
    pytest.importorskip("distributed", reason=f"needs the Dask extra: {mlp_runs.DASK_EXTRA_HINT}")
    address = f"tcp://127.0.0.1:{closed_port}"
    monkeypatch.setenv("MLP_DASK_SCHEDULER", address)
    monkeypatch.setenv("MLP_DASK_TIMEOUT", "2")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as failed:
        mlp_runs.run_experiments([mlp.RunConfig(**TINY)], store=mlp_store.RunStore(tmp_path))
    seconds = time.monotonic() - t0
    assert capsys.readouterr().err.startswith(
        f"Connecting to the Dask scheduler at {address} (MLP_DASK_SCHEDULER; giving up after 2 s, "
        "MLP_DASK_TIMEOUT)...\n"
    )
    assert str(failed.value).startswith(
        f"MLP_DASK_SCHEDULER={address}: no Dask scheduler could be reached (Timed out trying to "
        f"connect to {address} after 2 s). Start one there"
    )
    assert "set MLP_DASK_TIMEOUT to wait longer" in str(failed.value)
    assert seconds < 60, "far longer than the 2 s asked for"  # generous: a busy machine
    with capsys.disabled():
        print(f"\nunreachable scheduler, MLP_DASK_TIMEOUT=2: gave up after {seconds:.1f} s")


def test_a_listener_that_never_answers_is_given_up_on(tmp_path, monkeypatch, silent_port):
    """Something takes the connection but never answers (not a scheduler, or a hung one): dask's
    Client would wait for its handshake forever; the sweep gives up after MLP_DASK_TIMEOUT."""
    pytest.importorskip("distributed", reason=f"needs the Dask extra: {mlp_runs.DASK_EXTRA_HINT}")
    address = f"tcp://127.0.0.1:{silent_port}"
    monkeypatch.setenv("MLP_DASK_SCHEDULER", address)
    monkeypatch.setenv("MLP_DASK_TIMEOUT", "2")
    outcome = []

    def sweep() -> None:
        try:
            mlp_runs.run_experiments(
                [mlp.RunConfig(**TINY)], store=mlp_store.RunStore(tmp_path), progress=False
            )
        except Exception as exc:
            outcome.append(exc)

    t0 = time.monotonic()
    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    thread.join(120)  # generous; without a limit of its own the sweep would never end
    assert not thread.is_alive(), "the sweep still waits for the scheduler's handshake"
    print(f"silent listener, MLP_DASK_TIMEOUT=2: gave up after {time.monotonic() - t0:.1f} s")
    (error,) = outcome
    assert isinstance(error, RuntimeError) and str(error).startswith(
        f"MLP_DASK_SCHEDULER={address}: no Dask scheduler could be reached (nothing answered "
        "there as a Dask scheduler within 2 s)."
    )


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan", "1e400"])
def test_a_bad_dask_timeout_is_named(monkeypatch, value):
    monkeypatch.setenv("MLP_DASK_TIMEOUT", value)
    message = f"MLP_DASK_TIMEOUT must be a number of seconds > 0 such as 10, got '{value}'"
    with pytest.raises(ValueError, match=re.escape(message)):
        mlp_runs.dask_timeout()


def test_the_dask_timeout_is_ten_seconds_unless_set(monkeypatch):
    monkeypatch.delenv("MLP_DASK_TIMEOUT", raising=False)
    assert mlp_runs.dask_timeout() == 10
    monkeypatch.setenv("MLP_DASK_TIMEOUT", " 2.5 ")
    assert mlp_runs.dask_timeout() == 2.5


def test_nothing_to_train_needs_no_cluster(tmp_path, monkeypatch, closed_port):
    store = mlp_store.RunStore(tmp_path)
    (trained,) = mlp_runs.run_experiments(
        [mlp.RunConfig(**TINY)], store=store, n_jobs=1, progress=False
    )
    monkeypatch.setenv("MLP_DASK_SCHEDULER", f"tcp://127.0.0.1:{closed_port}")
    (again,) = mlp_runs.run_experiments([mlp.RunConfig(**TINY)], store=store, progress=False)
    assert np.array_equal(again.weights[0], trained.weights[0])
