"""Reading the pickles of public dataset releases (CIFAR-100, tieredImageNet) without running code.

``pickle.load`` on a file from the internet can execute anything the file asks for. These releases
only hold dicts, lists, strings, numbers and numpy arrays, so :func:`load_pickle` uses an unpickler
that resolves exactly the globals needed to rebuild numpy arrays (and ``_codecs.encode``, which
Python 3 writes for ``bytes`` at pickle protocol 2) and refuses every other global with a
:class:`CorruptDatasetError` naming the file. A truncated or non-pickle file fails the same way.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from metaplus.data.errors import CorruptDatasetError

ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed (only numpy arrays, dicts, "
                f"lists, strings and numbers are expected)"
            )
        return super().find_class(module, name)


def load_pickle(path: Path, encoding: str = "bytes") -> Any:
    """The object pickled in ``path``, refusing anything but plain data and numpy arrays."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, encoding=encoding).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        MemoryError,
    ) as err:
        raise CorruptDatasetError(
            f"cannot read {path}: {err}. The file is damaged or not the expected release "
            f"file; replace it (re-download or re-extract the dataset)."
        ) from None


def text_keys(record: Any, path: Path) -> dict[str, Any]:
    """A pickled dict with its keys as str (Python 2 pickles read with encoding='bytes' have bytes keys)."""
    if not isinstance(record, dict):
        raise CorruptDatasetError(f"{path} holds a {type(record).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in record.items()}


def text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)
