"""The safetensors reader and writer: fixtures, and byte-exact round trips checked by the
``safetensors`` package. Headers that lie are in the hostile corpus (``tests/hostile/``)."""

import json
import struct

import numpy as np
import pytest

from hostile.archives import LSTM_HEADER
from rnnshrink.errors import InputError, OptionError
from rnnshrink.io import read, safetensors_file, torch_checkpoint
from rnnshrink.model import Tensor
from test_torch_checkpoint import TOLERANCE, expected, fixture, max_error

FILES = ["charlm.safetensors", "torch_bidir_proj.safetensors"]


@pytest.mark.parametrize("name", FILES)
def test_fixture_matches_expected_outputs(name):
    model = read(fixture(name))
    assert model.format == "safetensors" and model.producer == "pytorch"
    assert model.meta["safetensors_metadata"] == {"format": "pt"}
    assert max_error(model, expected(name)[0]) < TOLERANCE


@pytest.mark.parametrize("name", FILES)
def test_same_model_as_the_torch_file(name):
    ours = read(fixture(name))
    theirs = read(fixture(name.replace(".safetensors", ".pt")))
    assert [layer.name for layer in ours.layers] == [layer.name for layer in theirs.layers]
    for a, b in zip(ours.lstm_layers, theirs.lstm_layers):
        for x, y in zip(a.directions, b.directions):
            assert all(np.array_equal(x.matrices[r].materialize(), y.matrices[r].materialize())
                       for r in x.matrices)
            assert np.array_equal(x.b, y.b)
    assert {n: t.data.tobytes() for n, t in ours.tensors.items()} == {
        n: t.data.tobytes() for n, t in theirs.tensors.items()}


@pytest.mark.parametrize("name", FILES)
def test_round_trip_is_byte_identical(tmp_path, name):
    output = tmp_path / "out.safetensors"
    safetensors_file.write(read(fixture(name)), output)
    assert output.read_bytes() == fixture(name).read_bytes()


def test_every_dtype_round_trips(tmp_path):
    """A file the safetensors package wrote (the independent implementation) comes back
    byte for byte."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4).to(torch.bfloat16)
    tensors = {k: v.contiguous() for k, v in lstm.state_dict().items()}
    tensors.update({str(dt): torch.ones(2, 3, dtype=dt) for dt in (
        torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
        torch.int8, torch.uint8, torch.bool, torch.uint16, torch.float8_e4m3fn)})
    tensors["scalar"] = torch.tensor(1.5)
    tensors["empty"] = torch.zeros(0, 4)
    path = tmp_path / "made.safetensors"
    st.save_file(tensors, path, metadata={"note": "x"})
    model = read(path)
    assert model.lstm_layers[0].directions[0].W.stored_dtype == "bfloat16"
    output = tmp_path / "out.safetensors"
    safetensors_file.write(model, output)
    assert output.read_bytes() == path.read_bytes()
    again = st.load_file(output)
    assert list(again) == list(st.load_file(path))
    as_bytes = {k: t.reshape(-1).view(torch.uint8) for k, t in tensors.items() if t.numel()}
    assert all(torch.equal(again[k].reshape(-1).view(torch.uint8), as_bytes[k]) for k in as_bytes)


def test_torch_checkpoint_written_as_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    path = fixture("torch_checkpoint.pth")
    output = tmp_path / "state.safetensors"
    safetensors_file.write(read(path), output)
    state = torch.load(path, weights_only=True)["model_state_dict"]
    written = st.load_file(output)
    assert list(written) == list(state)  # the state dict alone; optimizer state has no place here
    assert all(torch.equal(written[k], state[k]) for k in state)


def test_safetensors_model_written_as_torch_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    path = fixture("torch_bidir_proj.safetensors")
    output = tmp_path / "state.pt"
    torch_checkpoint.write(read(path), output)
    state = torch.load(output, weights_only=True)
    original = torch.load(fixture("torch_bidir_proj.pt"), weights_only=True)
    assert sorted(state) == sorted(original)
    assert all(torch.equal(state[k], original[k]) for k in state)


def raw_file(path, header, data=b"", length=None):
    """A file from a header dict and data bytes; ``length`` overrides the declared size."""
    text = json.dumps(header).encode() if isinstance(header, dict) else header
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def test_handmade_file_reads(tmp_path):
    model = read(raw_file(tmp_path / "ok.safetensors", LSTM_HEADER, bytes(160)))
    assert model.lstm_layers[0].hidden_size == 2 and model.producer == "unknown"


def test_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    text = json.dumps(LSTM_HEADER).encode()
    text += b" " * (0x180 - len(text))
    model = read(raw_file(tmp_path / "x80.safetensors", text, bytes(160)))
    assert model.format == "safetensors"


@pytest.mark.parametrize("cut", [3, 8, 20])
def test_truncated_file_is_refused(tmp_path, cut):
    raw = raw_file(tmp_path / "ok.safetensors", LSTM_HEADER, bytes(160)).read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[:cut] if cut < 9 else raw[:-cut])
    with pytest.raises(InputError):
        safetensors_file.read(path)


def test_writer_refuses_dtypes_safetensors_lacks(tmp_path):
    header = {**LSTM_HEADER, "c": {"dtype": "F32", "shape": [2], "data_offsets": [160, 168]}}
    model = read(raw_file(tmp_path / "ok.safetensors", header, bytes(168)))
    model.tensors["c"] = Tensor("c", np.zeros(2, np.complex128))
    with pytest.raises(OptionError, match="complex128, which safetensors cannot store"):
        safetensors_file.write(model, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
