"""The run store: the folder that keeps every finished run, and which process trains a run.

The store is a folder (.cache/runs, or $MLP_RUN_STORE) with one entry per finished run: an .npz
file of plain arrays and a JSON header, read with allow_pickle=False, so reading an entry never
runs code. An entry's key (run_key) covers the whole configuration and a digest of the code that
computes a run (COMPUTING_MODULES: the core, the training loop, the data, the argument rules, the
MNIST files) and of what does its arithmetic (numpy, the BLAS kernel numpy calls): editing
notebooks, plots or the report layer reuses every run; editing any of those modules retrains them.
Entries are written to a temporary file and renamed, so a reader sees a whole entry or none.
Before an entry is used it is checked against its configuration (only a regular file of a
plausible size is read; the weights' number, shapes and dtype, finite weights and final metrics,
consistent history lists); a damaged or foreign entry is named in a warning, moved aside and
trained again. Only runs that ended as configured (early stopping or the last epoch) are stored:
interrupted, stopped and diverged runs never are. `RunStore.check_writable()` says before any
training whether the store can be written (RunStoreError otherwise, a FolderNotWritable, whose
wording the report build uses for its own folders).

Two processes on one store never train a run twice: a sweep locks the runs it trains (a flock
per run, which the kernel releases when its holder dies), and a sweep that finds a run locked by
another process waits for it, says so once, and uses its entry (or trains it, if that process
left none). The sweeps themselves are mlp_runs'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator

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
_VALIDATION_LISTS = ("val_steps", "train_loss_full", "train_acc", "val_loss", "val_acc")


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


def max_steps(config: mlp.RunConfig) -> int:
    return config.max_epochs * config.steps_per_epoch


def entry_bytes(config: mlp.RunConfig) -> int:
    """About the largest an entry of `config` gets: its weights, a history to the last epoch."""
    n_weights = len(config.layer_sizes)
    n_validations = max_steps(config) // config.validation_interval + 1
    weight_bytes = mlp.count_parameters(config.layer_sizes) * np.dtype(config.dtype).itemsize
    list_values = (
        max_steps(config)
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
    if not 1 <= steps <= max_steps(config) or set(lengths.values()) != {n_validations}:
        raise ValueError(
            f"its history lists have inconsistent lengths ({steps} steps of at most "
            f"{max_steps(config)}; validation lists {lengths})"
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


class SweepSaver:
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


class RunLocks:
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
