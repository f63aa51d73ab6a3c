"""The rnnshrink container: one HDF5 file holding a compressed model as its representations.

The normative spec is ``docs/format.md`` (format versions 1 and 2). In short::

    /                     attrs: rnnshrink_format = 1 or 2, rnnshrink_version, source_format,
                                 source_file, source_sha256, source_producer, topology,
                                 recipe (JSON list of steps), notes (JSON), summary (JSON)
    /layers/NNNN          one group per layer, in model order; attrs kind, name, inputs (JSON)
        lstm:   attrs activations (JSON), clip, reverse_only;
                d0/, d1/  per direction: W/, R/, proj/ (weight groups), b (the folded bias at
                          the precision it was computed in; of a Slim variant, only its
                          parameter entries), attrs bias_terms, bias_dtype, variant (if not LSTM)
        dense:  W/ (weight group), b;   embedding: table;   other: nothing more
        source/           the layer's source mapping (arrays as datasets, the rest JSON attrs)
    /tensors/NNNNNN       pass-through tensors, attrs name, dtype (bfloat16 kept as uint16 bits)

A weight group has attr ``kind`` and holds exactly the bytes its weight object counts:
``dense`` values at the stored dtype; ``lowrank`` subgroups U, V; ``sparse`` values plus the
index (``indptr`` int32 + ``indices`` uint8/16/32, or ``bitmask`` packed bits); ``quantized``
``codes`` packed ``bits`` wide (code + 2^(bits-1), little bit order within bytes, row-major),
``steps`` float16 (float32 when the weight says so), and the index of its ``mask`` when pruned;
``gated`` a subgroup per full gate block and a dataset (H,) per diagonal one, named i, f, g, o,
attrs blocks, diag_dtype; ``coded`` (format version 2) the entropy coder's ``header``, ``side``,
``escapes`` and ``stream`` bytes, ``delta`` float16, the packed ``exponents``, and the index of
its ``mask`` when pruned. A file holds format version 2 only when it has a ``coded`` weight,
else version 1.
"""

import hashlib
import json
import os

import h5py
import numpy as np

from .. import __version__
from ..coding import CodedMatrix, unpack_bytes
from ..errors import InputError, OptionError
from ..model import (
    Activation,
    Dense,
    DenseLayer,
    EmbeddingLayer,
    EntropyCoded,
    LSTMDirection,
    LSTMLayer,
    Model,
    OtherLayer,
    Tensor,
)
from ..model.gated import GATES, Gated, bias_mask, expand_bias
from ..model.weights import (
    LowRank,
    Quantized,
    Sparse,
    from_bfloat16_bits,
    index_encoding,
    to_bfloat16_bits,
)
from .atomic import atomic_path
from .h5_safe import H5_ERRORS, open_h5

FORMAT_VERSION = 2  # written only for files holding a ``coded`` weight; else 1
VERSIONS = (1, 2)
_CODED_PARTS = ("header", "side", "escapes", "stream")
MAX_ENTRIES_PER_BYTE = 1024  # a weight may stand for at most this many entries per file byte
_WIDTHS = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def is_container(path):
    """Whether ``path`` is an HDF5 file written by :func:`write`."""
    try:
        with h5py.File(path, "r") as f:
            return "rnnshrink_format" in f.attrs
    except H5_ERRORS:  # not HDF5, or damaged: the Keras reader says what is wrong
        return False


def file_sha256(path):
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write(model, output, recipe=(), summary=None, source_sha256=""):
    """Write ``model`` to ``output`` atomically (format version 2 if it holds an entropy-coded
    weight, else 1).

    Parameters
    ----------
    model : Model
    output : str or os.PathLike
    recipe : list of str
        The steps that made it, e.g. ``["svd:tau=0.6", "quant:bits=4"]``.
    summary : dict, optional
        The compress summary, stored as JSON.
    source_sha256 : str
        Hash of the file the model was read from.
    """
    with atomic_path(output) as temporary, h5py.File(temporary, "w") as f:
        attrs = {
            "rnnshrink_format": 1,  # raised to 2 by the first coded weight written
            "rnnshrink_version": __version__,
            "source_format": model.meta.get("source_format", model.format),
            "source_file": model.meta.get("source_file", model.path),
            "source_sha256": source_sha256,
            "source_producer": model.producer,
            "topology": model.topology,
            "recipe": json.dumps(list(recipe)),
            "notes": json.dumps(model.notes),
            "summary": json.dumps(summary or {}),
        }
        f.attrs.update(attrs)
        layers = f.create_group("layers")
        for index, layer in enumerate(model.layers):
            _write_layer(layers.create_group(f"{index:04d}"), layer)
        tensors = f.create_group("tensors")
        for index, tensor in enumerate(model.tensors.values()):
            dataset = tensors.create_dataset(f"{index:06d}", data=tensor.data)
            dataset.attrs.update({"name": tensor.name, "dtype": tensor.dtype})


def read(path, **options):
    """Read a container file back into a :class:`Model` (format ``"rnnshrink"``)."""
    try:
        with open_h5(path) as f:
            version = int(f.attrs["rnnshrink_format"])
            if version not in VERSIONS:
                raise InputError(path, f"rnnshrink format version {version} is not supported "
                                 f"(this rnnshrink reads versions 1 and {FORMAT_VERSION})")
            layers = [_read_layer(f["layers"][key]) for key in sorted(f["layers"])]
            tensors = {}
            for key in sorted(f["tensors"]):
                dataset = f["tensors"][key]
                name = str(dataset.attrs["name"])
                tensors[name] = Tensor(name, dataset[()], str(dataset.attrs["dtype"]))
            meta = {
                "source_format": str(f.attrs["source_format"]),
                "source_file": str(f.attrs["source_file"]),
                "source_sha256": str(f.attrs["source_sha256"]),
                "recipe": _json(f.attrs["recipe"], list, str),
                "summary": _json(f.attrs["summary"], dict),
            }
            return Model(
                layers=layers, tensors=tensors, format="rnnshrink",
                producer=f"rnnshrink {f.attrs['rnnshrink_version']} from {f.attrs['source_producer']}",
                topology=str(f.attrs["topology"]), notes=_json(f.attrs["notes"], list, str), meta=meta,
            )
    except (KeyError, ValueError, TypeError, OSError, RuntimeError, OptionError) as error:
        raise InputError(path, f"damaged rnnshrink container ({error})") from None


def _write_layer(group, layer):
    group.attrs.update({"kind": layer.kind, "name": layer.name, "inputs": json.dumps(layer.inputs)})
    _write_mapping(group.create_group("source"), layer.source)
    if isinstance(layer, LSTMLayer):
        group.attrs["activations"] = json.dumps([
            a.to_dict() for a in (layer.gate_activation, layer.cell_activation, layer.hidden_activation)
        ])
        group.attrs["clip"] = np.nan if layer.clip is None else layer.clip
        group.attrs["reverse_only"] = layer.reverse_only
        for k, direction in enumerate(layer.directions):
            sub = group.create_group(f"d{k}")
            for role, weight in direction.matrices.items():
                _write_weight(sub.create_group(role), weight)
            kept = bias_mask(direction.variant, layer.hidden_size)  # the parameter entries
            sub.create_dataset("b", data=direction.b[kept])
            sub.attrs.update({"bias_terms": direction.bias_terms, "bias_dtype": direction.bias_dtype})
            if direction.variant != "LSTM":
                sub.attrs["variant"] = direction.variant
    elif isinstance(layer, DenseLayer):
        _write_weight(group.create_group("W"), layer.W)
        if layer.b is not None:
            group.create_dataset("b", data=layer.b)
        group.attrs["activation"] = json.dumps(layer.activation.to_dict() if layer.activation else None)
    elif isinstance(layer, EmbeddingLayer):
        group.create_dataset("table", data=layer.table)


def _read_layer(group):
    kind, name = str(group.attrs["kind"]), str(group.attrs["name"])
    inputs, source = _json(group.attrs["inputs"], list, str, True), _read_mapping(group["source"])
    if kind == "lstm":
        gate, cell, hidden = (Activation(**a) for a in json.loads(group.attrs["activations"]))
        clip = float(group.attrs["clip"])
        directions = []
        for key in sorted(k for k in group if k.startswith("d")):
            sub = group[key]
            W, variant = _read_weight(sub["W"]), str(sub.attrs.get("variant", "LSTM"))
            b = expand_bias(variant, gate, sub["b"][()], W.shape[0] // 4)
            directions.append(LSTMDirection(
                W=W, R=_read_weight(sub["R"]), b=b,
                proj=_read_weight(sub["proj"]) if "proj" in sub else None,
                bias_terms=int(sub.attrs["bias_terms"]), bias_dtype=str(sub.attrs["bias_dtype"]),
                variant=variant,
            ))
        return LSTMLayer(name, directions, gate, cell, hidden, clip=None if np.isnan(clip) else clip,
                         reverse_only=bool(group.attrs["reverse_only"]), inputs=inputs, source=source)
    if kind == "dense":
        activation = json.loads(group.attrs["activation"])
        return DenseLayer(name, _read_weight(group["W"]), group["b"][()] if "b" in group else None,
                          activation=Activation(**activation) if activation else None,
                          inputs=inputs, source=source)
    if kind == "embedding":
        return EmbeddingLayer(name, group["table"][()], inputs=inputs, source=source)
    return OtherLayer(name, kind, inputs=inputs, source=source)


def _json(text, kind, items=None, optional=False):
    """A JSON attribute, checked to be a ``kind`` (of ``items``), or None when ``optional``."""
    value = json.loads(text)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (items and not all(isinstance(v, items) for v in value)):
        raise ValueError(f"attribute {str(text)[:40]!r} is not a JSON {kind.__name__}")
    return value


def _write_weight(group, weight):
    group.attrs["kind"] = weight.kind
    group.attrs["shape"] = weight.shape
    if isinstance(weight, Dense):
        group.attrs["stored_dtype"] = weight.stored_dtype
        group.create_dataset("values", data=_to_stored(weight.values, weight.stored_dtype))
    elif isinstance(weight, LowRank):
        _write_weight(group.create_group("U"), weight.U)
        _write_weight(group.create_group("V"), weight.V)
    elif isinstance(weight, Sparse):
        group.attrs["stored_dtype"] = weight.stored_dtype
        group.create_dataset("values", data=_to_stored(weight.values, weight.stored_dtype))
        _write_mask(group, weight.mask)
    elif isinstance(weight, Quantized):
        group.attrs.update({"bits": weight.bits, "group": weight.group or 0})
        kept = weight.codes if weight.mask is None else weight.codes[weight.mask]
        group.create_dataset("codes", data=pack_codes(kept.ravel(), weight.bits))
        group.create_dataset("steps", data=weight.steps.astype(weight.step_dtype))
        if weight.mask is not None:
            _write_mask(group, weight.mask)
    elif isinstance(weight, EntropyCoded):
        group.file.attrs["rnnshrink_format"] = FORMAT_VERSION
        for part, data in weight.coded.to_arrays().items():
            group.create_dataset(part, data=data, dtype=np.uint8)
        group.create_dataset("delta", data=np.array([weight.delta], np.float16))
        group.create_dataset("exponents", data=np.frombuffer(weight.exponents, np.uint8))
        if weight.mask is not None:
            _write_mask(group, weight.mask)
    elif isinstance(weight, Gated):
        group.attrs.update({"blocks": json.dumps(weight.structure),
                            "diag_dtype": weight.diag_dtype})
        for gate, block, kind in zip(GATES, weight.blocks, weight.structure):
            if kind == "full":
                _write_weight(group.create_group(gate), block)
            elif kind == "diag":
                group.create_dataset(gate, data=_to_stored(block, weight.diag_dtype))
    else:
        raise TypeError(f"no container encoding for weight kind {weight.kind!r}")


def _read_weight(group):
    kind, shape = str(group.attrs["kind"]), _weight_shape(group)
    if kind == "dense":
        dtype = str(group.attrs["stored_dtype"])
        _expect(group["values"], shape)
        return Dense(_from_stored(group["values"][()], dtype), stored_dtype=dtype)
    if kind == "lowrank":
        return LowRank(_read_weight(group["U"]), _read_weight(group["V"]))
    if kind == "sparse":
        dtype = str(group.attrs["stored_dtype"])
        return Sparse(_read_mask(group, shape), _from_stored(group["values"][()], dtype), dtype)
    if kind == "quantized":
        bits, group_size = int(group.attrs["bits"]), int(group.attrs["group"]) or None
        if not 2 <= bits <= 8:
            raise ValueError(f"{group.name}: bits {bits} outside [2, 8]")
        mask = _read_mask(group, shape) if "indptr" in group or "bitmask" in group else None
        count = int(np.prod(shape)) if mask is None else int(np.count_nonzero(mask))
        _expect(group["codes"], (-(-count * bits // 8),))
        kept = unpack_codes(group["codes"][()], bits, count)
        codes = kept.reshape(shape) if mask is None else np.zeros(shape, np.int8)
        if mask is not None:
            codes[mask] = kept
        steps = group["steps"][()]
        return Quantized(codes, steps, bits, group_size, mask, step_dtype=steps.dtype.name)
    if kind == "gated":
        dtype = str(group.attrs["diag_dtype"])
        blocks = [None if structure == "zero" else _read_weight(group[gate]) if structure == "full"
                  else _from_stored(group[gate][()], dtype)
                  for gate, structure in zip(GATES, json.loads(group.attrs["blocks"]))]
        return Gated(blocks, shape, dtype)
    if kind == "coded":
        mask = _read_mask(group, shape) if "indptr" in group or "bitmask" in group else None
        coded = CodedMatrix.from_arrays({part: group[part][()] for part in _CODED_PARTS}, shape,
                                        mask)
        exponents = np.frombuffer(unpack_bytes(group["exponents"][()]), np.int8)
        return EntropyCoded.from_coded(coded, group["delta"][0], exponents[:shape[0]],
                                       exponents[shape[0]:])
    raise ValueError(f"unknown weight kind {kind!r}")


def _write_mask(group, mask):
    encoding, _ = index_encoding(mask)
    if encoding == "bitmask":
        group.create_dataset("bitmask", data=np.packbits(mask.ravel(), bitorder="little"))
        return
    rows, cols = mask.shape
    width = 1 if cols <= 2**8 else 2 if cols <= 2**16 else 4
    group.create_dataset("indptr", data=np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32))
    group.create_dataset("indices", data=np.nonzero(mask)[1].astype(_WIDTHS[width]))


def _weight_shape(group):
    """A weight's ``shape`` attribute, checked: two counts, at most :data:`MAX_ENTRIES_PER_BYTE`
    entries per byte of the file (the arrays it implies are allocated only after this)."""
    shape = tuple(int(n) for n in group.attrs["shape"])
    limit = MAX_ENTRIES_PER_BYTE * max(os.path.getsize(group.file.filename), 1)
    if len(shape) != 2 or min(shape) < 0 or shape[0] * shape[1] > limit:
        raise ValueError(f"{group.name}: shape {shape} is not a matrix this file can hold")
    return shape


def _expect(dataset, shape):
    if dataset.shape != tuple(shape):
        raise ValueError(f"{dataset.name} has shape {dataset.shape}, the weight needs {tuple(shape)}")


def _read_mask(group, shape):
    if "bitmask" in group:
        _expect(group["bitmask"], (-(-shape[0] * shape[1] // 8),))
        bits = np.unpackbits(group["bitmask"][()], count=int(np.prod(shape)), bitorder="little")
        return bits.reshape(shape).astype(bool)
    _expect(group["indptr"], (shape[0] + 1,))
    indptr, indices = group["indptr"][()].astype(np.int64), group["indices"][()]
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0] \
            or indices.ndim != 1 or np.any(indices >= shape[1]):
        raise ValueError(f"{group.name}: sparse index out of range")
    mask = np.zeros(shape, bool)
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    mask[rows, indices.astype(np.int64)] = True
    return mask


def pack_codes(codes, bits):
    """Pack signed codes ``|c| < 2^(bits-1)`` as ``bits``-wide unsigned ``c + 2^(bits-1)``.

    Returns
    -------
    ndarray of uint8, shape (ceil(len(codes) * bits / 8),)
    """
    unsigned = (np.asarray(codes, np.int16) + 2 ** (bits - 1)).astype(np.uint8)
    planes = np.unpackbits(unsigned[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.ravel(), bitorder="little")


def unpack_codes(packed, bits, count):
    """Inverse of :func:`pack_codes`: ``count`` signed int8 codes."""
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    unsigned = np.packbits(planes, axis=1, bitorder="little")[:, 0].astype(np.int16)
    return (unsigned - 2 ** (bits - 1)).astype(np.int8)


def _to_stored(values, dtype):
    return to_bfloat16_bits(values) if dtype == "bfloat16" else np.asarray(values).astype(dtype)


def _from_stored(values, dtype):
    return from_bfloat16_bits(values) if dtype == "bfloat16" else values


def _write_mapping(group, mapping):
    """Store a reader's ``source`` mapping: arrays and tensors as datasets, the rest as JSON."""
    for key, value in mapping.items():
        if isinstance(value, Tensor):
            dataset = group.create_dataset(key, data=value.data)
            dataset.attrs.update({"tensor_name": value.name, "dtype": value.dtype})
        elif isinstance(value, np.ndarray):
            group.create_dataset(key, data=value)
        elif isinstance(value, dict) or _holds_arrays(value):
            sub = group.create_group(key)
            if not isinstance(value, dict):
                sub.attrs["__list__"] = len(value)
                value = {str(i): item for i, item in enumerate(value)}
            _write_mapping(sub, value)
        else:
            group.attrs[key] = json.dumps(value, default=_json_default)


def _holds_arrays(value):
    if isinstance(value, (np.ndarray, Tensor)):
        return True
    if isinstance(value, dict):
        return any(_holds_arrays(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_arrays(v) for v in value)
    return False


def _read_mapping(group):
    found = {key: json.loads(value) for key, value in group.attrs.items() if key != "__list__"}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            found[key] = _read_mapping(item)
        elif "tensor_name" in item.attrs:
            found[key] = Tensor(str(item.attrs["tensor_name"]), item[()], str(item.attrs["dtype"]))
        else:
            found[key] = item[()]
    if "__list__" in group.attrs:
        return [found[str(i)] for i in range(int(group.attrs["__list__"]))]
    return found


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a container")
