"""The checks of single values every layer shares: a name among options, an integer, a real number, a
dtype. They live at the bottom (the kernel API uses them too) and say what was wrong and what was
expected."""
import numbers
import operator

import numpy as np

DTYPES = ("float32", "float64")


def choice(what, value, options):
    """The code of `value` among `options` (a dict name -> code)."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(options)}")
    return options[value]


def integer(name, value, minimum):
    """An int >= minimum (bool is refused: True is not a size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def real(name, value, low=None, high=None, low_open=False, high_open=False):
    """A finite float within [low, high] (ends open when asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def dtype(value):
    """float32 or float64, as a numpy dtype."""
    try:
        dt = np.dtype(value)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {value!r}")
    return dt
