"""The rnnshrink container: every representation round-trips exactly; bytes match the file."""

import h5py
import numpy as np
import pytest

from rnnshrink.errors import InputError
from rnnshrink.io import container, read, sniff
from rnnshrink.io.container import pack_codes, unpack_codes
from rnnshrink.model import (
    HARD_SIGMOID_KERAS2,
    HARD_SIGMOID_KERAS3,
    Dense,
    DenseLayer,
    LSTMDirection,
    LSTMLayer,
    Model,
    Tensor,
    run_stack,
)
from rnnshrink.model.gated import SLIM_VARIANTS, Gated, bias_mask
from rnnshrink.model import EntropyCoded
from rnnshrink.model.weights import LowRank, Quantized, Sparse
from rnnshrink.pipeline import Pipeline, parse_step
from rnnshrink.transforms import Context

from _models import stack_model


def weight_of_each_kind(rng, rows, cols):
    matrix = rng.standard_normal((rows, cols))
    mask = rng.random((rows, cols)) > 0.7
    codes = np.clip(np.round(matrix * 2), -3, 3).astype(np.int8)
    wide = np.round(matrix * 40).astype(np.int64)
    wide[0, 0] = 2**30  # an escape
    exponents = rng.integers(-128, 128, rows), rng.integers(-128, 128, cols)
    return [
        Dense(matrix.astype(np.float32)),
        Dense(matrix.astype(np.float16).astype(np.float32), stored_dtype="float16"),
        LowRank(Dense(rng.standard_normal((rows, 2))), Quantized(codes[:2], np.ones((2, 1)), 3)),
        Sparse.from_dense(matrix, mask),
        Quantized(codes, rng.random((rows, -(-cols // 4))) + 0.1, 3, group=4),
        Quantized(np.where(mask, codes, 0), rng.random((1, 1)), 3, mask=mask),
        Quantized(codes, rng.random((rows, 1)) + 0.1, 3, step_dtype="float32"),
        EntropyCoded(wide, 1e-3, *exponents),
        EntropyCoded(np.where(mask, wide, 0), 0.01, np.zeros(rows), np.arange(cols), mask),
        LowRank(EntropyCoded(codes[:, :2], 0.5, np.arange(rows), [0, 1]),
                EntropyCoded(codes[:2], 0.25, [3, -3], np.zeros(cols))),
        Gated([Dense(matrix[:4].astype(np.float16), "float16"), None,
               Quantized(codes[8:12], rng.random((4, 1)) + 0.1, 3), None], (rows, cols)),
    ]


KINDS = len(weight_of_each_kind(np.random.default_rng(0), 16, 10))


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


@pytest.mark.parametrize("kind", range(KINDS))
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
        version = f.attrs["rnnshrink_format"]
    assert sum(stored) == weight.nbytes
    assert version == (2 if "'coded'" in str(weight.describe()) else 1)
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


@pytest.mark.parametrize("variant", SLIM_VARIANTS)
def test_slim_variants_round_trip_storing_only_their_parameters(tmp_path, variant):
    model = stack_model(sizes=(6, 8, 8), directions=(1, 2), gate=HARD_SIGMOID_KERAS2)
    x = np.random.default_rng(0).standard_normal((3, 5, 6))
    steps = [parse_step(f"slim:variant={variant}"), parse_step("quant:bits=8,layers=lstm_1")]
    model = Pipeline(steps).run(model, Context(inputs=x))
    container.write(model, tmp_path / "m.h5")
    back = read(tmp_path / "m.h5")
    for layer, restored in zip(model.lstm_layers, back.lstm_layers):
        assert restored.variant == variant and restored.params == layer.params
        for d, r in zip(layer.directions, restored.directions):
            for role in ("W", "R"):
                assert getattr(r, role).describe() == getattr(d, role).describe()
                np.testing.assert_array_equal(getattr(r, role).materialize(),
                                              getattr(d, role).materialize())
            np.testing.assert_array_equal(r.b, d.b)
            assert r.bias_terms == d.bias_terms == 1
    with h5py.File(tmp_path / "m.h5") as f:
        for k, layer in enumerate(model.lstm_layers):
            group = f[f"layers/{k + 1:04d}"]  # after the embedding
            for key, direction in zip(("d0", "d1"), layer.directions):
                assert group[key].attrs["variant"] == variant
                assert group[key]["b"].shape == (int(bias_mask(variant, 8).sum()),)
                stored = []
                group[key]["R"].visititems(lambda _, item: stored.append(item.nbytes)
                                           if isinstance(item, h5py.Dataset) else None)
                assert sum(stored) == direction.R.nbytes
    np.testing.assert_array_equal(run_stack(back.lstm_layers, x)[-1][0],
                                  run_stack(model.lstm_layers, x)[-1][0])


def test_coded_weights_read_back_to_their_codes(tmp_path):
    rng = np.random.default_rng(3)
    weight = weight_of_each_kind(rng, 16, 10)[8]
    container.write(model_with(weight, rng), tmp_path / "m.h5")
    restored = read(tmp_path / "m.h5").lstm_layers[0].directions[0].W
    np.testing.assert_array_equal(restored.codes, weight.codes)
    np.testing.assert_array_equal(restored.mask, weight.mask)
    assert restored.delta == weight.delta and restored.coded == weight.coded


@pytest.mark.parametrize("part, damage", [("stream", "truncate"), ("header", "crc"),
                                          ("exponents", "truncate"), ("escapes", "truncate")])
def test_damaged_coded_weight_is_refused(tmp_path, part, damage):
    rng = np.random.default_rng(4)
    path = tmp_path / "m.h5"
    container.write(model_with(weight_of_each_kind(rng, 16, 10)[7], rng), path)
    with h5py.File(path, "r+") as f:
        group = f["layers/0000/d0/W"]
        data = group[part][()]
        if damage == "crc":
            data[-1] ^= 1
        del group[part]
        group.create_dataset(part, data=data[:-1] if damage == "truncate" else data)
    with pytest.raises(InputError, match="damaged rnnshrink container"):
        read(path)
