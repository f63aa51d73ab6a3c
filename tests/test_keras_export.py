"""``export_keras``: Keras 3 h5 files checked without Keras — read back by rnnshrink's own Keras
reader (weights, activations, topology, outputs) and compared with the Keras 3 fixtures' layout.
``tests/manual/check_keras_export.py`` loads the same files in real Keras 3."""

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import rnnshrink
from rnnshrink.errors import OptionError
from rnnshrink.io.keras_export import export_keras
from rnnshrink.model import Activation, DenseLayer, EmbeddingLayer, run_stack

from _models import fixture, model_of

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TOLERANCE = 1e-6
CASES = [
    ("keras3_charlm.h5", None),
    ("keras2_charlm.h5", None),
    ("charlm.pt", None),
    ("charlm.onnx", None),
    ("keras2_charlm.h5", "iss:keep=0.5"),
    ("charlm.pt", "iss:keep=0.5"),
    ("keras2_charlm.h5", "quant:bits=4,group=64"),
    ("charlm.pt", "prune:sparsity=0.5"),
    ("keras3_bidir_hardsig.h5", None),
    ("onnx_bidir.onnx", None),
    ("keras2_charlm.h5", "slim:variant=LSTM5a"),
    ("keras3_bidir_hardsig.h5", "slim:variant=LSTM3"),
]


def layout(path, skip=("model_config",)):
    """Every object of an h5 file: its attributes (``skip`` left out at the root), and for
    datasets shape, dtype and values."""
    found = {}
    with h5py.File(path, "r") as h5:
        def visit(name, obj):
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()
                     if not (name == "/" and k in skip)}
            if isinstance(obj, h5py.Dataset):
                attrs["dataset"] = (obj.shape, obj.dtype.str, obj[()].tobytes())
            found[name] = attrs
        visit("/", h5)
        h5.visititems(visit)
    return found


@pytest.mark.parametrize("name,step", CASES)
def test_read_back_equals_the_exported_model(name, step, tmp_path):
    model = model_of(name, step)
    description = export_keras(model, tmp_path / "out.h5")
    back = rnnshrink.read(tmp_path / "out.h5")
    assert (back.format, back.producer, back.topology) == (
        "keras-h5", "Keras 3.15.1 (tensorflow)", "known")
    assert back.notes == []
    names = {entry["source"]: entry["name"] for entry in description["layers"]}
    for old, new in zip(model.lstm_layers, back.lstm_layers, strict=True):
        assert new.name == names[old.name]
        for attribute in ("gate_activation", "cell_activation", "hidden_activation",
                          "reverse_only", "input_size", "hidden_size", "num_directions"):
            assert getattr(new, attribute) == getattr(old, attribute), attribute
        for a, b in zip(old.directions, new.directions, strict=True):
            for role in ("W", "R"):
                np.testing.assert_array_equal(
                    b.matrices[role].materialize(), getattr(a, role).materialize(np.float32))
            np.testing.assert_array_equal(b.b, a.b.astype(np.float32))
    x = np.random.default_rng(0).normal(size=(3, 9, model.lstm_layers[0].input_size))
    for found, expected in zip(run_stack(back.lstm_layers, x), run_stack(model.lstm_layers, x)):
        for a, b in zip(found, expected):
            assert np.abs(a - b).max() < TOLERANCE
    for kind in (EmbeddingLayer, DenseLayer):
        exported = [entry["source"] for entry in description["layers"]
                    if entry["class"] == kind.__name__.removesuffix("Layer")]
        assert [layer.name for layer in back.layers if isinstance(layer, kind)] == [
            names[source] for source in exported]
        for source in exported:
            old, new = model.layer(source), back.layer(names[source])
            if kind is EmbeddingLayer:
                np.testing.assert_array_equal(new.table, old.table)
            else:
                np.testing.assert_array_equal(new.W.materialize(), old.W.materialize(np.float32))
                np.testing.assert_array_equal(new.b, old.b)
                assert new.activation == (old.activation or Activation("linear"))


@pytest.mark.parametrize("name", ["keras3_charlm.h5", "keras3_bidir_hardsig.h5"])
def test_file_has_the_layout_keras3_writes(name, tmp_path):
    """Same groups, attributes, dataset names, dtypes and values as the Keras 3 fixture."""
    export_keras(model_of(name), tmp_path / "out.h5")
    assert layout(tmp_path / "out.h5") == layout(fixture(name))
    with h5py.File(tmp_path / "out.h5") as mine, h5py.File(fixture(name)) as keras:
        for group in ("/", "/model_weights"):
            for key, value in keras[group].attrs.items():
                assert mine[group].attrs.get_id(key).dtype == keras[group].attrs.get_id(key).dtype
        config = json.loads(mine.attrs["model_config"])
        expected = json.loads(keras.attrs["model_config"])
    expected["config"]["name"] = "rnnshrink"
    if name == "keras3_bidir_hardsig.h5":  # the fixture's last LSTM returns its last step only
        lstm, dense = expected["config"]["layers"][2:]
        lstm["config"]["return_sequences"] = True
        dense["inbound_nodes"][0]["args"][0]["config"]["shape"] = [None, None, 12]
    assert config == expected


def test_torch_model_layout_follows_the_keras3_naming_scheme(tmp_path):
    description = export_keras(model_of("charlm.pt"), tmp_path / "out.h5")
    assert description["input"] == {
        "name": "input_layer", "shape": [None, None, 16], "dtype": "float32"}
    with h5py.File(tmp_path / "out.h5") as h5:
        assert sorted(h5.attrs) == ["backend", "keras_version", "model_config"]
        weights = h5["model_weights"]
        assert list(weights.attrs["layer_names"]) == ["input_layer", "lstm_l0", "lstm_l1"]
        assert sorted(weights) == ["input_layer", "lstm_l0", "lstm_l1", "top_level_model_weights"]
        for layer in ("lstm_l0", "lstm_l1"):
            paths = [f"{layer}/lstm_cell/{key}" for key in ("kernel", "recurrent_kernel", "bias")]
            assert list(weights[layer].attrs["weight_names"]) == paths
            assert all(weights[layer][p].dtype == np.float32 for p in paths)


def test_names_keras_refuses_are_replaced(tmp_path):
    description = export_keras(model_of("charlm.onnx"), tmp_path / "out.h5")
    assert [(e["name"], e["source"]) for e in description["layers"]] == [
        ("lstm", "/lstm/LSTM"), ("lstm_1", "/lstm/LSTM_1"), ("dense", "/head/MatMul")]


def test_compressed_matrices_are_listed_as_materialized(tmp_path):
    model = model_of("keras2_charlm.h5", "quant:bits=4,group=64")
    description = export_keras(model, tmp_path / "o.h5")
    assert len(description["materialized"]) == 4
    assert description["materialized"][1] == (
        "lstm forward R: quantized (bits=4, scales=group64) -> dense float32")
    assert "load_model" in description["snippet"] and "int32 token ids" in description["snippet"]


def test_reverse_only_last_layer_is_go_backwards(tmp_path):
    model = model_of("charlm.pt")
    last = dataclasses.replace(model.lstm_layers[1], reverse_only=True)
    description = export_keras(model.replace_layer("lstm_l1", last), tmp_path / "out.h5")
    assert description["layers"][1]["args"]["go_backwards"] is True
    assert "reversed time order" in description["notes"][0]
    assert rnnshrink.read(tmp_path / "out.h5").lstm_layers[1].reverse_only


@pytest.mark.parametrize("change,message", [
    ({"clip": 3.0}, "layer lstm_l0: Keras LSTM layers have no clip"),
    ({"reverse_only": True}, "layer lstm_l0: reverse_only becomes go_backwards"),
    ({"hidden_activation": Activation("relu")},
     "cell_activation is tanh and hidden_activation relu"),
    ({"gate_activation": Activation("hard_sigmoid", 0.25, 0.45)},
     r"gate_activation hard_sigmoid\(0.25x\+0.45\) has no Keras 3 name"),
    ({"cell_activation": Activation("scaled_tanh", 2.0, 0.5)},
     r"cell_activation scaled_tanh\(2,0.5\) has no Keras equivalent"),
])
def test_refuses_what_keras_cannot_express(change, message, tmp_path):
    model = model_of("charlm.pt")
    layer = dataclasses.replace(model.lstm_layers[0], **change)
    if "cell_activation" in change:
        layer = dataclasses.replace(layer, hidden_activation=change["cell_activation"])
    with pytest.raises(OptionError, match=message):
        export_keras(model.replace_layer("lstm_l0", layer), tmp_path / "out.h5")
    assert list(tmp_path.iterdir()) == []


def test_refuses_keras2_hard_sigmoid_and_projections(tmp_path):
    keras2 = r"layer bidirectional: gate_activation hard_sigmoid\(0.2x\+0.5\) \(Keras 2's form\)"
    with pytest.raises(OptionError, match=keras2 + " has no Keras 3 name"):
        export_keras(model_of("keras2_bidir_hardsig.h5"), tmp_path / "out.h5")
    projection = r"layer lstm: a projection \(proj_size=32\) has no Keras equivalent"
    with pytest.raises(OptionError, match=projection + r".*rnnshrink compress --format same"):
        export_keras(model_of("keras2_charlm.h5", "svd:rank=32"), tmp_path / "out.h5")
    assert list(tmp_path.iterdir()) == []
