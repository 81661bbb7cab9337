"""The speed benchmark runs (its timings are not checked: machines are noisy)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "bench.py"
# the last commit before mlp_core's one-pass rewrite, which kept training bit-identical
BEFORE_REWRITE = "78208ef"


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )


def has_commit(ref: str) -> bool:
    try:
        return (
            subprocess.run(
                ["git", "-C", str(REPO), "cat-file", "-e", f"{ref}:mlp_core.py"],
                capture_output=True,
            ).returncode
            == 0
        )
    except FileNotFoundError:  # no git
        return False


def test_bench_quick_runs(mnist_path):
    done = bench("--quick")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "mlp_core speed benchmark" in out
    for column in (
        "implementation",
        "step µs",
        "eval ms",
        "epoch ms",
        "steps %",
        "vs ref",
        "× floor",
        "× FLOP limit",
    ):
        assert column in out
    for row in (
        "floor (see below)",
        "reference (plain numpy, float64)",
        "mlp_core float64",
        "mlp_core float32 (default)",
        "FLOP limit",
        "mlp_core float32 vs float64",
        "reference vs mlp_core f64",
    ):
        assert row in out
    for network in ("[64]", "[128]", "10 x [64]"):
        assert f"\n{network} " in out
    # the machine, the floor and where the epoch goes
    for text in (
        "CPU: ",
        "BLAS: ",
        "kernel ",
        "threads available",
        "5 x the first layer's product over the 2,400 images a validation evaluates",
        "Where one protocol epoch of mlp_core float32 goes, [64]",
        "training steps",
        "validations",
        "The floor of [64], part by part:",
        "first-layer product over the validated images, one call:",
        "forward 1: matmul (32, 785) @ (785, 64)",
        "gradient 1: matmul (785, 32) @ (32, 64)",
        "one step (sum of its primitives)",
        "floor of the protocol epoch:",
    ):
        assert text in out, text
    if importlib.util.find_spec("torch") is None:  # torch is not a dependency of the project
        assert "PyTorch rows skipped: torch is not importable" in out
        assert "PyTorch eager" not in out
    else:
        assert "PyTorch eager float32, 1 thread" in out
        assert "mlp_core float32 is" in out and "as fast as PyTorch eager float32" in out


def test_bench_without_torch_says_so(mnist_path):
    done = bench("--quick", "--no-torch", "--networks", "[64]")
    assert done.returncode == 0, done.stderr
    assert "PyTorch rows left out (--no-torch)" in done.stdout
    assert "PyTorch eager" not in done.stdout


def test_floor_alone_runs(mnist_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "floor.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "Floor of one protocol epoch of [64] (float32, one BLAS thread):" in done.stdout
    assert "x 5 validations" in done.stdout and "(625 steps)" in done.stdout


@pytest.mark.skipif(
    not has_commit(BEFORE_REWRITE), reason=f"commit {BEFORE_REWRITE} is not in this clone"
)
def test_bench_against_an_earlier_commit(mnist_path):
    done = bench("--quick", "--against", BEFORE_REWRITE, "--repeats", "1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for text in (
        f"today against {BEFORE_REWRITE}",
        f"{BEFORE_REWRITE} ms",
        "today ms",
        f"today/{BEFORE_REWRITE}",
        "per repeat",
        "validations",
        "Requirement: today's [64] float32 protocol epoch at most 5% slower",
    ):
        assert text in out
    rows = [line for line in out.splitlines() if line.startswith(("[64] ", "[128] ", "10 x [64] "))]
    assert len(rows) == 3
    for (
        row
    ) in rows:  # the same seed and data: the rewrite takes exactly the steps the old code took
        assert row.endswith("bit-identical"), row


def test_bench_against_an_unknown_commit_says_so():
    done = bench("--quick", "--against", "no-such-commit")
    assert done.returncode == 2
    assert "--against 'no-such-commit': no such commit" in done.stderr
    assert "Traceback" not in done.stderr


def test_bench_times_a_given_core_file_against_a_commit(mnist_path):
    core = str(REPO / "mlp_core.py")
    done = bench("--quick", "--core", core, "--against", BEFORE_REWRITE, "--repeats", "1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"today's mlp_core: {core}" in out
    for text in (f"{BEFORE_REWRITE} × floor", "today × floor"):
        assert text in out
    rows = [line for line in out.splitlines() if line.startswith(("[64] ", "[128] ", "10 x [64] "))]
    assert len(rows) == 3 and all(row.endswith("bit-identical") for row in rows)


def test_bench_with_a_missing_core_file_says_so():
    done = bench("--quick", "--core", "/no/such/mlp_core.py")
    assert done.returncode == 2
    assert "--core '/no/such/mlp_core.py': no such file" in done.stderr
    assert "Traceback" not in done.stderr
