"""The entropy coder of weight codes: exact round trips on hostile streams, sizes against the
empirical entropy, the estimate against the real size, the stored form, the model tables."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _models import charlm
from rnnshrink import coding
from rnnshrink.coding import choice, matrix, tables
from rnnshrink.coding.packing import pack_bytes, unpack_bytes

RNG = np.random.default_rng(11)


def gg_codes(rng, shape, alpha, beta=1.0):
    """Rounded generalized-Gaussian samples ``α · sign · Gamma(1/β)^(1/β)``."""
    magnitude = rng.gamma(1.0 / beta, 1.0, shape) ** (1.0 / beta)
    return np.round(alpha * magnitude * rng.choice([-1, 1], shape)).astype(np.int64)


def entropy_bits(values):
    """Order-0 empirical entropy of ``values``, in bits (times their count)."""
    _, counts = np.unique(values, return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def charlm_codes(step_in_rms=0.5):
    """Codes of the char LM's LSTM matrices on a uniform grid of ``step_in_rms`` row RMS."""
    found = []
    for layer in charlm().lstm_layers:
        for W in (m.materialize() for m in layer.directions[0].matrices.values()):
            step = step_in_rms * np.sqrt((W ** 2).mean(axis=1, keepdims=True))
            found.append(np.round(W / step).astype(np.int64))
    return found


def assert_round_trip(codes, mask=None):
    coded = coding.encode(codes, mask)
    np.testing.assert_array_equal(coding.decode(coded), codes)
    assert coding.decode(coded).dtype == np.int32
    stored = coded.to_arrays()
    assert sum(a.nbytes for a in stored.values()) == coded.nbytes
    back = coding.CodedMatrix.from_arrays(stored, codes.shape, mask)
    np.testing.assert_array_equal(coding.decode(back), codes)
    return coded


# ---- round trips ---------------------------------------------------------------------------

def _outliers(shape):
    codes = gg_codes(np.random.default_rng(0), shape, 2.0)
    codes.flat[[0, 7, 11]] = [2**30, -(2**31 - 1), 2**31 - 1]
    codes.flat[-1] = -(2**30)
    return codes


def _row_and_column_scaled(shape):
    rng = np.random.default_rng(12)
    sigma = np.exp(rng.normal(1, 1.0, (shape[0], 1))) * np.exp(rng.normal(0, 1.0, (1, shape[1])))
    return np.round(sigma * rng.standard_normal(shape)).astype(np.int64)


HOSTILE = {
    "zeros": lambda: np.zeros((40, 30), np.int64),
    "one symbol": lambda: np.full((40, 30), -3),
    "one huge symbol": lambda: np.full((20, 9), 2**30),
    "outliers": lambda: _outliers((50, 40)),
    "empty rows": lambda: np.zeros((0, 17), np.int64),
    "empty cols": lambda: np.zeros((17, 0), np.int64),
    "empty": lambda: np.zeros((0, 0), np.int64),
    "1x1": lambda: np.array([[5]]),
    "one row": lambda: gg_codes(np.random.default_rng(1), (1, 700), 3.0),
    "one column": lambda: gg_codes(np.random.default_rng(2), (700, 1), 3.0),
    "int8": lambda: gg_codes(np.random.default_rng(3), (64, 64), 20.0).clip(-128, 127).astype(np.int8),
    "bool": lambda: np.random.default_rng(4).random((30, 30)) < 0.5,
    "alternating extremes": lambda: np.where(np.indices((30, 30)).sum(0) % 2, 2**31 - 1, -(2**31 - 1)),
    "row and column scales": lambda: _row_and_column_scaled((60, 50)),
    "lattice": lambda: gg_codes(np.random.default_rng(5), (6, 100), 1.0) * 4 ** np.arange(6)[:, None],
}


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("masking", ["none", "keeps nothing", "keeps everything", "random"])
def test_hostile_streams_round_trip_exactly(name, masking):
    codes = HOSTILE[name]()
    mask = {"none": None, "keeps nothing": np.zeros(codes.shape, bool),
            "keeps everything": np.ones(codes.shape, bool),
            "random": np.random.default_rng(6).random(codes.shape) < 0.3}[masking]
    if mask is not None:
        codes = np.where(mask, codes, 0)
    coded = assert_round_trip(codes, mask)
    if name == "row and column scales" and masking in ("none", "keeps everything"):
        assert coded.axis == "row+col"
    if mask is not None and not mask.any():
        assert coded.stream == b"" and coded.escapes == b""


@pytest.mark.parametrize("alpha", [0.05, 0.6, 3.0, 40.0, 700.0])
@pytest.mark.parametrize("beta", [0.6, 1.0, 2.0])
def test_generalized_gaussian_codes_round_trip(alpha, beta):
    assert_round_trip(gg_codes(np.random.default_rng(7), (97, 61), alpha, beta))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 40), cols=st.integers(0, 40), seed=st.integers(0, 2**32 - 1),
       alpha=st.floats(0.01, 2000.0), beta=st.sampled_from([0.5, 1.0, 2.0]),
       keep=st.sampled_from([None, 0.0, 0.5, 1.0]), outliers=st.integers(0, 3))
def test_round_trip_property(rows, cols, seed, alpha, beta, keep, outliers):
    rng = np.random.default_rng(seed)
    codes = gg_codes(rng, (rows, cols), alpha, beta) * rng.choice([1, 3], (rows, 1))
    if codes.size and outliers:
        codes.flat[rng.integers(0, codes.size, outliers)] = rng.integers(-2**31 + 1, 2**31, outliers)
    mask = None if keep is None else rng.random((rows, cols)) < keep
    assert_round_trip(codes if mask is None else np.where(mask, codes, 0), mask)


# ---- sizes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [4096, 65536, 1_000_000])
@pytest.mark.parametrize("alpha, beta", [(0.7, 1.0), (3.0, 1.0), (2.0, 2.0), (6.0, 0.7)])
def test_iid_codes_within_two_percent_of_their_empirical_entropy(n, alpha, beta):
    codes = gg_codes(np.random.default_rng(n), (n // 256, 256), alpha, beta)
    coded = coding.encode(codes)
    assert entropy_bits(codes) <= 8 * coded.nbytes <= 1.02 * entropy_bits(codes)


def test_rows_of_different_scales_get_row_contexts():
    """Rows 1, 4, 16, 64 times as wide: the coder keeps within 2 % of the entropy with one
    empirical distribution per row, far below the order-0 entropy of the whole matrix."""
    rng = np.random.default_rng(8)
    codes = np.concatenate([gg_codes(rng, (1, 20000), 4.0**k) for k in range(4)])
    coded = coding.encode(codes)
    per_row = sum(entropy_bits(row) for row in codes)
    assert coded.axis == "row"
    assert 8 * coded.nbytes <= 1.02 * per_row < 0.9 * entropy_bits(codes)


def test_row_and_column_scales_get_the_joint_model():
    """Gaussian codes of scale 3 a_i b_j (a, b log-normal): the coder picks the row + column
    model (so it beat every one-axis model) and comes within 2 % of the code length under the
    true distribution."""
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(9)
    sigma = 3 * np.exp(rng.normal(0, 0.4, (300, 1))) * np.exp(rng.normal(0, 0.4, (1, 200)))
    codes = np.round(sigma * rng.standard_normal(sigma.shape)).astype(np.int64)
    true_bits = -np.log2(special.ndtr((codes + 0.5) / sigma)
                         - special.ndtr((codes - 0.5) / sigma)).sum()
    coded = coding.encode(codes)
    assert coded.axis == "row+col" and coded.beta == 2.0
    assert 8 * coded.nbytes <= 1.02 * true_bits
    mask = rng.random(codes.shape) < 0.8
    pruned = assert_round_trip(np.where(mask, codes, 0), mask)
    assert pruned.axis == "row+col"


@pytest.mark.parametrize("step_in_rms", [0.25, 0.5, 1.0])
def test_trained_lstm_codes_reach_their_empirical_entropy(step_in_rms):
    """The char LM's matrices on a row-RMS grid: within 1.5 % of the order-0 entropy."""
    for codes in charlm_codes(step_in_rms):
        assert 8 * coding.encode(codes).nbytes <= 1.015 * entropy_bits(codes)


@pytest.mark.parametrize("step_in_rms", [0.25, 0.5, 1.0])
def test_estimate_is_within_one_percent_of_the_real_size(step_in_rms):
    cases = charlm_codes(step_in_rms) + [gg_codes(RNG, (300, 200), 2.5, 1.4)]
    masks = [None] * len(cases) + [RNG.random(cases[0].shape) < 0.5]
    cases.append(np.where(masks[-1], cases[0], 0))
    for codes, mask in zip(cases, masks):
        real = 8 * coding.encode(codes, mask).nbytes
        assert abs(coding.estimate_bits(codes, mask) - real) <= 0.01 * real


def test_stored_bytes_are_the_counted_bytes_and_escapes_are_counted():
    codes = _outliers((50, 40))
    coded = coding.encode(codes)
    assert coded.fields[3] == 4  # escape width of a 2^31 - 1 code
    assert len(coded.escapes) >= 4 * 4
    assert coded.nbytes == sum(len(part) for part in
                               (coded.header, coded.side, coded.escapes, coded.stream))


# ---- refusals and the encoder's own check ------------------------------------------------

@pytest.mark.parametrize("codes, mask, message", [
    (np.ones((3, 3)) * 0.5, None, "2-D integer array"),
    (np.ones(3, int), None, "2-D integer array"),
    (np.array([[2**31]]), None, r"within ±\(2\^31 - 1\)"),
    (np.array([[-2**31]]), None, r"within ±\(2\^31 - 1\)"),
    (np.ones((2, 2), int), np.ones((2, 3), bool), "does not fit"),
    (np.ones((2, 2), int), np.eye(2, dtype=bool), "outside the mask must be zero"),
])
def test_bad_codes_are_refused(codes, mask, message):
    with pytest.raises(ValueError, match=message):
        coding.encode(codes, mask)


def test_a_table_mismatch_is_an_error_not_garbage():
    coded = coding.encode(gg_codes(RNG, (20, 20), 2.0))
    version, shape_index, axis, width, crc = coded.fields
    header = matrix.struct.pack(matrix._HEADER, version, shape_index, axis, width, crc ^ 1)
    with pytest.raises(ValueError, match="CRC mismatch"):
        coding.decode(coding.CodedMatrix(coded.shape, header, coded.side, coded.escapes,
                                         coded.stream))


def test_encode_refuses_to_return_what_does_not_decode(monkeypatch):
    monkeypatch.setattr(matrix, "decode", lambda coded: np.zeros(coded.shape, np.int32))
    with pytest.raises(RuntimeError, match="does not decode"):
        coding.encode(np.ones((3, 3), int))


# ---- the model tables and side packing --------------------------------------------------

@pytest.mark.parametrize("shape_index", range(len(tables.SHAPES)))
def test_tables_are_valid_for_every_context(shape_index):
    for q in range(tables.NUM_SCALES):
        K, freqs = tables.table(shape_index, q)
        assert 1 <= K <= tables.MAX_K and freqs.shape == (2 * K + 2,)
        assert freqs.min() >= 1 and freqs.sum() == tables.TOTAL
        assert np.abs(freqs[:K] - freqs[K + 1:2 * K + 1][::-1]).max() <= 1  # symmetric
        assert freqs[K] == freqs[:-1].max()  # mode at 0


def test_incomplete_gamma_matches_scipy():
    special = pytest.importorskip("scipy.special")
    z = np.concatenate([[0.0], np.logspace(-8, 4, 3000)])
    for beta in tables.SHAPES:
        got, want = tables.upper_gamma(1 / beta, z), special.gammaincc(1 / beta, z)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_choice_counts_magnitudes_per_row_and_column():
    codes = np.array([[0, -2, 9], [1, 1, 0]])
    mask = np.array([[True, True, True], [True, False, True]])
    by_row, by_col = choice.histograms(np.where(mask, codes, 0), mask, limit=3)
    np.testing.assert_array_equal(by_row, [[1, 0, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(by_col, [[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]])


@pytest.mark.parametrize("data", [b"", b"\x05", bytes(range(256)) * 3, b"\x01" * 500])
def test_side_packing_round_trips_and_is_never_longer_than_raw(data):
    packed = pack_bytes(data)
    assert unpack_bytes(packed) == data and len(packed) <= len(data) + 1


@pytest.mark.parametrize("blob", [b"", b"\x07abc", b"\x01\xff\xff\xff", b"\x02garbage"])
def test_damaged_side_information_is_refused(blob):
    with pytest.raises(ValueError):
        unpack_bytes(blob)
