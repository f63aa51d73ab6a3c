"""cim: QuantizedLSTM's quantizer and PACT on hand-computed values, weight programming, and the
statistics of the per-sequence weight noise."""

import numpy as np
import pytest

from rnnshrink.cim import Crossbar, Settings, pact, program, quantize
from rnnshrink.errors import OptionError
from rnnshrink.model import LSTMDirection, LSTMLayer


@pytest.mark.parametrize("bits, a, x, expected", [
    # b = 2: s = 2, y clamped to ±(1 - 1/2), levels -0.5, 0, 0.5 (times a); 0.25 -> 0.5 s = 0.5
    # is a tie, rounded to even (0), as torch.round
    (2, 1.0, [-0.9, -0.3, -0.2, 0.0, 0.2, 0.25, 0.3, 0.9], [-0.5, -0.5, 0, 0, 0, 0, 0.5, 0.5]),
    (2, 2.0, [0.6, 3.0, -0.4], [1.0, 1.0, 0.0]),
    # b = 3: s = 4, levels k/4 for k in -3..3, clamp at ±0.75
    (3, 1.0, [0.8, 0.3, 0.4, -0.125, -2.0], [0.75, 0.25, 0.5, 0.0, -0.75]),
    # b = 4, a = 0.5: x/a = 0.2, 0.2 * 8 = 1.6 -> 2, 2/8 * 0.5 = 0.125
    (4, 0.5, [0.1, -0.1, 0.5], [0.125, -0.125, 0.4375]),
])
def test_quantizer_hand_computed(bits, a, x, expected):
    np.testing.assert_array_equal(quantize(np.array(x), bits, a), expected)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_quantizer_levels_and_error(bits):
    a, s = 1.5, 2.0 ** (bits - 1)
    x = np.linspace(-3, 3, 20001)
    q = quantize(x, bits, a)
    levels = np.unique(q)
    assert len(levels) == 2**bits - 1
    np.testing.assert_allclose(levels, -levels[::-1])
    assert levels.max() == pytest.approx(a * (1 - 1 / s))
    inside = np.abs(x) <= a * (1 - 1 / s)
    assert np.all(np.abs(q - x)[inside] <= a / (2 * s) + 1e-12)


@pytest.mark.parametrize("bits", [None, 0])
def test_quantizer_off_is_identity(bits):
    x = np.array([0.3, -7.0])
    assert quantize(x, bits, 1.0) is x


def test_pact_is_the_codes_formula():
    x = np.random.default_rng(0).normal(0, 3, 1000)
    for a in (0.5, 1.0, 4.0):
        code = np.sign(x) * 0.5 * (np.abs(x) - np.abs(np.abs(x) - a) + a)
        np.testing.assert_allclose(pact(x, a), code, atol=1e-12)
        np.testing.assert_array_equal(pact(x, a), np.sign(x) * np.minimum(np.abs(x), a))


@pytest.mark.parametrize("settings, message", [
    (dict(input_bits=1), "--input-bits must be 0 (off) or an integer in [2, 16], got 1"),
    (dict(adc_bits=17), "--adc-bits must be 0 (off) or an integer in [2, 16], got 17"),
    (dict(adc_bits=6, adc_clip=-1.0), "--adc-clip must be a positive number, got -1.0"),
    (dict(adc_clip=16.0), "--adc-clip needs --adc-bits (the clip belongs to the ADC)"),
    (dict(noise=-0.1), "--noise must be in [0, 10], got -0.1"),
    (dict(weight_map="round"), "--weight-map must be one of scale, clamp, got 'round'"),
    (dict(max_w=0.0), "--max-w must be a positive number, got 0.0"),
])
def test_settings_refused(settings, message):
    with pytest.raises(OptionError) as error:
        Settings(**settings)
    assert str(error.value) == message


def test_program_scale_and_clamp():
    rng = np.random.default_rng(1)
    M, b = rng.normal(0, 0.5, (8, 5)), np.array([0.1, -3.0, 10.0, 0.0, 1.0, 2.0, -0.2, 0.3])
    peak = np.abs(M).max()
    held, bias, sigma = program(M, Settings(noise=0.1), b)
    np.testing.assert_allclose(held, M, rtol=1e-15)   # full range: nothing clamped
    assert sigma == pytest.approx(0.1 * peak)
    held, bias, _ = program(M, Settings(weight_bits=4), b)
    codes = held / peak * 8                       # Q(M/k; 4, 1) on the grid k * j / 8
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-9)
    assert np.abs(codes).max() == pytest.approx(7)  # the largest weight at the top level
    held, bias, sigma = program(M, Settings(weight_map="clamp", max_w=0.2, noise=0.1), b)
    np.testing.assert_array_equal(held, np.clip(M, -0.2, 0.2))
    np.testing.assert_array_equal(bias, np.clip(b, -6, 6))   # rows_bias
    assert sigma == pytest.approx(0.02)


def layer_with(rng, hidden=8, inputs=5):
    direction = LSTMDirection(W=rng.normal(0, 0.4, (4 * hidden, inputs)),
                              R=rng.normal(0, 0.4, (4 * hidden, hidden)),
                              b=rng.normal(0, 0.1, 4 * hidden))
    return LSTMLayer("l", [direction])


def noise_draws(layer, settings, sequences, seed=0, draw=0):
    """Each sequence's effective perturbation of W, R and b, read through the operators the
    forward pass uses: (W + E_n) applied to basis vectors."""
    direction = layer.directions[0]
    rngs = [np.random.default_rng([seed, draw, n]) for n in range(sequences)]
    peaks = {("l", 0): {}}
    W, R, b, _ = Crossbar(settings, peaks, rngs).direction(layer, 0).operators(direction, np.float64)
    D, H = layer.input_size, layer.hidden_size
    eye = np.broadcast_to(np.eye(D), (sequences, D, D))
    E_w = W(eye) - direction.W.materialize().T                # (n, D, 4H)
    E_r = np.stack([R(np.tile(np.eye(H)[j], (sequences, 1))) for j in range(H)], axis=1)
    E_r = E_r - direction.R.materialize().T
    return E_w, E_r, (b - direction.b)[:, 0]


@pytest.mark.parametrize("weight_map", ["scale", "clamp"])
def test_noise_matches_sigma(weight_map):
    layer = layer_with(np.random.default_rng(2))
    settings = Settings(noise=0.1, weight_map=weight_map, max_w=5.0)
    E_w, E_r, e_b = noise_draws(layer, settings, sequences=40)
    direction = layer.directions[0]
    for noise, matrix in ((E_w, direction.W), (E_r, direction.R), (e_b, direction.W)):
        sigma = 0.1 * (np.abs(matrix.materialize()).max() if weight_map == "scale" else 5.0)
        n = noise.size
        # sample std within 5 standard errors (σ / sqrt(2n)); mean within 5 σ / sqrt(n)
        assert abs(noise.std() / sigma - 1) < 5 / np.sqrt(2 * n)
        assert abs(noise.mean()) < 5 * sigma / np.sqrt(n)


def test_noise_differs_per_sequence_and_is_seeded():
    layer = layer_with(np.random.default_rng(3))
    settings = Settings(noise=0.05)
    first = noise_draws(layer, settings, sequences=3)
    for E in first:
        assert not np.allclose(E[0], E[1])
    for E, again in zip(first, noise_draws(layer, settings, sequences=3)):
        np.testing.assert_array_equal(E, again)
    other = noise_draws(layer, settings, sequences=3, draw=1)
    assert not np.allclose(first[0], other[0])
    # a sequence's draw does not depend on how many sequences are drawn with it
    np.testing.assert_array_equal(noise_draws(layer, settings, sequences=1)[0][0], first[0][0])
