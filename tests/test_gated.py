"""Gated matrices and the Slim LSTM variants: the paper's parameter counts, its fixed-gate
constants, and its equations reproduced by the reference forward pass."""

import numpy as np
import pytest

from rnnshrink.errors import OptionError
from rnnshrink.model import (
    HARD_SIGMOID_KERAS2,
    HARD_SIGMOID_KERAS3,
    SIGMOID,
    Activation,
    Dense,
    LSTMDirection,
    LSTMLayer,
    run_layer,
)
from rnnshrink.model.gated import SLIM_VARIANTS, Gated, bias_mask, expand_bias, fixed_bias
from rnnshrink.model.weights import Quantized

from _models import TABLE, random_parameters, variant_direction

def paper_gates(variant, p, h, s):
    """Gates i, f, o and the cell's recurrent term at states ``h`` (batch, n), as
    Akandeh & Salem's cells compute them (``s``: the gate activation)."""
    def U(g):
        return h @ p["U" + g].T

    def u(g):
        return h * p["u" + g]

    b = {g: p.get("b" + g) for g in "ifo"}
    return {
        "LSTM1": lambda: (s(U("i") + b["i"]), s(U("f") + b["f"]), s(U("o") + b["o"]), U("c")),
        "LSTM2": lambda: (s(U("i")), s(U("f")), s(U("o")), U("c")),
        "LSTM3": lambda: (s(b["i"]), s(b["f"]), s(b["o"]), U("c")),
        "LSTM4": lambda: (s(u("i")), s(u("f")), s(u("o")), U("c")),
        "LSTM5": lambda: (s(u("i") + b["i"]), s(u("f") + b["f"]), s(u("o") + b["o"]), U("c")),
        "LSTM4a": lambda: (s(u("i")), 0.96, 1.0, U("c")),
        "LSTM5a": lambda: (s(u("i") + b["i"]), 0.96, 1.0, U("c")),
        "LSTM6": lambda: (1.0, 0.4, 1.0, U("c")),
        "LSTM10": lambda: (s(u("i")), s(u("f")), s(u("o")), u("c")),
        "LSTM11": lambda: (s(u("i") + b["i"]), s(u("f") + b["f"]), s(u("o") + b["o"]), u("c")),
    }[variant]()


def paper_run(variant, p, x, s):
    """The variant's output sequence (batch, time, n) from zero states, by its equations."""
    p = {name: value.astype(np.float64) for name, value in p.items()}
    h = c = np.zeros((x.shape[0], p["bc"].size))
    outputs = []
    for t in range(x.shape[1]):
        i, f, o, recurrent = paper_gates(variant, p, h, s)
        c = f * c + i * np.tanh(x[:, t] @ p["Wc"].T + recurrent + p["bc"])
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1)


@pytest.mark.parametrize("variant", SLIM_VARIANTS)
@pytest.mark.parametrize("n,m", [(1, 1), (3, 5), (8, 2), (16, 16), (128, 16), (33, 128)])
def test_parameter_counts_are_the_papers(variant, n, m):
    p = random_parameters(variant, n, m, np.random.default_rng(n * m))
    direction = variant_direction(variant, p, SIGMOID)
    assert direction.params == TABLE[variant](n, m) == sum(v.size for v in p.values())
    assert direction.nbytes == 4 * direction.params  # float32, one bias vector
    standard = LSTMDirection(W=Dense(direction.W.materialize(np.float32)),
                             R=Dense(direction.R.materialize(np.float32)), b=direction.b)
    assert standard.params == TABLE["LSTM"](n, m)


@pytest.mark.parametrize("activation", [SIGMOID, HARD_SIGMOID_KERAS2])
@pytest.mark.parametrize("variant", SLIM_VARIANTS)
def test_reference_forward_follows_the_papers_equations(variant, activation):
    rng = np.random.default_rng(len(variant))
    p = random_parameters(variant, 6, 4, rng)
    layer = LSTMLayer("slim", [variant_direction(variant, p, activation)],
                      gate_activation=activation)
    x = rng.normal(0, 1, (3, 9, 4))
    np.testing.assert_allclose(run_layer(layer, x)[0], paper_run(variant, p, x, activation),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", [SIGMOID, HARD_SIGMOID_KERAS2, HARD_SIGMOID_KERAS3])
@pytest.mark.parametrize("value", [0.96, 0.4, 1.0])
def test_fixed_gates_hold_the_papers_constants(activation, value):
    b = fixed_bias(activation, value)
    for dtype, tolerance in ((np.float64, 1e-15), (np.float32, 1e-7)):
        gate = activation(np.asarray(b, dtype))
        if value == 1.0:
            assert gate == 1.0  # exactly: the output gate passes tanh(c) unchanged
        else:
            assert abs(gate - value) <= tolerance


def test_fixed_gates_need_a_sigmoid_type_activation():
    with pytest.raises(OptionError, match="needs a sigmoid or hard_sigmoid"):
        fixed_bias(Activation("tanh"), 0.96)


def test_gated_matrix_materializes_counts_and_multiplies():
    rng = np.random.default_rng(0)
    full = rng.normal(0, 1, (3, 3)).astype(np.float32)
    codes = rng.integers(-7, 8, (3, 3)).astype(np.int8)
    quantized = Quantized(codes, np.full((3, 1), 0.125), 4)
    u = rng.normal(0, 1, 3)
    weight = Gated([None, Dense(full), u, quantized], (12, 3))
    expected = np.zeros((12, 3))
    expected[3:6] = full
    expected[6:9] = np.diag(u.astype(np.float32))
    expected[9:] = codes * 0.125
    np.testing.assert_array_equal(weight.materialize(), expected)
    x = rng.normal(0, 1, (2, 5, 3))
    np.testing.assert_allclose(weight.operator()(x), x @ expected.T, rtol=1e-12)
    assert weight.structure == ("zero", "full", "diag", "full")
    assert weight.params == 9 + 3 + 9
    assert weight.macs == 9 + 3 + 9
    assert weight.nbytes == 9 * 4 + 3 * 4 + quantized.nbytes
    assert weight.describe()["blocks"] == {"i": "zero", "f": Dense(full).describe(), "g": "diag",
                                           "o": quantized.describe()}


def test_gated_matrix_refuses_bad_blocks():
    with pytest.raises(ValueError, match="block"):
        Gated([None, np.zeros((2, 3)), None, None], (12, 3))
    with pytest.raises(ValueError, match="diagonal"):
        Gated([None, np.zeros(3), None, None], (12, 4))


def test_directions_must_have_their_variants_structure():
    p = random_parameters("LSTM4", 3, 2, np.random.default_rng(1))
    direction = variant_direction("LSTM4", p, SIGMOID)
    with pytest.raises(ValueError, match="needs W"):
        LSTMDirection(W=Dense(direction.W.materialize()), R=direction.R, b=direction.b,
                      variant="LSTM4")
    with pytest.raises(ValueError, match="needs R"):
        LSTMDirection(W=direction.W, R=direction.R, b=direction.b, variant="LSTM3")
    with pytest.raises(ValueError, match="without a bias must have b = 0"):
        LSTMDirection(W=direction.W, R=direction.R, b=np.ones(12), variant="LSTM4")
    with pytest.raises(ValueError, match="unknown LSTM variant"):
        LSTMDirection(W=direction.W, R=direction.R, b=direction.b, variant="LSTM7")
    fixed = variant_direction("LSTM6", random_parameters("LSTM6", 3, 2, np.random.default_rng(2)),
                              SIGMOID)
    with pytest.raises(ValueError, match="gate i is fixed at 1.0, so its bias must be 5.0"):
        LSTMLayer("x", [fixed], gate_activation=HARD_SIGMOID_KERAS2)


@pytest.mark.parametrize("variant", SLIM_VARIANTS)
def test_stored_bias_entries_expand_back(variant):
    p = random_parameters(variant, 5, 3, np.random.default_rng(3))
    b = variant_direction(variant, p, HARD_SIGMOID_KERAS3).b
    kept = bias_mask(variant, 5)
    assert kept.sum() == 5 * sum("b" + g in p for g in "ifco")
    np.testing.assert_array_equal(expand_bias(variant, HARD_SIGMOID_KERAS3, b[kept], 5), b)
