"""A multi-layer perceptron for MNIST, written from scratch in numpy.

This module is the whole library behind the TDT4265 Assignment 2 notebooks: it loads and verifies
the MNIST files, prepares the protocol's data split, defines the network (any list of layer sizes,
sigmoid or improved-sigmoid hidden units, softmax output), trains it with mini-batch SGD and early
stopping exactly as the assignment's protocol prescribes, checks gradients numerically, and draws
the plots and tables of the report.

What it deliberately does not do: no automatic differentiation, no GPU, no biases beyond the
input layer's bias column (the assignment's model), no convolution. Everything is explicit numpy so
that each equation of the report can be found in the code.

Sections: data · model · optimiser · training · parallel runs · evaluation · plotting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import math
import numbers
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "MNISTDataError", "MNIST", "MNIST_FILES", "MIRROR_URL", "mnist_dir", "parse_idx", "read_idx_gz",
    "download_mnist", "load_mnist", "pixel_stats", "normalize", "add_bias", "one_hot", "Split",
    "Dataset", "prepare_data", "ACTIVATIONS", "MLP", "softmax", "cross_entropy", "SGD", "RunConfig",
    "History", "train", "run_experiments", "evaluate", "gradient_check", "count_parameters",
    "equal_width_for_budget", "initial_model", "results_table", "final_table", "mean_std", "Table", "smoke_mode",
    "SMOKE_SETTINGS", "n_seeds",
    "setup_notebook", "describe",
    "plot_loss", "plot_accuracy", "plot_grad_norms", "smooth",
]

REPO_DIR = Path(__file__).resolve().parent
NUM_CLASSES = 10
IMAGE_PIXELS = 28 * 28
INPUT_SIZE = IMAGE_PIXELS + 1  # the bias trick appends a constant 1 to every image


# ================================================================================================
# Data
# ================================================================================================

class MNISTDataError(RuntimeError):
    """A MNIST file is missing, damaged or could not be downloaded. The message says what to do."""


@dataclass(frozen=True)
class _IdxFile:
    name: str       # file name of the gzip IDX file
    magic: int      # 2051 for images, 2049 for labels
    count: int      # number of images or labels
    sha256: str     # SHA-256 of the decompressed bytes


# SHA-256 of the *decompressed* bytes, so that any mirror's gzip of the same content is accepted.
MNIST_FILES = {
    "train_images": _IdxFile("train-images-idx3-ubyte.gz", 2051, 60_000,
                             "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train_labels": _IdxFile("train-labels-idx1-ubyte.gz", 2049, 60_000,
                             "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test_images": _IdxFile("t10k-images-idx3-ubyte.gz", 2051, 10_000,
                            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test_labels": _IdxFile("t10k-labels-idx1-ubyte.gz", 2049, 10_000,
                            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
MIRROR_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
DEFAULT_CACHE = REPO_DIR / "data" / "mnist"


@dataclass(frozen=True)
class MNIST:
    """The four MNIST arrays as stored: images (N, 784) uint8, labels (N,) uint8."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def mnist_dir() -> Path:
    """Where the MNIST files live: $MNIST_DIR if set, else the repository's data/mnist cache."""
    env = os.environ.get("MNIST_DIR")
    return Path(env).expanduser().resolve() if env else DEFAULT_CACHE


def parse_idx(raw: bytes, *, magic: int, count: int | None = None, name: str = "<bytes>") -> np.ndarray:
    """Parse decompressed IDX bytes into a uint8 array: (count, 784) for images, (count,) for labels.

    Checks the magic number, the dimensions (28x28 for images) and that the payload has exactly
    the announced length.
    """
    def fail(what: str) -> MNISTDataError:
        return MNISTDataError(f"{name}: {what}. The file is damaged or not an MNIST IDX file; "
                              f"delete it and let the loader download a fresh copy.")

    ndim = {2051: 3, 2049: 1}.get(magic)
    if ndim is None:
        raise ValueError(f"magic must be 2051 (images) or 2049 (labels), got {magic}")
    header_len = 4 + 4 * ndim
    found_magic = int.from_bytes(raw[0:4], "big") if len(raw) >= 4 else None
    if found_magic is not None and found_magic != magic:
        raise fail(f"wrong magic number {found_magic} (expected {magic})")
    if len(raw) < header_len:
        raise fail(f"only {len(raw)} bytes, shorter than the {header_len}-byte IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if count is not None and dims[0] != count:
        raise fail(f"wrong count {dims[0]} (expected {count})")
    if ndim == 3 and dims[1:] != [28, 28]:
        raise fail(f"wrong image size {dims[1]}x{dims[2]} (expected 28x28)")
    expected = header_len + math.prod(dims)
    if len(raw) != expected:
        raise fail(f"{len(raw)} bytes where the header announces {expected}")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_len)
    return data.reshape(dims[0], -1) if ndim == 3 else data


def read_idx_gz(path: str | os.PathLike, key: str) -> np.ndarray:
    """Read and fully verify one of the four MNIST files (`key` as in MNIST_FILES)."""
    spec = MNIST_FILES[key]
    path = Path(path)
    if not path.is_file():
        raise MNISTDataError(
            f"{path}: MNIST file not found. Set MNIST_DIR to a folder holding the four MNIST .gz "
            f"files, run `make data`, or call load_mnist(download=True) to download them.")
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except gzip.BadGzipFile as exc:
        raise MNISTDataError(f"{path}: not a gzip file ({exc}). Delete it and download it again.") from exc
    except (EOFError, zlib.error) as exc:
        raise MNISTDataError(f"{path}: the gzip stream is truncated or corrupted ({exc}). "
                             f"Delete it and download it again.") from exc
    array = parse_idx(raw, magic=spec.magic, count=spec.count, name=str(path))
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise MNISTDataError(f"{path}: SHA-256 of the decompressed data is {digest}, expected "
                             f"{spec.sha256}. The file is corrupted; delete it and download it again.")
    return array


def _download_one(url: str, target: Path, key: str, progress: bool, timeout: float) -> None:
    """Download `url` to a temporary file beside `target`, verify it, then rename it into place."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                          disable=not progress, leave=False) as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MNISTDataError(
                f"{target.name}: download from {url} failed ({exc}). Check the network, or copy "
                f"the four MNIST .gz files into {target.parent} (or point MNIST_DIR at them).") from exc
        try:
            read_idx_gz(tmp, key)
        except MNISTDataError as exc:
            raise MNISTDataError(f"{target.name}: the file downloaded from {url} failed verification "
                                 f"and was discarded: {exc}") from exc
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def download_mnist(directory: str | os.PathLike | None = None, *, base_url: str | None = None,
                   progress: bool = True, timeout: float = 60.0, force: bool = False) -> Path:
    """Download the missing MNIST files into `directory` (default: mnist_dir()).

    Each file is written to a temporary name and renamed only after its checksum passes, so an
    interrupted or corrupted download never looks like a valid file. `base_url` defaults to
    $MNIST_MIRROR or the public mirror.
    """
    directory = Path(directory) if directory is not None else mnist_dir()
    base_url = base_url or os.environ.get("MNIST_MIRROR") or MIRROR_URL
    if not base_url.endswith("/"):
        base_url += "/"
    for key, spec in MNIST_FILES.items():
        target = directory / spec.name
        if force or not target.exists():
            _download_one(base_url + spec.name, target, key, progress, timeout)
    return directory


@functools.lru_cache(maxsize=4)
def _load_verified(directory: Path) -> MNIST:
    arrays = {}
    for key, spec in MNIST_FILES.items():
        path = directory / spec.name
        try:
            arrays[key] = read_idx_gz(path, key)
        except MNISTDataError as exc:
            if directory == DEFAULT_CACHE and path.exists():
                # Never leave a corrupt file in our own cache looking valid: move it aside.
                quarantine = path.with_name(path.name + ".corrupt")
                os.replace(path, quarantine)
                raise MNISTDataError(f"{exc} (It was moved aside to {quarantine.name}; run again to "
                                     f"download a fresh copy.)") from exc
            raise
    for arr in arrays.values():
        arr.flags.writeable = False  # shared by every caller in this process
    return MNIST(**arrays)


def load_mnist(directory: str | os.PathLike | None = None, *, download: bool = True,
               base_url: str | None = None, progress: bool = True) -> MNIST:
    """Load and verify the four MNIST files, once per process and directory.

    Files come from `directory`, else $MNIST_DIR, else the repository's data/mnist cache. Missing
    files are downloaded (when `download` is true) from `base_url`, $MNIST_MIRROR or the public
    mirror. Any problem raises MNISTDataError naming the file and what to do.
    """
    directory = Path(directory).expanduser().resolve() if directory is not None else mnist_dir()
    missing = [s.name for s in MNIST_FILES.values() if not (directory / s.name).exists()]
    if missing:
        if not download:
            raise MNISTDataError(
                f"{directory}: missing MNIST files {', '.join(missing)}. Set MNIST_DIR to a folder "
                f"holding them, run `make data`, or call load_mnist(download=True).")
        download_mnist(directory, base_url=base_url, progress=progress)
    return _load_verified(directory)


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation over all pixels of `images`, in float64.

    For uint8 images the sums run over a 256-bin histogram, so no float copy of the images is
    made (60,000 images would take 376 MB); the mean is exact and the standard deviation agrees with
    numpy's `std` (78.56748998339798 for MNIST's training set)."""
    images = np.asarray(images)
    if images.size == 0:
        raise ValueError("images must not be empty")
    if images.dtype == np.uint8:
        flat, chunk = images.ravel(), 1 << 20  # bincount widens its input to int64: go chunk by chunk
        counts = sum(np.bincount(flat[i:i + chunk], minlength=256) for i in range(0, flat.size, chunk))
        counts = counts.astype(np.float64)
        values = np.arange(256, dtype=np.float64)
        n = counts.sum()
        mean = float(counts @ values / n)
        return mean, float(np.sqrt(counts @ (values - mean) ** 2 / n))
    flat = images.astype(np.float64, copy=False).ravel()
    return float(flat.mean()), float(flat.std())


def normalize(images: np.ndarray, mu: float, sigma: float, dtype=np.float32) -> np.ndarray:
    """(x - mu) / sigma on raw pixels, as `dtype` (computed in float64, then rounded once)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    images = np.asarray(images)
    if images.dtype == np.uint8 and images.ndim > 0:
        return _look_up(_pixel_table(mu, sigma, dtype), images, np.empty(images.shape, dtype))
    return ((images.astype(np.float64) - mu) / sigma).astype(dtype, copy=False)


def _pixel_table(mu: float, sigma: float, dtype) -> np.ndarray:
    """(v - mu) / sigma for each pixel value v = 0..255, in float64 and then rounded once to `dtype`:
    looking pixels up in it gives the formula's values without a float64 copy of the images."""
    return ((np.arange(256, dtype=np.float64) - mu) / sigma).astype(dtype)


def _look_up(table: np.ndarray, images: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = table[images], a block of images at a time (np.take widens uint8 indices to int64)."""
    for i in range(0, len(images), 2048):
        np.take(table, images[i:i + 2048], out=out[i:i + 2048])
    return out


def add_bias(X: np.ndarray) -> np.ndarray:
    """Append the constant-1 bias column: (N, D) -> (N, D + 1)."""
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (N, D), got shape {X.shape}")
    out = np.empty((X.shape[0], X.shape[1] + 1), dtype=X.dtype)
    out[:, :-1] = X
    out[:, -1] = 1
    return out


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES, dtype=np.float32) -> np.ndarray:
    """Integer labels (N,) -> one-hot targets (N, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} and dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got values from "
                         f"{labels.min()} to {labels.max()}")
    out = np.zeros((labels.size, num_classes), dtype=dtype)
    out[np.arange(labels.size), labels] = 1
    return out


@dataclass(frozen=True)
class Split:
    """One split ready for the network: X (N, 785) normalised with bias column, one-hot Y, labels."""
    X: np.ndarray
    Y: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """The protocol's training and validation splits and the normalisation constants."""
    train: Split
    val: Split
    mu: float
    sigma: float


@functools.lru_cache(maxsize=8)
def prepare_data(n_train: int = 20_000, dtype: str = "float32", n_val: int | None = None,
                 directory: str | None = None) -> Dataset:
    """The protocol's data: the first `n_train` training images for training, the 10,000 test
    images (or their first `n_val`) for validation, both normalised with mu and sigma over all
    60,000 training images, with the bias column appended and one-hot targets. Cached per process.
    """
    raw = load_mnist(directory)
    if not 1 <= n_train <= len(raw.train_labels):
        raise ValueError(f"n_train must be in [1, {len(raw.train_labels)}], got {n_train}")
    n_val = len(raw.test_labels) if n_val is None else n_val
    if not 1 <= n_val <= len(raw.test_labels):
        raise ValueError(f"n_val must be in [1, {len(raw.test_labels)}], got {n_val}")
    dtype = np.dtype(dtype)
    mu, sigma = pixel_stats(raw.train_images)

    table = _pixel_table(mu, sigma, dtype)  # what normalize() computes

    def split(images, labels) -> Split:
        X = np.empty((len(images), images.shape[1] + 1), dtype=dtype)  # filled in place: no temporaries
        _look_up(table, images, X[:, :-1])
        X[:, -1] = 1  # the bias trick
        labels = labels.astype(np.int64)
        Y = one_hot(labels, dtype=dtype)
        for arr in (X, Y, labels):
            arr.flags.writeable = False
        return Split(X, Y, labels)

    return Dataset(split(raw.train_images[:n_train], raw.train_labels[:n_train]),
                   split(raw.test_images[:n_val], raw.test_labels[:n_val]), mu, sigma)


# ================================================================================================
# Model
# ================================================================================================

_LECUN_A = 1.7159
_LECUN_B = 2.0 / 3.0


def _sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # 1/(1+e^-z) written as (1 + tanh(z/2))/2: identical in exact arithmetic, never overflows.
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1
    out *= 0.5
    return out


def _sigmoid_slope(a: np.ndarray) -> np.ndarray:
    return a * (1 - a)  # f'(z) = f(z)(1 - f(z))


def _improved_sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.multiply(z, _LECUN_B, out=out)
    np.tanh(out, out=out)
    out *= _LECUN_A
    return out


def _improved_sigmoid_slope(a: np.ndarray) -> np.ndarray:
    # f(z) = A tanh(Bz)  =>  f'(z) = AB (1 - tanh^2(Bz)) = (B/A) (A^2 - f(z)^2)
    return (_LECUN_B / _LECUN_A) * (_LECUN_A ** 2 - a * a)


# Each activation beside its slope; the slope takes the activation's output a = f(z), which the
# forward pass keeps anyway, so backward never needs z.
ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "sigmoid": (_sigmoid, _sigmoid_slope),
    "improved_sigmoid": (_improved_sigmoid, _improved_sigmoid_slope),
}
INITIALISATIONS = ("uniform", "fan_in")


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so exp never overflows."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of softmax(logits) against integer labels, from log-softmax: finite for
    any finite logits (log(0) is never taken)."""
    logp = _log_softmax(np.asarray(logits, dtype=np.float64))
    return float(-logp[np.arange(len(labels)), labels].mean())


def _check_layer_sizes(layer_sizes) -> tuple[int, ...]:
    sizes = tuple(layer_sizes) if isinstance(layer_sizes, Iterable) else None
    if not sizes:
        raise ValueError(f"layer_sizes must be a non-empty list of positive integers ending with the "
                         f"number of classes, e.g. [64, 10]; got {layer_sizes!r}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
            raise ValueError(f"layer_sizes must hold positive integers, got {s!r} in {list(sizes)}")
    if sizes[-1] != NUM_CLASSES:
        raise ValueError(f"the last entry of layer_sizes is the output layer and must be "
                         f"{NUM_CLASSES}, got {list(sizes)}")
    return tuple(int(s) for s in sizes)


def _check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


class MLP:
    """A fully connected network: inputs (with the bias column) -> hidden layers -> softmax.

    `layer_sizes` lists every layer after the input, the output last: [64, 10] is the Task 2
    network, [60, 60, 10] two hidden layers. Weights are a list W[l] of shape (fan_in, fan_out),
    applied as a @ W[l]; only the input carries a bias (the constant column of X).
    """

    def __init__(self, layer_sizes: Sequence[int] = (64, NUM_CLASSES), *, activation: str = "sigmoid",
                 init: str = "uniform", input_size: int = INPUT_SIZE,
                 rng: np.random.Generator | int | None = 0, dtype="float32"):
        self.layer_sizes = _check_layer_sizes(layer_sizes)
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("init", init, INITIALISATIONS)
        if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size <= 0:
            raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.activation, self.init, self.input_size = activation, init, int(input_size)
        self._f, self._df = ACTIVATIONS[activation]
        rng = np.random.default_rng(rng)
        fans = (self.input_size,) + self.layer_sizes
        self.weights: list[np.ndarray] = []
        for fan_in, fan_out in zip(fans[:-1], fans[1:]):
            if init == "uniform":
                w = rng.uniform(-1, 1, size=(fan_in, fan_out))
            else:
                w = rng.normal(0, 1 / np.sqrt(fan_in), size=(fan_in, fan_out))
            self.weights.append(w.astype(self.dtype))
        self._activations: list[np.ndarray] = []

    @property
    def n_parameters(self) -> int:
        return sum(w.size for w in self.weights)

    def check_inputs(self, X: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Validate an input batch (and labels) and return X as this model's dtype."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.input_size:
            raise ValueError(f"X must have shape (N, {self.input_size}) (normalised pixels plus the bias "
                             f"column), got {X.shape}")
        if not np.issubdtype(X.dtype, np.floating):
            raise ValueError(f"X must be a floating-point array (normalised pixels), got dtype {X.dtype}; "
                             f"use prepare_data() or normalize() and add_bias()")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (X.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"labels must be an integer array of shape ({X.shape[0]},), got "
                                 f"shape {labels.shape} and dtype {labels.dtype}")
            if labels.size and (labels.min() < 0 or labels.max() >= self.layer_sizes[-1]):
                raise ValueError(f"labels must lie in [0, {self.layer_sizes[-1] - 1}], got values from "
                                 f"{labels.min()} to {labels.max()}")
        return X.astype(self.dtype, copy=False)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Output pre-activations z_L (N, 10); keeps every layer's output for backward."""
        X = self.check_inputs(X)
        # self._activations[l] is the input of W[l]: a_0 = X, a_l = f(a_{l-1} @ W[l-1]).
        acts = [X]
        for w in self.weights[:-1]:
            acts.append(self._f(acts[-1] @ w))  # (N, fan_in) @ (fan_in, fan_out) -> (N, fan_out)
        self._activations = acts
        return acts[-1] @ self.weights[-1]

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities y_hat (N, 10); keeps what backward needs."""
        return softmax(self.logits(X))

    def backward(self, y_hat: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
        """Batch-averaged gradients dC/dW[l] of the mean cross-entropy, for the batch of the last
        forward call. `Y` is the one-hot target (N, 10)."""
        if not self._activations:
            raise RuntimeError("backward() needs a forward() call first")
        n = y_hat.shape[0]
        Y = np.asarray(Y, dtype=self.dtype)
        if Y.shape != y_hat.shape:
            raise ValueError(f"Y must be one-hot of shape {y_hat.shape}, got {Y.shape}")
        # Softmax and cross-entropy fused: dC/dz_L = (y_hat - y) / N, no Jacobian of softmax needed.
        delta = (y_hat - Y) / n
        grads = [np.empty(0)] * len(self.weights)
        for l in range(len(self.weights) - 1, -1, -1):
            a_in = self._activations[l]
            grads[l] = a_in.T @ delta  # (fan_in, N) @ (N, fan_out) -> (fan_in, fan_out)
            if l > 0:
                delta = (delta @ self.weights[l].T) * self._df(a_in)  # delta_j = f'(z_j) sum_k w_kj delta_k
        return grads

    def loss(self, X: np.ndarray, labels: np.ndarray) -> float:
        return cross_entropy(self.logits(X), labels)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.logits(X).argmax(axis=1)

    def copy(self) -> "MLP":
        new = object.__new__(MLP)
        new.__dict__.update(self.__dict__)
        new.weights = [w.copy() for w in self.weights]
        new._activations = []
        return new


class _TrainBuffers:
    """Preallocated arrays for one training step of a fixed batch size and for the evaluations of a
    run (the hot loop allocates nothing).

    acts[0] holds the batch of images: the trainer gathers them into it."""

    def __init__(self, model: MLP, batch_size: int):
        dt = model.dtype
        self.acts = [np.empty((batch_size, model.input_size), dt)]
        self.acts += [np.empty((batch_size, s), dt) for s in model.layer_sizes]
        self.deltas = [np.empty((batch_size, s), dt) for s in model.layer_sizes]
        self.slope = [np.empty((batch_size, s), dt) for s in model.layer_sizes[:-1]]
        self.grads = [np.empty_like(w) for w in model.weights]
        self.row_max = np.empty((batch_size, 1), dt)
        self.row_sum = np.empty((batch_size, 1), dt)
        self.rows = np.arange(batch_size)  # row indices, to pick each row's target-class logit
        self.eval = _EvalBuffers(model)


def _train_step(model: MLP, buf: _TrainBuffers, Y: np.ndarray, labels: np.ndarray) -> float:
    """Forward and backward on the batch in buf.acts[0]; fills buf.grads and returns the batch's
    mean cross-entropy. Same mathematics as MLP.forward/backward, in place.

    A batch of 32 is small, so a step costs about as much in numpy calls as in arithmetic: every
    array is preallocated, and each line is one call (np.maximum.reduce and np.add.reduce are
    np.max and np.sum without their Python wrappers; np.add.reduce(x) / n is np.mean(x))."""
    W, acts, n = model.weights, buf.acts, Y.shape[0]
    L = len(W)
    for l in range(L):
        np.matmul(acts[l], W[l], out=acts[l + 1])  # (32, fan_in) @ (fan_in, fan_out) -> (32, fan_out)
        if l < L - 1:
            model._f(acts[l + 1], out=acts[l + 1])
    z = acts[L]
    np.maximum.reduce(z, axis=1, keepdims=True, out=buf.row_max)
    z -= buf.row_max
    # batch loss from the shifted logits: -z_y + log sum exp z
    loss_terms = z[buf.rows[:n], labels]
    np.exp(z, out=z)
    np.add.reduce(z, axis=1, keepdims=True, out=buf.row_sum)
    loss = float(np.add.reduce(np.log(buf.row_sum[:, 0], dtype=np.float64) - loss_terms)) / n
    z /= buf.row_sum  # z now holds y_hat
    delta = buf.deltas[L - 1]
    np.subtract(z, Y, out=delta)
    delta *= 1.0 / n
    for l in range(L - 1, -1, -1):
        np.matmul(acts[l].T, delta, out=buf.grads[l])  # (fan_in, 32) @ (32, fan_out) -> (fan_in, fan_out)
        if l > 0:
            prev = buf.deltas[l - 1]
            np.matmul(delta, W[l].T, out=prev)
            a, s = acts[l], buf.slope[l - 1]
            if model.activation == "sigmoid":
                np.subtract(1, a, out=s)
                s *= a
            else:
                np.multiply(a, a, out=s)
                np.subtract(_LECUN_A ** 2, s, out=s)
                s *= _LECUN_B / _LECUN_A
            prev *= s
            delta = prev
    return loss


# Evaluation runs through a split in chunks of this many images: large enough for the matrix
# products to run at full speed, small enough for a chunk's activations to stay in the CPU cache.
_EVAL_CHUNK = 2048


class _EvalBuffers:
    """Preallocated arrays for evaluating `model` on chunks of up to `chunk` images."""

    def __init__(self, model: MLP, chunk: int = _EVAL_CHUNK):
        dt = model.dtype
        self.chunk = chunk
        self.hidden = [np.empty((chunk, s), dt) for s in model.layer_sizes[:-1]]
        # The logits are kept transposed, (classes, chunk): the max and the sum over the classes of
        # each image then run along whole contiguous rows instead of along 2048 rows of 10 values
        # each, which numpy does many times faster.
        self.logits_t = np.empty((model.layer_sizes[-1], chunk), dt)
        self.col_max = np.empty(chunk, dt)
        self.col_sum = np.empty(chunk, dt)
        self.cols = np.arange(chunk)


def _evaluate(model: MLP, X: np.ndarray, labels: np.ndarray, buf: _EvalBuffers) -> tuple[float, int]:
    """Summed cross-entropy (float64) and number of correct predictions of `model` on (X, labels),
    one forward pass in chunks. The loss of an image is log sum_k exp(z_k) - z_y (log-softmax, the
    logits shifted by their maximum), computed without materialising log-softmax."""
    W, L = model.weights, len(model.weights)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), buf.chunk):
        a, y = X[start:start + buf.chunk], labels[start:start + buf.chunk]
        n = len(y)
        for l in range(L - 1):
            h = buf.hidden[l][:n]
            np.matmul(a, W[l], out=h)  # (n, fan_in) @ (fan_in, fan_out) -> (n, fan_out)
            model._f(h, out=h)
            a = h
        z_t = buf.logits_t[:, :n]
        np.matmul(W[L - 1].T, a.T, out=z_t)  # (10, fan_in) @ (fan_in, n) -> (10, n): z_L transposed
        correct += int(np.count_nonzero(z_t.argmax(axis=0) == y))
        z_max, z_sum = buf.col_max[:n], buf.col_sum[:n]
        np.maximum.reduce(z_t, axis=0, out=z_max)
        z_t -= z_max  # shifted logits: exp never overflows
        loss_sum -= float(np.add.reduce(z_t[y, buf.cols[:n]], dtype=np.float64))  # - z_y
        np.exp(z_t, out=z_t)
        np.add.reduce(z_t, axis=0, out=z_sum)
        loss_sum += float(np.add.reduce(np.log(z_sum, dtype=np.float64)))  # + log sum_k exp(z_k)
    return loss_sum, correct


# ================================================================================================
# Optimiser
# ================================================================================================

class SGD:
    """Mini-batch SGD with optional momentum, as the assignment writes it:
    dW(t) = dC/dW + gamma * dW(t-1);  W <- W - lr * dW(t);  dW(-1) = 0."""

    def __init__(self, learning_rate: float, momentum: float = 0.0):
        real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)  # noqa: E731
        if not (real(learning_rate) and math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
        if not (real(momentum) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.velocity: list[np.ndarray] | None = None  # dW(t-1), created on the first step
        self._scratch: list[np.ndarray] | None = None  # lr * dW(t), so the step allocates nothing

    def step(self, weights: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update `weights` in place from `grads`."""
        if self._scratch is None:
            self._scratch = [np.empty_like(w) for w in weights]
        if self.momentum == 0:
            for w, g, tmp in zip(weights, grads, self._scratch):
                w -= np.multiply(g, self.learning_rate, out=tmp)
            return
        if self.velocity is None:
            self.velocity = [np.zeros_like(w) for w in weights]
        for w, g, v, tmp in zip(weights, grads, self.velocity, self._scratch):
            v *= self.momentum
            v += g
            w -= np.multiply(v, self.learning_rate, out=tmp)


# ================================================================================================
# Training
# ================================================================================================

@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run; the defaults are the assignment's protocol for
    the Task 2c network."""
    layer_sizes: tuple[int, ...] = (64, NUM_CLASSES)  # every layer after the input, output last
    activation: str = "sigmoid"      # "sigmoid" or "improved_sigmoid" (1.7159 tanh(2z/3))
    init: str = "uniform"            # "uniform" in [-1, 1] or "fan_in" normal with std 1/sqrt(fan_in)
    learning_rate: float = 0.1       # SGD step size alpha
    momentum: float = 0.0            # gamma; 0 switches momentum off
    batch_size: int = 32             # the last incomplete batch of an epoch is dropped
    max_epochs: int = 50             # upper bound on epochs
    n_train: int = 20_000            # the first n_train MNIST training images are the training set
    n_val: int = 10_000              # the first n_val MNIST test images are the validation set
    validations_per_epoch: int = 5   # validate every steps_per_epoch // this many steps, from step 0
    patience: int = 50               # stop after this many validations without a new lowest val loss
    seed: int = 0                    # the one seed of every random draw (init and shuffling)
    dtype: str = "float32"           # "float32" (fast) or "float64"
    record_grad_norms: bool = False  # record each weight matrix's gradient norm at every validation
    name: str = ""                   # label used in tables and legends

    def __post_init__(self):
        object.__setattr__(self, "layer_sizes", _check_layer_sizes(self.layer_sizes))
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("init", self.init, INITIALISATIONS)
        _check_choice("dtype", self.dtype, ("float32", "float64"))
        SGD(self.learning_rate, self.momentum)  # validates both
        for name in ("batch_size", "max_epochs", "n_train", "n_val", "validations_per_epoch", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed n_train ({self.n_train})")

    @property
    def label(self) -> str:
        return self.name or describe(self)

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    @property
    def validation_interval(self) -> int:
        return max(1, self.steps_per_epoch // self.validations_per_epoch)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def describe(config: RunConfig) -> str:
    """A short human-readable description of a configuration, e.g. '[64] sigmoid, uniform init'."""
    hidden = ", ".join(map(str, config.layer_sizes[:-1])) or "no hidden layer"
    parts = [f"[{hidden}]", config.activation.replace("_", " "), f"{config.init.replace('_', '-')} init",
             f"lr {config.learning_rate:g}"]
    if config.momentum:
        parts.append(f"momentum {config.momentum:g}")
    return ", ".join(parts)


@dataclass
class History:
    """Everything a run recorded. Steps count gradient updates from 0; the validation at step s is
    taken right after the update of step s."""
    config: RunConfig
    train_loss: list[float] = field(default_factory=list)       # batch loss of every step
    val_steps: list[int] = field(default_factory=list)          # step of every validation
    train_loss_full: list[float] = field(default_factory=list)  # whole training set, at validations
    train_acc: list[float] = field(default_factory=list)        # whole training set, at validations
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    grad_norms: list[list[float]] = field(default_factory=list)  # per weight matrix, at validations
    init_grad_norms: list[float] = field(default_factory=list)   # per weight matrix, before training
    epoch_times: list[float] = field(default_factory=list)      # seconds per completed epoch
    stop_reason: str = "not started"  # early_stopping | max_epochs | non_finite_loss | interrupted | stopped
    message: str = ""                 # why a run failed (non-finite loss), for display
    best_val_loss: float = math.inf
    best_step: int = -1
    final: dict[str, float] = field(default_factory=dict)       # whole-set metrics, final weights
    weights: list[np.ndarray] = field(default_factory=list)     # final weights

    @property
    def steps(self) -> int:
        """Number of gradient steps taken."""
        return len(self.train_loss)

    @property
    def time_per_epoch(self) -> float:
        return float(np.mean(self.epoch_times)) if self.epoch_times else math.nan

    def model(self) -> MLP:
        """The trained network (final weights)."""
        m = initial_model(self.config)
        m.weights = [w.copy() for w in self.weights]
        return m


def _seed_sequences(seed: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """The two independent streams of a run, both derived from its one seed: initialisation, shuffling."""
    init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
    return init_seq, shuffle_seq


def initial_model(config: RunConfig) -> MLP:
    """The network exactly as train(config) starts it: same layers, activation and initial weights."""
    return MLP(config.layer_sizes, activation=config.activation, init=config.init,
               rng=np.random.default_rng(_seed_sequences(config.seed)[0]), dtype=config.dtype)


def evaluate(model: MLP, split: Split, chunk: int = 10_000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on a whole split, in one forward pass (in chunks of
    at most `chunk` images)."""
    n = len(split)
    X = model.check_inputs(split.X)
    buf = _EvalBuffers(model, max(1, min(chunk, _EVAL_CHUNK, n)))
    loss_sum, correct = _evaluate(model, X, split.labels, buf)
    model._activations = []
    return loss_sum / n, correct / n


class _BlasThreads:
    """How many BLAS threads the parts of a run use. The products of a training step (32 rows) are
    too small to share: on two threads they only get slower, and erratic on a busy machine. So the
    steps always run on one thread, and the evaluation passes, whose products are large, on up to
    `n_threads`. None leaves the BLAS settings as they are."""

    def __init__(self, n_threads: int | None):
        self.n_threads = n_threads
        self._controller = None
        if n_threads is not None:
            from threadpoolctl import ThreadpoolController
            self._controller = ThreadpoolController()  # finds the loaded BLAS libraries, once per run

    def _limit(self, n_threads: int):
        if self._controller is None:
            return contextlib.nullcontext()
        return self._controller.limit(limits=n_threads, user_api="blas")  # a few microseconds

    def steps(self):
        return self._limit(1)

    def evaluation(self):
        return self._limit(self.n_threads)


def train(config: RunConfig = RunConfig(), data: Dataset | None = None, *, progress: bool = True,
          callback: Callable[[History], None] | None = None,
          should_stop: Callable[[], bool] | None = None, blas_threads: int | None = 1) -> History:
    """Train a network with the assignment's protocol and return its History.

    Per-epoch reshuffling (dropping the last incomplete batch), validation every
    steps_per_epoch // validations_per_epoch steps from step 0, early stopping after `patience`
    validations without a new lowest validation loss, final whole-set metrics with the final
    weights. `callback(history)` runs after every validation; training ends early (stop_reason
    "stopped") when `should_stop()` returns true, and on KeyboardInterrupt the history so far is
    returned (stop_reason "interrupted"). `blas_threads` caps BLAS threads (None: leave as is); with
    a cap above one, only the evaluations use more threads: a step's small products run on one.
    """
    from tqdm.auto import tqdm

    if data is None:
        data = prepare_data(config.n_train, config.dtype, config.n_val)
    if len(data.train) < config.n_train or len(data.val) < config.n_val:
        raise ValueError(f"data holds {len(data.train)} training and {len(data.val)} validation "
                         f"examples, fewer than the config's n_train={config.n_train} and n_val={config.n_val}")
    dt = np.dtype(config.dtype)
    train_split = Split(data.train.X[:config.n_train].astype(dt, copy=False),
                        data.train.Y[:config.n_train].astype(dt, copy=False), data.train.labels[:config.n_train])
    val_split = Split(data.val.X[:config.n_val].astype(dt, copy=False),
                      data.val.Y[:config.n_val].astype(dt, copy=False), data.val.labels[:config.n_val])

    _, shuffle_seq = _seed_sequences(config.seed)
    model = initial_model(config)
    model.check_inputs(train_split.X[:1], train_split.labels[:1])
    shuffle_rng = np.random.default_rng(shuffle_seq)
    optimiser = SGD(config.learning_rate, config.momentum)
    hist = History(config=config)
    bs, steps_per_epoch, interval = config.batch_size, config.steps_per_epoch, config.validation_interval
    buf = _TrainBuffers(model, bs)
    blas = _BlasThreads(blas_threads)
    shuffled_Y = np.empty_like(train_split.Y)
    shuffled_labels = np.empty_like(train_split.labels)
    since_best = 0

    if config.record_grad_norms:
        sample = slice(0, min(1000, config.n_train))
        y_hat = model.forward(train_split.X[sample])
        hist.init_grad_norms = [float(np.linalg.norm(g)) for g in model.backward(y_hat, train_split.Y[sample])]

    # no tqdm object at all without a bar: even a disabled one starts tqdm's monitor thread
    bar = (tqdm(total=config.max_epochs * steps_per_epoch, unit="step", desc=config.label, leave=True,
                mininterval=0.5) if progress else _NoBar())
    step = 0
    hist.stop_reason = "max_epochs"
    try:
        # a diverging run is detected from its loss below and explained in one warning
        with blas.steps(), np.errstate(over="ignore", invalid="ignore"):
            for epoch in range(config.max_epochs):
                t0 = time.perf_counter()
                perm = shuffle_rng.permutation(config.n_train)
                # Targets and labels are reordered once per epoch. The images (785 values each) are
                # gathered batch by batch instead: each is then read from memory once, and is still
                # in the cache when the backward pass needs it again.
                np.take(train_split.Y, perm, axis=0, out=shuffled_Y)
                np.take(train_split.labels, perm, axis=0, out=shuffled_labels)
                done = False
                for k in range(steps_per_epoch):
                    batch = slice(k * bs, (k + 1) * bs)
                    np.take(train_split.X, perm[batch], axis=0, out=buf.acts[0])
                    loss = _train_step(model, buf, shuffled_Y[batch], shuffled_labels[batch])
                    hist.train_loss.append(loss)
                    if not math.isfinite(loss):
                        hist.stop_reason = "non_finite_loss"
                        hist.message = (
                            f"training loss became {loss} at step {step} ({config.label}); the run was "
                            f"stopped. The learning rate ({config.learning_rate:g}) is probably too high "
                            f"for this network: try a smaller one.")
                        warnings.warn(hist.message, RuntimeWarning, stacklevel=2)
                        done = True
                        break
                    optimiser.step(model.weights, buf.grads)
                    if step % interval == 0:
                        with blas.evaluation():
                            _validate(model, hist, step, train_split, val_split, buf)
                        if hist.val_loss[-1] < hist.best_val_loss:
                            hist.best_val_loss, hist.best_step, since_best = hist.val_loss[-1], step, 0
                        else:
                            since_best += 1
                        bar.set_postfix(val_loss=f"{hist.val_loss[-1]:.4f}", val_acc=f"{hist.val_acc[-1]:.4f}",
                                        refresh=False)
                        if callback is not None:
                            callback(hist)
                        if since_best >= config.patience:
                            hist.stop_reason = "early_stopping"
                            done = True
                        bar.update(step + 1 - bar.n)
                    if not done and should_stop is not None and should_stop():
                        hist.stop_reason = "stopped"
                        done = True
                    step += 1
                    if done:
                        break
                hist.epoch_times.append(time.perf_counter() - t0)
                if done:
                    break
    except KeyboardInterrupt:
        hist.stop_reason = "interrupted"
    finally:
        bar.update(step - bar.n)
        bar.close()

    hist.weights = [w.copy() for w in model.weights]
    if all(np.isfinite(w).all() for w in model.weights):
        with blas.evaluation():
            train_loss, train_acc = evaluate(model, train_split)
            val_loss, val_acc = evaluate(model, val_split)
        hist.final = dict(train_loss=train_loss, val_loss=val_loss, train_acc=train_acc, val_acc=val_acc)
    else:
        hist.final = dict(train_loss=math.nan, val_loss=math.nan, train_acc=math.nan, val_acc=math.nan)
        if hist.stop_reason != "non_finite_loss":
            warnings.warn(f"the weights of {config.label} are not finite after training; try a smaller "
                          f"learning rate.", RuntimeWarning, stacklevel=2)
    return hist


class _NoBar:
    """Stands in for a tqdm bar when progress is off."""
    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _validate(model: MLP, hist: History, step: int, train_split: Split, val_split: Split,
              buf: _TrainBuffers) -> None:
    # the same computation as evaluate(), reusing the run's evaluation buffers
    train_loss, train_correct = _evaluate(model, train_split.X, train_split.labels, buf.eval)
    val_loss, val_correct = _evaluate(model, val_split.X, val_split.labels, buf.eval)
    n_train, n_val = len(train_split), len(val_split)
    hist.val_steps.append(step)
    hist.train_loss_full.append(train_loss / n_train)
    hist.train_acc.append(train_correct / n_train)
    hist.val_loss.append(val_loss / n_val)
    hist.val_acc.append(val_correct / n_val)
    if hist.config.record_grad_norms:
        # the gradient of the batch of this step, computed before the update
        hist.grad_norms.append([float(np.linalg.norm(g)) for g in buf.grads])


# ================================================================================================
# Parallel runs
# ================================================================================================

def _run_quiet(config: RunConfig) -> History:
    return train(config, progress=False)


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _cache_file(config: RunConfig) -> Path | None:
    """Where a finished run of `config` is kept when $MLP_RUN_CACHE names a folder (the report build
    sets it so that a network trained in one notebook is not trained again in the next). The key
    covers the whole configuration and this module's source, so a code change never reuses a run."""
    root = os.environ.get("MLP_RUN_CACHE")
    if not root:
        return None
    key = hashlib.sha256((repr(config.replace(name="")) + _code_digest()).encode()).hexdigest()[:32]
    return Path(root) / f"run-{key}.pkl"


def _load_run(path: Path) -> History:
    import pickle
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _store_run(path: Path, h: History) -> None:
    import pickle
    if h.stop_reason in ("interrupted", "stopped"):
        return  # an unfinished run is not the run its config describes
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(h, fh)
    os.replace(tmp, path)  # atomic: a reader sees no file or the whole file


def _claim_run(path: Path) -> bool:
    """Claim the training of the run cached at `path` for this process (a .lock file holding our
    pid, created atomically). False when a live process holds it; a dead holder's claim is taken."""
    lock = path.with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                if pid:
                    os.kill(pid, 0)  # raises if the holder is gone
                return False
            except ProcessLookupError:
                lock.unlink(missing_ok=True)  # stale claim of a process that died
                continue
            except (FileNotFoundError, ValueError, PermissionError):
                return False
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def _release_run(path: Path) -> None:
    path.with_suffix(".lock").unlink(missing_ok=True)


def run_experiments(configs: Sequence[RunConfig], *, n_jobs: int | None = None, backend: str | None = None,
                    progress: bool = False) -> list[History]:
    """Train every configuration, in parallel worker processes (one per core by default), and return
    the histories in the order given. Each run is single-threaded and seeded by its config, so the
    results equal those of a serial run. Uses joblib: inside `joblib.parallel_config(backend="dask")`
    the same sweep runs on a Dask cluster. `n_jobs=1` runs serially in this process.

    With $MLP_RUN_CACHE naming a folder, finished runs are kept there and loaded instead of trained
    again, and processes that share the folder (the report's notebooks, executed side by side)
    never train the same run twice: a run another process is training is waited for."""
    configs = list(configs)
    for c in configs:
        if not isinstance(c, RunConfig):
            raise ValueError(f"configs must be RunConfig objects, got {type(c).__name__}")
    # runs that differ only in their name are the same run: train it once, label it each way
    unnamed = [c.replace(name="") for c in configs]
    results: dict[RunConfig, History] = {}
    todo: list[RunConfig] = []      # this process trains these
    elsewhere: list[RunConfig] = []  # another process is training these
    for u in dict.fromkeys(unnamed):
        path = _cache_file(u)
        if path is not None and path.exists():
            results[u] = _load_run(path)
        elif path is None:
            todo.append(u)
        elif _claim_run(path):
            if path.exists():  # finished by another process between our look and our claim
                _release_run(path)
                results[u] = _load_run(path)
            else:
                todo.append(u)
        else:
            elsewhere.append(u)
    try:
        if n_jobs is None:
            n_jobs = min(len(todo), os.cpu_count() or 1) or 1
        if n_jobs == 1 or len(todo) <= 1:
            done = (train(u, progress=progress) for u in todo)
        else:
            from joblib import Parallel, delayed
            done = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator")(
                delayed(_run_quiet)(u) for u in todo)
        for u, h in zip(todo, done):  # each run is stored as soon as it is finished
            results[u] = h
            path = _cache_file(u)
            if path is not None:
                _store_run(path, h)  # waiting processes look for this file, not for the lock
    finally:
        for u in todo:
            if (path := _cache_file(u)) is not None:
                _release_run(path)
    for u in elsewhere:
        path = _cache_file(u)
        while u not in results:
            if path.exists():
                results[u] = _load_run(path)
            elif _claim_run(path):  # its trainer stopped without a result: train it here
                try:
                    results[u] = train(u, progress=progress)
                    _store_run(path, results[u])
                finally:
                    _release_run(path)
            else:
                time.sleep(0.2)
    return [dataclasses.replace(results[u], config=c) for u, c in zip(unnamed, configs)]


def smoke_mode() -> bool:
    """True when $MLP_SMOKE is set to a true value: notebooks then run a tiny version of every
    experiment (for tests and CI)."""
    return os.environ.get("MLP_SMOKE", "").strip().lower() in ("1", "true", "yes", "on")


# What smoke mode changes in every run: a small training subset, a small validation set, 2 epochs.
SMOKE_SETTINGS = dict(n_train=2000, n_val=2000, max_epochs=2)


def n_seeds(default: int = 3) -> int:
    """How many seeds each experiment of the report is run with: $MLP_SEEDS if set (e.g.
    `make report SEEDS=1`), else 1 in smoke mode, else `default`."""
    value = os.environ.get("MLP_SEEDS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"MLP_SEEDS must be a positive integer, got {value!r}")
        return int(value)
    return 1 if smoke_mode() else default


# ================================================================================================
# Evaluation
# ================================================================================================

def gradient_check(model: MLP, X: np.ndarray, Y: np.ndarray, epsilon: float = 1e-3) -> float:
    """Largest |analytic - numerical| gradient over every weight of `model`, the numerical one from
    central differences (C(w + eps) - C(w - eps)) / (2 eps) of the mean cross-entropy on (X, Y).

    Perturbing W[l][i, j] changes only column j of layer l's pre-activation, by eps * a_{l-1}[:, i],
    so all fan_in perturbations of one column are evaluated as one batch through the layers above
    (every loss is still a full forward evaluation, only shared parts are reused).
    Use a float64 model: the check needs the precision.
    """
    X = model.check_inputs(X)
    Y = np.asarray(Y, dtype=model.dtype)
    if Y.shape != (X.shape[0], model.layer_sizes[-1]):
        raise ValueError(f"Y must be one-hot of shape {(X.shape[0], model.layer_sizes[-1])}, got {Y.shape}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    labels = Y.argmax(axis=1)
    analytic = model.backward(model.forward(X), Y)
    acts = model._activations
    n, L, W = X.shape[0], len(model.weights), model.weights
    worst = 0.0
    for l in range(L):
        a_in = acts[l]               # (N, fan_in): the input of W[l]
        z = a_in @ W[l]              # (N, fan_out): the pre-activation that W[l][i, j] feeds
        fan_in = a_in.shape[1]
        above = model._f(z.copy()) @ W[l + 1] if l < L - 1 else None  # (N, fan_out of W[l+1])
        for j in range(z.shape[1]):
            losses = []
            for sign in (1, -1):
                zj = z[:, j][None, :] + sign * epsilon * a_in.T          # (fan_in, N): column j, every i
                if l == L - 1:
                    h = np.broadcast_to(z, (fan_in,) + z.shape).copy()   # (fan_in, N, 10) logits
                    h[:, :, j] = zj
                else:
                    # only unit j's output changes, so the next pre-activation moves along W[l+1][j]
                    change = model._f(zj) - model._f(z[:, j].copy())[None, :]
                    h = above[None] + change[:, :, None] * W[l + 1][j][None, None, :]
                    for k in range(l + 2, L):
                        h = model._f(h) @ W[k]
                logp = _log_softmax(h.reshape(fan_in * n, -1)).reshape(fan_in, n, -1)
                losses.append(-logp[:, np.arange(n), labels].mean(axis=1))  # (fan_in,)
            numeric = (losses[0] - losses[1]) / (2 * epsilon)
            worst = max(worst, float(np.abs(numeric - analytic[l][:, j]).max()))
    model._activations = []
    return worst


def count_parameters(layer_sizes: Sequence[int], input_size: int = INPUT_SIZE, output_bias: bool = False) -> int:
    """Weights of a network with the given layer sizes (input_size includes the bias column), plus
    an output-layer bias per class when `output_bias`."""
    sizes = _check_layer_sizes(layer_sizes)
    fans = (int(input_size),) + sizes
    return sum(a * b for a, b in zip(fans[:-1], fans[1:])) + (sizes[-1] if output_bias else 0)


def equal_width_for_budget(budget: int, n_hidden: int = 2, input_size: int = INPUT_SIZE) -> tuple[int, int]:
    """The width h of `n_hidden` equal hidden layers whose parameter count is closest to `budget`
    (ties go to the smaller h), and that count."""
    if budget <= 0 or n_hidden <= 0:
        raise ValueError(f"budget and n_hidden must be positive, got {budget} and {n_hidden}")
    best = None
    for h in range(1, budget + 1):
        p = count_parameters([h] * n_hidden + [NUM_CLASSES], input_size)
        if best is None or abs(p - budget) < abs(best[1] - budget):
            best = (h, p)
        if p > budget:
            break
    return best


def results_table(histories: Sequence[History], *, label: str = "run") -> "pd.DataFrame":
    """One row per run: final whole-set metrics, best validation loss and its step, stopping step,
    reason and time per epoch."""
    import pandas as pd
    rows = []
    for h in histories:
        rows.append({
            label: h.config.label, "seed": h.config.seed,
            "train loss": h.final.get("train_loss", math.nan), "val loss": h.final.get("val_loss", math.nan),
            "train acc": h.final.get("train_acc", math.nan), "val acc": h.final.get("val_acc", math.nan),
            "best val loss": h.best_val_loss, "best step": h.best_step, "steps": h.steps,
            "stopped by": h.stop_reason, "s / epoch": h.time_per_epoch,
        })
    return pd.DataFrame(rows)


def mean_std(values: Sequence[float], fmt: str = ".4f") -> str:
    """'mean ± std' (sample standard deviation) of `values` in format `fmt`, the plain value for a
    single one. NaNs (e.g. a level some runs never reached) are left out and counted in a note;
    all NaN gives '–'."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[~np.isnan(v)]
    if len(finite) == 0:
        return "–"
    note = f" ({len(finite)} of {len(v)} seeds)" if len(finite) < len(v) else ""
    if len(finite) == 1:
        return format(finite[0], fmt) + note
    return f"{format(finite.mean(), fmt)} ± {format(finite.std(ddof=1), fmt)}{note}"


def final_table(histories: Sequence[History], *, label: str = "network", names: dict[str, str] | None = None,
                extra: bool = True) -> "pd.DataFrame":
    """The report's table: one row per configuration label (runs of several seeds pooled, in
    first-seen order) with 'mean ± std' strings (the plain value for a single seed): final
    training/validation loss and accuracy (%), and with `extra` the best validation loss and its
    step, the number of steps taken and the time per epoch. `names` relabels rows."""
    import pandas as pd
    groups: dict[str, list[History]] = {}
    for h in histories:
        groups.setdefault(h.config.label, []).append(h)
    rows = []
    for key, runs in groups.items():
        f = lambda k: [r.final.get(k, math.nan) for r in runs]  # noqa: E731
        row = {label: (names or {}).get(key, key), "seeds": len(runs),
               "train loss": mean_std(f("train_loss"), ".4f"), "val loss": mean_std(f("val_loss"), ".4f"),
               "train acc (%)": mean_std(np.multiply(f("train_acc"), 100), ".2f"),
               "val acc (%)": mean_std(np.multiply(f("val_acc"), 100), ".2f")}
        if extra:
            row.update({"best val loss": mean_std([r.best_val_loss for r in runs], ".4f"),
                        "at step": mean_std([r.best_step for r in runs], ",.0f"),
                        "steps": mean_std([r.steps for r in runs], ",.0f"),
                        "s / epoch": mean_std([r.time_per_epoch for r in runs], ".2f")})
        rows.append(row)
    return pd.DataFrame(rows)


class Table:
    """A DataFrame with a numbered caption that renders as a real table in HTML and in LaTeX (the
    PDF report), with per-column number formats. Display it as the last line of a cell."""

    def __init__(self, df, caption: str = "", formats: dict[str, str] | None = None, index: bool = False):
        self.df, self.caption, self.formats, self.index = df, caption, formats or {}, index

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        df = self.df.reset_index() if self.index else self.df
        header = [" ".join(str(p) for p in c if p != "") if isinstance(c, tuple) else str(c) for c in df.columns]
        body = []
        for _, row in df.iterrows():
            cells = []
            for col, head in zip(df.columns, header):
                v = row[col]
                fmt = self.formats.get(head) or self.formats.get(col if not isinstance(col, tuple) else col[0])
                if fmt and isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                    cells.append(format(v, fmt))
                elif isinstance(v, (float, np.floating)):
                    cells.append(f"{v:.4g}")
                else:
                    cells.append(str(v))
            body.append(cells)
        return header, body

    def _repr_html_(self) -> str:
        import html
        header, body = self._cells()
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f'<table class="mlp-table">{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'

    def _repr_latex_(self) -> str:
        def esc(s: str) -> str:
            s = s.replace("\\", "\x00")
            for a, b in (("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"),
                         ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\textasciicircum{}"), ("±", r"$\pm$")):
                s = s.replace(a, b)
            return s.replace("\x00", r"\textbackslash{}")
        header, body = self._cells()
        spec = "l" + "r" * (len(header) - 1)
        # No \caption: nbconvert's template blanks captions; the numbered caption is set by hand.
        lines = [r"\begin{table}[H]", r"\centering"]
        if self.caption:
            lines.append(r"\parbox{0.95\linewidth}{\centering\small " + esc(self.caption) + r"}\par\vspace{0.5em}")
        lines += [r"\begin{adjustbox}{max width=\linewidth}", r"\begin{tabular}{" + spec + "}", r"\toprule",
                  " & ".join(r"\textbf{" + esc(h) + "}" for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in r) + r" \\" for r in body]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{adjustbox}", r"\end{table}"]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (self.caption + "\n" if self.caption else "") + self.df.to_string(index=self.index)


# ================================================================================================
# Plotting
# ================================================================================================

def smooth(values: Sequence[float], window: int = 125) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moving mean and standard deviation of a noisy per-step series over trailing windows of
    `window` steps; returns (steps, mean, std), one point per full window (non-overlapping)."""
    v = np.asarray(values, dtype=np.float64)
    window = max(1, min(int(window), len(v))) if len(v) else 1
    n = len(v) // window
    if n == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    blocks = v[: n * window].reshape(n, window)
    steps = np.arange(n) * window + (window - 1) / 2
    return steps, blocks.mean(axis=1), blocks.std(axis=1)


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        ax = plt.gca()
    return ax


def _runs(histories) -> list[History]:
    return [histories] if isinstance(histories, History) else list(histories)


def _run_style(i: int, h: History, colors, labels) -> tuple[str, str]:
    return (colors[i] if colors is not None else f"C{i % 10}",
            labels[i] if labels is not None else h.config.label)


def _curve_labels(name: str, train: bool, val: bool) -> tuple[str, str]:
    return (f"{name} (training)" if val else name), (f"{name} (validation)" if train else name)


def _finish(ax, ylabel: str, ylim):
    from matplotlib.ticker import StrMethodFormatter
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))  # 25,000 rather than 25000
    ax.set_xlabel("gradient step")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    return ax


def plot_loss(histories, ax=None, *, window: int = 125, train: bool = True, val: bool = True,
              band: bool = True, colors=None, labels=None, ylim=None):
    """Training loss (per-step batch loss, smoothed with a +-1 std band) as solid lines and
    validation loss as dashed lines, against gradient steps. Returns the axes."""
    ax = _axes(ax)
    for i, h in enumerate(_runs(histories)):
        color, name = _run_style(i, h, colors, labels)
        train_label, val_label = _curve_labels(name, train, val)
        if train:
            s, m, sd = smooth(h.train_loss, window)
            ax.plot(s, m, color=color, lw=1.2, label=train_label)
            if band:
                ax.fill_between(s, m - sd, m + sd, color=color, alpha=0.15, lw=0)
        if val:
            ax.plot(h.val_steps, h.val_loss, color=color, lw=1.2, ls="--", label=val_label)
    return _finish(ax, "cross-entropy loss", ylim)


def plot_accuracy(histories, ax=None, *, train: bool = True, val: bool = True, colors=None, labels=None,
                  ylim=None):
    """Training (solid) and validation (dashed) accuracy at every validation, against gradient
    steps. Returns the axes."""
    ax = _axes(ax)
    for i, h in enumerate(_runs(histories)):
        color, name = _run_style(i, h, colors, labels)
        train_label, val_label = _curve_labels(name, train, val)
        if train:
            ax.plot(h.val_steps, h.train_acc, color=color, lw=1.2, label=train_label)
        if val:
            ax.plot(h.val_steps, h.val_acc, color=color, lw=1.2, ls="--", label=val_label)
    return _finish(ax, "accuracy", ylim)


def plot_grad_norms(history: History, ax=None, *, cmap: str = "viridis"):
    """Norm of each weight matrix's batch gradient at every validation (log scale), one line per
    layer, from the input layer (W1) to the output layer. Needs record_grad_norms=True."""
    import matplotlib.pyplot as plt
    if not history.grad_norms:
        raise ValueError("this history has no gradient norms: train with record_grad_norms=True")
    ax = _axes(ax)
    norms = np.asarray(history.grad_norms)
    colors = plt.get_cmap(cmap)(np.linspace(0, 0.9, norms.shape[1]))
    for l in range(norms.shape[1]):
        ax.plot(history.val_steps, norms[:, l], color=colors[l], lw=1.1, label=f"W{l + 1}")
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("gradient norm ‖∂C/∂W‖")
    ax.grid(True, alpha=0.3, which="both")
    return ax


def setup_notebook(font_size: float = 10.0) -> None:
    """Notebook display settings, applied only when called (never on import): vector figures (SVG
    in HTML, PDF in the LaTeX report), a readable font size, tight bounding boxes."""
    import matplotlib as mpl
    from matplotlib_inline.backend_inline import set_matplotlib_formats
    set_matplotlib_formats("svg", "pdf")
    mpl.rcParams.update({
        "figure.figsize": (7.5, 3.6), "font.size": font_size, "axes.titlesize": font_size + 1,
        "legend.fontsize": font_size - 1.5, "legend.framealpha": 0.85, "figure.dpi": 100,
        "savefig.bbox": "tight", "svg.fonttype": "none", "pdf.fonttype": 42,
    })
