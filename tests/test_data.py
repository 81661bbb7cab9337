"""The MNIST pipeline: IDX parsing, verification, every failure's message, the download path, the
protocol's preprocessing."""

import gzip
import http.server
import os
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import mlp_core as mlp
import mnist_files as mf

LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def idx_bytes(magic: int, dims: list[int], payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


# ---- IDX parsing on small synthetic data --------------------------------------------------------


def test_parse_idx_images_and_labels():
    pixels = np.arange(3 * 784, dtype=np.uint8)
    images = mf.parse_idx(idx_bytes(2051, [3, 28, 28], pixels.tobytes()), magic=2051, count=3)
    assert images.shape == (3, 784) and images.dtype == np.uint8
    np.testing.assert_array_equal(images.ravel(), pixels)
    labels = mf.parse_idx(idx_bytes(2049, [4], bytes([7, 0, 9, 3])), magic=2049, count=4)
    np.testing.assert_array_equal(labels, [7, 0, 9, 3])


@pytest.mark.parametrize(
    "raw, message",
    [
        (idx_bytes(2049, [2], bytes(2)), "wrong magic number 2049"),
        (idx_bytes(2051, [2, 28, 28], bytes(784)), "bytes where the header announces"),
        (idx_bytes(2051, [2, 27, 28], bytes(2 * 27 * 28)), "wrong image size 27x28"),
        (idx_bytes(2051, [5, 28, 28], bytes(5 * 784)), "wrong count 5 (expected 2)"),
        (b"\x00\x00\x08", "shorter than the 16-byte IDX header"),
    ],
)
def test_parse_idx_rejects_malformed_data(raw, message):
    with pytest.raises(mlp.MNISTDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mf.parse_idx(raw, magic=2051, count=2, name="synthetic.gz")


# ---- The real files ----------------------------------------------------------------------------


def test_real_files_shapes_and_label_counts(mnist):
    assert mnist.train_images.shape == (60_000, 784) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10_000, 784)
    assert mnist.train_labels.shape == (60_000,) and mnist.test_labels.shape == (10_000,)
    assert np.bincount(mnist.train_labels, minlength=10).tolist() == LABEL_COUNTS


def test_pixel_statistics(mnist):
    mu, sigma = mlp.pixel_stats(mnist.train_images)
    assert mu == pytest.approx(33.318421449829934, abs=1e-9)
    assert sigma == pytest.approx(78.56748998339798, abs=1e-9)


def test_loaded_once_per_process(mnist_path):
    assert mlp.load_mnist(mnist_path) is mlp.load_mnist(mnist_path)


def test_prepare_data_follows_the_protocol(mnist):
    data = mlp.prepare_data(n_train=20_000)
    assert data.train.X.shape == (20_000, 785) and data.val.X.shape == (10_000, 785)
    assert data.train.X.dtype == np.float32
    np.testing.assert_array_equal(data.train.X[:, -1], 1.0)  # bias column
    np.testing.assert_array_equal(data.train.labels, mnist.train_labels[:20_000])
    np.testing.assert_array_equal(data.val.labels, mnist.test_labels)
    np.testing.assert_array_equal(data.train.Y.argmax(1), data.train.labels)
    assert data.train.Y.sum(1).tolist() == [1.0] * 20_000
    expected = (mnist.test_images[7].astype(np.float64) - 33.318421449829934) / 78.56748998339798
    np.testing.assert_allclose(data.val.X[7, :-1], expected, rtol=1e-6, atol=1e-6)
    assert data.mu == pytest.approx(33.318421449829934) and data.sigma == pytest.approx(
        78.56748998339798
    )


def test_one_hot_and_bias_checks():
    np.testing.assert_array_equal(mlp.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"labels must be 2 integers in \[0, 9\]"):
        mlp.one_hot(np.array([0, 10]))
    with pytest.raises(ValueError, match="labels must be 1 integers"):
        mlp.one_hot(np.array([0.5]))
    with pytest.raises(ValueError, match="2-D"):
        mlp.add_bias(np.zeros(3))
    with pytest.raises(ValueError, match="sigma > 0"):
        mlp.normalize(np.zeros(3, np.uint8), 0.0, 0.0)


@pytest.mark.parametrize("dtype", ["int8", "float16", "uint8"])
def test_prepare_data_checks_its_dtype(dtype):
    with pytest.raises(
        ValueError, match=f"dtype must be one of \\['float32', 'float64'\\], got '{dtype}'"
    ):
        mlp.prepare_data(100, dtype)
    with pytest.raises(ValueError, match="n_train must be an integer >= 1 and <= 60000, got 0"):
        mlp.prepare_data(0)


# ---- Damaged copies of the real files ----------------------------------------------------------


def _raw(mnist_path: Path, key: str) -> bytes:
    with gzip.open(mnist_path / mlp.MNIST_FILES[key].name) as fh:
        return fh.read()


def _write(tmp_path: Path, key: str, data: bytes, compress: bool = True) -> Path:
    path = tmp_path / mlp.MNIST_FILES[key].name
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(mlp.MNISTDataError, match="not found.*MNIST_DIR"):
        mf.read_idx_gz(tmp_path / "train-labels-idx1-ubyte.gz", "train_labels")
    with pytest.raises(mlp.MNISTDataError, match="missing MNIST files"):
        mlp.load_mnist(tmp_path, download=False)


def test_truncated_file(mnist_path, tmp_path):
    good = (mnist_path / "t10k-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(
        mlp.MNISTDataError, match="t10k-labels-idx1-ubyte.gz: the gzip stream is truncated"
    ):
        mf.read_idx_gz(path, "test_labels")


def test_not_gzip(mnist_path, tmp_path):
    path = _write(tmp_path, "test_labels", _raw(mnist_path, "test_labels"), compress=False)
    with pytest.raises(mlp.MNISTDataError, match="not a gzip file"):
        mf.read_idx_gz(path, "test_labels")


def test_wrong_magic(mnist_path, tmp_path):
    raw = bytearray(_raw(mnist_path, "test_labels"))
    raw[3] = 0x03  # 2049 -> 2051
    path = _write(tmp_path, "test_labels", bytes(raw))
    with pytest.raises(mlp.MNISTDataError, match="wrong magic number 2051 .expected 2049"):
        mf.read_idx_gz(path, "test_labels")


def test_wrong_count(mnist_path, tmp_path):
    raw = _raw(mnist_path, "test_labels")
    fewer = raw[:4] + (9_999).to_bytes(4, "big") + raw[8:-1]
    path = _write(tmp_path, "test_labels", fewer)
    with pytest.raises(mlp.MNISTDataError, match="wrong count 9999 .expected 10000"):
        mf.read_idx_gz(path, "test_labels")


def test_truncated_payload(mnist_path, tmp_path):
    path = _write(tmp_path, "test_labels", _raw(mnist_path, "test_labels")[:-10])
    with pytest.raises(mlp.MNISTDataError, match="9998 bytes where the header announces 10008"):
        mf.read_idx_gz(path, "test_labels")


def test_checksum_mismatch(mnist_path, tmp_path):
    raw = bytearray(_raw(mnist_path, "test_labels"))
    raw[100] = (raw[100] + 1) % 10  # a valid-looking label, but not MNIST's
    path = _write(tmp_path, "test_labels", bytes(raw))
    with pytest.raises(mlp.MNISTDataError, match="SHA-256 of the decompressed data"):
        mf.read_idx_gz(path, "test_labels")


def _copy_all(mnist_path: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for spec in mlp.MNIST_FILES.values():
        shutil.copy(mnist_path / spec.name, target / spec.name)


def test_corrupt_file_in_a_user_folder_is_reported_not_touched(mnist_path, tmp_path):
    _copy_all(mnist_path, tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(mlp.MNISTDataError, match="t10k-labels-idx1-ubyte.gz: not a gzip file"):
        mlp.load_mnist(tmp_path, download=False)
    assert bad.read_bytes() == b"garbage"


def test_corrupt_file_in_the_cache_is_moved_aside(mnist_path, tmp_path, monkeypatch):
    cache = (tmp_path / "cache").resolve()
    _copy_all(mnist_path, cache)
    bad = cache / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    monkeypatch.setattr(mf, "DEFAULT_CACHE", cache)
    with pytest.raises(mlp.MNISTDataError) as caught:
        mlp.load_mnist(cache, download=False)
    assert "gzip stream is truncated" in str(caught.value)
    assert (
        "It was moved aside to t10k-labels-idx1-ubyte.gz.corrupt; run again to download a "
        "fresh copy." in str(caught.value)
    )
    assert "Delete it" not in str(caught.value)  # one remedy, not two that contradict each other
    assert not bad.exists() and (cache / "t10k-labels-idx1-ubyte.gz.corrupt").exists()


def test_a_folder_named_like_a_data_file_is_reported_not_moved(mnist_path, tmp_path, monkeypatch):
    cache = (tmp_path / "cache").resolve()
    _copy_all(mnist_path, cache)
    (cache / "t10k-labels-idx1-ubyte.gz").unlink()
    (cache / "t10k-labels-idx1-ubyte.gz").mkdir()
    monkeypatch.setattr(mf, "DEFAULT_CACHE", cache)
    with pytest.raises(
        mlp.MNISTDataError,
        match="t10k-labels-idx1-ubyte.gz: a folder where the MNIST file should be",
    ):
        mlp.load_mnist(cache, download=False)
    assert (cache / "t10k-labels-idx1-ubyte.gz").is_dir() and not (
        cache / "t10k-labels-idx1-ubyte.gz.corrupt"
    ).exists()


def test_a_failing_move_aside_is_explained(mnist_path, tmp_path, monkeypatch):
    cache = (tmp_path / "cache").resolve()
    _copy_all(mnist_path, cache)
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    monkeypatch.setattr(mf, "DEFAULT_CACHE", cache)

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mf.os, "replace", refuse)
    with pytest.raises(
        mlp.MNISTDataError,
        match=r"not a gzip file .* It could not be moved aside \(Permission denied\); "
        r"delete it and run again",
    ):
        mlp.load_mnist(cache, download=False)


def test_an_unreadable_file_is_an_mnist_data_error(mnist_path, tmp_path, monkeypatch):
    _copy_all(mnist_path, tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mf.os, "open", denied)
    with pytest.raises(
        mlp.MNISTDataError, match=r"cannot be read \(Permission denied\). Check its permissions"
    ):
        mf.read_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", "test_labels")


# ---- Download from a local HTTP server ---------------------------------------------------------


@pytest.fixture
def http_root(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base_url)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/mnist/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_good_files(mnist_path, http_root, tmp_path):
    root, url = http_root
    _copy_all(mnist_path, root / "mnist")
    target = tmp_path / "downloaded"
    data = mlp.load_mnist(target, base_url=url, progress=False)
    assert data.train_images.shape == (60_000, 784)
    assert sorted(p.name for p in target.iterdir()) == sorted(
        s.name for s in mlp.MNIST_FILES.values()
    )


def test_download_of_a_corrupted_file_is_discarded(mnist_path, http_root, tmp_path):
    root, url = http_root
    _copy_all(mnist_path, root / "mnist")
    raw = bytearray(_raw(mnist_path, "test_labels"))
    raw[-1] = (raw[-1] + 1) % 10
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    target = tmp_path / "downloaded"
    with pytest.raises(
        mlp.MNISTDataError,
        match="t10k-labels-idx1-ubyte.gz: the file downloaded from .* failed "
        "verification and was discarded",
    ):
        mf.download_mnist(target, base_url=url, progress=False)
    left = sorted(p.name for p in target.iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in left and not any(n.endswith(".part") for n in left)


def test_download_truncated_file_is_discarded(mnist_path, http_root, tmp_path):
    root, url = http_root
    _copy_all(mnist_path, root / "mnist")
    good = (mnist_path / "train-labels-idx1-ubyte.gz").read_bytes()
    (root / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(good[:1000])
    target = tmp_path / "downloaded"
    with pytest.raises(mlp.MNISTDataError, match="train-labels-idx1-ubyte.gz: .*truncated"):
        mf.download_mnist(target, base_url=url, progress=False)
    assert not (target / "train-labels-idx1-ubyte.gz").exists()


def test_download_missing_on_server(http_root, tmp_path):
    _, url = http_root
    with pytest.raises(mlp.MNISTDataError, match="download from .* failed .*404"):
        mf.download_mnist(tmp_path / "downloaded", base_url=url, progress=False)
    assert list((tmp_path / "downloaded").iterdir()) == []


def test_download_server_unreachable(tmp_path, closed_port):
    with pytest.raises(mlp.MNISTDataError, match="download from .* failed.*copy the four MNIST"):
        mf.download_mnist(
            tmp_path / "d", base_url=f"http://127.0.0.1:{closed_port}/", progress=False, timeout=5
        )


def test_downloaded_files_are_readable_like_copied_ones(mnist_path, http_root, tmp_path):
    root, url = http_root
    _copy_all(mnist_path, root / "mnist")
    target = tmp_path / "downloaded"
    mf.download_mnist(target, base_url=url, progress=False)
    assert {oct(p.stat().st_mode & 0o777) for p in target.iterdir()} == {"0o644"}


def test_a_gzip_bomb_is_not_decompressed_beyond_the_file_size(http_root, tmp_path):
    root, url = http_root
    (root / "mnist").mkdir()
    header = (2049).to_bytes(4, "big") + (10_000).to_bytes(4, "big")
    (root / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(header + bytes(50_000_000))
    )
    with pytest.raises(mlp.MNISTDataError, match="decompresses to more than the 47,040,016 bytes"):
        mf.download_mnist(tmp_path / "d", base_url=url, progress=False)


def _serve(handler):
    """Serve `handler` on 127.0.0.1 in a thread while the caller's fixture lasts: its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def drip_server():
    """A mirror on 127.0.0.1 that announces a file and then sends one byte every 0.3 s."""

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.3)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    yield from _serve(Drip)


def test_a_slow_drip_mirror_runs_into_the_deadline(drip_server, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(
        mlp.MNISTDataError,
        match=r"download from .* failed \(not finished within the deadline of 2 s\)",
    ):
        mf.download_mnist(
            tmp_path / "d", base_url=drip_server, progress=False, timeout=5, deadline=2
        )
    # generous for a busy machine, and still half of the minute the drip would go on without it
    assert time.monotonic() - t0 < 30
    assert not any(p.name.endswith(".part") for p in (tmp_path / "d").iterdir())


def test_a_fifo_in_place_of_a_data_file_does_not_block(tmp_path):
    """A named pipe where an MNIST file should be: an error at once, never a reader that waits
    forever for a writer."""
    fifo = tmp_path / "t10k-labels-idx1-ubyte.gz"
    os.mkfifo(fifo)
    outcome = []

    def read():
        try:
            mf.read_idx_gz(fifo, "test_labels")
        except mlp.MNISTDataError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert outcome and "not a regular file" in outcome[0]


@pytest.fixture
def endless_server():
    """A mirror on 127.0.0.1 that never ends its file: no Content-Length, data as fast as it can."""

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            block = b"x" * 65536
            try:
                for _ in range(10_000):  # 655 MB at most, far beyond any MNIST file
                    self.wfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    yield from _serve(Endless)


def test_a_mirror_that_never_ends_is_stopped_at_the_largest_possible_size(endless_server, tmp_path):
    folder = tmp_path / "d"
    with pytest.raises(mlp.MNISTDataError, match=r"the mirror sent more than the [\d,]+ bytes"):
        mf.download_mnist(folder, base_url=endless_server, progress=False, deadline=120)
    assert not list(folder.iterdir())  # the partial file is gone
    limit = mf.idx_size("train_images") + (1 << 20)
    assert limit < 50_000_000  # stopped at ~48 MB, not at the deadline
