"""The interleaved rANS core: exact round trips, size against the ideal code length, refusals."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnshrink.coding import rans
from rnnshrink.coding.tables import PROB_BITS, TOTAL, frequencies


def contexts_tables(rng, alphabets):
    """Random frequency tables (each summing to 2^PROB_BITS) laid one after another."""
    freq = np.concatenate([frequencies(rng.dirichlet(np.full(a, 0.3))) for a in alphabets])
    cum = np.concatenate([np.cumsum(f) - f for f in np.split(freq, np.cumsum(alphabets)[:-1])])
    return freq, cum


def ideal_bits(symbols, freq):
    return float(np.sum(PROB_BITS - np.log2(freq[symbols])))


@pytest.mark.parametrize("n", [0, 1, 2, 2047, 2048, 5000, 70001])
def test_round_trip_single_context(n):
    rng = np.random.default_rng(n)
    freq, cum = contexts_tables(rng, [40])
    symbols = rng.choice(40, n, p=freq / TOTAL)
    stream = rans.encode(symbols, freq, cum)
    np.testing.assert_array_equal(rans.decode(stream, rans.decode_table(freq, cum), n), symbols)


def test_round_trip_with_contexts_and_a_partial_last_step():
    rng = np.random.default_rng(1)
    alphabets = [3, 50, 7, 200]
    freq, cum = contexts_tables(rng, alphabets)
    starts = np.concatenate([[0], np.cumsum(alphabets)])
    n = 3 * 2048 + 999  # three lanes, the last step only partly filled
    contexts = rng.integers(0, 4, n)
    symbols = starts[contexts] + (rng.random(n) * np.array(alphabets)[contexts]).astype(int)
    stream = rans.encode(symbols, freq, cum)
    decoded = rans.decode(stream, rans.decode_table(freq, cum), n, contexts)
    np.testing.assert_array_equal(decoded, symbols)


@pytest.mark.parametrize("n", [5000, 300_000])
def test_size_is_the_ideal_code_length_plus_the_final_states(n):
    """Each lane's final state x in [2^16, 2^32) holds log2(x) - 16 bits of the message in 32
    stored bits, so the stream exceeds -Σ log2 p by between 16 and 32 bits per lane."""
    rng = np.random.default_rng(n)
    freq, cum = contexts_tables(rng, [60])
    symbols = rng.choice(60, n, p=freq / TOTAL)
    excess = 8 * len(rans.encode(symbols, freq, cum)) - ideal_bits(symbols, freq)
    lanes = rans.lane_count(n)
    assert 16 * lanes - 1 <= excess <= 32 * lanes + 1


def test_one_certain_symbol_costs_almost_nothing():
    freq = np.array([TOTAL - 1, 1])
    stream = rans.encode(np.zeros(100_000, int), freq, np.array([0, TOTAL - 1]))
    assert len(stream) <= 4 * rans.lane_count(100_000) + 2 * 4


def test_lane_count_grows_with_the_stream_and_is_capped():
    assert rans.lane_count(0) == 0 and rans.lane_count(1) == 1
    assert rans.lane_count(10 * rans.SYMBOLS_PER_LANE) == 10
    assert rans.lane_count(10**10) == rans.MAX_LANES


def test_decode_table_maps_every_slot_to_its_symbol():
    rng = np.random.default_rng(3)
    freq, cum = contexts_tables(rng, [5, 9])
    step, symbol = rans.decode_table(freq, cum)
    assert step.size == 2 * TOTAL
    slots = np.arange(step.size) % TOTAL
    assert np.all((cum[symbol] <= slots) & (slots < cum[symbol] + freq[symbol]))
    np.testing.assert_array_equal(step & 0xFFFF, freq[symbol])
    np.testing.assert_array_equal(step >> 16, slots - cum[symbol])


@pytest.mark.parametrize("damage", ["truncate", "extend", "flip_state"])
def test_damaged_streams_are_refused(damage):
    rng = np.random.default_rng(4)
    freq, cum = contexts_tables(rng, [30])
    symbols = rng.choice(30, 10_000, p=freq / TOTAL)
    stream = bytearray(rans.encode(symbols, freq, cum))
    if damage == "truncate":
        stream = stream[:-2]
    elif damage == "extend":
        stream += b"\0\0"
    else:
        stream[0] ^= 0x55
    with pytest.raises(ValueError, match="coded stream"):
        rans.decode(bytes(stream), rans.decode_table(freq, cum), symbols.size)


@settings(max_examples=40, deadline=None)
@given(alphabet=st.integers(1, 300), n=st.integers(0, 5000), seed=st.integers(0, 2**32 - 1),
       skew=st.floats(0.01, 10.0))
def test_round_trip_property(alphabet, n, seed, skew):
    rng = np.random.default_rng(seed)
    freq = frequencies(rng.dirichlet(np.full(alphabet, skew)))
    cum = np.cumsum(freq) - freq
    symbols = rng.choice(alphabet, n, p=freq / TOTAL)
    stream = rans.encode(symbols, freq, cum)
    np.testing.assert_array_equal(rans.decode(stream, rans.decode_table(freq, cum), n), symbols)
