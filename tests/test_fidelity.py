"""Calibration inputs from .npy / .npz, and the mapped layers' inputs in the traced model."""

import numpy as np
import pytest

from rnnshrink.errors import OptionError
from rnnshrink.fidelity import CalibrationInputs, compare, load_calibration
from rnnshrink.model.forward import run_layer
from rnnshrink.model.network import run_model, trace_model

from _models import stack_model

N, T = 3, 5


@pytest.fixture
def model():
    return stack_model(sizes=(6, 10, 8))  # lstm_0 reads 6 wide, lstm_1 reads lstm_0's 10


def inputs(width, seed=0):
    return np.random.default_rng(seed).normal(size=(N, T, width))


def test_npy_is_the_first_layers_inputs(model, tmp_path):
    np.save(tmp_path / "x.npy", inputs(6))
    x, description = load_calibration(tmp_path / "x.npy", model)
    np.testing.assert_array_equal(x, inputs(6))
    assert x.dtype == np.float64 and "3 sequences of length 5" in description


def test_npz_with_one_array_is_the_first_layers_inputs(model, tmp_path):
    np.savez(tmp_path / "x.npz", anything=inputs(6))
    x, _ = load_calibration(tmp_path / "x.npz", model)
    np.testing.assert_array_equal(x, inputs(6))
    assert not getattr(x, "layer_inputs", None)


def test_npz_mapping_replaces_the_mapped_layers_inputs(model, tmp_path):
    np.savez(tmp_path / "x.npz", lstm_0=inputs(6), lstm_1=inputs(10, seed=1))
    x, description = load_calibration(tmp_path / "x.npz", model)
    assert isinstance(x, CalibrationInputs) and "lstm_0, lstm_1" in description
    np.testing.assert_array_equal(x, inputs(6))
    traces = trace_model(model, x)
    np.testing.assert_array_equal(traces["lstm_1"][0], inputs(10, seed=1))
    y, _, _ = run_layer(model.layer("lstm_1"), inputs(10, seed=1))
    np.testing.assert_allclose(traces["lstm_1"][1], y)
    np.testing.assert_allclose(traces["lstm_0"][1], run_layer(model.layer("lstm_0"), inputs(6))[0])
    # the explicit argument does the same for a plain array; slicing the batch slices both
    explicit = trace_model(model, np.asarray(x), layer_inputs=x.layer_inputs)
    np.testing.assert_array_equal(explicit["lstm_1"][1], traces["lstm_1"][1])
    head = trace_model(model, x[:2])
    np.testing.assert_allclose(head["lstm_1"][1], traces["lstm_1"][1][:2])
    assert compare(model, model, x)["output_rel_error"] == 0


def test_npz_mapping_without_the_first_layer_probes_it(model, tmp_path):
    np.savez(tmp_path / "x.npz", lstm_1=inputs(10))
    x, _ = load_calibration(tmp_path / "x.npz", model)
    assert x.shape == (N, T, 6) and set(x.layer_inputs) == {"lstm_1"}
    np.testing.assert_array_equal(run_model(model, x)["lstm_1"][0],
                                  run_layer(model.layer("lstm_1"), inputs(10))[0])


@pytest.mark.parametrize("arrays, message", [
    ({"lstm_1": inputs(6)}, r"calibration inputs of lstm_1 must be numbers of shape \(N, T, 10\)"),
    ({"lstm_0": inputs(6)[0]}, r"shape \(N, T, 6\), got float64 \(5, 6\)"),
    ({"lstm_0": inputs(6), "lstm_1": inputs(10)[:, :4]}, "must share N and T"),
    ({"lstm_0": inputs(6), "lstm_9": inputs(10)},
     "'lstm_9' is not an LSTM layer of the model; its LSTM layers are lstm_0, lstm_1"),
    ({"lstm_1": np.full((N, T, 10), np.nan)}, "inputs of lstm_1 hold NaN or Inf"),
    ({"only": np.full((N, T, 6), np.inf)}, "calibration inputs hold NaN or Inf"),
    ({}, "holds no arrays"),
])
def test_bad_npz_is_refused_with_the_reason(model, tmp_path, arrays, message):
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(OptionError, match=message):
        load_calibration(tmp_path / "x.npz", model)


@pytest.mark.parametrize("x, message", [
    (inputs(7), r"shape \(N, T, 6\), got float64 \(3, 5, 7\)"),
    (np.full((N, T, 6), np.nan), "hold NaN or Inf"),
])
def test_bad_npy_is_refused_with_the_reason(model, tmp_path, x, message):
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(OptionError, match=message):
        load_calibration(tmp_path / "x.npy", model)


def test_unreadable_file_is_refused(model, tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    with pytest.raises(OptionError, match="cannot read calibration inputs"):
        load_calibration(tmp_path / "x.npy", model)
