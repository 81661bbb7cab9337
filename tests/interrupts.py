"""Signal dispositions as the tests rely on them, whatever the suite inherited.

Under `nohup`, or started as `make test &` by a script (a background job of a non-interactive
shell), the suite inherits SIGINT (and SIGQUIT) ignored, and so does every program it starts:
Python keeps an inherited ignore, rightly, so a Ctrl-C test would see its build run to the end.
A test that sends a signal therefore sets the disposition it relies on, in its child
(`preexec_fn=default_dispositions`) or in this process (`sigint_raises()`), and checks that it
took (`assert_default`, `wait_until_caught`) from the kernel's own record (/proc/<pid>/status).
"""

import contextlib
import signal
import subprocess
import time
from pathlib import Path

SENT = (signal.SIGINT, signal.SIGTERM)  # the signals the tests send


def default_dispositions() -> None:
    """In a child, before it runs its program (Popen's preexec_fn): the default action for the
    signals the tests send, as in a terminal's foreground."""
    for sent in SENT:
        signal.signal(sent, signal.SIG_DFL)


def _has(pid: int, field: str, sent: signal.Signals) -> bool:
    """Whether the kernel's mask `field` (SigIgn: ignored, SigCgt: caught) of `pid` holds `sent`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return bool(int(line.split()[1], 16) >> (sent - 1) & 1)
    raise LookupError(f"/proc/{pid}/status has no {field}")


def assert_default(pid: int, sent: signal.Signals) -> None:
    """The process `pid` does not ignore `sent` (its default action or a handler of its own)."""
    assert not _has(pid, "SigIgn", sent), f"process {pid} ignores {sent.name}"


def wait_until_caught(pid: int, sent: signal.Signals, within: float = 120.0) -> None:
    """Wait until the Python program `pid` has its handler for `sent` (for SIGINT: the one that
    raises KeyboardInterrupt, installed as the interpreter starts), so that what the test sends
    reaches the program and not the default action; generous `within` for a busy machine."""
    assert_default(pid, sent)
    deadline = time.monotonic() + within
    while not _has(pid, "SigCgt", sent):
        assert time.monotonic() < deadline, f"process {pid} never installed its {sent.name} handler"
        time.sleep(0.02)


@contextlib.contextmanager
def sigint_raises():
    """In this process while it lasts: SIGINT raises KeyboardInterrupt (Python's handler, what
    Ctrl-C at an interactive prompt does); the previous disposition afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def start_in_own_session(command: list[str], **popen) -> subprocess.Popen:
    """`command` in a session of its own (so a test can send SIGINT to its whole group, as a
    terminal does), with the default dispositions, its output as text; returned once its SIGINT
    handler is in place."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=default_dispositions,
        **popen,
    )
    wait_until_caught(proc.pid, signal.SIGINT)
    return proc
