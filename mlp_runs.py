"""Training lists of runs, and the store that keeps every finished run.

`run_experiments(configs)` returns one History per RunConfig: runs found in the store are loaded,
the others are trained in worker processes (one per core) under one progress bar and stored as
soon as each finishes. Runs that differ only in their name are trained once.

The store is a folder (.cache/runs, or $MLP_RUN_STORE) with one entry per finished run: an .npz
file of plain arrays and a JSON header, read with allow_pickle=False, so reading an entry never
runs code. An entry's key covers the whole configuration and a digest of mlp_core.py, the code
that computes a run: editing notebooks, plots or the report layer reuses every run; editing the ML
core retrains them. Entries are written to a temporary file and renamed, so a reader sees a whole
entry or none. A damaged or foreign entry is named in a warning, moved aside and trained again.
Only runs that ended as configured (early stopping or the last epoch) are stored: interrupted,
stopped and diverged runs never are.

Ctrl-C (SIGINT, or a Jupyter kernel's interrupt) ends the whole sweep within a second or two: the
workers, which ignore SIGINT themselves, are terminated, the runs finished so far stay in the
store, and KeyboardInterrupt is raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import mlp_core as mlp

REPO = Path(__file__).resolve().parent
FORMAT = 1  # version of the entry layout; entries of another version are trained again
_LISTS = (
    "train_loss",
    "val_steps",
    "train_loss_full",
    "train_acc",
    "val_loss",
    "val_acc",
    "grad_norms",
    "init_grad_norms",
    "epoch_times",
    "step_times",
)


def store_dir() -> Path:
    """The run store: $MLP_RUN_STORE if set, else .cache/runs in the project."""
    return Path(os.environ.get("MLP_RUN_STORE") or REPO / ".cache" / "runs")


@functools.cache
def code_digest() -> str:
    """SHA-256 of mlp_core.py: a stored run is reused only with the code that computed it."""
    return hashlib.sha256((REPO / "mlp_core.py").read_bytes()).hexdigest()


def _config_dict(config: mlp.RunConfig) -> dict:
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in dataclasses.asdict(config).items()
        if k != "name"
    }


def run_key(config: mlp.RunConfig) -> str:
    """The store key of a run: its whole configuration (but its name) and the ML core's digest."""
    text = json.dumps(
        {"config": _config_dict(config), "code": code_digest(), "format": FORMAT}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _pack(h: mlp.History) -> dict[str, np.ndarray]:
    header = dict(
        format=FORMAT,
        key=run_key(h.config),
        config=_config_dict(h.config),
        name=h.config.name,
        stop_reason=h.stop_reason,
        message=h.message,
        best_val_loss=h.best_val_loss,
        best_step=h.best_step,
        final=h.final,
        n_weights=len(h.weights),
    )
    arrays = {
        name: np.asarray(getattr(h, name), dtype=np.int64 if name == "val_steps" else np.float64)
        for name in _LISTS
    }
    arrays.update({f"w{i}": w for i, w in enumerate(h.weights)})
    return dict(arrays, header=np.array(json.dumps(header)))


def _unpack(data, key: str) -> mlp.History:
    header = json.loads(str(data["header"]))
    if header.get("format") != FORMAT or header.get("key") != key:
        raise ValueError(f"it belongs to another run or format (key {header.get('key')!r})")
    config = mlp.RunConfig(
        **dict(
            header["config"],
            layer_sizes=tuple(header["config"]["layer_sizes"]),
            name=header["name"],
        )
    )
    if run_key(config) != key:
        raise ValueError("its configuration does not match its key")
    lists = {name: data[name].tolist() for name in _LISTS}
    weights = [data[f"w{i}"] for i in range(header["n_weights"])]
    return mlp.History(
        config=config,
        **lists,
        stop_reason=header["stop_reason"],
        message=header["message"],
        best_val_loss=header["best_val_loss"],
        best_step=header["best_step"],
        final=header["final"],
        weights=weights,
    )


class RunStore:
    """Finished runs on disk, one .npz entry per run, keyed by run_key(config)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else store_dir()

    def path(self, config: mlp.RunConfig) -> Path:
        return self.folder / f"run-{run_key(config)}.npz"

    def load(self, config: mlp.RunConfig) -> mlp.History | None:
        """The stored run of `config` (named as `config`), or None. A damaged or foreign entry is
        moved aside with a warning, so the run is trained again."""
        path = self.path(config)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                hist = _unpack(data, run_key(config))
        except Exception as exc:  # any unreadable entry: never a crash, never code run
            aside = path.with_suffix(".damaged")
            os.replace(path, aside)
            warnings.warn(
                f"run store: {path.name} could not be used ({type(exc).__name__}: {exc}); it was "
                f"moved aside to {aside.name} and the run ({config.label}) will be trained again.",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        return dataclasses.replace(hist, config=config)

    def save(self, hist: mlp.History) -> bool:
        """Store a finished run atomically; False (nothing written) for a run that did not complete."""
        if not hist.completed:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **_pack(hist))
            os.replace(tmp, self.path(hist.config))
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

    def __contains__(self, config: mlp.RunConfig) -> bool:
        return self.path(config).exists()


# ---- training in worker processes -----------------------------------------------------------------


def _worker_init() -> None:
    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    tqdm.set_lock(
        threading.RLock()
    )  # not tqdm's default multiprocessing lock, which a killed worker would leak


@contextlib.contextmanager
def _no_interrupts():
    """Hold Ctrl-C back while the workers are ended, so that it cannot leave one running; a Ctrl-C
    that came meanwhile is raised afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(*caught[0])  # the default handler raises KeyboardInterrupt


def _describe(config: mlp.RunConfig) -> str:
    return f"{config.label}, seed {config.seed}"


def _train_quietly(config: mlp.RunConfig) -> mlp.History:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # run_experiments repeats a divergence warning, once
        return mlp.train(config, progress=False)


def _progress(total: int, desc: str, enabled: bool):
    """One bar over the runs: a widget in Jupyter, a line on a terminal (redrawn rarely in a log file)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="run",
        disable=not enabled or total == 0,
        leave=True,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30,
        bar_format="{desc}: {n}/{total} runs |{bar}| {elapsed} elapsed, ~{remaining} left{postfix}",
    )


def _cost(config: mlp.RunConfig) -> float:
    """A rough relative cost of a run, to start the longest first (better load balance)."""
    return mlp.count_parameters(config.layer_sizes) * config.max_epochs * config.n_train


def run_experiments(
    configs: Sequence[mlp.RunConfig],
    *,
    n_jobs: int | None = None,
    store: RunStore | None = None,
    progress: bool = True,
    on_done: Callable[[mlp.History, bool], None] | None = None,
    desc: str = "training",
) -> list[mlp.History]:
    """One History per config, in order: loaded from the store, or trained and then stored.

    Missing runs are trained in `n_jobs` worker processes (default: one per core; 1 trains in this
    process) under one progress bar. `on_done(history, trained)` is called for every run as it
    becomes available. Diverged runs are returned (and warned about) but not stored. On Ctrl-C the
    workers are ended and KeyboardInterrupt is raised; runs finished before it stay stored."""
    configs = list(configs)
    for c in configs:
        if not isinstance(c, mlp.RunConfig):
            raise ValueError(f"configs must be RunConfig objects, got {type(c).__name__}")
    store = store if store is not None else RunStore()
    unique = {}  # names do not change a run: one config (the first name) per run
    for c in configs:
        unique.setdefault(c.replace(name=""), c)
    results: dict[mlp.RunConfig, mlp.History] = {}
    for u, c in unique.items():
        if (h := store.load(c)) is not None:
            results[u] = h
            if on_done:
                on_done(h, False)
    todo = sorted((c for u, c in unique.items() if u not in results), key=_cost, reverse=True)
    for h in _train_all(todo, n_jobs, progress, desc):
        u = h.config.replace(name="")
        results[u] = h
        if h.stop_reason == "diverged":
            warnings.warn(h.message, RuntimeWarning, stacklevel=2)
        store.save(h)
        if on_done:
            on_done(h, True)
    return [dataclasses.replace(results[c.replace(name="")], config=c) for c in configs]


def _train_all(todo: list[mlp.RunConfig], n_jobs: int | None, progress: bool, desc: str):
    """Yield the History of every config in `todo` as it finishes, trained in worker processes."""
    n_jobs = max(1, min(len(todo), n_jobs or os.cpu_count() or 1))
    bar = _progress(len(todo), desc, progress)
    try:
        if n_jobs == 1:
            for config in todo:
                bar.set_postfix_str(_describe(config), refresh=False)
                h = _train_quietly(config)
                if h.stop_reason == "interrupted":
                    raise KeyboardInterrupt
                bar.update()
                yield h
            return
        context = multiprocessing.get_context(
            "spawn"
        )  # never fork a threaded parent (a Jupyter kernel)
        pool = ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_worker_init)
        try:
            waiting, running = (
                list(todo),
                {},
            )  # one run per worker at a time: `running` is what they train
            while waiting or running:
                while waiting and len(running) < n_jobs:
                    config = waiting.pop(0)
                    running[pool.submit(_train_quietly, config)] = _describe(config)
                bar.set_postfix_str("; ".join(running.values()), refresh=False)
                if (
                    not bar.disable and time.time() - bar.last_print_t >= bar.mininterval
                ):  # tqdm keeps time.time()
                    bar.refresh()  # the elapsed time and the estimate tick on while the runs train
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    del running[future]
                    bar.update()
                    yield future.result()  # a worker's exception, or BrokenProcessPool, ends the sweep
        except (
            BaseException
        ) as exc:  # Ctrl-C or an error: end the workers now, not after their runs
            with _no_interrupts():
                for process in list(pool._processes.values()):
                    process.terminate()
            if isinstance(exc, BrokenProcessPool):
                raise RuntimeError(
                    "a training worker process died (out of memory? or a script that trains "
                    'without `if __name__ == "__main__":`); runs finished before it are kept'
                ) from exc
            raise
        finally:
            with _no_interrupts():
                pool.shutdown(wait=True, cancel_futures=True)
            pool = running = (
                None  # let its queues go now, not when a traceback that holds this frame does
            )
    finally:
        bar.close()
