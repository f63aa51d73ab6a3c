"""The step maps of the whole-model ECSQ allocation: the separable fit and the bisection."""

import numpy as np
import pytest

from rnnshrink.coding import estimate_bits
from rnnshrink.transforms.allocation import (SAMPLE_CODES, Allocation, Matrix, StepShape,
                                             bisect_offset, row_sample, step_shape)


def test_row_rms_sensitivity_gives_steps_proportional_to_row_rms():
    rng = np.random.default_rng(0)
    rms = 2.0 ** rng.integers(-6, 3, size=12)  # exact octaves: exponents are multiples of 8
    W = rng.normal(size=(12, 30)) * rms[:, None]
    shape = step_shape(np.broadcast_to(1 / rms[:, None] ** 2, W.shape))
    assert not shape.col_exp.any()
    S = shape.steps(offset=-3.0)
    np.testing.assert_allclose(S / rms[:, None], (S / rms[:, None])[0, 0])


def test_additive_map_is_recovered_exactly_on_the_eighth_octave_grid():
    rng = np.random.default_rng(1)
    k, l = rng.integers(-40, 40, size=7), rng.integers(-20, 20, size=9)
    log_step = 0.3 + (k - k.mean())[:, None] / 8 + (l - l.mean())[None, :] / 8
    shape = step_shape(4.0 ** -log_step)  # w = 2^(-2 log2 S)
    assert shape.mean == pytest.approx(0.3)
    np.testing.assert_array_equal(shape.row_exp - shape.row_exp[0], k - k[0])
    np.testing.assert_array_equal(shape.col_exp - shape.col_exp[0], l - l[0])


def test_delta_is_float16_and_the_offset_scales_every_step_alike():
    shape = StepShape(0.25, np.array([0, 8], np.int8), np.array([-8, 0, 16], np.int8))
    S0, S1 = shape.steps(-5.0), shape.steps(-4.0)
    assert np.float16(shape.delta(-5.0)) == shape.delta(-5.0)
    np.testing.assert_allclose(S1 / S0, 2.0, rtol=1e-3)
    np.testing.assert_allclose(S0[1] / S0[0], 2.0)
    np.testing.assert_allclose(S0[:, 2] / S0[:, 1], 4.0)


def test_empty_matrices_have_a_shape():
    shape = step_shape(np.ones((0, 5)))
    assert shape.row_exp.shape == (0,) and shape.col_exp.shape == (5,)


def test_bisection_reaches_the_budget_from_below():
    def size(t):  # a staircase like real coded sizes, falling with t
        return float(np.floor(1e6 * 2.0 ** -t))
    offset, found = bisect_offset(size, budget=12_345)
    assert 12_345 * 0.998 <= found <= 12_345
    assert size(offset) == found


def test_bisection_returns_the_coarsest_when_the_budget_is_unreachable():
    offset, found = bisect_offset(lambda t: 100.0, budget=10, high=5.0)
    assert (offset, found) == (5.0, 100.0)


def _big_matrix(rows=2048, cols=384, seed=3):
    """A matrix whose row scales vary by 4 octaves, reading correlated inputs (GPTQ's H)."""
    rng = np.random.default_rng(seed)
    rms = 2.0 ** rng.uniform(-3, 1, rows)
    values = (rng.standard_normal((rows, cols)) * rms[:, None]).astype(np.float32)
    X = rng.standard_normal((600, cols)) @ (np.eye(cols) + 0.3 * rng.standard_normal((cols, cols)))
    shape = step_shape(np.broadcast_to(np.mean(X ** 2, axis=0)[None, :], values.shape))
    return Matrix(("lstm", 0, "W", None), values, H=X.T @ X / len(X),
                  sample=row_sample(values.shape, rng)), shape


def test_row_sample_draws_one_row_per_stratum():
    rows = row_sample((4000, 512), np.random.default_rng(0))
    assert rows.size == SAMPLE_CODES // 512
    strata = np.arange(rows.size + 1) * 4000 // rows.size
    assert np.all((rows >= strata[:-1]) & (rows < strata[1:]))
    assert row_sample((500, 512), np.random.default_rng(0)) is None  # small: whole


@pytest.mark.parametrize("gptq", [False, True])
def test_sampled_bytes_are_close_to_the_whole_matrix_and_gptq_rows_are_its_rows(gptq):
    matrix, shape = _big_matrix()
    allocation = Allocation([matrix], [shape], 100, gptq)
    for offset in (-6.0, -3.0):
        codes = matrix.codes(shape, offset, gptq)
        whole = allocation.estimated([codes])
        assert whole == allocation.side + estimate_bits(codes) / 8
        assert allocation.sampled(offset, gptq) == pytest.approx(whole, rel=0.02)
        # GPTQ's rows are independent: a subsample's codes are the whole matrix's rows
        np.testing.assert_array_equal(matrix.codes(shape, offset, gptq, matrix.sample),
                                      codes[matrix.sample])
