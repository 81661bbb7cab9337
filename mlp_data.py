"""The protocol's data: normalised images with the bias column, one-hot targets, the two splits.

Every split is normalised with the mean and the population standard deviation of all pixels of
all 60,000 MNIST training images, (x - mu) / sigma, and gets the constant-1 bias column: 785
inputs. The training set is the first `n_train` training images, the validation set the first
`n_val` test images. Reading and checking the files is mnist_files' job; the network is
mlp_core's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from mlp_checks import between, check, check_dtype, check_labels
from mlp_core import INPUT_SIZE, NUM_CLASSES
from mnist_files import MNIST_FILES, load_mnist


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation over all pixels of raw uint8 images."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.size == 0:
        raise ValueError(
            f"images must be a non-empty uint8 array of raw pixels, got {images.dtype} "
            f"{images.shape}"
        )
    # From the histogram of the 256 pixel values: exact sums, and no float copy of 47 M pixels.
    flat = images.ravel()
    chunk = 1 << 20  # bincount widens its input to int64: go chunk by chunk
    counts = np.zeros(256, np.int64)
    for start in range(0, flat.size, chunk):
        counts += np.bincount(flat[start : start + chunk], minlength=256)
    counts = counts.astype(float)
    values = np.arange(256.0)
    mean = float(counts @ values / counts.sum())
    return mean, float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))


def normalize(images, mu: float, sigma: float, dtype="float32", out=None) -> np.ndarray:
    """(x - mu) / sigma of raw pixels as `dtype` (written into `out` when given)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or not sigma > 0:
        raise ValueError(
            f"images must be uint8 raw pixels and sigma > 0, got {images.dtype} and {sigma}"
        )
    # A pixel has one of 256 values: look each up in a table of (v - mu) / sigma.
    table = ((np.arange(256) - mu) / sigma).astype(check_dtype(dtype))
    if out is None:
        out = np.empty(images.shape, table.dtype)
    for i in range(0, len(images), 2048):  # np.take widens uint8 indices to int64: in blocks
        np.take(table, images[i : i + 2048], out=out[i : i + 2048])
    return out


def add_bias(X: np.ndarray) -> np.ndarray:
    """Append the constant-1 bias column: (N, D) -> (N, D + 1)."""
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (N, D), got shape {X.shape}")
    return np.hstack([X, np.ones((len(X), 1), X.dtype)])


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES, dtype=np.float32) -> np.ndarray:
    """Integer labels (N,) -> one-hot targets (N, num_classes)."""
    labels = check_labels(labels, len(labels), num_classes)
    return np.eye(num_classes, dtype=dtype)[labels]


@dataclass(frozen=True)
class Split:
    """One split ready for the network: X (N, 785) normalised, with the bias column; Y; labels."""

    X: np.ndarray
    Y: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def first(self, n: int, dtype) -> Split:
        """The first n examples, as `dtype` (no copy when it is the split's own)."""
        dtype = np.dtype(dtype)
        return Split(
            self.X[:n].astype(dtype, copy=False),
            self.Y[:n].astype(dtype, copy=False),
            self.labels[:n],
        )


@dataclass(frozen=True)
class Dataset:
    """The protocol's training and validation splits and the normalisation constants."""

    train: Split
    val: Split
    mu: float
    sigma: float


def _split(images: np.ndarray, labels: np.ndarray, mu: float, sigma: float, dtype) -> Split:
    X = np.empty((len(images), INPUT_SIZE), dtype)  # filled in place: no temporary copies
    normalize(images, mu, sigma, dtype, out=X[:, :-1])
    X[:, -1] = 1  # the bias trick
    labels = labels.astype(np.int64)
    X.flags.writeable = False
    labels.flags.writeable = False
    return Split(X, one_hot(labels, dtype=dtype), labels)


@functools.lru_cache(maxsize=8)
def prepare_data(
    n_train: int = 20_000,
    dtype: str = "float32",
    n_val: int | None = None,
    directory: str | None = None,
) -> Dataset:
    """The protocol's data (cached): the first `n_train` training and first `n_val` test images
    (all of them by default), normalised with mu and sigma of all 60,000 training images, with
    the bias column and one-hot targets."""
    check_dtype(dtype)
    n_val = MNIST_FILES["test_labels"].count if n_val is None else n_val
    check("n_train", n_train, between(1, MNIST_FILES["train_labels"].count))
    check("n_val", n_val, between(1, MNIST_FILES["test_labels"].count))
    raw = load_mnist(directory)
    mu, sigma = pixel_stats(raw.train_images)
    train = _split(raw.train_images[:n_train], raw.train_labels[:n_train], mu, sigma, dtype)
    val = _split(raw.test_images[:n_val], raw.test_labels[:n_val], mu, sigma, dtype)
    return Dataset(train, val, mu, sigma)
