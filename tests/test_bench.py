"""The speed benchmark runs (its timings are not checked: machines are noisy)."""

import subprocess
import sys
from pathlib import Path

import pytest
from history import REFERENCE, has_commit

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "bench.py"
sys.path.insert(0, str(REPO / "bench"))

from bench import report, runnable_kernels  # noqa: E402


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--networks", "[64]", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def test_bench_quick_runs(mnist_path):
    done = bench()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for text in (
        "kernel OpenBLAS picks here",
        "× floor",
        "floor (every call, bench/floor.py)",
        "mlp_core float32, one core",
        "mlp_core float32, second core",
        "plain numpy reference, float64",
        "[64]: mlp_core's steps take",
        "targets: [64] at most 1.25 × the floor:",
        "PyTorch rows left out: give --torch PYTHON",
    ):
        assert text in out, text


@pytest.mark.skipif("Sandybridge" not in runnable_kernels(), reason="this CPU has no AVX")
def test_bench_measures_under_a_given_kernel(mnist_path):
    done = bench("--kernels", "Sandybridge")
    assert done.returncode == 0, done.stderr
    assert "kernel Sandybridge (OPENBLAS_CORETYPE=Sandybridge)" in done.stdout


def test_a_kernel_the_cpu_lacks_is_refused():
    done = bench("--kernels", "Pentium4")
    assert done.returncode == 2
    assert "this CPU cannot run the kernel(s) Pentium4" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_torch_interpreter_is_refused():
    done = bench("--torch", "/no/such/python")
    assert done.returncode == 2 and "--torch /no/such/python: no such interpreter" in done.stderr


@pytest.mark.skipif(not has_commit(REFERENCE), reason=f"{REFERENCE} is not in this clone")
def test_bench_times_an_earlier_commit_beside_today(mnist_path):
    done = bench("--against", REFERENCE)
    assert done.returncode == 0, done.stderr
    assert f"mlp_core at {REFERENCE}" in done.stdout


def test_bench_against_an_unknown_commit_says_so():
    done = bench("--against", "no-such-commit")
    assert done.returncode != 0
    assert "'no-such-commit' is neither a folder nor a commit of this clone" in done.stderr
    assert "Traceback" not in done.stderr


def test_floor_alone_runs(mnist_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "floor.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    for network in ("[64]", "[128]", "10 x [64]"):
        assert f"{network}: floor " in done.stdout
    assert "steps: forward product 1" in done.stdout and "validations: product 1" in done.stdout


def _rounds(*epochs: float, **extra) -> list[dict]:
    return [{"epoch": e, "steps": e / 3, **extra} for e in epochs]


@pytest.mark.parametrize(
    "torch_epochs, verdict",
    [
        ((0.74, 0.76, 0.80), "1.520 × (rounds 1.48–1.60), met"),  # median of the rounds' ratios
        ((0.74, 0.745, 0.80), "1.490 × (rounds 1.48–1.60), NOT met"),
    ],
)
def test_the_pytorch_verdict_gives_three_decimals_and_the_rounds_range(torch_epochs, verdict):
    results = {
        "[64]": {
            "floor": _rounds(0.45, 0.45, 0.45),
            "mlp_core": _rounds(0.5, 0.5, 0.5),
            "torch": _rounds(*torch_epochs, torch="2.13.0"),
        }
    }
    lines = report(results, "a title")
    assert lines[-1] == (
        "targets: [64] at most 1.25 × the floor: 1.11 ×, met; "
        f"[64] at least 1.5 × faster than PyTorch: {verdict}"
    )
