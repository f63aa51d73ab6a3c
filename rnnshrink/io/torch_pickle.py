"""``torch.save`` files read without torch and without running code from them.

A checkpoint is a pickle whose tensors point at raw storages: records ``<archive>/data/<key>``
of a zip file (PyTorch >= 1.6), or blocks after the pickle (the legacy format). Reading uses
an unpickler that resolves only the globals of :data:`_ALLOWED` — torch's tensor rebuild
functions, storage classes and dtypes, and ``collections.OrderedDict`` — each to a local
stand-in; every other global (``os.system``, a model class, ...) is refused. Every length in
the pickle is checked against the bytes present before anything is allocated, and tensors are
checked against their storages; storages are memory-mapped from the file (zip records through
:class:`~rnnshrink.io.zip_archive.Archive`), so a contiguous tensor is a view, not a copy. Writing is
:mod:`rnnshrink.io.torch_writer`; :data:`DTYPES` and :class:`StoredTensor` serve both.

References
----------
``torch/serialization.py`` (``_save``, ``_load``, ``_legacy_save``, ``_legacy_load``) and
``torch/_utils.py`` (``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``, ``_rebuild_parameter``).
"""

import io
import math
import mmap
import pickle
import pickletools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .zip_archive import Archive

# dtype name -> (torch storage class that pickles it, numpy dtype of its stored elements).
# Dtypes without a storage class are pickled as an untyped byte storage plus a dtype global.
DTYPES = {
    "float64": ("DoubleStorage", "f8"),
    "float32": ("FloatStorage", "f4"),
    "float16": ("HalfStorage", "f2"),
    "bfloat16": ("BFloat16Storage", "u2"),
    "int64": ("LongStorage", "i8"),
    "int32": ("IntStorage", "i4"),
    "int16": ("ShortStorage", "i2"),
    "int8": ("CharStorage", "i1"),
    "uint8": ("ByteStorage", "u1"),
    "bool": ("BoolStorage", "?"),
    "complex128": ("ComplexDoubleStorage", "c16"),
    "complex64": ("ComplexFloatStorage", "c8"),
    "uint16": (None, "u2"),
    "uint32": (None, "u4"),
    "uint64": (None, "u8"),
    "float8_e4m3fn": (None, "u1"),
    "float8_e5m2": (None, "u1"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_SCALARS = (str, int, float, bool, type(None))


@dataclass
class StoredTensor:
    """A tensor of a checkpoint.

    Parameters
    ----------
    data : ndarray
        The stored elements, C-contiguous, native byte order; ``bfloat16`` as raw ``uint16``
        bits, float8 as raw ``uint8``. Read-only: a contiguous little-endian tensor is a view
        of the memory-mapped file, not a copy.
    dtype : str
        Torch's name of the dtype, a key of :data:`DTYPES`.
    requires_grad : bool
    parameter : bool
        Pickled as an ``nn.Parameter`` rather than a plain tensor.
    """

    data: np.ndarray
    dtype: str
    requires_grad: bool = False
    parameter: bool = False


class _Invalid(Exception):
    """A problem with the file, raised where the path is not known."""


class _Marker:
    """Base of every object a global resolves to; refuses the pickle BUILD opcode."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _Invalid("the pickle tries to set attributes on a torch object")


class _Call(_Marker):
    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)


class _StorageType(_Marker):
    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype


class _DType(_Marker):
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Storage(_Marker):
    __slots__ = ("dtype", "numel", "data")

    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.data = dtype, numel, None


class _Pending(_Marker):
    """A tensor whose storage bytes are not read yet."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype", "requires_grad", "parameter")


def _rebuild_tensor(storage, offset, size, stride, dtype=None):
    if not isinstance(storage, _Storage):
        raise _Invalid("a tensor is rebuilt from something that is not a storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise _Invalid(f"tensor size {size!r} or stride {stride!r} is not a tuple")
    for value in (offset, *size, *stride):
        if type(value) is not int or value < 0:
            raise _Invalid(f"tensor offset, size or stride is not a count: {value!r}")
    dtype = dtype or storage.dtype
    available = storage.numel * np.dtype(DTYPES[storage.dtype][1]).itemsize
    available //= np.dtype(DTYPES[dtype][1]).itemsize
    numel = math.prod(size)
    if len(size) != len(stride):
        raise _Invalid(f"tensor size {size} and stride {stride} differ in length")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if numel and (last >= available or numel > available):
        raise _Invalid(f"a tensor of shape {tuple(size)} reaches past its storage of {available}")
    tensor = _Pending()
    tensor.storage, tensor.offset, tensor.size, tensor.stride = storage, offset, size, stride
    tensor.dtype, tensor.requires_grad, tensor.parameter = dtype, False, False
    return tensor


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    return _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, None, metadata)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if metadata:
        raise _Invalid(f"tensor flags {metadata!r} (conjugate / negative views) not supported")
    if dtype is not None and not (isinstance(dtype, _DType) and _is_untyped(storage)):
        raise _Invalid("a tensor with its own dtype must be rebuilt from an untyped storage")
    tensor = _rebuild_tensor(storage, offset, size, stride, dtype and dtype.name)
    tensor.requires_grad = bool(requires_grad)
    return tensor


def _is_untyped(storage):
    return isinstance(storage, _Storage) and storage.dtype == "uint8"


def _rebuild_parameter(tensor, requires_grad, hooks):
    if not isinstance(tensor, _Pending):
        raise _Invalid("a parameter is rebuilt from something that is not a tensor")
    tensor.requires_grad, tensor.parameter = bool(requires_grad), True
    return tensor


_ALLOWED = {
    "torch._utils._rebuild_tensor": _Call(_rebuild_tensor),
    "torch._utils._rebuild_tensor_v2": _Call(_rebuild_tensor_v2),
    "torch._utils._rebuild_tensor_v3": _Call(_rebuild_tensor_v3),
    "torch._utils._rebuild_parameter": _Call(_rebuild_parameter),
    "collections.OrderedDict": _Call(OrderedDict),
    "torch.Size": _Call(tuple),
    "torch.storage.UntypedStorage": _StorageType("uint8"),
    **{f"torch.{cls}": _StorageType(name) for name, (cls, _) in DTYPES.items() if cls},
    **{f"torch.{name}": _DType(name) for name in DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED` globals and ``storage`` persistent ids."""

    def __init__(self, stream, storages):
        super().__init__(stream, encoding="utf-8")
        self.storages = storages

    def find_class(self, module, name):
        try:
            return _ALLOWED[f"{module}.{name}"]
        except KeyError:
            raise _Invalid(
                f"refusing to load: the pickle references {module}.{name}, which is not a "
                "tensor or container (rnnshrink never executes code from a checkpoint)"
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] not in (
                "storage", b"storage"):
            raise _Invalid(f"unsupported persistent id {str(pid)[:80]}")
        storage_type, key, _, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or type(numel) is not int or numel < 0:
            raise _Invalid(f"malformed storage reference to {str(pid[2])[:40]}: not a storage "
                           "class and an element count")
        if len(pid) == 6 and pid[5] is not None:
            raise _Invalid("storage views (PyTorch < 1.0 files) are not supported")
        storage = self.storages.setdefault(str(key), _Storage(storage_type.dtype, numel))
        if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise _Invalid(f"storage {key} is declared twice with different types or sizes")
        return storage


def load_state(path):
    """Load a ``torch.save`` file safely.

    Returns
    -------
    tree : object
        The saved object (usually a dict) with every tensor as a :class:`StoredTensor`.
    fmt : str
        ``"torch-zip"`` or ``"torch-legacy"``.

    Raises
    ------
    InputError
        Unreadable, truncated, inconsistent, or referencing anything but tensors and containers.
    """
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        storages = {}
        tree = (_load_zip if is_zip else _load_legacy)(path, storages)
        return _resolve(tree, ""), "torch-zip" if is_zip else "torch-legacy"
    except _Invalid as error:
        raise InputError(path, str(error)) from None
    except (OSError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(path, f"truncated or corrupt PyTorch checkpoint ({error})") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as error:
        problem = f"corrupt PyTorch checkpoint ({type(error).__name__}: {error})"
        raise InputError(path, problem) from None


def _unpickle(buffer, offset, storages):
    """Check the pickle at ``offset`` opcode by opcode, then unpickle it safely.

    The scan catches lying length fields and memo indices before the C unpickler would
    allocate what they claim.
    """
    stream = io.BytesIO(buffer) if isinstance(buffer, bytes) else buffer
    stream.seek(offset)
    for count, (opcode, arg, _) in enumerate(pickletools.genops(stream), 1):
        if "PUT" in opcode.name and int(arg) > count:
            raise _Invalid(f"pickle memo index {arg} out of range")
    end = stream.tell()
    stream.seek(offset)
    return _Unpickler(stream, storages).load(), end


def _load_zip(path, storages):
    with Archive(path) as archive:
        pickles = [n for n in archive.names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise _Invalid("zip archive holds no PyTorch data.pkl record")
        prefix = pickles[0][: -len("data.pkl")]
        order = "little"
        if f"{prefix}byteorder" in archive:
            order = archive.view(f"{prefix}byteorder").tobytes().decode("ascii")
            if order not in ("little", "big"):
                raise _Invalid(f"byteorder record says {order[:20]!r}, not little or big")
        tree, _ = _unpickle(archive.view(pickles[0]).tobytes(), 0, storages)
        for key, storage in storages.items():
            raw = archive.view(f"{prefix}data/{key}")
            _fill(storage, raw, 0, len(raw), key, order)
    return tree


def _load_legacy(path, storages):
    with open(path, "rb") as f:  # mapped: storages stay views of the file
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    magic, offset = _unpickle(buffer, 0, {})
    protocol, offset = _unpickle(buffer, offset, {})
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
        raise _Invalid("not a PyTorch checkpoint (no legacy magic number)")
    info, offset = _unpickle(buffer, offset, {})
    order = "little" if info.get("little_endian", True) else "big"
    tree, offset = _unpickle(buffer, offset, storages)
    keys, offset = _unpickle(buffer, offset, {})
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise _Invalid("the storage list does not match the storages the pickle uses")
    for key in map(str, keys):
        if offset + 8 > len(buffer):
            raise _Invalid(f"truncated: storage {key} is missing")
        count = int.from_bytes(buffer[offset : offset + 8], order)
        if count != storages[key].numel:
            declared = storages[key].numel
            raise _Invalid(f"storage {key} holds {count} elements, the pickle says {declared}")
        nbytes = count * np.dtype(DTYPES[storages[key].dtype][1]).itemsize
        _fill(storages[key], buffer, offset + 8, nbytes, key, order)
        offset += 8 + nbytes
    return tree


def _fill(storage, buffer, start, nbytes, key, order):
    """Attach ``nbytes`` of ``buffer`` from ``start`` to ``storage`` as native-order elements."""
    dtype = np.dtype(DTYPES[storage.dtype][1]).newbyteorder("<" if order == "little" else ">")
    if nbytes != storage.numel * dtype.itemsize or start + nbytes > len(buffer):
        raise _Invalid(
            f"truncated: storage {key} should hold {storage.numel * dtype.itemsize} bytes, "
            f"the file has {min(nbytes, len(buffer) - start)}"
        )
    stored = np.frombuffer(buffer, dtype, storage.numel, start)
    storage.data = stored.astype(dtype.newbyteorder("="), copy=False)


def _resolve(value, where):
    """Replace pending tensors by :class:`StoredTensor`; refuse values that are not data.

    A tree that contains itself ends in RecursionError, reported as a corrupt file.
    """
    if isinstance(value, _Pending):
        raw = value.storage.data.view(DTYPES[value.dtype][1])
        strides = [s * raw.dtype.itemsize for s in value.stride]
        view = np.lib.stride_tricks.as_strided(raw[value.offset :], value.size, strides)
        if not view.flags.c_contiguous:  # contiguous tensors stay read-only views of the file
            view = view.copy()
        return StoredTensor(view, value.dtype, value.requires_grad, value.parameter)
    if isinstance(value, dict):
        for key in value:
            _check_scalar(key, f"{where}/{key!r}")
        resolved = type(value)((k, _resolve(v, f"{where}/{k}")) for k, v in value.items())
        for name, attribute in vars(value).items() if isinstance(value, OrderedDict) else ():
            setattr(resolved, name, _resolve(attribute, f"{where}/{name}"))
        return resolved
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, f"{where}/{k}") for k, v in enumerate(value))
    return _check_scalar(value, where)


def _check_scalar(value, where):
    if type(value) not in _SCALARS:
        raise _Invalid(
            f"the checkpoint holds a {type(value).__name__.strip('_')} at {where or 'the top'}; "
            "rnnshrink keeps only tensors, numbers, strings, lists, tuples and dicts"
        )
    return value
