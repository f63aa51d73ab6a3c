"""``torch.save`` zip files written without torch.

:func:`save_state` produces the zip format that ``torch.load(path, weights_only=True)``
accepts: pickle protocol 2, records stored uncompressed, tensor data starting at multiples of
64 bytes. The pickle names only the globals the safe loader of
:mod:`rnnshrink.io.torch_pickle` resolves, so every file written here reads back there.

References
----------
``torch/serialization.py`` (``_save``) and ``torch/_utils.py`` (``_rebuild_tensor_v2``,
``_rebuild_tensor_v3``, ``_rebuild_parameter``).
"""

import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from .torch_pickle import DTYPES, StoredTensor

_ALIGNMENT = 64
_ARCHIVE = "archive"


def save_state(tree, path):
    """Write ``tree`` as a ``torch.save`` zip file that ``torch.load(weights_only=True)`` reads.

    Parameters
    ----------
    tree : object
        Nested dicts (``OrderedDict`` stays ``OrderedDict``), lists, tuples, numbers, strings,
        ``None`` and :class:`StoredTensor` leaves; each tensor gets its own storage.
    path : pathlib.Path
        The file to write (callers pass a temporary path from ``atomic_path``).
    """
    pickler = _Pickler()
    pickler.dump(tree)
    with zipfile.ZipFile(path, "w") as archive:
        _add_record(archive, "data.pkl", bytes(pickler.out))
        _add_record(archive, ".format_version", b"1")
        _add_record(archive, ".storage_alignment", str(_ALIGNMENT).encode())
        _add_record(archive, "byteorder", b"little")
        for key, data in enumerate(pickler.storages):
            _add_record(archive, f"data/{key}", data.astype(data.dtype.newbyteorder("<")).tobytes())
        _add_record(archive, "version", b"3\n")


def _add_record(archive, name, data):
    """Add an uncompressed record whose data starts at a multiple of 64 bytes, as torch does."""
    info = zipfile.ZipInfo(f"{_ARCHIVE}/{name}")
    header = archive.fp.tell() + 30 + len(info.filename.encode()) + 4
    padding = -header % _ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
    archive.writestr(info, data)


class _Pickler:
    """Emits pickle protocol 2 opcodes for checkpoint trees; torch globals are written by name.

    Hand-written because :class:`pickle.Pickler` imports a global's module to check it, and
    rnnshrink must not import torch.
    """

    def __init__(self):
        self.out = bytearray(pickle.PROTO + b"\x02")
        self.storages = []

    def dump(self, tree):
        self._save(tree)
        self.out += pickle.STOP

    def _global(self, module, name):
        self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode()

    def _call(self, module, name, *args):
        self._global(module, name)
        self._save(tuple(args))
        self.out += pickle.REDUCE

    def _save(self, value):
        out = self.out
        if value is None:
            out += pickle.NONE
        elif isinstance(value, bool):
            out += pickle.NEWTRUE if value else pickle.NEWFALSE
        elif isinstance(value, int):
            encoded = pickle.encode_long(value)
            out += pickle.LONG1 + bytes([len(encoded)]) + encoded
        elif isinstance(value, float):
            out += pickle.BINFLOAT + struct.pack(">d", value)
        elif isinstance(value, str):
            encoded = value.encode("utf-8", "surrogatepass")
            out += pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded
        elif isinstance(value, tuple):
            out += pickle.MARK
            for item in value:
                self._save(item)
            out += pickle.TUPLE
        elif isinstance(value, list):
            out += pickle.EMPTY_LIST + pickle.MARK
            for item in value:
                self._save(item)
            out += pickle.APPENDS
        elif isinstance(value, dict):
            self._save_dict(value)
        elif isinstance(value, StoredTensor):
            self._save_tensor(value)
        else:
            raise TypeError(f"cannot pickle a {type(value).__name__} into a checkpoint")

    def _save_dict(self, value):
        if isinstance(value, OrderedDict):
            self._call("collections", "OrderedDict")
        else:
            self.out += pickle.EMPTY_DICT
        self.out += pickle.MARK
        for key, item in value.items():
            self._save(key)
            self._save(item)
        self.out += pickle.SETITEMS
        if isinstance(value, OrderedDict) and vars(value):
            self._save(dict(vars(value)))
            self.out += pickle.BUILD

    def _save_tensor(self, tensor):
        """``_rebuild_tensor_v2`` (or ``_v3`` for dtypes without a storage class) of a new
        storage, wrapped in ``_rebuild_parameter`` for parameters."""
        if tensor.parameter:
            self._global("torch._utils", "_rebuild_parameter")
            self.out += pickle.MARK
        storage_class = DTYPES[tensor.dtype][0]
        data = np.asarray(tensor.data, order="C")
        rebuild = "_rebuild_tensor_v2" if storage_class else "_rebuild_tensor_v3"
        self._global("torch._utils", rebuild)
        self.out += pickle.MARK + pickle.MARK
        self._save("storage")
        if storage_class:
            self._global("torch", storage_class)
        else:
            self._global("torch.storage", "UntypedStorage")
        self._save(str(len(self.storages)))
        self._save("cpu")
        self._save(data.size if storage_class else data.nbytes)
        self.out += pickle.TUPLE + pickle.BINPERSID
        self.storages.append(data)
        self._save(0)
        self._save(tuple(data.shape))
        self._save(tuple(s // data.itemsize for s in data.strides))
        self._save(tensor.requires_grad and not tensor.parameter)
        self._call("collections", "OrderedDict")
        if not storage_class:
            self._global("torch", tensor.dtype)
        self.out += pickle.TUPLE + pickle.REDUCE
        if tensor.parameter:
            self._save(tensor.requires_grad)
            self._call("collections", "OrderedDict")
            self.out += pickle.TUPLE + pickle.REDUCE
