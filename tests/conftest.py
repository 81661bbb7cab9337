"""Shared test setup: caches in a temporary folder (never $HOME), the MNIST files, small data."""

import os
import socket
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_CACHE = Path(tempfile.mkdtemp(prefix="mlp-test-cache-"))
for var, sub in (
    ("MPLCONFIGDIR", "matplotlib"),
    ("IPYTHONDIR", "ipython"),
    ("JUPYTER_CONFIG_DIR", "jupyter/config"),
    ("JUPYTER_DATA_DIR", "jupyter/data"),
    ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"),
):
    os.environ.setdefault(var, str(_CACHE / sub))
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import mlp_core as mlp  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    """The folder with the four real MNIST files (run `make data` to fill the cache)."""
    path = mlp.mnist_dir()
    missing = [s.name for s in mlp.MNIST_FILES.values() if not (path / s.name).is_file()]
    if missing:
        pytest.fail(
            f"MNIST files {missing} are missing in {path}: run `make data` (or set MNIST_DIR)"
        )
    return path


@pytest.fixture(scope="session")
def mnist(mnist_path) -> mlp.MNIST:
    return mlp.load_mnist(mnist_path, download=False)


@pytest.fixture(scope="session")
def small_data(mnist_path) -> mlp.Dataset:
    """A small protocol dataset for quick training tests."""
    return mlp.prepare_data(n_train=640, dtype="float32", n_val=500)


@pytest.fixture
def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens: bound (not listening) by this test while it
    lasts, so that no other program on this shared machine can take it meanwhile; a connection
    to it is refused at once."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def silent_port() -> int:
    """A TCP port on 127.0.0.1 that takes connections (the kernel completes them) and never
    answers: a program that is not what the client expects, or one that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]
