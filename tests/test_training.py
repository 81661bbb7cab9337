"""The trainer: the protocol's cadence, early stopping, determinism, failure handling, records."""

import dataclasses
import math
import warnings

import numpy as np
import pytest

import mlp_core as mlp
import mlp_train

QUICK = dict(n_train=640, n_val=500, max_epochs=3)  # 20 steps per epoch, validation every 4 steps


def test_protocol_cadence(small_data):
    cfg = mlp.RunConfig(**QUICK)
    assert cfg.steps_per_epoch == 20 and cfg.validation_interval == 4
    h = mlp.train(cfg, small_data, progress=False)
    assert h.steps == 60 and h.stop_reason == "max_epochs" and h.completed
    assert h.val_steps == list(range(0, 60, 4))
    assert len(h.train_loss) == 60 and len(h.epoch_times) == 3
    assert len(h.val_loss) == len(h.val_acc) == len(h.train_acc) == len(h.val_steps)
    assert all(math.isfinite(v) for v in h.train_loss)
    assert set(h.final) == {"train_loss", "val_loss", "train_acc", "val_acc"}
    # the final metrics are those of the final weights on the whole sets
    model = h.model()
    loss, acc = mlp.evaluate(
        model, mlp.Split(small_data.val.X, small_data.val.Y, small_data.val.labels)
    )
    assert h.final["val_loss"] == pytest.approx(loss) and h.final["val_acc"] == pytest.approx(acc)


def test_evaluate_takes_a_split_as_the_networks_dtype(small_data):
    """A float32 split evaluated by a float64 network is taken as float64 (as the forward pass
    takes its inputs), and a split of the wrong width is named."""
    model = mlp.MLP([16, 10], dtype="float64", rng=0)
    val = small_data.val
    as64 = mlp.Split(val.X.astype(np.float64), val.Y, val.labels)
    assert mlp.evaluate(model, val) == mlp.evaluate(model, as64)
    with pytest.raises(ValueError, match=r"shape \(N, 785\)"):
        mlp.evaluate(model, mlp.Split(val.X[:, :-1], val.Y, val.labels))


def test_the_full_protocol_numbers():
    cfg = mlp.RunConfig()
    assert (cfg.steps_per_epoch, cfg.validation_interval, cfg.batch_size, cfg.learning_rate) == (
        625,
        125,
        32,
        0.1,
    )
    assert (cfg.max_epochs, cfg.patience, cfg.n_train, cfg.n_val) == (50, 50, 20_000, 10_000)


def test_learning_happens(small_data):
    h = mlp.train(mlp.RunConfig(**QUICK, init="fan_in"), small_data, progress=False)
    assert h.val_loss[-1] < h.val_loss[0] and h.val_acc[-1] > 0.5


def scripted_validation(monkeypatch, losses):
    """Replace the evaluation of the validation set by a scripted sequence of validation losses
    (in the serial path, which calls evaluate(); the second-core path is tied to it below)."""
    values, real = iter(losses), mlp_train.evaluate

    def fake(model, split, ws=None, should_stop=None):
        if len(split) == 500:
            return next(values, 1.0), 0.5
        return real(model, split, ws, should_stop)

    monkeypatch.setattr(mlp_train, "evaluate", fake)


def test_early_stopping_after_exactly_patience_validations(monkeypatch, small_data):
    # improves for 10 validations (the 10th is the best), then never beats it (ties do not count)
    losses = [2.0 - 0.1 * i for i in range(10)] + [1.1, 1.5, 1.2] * 30
    scripted_validation(monkeypatch, losses)
    cfg = mlp.RunConfig(n_train=640, n_val=500, max_epochs=50)
    h = mlp.train(cfg, small_data, progress=False, second_core=False)
    assert h.stop_reason == "early_stopping"
    assert len(h.val_loss) == 10 + 50  # stopped right after the 50th non-improvement
    assert h.best_val_loss == pytest.approx(1.1) and h.best_step == 9 * 4
    assert h.val_steps[-1] == 59 * 4 and h.steps == 59 * 4 + 1


def test_an_improvement_resets_the_count(monkeypatch, small_data):
    losses = [1.0] + [2.0] * 49 + [0.5] + [3.0] * 50
    scripted_validation(monkeypatch, losses)
    config = mlp.RunConfig(n_train=640, n_val=500, max_epochs=50)
    h = mlp.train(config, small_data, progress=False, second_core=False)
    assert h.stop_reason == "early_stopping" and len(h.val_loss) == 101 and h.best_step == 50 * 4


def test_same_seed_same_history(small_data):
    cfg = mlp.RunConfig(**QUICK, momentum=0.9, learning_rate=0.02, seed=7)
    a, b = (mlp.train(cfg, small_data, progress=False) for _ in range(2))
    assert a.train_loss == b.train_loss and a.val_loss == b.val_loss and a.final == b.final
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa, wb)
    c = mlp.train(cfg.replace(seed=8), small_data, progress=False)
    assert c.train_loss != a.train_loss


def test_float64_and_float32_agree(small_data):
    cfg = mlp.RunConfig(**QUICK, init="fan_in")
    h32 = mlp.train(cfg, progress=False)
    h64 = mlp.train(cfg.replace(dtype="float64"), progress=False)
    np.testing.assert_allclose(h32.train_loss, h64.train_loss, rtol=1e-3)
    assert h32.final["val_acc"] == pytest.approx(h64.final["val_acc"], abs=0.01)


def test_a_non_finite_loss_is_divergence(small_data):
    cfg = mlp.RunConfig(**QUICK, learning_rate=1e30, activation="improved_sigmoid")
    with pytest.warns(
        RuntimeWarning,
        match=r"diverged: at step \d+ the loss was .*Lower the learning rate \(now 1e\+30\)",
    ):
        h = mlp.train(cfg, small_data, progress=False)
    assert (
        h.stop_reason == "diverged" and not h.completed and "Lower the learning rate" in h.message
    )
    assert not math.isfinite(h.train_loss[-1]) and h.steps < 60
    assert math.isnan(h.final["val_loss"])


def test_a_huge_loss_is_divergence_before_any_overflow(small_data):
    """lr 1e6 never overflows, it keeps the loss far above a uniform guess's: still divergence."""
    with pytest.warns(RuntimeWarning, match="diverged"):
        h = mlp.train(mlp.RunConfig(**QUICK, learning_rate=1e6), small_data, progress=False)
    assert h.stop_reason == "diverged" and h.val_loss[-1] > mlp.DIVERGED_LOSS
    assert h.val_steps[-1] == 20  # the first validation after the first epoch
    with pytest.warns(
        RuntimeWarning, match=r"Lower the learning rate \(now 1000\) or the momentum \(now 0.9\)"
    ):
        h = mlp.train(
            mlp.RunConfig(**QUICK, learning_rate=1e3, momentum=0.9), small_data, progress=False
        )
    assert h.stop_reason == "diverged"


def test_divergence_within_a_single_epoch_is_caught_at_the_end(small_data):
    with pytest.warns(RuntimeWarning, match="diverged"):
        h = mlp.train(
            mlp.RunConfig(**dict(QUICK, max_epochs=1), learning_rate=1e6),
            small_data,
            progress=False,
        )
    assert h.stop_reason == "diverged"


def test_step_times_exclude_validations(small_data):
    h = mlp.train(mlp.RunConfig(**QUICK), small_data, progress=False)
    assert len(h.step_times) == len(h.epoch_times) == 3
    assert all(0 < s < e for s, e in zip(h.step_times, h.epoch_times))


def test_training_runs_on_one_blas_thread(small_data):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []

    def blas_threads(hist):
        seen.append(
            {
                i["num_threads"]
                for i in threadpoolctl.threadpool_info()  # numpy's BLAS (scipy may bring its own)
                if i["user_api"] == "blas" and "numpy" in i["filepath"]
            }
        )

    mlp.train(
        mlp.RunConfig(n_train=640, n_val=500, max_epochs=1),
        small_data,
        progress=False,
        callback=blas_threads,
    )
    assert seen and all(s == {1} for s in seen)


def test_interrupt_returns_the_history_so_far(small_data):
    def interrupt(hist):
        if len(hist.val_loss) == 3:
            raise KeyboardInterrupt

    config = mlp.RunConfig(**QUICK)
    h = mlp.train(config, small_data, progress=False, callback=interrupt, second_core=False)
    assert h.stop_reason == "interrupted" and len(h.val_loss) == 3 and h.steps == 9
    # an unfinished run has no final metrics (they would take a whole evaluation); its last
    # validation says where it got
    assert all(math.isnan(v) for v in h.final.values()) and math.isfinite(h.val_loss[-1])


@pytest.mark.parametrize("ending", ["stopped", "interrupted"])
def test_an_unfinished_run_with_a_high_loss_is_not_called_diverged(small_data, ending):
    """A run the user stops early, while its loss is still above 23 (a huge learning rate's first
    steps), ends as the user asked: not relabelled "diverged" with advice to lower the rate."""

    first_validation_done = []

    def end_it(hist):
        if ending == "interrupted":
            raise KeyboardInterrupt
        first_validation_done.append(True)

    config = mlp.RunConfig(**QUICK, learning_rate=50.0)
    h = mlp.train(
        config,
        small_data,
        progress=False,
        callback=end_it,
        should_stop=lambda: bool(first_validation_done),
    )
    assert h.stop_reason == ending and h.message == ""
    assert h.val_loss[-1] > mlp.DIVERGED_LOSS  # the loss that used to trigger the relabelling


def test_stop_is_honoured_inside_an_evaluation(small_data):
    """should_stop() is asked between the chunks of an evaluation: a Stop during a long
    validation ends the run there, without finishing the validation."""
    calls = []

    def stop_in_the_first_validation():
        calls.append(1)
        return len(calls) == 2  # the first call comes before the first chunk of step 0's check

    config = mlp.RunConfig(**QUICK)
    h = mlp.train(
        config,
        small_data,
        progress=False,
        should_stop=stop_in_the_first_validation,
        second_core=False,
    )
    assert h.stop_reason == "stopped" and h.steps == 1 and h.val_loss == []


def test_huge_networks_evaluate_in_small_chunks():
    """A chunk of an evaluation costs at most about 2 GFLOP, so a Stop is seen within a fraction
    of a second even for the explorer's largest network; the protocol's networks use 2,048."""
    assert mlp_train.evaluation_rows(mlp.MLP([64, 10], rng=0)) == 2048
    assert mlp_train.evaluation_rows(mlp.MLP([64] * 10 + [10], rng=0)) == 2048
    huge = mlp.MLP([2048] * 8 + [10], rng=0, dtype="float32")
    assert mlp_train.evaluation_rows(huge) == 64


def test_should_stop_and_callback(small_data):
    seen = []
    h = mlp.train(
        mlp.RunConfig(**QUICK),
        small_data,
        progress=False,
        callback=lambda hist: seen.append(len(hist.val_loss)),
        should_stop=lambda: len(seen) >= 2,
        second_core=False,
    )
    assert h.stop_reason == "stopped" and seen == [1, 2] and h.steps == 5


def test_on_the_second_core_the_callback_sees_every_validation_one_interval_late(small_data):
    """A validation is recorded when the next one is due (the steps go on meanwhile): the
    callback still sees every validation once and in order, a Stop still ends the run."""
    seen = []
    h = mlp.train(
        mlp.RunConfig(**QUICK),
        small_data,
        progress=False,
        callback=lambda hist: seen.append((len(hist.val_loss), hist.steps)),
        should_stop=lambda: len(seen) >= 2,
        second_core=True,
    )
    assert h.stop_reason == "stopped" and [n for n, _ in seen] == [1, 2]
    assert [steps for _, steps in seen] == [5, 9]  # validation 0 at step 4, 4 at step 8
    assert h.val_steps == [0, 4] and h.steps == 9


def test_gradient_norms_are_recorded(small_data):
    cfg = mlp.RunConfig(**QUICK, layer_sizes=(64,) * 4 + (10,), record_grad_norms=True)
    h = mlp.train(cfg, small_data, progress=False)
    norms = np.asarray(h.grad_norms)
    assert norms.shape == (len(h.val_steps), 5) and len(h.init_grad_norms) == 5
    assert np.isfinite(norms).all() and (norms > 0).all()
    # sigmoid layers shrink the gradient on its way back: the first layer's is smallest at the start
    assert h.init_grad_norms[0] < h.init_grad_norms[-1]


def test_initial_model_is_where_training_starts(small_data):
    cfg = mlp.RunConfig(n_train=640, n_val=500, max_epochs=1, init="fan_in", seed=3)
    start = mlp.initial_model(cfg)
    h = mlp.train(cfg.replace(max_epochs=1), small_data, progress=False, should_stop=lambda: True)
    assert h.steps == 1  # one update of lr * gradient away from the initial weights
    moved = [np.abs(w1 - w0).max() for w0, w1 in zip(start.weights, h.weights)]
    assert 0 < max(moved) < 0.1


CLOCKS = ("epoch_times", "step_times")  # the only fields that may differ between the two paths


@pytest.mark.parametrize(
    "settings",
    [
        dict(n_train=640, n_val=500, max_epochs=3),
        dict(n_train=640, n_val=500, max_epochs=40, patience=3),  # early stopping mid-epoch
        dict(n_train=640, n_val=500, max_epochs=3, learning_rate=40.0),  # divergence
        dict(n_train=2050, n_val=2049, max_epochs=2, dtype="float64", layer_sizes=(16, 8, 10)),
        dict(
            n_train=640,
            n_val=500,
            max_epochs=4,
            activation="improved_sigmoid",
            init="fan_in",
            momentum=0.9,
            learning_rate=0.02,
            record_grad_norms=True,
        ),
    ],
    ids=["plain", "early-stopping", "diverged", "float64-tails", "tricks-grad-norms"],
)
def test_the_second_core_gives_the_serial_history_bit_for_bit(settings, mnist_path):
    """Validating on a second thread while the steps go on changes nothing but the clock: every
    recorded list, the stop, the final metrics and the weights are those of the serial path,
    also when a validation stops the run (the steps already taken beyond it are taken back)."""
    config = mlp.RunConfig(**settings)
    data = mlp.prepare_data(2050, config.dtype, 2049)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the divergence warning
        serial = mlp.train(config, data, progress=False, second_core=False)
        overlapped = mlp.train(config, data, progress=False, second_core=True)
    for field in dataclasses.fields(mlp.History):
        if field.name in CLOCKS + ("weights",):
            continue
        a, b = getattr(serial, field.name), getattr(overlapped, field.name)
        assert np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)) or a == b, (
            field.name
        )
    assert len(serial.epoch_times) == len(overlapped.epoch_times)
    for a, b in zip(serial.weights, overlapped.weights):
        assert np.array_equal(a, b, equal_nan=True)
    if settings.get("patience") == 3:
        assert serial.stop_reason == "early_stopping" and serial.steps % 20 != 0


def test_the_second_core_is_the_default_of_a_run_alone(small_data, monkeypatch):
    """With two cores and one BLAS thread a run validates on the second core; worker pools pass
    second_core=False; with one core, or several BLAS threads, the serial path is taken."""
    seen = []
    original = mlp_train._SecondCoreValidations.__init__

    def spy(self, *args, **kwargs):
        seen.append(True)
        original(self, *args, **kwargs)

    monkeypatch.setattr(mlp_train._SecondCoreValidations, "__init__", spy)
    monkeypatch.setattr(mlp_train.os, "sched_getaffinity", lambda pid: {0, 1})
    mlp.train(mlp.RunConfig(**QUICK), small_data, progress=False)
    assert seen == [True]
    mlp.train(mlp.RunConfig(**QUICK), small_data, progress=False, blas_threads=2)
    monkeypatch.setattr(mlp_train.os, "sched_getaffinity", lambda pid: {0})
    mlp.train(mlp.RunConfig(**QUICK), small_data, progress=False)
    assert seen == [True]


def _same_run(a: mlp.History, b: mlp.History) -> bool:
    """Every recorded number and the final weights equal, bit for bit (clocks aside)."""
    for f in dataclasses.fields(mlp.History):
        if f.name in CLOCKS + ("weights", "config"):
            continue
        if repr(getattr(a, f.name)) != repr(getattr(b, f.name)):
            return False
    return all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights))


def _numpy_blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]
    return {i["num_threads"] for i in blas}


@pytest.mark.parametrize("second_core", [False, True])
def test_two_trainings_in_two_threads_give_the_serial_runs(small_data, second_core):
    """The BLAS thread count is one setting of the process: a run that ends while another trains
    must not hand the other one the default thread count back (issue 21, point 3)."""
    import threading

    short = mlp.RunConfig(**dict(QUICK, max_epochs=1), record_grad_norms=True)
    long = mlp.RunConfig(**dict(QUICK, max_epochs=6), init="fan_in", record_grad_norms=True)
    serial = [
        mlp.train(c, small_data, progress=False, second_core=second_core) for c in (short, long)
    ]
    threads_seen = []
    results = {}

    def run(config):
        def seen(hist):
            threads_seen.append(_numpy_blas_threads())

        results[config] = mlp.train(
            config, small_data, progress=False, second_core=second_core, callback=seen
        )

    for _ in range(3):
        workers = [threading.Thread(target=run, args=(c,)) for c in (short, long)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert _same_run(results[short], serial[0]) and _same_run(results[long], serial[1])
    assert threads_seen and all(seen == {1} for seen in threads_seen)


def test_several_evaluation_threads_only_for_a_run_alone(small_data):
    import threading

    started, release = threading.Event(), threading.Event()

    def hold(hist):
        started.set()
        release.wait(30)

    worker = threading.Thread(
        target=mlp.train,
        args=(mlp.RunConfig(**QUICK), small_data),
        kwargs=dict(progress=False, callback=hold),
    )
    worker.start()
    try:
        assert started.wait(30)
        with pytest.raises(RuntimeError, match="another train\\(\\) is running in this process"):
            mlp.train(mlp.RunConfig(**QUICK), small_data, progress=False, blas_threads=2)
    finally:
        release.set()
        worker.join()
    assert _numpy_blas_threads() != {0}  # restored: the process's own setting again


RUN_DIGEST = """
import hashlib, sys
import numpy as np
import mlp_core as mlp
config = mlp.RunConfig(layer_sizes=(128, 64, 10), init="fan_in", n_train=1200, n_val=900,
                       max_epochs=2, record_grad_norms=True)
h = mlp.train(config, mlp.prepare_data(1200, "float32", 900), progress=False)
digest = hashlib.sha256(repr([h.train_loss, h.val_loss, h.grad_norms, h.init_grad_norms]).encode())
for w in h.weights:
    digest.update(w.tobytes())
print(digest.hexdigest())
"""


def test_a_run_does_not_depend_on_the_process_blas_threads(mnist_path):
    """Every product of a run takes one BLAS thread, so the machine's core count (OpenBLAS's
    default thread count) changes no bit of it."""
    import os
    import subprocess
    import sys

    digests = set()
    for threads in ("1", "2", "4"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads)
        done = subprocess.run(
            [sys.executable, "-c", RUN_DIGEST], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert len(digests) == 1
