"""Model files: a network as an .npz archive of plain arrays, never pickles.

Loading never executes code (``allow_pickle=False``), and everything read is checked before it is used:
the format version, the configuration, and each array's shape and dtype against the configuration.
``Network.save`` writes one; ``fastbp.load`` (``network.load``) builds the network from what
:func:`read` returns.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from .kernels import codes

FORMAT = "fastbp-model"
VERSION = 1
CONFIG = ("layer_sizes", "activation", "output_activation", "loss", "dtype", "init")


class ModelFileError(ValueError):
    """The file is not a fastbp model, or it is damaged or inconsistent."""


def save(path, config, parameters, optimizer_state):
    """Write a network's `config` (Network.config()), parameters and optimizer state to `path`."""
    kind = optimizer_state["optimizer"]
    header = dict(format=FORMAT, version=VERSION, **config,
                  optimizer=None if kind is None else list(kind))
    hyper = codes.hyperparameters(len(config["layer_sizes"]) - 1)
    hyper[codes.H_STEP] = optimizer_state["step"]
    write_atomically(path, lambda f: np.savez(
        f, config=np.array(json.dumps(header)), parameters=parameters,
        state=optimizer_state["slots"], hyper=hyper))


def write_atomically(path, write):
    """Call write(f) on a new file beside `path`, flush it to the disk, then rename it to `path`: the
    previous file stays whole until the new one is complete (a crash leaves one or the other)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    f = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{os.path.basename(path)}.",
                                    suffix=".partial", delete=False)
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # the permissions a plain open() would give (a temporary file is private)
        os.chmod(f.name, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~_UMASK)
        os.replace(f.name, path)
    except BaseException:
        os.unlink(f.name)
        raise


def _umask():
    mask = os.umask(0)  # reading the mask means setting it: once, at import (one thread then)
    os.umask(mask)
    return mask


_UMASK = _umask()


def read(path):
    """(config, arrays) of the model file at `path`: the Network arguments, and ``parameters`` and
    the optimizer state (``optimizer``, ``slots``, ``step``), checked for finite numbers. Raises
    ModelFileError (or OSError for a missing or unreadable file)."""
    if not zipfile.is_zipfile(path):  # also keeps np.load from trying other formats (a pickle)
        open(path, "rb").close()      # a missing or unreadable file: the usual OSError
        raise ModelFileError(f"{path}: not a readable fastbp model file (not an .npz archive, or a "
                             f"truncated one; Network.save writes .npz archives)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise ModelFileError(f"{path}: not a readable fastbp model file ({error})") from error
    missing = {"config", "parameters", "state", "hyper"} - set(arrays)
    if missing:
        raise ModelFileError(f"{path}: not a fastbp model file (missing {', '.join(sorted(missing))})")
    try:
        header = json.loads(str(arrays["config"]))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a fastbp model file")
        if header.get("version") != VERSION:
            raise ModelFileError(f"{path}: model format version {header.get('version')}; this "
                                 f"fastbp reads version {VERSION}")
        config = {name: header[name] for name in CONFIG}
        kind = header["optimizer"]
        hyper = arrays["hyper"]
        step = float(hyper[codes.H_STEP]) if hyper.ndim == 1 and len(hyper) > codes.H_STEP else 0.0
    except ModelFileError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ModelFileError(f"{path}: invalid model configuration ({error})") from error
    for name in ("parameters", "state", "hyper"):
        if not np.isfinite(arrays[name]).all():
            raise ModelFileError(f"{path}: {name} holds NaN or infinite values")
    if kind is not None and (not isinstance(kind, list) or len(kind) != 2):
        raise ModelFileError(f"{path}: invalid model configuration (optimizer {kind!r})")
    return config, {"parameters": arrays["parameters"], "optimizer": kind,
                    "slots": arrays["state"], "step": step, "hyper": hyper}


def check_arrays(path, arrays, targets):
    """Each array named in `targets` must have the target's shape and dtype."""
    for name, target in targets.items():
        array = arrays[name]
        if array.shape != target.shape or array.dtype != target.dtype:
            shown = "state" if name == "slots" else name
            raise ModelFileError(f"{path}: {shown} has shape {array.shape} and dtype {array.dtype}; "
                                 f"the configuration needs {target.shape} {target.dtype}")
