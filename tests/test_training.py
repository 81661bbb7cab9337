"""The trainer: the protocol's cadence, early stopping, determinism, failure handling, records."""
import math

import numpy as np
import pytest

import mlp_core as mlp

QUICK = dict(n_train=640, n_val=500, max_epochs=3)  # 20 steps per epoch, validation every 4 steps


def test_protocol_cadence(small_data):
    cfg = mlp.RunConfig(**QUICK)
    assert cfg.steps_per_epoch == 20 and cfg.validation_interval == 4
    h = mlp.train(cfg, small_data, progress=False)
    assert h.steps == 60 and h.stop_reason == "max_epochs"
    assert h.val_steps == list(range(0, 60, 4))
    assert len(h.train_loss) == 60 and len(h.epoch_times) == 3
    assert len(h.val_loss) == len(h.val_acc) == len(h.train_acc) == len(h.val_steps)
    assert all(math.isfinite(v) for v in h.train_loss)
    assert set(h.final) == {"train_loss", "val_loss", "train_acc", "val_acc"}
    # the final metrics are those of the final weights on the whole sets
    model = h.model()
    loss, acc = mlp.evaluate(model, mlp.Split(small_data.val.X, small_data.val.Y, small_data.val.labels))
    assert h.final["val_loss"] == pytest.approx(loss) and h.final["val_acc"] == pytest.approx(acc)


def test_the_full_protocol_numbers():
    cfg = mlp.RunConfig()
    assert (cfg.steps_per_epoch, cfg.validation_interval, cfg.batch_size, cfg.learning_rate) == (625, 125, 32, 0.1)
    assert (cfg.max_epochs, cfg.patience, cfg.n_train, cfg.n_val) == (50, 50, 20_000, 10_000)


def test_learning_happens(small_data):
    h = mlp.train(mlp.RunConfig(**QUICK, init="fan_in"), small_data, progress=False)
    assert h.val_loss[-1] < h.val_loss[0] and h.val_acc[-1] > 0.5


def scripted_validation(monkeypatch, losses):
    """Replace the validation pass by a scripted sequence of validation losses."""
    values = iter(losses)

    def fake(model, hist, step, train_split, val_split, buf):
        hist.val_steps.append(step)
        hist.val_loss.append(next(values))
        hist.val_acc.append(0.5)
        hist.train_acc.append(0.5)
        hist.train_loss_full.append(1.0)

    monkeypatch.setattr(mlp, "_validate", fake)


def test_early_stopping_after_exactly_patience_validations(monkeypatch, small_data):
    # improves for 10 validations (the 10th is the best), then never beats it (ties do not count)
    losses = [2.0 - 0.1 * i for i in range(10)] + [1.1, 1.5, 1.2] * 30
    scripted_validation(monkeypatch, losses)
    cfg = mlp.RunConfig(n_train=640, n_val=500, max_epochs=50)
    h = mlp.train(cfg, small_data, progress=False)
    assert h.stop_reason == "early_stopping"
    assert len(h.val_loss) == 10 + 50                      # stopped right after the 50th non-improvement
    assert h.best_val_loss == pytest.approx(1.1) and h.best_step == 9 * 4
    assert h.val_steps[-1] == 59 * 4 and h.steps == 59 * 4 + 1


def test_an_improvement_resets_the_count(monkeypatch, small_data):
    losses = [1.0] + [2.0] * 49 + [0.5] + [3.0] * 50
    scripted_validation(monkeypatch, losses)
    h = mlp.train(mlp.RunConfig(n_train=640, n_val=500, max_epochs=50), small_data, progress=False)
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


def test_non_finite_loss_stops_with_a_warning(small_data):
    cfg = mlp.RunConfig(**QUICK, learning_rate=1e30, activation="improved_sigmoid")
    with pytest.warns(RuntimeWarning, match="learning rate .* is probably too high"):
        h = mlp.train(cfg, small_data, progress=False)
    assert h.stop_reason == "non_finite_loss"
    assert not math.isfinite(h.train_loss[-1]) and h.steps < 60
    assert math.isnan(h.final["val_loss"])


def test_interrupt_returns_the_history_so_far(small_data):
    def interrupt(hist):
        if len(hist.val_loss) == 3:
            raise KeyboardInterrupt

    h = mlp.train(mlp.RunConfig(**QUICK), small_data, progress=False, callback=interrupt)
    assert h.stop_reason == "interrupted" and len(h.val_loss) == 3 and h.steps == 9
    assert math.isfinite(h.final["val_loss"])


def test_should_stop_and_callback(small_data):
    seen = []
    h = mlp.train(mlp.RunConfig(**QUICK), small_data, progress=False,
                  callback=lambda hist: seen.append(len(hist.val_loss)), should_stop=lambda: len(seen) >= 2)
    assert h.stop_reason == "stopped" and seen == [1, 2] and h.steps == 5


def test_gradient_norms_are_recorded(small_data):
    cfg = mlp.RunConfig(**QUICK, layer_sizes=(64,) * 4 + (10,), record_grad_norms=True)
    h = mlp.train(cfg, small_data, progress=False)
    norms = np.asarray(h.grad_norms)
    assert norms.shape == (len(h.val_steps), 5) and len(h.init_grad_norms) == 5
    assert np.isfinite(norms).all() and (norms > 0).all()
    # sigmoid layers shrink the gradient on its way back: the first layer's is the smallest at the start
    assert h.init_grad_norms[0] < h.init_grad_norms[-1]


def test_parallel_runs_equal_serial_runs():
    configs = [mlp.RunConfig(**QUICK, seed=s) for s in (0, 1)]
    serial = mlp.run_experiments(configs, n_jobs=1)
    parallel = mlp.run_experiments(configs, n_jobs=2)
    for a, b in zip(serial, parallel):
        assert a.config == b.config and a.train_loss == b.train_loss and a.final == b.final


def test_tables(small_data):
    runs = [mlp.train(mlp.RunConfig(**QUICK, seed=s, name="net"), small_data, progress=False) for s in (0, 1)]
    df = mlp.final_table(runs)
    assert len(df) == 1 and df.loc[0, "seeds"] == 2 and " ± " in df.loc[0, "val loss"]
    mean = np.mean([r.final["val_loss"] for r in runs])
    assert df.loc[0, "val loss"].startswith(f"{mean:.4f}")
    single = mlp.final_table(runs[:1])
    assert " ± " not in single.loc[0, "val loss"]
    raw = mlp.results_table(runs)
    assert list(raw["seed"]) == [0, 1]
    table = mlp.Table(df, caption="Table 9.9: test")
    latex, html = table._repr_latex_(), table._repr_html_()
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex and "<table" in html and "Table 9.9" in html


def test_run_cache_reuses_identical_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_RUN_CACHE", str(tmp_path))
    cfg = mlp.RunConfig(**QUICK)
    first = mlp.run_experiments([cfg, cfg], n_jobs=1)
    assert len(list(tmp_path.glob("run-*.pkl"))) == 1 and first[0].train_loss == first[1].train_loss
    monkeypatch.setattr(mlp, "train", lambda *a, **k: pytest.fail("a cached run was trained again"))
    again = mlp.run_experiments([cfg], n_jobs=1)
    assert again[0].train_loss == first[0].train_loss and again[0].final == first[0].final


def test_runs_differing_only_in_name_train_once(monkeypatch):
    calls = []
    real_train = mlp.train
    monkeypatch.setattr(mlp, "train", lambda c, **k: calls.append(c) or real_train(c, **k))
    a, b = mlp.run_experiments([mlp.RunConfig(**QUICK, name="A"), mlp.RunConfig(**QUICK, name="B")], n_jobs=1)
    assert len(calls) == 1 and a.config.label == "A" and b.config.label == "B" and a.final == b.final


def test_n_seeds(monkeypatch):
    monkeypatch.delenv("MLP_SMOKE", raising=False)
    monkeypatch.delenv("MLP_SEEDS", raising=False)
    assert mlp.n_seeds(3) == 3
    monkeypatch.setenv("MLP_SMOKE", "1")
    assert mlp.n_seeds(3) == 1
    monkeypatch.setenv("MLP_SEEDS", "5")
    assert mlp.n_seeds(3) == 5
    monkeypatch.setenv("MLP_SEEDS", "zero")
    with pytest.raises(ValueError, match="MLP_SEEDS must be a positive integer, got 'zero'"):
        mlp.n_seeds()


def test_mean_std():
    assert mlp.mean_std([1.0, 3.0], ".1f") == "2.0 ± 1.4"
    assert mlp.mean_std([2.5], ".2f") == "2.50"
    assert mlp.mean_std([1.0, float("nan"), 3.0], ".0f") == "2 ± 1 (2 of 3 seeds)"
    assert mlp.mean_std([float("nan")]) == "–"


def test_a_run_claimed_by_another_process_is_waited_for(tmp_path, monkeypatch):
    import subprocess
    import threading
    monkeypatch.setenv("MLP_RUN_CACHE", str(tmp_path))
    cfg = mlp.RunConfig(**QUICK)
    finished = mlp.train(cfg, progress=False)
    path = mlp._cache_file(cfg)
    holder = subprocess.Popen(["sleep", "30"])  # a live process "training" the run
    try:
        path.with_suffix(".lock").write_text(str(holder.pid))
        threading.Timer(0.5, mlp._store_run, (path, finished)).start()
        monkeypatch.setattr(mlp, "train", lambda *a, **k: pytest.fail("the claimed run was trained again"))
        (h,) = mlp.run_experiments([cfg], n_jobs=1)
        assert h.train_loss == finished.train_loss
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_claim_is_taken_over(tmp_path, monkeypatch):
    import subprocess
    monkeypatch.setenv("MLP_RUN_CACHE", str(tmp_path))
    cfg = mlp.RunConfig(**QUICK)
    dead = subprocess.Popen(["true"])
    dead.wait()
    mlp._cache_file(cfg).with_suffix(".lock").write_text(str(dead.pid))
    (h,) = mlp.run_experiments([cfg], n_jobs=1)
    assert h.steps == 60 and mlp._cache_file(cfg).exists()
    assert not mlp._cache_file(cfg).with_suffix(".lock").exists()


def test_initial_model_is_where_training_starts(small_data):
    cfg = mlp.RunConfig(n_train=640, n_val=500, max_epochs=1, init="fan_in", seed=3)
    start = mlp.initial_model(cfg)
    h = mlp.train(cfg.replace(max_epochs=1), small_data, progress=False, should_stop=lambda: True)
    assert h.steps == 1  # one update of lr * gradient away from the initial weights
    moved = [np.abs(w1 - w0).max() for w0, w1 in zip(start.weights, h.weights)]
    assert 0 < max(moved) < 0.1
