"""Checkpoints: everything a fit needs to continue where it stopped, so that a run killed at any moment
and started again ends with the same bits as a run never interrupted.

A checkpoint is an .npz archive of plain arrays (never pickles), written atomically (see
``modelfile.write_atomically``): the network's parameters, optimizer slots and hyperparameters (the
step count and the dropout key with them), early stopping's best epoch's copies, and a JSON record of
the rest: the epochs done, the random generator's state (the shuffles), the schedule's and early
stopping's counters, the history so far, and the *fingerprint* of the training (its settings, the
network and the data) that a resuming fit must match.
"""
import hashlib
import json
import os

import numpy as np

from . import modelfile

FORMAT = "fastbp-checkpoint"
VERSION = 1
SAMPLED_ROWS = 64  # rows of X and Y hashed into the data's fingerprint


class CheckpointError(modelfile.ModelFileError):
    """The checkpoint is damaged, or belongs to another training (the message says what differs)."""


def data_fingerprint(X, Y, weights=None):
    """Shape, dtype and a hash of SAMPLED_ROWS rows spread over (X, Y): what tells data sets apart
    without reading them whole. With sample weights, a hash of all of them too (one number a row)."""
    rows = np.unique(np.linspace(0, X.shape[0] - 1, SAMPLED_ROWS).astype(np.int64))
    digest = hashlib.sha256()
    for array in (X, Y):
        if hasattr(array, "rows_digest"):  # a sparse X (codes.CSR): the rows' columns and values
            array.rows_digest(rows, digest)
        else:
            digest.update(np.ascontiguousarray(array[rows]).tobytes())
    found = {"X": list(X.shape), "Y": list(Y.shape), "dtype": X.dtype.name,
             "rows": digest.hexdigest()[:32]}
    if weights is not None:
        found["weights"] = hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest()[:32]
    return found


def save(path, record, arrays):
    """Write `record` (JSON-ready) and `arrays` (name -> ndarray) to `path`, atomically."""
    meta = json.dumps(dict(record, format=FORMAT, version=VERSION))
    modelfile.write_atomically(path, lambda f: np.savez(f, meta=np.array(meta), **arrays))


def load(path):
    """(record, arrays) of the checkpoint at `path`; CheckpointError if it is not a whole one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        record = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, EOFError, KeyError) as error:
        raise CheckpointError(f"{path}: not a readable fastbp checkpoint ({error})") from error
    except Exception as error:  # noqa: BLE001 -- zipfile and zlib raise their own kinds
        raise CheckpointError(f"{path}: not a readable fastbp checkpoint ({error})") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastbp checkpoint")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {record.get('version')}; this "
                              f"fastbp reads version {VERSION}")
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values")
    return record, arrays


def peek(path):
    """(epochs done, epochs in all, the epoch early stopping stopped at or None) of the checkpoint at
    `path`, or None when there is none or it cannot be read (fit then says why)."""
    if not os.path.exists(path):
        return None
    try:  # the JSON record alone: the arrays stay unread (fit reads and checks them)
        with np.load(path, allow_pickle=False) as archive:
            record = json.loads(str(archive["meta"]))
        return (int(record["epoch"]), int(record["epochs"]),
                record["history"]["_attributes"]["stopped_epoch"])
    except Exception:  # noqa: BLE001 -- unreadable for any reason: fit says why
        return None


def differences(saved, current, prefix=""):
    """The names of the entries of two fingerprints (nested dicts) that differ."""
    names = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key} ({a!r} in the checkpoint, {b!r} now)")
    return names
