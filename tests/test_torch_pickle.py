"""The safe torch.save reader and writer: agreement with torch, and hostile files refused.

Hostile pickles are built here from pickle opcodes or ``__reduce__`` classes; each would create
a canary file if anything in it ran.
"""

import io
import os
import pickle
import struct
import subprocess
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from rnnshrink.errors import InputError
from rnnshrink.io.torch_pickle import StoredTensor, load_state
from rnnshrink.io.torch_writer import save_state
from test_torch_checkpoint import TORCH_FILES, fixture

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# --- pickles from opcodes ---------------------------------------------------------------

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


def op_tensor(key, numel, size, stride, offset=0, storage="FloatStorage"):
    """``torch._utils._rebuild_tensor_v2`` of storage ``key``, as torch.save writes it."""
    pid = (pickle.MARK + op_str("storage") + op_global("torch", storage) + op_str(key)
           + op_str("cpu") + op_int(numel) + pickle.TUPLE + pickle.BINPERSID)
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


# --- agreement with torch ----------------------------------------------------------------

def assert_same_tree(ours, theirs, where=""):
    """Our loaded tree (StoredTensor leaves) equals torch's (Tensor leaves) bit for bit."""
    torch = pytest.importorskip("torch")
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, StoredTensor), where
        assert ours.dtype == str(theirs.dtype).removeprefix("torch."), where
        assert ours.data.shape == tuple(theirs.shape), where
        raw = theirs.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        assert ours.data.tobytes() == raw.tobytes(), where
        assert ours.requires_grad == theirs.requires_grad, where
        assert ours.parameter == isinstance(theirs, torch.nn.Parameter), where
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs), where
        assert vars(ours) == vars(theirs) if isinstance(theirs, OrderedDict) else True, where
        for key in theirs:
            assert_same_tree(ours[key], theirs[key], f"{where}/{key}")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), where
        for k, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_tree(a, b, f"{where}/{k}")
    else:
        assert ours == theirs and type(ours) is type(theirs), where


@pytest.mark.parametrize("name", TORCH_FILES)
def test_fixtures_load_like_torch(name):
    torch = pytest.importorskip("torch")
    path = fixture(name)
    tree, fmt = load_state(path)
    assert fmt == ("torch-legacy" if "legacy" in name else "torch-zip")
    assert_same_tree(tree, torch.load(path, weights_only=False))


def make_rich_checkpoint(torch):
    """Views, shared storages, parameters, every dtype, scalars and nested containers."""
    torch.manual_seed(0)
    base = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    return {
        "view": base[1:4, ::3],
        "transposed": base.t(),
        "shared": base[2],
        "param": torch.nn.Parameter(torch.ones(2, 3)),
        "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        **{str(dt).removeprefix("torch."): torch.ones(3, dtype=dt) for dt in (
            torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
            torch.int16, torch.int8, torch.uint8, torch.bool, torch.uint16)},
        "meta": {"epoch": 3, "loss": 0.25, "big": 2**70, "neg": -7, "name": "é", "none": None,
                 "flags": [True, False], "betas": (0.9, 0.999), 7: "int key"},
        "size": torch.Size([2, 3]),
        "ordered": OrderedDict(a=torch.zeros(1)),
    }


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_written_checkpoint_loads_bitwise(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    checkpoint = make_rich_checkpoint(torch)
    if legacy:  # torch's own legacy loader cannot read untyped-storage dtypes back
        del checkpoint["uint16"]
    path = tmp_path / "rich.pt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    tree, _ = load_state(path)
    assert_same_tree(tree, torch.load(path, weights_only=False))
    assert tree["size"] == (2, 3)


def test_save_state_is_read_by_torch_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    source = tmp_path / "rich.pt"
    torch.save(make_rich_checkpoint(torch), source)
    tree, _ = load_state(source)
    written = tmp_path / "written.pt"
    save_state(tree, written)
    for mmap in (False, True):
        assert_same_tree(tree, torch.load(written, weights_only=True, mmap=mmap))


def test_save_state_aligns_records_like_torch(tmp_path):
    tree = {"a": StoredTensor(np.arange(7, dtype=np.float32), "float32"),
            "b": StoredTensor(np.arange(3, dtype=np.uint16), "bfloat16")}
    path = tmp_path / "a.pt"
    save_state(tree, path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:][:4])
            assert (info.header_offset + 30 + name_length + extra_length) % 64 == 0
        assert archive.read("archive/byteorder") == b"little"
        assert archive.read("archive/version") == b"3\n"
    assert names[0] == "archive/data.pkl" and "archive/data/1" in names
    again, fmt = load_state(path)
    assert fmt == "torch-zip"
    for key in tree:
        assert again[key].dtype == tree[key].dtype
        np.testing.assert_array_equal(again[key].data, tree[key].data)


# --- hostile pickles -----------------------------------------------------------------------

class Runs:
    """Pickles as ``function(*args)``: whatever it is would run at load time."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def hostile_payloads(canary):
    touch = f"touch {canary}"
    return {
        "os.system": Runs(os.system, touch),
        "builtins.eval": Runs(eval, f"open({str(canary)!r}, 'w')"),
        "subprocess.Popen": Runs(subprocess.Popen, ["touch", str(canary)]),
        "builtins.exec": Runs(exec, f"open({str(canary)!r}, 'w')"),
    }


# culprit -> the global its pickle names (os.system lives in posix)
CULPRITS = {"os.system": "posix.system", "builtins.eval": "builtins.eval",
            "subprocess.Popen": "subprocess.Popen", "builtins.exec": "builtins.exec"}


@pytest.mark.parametrize("culprit", sorted(CULPRITS))
@pytest.mark.parametrize("layout", ["zip", "legacy", "nested"])
def test_code_in_pickle_is_refused_and_never_runs(tmp_path, culprit, layout):
    canary = tmp_path / "canary"
    payload = hostile_payloads(canary)[culprit]
    if layout == "nested":  # hidden deep inside an otherwise ordinary checkpoint
        payload = {"epoch": 1, "state": OrderedDict(lstm=[1, {"x": payload}])}
    data = pickle.dumps(payload, protocol=2, fix_imports=False)
    path = tmp_path / "evil.pt"
    if layout == "legacy":
        legacy_checkpoint(path, data)
    else:
        zip_checkpoint(path, data)
    with pytest.raises(InputError) as error:
        load_state(path)
    assert error.value.problem == (
        f"refusing to load: the pickle references {CULPRITS[culprit]}, which is not a tensor or "
        "container (rnnshrink never executes code from a checkpoint)")
    assert not canary.exists()


@pytest.mark.parametrize("module,name", [
    ("torch.storage", "_load_from_bytes"),  # unpickles nested data
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch.nn.modules.rnn", "LSTM"),  # a whole pickled module
    ("__main__", "CharLM"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("argparse", "Namespace"),
    ("builtins", "getattr"),
])
def test_globals_outside_the_allow_list_are_refused(tmp_path, module, name):
    data = op_dict({"x": op_global(module, name) + pickle.EMPTY_TUPLE + pickle.REDUCE})
    with pytest.raises(InputError, match=f"references {module}.{name}, which is not a tensor"):
        load_state(zip_checkpoint(tmp_path / "g.pt", data))


@pytest.mark.parametrize("module,name", [
    ("torch", "FloatStorage"), ("torch._utils", "_rebuild_tensor_v2"), ("torch", "float32")])
def test_build_on_an_allowed_global_is_refused(tmp_path, module, name):
    """BUILD would set attributes (e.g. a function's ``__defaults__``) on torch stand-ins."""
    state = pickle.EMPTY_DICT + pickle.MARK + op_str("__defaults__") + op_int(1) + pickle.SETITEMS
    data = op_dict({"x": op_global(module, name) + state + pickle.BUILD})
    with pytest.raises(InputError, match="set attributes"):
        load_state(zip_checkpoint(tmp_path / "b.pt", data))


def test_zip_without_data_pkl_is_refused(tmp_path):
    good = zip_checkpoint(tmp_path / "good.pt", op_dict({}))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes().replace(b"archive/data.pkl", b"archive/dat4.pkl"))
    with pytest.raises(InputError, match="no PyTorch data.pkl"):
        load_state(bad)


def valid_checkpoint(tmp_path, layout, count=None):
    weights = np.arange(12, dtype=np.float32)
    data = op_dict({"w": op_tensor("0", 12, (3, 4), (4, 1))})
    if layout == "zip":
        return zip_checkpoint(tmp_path / "ok.pt", data, {"0": weights.tobytes()})
    return legacy_checkpoint(tmp_path / "ok.pt", data, {"0": weights}, count)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_valid_handmade_checkpoint_loads(tmp_path, layout):
    tree, _ = load_state(valid_checkpoint(tmp_path, layout))
    np.testing.assert_array_equal(tree["w"].data, np.arange(12, dtype=np.float32).reshape(3, 4))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_checkpoints_are_refused(tmp_path, layout, fraction):
    path = valid_checkpoint(tmp_path, layout)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(InputError):
        load_state(path)


@pytest.mark.parametrize("name", ["charlm.pt", "charlm_legacy.pt"])
def test_truncated_fixture_is_refused(tmp_path, name):
    raw = fixture(name).read_bytes()
    for cut in (len(raw) // 3, len(raw) - 100):
        path = tmp_path / name
        path.write_bytes(raw[:cut])
        with pytest.raises(InputError):
            load_state(path)


@pytest.mark.parametrize("tensor,records,message", [
    (op_tensor("0", 12, (3, 4), (4, 1)), {"0": b"\0" * 40}, "storage 0 should hold 48 bytes"),
    (op_tensor("0", 10**12, (3, 4), (4, 1)), {"0": b"\0" * 48}, "should hold 4000000000000 bytes"),
    (op_tensor("0", 12, (3, 5), (5, 1)), {"0": b"\0" * 48}, "reaches past its storage"),
    (op_tensor("0", 12, (4,), (1,), offset=9), {"0": b"\0" * 48}, "reaches past its storage"),
    (op_tensor("0", 12, (10**6, 10**6), (0, 0)), {"0": b"\0" * 48}, "reaches past its storage"),
    (op_tensor("0", 12, (3, 4), (4, 1)), {}, "lacks record archive/data/0"),
    (op_tensor("0", 12, (3, 4), (4, 1), storage="NoSuchStorage"), {"0": b"\0" * 48},
     "references torch.NoSuchStorage"),
])
def test_storages_that_lie_are_refused(tmp_path, tensor, records, message):
    path = zip_checkpoint(tmp_path / "lie.pt", op_dict({"w": tensor}), records)
    with pytest.raises(InputError, match=message):
        load_state(path)


def test_legacy_storage_count_that_lies_is_refused(tmp_path):
    path = valid_checkpoint(tmp_path, "legacy", count=10**15)
    with pytest.raises(InputError, match="storage 0 holds 1000000000000000 elements"):
        load_state(path)


@pytest.mark.parametrize("opcodes,message", [
    (pickle.BINUNICODE + struct.pack("<I", 2**31) + b"abc", "corrupt|truncated"),
    (pickle.BINBYTES + struct.pack("<I", 2**31) + b"abc", "corrupt|truncated"),
    (op_int(1) + pickle.LONG_BINPUT + struct.pack("<I", 2**31), "memo index"),
])
def test_lengths_that_lie_are_refused_before_allocating(tmp_path, opcodes, message):
    data = pickle.PROTO + b"\x03" + opcodes + pickle.STOP
    with pytest.raises(InputError, match=message):
        load_state(zip_checkpoint(tmp_path / "len.pt", data))


def test_compressed_records_are_refused(tmp_path):
    path = zip_checkpoint(tmp_path / "z.pt", op_dict({}), compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(InputError, match="compressed"):
        load_state(path)


def test_values_rnnshrink_cannot_write_back_are_refused(tmp_path):
    data = pickle.dumps({"s": {1, 2}}, protocol=4)
    with pytest.raises(InputError, match="holds a set at /s"):
        load_state(zip_checkpoint(tmp_path / "set.pt", data))


def test_self_referencing_pickle_is_refused(tmp_path):
    loop = []
    loop.append(loop)
    with pytest.raises(InputError, match="corrupt"):
        load_state(zip_checkpoint(tmp_path / "loop.pt", pickle.dumps(loop, protocol=2)))


def test_not_a_pickle_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"\x80\x02garbage" + bytes(range(256)))
    with pytest.raises(InputError):
        load_state(path)
    buffer = io.BytesIO()
    pickle.dump(12345, buffer, protocol=2)
    path.write_bytes(buffer.getvalue() * 3)
    with pytest.raises(InputError, match="magic number"):
        load_state(path)
