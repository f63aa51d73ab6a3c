"""The safe torch.save reader and writer: agreement with torch, and damaged files refused.

Hostile pickles (code, persistent ids, lying lengths and storages) are in the corpus,
``tests/hostile/pickles.py``, run by ``tests/test_hostile.py``.
"""

import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from hostile.pickles import legacy_checkpoint, op_dict, op_tensor, zip_checkpoint
from rnnshrink.errors import InputError
from rnnshrink.io.torch_pickle import StoredTensor, load_state
from rnnshrink.io.torch_writer import save_state
from test_torch_checkpoint import TORCH_FILES, fixture

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


# --- damaged files (the hostile ones are in tests/hostile/) -------------------------------

def test_zip_without_data_pkl_is_refused(tmp_path):
    good = zip_checkpoint(tmp_path / "good.pt", op_dict({}))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes().replace(b"archive/data.pkl", b"archive/dat4.pkl"))
    with pytest.raises(InputError, match="no PyTorch data.pkl"):
        load_state(bad)


def valid_checkpoint(tmp_path, layout):
    weights = np.arange(12, dtype=np.float32)
    data = op_dict({"w": op_tensor("0", 12, (3, 4), (4, 1))})
    if layout == "zip":
        return zip_checkpoint(tmp_path / "ok.pt", data, {"0": weights.tobytes()})
    return legacy_checkpoint(tmp_path / "ok.pt", data, {"0": weights})


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
