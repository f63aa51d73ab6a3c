"""Mutators for fuzzing the readers: functions that damage a valid file (``_fuzz_seeds``) byte
by byte or through its structure, and the property every case must meet (:func:`check_read`).

A mutator takes the seed's bytes and a :class:`random.Random` and returns new bytes, so the
hypothesis tests (``tests/test_fuzz.py``) and the atheris harness (``tests/fuzz/``) share
them. Structure-aware mutators rebuild the container around a damaged part (a zip with valid
CRCs around a damaged ``data.pkl``, a safetensors file around a damaged JSON header, a
protobuf with one field changed, an HDF5 file with one dataset or attribute replaced), so the
damage reaches rnnshrink's own checks instead of stopping at a checksum.
"""

import io
import json
import math
import random
import struct
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np

INTERESTING = (0, 1, 2, 3, 4, 7, 8, 16, 255, 256, 2**15, 2**16, 2**31 - 1, 2**31, 2**32 - 1,
               2**32, 2**40, 2**63 - 1, 2**64 - 1)


# --- byte level ---------------------------------------------------------------------------

def mutate_bytes(data, rng, start=0, stop=None):
    """One to four byte-level edits of ``data`` at positions in ``[start, stop)``."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        end = len(data) if stop is None else min(stop, len(data))
        if end <= start:
            data += bytes([rng.randrange(256)])
            continue
        at = rng.randrange(start, end)
        op = rng.randrange(8)
        if op == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[at] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            del data[at:at + rng.randint(1, 64)]
        elif op == 4:
            del data[at:]
        elif op == 5:
            data[at:at] = data[at:at + rng.randint(1, 64)]
        else:
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(INTERESTING) % 2 ** (8 * width)
            data[at:at + width] = value.to_bytes(width, rng.choice(("little", "big")))
    return bytes(data)


# --- JSON ---------------------------------------------------------------------------------

def _junk(rng):
    return rng.choice([0, -1, 1, 2**31, 2**64, 1e308, math.nan, math.inf, -0.5, "", "x" * 3,
                       "F32", "LSTM", None, True, [], {}, [1, 2], {"a": 1}, [2**40, 2**40]])


def mutate_json(value, rng):
    """``value`` (parsed JSON) with one node replaced, removed, tweaked or duplicated."""
    if not isinstance(value, (dict, list)) or not value or rng.random() < 0.15:
        if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
            return value + rng.choice((-1, 1, -value, 2**32))
        return _junk(rng)
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))
    key = rng.choice(keys)
    op = rng.randrange(10)
    if op == 0:
        del value[key]
    elif op == 1 and isinstance(value, dict):
        value[key + rng.choice(("_", "_l0", "_reverse"))] = value[key]
    elif op == 2 and isinstance(value, list):
        value.append(value[key])
    else:
        value[key] = mutate_json(value[key], rng)
    return value


def mutate_json_text(text, rng):
    """JSON text with one structural change, or byte edits when it is not JSON."""
    try:
        parsed = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return mutate_bytes(text, rng)
    if rng.random() < 0.2:
        return mutate_bytes(text, rng)
    return json.dumps(mutate_json(parsed, rng)).encode()


# --- formats ------------------------------------------------------------------------------

def _rezip(data, rng, mutate_member):
    """The zip ``data`` rebuilt, valid CRCs, after ``mutate_member(name, content)`` of one
    member, or a member dropped, renamed or duplicated."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    at = rng.randrange(len(members))
    info, content = members[at]
    op = rng.randrange(8)
    if op == 0:
        del members[at]
    elif op == 1:
        info.filename = rng.choice(("../" + info.filename, info.filename + "x",
                                    "/" + info.filename, members[0][0].filename))
    elif op == 2:
        members.append((info, content))
    else:
        members[at] = (info, mutate_member(info.filename, content))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info, content in members:
            compress = zipfile.ZIP_DEFLATED if rng.random() < 0.05 else info.compress_type
            archive.writestr(zipfile.ZipInfo(info.filename, info.date_time), content, compress)
    return out.getvalue()


def _member(name, content, rng):
    if name.endswith(".h5"):
        return mutate_h5(content, rng)
    if name.endswith(".json"):
        return mutate_json_text(content, rng)
    return mutate_bytes(content, rng)


def mutate_zip(data, rng):
    """A torch or .keras zip with one member damaged and the zip rebuilt around it."""
    return _rezip(data, rng, lambda name, content: _member(name, content, rng))


def mutate_legacy(data, rng):
    """Byte edits biased to the pickles at the start of a legacy torch file."""
    return mutate_bytes(data, rng, 0, rng.choice((len(data), 2048)))


def mutate_safetensors(data, rng):
    """The header's JSON changed, the data kept (the length prefix fixed up or not)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = mutate_json_text(data[8:8 + length], rng)
    prefix = len(header) if rng.random() < 0.9 else rng.choice(INTERESTING) % 2**64
    return struct.pack("<Q", prefix) + header + data[8 + length:]


def mutate_onnx(data, rng):
    """One protobuf field of the model changed: dims, dtypes, data, attributes, inputs."""
    import onnx

    model = onnx.ModelProto.FromString(data)
    from rnnshrink.io.onnx_graph import graphs, tensor_protos

    tensors = list(tensor_protos(model.graph))
    nodes = [node for graph in graphs(model.graph) for node in graph.node]
    op = rng.randrange(9)
    if op == 0 and tensors:
        tensor = rng.choice(tensors)
        if tensor.dims:
            at = rng.randrange(len(tensor.dims))
            tensor.dims[at] = rng.choice((0, 1, tensor.dims[at] + 1, tensor.dims[at] - 1, 2**40))
        else:
            tensor.dims.append(rng.choice((0, 1, 3)))
    elif op == 1 and tensors:
        rng.choice(tensors).data_type = rng.randrange(0, 27)
    elif op == 2 and tensors:
        tensor = rng.choice(tensors)
        tensor.raw_data = tensor.raw_data[:rng.randrange(len(tensor.raw_data) + 1)]
    elif op == 3 and tensors:
        tensor = rng.choice(tensors)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", rng.choice(("x.bin", "../x", "/etc/hostname", ""))),
                           ("offset", str(rng.choice(INTERESTING))), ("length", "-1")):
            if rng.random() < 0.7:
                tensor.external_data.add(key=key, value=value)
    elif op == 4 and nodes:
        attrs = rng.choice(nodes).attribute
        if attrs:
            attr = rng.choice(attrs)
            attr.i = rng.choice(INTERESTING) - 2**31 * rng.randrange(2)
            attr.f = rng.choice((math.nan, math.inf, -1.0, 0.0))
            attr.s = rng.choice((b"", b"reverse", b"bidirectional", b"Sigmoid", b"\xff"))
            if attr.strings:
                attr.strings[rng.randrange(len(attr.strings))] = rng.choice((b"Relu", b"x"))
    elif op == 5 and nodes:
        node = rng.choice(nodes)
        if node.input and rng.random() < 0.5:
            node.input[rng.randrange(len(node.input))] = rng.choice(("", "missing", "X"))
        else:
            node.op_type = rng.choice(("LSTM", "Identity", "MatMul", "Constant", "If", "GRU"))
    elif op == 6 and model.opset_import:
        model.opset_import[0].version = rng.choice((1, 6, 7, 14, 21, 99))
    else:
        return mutate_bytes(data, rng)
    return model.SerializeToString()


def mutate_h5(data, rng):
    """An HDF5 file with one dataset, attribute or link replaced, removed or damaged."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.h5"
        path.write_bytes(data)
        if rng.random() < 0.15:
            return mutate_bytes(data, rng, 0, rng.choice((len(data), 4096)))
        with h5py.File(path, "r+") as f:
            _mutate_h5_object(f, rng)
        return path.read_bytes()


def _mutate_h5_object(f, rng):
    names = []
    f.visit(names.append)
    objects = [f] + [f[name] for name in names]
    item = rng.choice(objects)
    attrs = list(item.attrs)
    if attrs and rng.random() < 0.4:
        key = rng.choice(attrs)
        value = item.attrs[key]
        if isinstance(value, (str, bytes)) and rng.random() < 0.7:
            text = value.encode() if isinstance(value, str) else value
            item.attrs[key] = mutate_json_text(text, rng).decode("utf-8", "replace")
        elif rng.random() < 0.3:
            del item.attrs[key]
        else:
            item.attrs[key] = _junk_array(rng)
        return
    if item.name == "/":
        return
    parent, name = item.parent, item.name.rsplit("/", 1)[1]
    op = rng.randrange(5)
    if op == 0:
        del parent[name]
    elif op == 1:
        parent.move(name, name + rng.choice(("x", ":0")))
    elif op == 2 and isinstance(item, h5py.Dataset):
        shape = list(item.shape) or [1]
        at = rng.randrange(len(shape))
        shape[at] = max(0, shape[at] + rng.choice((-1, 1, -shape[at], 3)))
        if rng.random() < 0.2:
            shape.append(2)
        dtype = rng.choice((item.dtype, np.int32, np.float16, np.complex64, np.bool_, "S3"))
        del parent[name]
        parent.create_dataset(name, data=np.ones(shape).astype(dtype))
    elif op == 3 and isinstance(item, h5py.Dataset) and item.dtype.kind == "f" and item.size:
        values = item[()]
        values.flat[rng.randrange(values.size)] = rng.choice((np.nan, np.inf, 1e38))
        item[...] = values
    else:
        parent[name + "_copy"] = h5py.SoftLink(item.name)


def _junk_array(rng):
    return rng.choice((np.int64(-1), np.array([2**40, 3]), "x", np.array([b"a", b"b"]),
                       np.float64(math.nan), np.zeros(0), np.array([1.5, 2.5])))


MUTATORS = {
    "torch-zip": mutate_zip,
    "torch-legacy": mutate_legacy,
    "safetensors": mutate_safetensors,
    "onnx": mutate_onnx,
    "keras-h5": mutate_h5,
    "keras-zip": mutate_zip,
    "rnnshrink": mutate_h5,
}
READERS = tuple(MUTATORS)


def case(fmt, found, case_seed):
    """Fuzz case number ``case_seed`` of format ``fmt``: the seed file's name and the bytes of
    one or two mutations of it (``found`` from :func:`seeds`). The same seed always gives the
    same bytes, so a finding is reproduced by its number."""
    rng = random.Random(case_seed)
    name = rng.choice(sorted(found))
    data = found[name]
    for _ in range(rng.randint(1, 2)):
        data = mutate(fmt, data, random.Random(rng.getrandbits(64)))
    return name, data


def mutate(fmt, data, rng):
    """A structure-aware mutation of a ``fmt`` file (80%) or byte edits anywhere (20%)."""
    if rng.random() < 0.2:
        return mutate_bytes(data, rng)
    try:
        return MUTATORS[fmt](data, rng)
    except Exception:  # the seed itself is already damaged by an earlier mutation
        return mutate_bytes(data, rng)


def check_read(path):
    """The fuzz property: ``rnnshrink.read`` returns a Model the report can describe, or
    raises InputError; anything else propagates."""
    from rnnshrink import read
    from rnnshrink.errors import InputError
    from rnnshrink.report import summarize

    try:
        model = read(path)
    except InputError:
        return None
    json.dumps(summarize(model))
    return model
