"""The git history the tests compare against (a clone may lack it: a shallow clone, no git)."""

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = "4ee7e7e"  # the last commit before the core was split into modules


def has_commit(ref: str) -> bool:
    if shutil.which("git") is None:
        return False
    probe = ["git", "-C", str(REPO), "cat-file", "-e", f"{ref}^{{commit}}"]
    return subprocess.run(probe, capture_output=True).returncode == 0
