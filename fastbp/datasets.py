"""Data to train on: the bundled handwritten digits, MNIST files, and a seeded train/test split."""
import gzip
import os

import numpy as np


def load_digits():
    """scikit-learn's 8x8 handwritten digits (1,797 images; they ship inside scikit-learn, nothing
    is downloaded): X (1797, 64) scaled to [0, 1], y (1797,) labels 0-9."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError("the bundled digits come with scikit-learn: pip install 'fastbp[digits]' "
                          "(or pip install scikit-learn)") from None
    digits = sklearn_digits()
    return digits.data / 16.0, digits.target.astype(np.int64)


def read_idx(path):
    """An array from an IDX file (MNIST's format), gzip-compressed or raw."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    types = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in types:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4"))
    dtype = np.dtype(types[data[2]])
    if len(data) - header != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: truncated or damaged (expected {int(np.prod(shape))} items of "
                         f"shape {shape})")
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def load_mnist(directory, kind="t10k"):
    """MNIST images and labels from `directory` ({kind}-images-idx3-ubyte[.gz] and labels):
    X (n, 784) scaled to [0, 1], y (n,) labels 0-9."""
    def find(name):
        for candidate in (name + ".gz", name):
            path = os.path.join(directory, candidate)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(f"no {name}[.gz] in {directory}")
    images = read_idx(find(f"{kind}-images-idx3-ubyte"))
    labels = read_idx(find(f"{kind}-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images.reshape(images.shape[0], -1) / 255.0, labels.astype(np.int64)


def train_test_split(X, y, test_fraction=0.2, seed=0):
    """A seeded random split: (X_train, X_test, y_train, y_test)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = max(1, int(round(len(X) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]
