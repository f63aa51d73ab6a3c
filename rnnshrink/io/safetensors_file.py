"""safetensors files <-> the IR, without the ``safetensors`` package.

A file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an optional
``"__metadata__"`` of string pairs), then the data: little-endian, C order, offsets relative
to the start of the data, the tensors tiling it without gaps or overlaps. The header is
checked in full against the file's size before any tensor is read. The tensors form a PyTorch
state dict, converted by :func:`rnnshrink.io.torch_checkpoint.state_dict_to_model`.

References
----------
safetensors README, "Format"; ``safetensors/src/tensor.rs`` (``MAX_HEADER_SIZE``, validation).
"""

import json
import math
import struct

import numpy as np

from ..errors import InputError, OptionError
from ..model import Tensor
from .atomic import atomic_path
from .torch_checkpoint import model_to_state_dict, state_dict_to_model
from .torch_pickle import DTYPES

# safetensors dtype code -> dtype name (torch's, a key of torch_pickle.DTYPES)
CODES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
}
_NAMES = {name: code for code, name in CODES.items()}
_MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers too


def read(path, **options):
    """Read a safetensors state dict into a :class:`Model`.

    ``meta["safetensors_metadata"]`` keeps ``__metadata__``; ``meta["safetensors_data_order"]``
    the order of the tensors in the data (the header order is ``meta["tensor_order"]``).
    """
    header, metadata, data_start = _header(path)
    data = np.memmap(path, np.uint8, "r") if header else np.zeros(0, np.uint8)
    tensors = {}
    for name, (dtype, shape, (begin, end)) in header.items():
        raw = np.dtype(DTYPES[dtype][1]).newbyteorder("<")
        stored = data[data_start + begin : data_start + end].view(raw).reshape(shape)
        # little-endian data stays a read-only view of the mapped file
        tensors[name] = Tensor(name, stored.astype(raw.newbyteorder("="), copy=False), dtype)
    model = state_dict_to_model(path, tensors)
    model.format = "safetensors"
    model.producer = {"pt": "pytorch"}.get(metadata.get("format"), "unknown")
    model.meta["safetensors_metadata"] = metadata
    model.meta["safetensors_data_order"] = sorted(header, key=lambda n: header[n][2])
    return model


def _header(path):
    """The validated header: ``{name: (dtype, shape, (begin, end))}``, metadata, data start."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(path, "truncated: no safetensors header length")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _MAX_HEADER):
            raise InputError(path, f"header claims {length} bytes, the file holds {size - 8}")
        text = f.read(length)
    try:
        header = json.loads(text, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise InputError(path, f"safetensors header is not JSON ({error})") from None
    except _DuplicateKey as error:
        raise InputError(path, f"safetensors header names {str(error)[:80]} twice") from None
    if not isinstance(header, dict):
        raise InputError(path, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(path, "__metadata__ must map strings to strings")
    entries = {name: _entry(path, name, entry) for name, entry in header.items()}
    end = 0
    for name, (_, _, (begin, stop)) in sorted(entries.items(), key=lambda e: e[1][2]):
        if begin != end:
            problem = "overlaps the tensor before it" if begin < end else "leaves a gap before it"
            raise InputError(path, f"tensor {name!r} at bytes {begin}..{stop} {problem}")
        end = stop
    if end != size - 8 - length:
        raise InputError(path, f"the tensors cover {end} bytes, the data holds {size - 8 - length}")
    return entries, metadata, 8 + length


class _DuplicateKey(Exception):
    """A JSON object of the header repeats a key (JSON would keep only the last)."""


def _unique_keys(pairs):
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _DuplicateKey(next(repr(k) for k, _ in pairs if sum(k == j for j, _ in pairs) > 1))
    return found


def _entry(path, name, entry):
    """One header entry as (dtype, shape, (begin, end)), its byte count checked."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) \
            or entry["dtype"] not in CODES:
        dtype = entry.get("dtype") if isinstance(entry, dict) else entry
        raise InputError(path, f"tensor {name!r}: unsupported dtype {str(dtype)[:40]}")
    dtype, shape, offsets = CODES[entry["dtype"]], entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2) or any(
            type(n) is not int or n < 0 for n in (*shape, *offsets)):
        raise InputError(path, f"tensor {name!r}: shape {shape} or data_offsets {offsets} invalid")
    nbytes = math.prod(shape) * np.dtype(DTYPES[dtype][1]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise InputError(
            path, f"tensor {name!r}: shape {shape} of {entry['dtype']} needs {nbytes} bytes, "
            f"data_offsets {offsets} hold {offsets[1] - offsets[0]}"
        )
    return dtype, shape, tuple(offsets)


def write(model, output_path):
    """Write ``model`` as a safetensors state dict: the original header order, metadata and
    data order, LSTM weights from the IR (see :func:`torch_checkpoint.model_to_state_dict`).

    Raises
    ------
    OptionError
        A layer was not read from a state dict, or a tensor's dtype has no safetensors code.
    """
    state = model_to_state_dict(model)
    order = [n for n in model.meta.get("safetensors_data_order", ()) if n in state]
    order += [n for n in state if n not in order]
    arrays, offsets, end = {}, {}, 0
    for name in order:
        tensor = state[name]
        if tensor.dtype not in _NAMES:
            raise OptionError(f"tensor {name} is {tensor.dtype}, which safetensors cannot store")
        arrays[name] = tensor.data.astype(np.dtype(DTYPES[tensor.dtype][1]).newbyteorder("<"))
        offsets[name] = [end, end + arrays[name].nbytes]
        end += arrays[name].nbytes
    header = {"__metadata__": model.meta["safetensors_metadata"]} if model.meta.get(
        "safetensors_metadata") else {}
    for name, tensor in state.items():
        header[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.data.shape),
                        "data_offsets": offsets[name]}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    with atomic_path(output_path) as temporary, open(temporary, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in order:
            f.write(arrays[name].tobytes())
