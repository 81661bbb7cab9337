"""Training lists of runs, under one progress display, in this process, in local worker processes
or on a Dask cluster; finished runs are kept in the run store (mlp_store). Not here: how a run
trains (mlp_train) and what the report does with the runs (mlp_report).

`run_experiments(configs)` returns one History per RunConfig: runs found in the store are loaded,
the others are trained in worker processes (one per core) under one progress display and stored as
soon as each finishes. Runs that differ only in their name are trained once, and a run another
process is training is waited for (mlp_store's run locks). With `MLP_DASK_SCHEDULER=tcp://host:8786`
(or `client=` a dask.distributed.Client) the missing runs are trained on that Dask cluster instead
and stored on this side, so the workers need no shared disk (the optional extra:
`pip install -e .[dask]`). A sweep whose runs cannot be stored still returns and uses them, and
says so once.

Ctrl-C (SIGINT, or a Jupyter kernel's interrupt) ends the whole sweep within a second or two: the
local workers, which ignore SIGINT themselves, are terminated (Dask tasks are cancelled and stop at
their next step), the runs finished so far stay in the store, and KeyboardInterrupt is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Sequence

import mlp_core as mlp
import mlp_speed
from mlp_store import RunLocks, RunStore, SweepSaver, code_digest, max_steps, run_key

DASK_EXTRA_HINT = "pip install -e '.[dask]'"  # how to get the optional Dask extra
DASK_PROGRESS_TOPIC = "mlp-runs-progress"  # the Dask event topic the workers report steps on


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
                max_steps=max_steps(c),
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


@contextlib.contextmanager
def _spawning_workers():
    """Worker processes start with SIGINT blocked, a mask they inherit from the thread that
    spawns them: a Ctrl-C that reaches them while they still import (before _worker_init ignores
    it) would print a traceback from the middle of their start-up. In this process a Ctrl-C is
    only held back while it spawns, and raised right after."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
                with _spawning_workers():  # submit starts a worker when none is idle
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
    scheme, sep, location = address.partition("://")  # as dask parses it: tcp:// by default
    if not sep:
        scheme, location = "tcp", address
    try:
        if scheme in ("tcp", "tls", "ws", "wss"):
            _host, colon, port = location.rpartition(":")
            if not colon:
                raise ValueError("it names no host:port")
            if not (port.isascii() and port.isdigit() and 0 < int(port) < 2**16):
                raise ValueError(f"the port {port!r} is not a number from 1 to 65535")
        else:  # another of dask's transports (inproc, ucx, ...): only dask knows them
            _import_distributed()
            from distributed.comm.registry import backends

            if scheme not in backends:
                raise ValueError(f"unknown scheme {scheme}://")
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
    saver = SweepSaver(store)
    locks = RunLocks(store)
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
