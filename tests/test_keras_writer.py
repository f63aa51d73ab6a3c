"""The Keras drop-in writer: round trips on the fixtures, changed weights, refusals."""

import copy
import io
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from rnnshrink.errors import OptionError
from rnnshrink.io import read
from rnnshrink.io.keras_writer import write
from rnnshrink.model import Dense, DenseLayer, Model, run_stack

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KERAS_FILES = [
    "keras2_charlm.h5",
    "keras2_charlm_weights.h5",
    "keras2_bidir_hardsig.h5",
    "keras2_cudnn.h5",
    "keras2_cudnn_weights.h5",
    "keras3_charlm.keras",
    "keras3_charlm.h5",
    "keras3_charlm.weights.h5",
    "keras3_bidir_hardsig.h5",
]


def fixture(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} not generated yet")
    return path


def h5_contents(path):
    """Every group and dataset of a Keras file (the inner h5 of a zip): attrs and raw bytes."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            handle = io.BytesIO(archive.read("model.weights.h5"))
    else:
        handle = path
    found = {}
    with h5py.File(handle, "r") as f:
        found["/"] = ({k: repr(v) for k, v in f.attrs.items()}, None)

        def visit(name, obj):
            attrs = {k: repr(v) for k, v in obj.attrs.items()}
            data = (obj.dtype.str, obj.shape, obj[()].tobytes()) if isinstance(obj, h5py.Dataset) else None
            found[name] = (attrs, data)

        f.visititems(visit)
    return found


def lstm_paths(model):
    return {p for layer in model.lstm_layers for d in layer.source["directions"]
            for p in d.values() if isinstance(p, str)}


def assert_same_weights(a, b):
    for mine, theirs in zip(a.lstm_layers, b.lstm_layers, strict=True):
        for x, y in zip(mine.directions, theirs.directions, strict=True):
            np.testing.assert_array_equal(x.W.materialize(), y.W.materialize())
            np.testing.assert_array_equal(x.R.materialize(), y.R.materialize())
            np.testing.assert_array_equal(x.b, y.b)


@pytest.mark.parametrize("name", KERAS_FILES)
def test_round_trip_is_identity(tmp_path, name):
    source = fixture(name)
    model = read(source)
    out = tmp_path / source.name
    write(model, out)
    again = read(out)
    assert_same_weights(model, again)
    assert h5_contents(out) == h5_contents(source)
    assert out.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("name", KERAS_FILES)
def test_changed_lstm_weights_are_written_and_nothing_else(tmp_path, name):
    source = fixture(name)
    model = read(source)
    rng = np.random.default_rng(0)
    for layer in model.lstm_layers:
        for direction in layer.directions:
            direction.W = Dense(direction.W.values + rng.normal(0, 0.01, direction.W.shape).astype(np.float32))
            direction.R = Dense(direction.R.values * np.float32(0.5))
            if direction.bias_terms:
                direction.b = direction.b + np.float32(0.25)
    out = tmp_path / source.name
    write(model, out)
    again = read(out)
    for mine, theirs in zip(model.lstm_layers, again.lstm_layers, strict=True):
        for x, y in zip(mine.directions, theirs.directions, strict=True):
            np.testing.assert_array_equal(x.W.materialize(), y.W.materialize())
            np.testing.assert_array_equal(x.R.materialize(), y.R.materialize())
            np.testing.assert_allclose(x.b, y.b, rtol=0, atol=1e-6)   # CuDNN re-splits the bias
    x = np.random.default_rng(1).normal(size=(2, 5, model.lstm_layers[0].input_size))
    for (y1, _, _), (y2, _, _) in zip(run_stack(model.lstm_layers, x), run_stack(again.lstm_layers, x)):
        assert np.abs(y1 - y2).max() < 1e-5
    before, after = h5_contents(source), h5_contents(out)
    assert before.keys() == after.keys()
    changed = lstm_paths(model)
    for key in before:
        if key in changed:
            assert before[key][0] == after[key][0] and before[key][1][:2] == after[key][1][:2]
        else:
            assert before[key] == after[key], key


def test_cudnn_keeps_recurrent_bias_half(tmp_path):
    source = fixture("keras2_cudnn.h5")
    model = read(source)
    direction = model.lstm_layers[0].directions[0]
    direction.b = direction.b + np.float32(1.0)
    write(model, tmp_path / "out.h5")
    path = model.lstm_layers[0].source["directions"][0]["bias"]
    with h5py.File(source) as a, h5py.File(tmp_path / "out.h5") as b:
        old, new = a[path][()], b[path][()]
    half = old.size // 2
    np.testing.assert_array_equal(new[half:], old[half:])
    np.testing.assert_allclose(new[:half], old[:half] + 1.0, atol=1e-6)


@pytest.mark.parametrize("name", ["keras2_charlm.h5", "keras3_charlm.keras"])
def test_zip_members_and_dense_layers(tmp_path, name):
    source = fixture(name)
    model = read(source)
    dense = next(layer for layer in model.layers if isinstance(layer, DenseLayer))
    dense.W = Dense(dense.W.values * np.float32(2.0))
    out = tmp_path / source.name
    write(model, out)
    np.testing.assert_array_equal(read(out).layer(dense.name).W.materialize(), dense.W.materialize())
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as a, zipfile.ZipFile(out) as b:
            assert a.namelist() == b.namelist()
            for info in a.infolist():
                if info.filename != "model.weights.h5":
                    assert a.read(info) == b.read(info.filename)


def test_refuses_changed_sizes_and_leaves_no_file(tmp_path):
    model = read(fixture("keras2_charlm.h5"))
    direction = model.lstm_layers[0].directions[0]
    model.lstm_layers[0].directions[0] = copy.copy(direction)
    model.lstm_layers[0].directions[0].W = Dense(direction.W.values[:, :-1])
    out = tmp_path / "out.h5"
    with pytest.raises(OptionError, match="cannot change layer sizes"):
        write(model, out)
    assert list(tmp_path.iterdir()) == []


def test_refuses_model_not_from_keras(tmp_path):
    with pytest.raises(OptionError, match="needs a model read from a Keras file"):
        write(Model(layers=[]), tmp_path / "out.h5")
