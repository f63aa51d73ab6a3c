"""Small IR models built from NumPy arrays, and the checks every transform test shares.

Transform tests use the real fixtures where they exist (:func:`charlm`) and these small models
for properties that need a hand-made structure (bidirectional layers, projections, unknown
topology, hard_sigmoid gates), and Slim LSTM directions built from the paper's parameters.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.model import (
    SIGMOID,
    Dense,
    DenseLayer,
    EmbeddingLayer,
    LSTMDirection,
    LSTMLayer,
    Model,
    dtype_bytes,
    run_stack,
)
from rnnshrink.model.gated import Gated, expand_bias
from rnnshrink.report import summarize

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def lstm_layer(name, input_size, hidden, rng, directions=1, proj=0, inputs=None,
               gate=SIGMOID, scale=0.4):
    """An LSTM layer with random float32 weights (two bias terms, PyTorch style)."""
    out = proj or hidden
    found = []
    for _ in range(directions):
        found.append(LSTMDirection(
            W=rng.normal(0, scale, (4 * hidden, input_size)).astype(np.float32),
            R=rng.normal(0, scale, (4 * hidden, out)).astype(np.float32),
            b=rng.normal(0, scale, 4 * hidden).astype(np.float32),
            proj=rng.normal(0, scale, (proj, hidden)).astype(np.float32) if proj else None,
            bias_terms=2,
        ))
    return LSTMLayer(name, found, gate_activation=gate, inputs=inputs)


def stack_model(sizes=(6, 10, 8), directions=(1, 1), vocab=7, known=True, gate=SIGMOID,
                proj=0, seed=0):
    """``embedding -> lstm_0 -> lstm_1 -> dense`` with random weights.

    Parameters
    ----------
    sizes : (embedding dim, hidden of lstm_0, hidden of lstm_1)
    directions : directions of lstm_0 and lstm_1
    known : bool
        Whether layers name their inputs (``model.consumers`` works) or not (weights-only).
    proj : int
        Projection size of lstm_1 (0 for none).
    """
    rng = np.random.default_rng(seed)
    dim, h0, h1 = sizes
    link = (lambda name: [name]) if known else (lambda name: None)
    first = lstm_layer("lstm_0", dim, h0, rng, directions[0], inputs=link("embedding"), gate=gate)
    second = lstm_layer("lstm_1", first.output_size, h1, rng, directions[1], proj=proj,
                        inputs=link("lstm_0"), gate=gate)
    layers = [
        EmbeddingLayer("embedding", rng.normal(0, 1, (vocab, dim)).astype(np.float32)),
        first,
        second,
        DenseLayer("dense", W=Dense(rng.normal(0, 0.3, (vocab, second.output_size))
                                    .astype(np.float32)),
                   b=rng.normal(0, 0.1, vocab).astype(np.float32), inputs=link("lstm_1")),
    ]
    return Model(layers=layers, format="test", topology="known" if known else "unknown")


def charlm(name="keras2_charlm.h5"):
    """The trained 2-layer, 128-unit char LM fixture (Keras 2 file by default), or skip."""
    import rnnshrink

    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixtures/{name} not generated yet")
    return rnnshrink.read(path)


def snapshot(model):
    """Copies of every array a model holds, to prove a transform left its input alone."""
    found = []
    for layer in model.layers:
        if isinstance(layer, LSTMLayer):
            for direction in layer.directions:
                found += [w.materialize().copy() for w in direction.matrices.values()]
                found.append(direction.b.copy())
        elif isinstance(layer, DenseLayer):
            found.append(layer.W.materialize().copy())
        elif isinstance(layer, EmbeddingLayer):
            found.append(layer.table.copy())
        for key, value in sorted(layer.source.items()):
            found.append(value.copy() if isinstance(value, np.ndarray) else repr((key, value)))
    return found + [repr(model.notes)]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert len(after) == len(before)
    for a, b in zip(before, after):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


def assert_contract(original, compressed, x):
    """The common transform contract: finite outputs, bytes never grow, report agrees.

    Returns the relative error of the model's output (its Dense head when it has one).
    """
    for y, h, c in run_stack(compressed.lstm_layers, x):
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(c))
    for layer in compressed.lstm_layers:
        assert layer.nbytes <= original.layer(layer.name).nbytes
    summary = summarize(compressed)
    assert summary["lstm_bytes"] == sum(layer.nbytes for layer in compressed.lstm_layers)
    for row, layer in zip(summary["lstm_layers"], compressed.lstm_layers):
        matrices = sum(w.nbytes for d in layer.directions for w in d.matrices.values())
        biases = sum(d.bias_params * dtype_bytes(d.bias_dtype) for d in layer.directions)
        assert row["bytes"] == matrices + biases
    error = compare(original, compressed, x)["output_rel_error"]
    assert np.isfinite(error)
    return error


def contract_builds():
    """Builders of the models a transform's contract test runs on: one direction with a Dense
    head, bidirectional with unknown topology, a PyTorch-style projection, the trained char LM."""
    return [
        lambda: stack_model(sizes=(6, 20, 16)),
        lambda: stack_model(sizes=(6, 20, 16), directions=(2, 2), known=False),
        lambda: stack_model(sizes=(6, 20, 16), proj=8),
        charlm,
    ]


def exact_rank_model(rank=3, sizes=(6, 20, 16), directions=(1, 1), seed=0):
    """:func:`stack_model` whose matrices have exact rank ``rank`` (float64).

    Each LSTM direction's ``R`` and every consumer's column block reading that direction share
    one row space ``B`` (rank x out): ``R = A B``, ``K_block = C B``. So a rank-``rank`` SVD
    projection, joint or not, and shared low-rank factors reproduce the model exactly, and
    ``tau = 1`` finds that rank.
    """
    rng = np.random.default_rng(seed + 1)
    base = stack_model(sizes, directions, seed=seed)

    def low(rows, basis):
        return rng.normal(0, 0.3, (rows, rank)) @ basis

    bases = {layer.name: [rng.normal(0, 0.3, (rank, layer.out_size)) for _ in layer.directions]
             for layer in base.lstm_layers}
    layers = []
    for layer in base.layers:
        if isinstance(layer, LSTMLayer):
            feeder = bases.get(layer.inputs[0])
            found = []
            for basis, direction in zip(bases[layer.name], layer.directions):
                rows = direction.W.shape[0]
                W = (np.hstack([low(rows, b) for b in feeder]) if feeder
                     else low(rows, rng.normal(0, 0.3, (rank, layer.input_size))))
                found.append(dataclasses.replace(direction, W=Dense(W), R=Dense(low(rows, basis))))
            layer = dataclasses.replace(layer, directions=found)
        elif isinstance(layer, DenseLayer):
            W = np.hstack([low(layer.W.shape[0], b) for b in bases[layer.inputs[0]]])
            layer = dataclasses.replace(layer, W=Dense(W))
        layers.append(layer)
    return base.replace(layers=layers)


def apply_checked(transform, model):
    """``transform`` applied to ``model`` under the common contract; (output, output error)."""
    before = snapshot(model)
    out = transform.apply(model)
    assert_unchanged(model, before)
    return out, assert_contract(model, out, probe_inputs(model)[0])


def fixture(name):
    """Path of a fixture file (skips the test when it has not been generated)."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} not generated yet")
    return path


def model_of(name, step=None):
    """A fixture read into the IR, after one pipeline step when ``step`` is given."""
    import rnnshrink
    from rnnshrink.pipeline import Pipeline, parse_step
    from rnnshrink.transforms import Context

    model = rnnshrink.read(fixture(name))
    context = Context(inputs=probe_inputs(model)[0])  # what data-aware steps (slim) fit on
    return Pipeline([parse_step(step)]).run(model, context) if step else model


# methods.md §6: parameters of each variant with n units and m inputs (one bias vector)
TABLE = {
    "LSTM": lambda n, m: 4 * (n * m + n * n + n),
    "LSTM1": lambda n, m: n * m + 4 * n * n + 4 * n,
    "LSTM2": lambda n, m: n * m + 4 * n * n + n,
    "LSTM3": lambda n, m: n * m + n * n + 4 * n,
    "LSTM4": lambda n, m: n * m + n * n + 4 * n,
    "LSTM5": lambda n, m: n * m + n * n + 7 * n,
    "LSTM4a": lambda n, m: n * m + n * n + 2 * n,
    "LSTM5a": lambda n, m: n * m + n * n + 3 * n,
    "LSTM6": lambda n, m: n * m + n * n + n,
    "LSTM10": lambda n, m: n * m + 5 * n,
    "LSTM11": lambda n, m: n * m + 8 * n,
}

# Each variant's parameters besides W_c (n, m) and b_c (n,): a full U_g (n, n) or pointwise u_g
# (n,) per gate g in i, f, c, o, and gate biases b_g (n,) — the weights of slim22.py's cells
PARAMETERS = {
    "LSTM1": "Ui Uf Uc Uo bi bf bo",
    "LSTM2": "Ui Uf Uc Uo",
    "LSTM3": "Uc bi bf bo",
    "LSTM4": "ui uf Uc uo",
    "LSTM5": "ui uf Uc uo bi bf bo",
    "LSTM4a": "ui Uc",
    "LSTM5a": "ui Uc bi",
    "LSTM6": "Uc",
    "LSTM10": "ui uf uc uo",
    "LSTM11": "ui uf uc uo bi bf bo",
}


def random_parameters(variant, n, m, rng):
    """Random reduced parameters of ``variant``, float32."""
    p = {"Wc": rng.normal(0, 0.6, (n, m)), "bc": rng.normal(0, 0.3, n)}
    for name in PARAMETERS[variant].split():
        p[name] = rng.normal(0, 0.6, (n, n) if name[0] == "U" else n)
    return {k: v.astype(np.float32) for k, v in p.items()}


def variant_direction(variant, p, activation):
    """The IR direction holding the reduced parameters ``p`` of ``variant``."""
    n, m = p["Wc"].shape
    recurrent = [p.get("U" + g, p.get("u" + g)) for g in "ifco"]
    biases = np.concatenate([p["b" + g] for g in "ifco" if "b" + g in p]).astype(np.float64)
    return LSTMDirection(W=Gated([None, None, p["Wc"], None], (4 * n, m)),
                         R=Gated(recurrent, (4 * n, n)),
                         b=expand_bias(variant, activation, biases, n), variant=variant)


def hide_matplotlib(monkeypatch):
    """Make ``import matplotlib`` fail for the rest of the test, as where it is not installed."""
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
