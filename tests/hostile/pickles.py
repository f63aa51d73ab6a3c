"""Hostile ``torch.save`` files: pickles that would run code, abuse persistent ids or nested
pickles, lie about lengths, and storages that lie about their sizes.

Pickles are built from opcodes (``op_*``) or from ``__reduce__`` classes; each one that would
run code creates ``folder.parent / "canary"`` if it ran. The opcode helpers and the zip and
legacy layouts are also used by ``tests/test_torch_pickle.py``.
"""

import os
import pickle
import struct
import subprocess
import zipfile
from collections import OrderedDict

import numpy as np

from . import Entry

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def op_global(module, name):
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def op_str(text):
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def op_int(value):
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    encoded = pickle.encode_long(value)
    return pickle.LONG1 + bytes([len(encoded)]) + encoded


def op_tuple(values):
    return pickle.MARK + b"".join(op_int(v) for v in values) + pickle.TUPLE


def op_pid(key, numel, storage="FloatStorage", extra=b""):
    """The persistent id torch.save writes for a storage: ('storage', cls, key, 'cpu', numel)."""
    return (pickle.MARK + op_str("storage") + op_global("torch", storage) + op_str(key)
            + op_str("cpu") + op_int(numel) + extra + pickle.TUPLE + pickle.BINPERSID)


def op_tensor(key, numel, size, stride, offset=0, storage="FloatStorage", pid=None):
    """``torch._utils._rebuild_tensor_v2`` of storage ``key``, as torch.save writes it."""
    pid = op_pid(key, numel, storage) if pid is None else pid
    hooks = op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    return (op_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + pid + op_int(offset)
            + op_tuple(size) + op_tuple(stride) + pickle.NEWFALSE + hooks + pickle.TUPLE
            + pickle.REDUCE)


def op_dict(entries):
    """A protocol-2 pickle of a dict from name -> opcodes of the value."""
    body = b"".join(op_str(name) + value for name, value in entries.items())
    return (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + body + pickle.SETITEMS
            + pickle.STOP)


def zip_checkpoint(path, data_pkl, records=None, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")
    return path


def legacy_checkpoint(path, object_pickle, storages=None, count=None):
    """The pre-1.6 layout: magic, protocol, sys_info, object, storage keys, storage blocks
    (each an int64 element count, ``count`` if given, then the elements)."""
    storages = storages or {}
    info = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps(info, 2),
             object_pickle, pickle.dumps(sorted(storages), 2)]
    for key in sorted(storages):
        size = storages[key].size if count is None else count
        parts.append(struct.pack("<q", size) + storages[key].tobytes())
    path.write_bytes(b"".join(parts))
    return path


class Runs:
    """Pickles as ``function(*args)``: whatever it is would run at load time."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(canary):
    """What each culprit would run; all of them create ``canary``."""
    return {
        "os.system": Runs(os.system, f"touch {canary}"),
        "builtins.eval": Runs(eval, f"open({str(canary)!r}, 'w')"),
        "subprocess.Popen": Runs(subprocess.Popen, ["touch", str(canary)]),
        "builtins.exec": Runs(exec, f"open({str(canary)!r}, 'w')"),
    }


# culprit -> the global its pickle names (os.system lives in posix)
CULPRITS = {"os.system": "posix.system", "builtins.eval": "builtins.eval",
            "subprocess.Popen": "subprocess.Popen", "builtins.exec": "builtins.exec"}
REFUSED = "refusing to load: the pickle references {}, which is not a tensor or container"


def _code(culprit, layout):
    def build(folder):
        payload = payloads(folder.parent / "canary")[culprit]
        if layout == "nested":  # hidden deep inside an otherwise ordinary checkpoint
            payload = {"epoch": 1, "state": OrderedDict(lstm=[1, {"x": payload}])}
        data = pickle.dumps(payload, protocol=2, fix_imports=False)
        if layout == "legacy":
            legacy_checkpoint(folder / "evil.pt", data)
        else:
            zip_checkpoint(folder / "evil.pt", data)
    return Entry("pickle-code", f"{culprit}-{layout}", "evil.pt", build,
                 REFUSED.format(CULPRITS[culprit]).replace(".", r"\."))


def _zip(category, name, data, problem, records=None, compress=zipfile.ZIP_STORED):
    def build(folder):
        content = data(folder.parent / "canary") if callable(data) else data
        zip_checkpoint(folder / "m.pt", content, records, compress)
    return Entry(category, name, "m.pt", build, problem)


def _raw(opcodes, protocol=2):
    return pickle.PROTO + bytes([protocol]) + opcodes + pickle.STOP


def _touch(canary):
    return op_str(f"touch {canary}")


OPCODE_CODE = {  # other opcodes that name a callable: INST, OBJ, STACK_GLOBAL, EXT1
    "INST": lambda c: b"(" + _touch(c) + b"ios\nsystem\n.",
    "OBJ": lambda c: _raw(pickle.MARK + op_global("os", "system") + _touch(c) + pickle.OBJ),
    "STACK_GLOBAL": lambda c: _raw(op_str("os") + op_str("system") + pickle.STACK_GLOBAL
                                   + _touch(c) + pickle.TUPLE1 + pickle.REDUCE, 4),
}
GLOBALS = [("torch.storage", "_load_from_bytes"), ("torch._utils", "_rebuild_parameter_with_state"),
           ("torch.nn.modules.rnn", "LSTM"), ("__main__", "CharLM"), ("argparse", "Namespace"),
           ("numpy.core.multiarray", "_reconstruct"), ("builtins", "getattr"),
           ("copyreg", "_reconstructor"), ("functools", "partial"), ("operator", "attrgetter")]
TENSOR = op_tensor("0", 12, (3, 4), (4, 1))
PERSISTENT_IDS = {  # name -> (persistent id opcodes, problem)
    "string": (op_str("evil") + pickle.BINPERSID, "unsupported persistent id evil"),
    "int": (op_int(7) + pickle.BINPERSID, "unsupported persistent id 7"),
    "callable-type": (pickle.MARK + op_str("storage") + op_global("os", "system") + op_str("0")
                      + op_str("cpu") + op_int(12) + pickle.TUPLE + pickle.BINPERSID,
                      r"references os\.system"),
    "dtype-as-type": (op_pid("0", 12, "float32"), "malformed storage reference"),
    "negative-size": (op_pid("0", -12), "malformed storage reference"),
    "view": (op_pid("0", 12, extra=op_tuple((0, 12))), r"storage views \(PyTorch < 1.0"),
}
LENGTHS = {  # name -> (opcodes, protocol, problem)
    "BINUNICODE": (pickle.BINUNICODE + struct.pack("<I", 2**31) + b"abc", 3, "corrupt|truncated"),
    "BINBYTES": (pickle.BINBYTES + struct.pack("<I", 2**31) + b"abc", 3, "corrupt|truncated"),
    "LONG_BINPUT": (op_int(1) + pickle.LONG_BINPUT + struct.pack("<I", 2**31), 3, "memo index"),
    "FRAME": (pickle.FRAME + struct.pack("<Q", 2**62) + op_int(1), 4, "corrupt|truncated"),
    "LONG4": (pickle.LONG4 + struct.pack("<i", 2**31 - 1) + b"\x01", 2, "corrupt|truncated"),
    "BINUNICODE8": (pickle.BINUNICODE8 + struct.pack("<Q", 2**62) + b"a", 4, "corrupt|truncated"),
    "EXT4": (pickle.EXT4 + struct.pack("<i", 2**30), 2, "corrupt"),
}
STORAGES = {  # name -> (tensor opcodes, records, problem)
    "short-record": (TENSOR, {"0": b"\0" * 40}, "storage 0 should hold 48 bytes"),
    "huge-numel": (op_tensor("0", 10**12, (3, 4), (4, 1)), {"0": b"\0" * 48},
                   "should hold 4000000000000 bytes"),
    "size-past-storage": (op_tensor("0", 12, (3, 5), (5, 1)), {"0": b"\0" * 48},
                          "reaches past its storage"),
    "offset-past-storage": (op_tensor("0", 12, (4,), (1,), offset=9), {"0": b"\0" * 48},
                            "reaches past its storage"),
    "zero-stride-huge": (op_tensor("0", 12, (10**6, 10**6), (0, 0)), {"0": b"\0" * 48},
                         "reaches past its storage"),
    "missing-record": (TENSOR, {}, "zip archive lacks member archive/data/0"),
    "unknown-storage": (op_tensor("0", 12, (3, 4), (4, 1), storage="NoSuchStorage"),
                        {"0": b"\0" * 48}, r"references torch\.NoSuchStorage"),
    "declared-twice": (TENSOR + op_str("v") + op_tensor("0", 13, (3,), (1,)),
                       {"0": b"\0" * 48}, "declared twice with different types or sizes"),
    "not-a-storage": (op_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + op_int(1)
                      + op_int(0) + op_tuple((3,)) + op_tuple((1,)) + pickle.NEWFALSE
                      + pickle.NONE + pickle.TUPLE + pickle.REDUCE, {},
                      "rebuilt from something that is not a storage"),
}


def _legacy_lie(folder):
    data = op_dict({"w": TENSOR})
    legacy_checkpoint(folder / "m.pt", data, {"0": np.arange(12, dtype=np.float32)}, 10**15)


def _load_from_bytes(canary):
    """torch's own nested-pickle loader called on an evil pickle."""
    inner = pickle.dumps(payloads(canary)["os.system"], 2)
    return op_dict({"x": op_global("torch.storage", "_load_from_bytes") + pickle.BINBYTES
                    + struct.pack("<I", len(inner)) + inner + pickle.TUPLE1 + pickle.REDUCE})


def _entries():
    yield from (_code(c, layout) for c in CULPRITS for layout in ("zip", "legacy", "nested"))
    for name, opcodes in OPCODE_CODE.items():
        yield _zip("pickle-code", name, opcodes, r"references os\.system")
    for module, name in GLOBALS:
        data = op_dict({"x": op_global(module, name) + pickle.EMPTY_TUPLE + pickle.REDUCE})
        yield _zip("pickle-globals", f"{module}.{name}", data,
                   REFUSED.format(f"{module}.{name}").replace(".", r"\."))
    state = pickle.EMPTY_DICT + pickle.MARK + op_str("__defaults__") + op_int(1) + pickle.SETITEMS
    for module, name in (("torch", "FloatStorage"), ("torch._utils", "_rebuild_tensor_v2"),
                         ("torch", "float32")):
        data = op_dict({"x": op_global(module, name) + state + pickle.BUILD})
        yield _zip("pickle-globals", f"BUILD-{name}", data, "set attributes")
    yield _zip("pickle-nested", "load_from_bytes", _load_from_bytes,
               r"references torch\.storage\._load_from_bytes")
    yield _zip("pickle-nested", "pickle-as-bytes",
               lambda c: pickle.dumps({"x": pickle.dumps(payloads(c)["os.system"], 2)}, 4),
               "holds a bytes at /x")
    for name, (pid, problem) in PERSISTENT_IDS.items():
        yield _zip("pickle-persistent-id", name, op_dict({"w": op_tensor("0", 12, (3, 4), (4, 1),
                                                                         pid=pid)}),
                   problem, {"0": b"\0" * 48})
    for name, (opcodes, protocol, problem) in LENGTHS.items():
        yield _zip("pickle-lengths", name, _raw(opcodes, protocol), problem)
    loop = []
    loop.append(loop)
    yield _zip("pickle-lengths", "self-reference", pickle.dumps(loop, 2), "corrupt")
    yield _zip("pickle-lengths", "set", pickle.dumps({"s": {1, 2}}, 4), "holds a set at /s")
    for name, (tensor, records, problem) in STORAGES.items():
        yield _zip("torch-storage", name, op_dict({"w": tensor}), problem, records)
    yield _zip("torch-storage", "compressed-record", op_dict({}), "compressed",
               compress=zipfile.ZIP_DEFLATED)
    yield Entry("torch-storage", "legacy-count", "m.pt", _legacy_lie,
                "storage 0 holds 1000000000000000 elements")


ENTRIES = list(_entries())
