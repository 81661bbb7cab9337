"""Parallel sweeps: run_experiments on a Dask cluster (joblib's Dask backend) equals the serial runs,
and every run trains on one BLAS thread."""
import dataclasses
import sys

import numpy as np
import pytest

import mlp_core as mlp

TINY = dict(n_train=640, n_val=500, max_epochs=2)


def assert_same_history(a: mlp.History, b: mlp.History) -> None:
    """Every recorded number equal (only the wall-clock epoch times may differ)."""
    for f in dataclasses.fields(mlp.History):
        if f.name in ("epoch_times", "weights"):
            continue
        assert getattr(a, f.name) == getattr(b, f.name), f.name
    assert len(a.weights) == len(b.weights)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa, wb)


def test_dask_backend_equals_serial(monkeypatch, mnist_path):
    distributed = pytest.importorskip("distributed")
    joblib = pytest.importorskip("joblib")
    monkeypatch.delenv("MLP_RUN_CACHE", raising=False)  # train every run, on both paths
    configs = [mlp.RunConfig(**TINY, seed=0), mlp.RunConfig(**TINY, seed=1, activation="improved_sigmoid",
                                                             init="fan_in", momentum=0.9, learning_rate=0.02)]
    serial = mlp.run_experiments(configs, n_jobs=1)

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, death_timeout=60) as cluster, \
            distributed.Client(cluster, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        with joblib.parallel_config(backend="dask"):
            on_dask = mlp.run_experiments(configs)
        # the runs really went to the cluster's worker processes, which imported mlp_core for them
        assert any(client.run(lambda: "mlp_core" in sys.modules).values())

    for a, b in zip(serial, on_dask):
        assert a.config == b.config
        assert_same_history(a, b)


def test_training_runs_on_one_blas_thread(small_data):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []

    def blas_threads(hist):
        seen.append({i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"})

    mlp.train(mlp.RunConfig(n_train=640, n_val=500, max_epochs=1), small_data, progress=False, callback=blas_threads)
    assert seen and all(s == {1} for s in seen)
