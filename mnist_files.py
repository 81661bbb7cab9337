"""The four MNIST files: reading, verification and download.

Every file is checked before use (gzip stream, magic number, dimensions, count, SHA-256 of the
decompressed bytes, a cap on the decompressed size) and every problem raises MNISTDataError naming
the file and what to do. Missing files are downloaded into a temporary name and renamed only after
they pass the same checks; a damaged file in the project's own cache is moved aside. mlp_core's
prepare_data turns the arrays into the assignment's data split.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import stat
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class MNISTDataError(RuntimeError):
    """A MNIST file is missing, damaged or could not be downloaded. The message says what to do."""


@dataclass(frozen=True)
class _IdxFile:
    name: str  # file name of the gzip IDX file
    magic: int  # 2051 for images, 2049 for labels
    count: int  # number of images or labels
    sha256: str  # of the decompressed bytes, so any mirror's gzip of the same content passes


MNIST_FILES = {
    "train_images": _IdxFile(
        "train-images-idx3-ubyte.gz",
        2051,
        60_000,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": _IdxFile(
        "train-labels-idx1-ubyte.gz",
        2049,
        60_000,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": _IdxFile(
        "t10k-images-idx3-ubyte.gz",
        2051,
        10_000,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": _IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        2049,
        10_000,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}
MIRROR_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
DEFAULT_CACHE = Path(__file__).resolve().parent / "data" / "mnist"
_REMEDY = "Delete it and run again to download a fresh copy, or point MNIST_DIR at a good one."


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


def parse_idx(
    raw: bytes, *, magic: int, count: int | None = None, name: str = "<bytes>"
) -> np.ndarray:
    """Decompressed IDX bytes as uint8, (count, 784) images or (count,) labels, after checking the
    magic number, the dimensions and that the payload has exactly the announced length."""

    def fail(problem: str) -> MNISTDataError:
        return MNISTDataError(
            f"{name}: {problem}; the file is damaged or not an MNIST IDX file. {_REMEDY}"
        )

    ndim = {2051: 3, 2049: 1}.get(magic)
    if ndim is None:
        raise ValueError(f"magic must be 2051 (images) or 2049 (labels), got {magic}")
    header = 4 + 4 * ndim
    if len(raw) >= 4 and (found := int.from_bytes(raw[:4], "big")) != magic:
        raise fail(f"wrong magic number {found} (expected {magic})")
    if len(raw) < header:
        raise fail(f"only {len(raw)} bytes, shorter than the {header}-byte IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if count is not None and dims[0] != count:
        raise fail(f"wrong count {dims[0]} (expected {count})")
    if ndim == 3 and dims[1:] != [28, 28]:
        raise fail(f"wrong image size {dims[1]}x{dims[2]} (expected 28x28)")
    if len(raw) != header + math.prod(dims):
        raise fail(f"{len(raw)} bytes where the header announces {header + math.prod(dims)}")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    return data.reshape(dims[0], -1) if ndim == 3 else data


def idx_size(key: str) -> int:
    """The decompressed size in bytes of one of the four MNIST files."""
    spec = MNIST_FILES[key]
    return (16 + spec.count * 784) if spec.magic == 2051 else (8 + spec.count)


def _open_regular(path: Path):
    """Open `path` for reading if it is a regular file: a FIFO or a device in its place must not
    block the reader forever, a folder is named as such."""
    if path.is_dir():
        raise MNISTDataError(
            f"{path}: a folder where the MNIST file should be. Remove or rename it."
        )
    if not path.exists():
        raise MNISTDataError(
            f"{path}: MNIST file not found. Set MNIST_DIR to a folder holding the four "
            f"MNIST .gz files, run `make data`, or call load_mnist(download=True)."
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, without a writer
    except OSError as exc:
        raise MNISTDataError(
            f"{path}: cannot be read ({exc.strerror or exc}). Check its permissions."
        ) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MNISTDataError(
            f"{path}: not a regular file (a pipe or a device?). Replace it with the MNIST file."
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_idx_gz(path: str | os.PathLike, key: str) -> np.ndarray:
    """Read and fully verify one of the four MNIST files (`key` as in MNIST_FILES)."""
    spec = MNIST_FILES[key]
    path = Path(path)
    size = idx_size(key)
    try:
        with _open_regular(path) as fh, gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            raw = gz.read(size + 1)  # never decompress more than an MNIST file holds
    except gzip.BadGzipFile as exc:
        raise MNISTDataError(f"{path}: not a gzip file ({exc}). {_REMEDY}") from exc
    except (EOFError, zlib.error) as exc:
        raise MNISTDataError(
            f"{path}: the gzip stream is truncated or corrupted ({exc}). {_REMEDY}"
        ) from exc
    except OSError as exc:
        raise MNISTDataError(
            f"{path}: cannot be read ({exc.strerror or exc}). Check its permissions."
        ) from exc
    if len(raw) > size:
        raise MNISTDataError(
            f"{path}: decompresses to more than the {size:,} bytes of this MNIST file. {_REMEDY}"
        )
    array = parse_idx(raw, magic=spec.magic, count=spec.count, name=str(path))
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise MNISTDataError(
            f"{path}: SHA-256 of the decompressed data is {digest}, expected {spec.sha256}; "
            f"the file is corrupted. {_REMEDY}"
        )
    return array


def _download_limit(key: str) -> int:
    """The most bytes a download of this file may take: its decompressed size (gzip never makes
    MNIST bigger) plus room for headers. A mirror that sends more is stopped there."""
    return idx_size(key) + (1 << 20)


def download_mnist(
    directory: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    deadline: float = 900.0,
    force: bool = False,
) -> Path:
    """Download the missing MNIST files into `directory` (default: mnist_dir()) from `base_url`,
    $MNIST_MIRROR or the public mirror. Each file goes to a temporary name and is renamed only
    after it passes verification. `timeout` bounds each network read, `deadline` the whole
    download (s); a file larger than an MNIST file can be is stopped at that size."""
    import urllib.error  # only here: every kernel imports this module, few download
    import urllib.request

    from tqdm.auto import tqdm

    directory = Path(directory) if directory is not None else mnist_dir()
    base_url = base_url or os.environ.get("MNIST_MIRROR") or MIRROR_URL
    if not base_url.endswith("/"):
        base_url += "/"
    end = time.monotonic() + deadline
    for key, spec in MNIST_FILES.items():
        target = directory / spec.name
        url = base_url + spec.name
        if target.exists() and not force:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=spec.name + ".", suffix=".part", dir=directory)
        limit = _download_limit(key)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=timeout) as response,
            ):
                announced = int(response.headers.get("Content-Length") or 0)
                if announced > limit:
                    raise ValueError(
                        f"the mirror announces {announced:,} bytes, more than "
                        f"the {limit:,} an MNIST file can take"
                    )
                bar = tqdm(
                    total=announced or None,
                    unit="B",
                    unit_scale=True,
                    desc=spec.name,
                    disable=not progress,
                    leave=False,
                )
                with bar:
                    received = 0
                    read = getattr(response, "read1", response.read)  # whatever has arrived
                    while chunk := read(1 << 16):
                        received += len(chunk)
                        if received > limit:
                            raise ValueError(
                                f"the mirror sent more than the {limit:,} bytes an "
                                f"MNIST file can take; stopped there"
                            )
                        if time.monotonic() > end:
                            raise TimeoutError(
                                f"not finished within the deadline of {deadline:g} s"
                            )
                        bar.update(out.write(chunk))
            read_idx_gz(tmp, key)
            os.chmod(tmp, 0o644)  # readable like a copied file (mkstemp makes it private)
            os.replace(tmp, target)
        except MNISTDataError as exc:
            raise MNISTDataError(
                f"{spec.name}: the file downloaded from {url} failed verification and was "
                f"discarded: {exc}"
            ) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MNISTDataError(
                f"{spec.name}: download from {url} failed ({exc}). Check the network, try "
                f"another MNIST_MIRROR, or copy the four MNIST .gz files into {directory} "
                f"(or point MNIST_DIR at them)."
            ) from exc
        finally:
            Path(tmp).unlink(missing_ok=True)
    return directory


@functools.lru_cache(maxsize=4)
def _load_verified(directory: Path) -> MNIST:
    arrays = {}
    for key, spec in MNIST_FILES.items():
        path = directory / spec.name
        try:
            arrays[key] = read_idx_gz(path, key)
        except MNISTDataError as exc:
            if directory != DEFAULT_CACHE or _REMEDY not in str(exc):
                raise
            try:  # never leave a damaged file in our own cache looking valid: move it aside
                os.replace(path, path.with_name(path.name + ".corrupt"))
                done = (
                    f"It was moved aside to {path.name}.corrupt; run again to download a "
                    f"fresh copy."
                )
            except OSError as move:
                done = f"It could not be moved aside ({move.strerror}); delete it and run again."
            raise MNISTDataError(str(exc).replace(_REMEDY, done)) from exc
    for arr in arrays.values():
        arr.flags.writeable = False  # shared by every caller in this process
    return MNIST(**arrays)


def load_mnist(
    directory: str | os.PathLike | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
    progress: bool = True,
) -> MNIST:
    """The four MNIST arrays, verified once per process and directory: from `directory`, else
    $MNIST_DIR, else the data/mnist cache; missing files are downloaded when `download` is true."""
    directory = Path(directory).expanduser().resolve() if directory is not None else mnist_dir()
    missing = [s.name for s in MNIST_FILES.values() if not (directory / s.name).exists()]
    if missing and not download:
        raise MNISTDataError(
            f"{directory}: missing MNIST files {', '.join(missing)}. Set MNIST_DIR to a "
            f"folder holding them, run `make data`, or call load_mnist(download=True)."
        )
    if missing:
        download_mnist(directory, base_url=base_url, progress=progress)
    return _load_verified(directory)


def main(argv: list[str] | None = None) -> int:
    """`python mnist_files.py [FOLDER]` (what `make data` runs): fill and verify the MNIST files,
    with one line of output, or one line naming the problem and what to do."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else None
    try:
        data = load_mnist(folder)
    except MNISTDataError as exc:
        print(f"MNIST: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted: no MNIST file was left half-written.", file=sys.stderr)
        return 130
    where = Path(folder).resolve() if folder else mnist_dir()
    print(
        f"MNIST: the four files in {where} are complete and verified "
        f"({len(data.train_labels):,} training and {len(data.test_labels):,} test images)."
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # during the imports
        print("\nInterrupted.", file=sys.stderr)
        sys.exit(130)
