"""The speed benchmark runs (its timings are not checked: machines are noisy)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_quick_runs(mnist_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench.py"), "--quick", "--no-torch"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "mlp_core speed benchmark" in out
    for column in ("implementation", "step µs", "eval ms", "epoch ms", "vs ref", "× FLOP limit"):
        assert column in out
    for row in ("reference (plain numpy, float64)", "mlp_core float32 (default)", "FLOP limit",
                "mlp_core float32 vs float64", "reference vs mlp_core f64"):
        assert row in out
