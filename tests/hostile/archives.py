"""Hostile zip archives (torch and .keras), safetensors headers that lie, ONNX files whose
external data points anywhere, NaN / Inf weights, and one truncated file per format."""

import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from . import Entry
from .pickles import TENSOR, op_dict, zip_checkpoint

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _zip_members(path, members, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        for name, content in members:
            archive.writestr(name, content)


def _declare(path, name, size):
    """Patch the uncompressed size of member ``name`` in its local and central headers."""
    raw = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, field, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = raw.find(signature)
        while raw[at + name_at:at + name_at + len(encoded)] != encoded:
            at = raw.find(signature, at + 1)
        raw[at + field:at + field + 4] = struct.pack("<I", size)
    path.write_bytes(bytes(raw))


def _torch_zip(extra, records=None):
    def build(folder):
        members = [("archive/data.pkl", op_dict({"w": TENSOR})), ("archive/version", "3\n")]
        members += [(f"archive/data/{k}", v) for k, v in (records or {"0": bytes(48)}).items()]
        _zip_members(folder / "m.pt", members + extra(folder))
    return build


def _keras(inner_name="model.weights.h5", compress=zipfile.ZIP_STORED, inner=None, declare=None):
    def build(folder):
        with zipfile.ZipFile(FIXTURES / "keras3_charlm.keras") as archive:
            members = {i.filename: archive.read(i) for i in archive.infolist()}
        data = members.pop("model.weights.h5")
        data = data if inner is None else inner
        path = folder / "m.keras"
        _zip_members(path, [*members.items(), (inner_name, data)], compress)
        if declare:
            _declare(path, inner_name, declare)
    return build


def _local_name_lies(folder):
    path = folder / "m.pt"
    zip_checkpoint(path, op_dict({"w": TENSOR}), {"0": bytes(48)})
    raw = path.read_bytes()
    at = raw.index(b"archive/data/0")  # the first occurrence is the local header's
    path.write_bytes(raw[:at] + b"archive/data/1" + raw[at + 14:])


def _utf8_flag_and_bad_name(folder):
    path = folder / "m.pt"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("archive/data/\u00e90")  # non-ASCII: the UTF-8 flag is set
        archive.writestr(info, bytes(48))
        archive.writestr("archive/data.pkl", op_dict({"w": TENSOR}))
    raw = path.read_bytes().replace("\u00e9".encode(), b"\x80\x80")
    path.write_bytes(raw)


def _directory_offset_lies(folder):
    """The end record says the central directory starts 4 bytes later than it does."""
    path = zip_checkpoint(folder / "m.pt", op_dict({"w": TENSOR}), {"0": bytes(48)})
    raw = bytearray(path.read_bytes())
    at = raw.rindex(b"PK\x05\x06") + 16
    raw[at:at + 4] = struct.pack("<I", struct.unpack("<I", raw[at:at + 4])[0] + 4)
    path.write_bytes(bytes(raw))


ZIPS = {  # name -> (file, build, problem)
    "name-not-utf8": ("m.pt", _utf8_flag_and_bad_name, "corrupt zip archive"),
    "directory-offset": ("m.pt", _directory_offset_lies, "outside the file|corrupt zip"),
    "traversal": ("m.pt", _torch_zip(lambda f: [("../../evil", "x")]), r"leaves the archive"),
    "absolute": ("m.pt", _torch_zip(lambda f: [("/tmp/evil", "x")]), r"leaves the archive"),
    "duplicate-data-pkl": ("m.pt", _torch_zip(lambda f: [("archive/data.pkl", b"\x80\x02N.")]),
                           "two members named 'archive/data.pkl'"),
    "duplicate-record": ("m.pt", _torch_zip(lambda f: [("archive/data/0", bytes(48))]),
                         "two members named 'archive/data/0'"),
    "local-header-lies": ("m.pt", _local_name_lies, "local header does not match"),
    "keras-traversal": ("m.keras", _keras("../model.weights.h5"), "leaves the archive"),
    "keras-bomb-declared": ("m.keras", _keras(compress=zipfile.ZIP_DEFLATED, declare=2**32 - 1),
                            r"claims 4294967295 bytes from \d+ \(a zip bomb\?\)"),
    "keras-bomb-real": ("m.keras", _keras(compress=zipfile.ZIP_DEFLATED, inner=bytes(64 << 20)),
                        r"claims 67108864 bytes from \d+ \(a zip bomb\?\)"),
}


def _safetensors(header, data=b"", length=None):
    def build(folder):
        text = json.dumps(header).encode() if isinstance(header, dict) else header
        size = len(text) if length is None else length
        (folder / "m.safetensors").write_bytes(struct.pack("<Q", size) + text + data)
    return build


LSTM_HEADER = {
    "weight_ih_l0": {"dtype": "F32", "shape": [8, 3], "data_offsets": [0, 96]},
    "weight_hh_l0": {"dtype": "F32", "shape": [8, 2], "data_offsets": [96, 160]},
}


def _with(**entry):
    return {**LSTM_HEADER, "weight_hh_l0": {**LSTM_HEADER["weight_hh_l0"], **entry}}


_DUPLICATE = (b'{"weight_ih_l0":{"dtype":"F32","shape":[8,3],"data_offsets":[0,96]},'
              b'"weight_hh_l0":{"dtype":"F32","shape":[8,2],"data_offsets":[96,160]},'
              b'"weight_hh_l0":{"dtype":"F32","shape":[8,2],"data_offsets":[96,160]}}')
SAFETENSORS = {  # name -> (header, data, declared length, problem)
    "header-length": (LSTM_HEADER, bytes(160), 10**12, "header claims 1000000000000 bytes"),
    "not-json": (b"{not json", b"", None, "not JSON"),
    "not-object": (b"[1, 2]", b"", None, "not a checkpoint rnnshrink reads"),
    "deep-json": (b'{"a":' + b"[" * 100_000, b"", None, "not JSON"),
    "duplicate-name": (_DUPLICATE, bytes(160), None, "names 'weight_hh_l0' twice"),
    "metadata": ({**LSTM_HEADER, "__metadata__": {"a": 1}}, bytes(160), None,
                 "__metadata__ must map strings"),
    "dtype-unknown": (_with(dtype="F128"), bytes(160), None, "unsupported dtype F128"),
    "dtype-object": (_with(dtype={"a": 1}), bytes(160), None, "unsupported dtype"),
    "offsets-huge": (_with(data_offsets=[96, 10**15]), bytes(160), None, "needs 64 bytes"),
    "overlap": (_with(data_offsets=[80, 144]), bytes(160), None, "overlaps the tensor before it"),
    "gap": (_with(data_offsets=[100, 164]), bytes(164), None, "leaves a gap before it"),
    "data-short": (_with(data_offsets=[96, 160]), bytes(150), None,
                   "cover 160 bytes, the data holds 150"),
    "data-long": (_with(data_offsets=[96, 160]), bytes(170), None,
                  "cover 160 bytes, the data holds 170"),
    "shape-huge": (_with(shape=[2**40, 2**40]), bytes(160), None,
                   "needs 4835703278458516698824704 bytes"),
    "shape-negative": (_with(shape=[8, -2]), bytes(160), None, "invalid"),
    "shape-string": (_with(shape="8x2"), bytes(160), None, "invalid"),
    "offsets-one": (_with(data_offsets=[96]), bytes(160), None, "invalid"),
    "offsets-float": (_with(data_offsets=[96.0, 160]), bytes(160), None, "invalid"),
}


def _onnx(location, offset=0, length=None, side=None, dtype=np.float32, mutate=None,
          bad_utf8=False):
    """A one-LSTM model whose W lives at ``location``; ``side(folder)`` makes other files."""
    def build(folder):
        from test_onnx_graph import lstm_model, random_weights

        W, R, B = random_weights(np.random.default_rng(6), 1, 4, 3)
        model = lstm_model(W.astype(dtype), R, B)
        if location is not None:
            tensor = model.graph.initializer[0]
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", offset),
                               ("length", length or W.nbytes)):
                tensor.external_data.add(key=key, value=str(value))
            (folder.parent / "secret.bin").write_bytes(W.tobytes() * 2)
        if mutate:
            mutate(model)
        if side:
            side(folder)
        data = model.SerializeToString()
        if bad_utf8:  # protobuf will not set such a string; the file can hold one
            data = data.replace("\u00e9".encode(), b"\xff\xfe")
        (folder / "m.onnx").write_bytes(data)
    return build


def _beside(folder):
    (folder / "w.bin").write_bytes(bytes(200))


def _symlink(folder):
    os.symlink(folder.parent / "secret.bin", folder / "link.bin")


def _hidden_size_string(model):
    model.graph.node[0].attribute[0].CopyFrom(helper.make_attribute("hidden_size", "4"))


def _direction_bytes(model):
    model.graph.node[0].attribute.append(helper.make_attribute("direction", b"\xff\xfe"))


def _name_with_accent(model):
    model.graph.node[0].name = "lstm_\u00e9"


def _no_W(model):
    model.graph.node[0].input[1] = ""


def _hidden_size_huge(model):
    """hidden_size claims 2^32 units and B is absent: a zero B of that size would be 128 GB."""
    model.graph.node[0].attribute[0].CopyFrom(helper.make_attribute("hidden_size", 2**32))
    model.graph.node[0].input[3] = ""


def _huge_dims(model):
    model.graph.initializer[0].dims[1] = 2**40


ONNX = {  # name -> (build, problem)
    "external-absolute": (_onnx("/etc/passwd"), "not a path relative to the model's folder"),
    "external-parent": (_onnx("../secret.bin"), "points outside the model's folder"),
    "external-climbing": (_onnx("sub/../../secret.bin"), "points outside the model's folder"),
    "external-symlink": (_onnx("link.bin", side=_symlink), "points outside the model's folder"),
    "external-nul": (_onnx("w\0.bin"), "not a file name"),
    "external-not-utf8": (_onnx("w\u00e9.bin", bad_utf8=True), "not UTF-8 text"),
    "name-not-utf8": (_onnx(None, mutate=_name_with_accent, bad_utf8=True),
                      "names or strings that are not UTF-8 text"),
    "external-folder": (_onnx("sub", side=lambda f: (f / "sub").mkdir()), "no such file"),
    "external-range": (_onnx("w.bin", offset=150, side=_beside),
                       "lie outside the 200-byte file"),
    "external-length": (_onnx("w.bin", length=7, side=_beside),
                        "holds 7 bytes, the tensor needs 192"),
    "weights-int": (_onnx(None, dtype=np.int32), "input W is int32"),
    "weights-missing": (_onnx(None, mutate=_no_W), "input W is missing"),
    "attribute-type": (_onnx(None, mutate=_hidden_size_string),
                       "attribute hidden_size is of type STRING, expected INT"),
    "attribute-bytes": (_onnx(None, mutate=_direction_bytes), "not UTF-8 text"),
    "dims-huge": (_onnx(None, mutate=_huge_dims), "initializer|constant|shape"),
    "hidden-size-huge": (_onnx(None, mutate=_hidden_size_huge),
                         r"W has shape \(1, 16, 3\), expected \(1, 17179869184, 3\)"),
}


def _cut(fixture, fraction):
    def build(folder):
        data = (FIXTURES / fixture).read_bytes()
        (folder / fixture).write_bytes(data[:int(len(data) * fraction)])
    return build


TRUNCATED = {  # fixture -> (fraction kept, problem)
    "charlm.pt": (0.33, "truncated|corrupt|lacks"),
    "charlm_legacy.pt": (0.99, "truncated"),
    "charlm.safetensors": (0.5, "the data holds"),
    "charlm.onnx": (0.5, "truncated or corrupt"),
    "keras2_charlm.h5": (0.5, "truncated or corrupt HDF5"),
    "keras3_charlm.keras": (0.5, "corrupt zip"),
}


def _nonfinite_pt(folder):
    from rnnshrink.io.torch_pickle import StoredTensor
    from rnnshrink.io.torch_writer import save_state

    W = np.ones((8, 3), np.float32)
    W[2, 1] = np.nan
    save_state({"weight_ih_l0": StoredTensor(W, "float32"),
                "weight_hh_l0": StoredTensor(np.ones((8, 2), np.float32), "float32")},
               folder / "m.pt")


def _nonfinite_safetensors(folder):
    data = np.ones(40, np.float32)
    data[30] = np.inf
    _safetensors(LSTM_HEADER, data.tobytes())(folder)


def _nonfinite_onnx(model):
    W = numpy_helper.to_array(model.graph.initializer[1]).copy()
    W[0, 5, 1] = -np.inf
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(W, "R"))


def _entries():
    for name, (file, build, problem) in ZIPS.items():
        yield Entry("zip", name, file, build, problem)
    for name, (header, data, length, problem) in SAFETENSORS.items():
        yield Entry("safetensors", name, "m.safetensors", _safetensors(header, data, length),
                    problem)
    for name, (build, problem) in ONNX.items():
        yield Entry("onnx", name, "m.onnx", build, problem)
    for name, (fraction, problem) in TRUNCATED.items():
        yield Entry("truncated", name, name, _cut(name, fraction), problem)
    for name, build in (("pt", _nonfinite_pt), ("safetensors", _nonfinite_safetensors),
                        ("onnx", _onnx(None, mutate=_nonfinite_onnx))):
        file = "m." + name
        yield Entry("nonfinite", name, file, build, "has NaN or Inf in (W|R)", nonfinite=True)


ENTRIES = list(_entries())
