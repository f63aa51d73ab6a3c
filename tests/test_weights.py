"""Weight representations: materialize, byte and multiply-add counts, validation."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnshrink.model.weights import Dense, LowRank, Quantized, Sparse, index_encoding


def test_dense_counts_at_stored_dtype():
    values = np.ones((8, 3), np.float32)
    assert Dense(values).nbytes == 8 * 3 * 4
    assert Dense(values, stored_dtype="bfloat16").nbytes == 8 * 3 * 2
    assert Dense(values).macs == 24 and Dense(values).params == 24
    with pytest.raises(ValueError, match="unsupported weight dtype"):
        Dense(values, stored_dtype="int3")
    with pytest.raises(ValueError, match="must be 2-D"):
        Dense(np.ones(3))


def test_lowrank_product_counts_and_operator():
    rng = np.random.default_rng(0)
    U, V = rng.standard_normal((12, 2)), rng.standard_normal((2, 5))
    weight = LowRank(U, V)
    np.testing.assert_allclose(weight.materialize(), U @ V)
    assert weight.shape == (12, 5) and weight.rank == 2
    assert weight.params == 2 * (12 + 5) and weight.macs == 2 * (12 + 5)
    x = rng.standard_normal((3, 5))
    np.testing.assert_allclose(weight.operator()(x), x @ (U @ V).T)
    with pytest.raises(ValueError, match="do not chain"):
        LowRank(U, V.T)


def test_sparse_keeps_masked_values_and_counts_indices():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((64, 300)).astype(np.float32)
    mask = np.abs(matrix) > 1.5
    weight = Sparse.from_dense(matrix, mask)
    np.testing.assert_array_equal(weight.materialize(), np.where(mask, matrix, 0))
    encoding, index_bytes = index_encoding(mask)
    nnz = int(mask.sum())
    # 300 columns need 2-byte column indices
    assert index_bytes == min(nnz * 2 + 65 * 4, math.ceil(64 * 300 / 8))
    assert weight.nbytes == nnz * 4 + index_bytes and weight.macs == nnz


def test_quantized_per_group_layout_and_bytes():
    codes = np.array([[1, -1, 0, 3, 2], [0, 0, -3, 1, 1]], np.int8)
    steps = np.array([[0.5, 0.25, 1.0], [2.0, 1.0, 0.5]])
    weight = Quantized(codes, steps, bits=3, group=2)
    expected = codes * np.array([[0.5, 0.5, 0.25, 0.25, 1.0], [2.0, 2.0, 1.0, 1.0, 0.5]])
    np.testing.assert_array_equal(weight.materialize(), expected)
    assert weight.nbytes == math.ceil(10 * 3 / 8) + 6 * 2
    with pytest.raises(ValueError, match=r"\|code\| <= 3"):
        Quantized(codes * 2, steps, bits=3, group=2)
    with pytest.raises(ValueError, match="do not fit"):
        Quantized(codes, np.ones((2, 2)), bits=3, group=2)


def test_quantized_with_mask_stores_only_kept_codes():
    codes = np.array([[1, 0, 0, -1]], np.int8)
    mask = np.array([[True, False, True, True]])
    weight = Quantized(codes, np.ones((1, 1)), bits=4, mask=mask)
    assert weight.stored_codes == 3
    assert weight.nbytes == math.ceil(3 * 4 / 8) + 2 + index_encoding(mask)[1]
    with pytest.raises(ValueError, match="outside the mask"):
        Quantized(codes, np.ones((1, 1)), bits=4, mask=~mask)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_quantized_steps_are_float16_exact(rows, cols, bits, seed):
    rng = np.random.default_rng(seed)
    limit = 2 ** (bits - 1) - 1
    codes = rng.integers(-limit, limit + 1, size=(rows, cols))
    steps = rng.random((rows, 1)) + 0.01
    weight = Quantized(codes, steps, bits)
    stored = steps.astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(weight.materialize(), codes * stored)
