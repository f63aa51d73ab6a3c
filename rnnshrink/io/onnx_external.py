"""ONNX external data: read only from inside the model's folder, mapped rather than copied.

A tensor with ``data_location = EXTERNAL`` names a ``location`` relative to the model file, an
``offset`` and a ``length``. Every such entry is checked before any byte is read
(:func:`external_span`: a relative path that stays inside the model's folder after symlinks
are resolved, an existing regular file, the span inside it and of the tensor's size).
Initializers stay external in the loaded graph and :func:`tensor_array` maps their bytes from
the file (zero-copy for plain numeric types); other tensors (node attributes, sparse
initializers) are small and inlined at load. Writers inline what they keep
(:func:`inline_all`) just before saving.

References
----------
ONNX IR specification, "External Tensor Data".
"""

import mmap
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InputError

_NIBBLE_TYPES = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1}


def is_external(tensor):
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def check_and_inline(path, proto, initializers, tensors):
    """Check every external entry of ``tensors`` (all TensorProtos of the model), then inline
    those that are not graph ``initializers``; returns the external data files.

    Raises
    ------
    InputError
        An entry that points outside the model's folder or lies about its size.
    """
    external = [t for t in tensors if is_external(t)]
    files = sorted({str(external_span(path, t)[0]) for t in external})  # all checked first
    kept = {id(t) for t in initializers}
    for tensor in external:
        if id(tensor) not in kept:
            inline(path, tensor)
    return files


def external_span(path, tensor):
    """``(file, offset, length)`` of a tensor's external data, checked before anything is read."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"tensor {tensor.name!r}: external data {location!r}"
    if not isinstance(location, str) or "\0" in location:
        raise InputError(path, f"{where} is not a file name (bytes that are not UTF-8, or NUL)")
    folder = Path(path).resolve().parent
    if not location or Path(location).is_absolute() or location.startswith(("/", "\\")):
        raise InputError(path, f"{where} is not a path relative to the model's folder; refused")
    file = (folder / location).resolve()
    if not file.is_relative_to(folder):
        raise InputError(path, f"{where} points outside the model's folder; refused")
    if not file.is_file():
        raise InputError(path, f"{where}: no such file beside the model")
    size = file.stat().st_size
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else size - offset
        count = int(np.prod(tensor.dims, dtype=np.int64))
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(path, f"{where}: malformed external data entry ({error})") from None
    needed = (count + 1) // 2 if tensor.data_type in _NIBBLE_TYPES else count * itemsize
    if offset < 0 or length < 0 or offset + length > size:
        raise InputError(path, f"{where}: bytes {offset}..{offset + length} lie outside the "
                               f"{size}-byte file")
    if length != needed:
        raise InputError(path, f"{where} holds {length} bytes, the tensor needs {needed}")
    return file, offset, length


def _mapped(path, tensor):
    file, offset, length = external_span(path, tensor)
    with open(file, "rb") as f:
        if length == 0:
            return b""
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))[offset:offset + length]


def inline(path, tensor):
    """Move a tensor's external bytes into its ``raw_data`` (checked again first)."""
    tensor.raw_data = bytes(_mapped(path, tensor))
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def inline_all(path, tensors):
    """Inline every external tensor of ``tensors`` (a writer's graph, before saving)."""
    for tensor in tensors:
        if is_external(tensor):
            inline(path, tensor)


def tensor_array(path, tensor):
    """The values of a TensorProto; an external plain numeric tensor as a read-only view of the
    mapped file (ONNX stores raw data little-endian), anything else as numpy_helper reads it."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    if dtype.kind in "fiub" and tensor.data_type not in _NIBBLE_TYPES:
        data = np.frombuffer(_mapped(path, tensor), dtype.newbyteorder("<"))
        return data.astype(dtype, copy=False).reshape(tuple(tensor.dims))
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    inline(path, copy)
    return numpy_helper.to_array(copy)
