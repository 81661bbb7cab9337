"""Training is bit-identical to the commit before the core was split (bench/bit_identity.py)."""

import shutil
import subprocess
import sys

import pytest
from history import REFERENCE, REPO, has_commit

TOOL = REPO / "bench" / "bit_identity.py"


def bit_identity(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(TOOL), "--quick", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)


def compared(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith(("same", "DIFF"))]


@pytest.mark.skipif(not has_commit(REFERENCE), reason=f"{REFERENCE} is not in this clone")
def test_training_is_bit_identical_to_the_commit_before_the_split(mnist_path):
    done = bit_identity("--old", REFERENCE)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = compared(done.stdout)
    assert len(lines) >= 15 and all(line.startswith("same ") for line in lines), done.stdout
    for case in (
        "10 x [64]",
        "[128] improved sigmoid",
        "float64",
        "early stopping",
        "divergence",
        "no second core",
        "evaluate()",
    ):
        assert any(case in line for line in lines), case
    assert done.stdout.splitlines()[-1] == "all bit-identical"


def test_a_changed_constant_is_found(tmp_path, mnist_path):
    """The check can fail: a tree whose improved sigmoid differs in its fourth decimal."""
    changed = tmp_path / "changed"
    shutil.copytree(REPO, changed, ignore=shutil.ignore_patterns(".*", "data", "report", "tests"))
    core = changed / "mlp_core.py"
    source = core.read_text()
    assert "1.7159" in source
    core.write_text(source.replace("1.7159", "1.7158"))
    done = bit_identity("--old", str(changed), "--new", str(REPO))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = compared(done.stdout)
    differ = [line for line in lines if line.startswith("DIFFER")]
    assert differ and all("improved sigmoid" in line for line in differ), done.stdout
    assert any(line.startswith("same ") for line in lines)
    assert done.stdout.splitlines()[-1].endswith("comparison(s) differ")
