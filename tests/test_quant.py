"""k-bit quantization (methods.md §5): QuantizedLSTM's quantizer, scales, clip, composition."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rnnshrink.errors import OptionError
from rnnshrink.fidelity import probe_inputs
from rnnshrink.model import Dense
from rnnshrink.model.weights import LowRank, Quantized, Sparse
from rnnshrink.transforms import MagnitudePrune, Quantize
from rnnshrink.transforms.quant import (
    _blocks,
    block_steps,
    quantize_codes,
    quantize_matrix,
    step_size,
)

from _models import apply_checked, assert_contract, charlm, stack_model

BITS = [2, 3, 4, 5, 6, 7, 8]


def methods_q(x, bits, a):
    """methods.md §5 written out: s = 2^(b-1); y = clamp(x/a, -1+1/s, 1-1/s); round(y s)/s a."""
    s = 2.0 ** (bits - 1)
    y = np.clip(x / a, -1 + 1 / s, 1 - 1 / s)
    return np.round(y * s) / s * a


def test_hand_computed_two_bits():
    q = quantize_matrix(np.array([[0.9, -0.4, 0.1, 1.0]]), bits=2, scales="tensor")
    # a = max|x| = 1, s = 2: y = [0.5, -0.4, 0.1, 0.5], y s = [1, -0.8, 0.2, 1].
    np.testing.assert_array_equal(q.codes, [[1, -1, 0, 1]])
    np.testing.assert_array_equal(q.steps, [[0.5]])
    np.testing.assert_array_equal(q.materialize(), [[0.5, -0.5, 0.0, 0.5]])


def test_hand_computed_three_bits():
    q = quantize_matrix(np.array([[0.9, -0.4, 0.1, 1.0]]), bits=3, scales="tensor")
    # s = 4: y = [0.75, -0.4, 0.1, 0.75], y s = [3, -1.6, 0.4, 3].
    np.testing.assert_array_equal(q.codes, [[3, -2, 0, 3]])
    np.testing.assert_array_equal(q.materialize(), [[0.75, -0.5, 0.0, 0.75]])


def test_round_half_to_even():
    # step 0.25 (a = 1, 3 bits): 0.125 / 0.25 = 0.5 -> 0, 0.375 / 0.25 = 1.5 -> 2.
    q = quantize_matrix(np.array([[0.125, 0.375, -0.125, 1.0]]), bits=3, scales="tensor")
    np.testing.assert_array_equal(q.codes, [[0, 2, 0, 3]])


matrices = arrays(np.float64, st.tuples(st.integers(1, 9), st.integers(1, 40)),
                  elements=st.floats(-4, 4, allow_subnormal=False))


@settings(max_examples=150, deadline=None)
@given(x=matrices, bits=st.sampled_from(BITS), scales=st.sampled_from(["tensor", "row", "group"]),
       group=st.integers(1, 16))
def test_quantizer_properties(x, bits, scales, group):
    q = quantize_matrix(x, bits, scales, group)
    s = 2 ** (bits - 1)
    step = q.step_matrix()
    values = q.materialize()
    # The stored step is float16 and materializing gives exactly methods.md's Q with a = s·step
    # (a zero block has step 1 and quantizes to 0 either way).
    np.testing.assert_array_equal(step, step.astype(np.float16))
    np.testing.assert_array_equal(values, methods_q(x, bits, s * step))
    # Codes in [-(s-1), s-1]: at most 2^b - 1 levels per block.
    assert np.abs(q.codes.astype(int)).max() <= s - 1
    blocks = _blocks(values, scales, group)
    for block in blocks.reshape(-1, blocks.shape[-1]):
        assert np.unique(block).size <= 2**bits - 1
    # Half a step inside the clip range |x| <= (s - 1/2) step, one step beyond (up to max|x|).
    error = np.abs(x - values)
    inside = np.abs(x) <= (s - 0.5) * step
    assert np.all(error[inside] <= step[inside] / 2 * (1 + 1e-12))
    assert np.all(error <= step * (1 + 1e-12))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_matches_methods_formula_on_random_matrix(bits):
    x = np.random.default_rng(bits).normal(0, 0.2, (12, 50))
    q = quantize_matrix(x, bits, "group", group=16)
    a = 2 ** (bits - 1) * q.step_matrix()
    np.testing.assert_array_equal(q.materialize(), methods_q(x, bits, a))


def test_mse_clip_never_worse_than_max_clip():
    rng = np.random.default_rng(1)
    x = rng.standard_t(3, (64, 128)) * 0.1  # heavy tails: clipping pays
    for bits in (2, 3, 4):
        blocks = _blocks(x, "group", 32)
        err = {}
        for clip in ("max", "mse"):
            step = block_steps(blocks, bits, clip)
            values = quantize_codes(blocks, step, bits) * step[..., None]
            err[clip] = ((blocks - values) ** 2).sum(-1)
        assert np.all(err["mse"] <= err["max"])
        assert err["mse"].sum() < err["max"].sum()
        q_mse = quantize_matrix(x, bits, "group", 32, clip="mse")
        q_max = quantize_matrix(x, bits, "group", 32, clip="max")
        assert ((x - q_mse.materialize()) ** 2).sum() <= ((x - q_max.materialize()) ** 2).sum()
        assert np.all(q_mse.steps <= q_max.steps)


def test_byte_count_four_bit_group_64():
    x = np.random.default_rng(0).normal(size=(512, 128))
    q = quantize_matrix(x, 4, "group", 64)
    assert q.steps.shape == (512, 2)
    assert q.nbytes == 512 * 128 * 4 // 8 + 512 * 2 * 2


def test_zero_block_gets_unit_step_and_zero_codes():
    x = np.zeros((3, 8))
    x[1] = np.linspace(-1, 1, 8)
    q = quantize_matrix(x, 4, "row")
    np.testing.assert_array_equal(q.steps[[0, 2], 0], [1.0, 1.0])
    assert not q.codes[[0, 2]].any()
    np.testing.assert_array_equal(q.materialize()[[0, 2]], 0)


def test_per_tensor_row_and_group_steps_shapes():
    x = np.random.default_rng(0).normal(size=(8, 20))
    assert quantize_matrix(x, 4, "tensor").steps.shape == (1, 1)
    assert quantize_matrix(x, 4, "row").steps.shape == (8, 1)
    q = quantize_matrix(x, 4, "group", 6)
    assert q.steps.shape == (8, 4) and q.group == 6
    # The last group (columns 18, 19) has its own step: its max|x| over 2 columns.
    np.testing.assert_array_equal(q.steps[:, 3], step_size(np.abs(x[:, 18:]).max(1), 4))


def test_step_is_the_smallest_float16_covering_a():
    amax = np.random.default_rng(0).uniform(0.01, 3, 1000)
    step = step_size(amax, 4).astype(np.float16)
    assert np.all(step.astype(np.float64) * 8 >= amax)
    below = np.nextafter(step, np.float16(0)).astype(np.float64)
    assert np.all(below * 8 < amax)
    assert step_size(np.array([0.0, 1e-12]), 8).tolist() == [1.0, 2.0**-24]  # zero block: 1


# ---- the transform -------------------------------------------------------------------------


RECIPES = [dict(bits=8), dict(bits=4, group=64), dict(bits=4, group=64, clip="mse"),
           dict(bits=3, group=32), dict(bits=2, scales="tensor"), dict(bits=16)]


@pytest.mark.parametrize("params", RECIPES, ids=lambda p: Quantize(**p).spec())
def test_contract_on_charlm(params):
    model = charlm()
    out, error = apply_checked(Quantize(**params), model)
    # Measured 0.0085 / 0.12 / 0.23 (8 / 4 / 3 bits); a plain per-row round to max/127 gives
    # 0.0089 at 8 bits on the same probes: the trained LM is this sensitive.
    assert error < {16: 1e-3, 8: 0.02, 4: 0.25, 3: 0.5, 2: np.inf}[params["bits"]]
    kinds = {w.kind for layer in out.lstm_layers for d in layer.directions
             for w in d.matrices.values()}
    assert kinds == ({"dense"} if params["bits"] == 16 else {"quantized"})
    for layer, old in zip(out.lstm_layers, model.lstm_layers):
        for d, d0 in zip(layer.directions, old.directions):
            np.testing.assert_array_equal(d.b, d0.b)  # biases stay float


def test_float16_storage():
    model = stack_model()
    out = Quantize(bits=16).apply(model)
    for layer, old in zip(out.lstm_layers, model.lstm_layers):
        for role, w in layer.directions[0].matrices.items():
            w0 = old.directions[0].matrices[role]
            assert w.stored_dtype == "float16" and w.nbytes * 2 == w0.nbytes
            np.testing.assert_array_equal(w.materialize(), w0.values.astype(np.float16))


def test_projection_is_quantized():
    model = stack_model(proj=4)
    out = Quantize(bits=4, scales="row").apply(model)
    assert isinstance(out.layer("lstm_1").directions[0].proj, Quantized)
    assert_contract(model, out, probe_inputs(model)[0])


def test_after_prune_keeps_the_mask():
    model = charlm()
    pruned = MagnitudePrune(sparsity=0.7).apply(model)
    out = Quantize(bits=4, group=64).apply(pruned)
    for layer, before in zip(out.lstm_layers, pruned.lstm_layers):
        for role, w in layer.directions[0].matrices.items():
            sparse = before.directions[0].matrices[role]
            assert isinstance(sparse, Sparse) and isinstance(w, Quantized)
            np.testing.assert_array_equal(w.mask, sparse.mask)
            assert w.stored_codes == sparse.nnz
            assert not w.materialize()[~sparse.mask].any()
            assert w.nbytes < sparse.nbytes
    assert_contract(model, out, probe_inputs(model)[0])


def test_after_lowrank_quantizes_both_factors():
    model = stack_model()
    layer = model.layer("lstm_1")
    R = layer.directions[0].R.values
    U, s, Vt = np.linalg.svd(R, full_matrices=False)
    lowrank = LowRank(Dense((U[:, :4] * s[:4]).astype(np.float32)),
                      Dense(Vt[:4].astype(np.float32)))
    direction = dataclasses.replace(layer.directions[0], R=lowrank)
    model = model.replace_layer("lstm_1", dataclasses.replace(layer, directions=[direction]))
    out = Quantize(bits=8).apply(model)
    R_q = out.layer("lstm_1").directions[0].R
    assert isinstance(R_q, LowRank)
    assert isinstance(R_q.U, Quantized) and isinstance(R_q.V, Quantized)
    for factor, original in ((R_q.U, lowrank.U), (R_q.V, lowrank.V)):
        expected = quantize_matrix(original.values, 8).materialize()
        np.testing.assert_array_equal(factor.materialize(), expected)


def test_refuses_already_quantized():
    model = Quantize(bits=8).apply(stack_model())
    with pytest.raises(OptionError, match="already quantized.*lstm_0 W"):
        Quantize(bits=4).apply(model)


def test_layers_selects_and_validates():
    model = stack_model()
    out = Quantize(bits=4, layers="lstm_1").apply(model)
    assert out.layer("lstm_0") is model.layer("lstm_0")
    assert isinstance(out.layer("lstm_1").directions[0].W, Quantized)
    with pytest.raises(OptionError, match="lstm_0, lstm_1"):
        Quantize(bits=4, layers="nope").apply(model)


def test_not_smaller_is_kept_with_a_note():
    model = Quantize(bits=16).apply(stack_model())
    out = Quantize(bits=16).apply(model)
    assert out.layer("lstm_0").directions[0].W is model.layer("lstm_0").directions[0].W
    assert any("lstm_0" in note and "kept as they were" in note for note in out.notes)


@pytest.mark.parametrize("params, message", [
    (dict(bits=9), "bits must be one of"),
    (dict(bits=4, scales="row", group=32), "group=32 needs scales=group"),
    (dict(bits=16, group=32), "do not apply to bits=16"),
    (dict(bits=4, group=0), r"group must be in \[1, inf\], got 0"),
    (dict(bits=4, clip="best"), "clip must be one of max, mse"),
])
def test_bad_parameters(params, message):
    with pytest.raises(OptionError, match=message):
        Quantize(**params)


def test_group_implies_group_scales():
    assert Quantize(bits=4, group=32).scales == "group"
    assert Quantize(bits=4).scales == "row"


@pytest.mark.parametrize("name", ["keras2_charlm.h5", "charlm.pt", "charlm.onnx"])
def test_contract_across_formats(name):
    out, _ = apply_checked(Quantize(bits=4, group=64), charlm(name))
    assert all(isinstance(d.R, Quantized) for layer in out.lstm_layers for d in layer.directions)
