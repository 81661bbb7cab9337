"""Two processes on one run store (two builds, a build and a notebook) never train a run twice:
a run another process is training is waited for, said once, and then used from the store; if
that process fails or dies and leaves no entry, the waiting one trains it. No stale lock holds
anything up: a lock of a dead process, one holding garbage and one this process holds are taken
over at once, and Ctrl-C while waiting stops the sweep and leaves no lock of its own. Tiny runs
(seconds); each other process is a real sweep in a subprocess, held at its first step until the
test lets it go."""

import io
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import interrupts
import numpy as np
import pytest

import mlp_core as mlp
import mlp_runs
import mlp_store

REPO = Path(__file__).resolve().parent.parent
TINY = dict(n_train=320, n_val=200, max_epochs=2)
WITHIN = 120  # seconds: generous bounds for a busy machine; no verdict depends on them

# a sweep of one run that stops before training until a line on stdin says "go" (or "fail")
HOLDER = textwrap.dedent("""
    import json, sys
    import mlp_core as mlp, mlp_runs, mlp_store
    real = mlp.train

    def held(config, *args, **kwargs):
        print("training", flush=True)
        if sys.stdin.readline().strip() == "fail":
            raise RuntimeError("the other process failed")
        return real(config, *args, **kwargs)

    mlp.train = held
    config = mlp.RunConfig(**json.loads(sys.argv[2]))
    mlp_runs.run_experiments([config], store=mlp_store.RunStore(sys.argv[1]), n_jobs=1)
    print("stored", flush=True)
""")

# a sweep of several runs, in its own process, that reports Ctrl-C
WAITER = textwrap.dedent("""
    import json, sys
    import mlp_core as mlp, mlp_runs, mlp_store
    configs = [mlp.RunConfig(**fields) for fields in json.loads(sys.argv[2])]
    try:
        mlp_runs.run_experiments(configs, store=mlp_store.RunStore(sys.argv[1]), n_jobs=1)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
""")


class Process:
    """A Python script in a subprocess, its output lines read as they come."""

    def __init__(self, script: str, *args: str, **popen):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **popen,
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, text: str) -> str:
        """The first line (from now on) that holds `text`; fails if the process ends first."""
        deadline = time.monotonic() + WITHIN
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            assert line is not None, f"it ended without saying {text!r}: {self.seen}"
            self.seen.append(line)
            if text in line:
                return line
        pytest.fail(f"it never said {text!r}: {self.seen}")

    def say(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def end(self) -> int:
        try:
            return self.proc.wait(WITHIN)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def store(tmp_path) -> mlp_store.RunStore:
    return mlp_store.RunStore(tmp_path / "runs")


def printed(monkeypatch) -> io.StringIO:
    """What the sweeps of this process print from now on (the waiting line among it). Called in
    the test itself: pytest's capture sets sys.stderr anew when the test body starts."""
    text = io.StringIO()
    monkeypatch.setattr(sys, "stderr", text)
    return text


def holding(store: mlp_store.RunStore, config: mlp.RunConfig) -> Process:
    """Another process whose sweep holds the run of `config`, stopped before its first step."""
    fields = {name: getattr(config, name) for name in (*TINY, "seed")}
    holder = Process(HOLDER, str(store.folder), json.dumps(fields))
    holder.expect("training")
    return holder


def in_a_thread(sweep) -> tuple[threading.Thread, dict]:
    outcome = {}

    def run() -> None:
        try:
            outcome["histories"] = sweep()
        except BaseException as exc:  # noqa: BLE001  (handed to the test)
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def until(condition, what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def lock_files(store: mlp_store.RunStore) -> list[str]:
    return sorted(p.name for p in store.folder.glob("*.lock"))


def test_a_run_another_process_trains_is_waited_for_and_used(store, monkeypatch):
    stderr = printed(monkeypatch)
    config = mlp.RunConfig(**TINY)
    holder = holding(store, config)
    monkeypatch.setattr(mlp_runs, "_train_quietly", lambda *a, **k: pytest.fail("trained twice"))
    done = []
    t0 = time.monotonic()
    thread, outcome = in_a_thread(
        lambda: mlp_runs.run_experiments(
            [config], store=store, n_jobs=1, on_done=lambda h, trained: done.append(trained)
        )
    )
    waiting = (
        f"training: waiting for 1 run(s) that process {holder.proc.pid} is training in the run "
        f"store {store.folder}, to use them from there.\n"
    )
    until(lambda: waiting in stderr.getvalue(), "the sweep said that it waits")
    assert thread.is_alive()  # the other process has not trained it yet: this one waits
    holder.say("go")
    thread.join(WITHIN)
    assert not thread.is_alive() and "error" not in outcome, outcome
    print(f"\nwaited for the other process and used its run: {time.monotonic() - t0:.1f} s")
    holder.expect("stored")
    assert holder.end() == 0
    (used,) = outcome["histories"]
    assert done == [False] and stderr.getvalue().count("waiting for") == 1
    assert np.array_equal(used.weights[0], store.load(config).weights[0])
    assert lock_files(store) == []


def test_a_run_left_untrained_by_a_failed_process_is_trained_here(store, monkeypatch):
    stderr = printed(monkeypatch)
    config = mlp.RunConfig(**TINY, seed=1)
    holder = holding(store, config)
    done = []
    thread, outcome = in_a_thread(
        lambda: mlp_runs.run_experiments(
            [config], store=store, n_jobs=1, on_done=lambda h, trained: done.append(trained)
        )
    )
    until(lambda: "waiting for 1 run(s)" in stderr.getvalue(), "the sweep said that it waits")
    holder.say("fail")
    assert holder.end() == 1
    thread.join(WITHIN)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert done == [True] and outcome["histories"][0].completed and config in store
    assert lock_files(store) == []


def test_the_lock_of_a_dead_process_is_taken_over_at_once(store, monkeypatch):
    stderr = printed(monkeypatch)
    config = mlp.RunConfig(**TINY, seed=2)
    holder = holding(store, config)
    holder.proc.kill()  # no clean-up at all: its lock file stays, with its process id
    holder.end()
    assert lock_files(store) and lock_files(store)[0].startswith("run-")
    done = []
    mlp_runs.run_experiments(
        [config], store=store, n_jobs=1, on_done=lambda h, trained: done.append(trained)
    )
    assert done == [True] and "waiting" not in stderr.getvalue() and lock_files(store) == []


def test_a_lock_file_holding_garbage_is_taken_over_at_once(store, monkeypatch):
    stderr = printed(monkeypatch)
    config = mlp.RunConfig(**TINY, seed=3)
    lock = mlp_store.RunLocks(store).path(config)
    lock.parent.mkdir(parents=True)
    lock.write_bytes(b"\x00\xffnot a process id\n" * 100)
    done = []
    mlp_runs.run_experiments(
        [config], store=store, n_jobs=1, on_done=lambda h, trained: done.append(trained)
    )
    assert done == [True] and "waiting" not in stderr.getvalue() and lock_files(store) == []


def test_a_lock_this_process_holds_is_not_waited_for(store, monkeypatch):
    """Another sweep of this process (a thread, a notebook cell) holds the run: this sweep trains
    it too rather than wait for itself; the other sweep's lock stays until it lets go."""
    stderr = printed(monkeypatch)
    config = mlp.RunConfig(**TINY, seed=4)
    other_sweep = mlp_store.RunLocks(store)
    assert other_sweep.take(config)
    done = []
    mlp_runs.run_experiments(
        [config], store=store, n_jobs=1, on_done=lambda h, trained: done.append(trained)
    )
    assert done == [True] and "waiting" not in stderr.getvalue()
    assert lock_files(store) == [other_sweep.path(config).name]
    other_sweep.release(config)
    assert lock_files(store) == []


def test_ctrl_c_while_waiting_stops_and_leaves_no_lock(store):
    """The waiting sweep trains its own run, then waits for the other one; Ctrl-C (SIGINT, its
    default disposition set whatever the suite inherited) stops it within seconds: its own run is
    stored with no lock left, and the other process's lock is untouched."""
    own, theirs = mlp.RunConfig(**TINY, seed=5), mlp.RunConfig(**TINY, seed=6)
    holder = holding(store, theirs)
    fields = [{name: getattr(c, name) for name in (*TINY, "seed")} for c in (own, theirs)]
    waiter = Process(
        WAITER,
        str(store.folder),
        json.dumps(fields),
        start_new_session=True,
        preexec_fn=interrupts.default_dispositions,
    )
    interrupts.wait_until_caught(waiter.proc.pid, signal.SIGINT)
    waiter.expect(f"waiting for 1 run(s) that process {holder.proc.pid} is training")
    t0 = time.monotonic()
    os.killpg(waiter.proc.pid, signal.SIGINT)
    waiter.expect("interrupted")
    assert waiter.end() == 130
    took = time.monotonic() - t0
    print(f"\nCtrl-C while waiting: stopped after {took:.2f} s")
    assert took < 30, f"the wait took {took:.1f} s to stop"  # generous: a busy machine
    lock = mlp_store.RunLocks(store)
    assert own in store and lock_files(store) == [lock.path(theirs).name]
    assert not lock.take(theirs)  # still the other process's
    holder.say("go")
    holder.expect("stored")
    assert holder.end() == 0 and theirs in store and lock_files(store) == []
