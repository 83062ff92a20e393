"""Data to train on: the bundled handwritten digits, MNIST files, npz and csv files, a seeded split.

Every loader returns ``(X, y)``: ``X`` a C-contiguous float64 array ``(n_samples, n_features)``, ``y``
a 1-D array of ``n_samples`` labels (int64 when the labels are whole numbers; float64 for real-valued
targets; str for text labels). :func:`load` picks the loader from a spec string, as the command line's
``--dataset`` does: ``digits``, ``mnist:DIR``, ``FILE.npz`` or ``FILE.csv``.
"""
import gzip
import os
import warnings
import zipfile
import zlib

import numpy as np

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
DATA_KEYS = ("X", "y")   # the arrays of a data file (.npz, or a directory of .npy files)
TEST_KEYS = ("X_test", "y_test")
SPECS = "digits, mnist:DIR (a folder of MNIST IDX files), FILE.npz or FILE.csv"


def load_digits():
    """scikit-learn's 8x8 handwritten digits (nothing is downloaded: they ship with scikit-learn).

    Returns
    -------
    X : ndarray of shape (1797, 64)
        Grey levels scaled to [0, 1].
    y : ndarray of shape (1797,)
        Labels 0-9 (int64).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError("the bundled digits come with scikit-learn: pip install 'fastbp[digits]' "
                          "(or pip install scikit-learn)") from None
    digits = sklearn_digits()
    return digits.data / 16.0, digits.target.astype(np.int64)


# --------------------------------------------------------------------------- MNIST (IDX files)

def _read_bytes(path):
    """The bytes of `path`, decompressed when it is gzip (recognized by its magic number)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: damaged or truncated gzip file ({error})") from None
    return data


def read_idx(path):
    """An array from an IDX file (MNIST's format), gzip-compressed or raw.

    Parameters
    ----------
    path : str or path-like
        The file; gzip is recognized by its content, whatever the name.

    Returns
    -------
    ndarray
        The array, of the file's shape and element type (native byte order, writeable).

    Raises
    ------
    ValueError
        The file is not IDX (bad magic number or element type), or truncated, or has bytes past
        the end of its data.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if data[2] not in IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    if ndim == 0:
        raise ValueError(f"{path}: an IDX file with 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes; {ndim} dimensions "
                         f"need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4"))
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = dtype.itemsize
    for d in shape:  # Python ints: no overflow
        expected *= d
    found = len(data) - header
    if found < expected:
        raise ValueError(f"{path}: truncated: shape {shape} needs {expected} bytes of data, the "
                         f"file has {found}")
    if found > expected:
        raise ValueError(f"{path}: damaged: {found - expected} bytes after the data of shape "
                         f"{shape}")
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find_mnist(directory, kind, what):
    """The path of MNIST's `kind` `what` (images or labels) file in `directory`, or None."""
    ndim = 3 if what == "images" else 1
    for stem in (f"{kind}-{what}-idx{ndim}-ubyte", f"{kind}-{what}.idx{ndim}-ubyte"):
        for candidate in (stem + ".gz", stem):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return path
    return None


def load_mnist(directory, kind="t10k"):
    """MNIST images and labels from the IDX files in `directory`.

    Parameters
    ----------
    directory : str or path-like
        Holds ``{kind}-images-idx3-ubyte`` and ``{kind}-labels-idx1-ubyte``, each raw or ``.gz``
        (the names with ``.idx`` instead of ``-idx`` are found too).
    kind : {"t10k", "train"}, default="t10k"
        Which pair of files: the 10,000 test images or the 60,000 training images.

    Returns
    -------
    X : ndarray of shape (n, rows * columns)
        Grey levels 0-255 scaled to [0, 1].
    y : ndarray of shape (n,)
        Labels (int64).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no such directory: {directory}")
    paths = {}
    for what in ("images", "labels"):
        paths[what] = _find_mnist(directory, kind, what)
        if paths[what] is None:
            ndim = 3 if what == "images" else 1
            raise FileNotFoundError(f"no {kind}-{what}-idx{ndim}-ubyte[.gz] in {directory}")
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{paths['images']}: expected unsigned bytes of shape (n, rows, columns), "
                         f"got {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{paths['labels']}: expected unsigned bytes of shape (n,), got "
                         f"{labels.dtype} of shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images.reshape(images.shape[0], -1) / 255.0, labels.astype(np.int64)


# --------------------------------------------------------------------------- npz and csv

def _labels(y, path):
    """y as the loaders return it: int64 whole numbers, float64 other numbers, or str."""
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{path}: the labels hold NaN or infinite values "
                             f"(first at row {int(np.argmin(np.isfinite(y)))})")
        return y.astype(np.int64) if np.array_equal(y, np.round(y)) else y.astype(np.float64)
    if y.dtype.kind in "US":
        return y.astype(str)
    raise ValueError(f"{path}: labels of dtype {y.dtype} are neither numbers nor text")


def _features(X, path):
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{path}: the features must be numbers, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        row, column = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"{path}: the features hold NaN or infinite values (first at row {row}, "
                         f"column {column})")
    return X


def load_npz(path, keys=None):
    """X and y from an ``.npz`` archive (as written by ``numpy.savez``) or a directory of .npy files.

    Parameters
    ----------
    path : str or path-like
        The archive: arrays named ``X`` and ``y``, or else its first two arrays, in that order; or a
        directory holding ``X.npy`` and ``y.npy``.
        ``X`` of more than two dimensions (images) is flattened per sample; ``y`` may be
        ``(n,)`` or ``(n, 1)``. Pickled (object) arrays are refused.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        float64, the values as stored (not rescaled).
    y : ndarray of shape (n_samples,)
        int64 for whole numbers, float64 for other numbers, str for text.
    keys : pair of str, optional
        The names of the two arrays to read (for instance ``("X_test", "y_test")``).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        keys = keys or DATA_KEYS
        X, y = (np.load(os.path.join(path, f"{key}.npy"), allow_pickle=False) for key in keys)
        return _sample_arrays(X, y, keys, path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, not an .npz archive of X and y "
                         f"(write one with numpy.savez(path, X=X, y=y))")
    with archive:
        names = list(archive.files)
        if keys is not None:
            missing = [key for key in keys if key not in names]
            if missing:
                raise ValueError(f"{path}: has no array {missing[0]} (arrays: {', '.join(names)})")
            chosen = list(keys)
        elif "X" in names and "y" in names:
            chosen = ["X", "y"]
        elif "X" in names or "y" in names:
            raise ValueError(f"{path}: has {'X' if 'X' in names else 'y'} but not "
                             f"{'y' if 'X' in names else 'X'} (arrays: {', '.join(names)})")
        elif len(names) >= 2:
            chosen = names[:2]
        else:
            raise ValueError(f"{path}: needs two arrays, X and y; it has "
                             f"{', '.join(names) or 'none'}")
        try:
            X, y = (archive[name] for name in chosen)
        except ValueError as error:  # object arrays need pickles: refused
            raise ValueError(f"{path}: cannot read {chosen[0]} and {chosen[1]} without "
                             f"unpickling ({error}); store plain numeric arrays") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{path}: damaged archive ({error})") from None
    return _sample_arrays(X, y, chosen, path)


def _sample_arrays(X, y, chosen, path):
    """X flattened per sample and checked, y one label per sample (see load_npz)."""
    if X.ndim < 2:
        raise ValueError(f"{path}: {chosen[0]} must have a row per sample (2-D or more), got "
                         f"shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{path}: no samples")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{path}: {chosen[1]} must hold one label per sample, shape (n,), got "
                         f"{y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{path}: {X.shape[0]} samples in {chosen[0]} but {y.shape[0]} labels in "
                         f"{chosen[1]}")
    return _features(X.reshape(X.shape[0], -1), path), _labels(y, path)


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _open_text(path):
    """`path` opened as UTF-8 text (a byte-order mark is skipped), decompressed if it is gzip."""
    opener = gzip.open if _is_gzip(path) else open
    return opener(path, "rt", encoding="utf-8-sig")


def _first_line(path):
    """The first line that is neither blank nor a comment, and its index (None, 0 when none)."""
    with _open_text(path) as f:
        for index, line in enumerate(f):
            if line.strip() and not line.lstrip().startswith("#"):
                return line.rstrip("\r\n"), index
    return None, 0


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def load_csv(path, label_column=-1, header=None, delimiter=None):
    """X and y from a delimited text file, one sample per line (numpy only).

    Parameters
    ----------
    path : str or path-like
        The file, raw or gzip-compressed. Lines starting with ``#`` are comments.
    label_column : int or str, default=-1
        The column holding the label: an index (negative counts from the end), ``"first"``,
        ``"last"``, or the column's name in the header line; every other column is a feature and
        must be a number.
    header : bool or None, default=None
        Whether the first line names the columns; None detects it (a first line whose feature
        fields are not all numbers is a header).
    delimiter : str or None, default=None
        The field separator; None detects ``,``, tab or ``;`` from the first line, else whitespace.

    Returns
    -------
    X : ndarray of shape (n_samples, n_columns - 1)
        float64, the values as stored (not rescaled).
    y : ndarray of shape (n_samples,)
        int64 for whole numbers, float64 for other numbers, str for text labels.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        first, first_index = _first_line(path)
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a readable text file ({error})") from None
    if first is None:
        raise ValueError(f"{path}: no data")
    if delimiter is None:
        delimiter = next((d for d in (",", "\t", ";") if d in first), None)
    fields = [field.strip().strip('"') for field in first.split(delimiter)]
    n_columns = len(fields)
    if n_columns < 2:
        raise ValueError(f"{path}: one column per line; needs at least one feature and a label "
                         f"(delimiter {delimiter!r})")
    label_column = _column(label_column, fields, header, path)
    features = [i for i in range(n_columns) if i != label_column]
    if header is None:
        header = not all(_is_number(fields[i]) for i in features)
    options = dict(delimiter=delimiter, skiprows=first_index + 1 if header else 0, comments="#",
                   ndmin=2, quotechar='"')
    try:
        with _open_text(path) as f, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Input line", UserWarning)  # blank/comment lines
            warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
            X = np.loadtxt(f, dtype=np.float64, usecols=features, **options)
        with _open_text(path) as f, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Input line", UserWarning)
            warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
            y = np.loadtxt(f, dtype=str, usecols=[label_column], **options)[:, 0]
    except (ValueError, OSError, EOFError, zlib.error) as error:  # UnicodeDecodeError too
        skip = first_index + 1 if header else 0
        where = _find_bad_line(path, delimiter, n_columns, features, skip)
        raise ValueError(f"{path}: {where or error}") from None
    if X.shape[0] == 0:
        raise ValueError(f"{path}: no data rows")
    y = np.char.strip(y)
    numbers = np.array([_is_number(label) for label in y])
    if numbers.all():
        y = y.astype(np.float64)
    elif numbers.any():
        row = int(np.argmin(numbers)) if numbers[0] else int(np.argmax(numbers))
        raise ValueError(f"{path}: the label column mixes numbers and text (data row {row + 1}: "
                         f"{y[row]!r})")
    return _features(X, path), _labels(y, path)


def _column(label_column, fields, header, path):
    """The index of the label column: an int (negative from the end), "first", "last", a number
    written as text, or a name of the header line `fields`."""
    n_columns = len(fields)
    if isinstance(label_column, str):
        name = label_column.strip()
        if name in ("first", "last"):
            return 0 if name == "first" else n_columns - 1
        if name.lstrip("-").isdigit():
            label_column = int(name)
        elif header is False or name not in fields:
            raise ValueError(f"{path}: no column named {name!r} in its header line "
                             f"({', '.join(fields[:8])}{', ...' if n_columns > 8 else ''}); name "
                             f"the label column by index, first, last or a header name")
        else:
            return fields.index(name)
    if isinstance(label_column, bool) or not isinstance(label_column, (int, np.integer)):
        raise TypeError(f"label_column must be an int, 'first', 'last' or a header name, got "
                        f"{label_column!r}")
    if not -n_columns <= label_column < n_columns:
        raise ValueError(f"label_column {label_column} is outside the {n_columns} columns of "
                         f"{path}")
    return int(label_column) % n_columns


def _find_bad_line(path, delimiter, n_columns, features, skip):
    """What is wrong with the first bad line of a csv file (for the error message), or None."""
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, 1):
                if number <= skip or not line.strip() or line.lstrip().startswith("#"):
                    continue
                fields = [field.strip().strip('"')
                          for field in line.rstrip("\r\n").split(delimiter)]
                if len(fields) != n_columns:
                    return (f"line {number} has {len(fields)} columns; the first data line has "
                            f"{n_columns}")
                for i in features:
                    if not _is_number(fields[i]):
                        return f"line {number}, column {i + 1}: {fields[i]!r} is not a number"
    except (ValueError, OSError, EOFError, zlib.error):
        return None
    return None


# --------------------------------------------------------------------------- by name

def load(spec, label_column=None):
    """The data set a spec names: ``digits``, ``mnist:DIR``, ``FILE.npz``, ``FILE.csv`` or a directory
    of ``X.npy`` and ``y.npy``.

    Parameters
    ----------
    spec : str or path-like
        ``"digits"``: scikit-learn's 8x8 digits (:func:`load_digits`). ``"mnist:DIR"``: the MNIST
        IDX files in DIR (:func:`load_mnist`), the training set when DIR has it, else the test set
        (``t10k``). A path ending in ``.npz`` (:func:`load_npz`) or ``.csv`` / ``.csv.gz`` /
        ``.tsv`` (:func:`load_csv`: the label in the last column unless `label_column` says
        otherwise). A directory holding ``X.npy`` and ``y.npy``.
    label_column : int or str, optional
        For CSV files: which column holds the label (see :func:`load_csv`); other specs refuse it.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        float64.
    y : ndarray of shape (n_samples,)
        The labels.

    Raises
    ------
    ValueError
        The spec is none of these forms, or the file is not what its name says.
    FileNotFoundError
        The file or directory does not exist.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"a dataset spec is a string ({SPECS}), got {type(spec).__name__}")
    spec = os.fspath(spec)
    lower = spec.lower()
    is_csv = lower.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz"))
    if label_column is not None and not is_csv:
        raise ValueError(f"a label column can be chosen for CSV files only, not for {spec!r}")
    if spec == "digits":
        return load_digits()
    if spec.startswith("mnist:"):
        directory = spec[len("mnist:"):]
        if not directory:
            raise ValueError("mnist: needs a directory, as in mnist:path/to/mnist")
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"no such directory: {directory} (from {spec!r})")
        has_train = all(_find_mnist(directory, "train", what) for what in ("images", "labels"))
        return load_mnist(directory, "train" if has_train else "t10k")
    if lower.endswith(".npz"):
        return load_npz(spec)
    if is_csv:
        return load_csv(spec, -1 if label_column is None else label_column)
    if os.path.isdir(spec) and has_arrays(spec, DATA_KEYS):
        return load_npz(spec)
    if os.path.isdir(spec):
        raise ValueError(f"{spec} is a directory; for the MNIST files in it write mnist:{spec}")
    raise ValueError(f"unknown dataset {spec!r}; use one of: {SPECS}")


def train_test_split(X, y, test_fraction=0.2, seed=0):
    """A seeded random split.

    Parameters
    ----------
    X, y : ndarray
        Samples and their labels (the same number of rows).
    test_fraction : float, default=0.2
        The fraction held out for testing, between 0 and 1 (at least one sample each side).
    seed : int, default=0
        Seeds the permutation.

    Returns
    -------
    X_train, X_test, y_train, y_test : ndarray
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
    if len(X) < 2:
        raise ValueError(f"splitting needs at least 2 samples, got {len(X)}")
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = min(len(X) - 1, max(1, int(round(len(X) * test_fraction))))
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]


# --------------------------------------------------------------------------- rows of .npy / .npz files

def _npy_header(f):
    """(shape, fortran_order, dtype) of the .npy stream f, left at the start of the array data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def _read_exactly(f, out):
    """Fill array `out` (C-contiguous) from the stream f."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ValueError("the file ends before the array does (truncated)")
        got += n
    return out


def _member_data_start(path, info):
    """Where the bytes of an uncompressed zip member begin in the archive file."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: damaged zip archive (member {info.filename})")
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_length + extra_length


class _Array:
    """A 2-D or 1-D array in a .npy file or a .npz member, read by rows."""

    def __init__(self, path, member=None):
        self.path, self.member = os.fspath(path), member
        self.where = self.path if member is None else f"{self.path}[{member}]"
        self.start = None  # byte offset of the data in the file, when rows can be read in place
        if member is None:
            with open(self.path, "rb") as f:
                self.shape, self.fortran, self.dtype = _npy_header(f)
                self.start = f.tell()
        else:
            with zipfile.ZipFile(self.path) as archive:
                try:
                    info = archive.getinfo(member + ".npy")
                except KeyError:
                    raise KeyError(f"{self.path} has no array {member!r} (it has "
                                   f"{', '.join(n[:-4] for n in archive.namelist()) or 'none'})"
                                   ) from None
                with archive.open(info) as f:
                    self.shape, self.fortran, self.dtype = _npy_header(f)
                    header = f.tell()
                if info.compress_type == zipfile.ZIP_STORED:
                    self.start = _member_data_start(self.path, info) + header
        if self.dtype.hasobject:
            raise ValueError(f"{self.where} holds Python objects; save plain numbers")
        if len(self.shape) not in (1, 2):
            raise ValueError(f"{self.where} has shape {self.shape}; a 1-D or 2-D array is needed")

    def rows(self, a, b):
        """Rows a..b-1, read from the file and nothing else when the array is stored plainly (a .npy
        file or an uncompressed .npz member, in C order); a compressed member is decompressed up to
        row b (only rows a..b-1 are kept)."""
        row_shape = tuple(self.shape[1:])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        out = np.empty((b - a,) + row_shape, self.dtype)
        if self.fortran and len(self.shape) == 2:  # columns are contiguous: rows are not
            if self.member is None:
                return np.ascontiguousarray(np.load(self.path, mmap_mode="r")[a:b])
            with np.load(self.path) as archive:
                return np.ascontiguousarray(archive[self.member][a:b])
        if self.start is not None:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(self.start + a * row_bytes)
                return _read_exactly(f, out)
        with zipfile.ZipFile(self.path) as archive, archive.open(self.member + ".npy") as f:
            _npy_header(f)
            skip = a * row_bytes
            while skip:
                skip -= len(f.read(min(skip, 1 << 22)))
            return _read_exactly(f, out)


def row_readers(spec, keys=DATA_KEYS):
    """The on-disk arrays named by keys in spec: an .npz archive, a directory of KEY.npy files, or a
    sequence of .npy paths (one per key)."""
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if os.path.isdir(path):
            return [_Array(os.path.join(path, f"{key}.npy")) for key in keys]
        if path.endswith(".npy"):
            raise ValueError(f"{path}: one .npy file holds one array; pass (X_path, y_path), a "
                             f"directory of {keys[0]}.npy and {keys[1]}.npy, or an .npz archive")
        return [_Array(path, key) for key in keys]
    paths = list(spec)
    if len(paths) != len(keys):
        raise ValueError(f"expected {len(keys)} .npy paths ({', '.join(keys)}), got {len(paths)}")
    return [_Array(path) for path in paths]


def has_arrays(spec, keys=TEST_KEYS):
    """Whether the data `spec` (an .npz archive or a directory) holds the arrays named by keys."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    path = os.fspath(spec)
    if os.path.isdir(path):
        return all(os.path.exists(os.path.join(path, f"{key}.npy")) for key in keys)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"{key}.npy" in names for key in keys)


def read_rows(spec, start, stop, keys=DATA_KEYS):
    """Rows start..stop-1 of the arrays named by `keys` of the data `spec`: a tuple of arrays.

    ``spec`` is an .npz archive (``np.savez(path, X=X, y=y)``), a directory holding ``X.npy`` and
    ``y.npy``, or a pair of .npy paths. The rows are read with one seek and one read per array,
    straight into memory: nothing else of the file is read (the .npy header apart). That needs the
    arrays stored plainly, as ``np.save`` and ``np.savez`` write them; a compressed archive
    (``np.savez_compressed``) is decompressed up to ``stop``, and only the rows asked for are kept.
    (``np.load(..., mmap_mode='r')`` maps a .npy file but reads an .npz member whole.)
    """
    return tuple(array.rows(start, stop) for array in row_readers(spec, keys))


def n_rows(spec, keys=DATA_KEYS):
    """The number of rows of the data `spec` (read from the headers only)."""
    arrays = row_readers(spec, keys)
    counts = {array.where: array.shape[0] for array in arrays}
    if len(set(counts.values())) != 1:
        raise ValueError("the arrays have different numbers of rows: " + ", ".join(
            f"{where} {n}" for where, n in counts.items()))
    return arrays[0].shape[0]
