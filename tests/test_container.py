"""The rnnshrink container: every representation round-trips exactly; bytes match the file."""

import h5py
import numpy as np
import pytest

from rnnshrink.errors import InputError
from rnnshrink.io import container, read, sniff
from rnnshrink.io.container import pack_codes, unpack_codes
from rnnshrink.model import (
    HARD_SIGMOID_KERAS3,
    Dense,
    DenseLayer,
    LSTMDirection,
    LSTMLayer,
    Model,
    Tensor,
    run_stack,
)
from rnnshrink.model.weights import LowRank, Quantized, Sparse


def weight_of_each_kind(rng, rows, cols):
    matrix = rng.standard_normal((rows, cols))
    mask = rng.random((rows, cols)) > 0.7
    codes = np.clip(np.round(matrix * 2), -3, 3).astype(np.int8)
    return [
        Dense(matrix.astype(np.float32)),
        Dense(matrix.astype(np.float16).astype(np.float32), stored_dtype="float16"),
        LowRank(Dense(rng.standard_normal((rows, 2))), Quantized(codes[:2], np.ones((2, 1)), 3)),
        Sparse.from_dense(matrix, mask),
        Quantized(codes, rng.random((rows, -(-cols // 4))) + 0.1, 3, group=4),
        Quantized(np.where(mask, codes, 0), rng.random((1, 1)), 3, mask=mask),
    ]


def model_with(weight, rng):
    hidden4, width = weight.shape
    hidden = hidden4 // 4
    direction = LSTMDirection(W=weight, R=Dense(rng.standard_normal((hidden4, hidden))),
                              b=rng.standard_normal(hidden4), bias_terms=2)
    layer = LSTMLayer("lstm", [direction], gate_activation=HARD_SIGMOID_KERAS3, clip=3.0,
                      source={"bias_hh": np.arange(4.0), "names": ["a", "b"]})
    head = DenseLayer("head", Dense(rng.standard_normal((3, hidden))), np.zeros(3),
                      inputs=["lstm"], source={"tensors": ["head.weight"]})
    tensors = {"embed.weight": Tensor("embed.weight", np.arange(12, dtype=np.int64).reshape(3, 4))}
    return Model([layer, head], tensors, format="torch-zip", producer="test", topology="partial")


@pytest.mark.parametrize("kind", range(6))
def test_round_trip_is_exact_and_bytes_match_the_file(tmp_path, kind):
    rng = np.random.default_rng(kind)
    weight = weight_of_each_kind(rng, 16, 10)[kind]
    model = model_with(weight, rng)
    path = tmp_path / "m.h5"
    container.write(model, path, recipe=["quant:bits=3"], source_sha256="abc")
    assert sniff(path) == "rnnshrink"
    back = read(path)
    layer, restored = back.lstm_layers[0], back.lstm_layers[0].directions[0].W
    assert restored.kind == weight.kind
    np.testing.assert_array_equal(restored.materialize(), weight.materialize())
    assert restored.nbytes == weight.nbytes
    with h5py.File(path) as f:
        group = f["layers/0000/d0/W"]
        stored = []
        group.visititems(lambda _, item: stored.append(item.id.get_storage_size())
                         if isinstance(item, h5py.Dataset) else None)
    assert sum(stored) == weight.nbytes
    assert layer.gate_activation == HARD_SIGMOID_KERAS3 and layer.clip == 3.0
    np.testing.assert_array_equal(layer.source["bias_hh"], np.arange(4.0))
    assert back.meta["recipe"] == ["quant:bits=3"]
    np.testing.assert_array_equal(back.tensors["embed.weight"].data, model.tensors["embed.weight"].data)
    x = rng.standard_normal((2, 3, 10))
    np.testing.assert_array_equal(run_stack(back.lstm_layers, x)[0][0], run_stack(model.lstm_layers, x)[0][0])


@pytest.mark.parametrize("bits", range(2, 9))
def test_code_packing_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(-(2 ** (bits - 1) - 1), 2 ** (bits - 1), size=777).astype(np.int8)
    packed = pack_codes(codes, bits)
    assert packed.size == -(-777 * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits, 777), codes)


def test_damaged_container_is_refused(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.attrs["rnnshrink_format"] = 1
    with pytest.raises(InputError, match="damaged rnnshrink container"):
        read(path)
