"""Drop-in checkpoints: compressed models written back in their source's format and shapes."""

from pathlib import Path

import numpy as np
import pytest

import rnnshrink
from rnnshrink.dropin import expand_to_original, write_same
from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.model.network import run_model
from rnnshrink.pipeline import Pipeline, parse_step
from rnnshrink.transforms import Context

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RECIPES = [
    ["svd:tau=0.7"],
    ["svd:rank=16,joint=true"],
    ["iss:keep=0.5"],
    ["iss:keep=0.75", "svd:tau=0.8", "prune:sparsity=0.5", "quant:bits=4,group=32"],
    ["lowrank:rank=24", "quant:bits=8"],
    ["slim:variant=LSTM6"],
    ["slim:variant=LSTM5", "quant:bits=8"],
]


def compressed(path, recipe):
    original = rnnshrink.read(path)
    context = Context(inputs=probe_inputs(original)[0])
    return original, Pipeline([parse_step(s) for s in recipe]).run(original, context)


def shapes(model):
    return [(layer.name, [(d.W.shape, d.R.shape, d.b.shape) for d in layer.directions])
            for layer in model.lstm_layers]


@pytest.mark.parametrize("recipe", RECIPES, ids=" ".join)
@pytest.mark.parametrize("fixture", ["keras2_charlm.h5", "charlm.pt", "keras2_bidir_hardsig.h5"])
def test_expanded_model_computes_what_the_compressed_model_computes(fixture, recipe):
    original, small = compressed(FIXTURES / fixture, recipe)
    expanded = expand_to_original(small, original)
    assert shapes(expanded) == shapes(original)
    assert all(d.W.kind == "dense" for layer in expanded.lstm_layers for d in layer.directions)
    x, _ = probe_inputs(original)
    # the compressed model and its expansion agree to float32 rounding of the expanded weights
    assert compare(small, expanded, x)["output_rel_error"] < 1e-6


@pytest.mark.parametrize("fixture", ["keras2_charlm.h5", "charlm.pt", "charlm.safetensors",
                                     "keras3_charlm.keras", "charlm.onnx"])
def test_write_same_round_trip(tmp_path, fixture):
    original, small = compressed(FIXTURES / fixture, ["svd:tau=0.8", "quant:bits=8"])
    output = tmp_path / f"out{Path(fixture).suffix}"
    write_same(small, original, output)
    back = rnnshrink.read(output)
    assert back.format == original.format
    assert shapes(back) == shapes(original)
    x, _ = probe_inputs(original)
    expected = run_model(expand_to_original(small, original), x)
    for name, (y, h, c) in run_model(back, x).items():
        assert np.abs(y - expected[name][0]).max() < 1e-5


@pytest.mark.parametrize("fixture", ["charlm.pt", "keras2_bidir_hardsig.h5", "charlm.onnx"])
def test_write_same_of_a_slim_variant(tmp_path, fixture):
    """A Slim LSTM written back as the standard LSTM it is (zero blocks, fixing biases)."""
    original, small = compressed(FIXTURES / fixture, ["slim:variant=LSTM4a"])
    output = tmp_path / f"out{Path(fixture).suffix}"
    write_same(small, original, output)
    back = rnnshrink.read(output)
    assert [layer.variant for layer in back.lstm_layers] == ["LSTM"] * len(back.lstm_layers)
    x, _ = probe_inputs(original)
    expected = run_model(small, x)
    for name, (y, h, c) in run_model(back, x).items():
        assert np.abs(y - expected[name][0]).max() < 1e-5
