"""Model files: a network as an .npz archive of plain arrays, never pickles.

Loading never executes code (``allow_pickle=False``), and everything read is checked before it is used:
the format version, the configuration, and each array's shape and dtype against the configuration.
"""
import json
import zipfile

import numpy as np

from . import validation
from .kernels import codes

FORMAT = "fastbp-model"
VERSION = 1


class ModelFileError(ValueError):
    """The file is not a fastbp model, or it is damaged or inconsistent."""


def save(net, path):
    """Write `net` to `path` (an .npz archive): configuration, parameters and optimizer state."""
    config = {
        "format": FORMAT, "version": VERSION,
        "layer_sizes": net.layer_sizes, "activation": net.activation,
        "output_activation": net.output_activation, "loss": net.loss, "dtype": net.dtype.name,
        "init": net.init, "optimizer": list(net._optimizer) if net._optimizer else None,
    }
    with open(path, "wb") as f:
        np.savez(f, config=np.array(json.dumps(config)), parameters=net.parameters,
                 state=net._state, hyper=net._hyper)


def load(path, backend="numba", n_threads=None):
    """Read a network written by ``Network.save``, to run on `backend`.

    Parameters
    ----------
    path : str or path-like
        An .npz file written by ``Network.save``. It is untrusted input: nothing in it is executed.
    backend : str, default="numba"
        The backend the loaded network runs on (see ``fastbp.Network``).
    n_threads : int or None, default=None
        Threads for training and prediction (None: every CPU).

    Returns
    -------
    Network
        The network with its configuration, parameters and optimizer state.

    Raises
    ------
    FileNotFoundError, OSError
        The file is missing or cannot be read.
    ModelFileError (a ValueError)
        The file is not a fastbp model, or it is damaged, tampered with or of another format version.
    """
    from .network import Network
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
        config = json.loads(str(arrays["config"]))
        if config.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a fastbp model file")
        if config.get("version") != VERSION:
            raise ModelFileError(f"{path}: model format version {config.get('version')}; this "
                                 f"fastbp reads version {VERSION}")
        net = Network(config["layer_sizes"], config["activation"], config["output_activation"],
                      config["loss"], config["dtype"], backend=backend, n_threads=n_threads,
                      init=config["init"])
    except ModelFileError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ModelFileError(f"{path}: invalid model configuration ({error})") from error
    expected = {"parameters": net.parameters, "state": net._state, "hyper": net._hyper}
    for name, target in expected.items():
        array = arrays[name]
        if array.shape != target.shape or array.dtype != target.dtype:
            raise ModelFileError(f"{path}: {name} has shape {array.shape} and dtype {array.dtype}; "
                                 f"the configuration needs {target.shape} {target.dtype}")
        if not np.isfinite(array).all():
            raise ModelFileError(f"{path}: {name} holds NaN or infinite values")
        target[:] = array
    if config["optimizer"] is not None:
        name, nesterov = config["optimizer"]
        validation.choice("optimizer", name, codes.OPTIMIZERS)
        net._optimizer = (name, bool(nesterov))
    return net
