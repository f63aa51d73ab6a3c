"""The Keras reader on the real fixture files, and on bad files made from them in tmp_path."""

import io
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from rnnshrink.errors import InputError, OptionError
from rnnshrink.io import keras_config, keras_h5, read
from rnnshrink.model import (
    HARD_SIGMOID_KERAS2,
    HARD_SIGMOID_KERAS3,
    SIGMOID,
    DenseLayer,
    EmbeddingLayer,
    run_stack,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# fixture file -> stem of its fixtures/expected/<stem>.npz / .json
KERAS_FILES = {
    "keras2_charlm.h5": "keras2_charlm",
    "keras2_charlm_weights.h5": "keras2_charlm_weights",
    "keras2_bidir_hardsig.h5": "keras2_bidir_hardsig",
    "keras2_cudnn.h5": "keras2_cudnn",
    "keras2_cudnn_weights.h5": "keras2_cudnn_weights",
    "keras3_charlm.keras": "keras3_charlm",
    "keras3_charlm.h5": "keras3_charlm",
    "keras3_charlm.weights.h5": "keras3_charlm.weights",
    "keras3_bidir_hardsig.h5": "keras3_bidir_hardsig",
}
CHARLM = [name for name in KERAS_FILES if "charlm" in name]


def fixture(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} not generated yet")
    return path


def expected(stem):
    arrays = np.load(FIXTURES / "expected" / f"{stem}.npz")
    meta = json.loads((FIXTURES / "expected" / f"{stem}.json").read_text())
    return arrays, meta


@pytest.mark.parametrize("name", KERAS_FILES)
def test_outputs_match_expected(name):
    model = read(fixture(name))
    arrays, meta = expected(KERAS_FILES[name])
    layers = [model.layer(entry["name"]) for entry in meta["layers"]]
    assert len(layers) == len(model.lstm_layers)
    for k, (y, h, c) in enumerate(run_stack(layers, arrays["x"])):
        for key, got in (("y", y), ("h", h), ("c", c)):
            error = np.abs(got - arrays[f"{key}{k}"]).max()
            assert error < 1e-5, f"{name} layer {k} {key}: max abs error {error:.2e}"


@pytest.mark.parametrize("name", KERAS_FILES)
def test_layer_facts_match_expected(name):
    model = read(fixture(name))
    _, meta = expected(KERAS_FILES[name])
    for entry in meta["layers"]:
        layer = model.layer(entry["name"])
        assert layer.hidden_size == entry["hidden_size"]
        assert layer.num_directions == entry["directions"]
        assert layer.input_size == entry["input_size"]
        gate = {"sigmoid": SIGMOID, "hard_sigmoid_keras2": HARD_SIGMOID_KERAS2,
                "hard_sigmoid_keras3": HARD_SIGMOID_KERAS3}[entry["gate_activation"]]
        assert layer.gate_activation == gate


@pytest.mark.parametrize("name", ["keras2_charlm.h5", "keras3_charlm.h5", "keras3_charlm.keras"])
def test_config_gives_topology_and_owned_weights(name):
    model = read(fixture(name))
    assert model.topology == "known"
    assert model.layer("lstm").inputs == ["embedding"]
    assert model.layer("lstm_1").inputs == ["lstm"]
    assert model.layer("dense").inputs == ["lstm_1"]
    assert isinstance(model.layer("embedding"), EmbeddingLayer)
    dense = model.layer("dense")
    assert isinstance(dense, DenseLayer) and dense.W.shape[1] == 128
    owned = {dense.source["kernel"], dense.source["bias"], model.layer("embedding").source["embeddings"]}
    assert not owned & set(model.tensors)
    assert model.producer.startswith("Keras 2." if "keras2" in name else "Keras 3.")


@pytest.mark.parametrize("name", ["keras2_charlm_weights.h5", "keras3_charlm.weights.h5"])
def test_weights_only_default_and_override(name):
    path = fixture(name)
    model = read(path)
    assert model.topology == "unknown"
    assert all(layer.gate_activation == SIGMOID for layer in model.lstm_layers)
    assert any("default of Keras" in note for note in model.notes)
    assert {"embedding", "dense"}.isdisjoint(layer.name for layer in model.lstm_layers)
    forced = read(path, recurrent_activation="hard_sigmoid")
    want = HARD_SIGMOID_KERAS3 if "keras3" in name else HARD_SIGMOID_KERAS2
    assert all(layer.gate_activation == want for layer in forced.lstm_layers)
    assert any("set by option" in note for note in forced.notes)


def test_old_keras_version_defaults_to_hard_sigmoid(tmp_path):
    path = tmp_path / "old.h5"
    shutil.copyfile(fixture("keras2_charlm_weights.h5"), path)
    with h5py.File(path, "r+") as f:
        f.attrs["keras_version"] = b"2.2.4"
    model = read(path)
    assert all(layer.gate_activation == HARD_SIGMOID_KERAS2 for layer in model.lstm_layers)


def test_recurrent_activation_option_is_checked_and_ignored_with_config():
    with pytest.raises(OptionError, match="recurrent_activation must be one of"):
        read(fixture("keras2_charlm.h5"), recurrent_activation="relu")
    model = read(fixture("keras2_charlm.h5"), recurrent_activation="hard_sigmoid")
    assert model.layer("lstm").gate_activation == SIGMOID
    assert any("ignored" in note for note in model.notes)


@pytest.mark.parametrize("name", ["keras2_cudnn.h5", "keras2_cudnn_weights.h5"])
def test_cudnn_layout(name):
    layer = read(fixture(name)).lstm_layers[0]
    assert layer.source["layout"] == "cudnn"
    assert layer.directions[0].bias_terms == 2
    assert layer.gate_activation == SIGMOID


@pytest.mark.parametrize("name", CHARLM)
def test_charlm_weights_equal_torch(name):
    pytest.importorskip("rnnshrink.io.torch_checkpoint")
    torch_model = read(fixture("charlm.pt"))
    keras_model = read(fixture(name))
    for mine, theirs in zip(keras_model.lstm_layers, torch_model.lstm_layers):
        for a, b in zip(mine.directions, theirs.directions):
            np.testing.assert_array_equal(a.W.materialize(), b.W.materialize())
            np.testing.assert_array_equal(a.R.materialize(), b.R.materialize())
            np.testing.assert_allclose(a.b, b.b, rtol=0, atol=1e-6)


def _copy(tmp_path, name):
    path = tmp_path / Path(name).name
    shutil.copyfile(fixture(name), path)
    return path


@pytest.mark.parametrize("size", [0.05])  # 0.5: tests/hostile/
def test_truncated_h5(tmp_path, size):
    data = fixture("keras2_charlm.h5").read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: int(len(data) * size)])
    with pytest.raises(InputError, match="truncated or corrupt HDF5"):
        read(path)


def test_truncated_keras_zip(tmp_path):
    data = fixture("keras3_charlm.keras").read_bytes()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        read(path)


def test_not_keras_h5(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(3.0)
    with pytest.raises(InputError, match="not a Keras model or weights file"):
        read(path)


def test_keras_h5_without_lstm(tmp_path):
    path = tmp_path / "dense.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.21.0"
        f.attrs["layer_names"] = np.array([b"dense"])
        group = f.create_group("dense")
        group.attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"])
        group["dense/kernel:0"] = np.zeros((4, 3), np.float32)
        group["dense/bias:0"] = np.zeros(3, np.float32)
    with pytest.raises(InputError, match="no LSTM layer"):
        read(path)


@pytest.mark.parametrize("name", ["keras3_charlm.weights.h5"])  # keras2: tests/hostile/
def test_wrong_kernel_shape(tmp_path, name):
    path = _copy(tmp_path, name)
    with h5py.File(path, "r+") as f:
        kernel = "layers/lstm/cell/vars/0"
        shape = f[kernel].shape
        del f[kernel]
        f[kernel] = np.zeros((shape[0], shape[1] - 4), np.float32)
    with pytest.raises(InputError, match="do not match"):
        read(path)


def test_refuses_bidirectional_sum(tmp_path):
    path = _copy(tmp_path, "keras2_bidir_hardsig.h5")
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for entry in config["config"]["layers"]:
            if entry["class_name"] == "Bidirectional":
                entry["config"]["merge_mode"] = "sum"
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(InputError, match="merge_mode 'sum' is not supported"):
        read(path)


def test_keras_zip_without_inner_weights(tmp_path):
    source = fixture("keras3_charlm.keras")
    path = tmp_path / "renamed.keras"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(path, "w") as out:
        for info in archive.infolist():
            name = "other.weights.h5" if info.filename == "model.weights.h5" else info.filename
            out.writestr(name, archive.read(info))
        out.writestr("extra.weights.h5", b"")
    with pytest.raises(InputError, match="no single .weights.h5"):
        keras_h5.read(path)


def test_keras3_keys_without_name_attributes(tmp_path):
    """Older Keras 3 files lack vars/@name: keys are replayed from class names."""
    source = fixture("keras3_charlm.keras")
    path = tmp_path / "renamed.keras"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(path, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename == "config.json":
                data = data.replace(b'"lstm_1"', b'"decoder"')
            if info.filename == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as f:
                    f.visititems(lambda n, o: o.attrs.__delitem__("name") if "name" in o.attrs else None)
                data = buffer.getvalue()
            out.writestr(info, data)
    original, renamed = read(source), read(path)
    decoder = renamed.layer("decoder")
    assert decoder.inputs == ["lstm"] and renamed.layer("dense").inputs == ["decoder"]
    assert decoder.source["directions"][0]["kernel"] == "layers/lstm_1/cell/vars/0"
    np.testing.assert_array_equal(decoder.directions[0].W.materialize(),
                                  original.layer("lstm_1").directions[0].W.materialize())


def test_inbound_forms():
    keras2 = [[["embedding", 0, 0, {}]]]
    keras3 = [{"args": [{"class_name": "__keras_tensor__",
                         "config": {"shape": [None, 8], "keras_history": ["lstm", 0, 0]}}],
               "kwargs": {"mask": None}}]
    assert keras_config._inbound(keras2) == ["embedding"]
    assert keras_config._inbound(keras3) == ["lstm"]
