"""The data loaders: IDX (MNIST), npz, csv, and load(spec). Files are written in tmp_path: nothing here
needs data from outside the repository."""
import gzip
import os
import struct

import numpy as np
import pytest

from fastbp import datasets

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array):
    """The IDX encoding of `array` (written here independently of the reader under test)."""
    big = np.dtype(array.dtype).newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, IDX_CODES[np.dtype(big)], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=big).tobytes()


def write(path, data, compress=False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_mnist(directory, kind, n, seed=0, compress=True, dotted=False):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    sep = "." if dotted else "-"
    suffix = ".gz" if compress else ""
    write(directory / f"{kind}-images{sep}idx3-ubyte{suffix}", idx_bytes(images), compress)
    write(directory / f"{kind}-labels{sep}idx1-ubyte{suffix}", idx_bytes(labels), compress)
    return images, labels


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("array", [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([-128, 0, 127], dtype=np.int8),
    np.array([[-70000, 5], [3, 2 ** 31 - 1]], dtype=np.int32),
    np.array([-1, 300], dtype=np.int16),
    np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
    np.array([np.pi, -np.e]),
], ids=["uint8-3d", "int8", "int32", "int16", "float32", "float64"])
def test_idx_round_trip(tmp_path, array, compress):
    path = write(tmp_path / "data.idx", idx_bytes(array), compress)  # gzip found by content
    read = datasets.read_idx(path)
    assert read.shape == array.shape and read.dtype == array.dtype  # native byte order
    assert read.dtype.isnative and read.flags.writeable
    np.testing.assert_array_equal(read, array)
    named = write(tmp_path / ("data.idx.gz" if compress else "data.raw"), idx_bytes(array), compress)
    np.testing.assert_array_equal(datasets.read_idx(str(named)), array)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_idx(tmp_path, compress):
    data = idx_bytes(np.zeros((10, 4, 4), np.uint8))
    path = write(tmp_path / "short", data[:-5], compress)
    with pytest.raises(ValueError, match="truncated"):
        datasets.read_idx(path)
    path = write(tmp_path / "header", data[:9], compress)           # cut inside the shape
    with pytest.raises(ValueError, match="truncated IDX header"):
        datasets.read_idx(path)
    path = write(tmp_path / "long", data + b"\0\0", compress)
    with pytest.raises(ValueError, match="after the data"):
        datasets.read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = write(tmp_path / "cut.gz", packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="gzip"):
        datasets.read_idx(path)


@pytest.mark.parametrize("data, message", [
    (b"", "bad magic"), (b"\x01\x00\x08\x01", "bad magic"), (b"PK\x03\x04", "bad magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "element type"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
])
def test_not_idx(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        datasets.read_idx(write(tmp_path / "bad", data))


@pytest.mark.parametrize("compress, dotted", [(True, False), (False, False), (False, True)])
def test_load_mnist(tmp_path, compress, dotted):
    images, labels = write_mnist(tmp_path, "t10k", 7, compress=compress, dotted=dotted)
    X, y = datasets.load_mnist(tmp_path)
    assert X.shape == (7, 784) and X.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_allclose(X, images.reshape(7, -1) / 255.0)
    np.testing.assert_array_equal(y, labels)
    assert 0 <= X.min() and X.max() <= 1


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        datasets.load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        datasets.load_mnist(tmp_path)
    write_mnist(tmp_path, "t10k", 5)
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(4, np.uint8)), True)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        datasets.load_mnist(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros((5, 2), np.uint8)), True)
    with pytest.raises(ValueError, match="shape"):
        datasets.load_mnist(tmp_path)


# --------------------------------------------------------------------------- npz

def test_load_npz_named(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.random((6, 3)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2], np.uint8)
    np.savez(tmp_path / "d.npz", y=y, extra=np.zeros(2), X=X)
    X2, y2 = datasets.load_npz(tmp_path / "d.npz")
    assert X2.dtype == np.float64 and X2.flags.c_contiguous and y2.dtype == np.int64
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)


def test_load_npz_first_two_arrays_and_shapes(tmp_path):
    images = np.arange(4 * 2 * 2).reshape(4, 2, 2)
    np.savez_compressed(tmp_path / "d.npz", images, np.array([[1.0], [2.0], [3.0], [4.0]]))
    X, y = datasets.load_npz(str(tmp_path / "d.npz"))
    assert X.shape == (4, 4) and y.shape == (4,) and y.dtype == np.int64  # whole numbers
    np.savez(tmp_path / "r.npz", X=np.ones((2, 2)), y=np.array([0.5, 1.5]))
    assert datasets.load_npz(tmp_path / "r.npz")[1].dtype == np.float64   # real targets
    np.savez(tmp_path / "s.npz", X=np.ones((2, 2)), y=np.array(["cat", "dog"]))
    assert list(datasets.load_npz(tmp_path / "s.npz")[1]) == ["cat", "dog"]


@pytest.mark.parametrize("arrays, message", [
    (dict(X=np.ones((3, 2)), y=np.ones(4)), "3 samples in X but 4 labels"),
    (dict(X=np.ones((3, 2)), labels=np.ones(3)), "has X but not y"),
    (dict(only=np.ones((3, 2))), "needs two arrays"),
    (dict(X=np.ones(3), y=np.ones(3)), "2-D"),
    (dict(X=np.ones((3, 2)), y=np.ones((3, 2))), "one label per sample"),
    (dict(X=np.array([[1.0, np.nan]]), y=np.ones(1)), "NaN"),
    (dict(X=np.ones((0, 2)), y=np.ones(0)), "no samples"),
    (dict(X=np.array([["a", "b"]]), y=np.ones(1)), "must be numbers"),
])
def test_load_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        datasets.load_npz(tmp_path / "bad.npz")


def test_load_npz_refuses_pickles_and_other_files(tmp_path):
    np.savez(tmp_path / "obj.npz", X=np.array([{"a": 1}], dtype=object), y=np.ones(1))
    with pytest.raises(ValueError, match="unpickling"):
        datasets.load_npz(tmp_path / "obj.npz")
    np.save(tmp_path / "one.npy", np.ones(3))
    with pytest.raises(ValueError, match="single .npy"):
        datasets.load_npz(tmp_path / "one.npy")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        datasets.load_npz(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        datasets.load_npz(tmp_path / "missing.npz")


# --------------------------------------------------------------------------- csv

def test_load_csv_numeric_with_and_without_header(tmp_path):
    rows = "0.5,1,3\n-2,4e1,0\n"
    (tmp_path / "plain.csv").write_text(rows)
    (tmp_path / "named.csv").write_text("# a comment\n\nwidth,height,label\n" + rows)
    for name in ("plain.csv", "named.csv"):
        X, y = datasets.load_csv(tmp_path / name)
        np.testing.assert_array_equal(X, [[0.5, 1.0], [-2.0, 40.0]])
        np.testing.assert_array_equal(y, [3, 0])
        assert X.dtype == np.float64 and y.dtype == np.int64
    X, y = datasets.load_csv(tmp_path / "plain.csv", header=True)   # told: the first row goes
    assert X.shape == (1, 2)


def test_load_csv_options(tmp_path):
    (tmp_path / "t.tsv").write_text("label\tx\ty\ncat\t1\t2\ndog\t3\t4\n")
    X, y = datasets.load_csv(tmp_path / "t.tsv", label_column=0)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    assert list(y) == ["cat", "dog"]
    (tmp_path / "s.csv").write_text('"a";"b"\n"1";"0.25"\n"2";"0.5"\n')
    X, y = datasets.load_csv(tmp_path / "s.csv")
    np.testing.assert_array_equal(X, [[1], [2]])
    np.testing.assert_array_equal(y, [0.25, 0.5])
    assert y.dtype == np.float64
    (tmp_path / "w.csv").write_text("1 2 1\n3 4 0\n")
    assert datasets.load_csv(tmp_path / "w.csv")[0].shape == (2, 2)
    packed = tmp_path / "g.csv.gz"
    packed.write_bytes(gzip.compress("\ufeffx,y\n1,0\n2,1\n".encode()))
    X, y = datasets.load_csv(packed)
    np.testing.assert_array_equal(y, [0, 1])


@pytest.mark.parametrize("text, message", [
    ("", "no data"),
    ("# only a comment\n", "no data"),
    ("1\n2\n", "one column"),
    ("1,2,3\n4,5\n", "bad.csv: line 2 has 2 columns"),
    ("a,b,c\n1,2,3\n\n4,oops,6\n", "bad.csv: line 4, column 2: 'oops' is not a number"),
    ("x,y\n", "no data rows"),
    ("1,2,cat\n3,4,5\n", "mixes numbers and text"),
    ("1,2,nan\n", "NaN"),
])
def test_load_csv_errors(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        datasets.load_csv(tmp_path / "bad.csv")


def test_load_csv_not_text(tmp_path):
    (tmp_path / "utf16.csv").write_bytes("1,2\n".encode("utf-16"))
    with pytest.raises(ValueError, match="not a readable text file"):
        datasets.load_csv(tmp_path / "utf16.csv")


def test_load_csv_label_column_out_of_range(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="label_column 5"):
        datasets.load_csv(tmp_path / "d.csv", label_column=5)
    with pytest.raises(FileNotFoundError):
        datasets.load_csv(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- load(spec)

def test_load_dispatches(tmp_path):
    pytest.importorskip("sklearn")
    X, y = datasets.load("digits")
    assert X.shape == (1797, 64) and y.dtype == np.int64

    np.savez(tmp_path / "d.npz", X=np.ones((2, 3)), y=np.array([0, 1]))
    assert datasets.load(str(tmp_path / "d.npz"))[0].shape == (2, 3)
    (tmp_path / "d.csv").write_text("1,2,0\n3,4,1\n")
    assert datasets.load(tmp_path / "d.csv")[0].shape == (2, 2)

    t10k, _ = write_mnist(tmp_path, "t10k", 3)
    X, y = datasets.load(f"mnist:{tmp_path}")
    np.testing.assert_allclose(X, t10k.reshape(3, -1) / 255.0)   # only the test set: that one
    train, _ = write_mnist(tmp_path, "train", 4, seed=1)
    X, y = datasets.load(f"mnist:{tmp_path}")
    np.testing.assert_allclose(X, train.reshape(4, -1) / 255.0)  # the training set when present


@pytest.mark.parametrize("spec, error, message", [
    ("mnist", ValueError, "unknown dataset"),
    ("data.txt", ValueError, "unknown dataset"),
    ("mnist:", ValueError, "needs a directory"),
    ("mnist:/no/such/dir", FileNotFoundError, "no such directory"),
    ("/no/such/file.npz", FileNotFoundError, "no such file"),
    ("/no/such/file.csv", FileNotFoundError, "no such file"),
    (3, TypeError, "string"),
])
def test_load_bad_specs(spec, error, message):
    with pytest.raises(error, match=message):
        datasets.load(spec)


def test_load_directory_hint(tmp_path):
    with pytest.raises(ValueError, match=f"mnist:{tmp_path}"):
        datasets.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        datasets.load(f"mnist:{tmp_path}")


def test_train_test_split():
    X, y = np.arange(20).reshape(10, 2), np.arange(10)
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, 0.3, seed=1)
    assert len(X_test) == 3 and len(X_train) == 7
    np.testing.assert_array_equal(X_train[:, 0] // 2, y_train)
    assert sorted(np.concatenate([y_train, y_test])) == list(range(10))
    with pytest.raises(ValueError, match="10 samples but y has 9"):
        datasets.train_test_split(X, y[:9])
    with pytest.raises(ValueError, match="between 0 and 1"):
        datasets.train_test_split(X, y, 1.0)
    assert len(datasets.train_test_split(X, y, 0.99)[0]) == 1   # at least one sample each side


def test_the_files_are_not_left_open(tmp_path):
    """Windows cannot delete an open file; here: removing after loading works."""
    np.savez(tmp_path / "d.npz", X=np.ones((2, 3)), y=np.array([0, 1]))
    (tmp_path / "d.csv").write_text("1,2,0\n")
    datasets.load(tmp_path / "d.npz")
    datasets.load(tmp_path / "d.csv")
    os.remove(tmp_path / "d.npz")
    os.remove(tmp_path / "d.csv")
