"""The speed benchmark runs (its timings are not checked: machines are noisy)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "bench.py"
BEFORE_REWRITE = "78208ef"  # the last commit before mlp_core's one-pass rewrite, which kept training bit-identical


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
    done = bench("--quick", "--no-torch")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "mlp_core speed benchmark" in out
    for column in ("implementation", "step µs", "eval ms", "epoch ms", "vs ref", "× FLOP limit"):
        assert column in out
    for row in (
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
