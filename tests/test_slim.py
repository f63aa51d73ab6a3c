"""The slim transform: gate fits, exact recovery of a network that already is a variant, the
transform contract on real models, refusals, later steps, and the command line."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from rnnshrink.cli import cli
from rnnshrink.errors import OptionError
from rnnshrink.fidelity import probe_inputs
from rnnshrink.io import container, read
from rnnshrink.model import (
    HARD_SIGMOID_KERAS2,
    SIGMOID,
    Activation,
    Dense,
    LSTMDirection,
    LSTMLayer,
    Model,
    run_stack,
)
from rnnshrink.model.gated import SLIM_VARIANTS, Gated
from rnnshrink.pipeline import Pipeline, parse_step
from rnnshrink.transforms import Context
from rnnshrink.transforms.slim import fit_gate

from _models import (
    FIXTURES,
    TABLE,
    assert_contract,
    assert_unchanged,
    charlm,
    random_parameters,
    snapshot,
    stack_model,
    variant_direction,
)


def slimmed(model, *steps):
    """``model`` after the pipeline ``steps``, fitted on its probe inputs."""
    x, probe = probe_inputs(model)
    return Pipeline([parse_step(s) for s in steps]).run(model, Context(inputs=x, probe=probe))


@pytest.mark.parametrize("recurrent,bias", [("full", True), ("full", False), ("diag", True),
                                            ("diag", False), ("zero", True)])
def test_fit_gate_recovers_exact_parameters(recurrent, bias):
    rng = np.random.default_rng(0)
    h = rng.normal(0, 1, (200, 5))
    U = rng.normal(0, 1, (5, 5)) if recurrent == "full" else np.diag(rng.normal(0, 1, 5))
    U = U if recurrent != "zero" else np.zeros((5, 5))
    b = rng.normal(0, 1, 5) if bias else np.zeros(5)
    block, fitted = fit_gate(h, h @ U.T + b, recurrent, bias)
    expected = {"full": U, "diag": np.diag(U), "zero": None}[recurrent]
    if expected is None:
        assert block is None
    else:
        np.testing.assert_allclose(block, expected, atol=1e-10)
    np.testing.assert_allclose(fitted, b, atol=1e-10)


def test_fit_gate_is_least_squares():
    """A gate the reduced form cannot express gets the least-squares fit: residual orthogonal
    to what the fit reads."""
    rng = np.random.default_rng(1)
    h, z = rng.normal(0, 1, (300, 4)), rng.normal(0, 1, (300, 4))
    u, b = fit_gate(h, z, "diag", True)
    residual = z - (h * u + b)
    np.testing.assert_allclose((residual * h).sum(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(residual.sum(axis=0), 0, atol=1e-9)
    assert fit_gate(h, z, "zero", False)[1].tolist() == [0, 0, 0, 0]


def standard_of(direction):
    """A standard LSTM direction computing exactly what the variant ``direction`` computes."""
    return LSTMDirection(W=Dense(direction.W.materialize(np.float32)),
                         R=Dense(direction.R.materialize(np.float32)),
                         b=direction.b.astype(np.float32))


@pytest.mark.parametrize("activation", [SIGMOID, HARD_SIGMOID_KERAS2])
@pytest.mark.parametrize("variant", SLIM_VARIANTS)
def test_a_network_that_already_is_the_variant_is_recovered(variant, activation):
    rng = np.random.default_rng(5)
    directions = [variant_direction(variant, random_parameters(variant, 6, width, rng), activation)
                  for width in (4, 6, 6)]
    truth = [LSTMLayer("first", directions[:1], gate_activation=activation),
             LSTMLayer("second", directions[1:], gate_activation=activation)]
    model = Model([LSTMLayer(layer.name, [standard_of(d) for d in layer.directions],
                             gate_activation=activation) for layer in truth])
    out = slimmed(model, f"slim:variant={variant}")
    for layer, expected in zip(out.lstm_layers, truth):
        assert layer.variant == variant and layer.params == expected.params
        for got, want in zip(layer.directions, expected.directions):
            for role in ("W", "R"):
                assert getattr(got, role).structure == getattr(want, role).structure
                np.testing.assert_allclose(getattr(got, role).materialize(),
                                           getattr(want, role).materialize(), atol=2e-5)
            np.testing.assert_allclose(got.b, want.b, atol=2e-5)
    x = probe_inputs(model)[0]
    assert assert_contract(model, out, x) < 1e-5


@pytest.mark.parametrize("variant", SLIM_VARIANTS)
def test_charlm_counts_and_contract(variant):
    model = charlm("charlm.pt")
    before = snapshot(model)
    out = slimmed(model, f"slim:variant={variant}")
    assert_unchanged(model, before)
    assert np.isfinite(assert_contract(model, out, probe_inputs(model)[0]))
    for layer in out.lstm_layers:
        assert layer.variant == variant
        assert layer.params == TABLE[variant](128, layer.input_size)
    assert sum(f"slim lstm_l{k}: {variant} fitted on 400 states" in note
               for note in out.notes for k in (0, 1)) == 2


@pytest.mark.parametrize("variant", ["LSTM1", "LSTM5a", "LSTM10"])
def test_bidirectional_unknown_topology_and_layer_choice(variant):
    model = stack_model(sizes=(6, 20, 16), directions=(2, 2), known=False,
                        gate=HARD_SIGMOID_KERAS2)
    out = slimmed(model, f"slim:variant={variant},layers=lstm_1")
    assert [layer.variant for layer in out.lstm_layers] == ["LSTM", variant]
    assert out.layer("lstm_1").params == 2 * TABLE[variant](16, 40)
    assert np.isfinite(assert_contract(model, out, probe_inputs(model)[0]))


@pytest.mark.parametrize("steps,message", [
    (["slim"], "slim: give variant=, one of LSTM1, LSTM2"),
    (["slim:variant=LSTM7"], "slim: variant must be one of LSTM1"),
    (["quant:bits=8", "slim:variant=LSTM3"], "slim must come before quant"),
    (["slim:variant=LSTM3", "svd:rank=4"], "svd needs dense weights, but lstm_0 W is gated: "
                                           "svd must come before slim"),
    (["slim:variant=LSTM3", "slim:variant=LSTM4"], "slim: layer lstm_0 is already a LSTM3"),
])
def test_bad_orders_and_options_are_refused(steps, message):
    with pytest.raises(OptionError, match=message):
        slimmed(stack_model(), *steps)


def test_refusals_name_the_layer_and_the_reason():
    with pytest.raises(OptionError, match=r"lstm_1 has a projection \(proj_size=8\)"):
        slimmed(stack_model(proj=8), "slim:variant=LSTM3")
    tanh_gates = stack_model(gate=Activation("tanh"))
    with pytest.raises(OptionError, match="needs a sigmoid or hard_sigmoid gate activation"):
        slimmed(tanh_gates, "slim:variant=LSTM6")
    assert slimmed(tanh_gates, "slim:variant=LSTM4").lstm_layers[0].variant == "LSTM4"
    model = stack_model()
    clipped = model.replace_layer("lstm_0", dataclasses.replace(model.layer("lstm_0"), clip=10.0))
    with pytest.raises(OptionError, match="by the bias 40, which layer lstm_0's clip=10.0 cuts"):
        slimmed(clipped, "slim:variant=LSTM4a")
    with pytest.raises(OptionError, match="slim: fitting needs calibration inputs"):
        parse_step("slim:variant=LSTM3").apply(model)


def test_quant_and_prune_act_on_the_full_blocks(tmp_path):
    model = stack_model(sizes=(6, 20, 16))
    slim = slimmed(model, "slim:variant=LSTM5a")
    out = slimmed(model, "slim:variant=LSTM5a", "prune:sparsity=0.6", "quant:bits=4,group=8")
    for layer, before in zip(out.lstm_layers, slim.lstm_layers):
        R = layer.directions[0].R
        assert R.structure == ("diag", "zero", "full", "zero")
        assert R.blocks[2].kind == "quantized" and R.blocks[2].mask is not None
        np.testing.assert_array_equal(R.blocks[0], before.directions[0].R.blocks[0])
        assert layer.nbytes < before.nbytes
    x = probe_inputs(model)[0]
    assert assert_contract(model, out, x) < 2 * assert_contract(model, slim, x)
    container.write(out, tmp_path / "m.h5")
    back = read(tmp_path / "m.h5")
    for (y, _, _), (y_back, _, _) in zip(run_stack(out.lstm_layers, x),
                                        run_stack(back.lstm_layers, x)):
        np.testing.assert_array_equal(y, y_back)


def test_cli_compress_and_report(tmp_path):
    output = tmp_path / "x.h5"
    runner = CliRunner()
    result = runner.invoke(cli, ["compress", str(FIXTURES / "charlm.pt"), "-t",
                                 "slim:variant=LSTM3", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert "slim lstm_l0: LSTM3 fitted on 12000 states" in result.output
    table = runner.invoke(cli, ["report", str(output)]).output
    assert "18,944" in table and "33,280" in table and "LSTM3: g float32" in table
    summary = json.loads(runner.invoke(cli, ["report", str(output), "--json"]).output)
    assert [layer["variant"] for layer in summary["lstm_layers"]] == ["LSTM3", "LSTM3"]
    assert summary["lstm_params"] == TABLE["LSTM3"](128, 16) + TABLE["LSTM3"](128, 128)
    assert summary["lstm_bytes"] == 4 * summary["lstm_params"]


def test_gated_weights_in_a_standard_lstm_keep_full_counts():
    """The variant, not the weight kind, decides which biases count: a standard LSTM whose W
    happens to be gated still counts all 4H biases."""
    rng = np.random.default_rng(2)
    W = Gated([rng.normal(0, 1, (3, 2)).astype(np.float32)] * 4, (12, 2))
    direction = LSTMDirection(W=W, R=Dense(rng.normal(0, 1, (12, 3)).astype(np.float32)),
                              b=np.zeros(12, np.float32))
    assert direction.params == TABLE["LSTM"](3, 2)
