"""Training lists of runs, and the store that keeps every finished run.

In scope: the run store (keys, entries, their validation, what happens when it cannot be written),
training the runs a sweep is missing (in this process, in local worker processes or on a Dask
cluster) and the one progress display of a sweep. Not here: how a run trains (mlp_core.train) and
what the report does with the runs (mlp_report).

`run_experiments(configs)` returns one History per RunConfig: runs found in the store are loaded,
the others are trained in worker processes (one per core) under one progress display and stored as
soon as each finishes. Runs that differ only in their name are trained once. With
`MLP_DASK_SCHEDULER=tcp://host:8786` (or `client=` a dask.distributed.Client) the missing runs are
trained on that Dask cluster instead and stored on this side, so the workers need no shared disk
(the optional extra: `pip install -e .[dask]`).

The store is a folder (.cache/runs, or $MLP_RUN_STORE) with one entry per finished run: an .npz
file of plain arrays and a JSON header, read with allow_pickle=False, so reading an entry never
runs code. An entry's key covers the whole configuration and a digest of the code that computes a
run (COMPUTING_MODULES: the core, the training loop, the data, the argument rules, the MNIST files)
and of what does its arithmetic (numpy, the BLAS kernel): editing notebooks, plots or the report
layer reuses every run; editing any of those modules retrains them. Entries are written
to a temporary file and renamed, so a reader sees a whole entry or none. Before an entry is used it
is checked against its configuration (only a regular file of a plausible size is read; the weights'
number, shapes and dtype, finite weights and final metrics, consistent history lists); a damaged or
foreign entry is named in a warning, moved aside and trained again. Only runs that ended as
configured (early stopping or the last epoch) are stored: interrupted, stopped and diverged runs
never are. `RunStore.check_writable()` says before any training whether the store can be written
(RunStoreError otherwise); a sweep whose runs cannot be stored still returns and uses them, and
says so once. Two processes on one store never train a run twice: a sweep locks the runs it
trains (a flock per run, which the kernel releases when its holder dies), and a sweep that finds
a run locked by another process waits for it, says so once, and uses its entry (or trains it, if
that process left none).

Ctrl-C (SIGINT, or a Jupyter kernel's interrupt) ends the whole sweep within a second or two: the
local workers, which ignore SIGINT themselves, are terminated (Dask tasks are cancelled and stop at
their next step), the runs finished so far stay in the store, and KeyboardInterrupt is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import math
import multiprocessing
import os
import queue
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

import mlp_core as mlp
import mlp_speed

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
_VALIDATION_LISTS = ("val_steps", "train_loss_full", "train_acc", "val_loss", "val_acc")
DASK_EXTRA_HINT = "pip install -e '.[dask]'"  # how to get the optional Dask extra
DASK_PROGRESS_TOPIC = "mlp-runs-progress"  # the Dask event topic the workers report steps on


class FolderNotWritable(RuntimeError):
    """A folder cannot be written: the run store here, the report's folders in the build. The
    message (two lines) names the folder, the reason (and the file being written, if given) and
    the fix, led by freeing space when the disk is full; they are also its attributes."""

    def __init__(self, what: str, folder: Path, reason: str, fix: str, writing: str = ""):
        if "full" in reason or "quota" in reason:
            fix = f"free some space there, or {fix}"
        self.folder, self.reason, self.fix = folder, reason, fix
        doing = f" ({writing} was being written)" if writing else ""
        super().__init__(f"{what} {folder} cannot be written: {reason}{doing}.\nFix: {fix}.")

    @classmethod
    def from_oserror(cls, what: str, folder: Path, exc: OSError, fix: str, writing: str = ""):
        """The error for `exc`, an OSError met writing into `folder`, its reason in words."""
        return cls(what, folder, _oserror_reason(exc, folder), fix, writing)


class RunStoreError(FolderNotWritable):
    """The run store cannot be written (see FolderNotWritable)."""

    def __init__(self, folder: Path, reason: str, fix: str):
        super().__init__("The run store", folder, reason, fix)


class RunStoreWarning(RuntimeWarning):
    """A store entry could not be used, or a sweep's runs could not be kept."""


def store_dir() -> Path:
    """The run store: $MLP_RUN_STORE if set, else .cache/runs in the project."""
    return Path(os.environ.get("MLP_RUN_STORE") or REPO / ".cache" / "runs")


# The modules whose code computes a run (tests/test_runs.py checks that train() uses no other).
COMPUTING_MODULES = ("mlp_core", "mlp_train", "mlp_data", "mlp_checks", "mnist_files")


@functools.cache
def code_digest() -> str:
    """SHA-256 of the COMPUTING_MODULES and of what does their arithmetic (numpy's version, the
    BLAS library numpy calls and the kernel it chose for this CPU): a stored run is reused only
    where it would be computed bit for bit the same."""
    numerics = json.dumps({"numpy": np.__version__, "blas": numpy_blas()})
    digest = hashlib.sha256()
    for name in COMPUTING_MODULES:
        digest.update(name.encode() + b"\0" + (REPO / f"{name}.py").read_bytes())
    digest.update(numerics.encode())
    return digest.hexdigest()


def numpy_blas() -> list[str]:
    """The BLAS libraries numpy itself loaded, as "api version kernel". Another library's own BLAS
    (scipy brings one) does not compute a run, and counting it would make a run's key depend on
    whether scipy happened to be imported."""
    from threadpoolctl import threadpool_info

    blas = [info for info in threadpool_info() if info.get("user_api") == "blas"]
    package = Path(np.__file__).resolve().parent  # the wheel's libraries: numpy.libs beside it
    shipped = (package, package.parent / "numpy.libs", package / ".dylibs")
    own = [info for info in blas if Path(info["filepath"]).resolve().parent in shipped]
    # A numpy that links a system BLAS ships none: then every BLAS in the process counts.
    return sorted(
        f"{info.get('internal_api')} {info.get('version')} {info.get('architecture')}"
        for info in (own or blas)
    )


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


# ---- store entries: layout, size and validation --------------------------------------------------


def _max_steps(config: mlp.RunConfig) -> int:
    return config.max_epochs * config.steps_per_epoch


def entry_bytes(config: mlp.RunConfig) -> int:
    """About the largest an entry of `config` gets: its weights, a history to the last epoch."""
    n_weights = len(config.layer_sizes)
    n_validations = _max_steps(config) // config.validation_interval + 1
    weight_bytes = mlp.count_parameters(config.layer_sizes) * np.dtype(config.dtype).itemsize
    list_values = (
        _max_steps(config)
        + len(_VALIDATION_LISTS) * n_validations
        + n_validations * n_weights
        + n_weights
        + 2 * config.max_epochs
    )
    return weight_bytes + 8 * list_values + 16_384  # header and zip directory


def entry_size_limit(config: mlp.RunConfig) -> int:
    """The size cap of an entry of `config`: anything larger is not read (twice the largest
    plausible entry and 1 MiB more)."""
    return 2 * entry_bytes(config) + 2**20


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


def _unpack(data, config: mlp.RunConfig) -> mlp.History:
    """The History of an open entry of `config`; ValueError naming the first thing that is wrong."""
    key = run_key(config)
    limit = entry_size_limit(config)
    unpacked = sum(member.file_size for member in data.zip.infolist())
    if unpacked > limit:
        raise ValueError(f"it unpacks to {unpacked:,} bytes, more than the {limit:,} it may hold")
    header = json.loads(str(data["header"]))
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("key") != key:
        found = header.get("key") if isinstance(header, dict) else None
        raise ValueError(f"it belongs to another run or format (key {found!r})")
    stored = mlp.RunConfig(
        **dict(
            header["config"],
            layer_sizes=tuple(header["config"]["layer_sizes"]),
            name=header["name"],
        )
    )
    if run_key(stored) != key:
        raise ValueError("its configuration does not match its key")
    shapes = mlp.weight_shapes(config.layer_sizes)
    expected = {"header", *_LISTS, *(f"w{i}" for i in range(len(shapes)))}
    if header["n_weights"] != len(shapes) or set(data.files) != expected:
        raise ValueError(
            f"it holds {sorted(set(data.files) - {'header'})} where the configuration needs "
            f"{len(shapes)} weight matrices and the history lists"
        )
    weights = [data[f"w{i}"] for i in range(len(shapes))]
    lists = {name: data[name] for name in _LISTS}
    hist = mlp.History(
        config=config,
        **{name: values.tolist() for name, values in lists.items()},
        stop_reason=header["stop_reason"],
        message=header["message"],
        best_val_loss=header["best_val_loss"],
        best_step=header["best_step"],
        final=header["final"],
        weights=weights,
    )
    _check_entry(hist, lists)
    return hist


def _check_entry(hist: mlp.History, lists: dict[str, np.ndarray]) -> None:
    """ValueError unless `hist` (and its stored `lists`) is a completed run of hist.config."""
    config = hist.config
    dtype = np.dtype(config.dtype)
    for i, (w, shape) in enumerate(zip(hist.weights, mlp.weight_shapes(config.layer_sizes))):
        if w.shape != shape or w.dtype != dtype:
            raise ValueError(
                f"weight w{i} is {w.dtype} of shape {w.shape} where the configuration needs "
                f"{dtype} of shape {shape}"
            )
        if not np.isfinite(w).all():
            raise ValueError(f"weight w{i} holds values that are not finite")
    if hist.stop_reason not in mlp.COMPLETED:
        raise ValueError(f"it records a run that did not complete ({hist.stop_reason!r})")
    final = hist.final if isinstance(hist.final, dict) else {}
    bad = [m for m in mlp.FINAL_METRICS if not isinstance(final.get(m), (int, float))]
    bad += [m for m in mlp.FINAL_METRICS if m not in bad and not math.isfinite(final[m])]
    if bad or set(final) != set(mlp.FINAL_METRICS):
        raise ValueError(f"its final metrics are missing or not finite ({', '.join(bad)})")
    for name, values in lists.items():
        kind = "i" if name == "val_steps" else "f"
        rows = 2 if config.record_grad_norms and name == "grad_norms" and values.size else 1
        if values.dtype.kind != kind or values.ndim != rows or not np.isfinite(values).all():
            raise ValueError(f"its history list {name} is not a finite list of numbers")
    steps = len(hist.train_loss)
    n_validations = len(hist.val_steps)
    lengths = {name: len(lists[name]) for name in _VALIDATION_LISTS}
    if not 1 <= steps <= _max_steps(config) or set(lengths.values()) != {n_validations}:
        raise ValueError(
            f"its history lists have inconsistent lengths ({steps} steps of at most "
            f"{_max_steps(config)}; validation lists {lengths})"
        )
    val_steps = lists["val_steps"]
    if (
        n_validations == 0
        or val_steps[0] != 0
        or (np.diff(val_steps) <= 0).any()
        or val_steps[-1] >= steps
        or (val_steps % config.validation_interval).any()
    ):
        raise ValueError("its validation steps are not the configuration's validation schedule")
    n_weights = len(config.layer_sizes)
    grad_rows = (n_validations, n_weights) if config.record_grad_norms else (0,)
    init_norms = (n_weights,) if config.record_grad_norms else (0,)
    if lists["grad_norms"].shape != grad_rows or lists["init_grad_norms"].shape != init_norms:
        raise ValueError("its gradient norms do not match record_grad_norms and the layers")
    n_epochs = len(hist.epoch_times)
    if not 1 <= n_epochs <= config.max_epochs or len(hist.step_times) != n_epochs:
        raise ValueError("its epoch times do not match the number of epochs")
    if hist.best_step not in hist.val_steps or not math.isfinite(hist.best_val_loss):
        raise ValueError("its best validation step is not one of its validations")


def _oserror_reason(exc: OSError, folder: Path) -> str:
    """What an OSError on the store folder means, in words."""
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "the disk is full" if code == errno.ENOSPC else "the disk quota is exceeded"
    if code == errno.EROFS:
        return "it is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return "there is no permission to write there"
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        if not blocker.is_dir():
            return f"{blocker} is a file, not a folder"
    return exc.strerror or str(exc)


class RunStore:
    """Finished runs on disk, one .npz entry per run, keyed by run_key(config)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self._from_environment = folder is None
        self.folder = Path(folder) if folder is not None else store_dir()

    def path(self, config: mlp.RunConfig) -> Path:
        return self.folder / f"run-{run_key(config)}.npz"

    def _error(self, reason: str) -> RunStoreError:
        fix = (
            "set MLP_RUN_STORE to a writable folder"
            if self._from_environment
            else "give RunStore a writable folder"
        )
        return RunStoreError(self.folder, reason, fix)

    def check_writable(self, configs: Iterable[mlp.RunConfig] = ()) -> None:
        """Check, before any training, that the store folder can be created and written and has
        room for the entries of `configs` (the runs about to be trained); RunStoreError otherwise,
        with a message naming the folder, the reason and the fix."""
        configs = list(configs)
        needed = sum(entry_bytes(c) for c in configs)
        try:
            if self.folder.exists() and not self.folder.is_dir():
                raise self._error("it is a file, not a folder")
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(bytes(4096))
                    fh.flush()
                    os.fsync(fh.fileno())
            finally:
                Path(probe).unlink(missing_ok=True)
            free = shutil.disk_usage(self.folder).free
        except OSError as exc:
            raise self._error(_oserror_reason(exc, self.folder)) from exc
        if free < needed:
            raise self._error(
                f"the disk is full for this sweep: {free / 1e6:.1f} MB free where its "
                f"{len(configs)} runs need about {needed / 1e6:.1f} MB"
            )

    def load(self, config: mlp.RunConfig) -> mlp.History | None:
        """The stored run of `config` (named as `config`), or None. A damaged, foreign or
        implausible entry is moved aside with a warning, so the run is trained again."""
        path = self.path(config)
        for _attempt in range(2):  # a second look when another process replaced a damaged entry
            flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(path, flags)  # O_NONBLOCK: a FIFO in its place cannot block
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                self._warn(path, config, f"{type(exc).__name__}: {exc.strerror}", "left in place")
                return None
            with os.fdopen(fd, "rb") as fh:
                info = os.fstat(fh.fileno())
                try:
                    hist = self._read(fh, info, config)
                except Exception as exc:  # any unusable entry: never a crash, never code run
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    return dataclasses.replace(hist, config=config)
            outcome = self._set_aside(path, info)
            if outcome != "replaced":
                self._warn(path, config, problem, outcome)
                return None
        return None

    def _read(self, fh, info: os.stat_result, config: mlp.RunConfig) -> mlp.History:
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file")
        limit = entry_size_limit(config)
        if info.st_size > limit:
            raise ValueError(f"it is {info.st_size:,} bytes, more than the {limit:,} it may hold")
        with np.load(fh, allow_pickle=False) as data:
            return _unpack(data, config)

    @staticmethod
    def _set_aside(path: Path, info: os.stat_result) -> str:
        """Move the damaged entry `info` (as opened) at `path` aside: what became of it."""
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return "gone"
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            return "replaced"  # another process set it aside and stored a new entry meanwhile
        try:
            os.replace(path, path.with_suffix(".damaged"))
        except FileNotFoundError:
            return "gone"  # another process moved it aside first
        except OSError as exc:
            return f"could not be moved aside ({exc.strerror})"
        return "moved"

    @staticmethod
    def _warn(path: Path, config: mlp.RunConfig, problem: str, outcome: str) -> None:
        what = {
            "moved": f"it was moved aside to {path.with_suffix('.damaged').name}",
            "gone": "another process has already moved it aside",
        }.get(outcome, f"it was {outcome}")
        warnings.warn(
            f"run store: {path.name} could not be used ({problem}); {what} and the run "
            f"({config.label}) will be trained again.",
            RunStoreWarning,
            stacklevel=3,
        )

    def save(self, hist: mlp.History) -> bool:
        """Store a finished run atomically; False (nothing written) for a run that did not complete.
        RunStoreError (nothing left behind) when the entry cannot be written."""
        if not hist.completed:
            return False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".tmp", dir=self.folder)
        except OSError as exc:
            raise self._error(_oserror_reason(exc, self.folder)) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **_pack(hist))
            os.replace(tmp, self.path(hist.config))
        except OSError as exc:
            raise self._error(_oserror_reason(exc, self.folder)) from exc
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

    def __contains__(self, config: mlp.RunConfig) -> bool:
        return self.path(config).is_file()


class _SweepSaver:
    """Stores a sweep's runs; when the store cannot be written, says so once and keeps going. A
    store found unwritable before training is still tried (a run's entry may fit where the
    estimate did not); the first entry that cannot be written ends the saving for this sweep."""

    def __init__(self, store: RunStore):
        self.store = store
        self.saving = True
        self.warned = False

    def check(self, todo: list[mlp.RunConfig]) -> None:
        try:
            self.store.check_writable(todo)
        except RunStoreError as exc:
            self._say(exc, f"the {len(todo)} runs of this sweep will be trained and used")

    def save(self, hist: mlp.History) -> None:
        if not self.saving:
            return
        try:
            self.store.save(hist)
        except RunStoreError as exc:
            self.saving = False
            self._say(exc, "this sweep's runs are used")

    def _say(self, exc: RunStoreError, what: str) -> None:
        if self.warned:
            return
        self.warned = True
        warnings.warn(
            f"run store: {exc.folder} cannot be written ({exc.reason}); {what}, but not kept "
            f"for later.\nFix: {exc.fix}.",
            RunStoreWarning,
            stacklevel=4,
        )


# ---- which process trains a run: one lock per run in the store -----------------------------------

_HELD: dict[Path, list] = {}  # lock file -> [its open fd, how many sweeps of this process hold it]
_HELD_GUARD = threading.Lock()
LOCK_POLL = 0.2  # seconds between looks at the locks of runs another process trains


class _RunLocks:
    """The runs of a store that this process trains, so that two processes on one store (two
    builds, a build and a notebook) never train a run twice: whoever takes a run's lock trains it,
    and the other waits for it and then uses its entry.

    A lock is an exclusive flock on the run's lock file, run-<key>.lock beside its entry, held from
    the start of the sweep until the run is stored (or the sweep ends). The kernel releases a flock
    when its holder dies however it dies, so a lock left by a dead process is free at once; what
    the file holds (the holder's process id, for the waiting message) is only ever shown, so
    garbage in it changes nothing; a run this process already holds (another sweep of it: a
    thread, a notebook cell) is taken as its own, never waited for. Where no lock can be made (a
    store that cannot be written, no flock) the run is trained without one, as before."""

    def __init__(self, store: RunStore):
        self.store = store
        self.taken: set[Path] = set()

    def path(self, config: mlp.RunConfig) -> Path:
        """The run's lock file, its path resolved (one store named two ways is one store)."""
        return self.store.folder.resolve() / f"run-{run_key(config)}.lock"

    def take(self, config: mlp.RunConfig) -> bool:
        """Lock the run of `config` for this process: False while another process holds it."""
        path = self.path(config)
        if path in self.taken:
            return True
        with _HELD_GUARD:
            held = _HELD.get(path)
            if held is None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = _flock(path)
                except (OSError, ImportError):  # cannot lock here (or no flock): train unlocked
                    return True
                if fd is None:
                    return False
                held = _HELD[path] = [fd, 0]
            held[1] += 1
        self.taken.add(path)
        return True

    def holder(self, config: mlp.RunConfig) -> str:
        """Who holds the run's lock, as the lock file says: "process 1234", or "another process"."""
        with contextlib.suppress(OSError, ValueError):
            with open(self.path(config), "rb") as fh:
                pid = int(fh.read(32).split()[0])
            return f"process {pid}"
        return "another process"

    def release(self, config: mlp.RunConfig) -> None:
        """Let the run's lock go (once the last sweep of this process holding it lets it go)."""
        self._release(self.path(config))

    def release_all(self) -> None:
        for path in list(self.taken):
            self._release(path)

    def _release(self, path: Path) -> None:
        if path not in self.taken:
            return
        self.taken.discard(path)
        with _HELD_GUARD:
            held = _HELD.get(path)
            if held is None:  # it was never locked (see take)
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del _HELD[path]
            fd = held[0]
            with contextlib.suppress(OSError):  # unlinked before it is let go: see _flock
                here, mine = os.stat(path), os.fstat(fd)
                if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                    os.unlink(path)
            os.close(fd)

    def wait(self, configs: list[mlp.RunConfig]) -> Iterator[mlp.RunConfig]:
        """Each of `configs` as soon as this process holds its lock (its holder stored it, failed
        or died), looking every LOCK_POLL seconds; Ctrl-C stops the wait at once."""
        waiting = list(configs)
        while waiting:
            for config in [c for c in waiting if self.take(c)]:
                waiting.remove(config)
                yield config
            if waiting:
                time.sleep(LOCK_POLL)


def _flock(path: Path) -> int | None:
    """An open fd holding an exclusive flock on the lock file `path` (created if missing, with
    this process's id written in it), or None while another process holds it. OSError where no
    lock can be made. A holder unlinks its file before it lets go, so a lock won on a file that
    is no longer at `path` is let go and tried again on the new one."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        try:
            here = os.stat(path)
        except FileNotFoundError:
            here = None
        mine = os.fstat(fd)
        if here is not None and (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


# ---- the progress display of a sweep -------------------------------------------------------------


def _describe(config: mlp.RunConfig) -> str:
    return f"{config.label}, seed {config.seed}"


def _cost(config: mlp.RunConfig) -> float:
    """A rough relative cost of a run, to start the longest first (better load balance)."""
    return mlp.count_parameters(config.layer_sizes) * config.max_epochs * config.n_train


def _work_per_step(config: mlp.RunConfig) -> float:
    """Multiply-adds of one gradient step and its share of the validations (a relative unit)."""
    evaluated_per_step = (config.n_train + config.n_val) / config.validation_interval
    return mlp.count_parameters(config.layer_sizes) * (3 * config.batch_size + evaluated_per_step)


def _in_jupyter() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _tqdm_disabled() -> bool:
    """TQDM_DISABLE (as tqdm reads it) switches every progress display off, the plain lines too."""
    value = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def _clock_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


@dataclasses.dataclass
class _RunProgress:
    max_steps: int
    work_per_step: float
    early_stop_after: int  # steps without a new best that end the run (patience * interval)
    label: str
    family: mlp.RunConfig  # its configuration but for the seed and name: runs that stop alike
    state: str = "waiting"  # waiting | training | done
    steps: int = 0
    best_step: int = -1
    first: tuple[float, int] | None = None  # (time, steps) of its first report
    last: tuple[float, int] | None = None  # (time, steps) of its latest report
    completed_fraction: float | None = None  # steps / max_steps of a run that completed


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Where a sweep stands: `fraction` of its expected work done, `seconds_left` (None until the
    first validations give a speed), and whether that is an upper bound (no run has finished yet,
    so every run is assumed to train to its last epoch) or learned from the finished runs."""

    fraction: float
    seconds_left: float | None
    upper_bound: bool


class SweepProgress:
    """The progress of a sweep, from the steps its runs report after each validation.

    The total is not known in advance, because early stopping ends a run before its last epoch.
    Until a run has finished, every running run is assumed to go to its last epoch, so the time
    left is an upper bound and is shown as "at most"; once runs have finished, each unfinished run
    is expected to take the share of its epochs that finished runs of its network (other seeds)
    took, or else all finished runs, but never less than its patience still forces it to train, and
    the time left is shown as "about". This reads best to a student: an honest bound first, then an
    estimate that gets better as runs finish, instead of a "?" or a bound that stays far too long
    for the whole sweep. The share done is of the work (steps weighted by the network's size and
    its validations), and the time left allows for the last runs training alone.

    Shown (unless TQDM_DISABLE is set) as a widget in Jupyter, as a bar redrawn in place on a
    terminal, and as plain lines (one at the start, one every LINE_INTERVAL seconds, one at the end)
    when the output is a file or a pipe.

    A sweep that may take longer than LONG_SWEEP says so before it starts, whatever the display:
    its plan line (the first plain line, or a line printed above the bar or widget) gives
    mlp_speed's estimate for `workers` local processes on this machine, every run to its last
    epoch. Only a sweep that a much slower machine would not finish within LONG_SWEEP has this
    machine measured (under a second, in this process); `workers` None (a Dask cluster, whose
    machines are not this one) gives no estimate.
    """

    LINE_INTERVAL = 20.0  # seconds between plain lines (a few per minute at most)
    REDRAW_INTERVAL = 0.5  # seconds between redraws of a bar or widget
    LONG_SWEEP = 30 * 60.0  # seconds: a sweep that may take longer says so in its plan line

    def __init__(
        self,
        configs: Sequence[mlp.RunConfig],
        *,
        desc: str = "training",
        enabled: bool = True,
        where: str = "",
        workers: int | None = None,
        file=None,
        clock: Callable[[], float] = time.monotonic,
        mode: str | None = None,
    ):
        self.runs = [
            _RunProgress(
                max_steps=_max_steps(c),
                work_per_step=_work_per_step(c),
                early_stop_after=c.patience * c.validation_interval,
                label=_describe(c),
                family=c.replace(seed=0, name=""),
            )
            for c in configs
        ]
        self.desc = desc
        self.where = where
        self.clock = clock
        self.file = file if file is not None else sys.stderr
        self.start = clock()
        self._shown_at = -math.inf
        self._said_start = False
        self._bar = None
        if mode is None:
            is_terminal = getattr(self.file, "isatty", lambda: False)()
            mode = "widget" if _in_jupyter() else "bar" if is_terminal else "lines"
        self.mode = mode if enabled and self.runs and not _tqdm_disabled() else "off"
        self.estimate_seconds = None  # of a sweep that may take longer than LONG_SWEEP
        if self.mode != "off" and workers is not None:
            self.estimate_seconds = mlp_speed.sweep_estimate(configs, workers, self.LONG_SWEEP)
        if self.mode in ("widget", "bar"):
            if self.estimate_seconds is not None:  # a bar has no plan line of its own
                self._print(self.plan())
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=1000,
                desc=desc,
                disable=False,  # decided above (tqdm would read TQDM_DISABLE only at its import)
                file=self.file,
                dynamic_ncols=True,
                leave=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar:20}|",
            )
        self.tick(force=True)

    # what the engines report
    def started(self, index: int) -> None:
        run = self.runs[index]
        if run.state == "waiting":
            run.state = "training"

    def reported(self, index: int, steps: int, best_step: int) -> None:
        run = self.runs[index]
        if run.state == "done" or steps < run.steps:
            return
        now = self.clock()
        run.state, run.steps, run.best_step = "training", int(steps), int(best_step)
        run.first = run.first or (now, run.steps)
        run.last = (now, run.steps)

    def finished(self, index: int, hist: mlp.History) -> None:
        run = self.runs[index]
        run.state, run.steps = "done", hist.steps
        if hist.completed:
            run.completed_fraction = hist.steps / run.max_steps

    # what is shown
    def estimate(self) -> Estimate:
        """The expected share of the work done and the time left (see the class docstring)."""
        finished = [r for r in self.runs if r.completed_fraction is not None]
        done_work = left_work = longest_left = 0.0
        for run in self.runs:
            done_work += run.steps * run.work_per_step
            if run.state == "done":
                continue
            alike = [r for r in finished if r.family == run.family] or finished
            share = sum(r.completed_fraction for r in alike) / len(alike) if alike else None
            expected = run.max_steps
            if share is not None:
                at_least = max(run.steps, run.best_step + run.early_stop_after + 1)
                expected = min(run.max_steps, max(at_least, round(share * run.max_steps)))
            run_left = (expected - run.steps) * run.work_per_step
            left_work += run_left
            longest_left = max(longest_left, run_left)
        timed = [r for r in self.runs if r.first is not None and r.last[0] > r.first[0]]
        busy = sum(r.last[0] - r.first[0] for r in timed)
        measured = sum((r.last[1] - r.first[1]) * r.work_per_step for r in timed)
        total = done_work + left_work
        fraction = done_work / total if total > 0 else 1.0
        if busy <= 0 or measured <= 0:
            return Estimate(fraction, None, not finished)
        speed = measured / busy  # work per second of one worker
        parallel = max(1, sum(r.state == "training" for r in self.runs))
        seconds = max(left_work / (speed * parallel), longest_left / speed)
        return Estimate(fraction, seconds, not finished)

    def plan(self) -> str:
        """The plan line: how many runs, where, and the estimate of a sweep that may be long."""
        where = f" {self.where}" if self.where else ""
        line = f"{self.desc}: {len(self.runs)} runs to train{where}"
        if self.estimate_seconds is None:
            return line + "."
        estimate = _clock_text(self.estimate_seconds)
        return f"{line}; estimated to take up to {estimate} here (every run to its last epoch)."

    def text(self, final: str | None = None, percent: bool = True) -> str:
        """The status in words: runs done and left, elapsed, the estimate (with the share done
        unless not `percent`: a bar shows it), what is training now; `final` ("done",
        "interrupted", "stopped", "failed") for the closing line, which names no run."""
        elapsed = _clock_text(self.clock() - self.start)
        done = sum(r.state == "done" for r in self.runs)
        total = len(self.runs)
        if final == "done":
            return f"{done}/{total} runs done in {elapsed}"
        if final is not None:
            return f"{final} after {elapsed}: {done}/{total} runs done, {total - done} not trained"
        est = self.estimate()
        if est.seconds_left is None:
            guess = "time left known after the first validations"
        else:
            bound = "at most" if est.upper_bound else "about"
            share = f" ({100 * est.fraction:.0f}%)" if percent else ""
            guess = f"{bound} {_clock_text(est.seconds_left)} left{share}"
        training = [r.label for r in self.runs if r.state == "training"]
        now = f"; now training: {'; '.join(training)}" if training else ""
        return f"{done}/{total} runs done, {total - done} to go, {elapsed} elapsed, {guess}{now}"

    def tick(self, force: bool = False) -> None:
        """Redraw (or print a line) if it is time to."""
        if self.mode == "off":
            return
        now = self.clock()
        interval = self.LINE_INTERVAL if self.mode == "lines" else self.REDRAW_INTERVAL
        if not force and now - self._shown_at < interval:
            return
        self._shown_at = now
        if self.mode == "lines" and not self._said_start:
            self._said_start = True
            self._print(self.plan())
        elif self.mode == "lines":
            self._print(f"{self.desc}: {self.text()}")
        else:
            self._draw(self.text(percent=False), self.estimate().fraction)

    def close(self, outcome: str = "done") -> None:
        """The closing line or bar: "done", "interrupted", "stopped" or "failed"."""
        if self.mode == "off":
            return
        self.mode, mode = "closed", self.mode
        if mode == "lines":
            self._print(f"{self.desc}: {self.text(outcome)}.")
            return
        self._draw(self.text(outcome), 1.0 if outcome == "done" else self.estimate().fraction)
        self._bar.close()

    def _draw(self, text: str, fraction: float) -> None:
        safe = text.replace("{", "{{").replace("}", "}}")
        self._bar.bar_format = f"{{desc}}: {{percentage:3.0f}}%|{{bar:20}}| {safe}"
        self._bar.n = int(1000 * min(1.0, max(0.0, fraction)))
        self._bar.refresh()

    def _print(self, line: str) -> None:
        print(line, file=self.file, flush=True)


# ---- training: in this process, in local worker processes, on Dask -------------------------------


def _train_quietly(config: mlp.RunConfig, **kwargs) -> mlp.History:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # run_experiments repeats a divergence warning, once
        return mlp.train(config, progress=False, **kwargs)


_WORKER_STEPS = None  # in a local worker: the sweep's shared array of (steps, best step) per run


def _worker_init(steps) -> None:
    from tqdm import tqdm

    global _WORKER_STEPS
    _WORKER_STEPS = steps
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    # not tqdm's default multiprocessing lock, which a killed worker would leak
    tqdm.set_lock(threading.RLock())


def _train_in_worker(config: mlp.RunConfig, index: int) -> mlp.History:
    """Train in a local worker, writing the steps done into the sweep's shared array (no lock, no
    pipe: a worker terminated at any moment leaves nothing behind)."""

    def report(hist: mlp.History) -> None:
        _WORKER_STEPS[2 * index + 1] = hist.best_step
        _WORKER_STEPS[2 * index] = hist.steps

    return _train_quietly(config, callback=report, second_core=False)  # a run on every core


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


def _train_here(todo: list[mlp.RunConfig], progress: SweepProgress) -> Iterator[mlp.History]:
    """Train every config in this process, one after the other."""
    for index, config in enumerate(todo):
        progress.started(index)
        progress.tick(force=True)

        def report(hist: mlp.History, index: int = index) -> None:
            progress.reported(index, hist.steps, hist.best_step)
            progress.tick()

        hist = _train_quietly(config, callback=report)
        if hist.stop_reason == "interrupted":
            raise KeyboardInterrupt
        progress.finished(index, hist)
        progress.tick()
        yield hist


def _train_in_pool(
    todo: list[mlp.RunConfig], n_jobs: int, progress: SweepProgress
) -> Iterator[mlp.History]:
    """Train every config in `n_jobs` local worker processes, yielding each History as it ends."""
    # spawn: never fork a threaded parent (a Jupyter kernel)
    context = multiprocessing.get_context("spawn")
    reports = context.RawArray("q", 2 * len(todo))  # steps and best step of each run, shared
    pool = ProcessPoolExecutor(
        n_jobs, mp_context=context, initializer=_worker_init, initargs=(reports,)
    )
    try:
        waiting = list(enumerate(todo))
        running = {}  # one run per worker at a time: the future of each and its index
        while waiting or running:
            while waiting and len(running) < n_jobs:
                index, config = waiting.pop(0)
                running[pool.submit(_train_in_worker, config, index)] = index
                progress.started(index)
            for index in running.values():
                if reports[2 * index] > 0:
                    progress.reported(index, reports[2 * index], reports[2 * index + 1])
            progress.tick()
            done, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                hist = future.result()  # a worker's exception, or BrokenProcessPool, ends the sweep
                progress.reported(index, reports[2 * index], reports[2 * index + 1])  # its last
                progress.finished(index, hist)
                yield hist
    except BaseException as exc:  # Ctrl-C or an error: end the workers now, not after their runs
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
        # let its queues go now, not when a traceback that holds this frame does
        pool = running = None


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"training on Dask (MLP_DASK_SCHEDULER or client=) needs the optional extra "
            f"dask[distributed]: {DASK_EXTRA_HINT}"
        ) from exc
    return distributed


def _train_on_dask_worker(config: mlp.RunConfig, index: int, token: str):
    """A Dask task: train one run, reporting its steps about once a second, stopping at the next
    step once the task is cancelled. Returns the History and this worker's code digest."""
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()
    last_report = [-math.inf]

    def report(hist: mlp.History) -> None:
        now = time.monotonic()
        if now - last_report[0] >= 1.0:
            last_report[0] = now
            worker.log_event(DASK_PROGRESS_TOPIC, [token, index, hist.steps, hist.best_step])

    def cancelled() -> bool:
        task = worker.state.tasks.get(key)
        return task is None or task.state == "cancelled"

    # the cluster runs one task per worker thread: the serial path
    hist = _train_quietly(config, callback=report, should_stop=cancelled, second_core=False)
    return hist, code_digest()


def _train_on_dask(client, todo: list[mlp.RunConfig], progress: SweepProgress):
    """Train every config as one Dask task each, yielding each History as it comes back."""
    distributed = _import_distributed()
    token = uuid.uuid4().hex
    reports: queue.SimpleQueue = queue.SimpleQueue()

    def on_event(event) -> None:  # on the client's event loop thread: hand over to this one
        message = event[1]
        if isinstance(message, (list, tuple)) and len(message) == 4 and message[0] == token:
            reports.put(message[1:])

    client.subscribe_topic(DASK_PROGRESS_TOPIC, on_event)
    futures = {}
    try:
        for index, config in enumerate(todo):
            key = f"mlp-run-{run_key(config)}-{token[:8]}"
            future = client.submit(_train_on_dask_worker, config, index, token, key=key, pure=False)
            futures[future] = index
        finished = distributed.as_completed(futures, loop=client.loop)
        while not finished.is_empty():
            while True:
                try:
                    index, steps, best_step = reports.get_nowait()
                except queue.Empty:
                    break
                progress.reported(index, steps, best_step)
            progress.tick()
            batch = finished.next_batch(block=False)
            if not batch:
                time.sleep(0.2)
            for future in batch:
                hist, digest = future.result()  # a task's exception ends the sweep
                if digest != code_digest():
                    raise RuntimeError(
                        "a Dask worker runs other training code, numpy or BLAS kernel than this "
                        f"machine (its digest {digest[:12]} against {code_digest()[:12]}): "
                        "install this checkout with the same packages on the workers, so that "
                        "their runs are the ones this run store holds"
                    )
                progress.finished(futures[future], hist)
                yield hist
    except BaseException:  # Ctrl-C or an error: cancel every task (running ones stop at a step)
        with _no_interrupts():
            client.cancel(list(futures))
        raise
    finally:
        with _no_interrupts(), contextlib.suppress(Exception):  # a closed client has no topics
            client.unsubscribe_topic(DASK_PROGRESS_TOPIC)


DASK_TIMEOUT = 10.0  # seconds to wait for the scheduler of $MLP_DASK_SCHEDULER, by default


def dask_timeout() -> float:
    """Seconds to wait for the Dask scheduler: $MLP_DASK_TIMEOUT, else DASK_TIMEOUT; ValueError
    naming the setting when it is not a number of seconds > 0."""
    value = os.environ.get("MLP_DASK_TIMEOUT", "").strip()
    if not value:
        return DASK_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(
            f"MLP_DASK_TIMEOUT must be a number of seconds > 0 such as {DASK_TIMEOUT:g}, "
            f"got {value!r}"
        )
    return seconds


def dask_scheduler() -> str:
    """$MLP_DASK_SCHEDULER checked as a Dask scheduler address (scheme://host:port, tcp:// by
    default) without connecting, or "" when unset; ValueError naming the setting and the form to
    use otherwise. (A dask Client made with a malformed address is left half-made for its
    finaliser, which waits a minute.)"""
    address = os.environ.get("MLP_DASK_SCHEDULER", "").strip()
    if not address:
        return ""
    _import_distributed()
    from distributed.comm.addressing import parse_address
    from distributed.comm.registry import backends

    try:
        scheme, location = parse_address(address, strict=False)
        if scheme not in backends:
            raise ValueError(f"unknown scheme {scheme}://")
        if scheme in ("tcp", "tls", "ws", "wss"):
            _host, colon, port = location.rpartition(":")
            if not colon:
                raise ValueError("it names no host:port")
            if not (port.isascii() and port.isdigit() and 0 < int(port) < 2**16):
                raise ValueError(f"the port {port!r} is not a number from 1 to 65535")
    except ValueError as exc:
        raise ValueError(
            f"MLP_DASK_SCHEDULER={address!r} is not a Dask scheduler address ({exc}): write it as "
            "tcp://host:8786, or unset MLP_DASK_SCHEDULER to train on this machine"
        ) from None
    return address


def _shake_hands(address: str, seconds: float) -> None:
    """Connect to the scheduler at `address` within `seconds` and take its handshake; OSError
    otherwise. (distributed.Client waits for the handshake without a time limit, so a program
    that takes the connection but never answers would hold it forever; here the handshake gets
    a second more than the connection, which dask's own error names.) In a thread of its own,
    with its own event loop: the caller may be a Jupyter kernel, whose loop runs."""
    from distributed.comm import connect

    async def handshake() -> None:
        try:
            comm = await asyncio.wait_for(connect(address, timeout=seconds), seconds + 1)
        except TimeoutError:
            raise TimeoutError(f"nothing answered there as a Dask scheduler within {seconds:g} s")
        comm.abort()

    failures = []

    def run() -> None:
        try:
            asyncio.run(handshake())
        except BaseException as exc:  # handed to the calling thread
            failures.append(exc)

    # a daemon: it ends within `seconds`, and never holds up an interrupted program
    thread = threading.Thread(target=run, name="dask-handshake", daemon=True)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


@contextlib.contextmanager
def _dask_client(client, announce: bool = True):
    """The Dask client to train on: `client`, else one connected to $MLP_DASK_SCHEDULER for the
    sweep (closed afterwards), else None (train on this machine). Connecting says where it
    connects (unless not `announce`) and gives up after dask_timeout() seconds."""
    if client is not None:
        distributed = _import_distributed()
        if not isinstance(client, distributed.Client) or client.asynchronous:
            raise ValueError(
                f"client must be a synchronous dask.distributed.Client, got {client!r}"
            )
        yield client
        return
    address = dask_scheduler()
    if not address:
        yield None
        return
    distributed = _import_distributed()
    seconds = dask_timeout()
    if announce:
        print(
            f"Connecting to the Dask scheduler at {address} (MLP_DASK_SCHEDULER; giving up after "
            f"{seconds:g} s, MLP_DASK_TIMEOUT)...",
            file=sys.stderr,
            flush=True,
        )
    try:
        _shake_hands(address, seconds)
        own = distributed.Client(address, timeout=seconds, set_as_default=False)
    except OSError as exc:  # refused, unreachable, unknown host, or no answer in time
        raise RuntimeError(
            f"MLP_DASK_SCHEDULER={address}: no Dask scheduler could be reached ({exc}). Start "
            "one there (`dask scheduler`, or a dask-jobqueue cluster), set MLP_DASK_TIMEOUT to "
            "wait longer, or unset MLP_DASK_SCHEDULER to train on this machine."
        ) from exc
    try:
        yield own
    finally:
        with _no_interrupts():
            own.close()


def _dask_where(client) -> str:
    threads = sum(client.nthreads().values())
    return f"on the Dask cluster at {client.scheduler.address} ({threads} worker threads now)"


def run_experiments(
    configs: Sequence[mlp.RunConfig],
    *,
    n_jobs: int | None = None,
    store: RunStore | None = None,
    progress: bool = True,
    on_done: Callable[[mlp.History, bool], None] | None = None,
    desc: str = "training",
    client=None,
) -> list[mlp.History]:
    """One History per config, in order: loaded from the store, or trained and then stored.

    Missing runs are trained in `n_jobs` worker processes (default: one per core; 1 trains in this
    process) under one progress display, or on a Dask cluster: `client` (a dask.distributed.Client)
    or $MLP_DASK_SCHEDULER (a scheduler address such as tcp://host:8786). `on_done(history,
    trained)` is called for every run as it becomes available. Diverged runs are returned (and
    warned about) but not stored; runs that cannot be stored are returned, with one warning. A run
    that another process is training on the same store (another build, a notebook) is waited for
    and then used from the store (said once), or trained here if that process left no entry. On
    Ctrl-C the training (or the wait) is ended and KeyboardInterrupt is raised; runs finished
    before it stay stored, and no lock is left."""
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
    saver = _SweepSaver(store)
    locks = _RunLocks(store)
    said_waiting = False
    try:
        while todo:
            ours = [c for c in todo if locks.take(c)]  # the others: another process trains them
            theirs = [c for c in todo if c not in ours]
            todo = []
            if ours:
                saver.check(ours)
                with (
                    _dask_client(client, announce=progress) as dask_client,
                    contextlib.closing(
                        _train(ours, n_jobs, dask_client, progress, desc)
                    ) as trained,
                ):
                    for h in trained:  # an error here closes `trained` at once, and its workers
                        results[h.config.replace(name="")] = h
                        if h.stop_reason == "diverged":
                            warnings.warn(h.message, RuntimeWarning, stacklevel=2)
                        saver.save(h)
                        locks.release(h.config)
                        if on_done:
                            on_done(h, True)
            if theirs and progress and not said_waiting:
                said_waiting = True
                print(
                    f"{desc}: waiting for {len(theirs)} run(s) that {locks.holder(theirs[0])} is "
                    f"training in the run store {store.folder}, to use them from there.",
                    file=sys.stderr,
                    flush=True,
                )
            for config in locks.wait(theirs):  # its lock is ours now: stored, or left to us
                if (h := store.load(config)) is None:
                    todo.append(config)  # its trainer failed or was stopped: train it here
                    continue
                locks.release(config)
                results[config.replace(name="")] = h
                if on_done:
                    on_done(h, False)
    finally:
        locks.release_all()
    return [dataclasses.replace(results[c.replace(name="")], config=c) for c in configs]


def _train(todo, n_jobs, client, progress: bool, desc: str) -> Iterator[mlp.History]:
    """Train `todo` where it was asked for, under one progress display."""
    n_jobs = max(1, min(len(todo), n_jobs or os.cpu_count() or 1))
    if client is not None:
        where = _dask_where(client)
    else:
        where = f"in {n_jobs} worker processes" if n_jobs > 1 else "in this process"
    workers = None if client is not None else n_jobs  # the processes of this machine
    display = SweepProgress(todo, desc=desc, enabled=progress, where=where, workers=workers)
    outcome = "failed"
    try:
        if client is not None:
            yield from _train_on_dask(client, todo, display)
        elif n_jobs == 1:
            yield from _train_here(todo, display)
        else:
            yield from _train_in_pool(todo, n_jobs, display)
        outcome = "done"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    except GeneratorExit:  # the caller stopped taking runs (its own error, or Ctrl-C there)
        outcome = "stopped"
        raise
    finally:
        display.close(outcome)
