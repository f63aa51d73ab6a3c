"""Magnitude pruning (methods.md §4): exact sparsity, kept values, honest bytes."""

import dataclasses

import numpy as np
import pytest

from rnnshrink.errors import OptionError
from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.model import Dense
from rnnshrink.model.weights import LowRank, Sparse, index_encoding
from rnnshrink.transforms import MagnitudePrune, Quantize
from rnnshrink.transforms.prune import magnitude_masks, prune_dense, pruned_count

from _models import apply_checked, assert_contract, charlm, stack_model


def lstm_matrices(model):
    return [w for layer in model.lstm_layers for d in layer.directions
            for w in d.matrices.values()]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_mask_is_exact_and_keeps_the_largest(sparsity):
    x = np.random.default_rng(0).normal(size=(37, 23))
    [mask] = magnitude_masks([x], sparsity)
    assert (~mask).sum() == pruned_count(x.size, sparsity) == round(sparsity * x.size)
    if 0 < mask.sum() < x.size:
        assert np.abs(x[mask]).min() >= np.abs(x[~mask]).max()


def test_ties_are_broken_by_position():
    x = np.ones((3, 4))
    [mask] = magnitude_masks([x], 0.5)
    np.testing.assert_array_equal(mask.ravel(), [False] * 6 + [True] * 6)
    assert np.array_equal(magnitude_masks([x], 0.5)[0], mask)


def test_global_masks_share_one_threshold():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0, 0.1, (20, 30)), rng.normal(0, 1.0, (40, 10))
    masks = magnitude_masks([small, large], 0.6)
    assert sum((~m).sum() for m in masks) == round(0.6 * (small.size + large.size))
    kept = np.concatenate([np.abs(m[k]) for m, k in zip((small, large), masks)])
    dropped = np.concatenate([np.abs(m[~k]) for m, k in zip((small, large), masks)])
    assert kept.min() >= dropped.max()
    assert (~masks[0]).mean() > 0.6 > (~masks[1]).mean()


def test_sparse_bytes_formula():
    x = np.random.default_rng(0).normal(size=(512, 128)).astype(np.float32)
    [mask] = magnitude_masks([x], 0.97)
    sparse = prune_dense(Dense(x), mask)
    assert isinstance(sparse, Sparse)
    nnz = 512 * 128 - round(0.97 * 512 * 128)
    # CSR: one byte per column index (128 columns) plus 513 int32 row pointers.
    assert index_encoding(mask) == ("csr", nnz + 513 * 4)
    assert sparse.nbytes == nnz * 4 + nnz + 513 * 4
    [half] = magnitude_masks([x], 0.5)  # bitmask: one bit per entry
    assert prune_dense(Dense(x), half).nbytes == 512 * 128 // 2 * 4 + 512 * 128 // 8


def test_low_sparsity_stays_dense_with_zeros():
    x = np.random.default_rng(0).normal(size=(64, 300)).astype(np.float32)
    [mask] = magnitude_masks([x], 0.02)
    kept = prune_dense(Dense(x, "bfloat16"), mask)
    # 2-byte values: the bitmask (1/16 of the dense bytes) costs more than 2 % zeros save.
    assert isinstance(kept, Dense) and kept.stored_dtype == "bfloat16"
    np.testing.assert_array_equal(kept.values, np.where(mask, Dense(x, "bfloat16").values, 0))


# ---- the transform -------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["matrix", "global"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_contract_on_charlm(sparsity, scope):
    model = charlm()
    out, _ = apply_checked(MagnitudePrune(sparsity=sparsity, scope=scope), model)
    old, new = lstm_matrices(model), lstm_matrices(out)
    zeros = [(w.materialize() == 0).sum() for w in new]
    if scope == "matrix":
        for w0, w, z in zip(old, new, zeros):
            assert isinstance(w, Sparse) and z == round(sparsity * w0.params)
    else:
        assert sum(zeros) == round(sparsity * sum(w.params for w in old))
    for w0, w in zip(old, new):
        dense, kept = w0.materialize(), w.materialize()
        np.testing.assert_array_equal(kept[kept != 0], dense[kept != 0])  # kept = originals
    for layer, layer0 in zip(out.lstm_layers, model.lstm_layers):
        for d, d0 in zip(layer.directions, layer0.directions):
            np.testing.assert_array_equal(d.b, d0.b)  # biases untouched


def test_error_grows_with_sparsity():
    model = charlm()
    x = probe_inputs(model)[0]
    errors = [compare(model, MagnitudePrune(sparsity=s).apply(model), x)["output_rel_error"]
              for s in (0.0, 0.2, 0.5, 0.8)]
    assert errors[0] == 0.0 and errors == sorted(errors)


def test_zero_sparsity_is_the_identity():
    model = stack_model()
    out = MagnitudePrune(sparsity=0.0).apply(model)
    for w0, w in zip(lstm_matrices(model), lstm_matrices(out)):
        assert isinstance(w, Dense) and w.nbytes == w0.nbytes
        np.testing.assert_array_equal(w.values, w0.values)
    assert out.notes == model.notes


def test_dense_kept_below_break_even_is_noted():
    model = stack_model()
    out = MagnitudePrune(sparsity=0.02).apply(model)
    assert all(isinstance(w, Dense) for w in lstm_matrices(out))
    assert any("lstm_0" in n and "kept dense" in n for n in out.notes)
    assert_contract(model, out, probe_inputs(model)[0])


def test_lowrank_factors_are_pruned():
    model = stack_model()
    layer = model.layer("lstm_1")
    rng = np.random.default_rng(3)
    lowrank = LowRank(Dense(rng.normal(size=(32, 4)).astype(np.float32)),
                      Dense(rng.normal(size=(4, 8)).astype(np.float32)))
    direction = dataclasses.replace(layer.directions[0], R=lowrank)
    model = model.replace_layer("lstm_1", dataclasses.replace(layer, directions=[direction]))
    out = MagnitudePrune(sparsity=0.75, layers="lstm_1").apply(model)
    R = out.layer("lstm_1").directions[0].R
    assert isinstance(R, LowRank) and isinstance(R.U, Sparse) and isinstance(R.V, Sparse)
    assert R.U.nnz == 32 and R.V.nnz == 8
    assert out.layer("lstm_0") is model.layer("lstm_0")


def test_projection_is_pruned():
    model = stack_model(proj=4)
    out = MagnitudePrune(sparsity=0.9).apply(model)
    assert isinstance(out.layer("lstm_1").directions[0].proj, Sparse)


def test_refuses_quantized():
    model = Quantize(bits=8).apply(stack_model())
    with pytest.raises(OptionError, match="lstm_0 W.*quantized.*before quant"):
        MagnitudePrune(sparsity=0.5).apply(model)


@pytest.mark.parametrize("params, message", [
    (dict(sparsity=1.0), r"sparsity must be in \[0, 1\), got 1.0"),
    (dict(sparsity=-0.1), r"sparsity must be in \[0.0, 1.0\], got -0.1"),
    (dict(scope="row"), "scope must be one of matrix, global"),
])
def test_bad_parameters(params, message):
    with pytest.raises(OptionError, match=message):
        MagnitudePrune(**params)


def test_unknown_layer():
    with pytest.raises(OptionError, match="lstm_0, lstm_1"):
        MagnitudePrune(sparsity=0.5, layers="lstm_9").apply(stack_model())


@pytest.mark.parametrize("name", ["keras2_charlm.h5", "charlm.pt", "charlm.onnx"])
def test_contract_across_formats(name):
    out, _ = apply_checked(MagnitudePrune(sparsity=0.8, scope="global"), charlm(name))
    assert all(isinstance(w, Sparse) for w in lstm_matrices(out))
