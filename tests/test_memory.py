"""Reading a checkpoint allocates a bounded multiple of its size (``bench/bench_memory.py``
measures peak RSS on a 400 MB model; this is the small, traced version for CI).

A 2-layer float32 LSTM of about 8 MB is written in each format; ``tracemalloc`` (which sees
numpy's allocations, not file pages mapped read-only) bounds the peak allocated while
:func:`rnnshrink.read` reads it. PyTorch and safetensors weights are views of the mapped file;
ONNX weights (external data) are mapped too, then reordered to the IR's gate order (one
copy); Keras weights come out of HDF5 (one copy).
"""

import tracemalloc

import numpy as np
import onnx
import pytest

from rnnshrink import api, read
from rnnshrink.io import safetensors_file
from rnnshrink.io.torch_pickle import StoredTensor
from rnnshrink.io.torch_writer import save_state

HIDDEN = 360  # 2 layers x 2 matrices x (4 * 360 x 360) float32: about 8 MB


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    rng = np.random.default_rng(0)
    state = {}
    for layer in range(2):
        for role, shape in (("weight_ih", (4 * HIDDEN, HIDDEN)), ("weight_hh", (4 * HIDDEN, HIDDEN)),
                            ("bias_ih", (4 * HIDDEN,)), ("bias_hh", (4 * HIDDEN,))):
            data = rng.standard_normal(shape, np.float32) * np.float32(0.05)
            state[f"lstm.{role}_l{layer}"] = StoredTensor(data, "float32")
    files = {"pt": folder / "m.pt"}
    save_state(state, files["pt"])
    model = read(files["pt"])
    files["safetensors"] = folder / "m.safetensors"
    safetensors_file.write(model, files["safetensors"])
    files["onnx"] = folder / "m.onnx"
    api.convert_file(files["pt"], "onnx", folder / "inline.onnx")
    onnx.save_model(onnx.load(folder / "inline.onnx"), files["onnx"], save_as_external_data=True,
                    location="m.onnx.data")
    files["h5"] = folder / "m.h5"
    api.convert_file(files["pt"], "keras", files["h5"])
    return files


BOUNDS = {"pt": 0.25, "safetensors": 0.25, "onnx": 1.3, "h5": 1.3}  # peak / weight bytes


@pytest.mark.parametrize("fmt", BOUNDS)
def test_reading_allocates_a_bounded_multiple_of_the_weights(checkpoints, fmt):
    weights = 2 * 2 * 4 * HIDDEN * HIDDEN * 4
    tracemalloc.start()
    try:
        model = read(checkpoints[fmt])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert model.lstm_layers[1].hidden_size == HIDDEN
    assert peak < BOUNDS[fmt] * weights, f"{peak / weights:.2f} x the weights"
