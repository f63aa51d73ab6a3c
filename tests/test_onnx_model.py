"""``convert --to onnx`` of whole models: original ONNX graphs with LSTM nodes replaced in place,
Keras full models, and the LSTM stack; checked in onnxruntime against the reference pass."""

from pathlib import Path

import numpy as np
import onnx
import pytest

import rnnshrink
from rnnshrink.dropin import write_same
from rnnshrink.io.onnx_model import export_model
from rnnshrink.model import run_layer, run_stack
from rnnshrink.pipeline import Pipeline, parse_step

ort = pytest.importorskip("onnxruntime")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RECIPES = [[], ["svd:rank=32"], ["quant:bits=4,group=64"], ["iss:keep=0.5"],
           ["svd:tau=0.9", "prune:sparsity=0.5", "quant:bits=8"]]


def run_onnx(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def compressed(name, recipe):
    original = rnnshrink.read(FIXTURES / name)
    steps = [parse_step(s) for s in recipe]
    return original, (Pipeline(steps).run(original) if steps else original)


def relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: " ".join(r) or "plain")
def test_original_onnx_graph_with_lstm_nodes_replaced(tmp_path, recipe):
    original, small = compressed("charlm.onnx", recipe)
    exported, dropin = tmp_path / "small.onnx", tmp_path / "dropin.onnx"
    description = export_model(small, exported)
    assert description["graph"] == "original"
    write_same(small, original, dropin)  # the same function at the original shapes
    source = onnx.load(FIXTURES / "charlm.onnx")
    proto = onnx.load(exported)
    assert [i.name for i in proto.graph.input] == [i.name for i in source.graph.input]
    assert [o.name for o in proto.graph.output] == [o.name for o in source.graph.output]
    tokens = np.random.default_rng(0).integers(0, 96, size=(2, 30)).astype(np.int64)
    got = run_onnx(exported, {"tokens": tokens})[0]
    expected = run_onnx(dropin, {"tokens": tokens})[0]
    assert relative(got, expected) < 1e-4
    if recipe:  # compact graph: the file is smaller than the dense original
        assert exported.stat().st_size < (FIXTURES / "charlm.onnx").stat().st_size


@pytest.mark.parametrize("style", ["auto", "scan"])
def test_lstm_nodes_inside_if_branches(tmp_path, style):
    """Nodes in both If branches are replaced; outputs equal the framework's expected ones."""
    _, model = compressed("onnx_handmade_if.onnx", [])
    output = tmp_path / "if.onnx"
    export_model(model, output, style=style)
    expected = np.load(FIXTURES / "expected/onnx_handmade_if.npz")
    X = np.transpose(expected["x"], (1, 0, 2)).astype(np.float32)
    for cond, suffix in ((True, ""), (False, "_else")):
        y0_h, y0_c, y1, y1_h, y1_c = run_onnx(output, {"X": X, "cond": np.array(cond)})
        assert np.abs(y0_h - expected["h0"]).max() < 1e-5
        assert np.abs(y1_h - expected["h1" + suffix]).max() < 1e-5
        assert np.abs(y1_c - expected["c1" + suffix]).max() < 1e-5
    assert not any(n.op_type == "LSTM" for n in onnx.load(output).graph.node) or style == "auto"


def test_layout1_node_runs_in_onnxruntime_after_replacement(tmp_path):
    """onnxruntime refuses layout=1 LSTM nodes; the replacement runs and matches the expected
    outputs computed by onnx's reference evaluator."""
    _, model = compressed("onnx_layout1.onnx", [])
    output = tmp_path / "layout1.onnx"
    export_model(model, output, style="scan")
    expected = np.load(FIXTURES / "expected/onnx_layout1.npz")
    y, y_h, y_c = run_onnx(output, {"X": expected["x"].astype(np.float32)})
    assert y.shape == (3, 7, 2, 7)  # (batch, time, dirs, hidden): layout 1 kept
    assert np.abs(y.reshape(3, 7, 14) - expected["y0"]).max() < 1e-5
    assert np.abs(np.transpose(y_h, (1, 0, 2)) - expected["h0"]).max() < 1e-5


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: " ".join(r) or "plain")
def test_keras_full_model_is_exported_whole(tmp_path, recipe):
    _, small = compressed("keras2_charlm.h5", recipe)
    output = tmp_path / "model.onnx"
    assert export_model(small, output)["graph"] == "keras model"
    tokens = np.random.default_rng(1).integers(0, 96, size=(2, 25)).astype(np.int64)
    logits = run_onnx(output, {"tokens": tokens})[0]
    embedding = next(l for l in small.layers if l.kind == "embedding")
    dense = next(l for l in small.layers if l.kind == "dense")
    y = run_stack(small.lstm_layers, embedding.table[tokens])[-1][0]
    assert relative(logits, y @ dense.W.materialize().T + dense.b) < 1e-4


def test_state_dict_exports_the_stack(tmp_path):
    _, small = compressed("charlm.pt", ["svd:rank=32", "quant:bits=4,group=32"])
    output = tmp_path / "stack.onnx"
    assert export_model(small, output)["graph"] == "lstm stack"
    x = np.random.default_rng(2).standard_normal((3, 20, 16))
    y = run_onnx(output, {"X": np.transpose(x, (1, 0, 2)).astype(np.float32)})[0]
    assert relative(np.transpose(y, (1, 0, 2)), run_stack(small.lstm_layers, x)[-1][0]) < 1e-4


def two_lstm_nodes(rng, hidden=6, size=3):
    """X (T, N, size) [+ initial_h, initial_c of the first node] -> LSTM "first" -> Squeeze ->
    LSTM "second" -> its final hidden state Y_h."""
    from onnx import TensorProto, helper, numpy_helper

    from test_onnx_graph import random_weights

    weights = [*random_weights(rng, 1, hidden, size), *random_weights(rng, 1, hidden, hidden)]
    names = ["W1", "R1", "B1", "W2", "R2", "B2"]
    inits = [numpy_helper.from_array(a, n) for a, n in zip(weights, names)]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    nodes = [helper.make_node("LSTM", ["X", "W1", "R1", "B1", "", "initial_h", "initial_c"],
                              ["Y1"], hidden_size=hidden, name="first"),
             helper.make_node("Squeeze", ["Y1", "axes"], ["X2"]),
             helper.make_node("LSTM", ["X2", "W2", "R2", "B2"], ["", "Y_h"], hidden_size=hidden,
                              name="second")]
    value = helper.make_tensor_value_info
    inputs = [value("X", TensorProto.FLOAT, ["T", "N", size])] + [
        value(n, TensorProto.FLOAT, [1, "N", hidden]) for n in ("initial_h", "initial_c")]
    graph = helper.make_graph(nodes, "g", inputs, [value("Y_h", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("recipe, maps", [(["svd:rank=2,layers=first"], {"state_map0"}),
                                          (["iss:keep=0.5,layers=first"],
                                           {"state_map0", "state_map1"})])
def test_initial_states_mapped_without_identity_maps(tmp_path, recipe, maps):
    """Given initial states reach the compressed layer as h' = P S h0, c' = S c0; an identity
    map (c0 when no unit was removed) is not stored."""
    rng = np.random.default_rng(3)
    source = tmp_path / "m.onnx"
    onnx.save_model(two_lstm_nodes(rng), source)
    _, small = compressed(source, recipe)
    export_model(small, tmp_path / "small.onnx")
    names = [t.name for t in onnx.load(tmp_path / "small.onnx").graph.initializer]
    assert {name[name.index("state_map"):] for name in names if "state_map" in name} == maps
    x = rng.normal(0, 1, (2, 5, 3)).astype(np.float32)
    h0, c0 = (rng.normal(0, 0.5, (1, 2, 6)).astype(np.float32) for _ in range(2))
    feeds = {"X": x.transpose(1, 0, 2).copy(), "initial_h": h0, "initial_c": c0}
    got = run_onnx(tmp_path / "small.onnx", feeds)[0]
    first, second = small.lstm_layers
    kept = first.source.get("iss_kept", [list(range(6))])[0]
    h, c = h0[:, :, kept], c0[:, :, kept]
    if first.directions[0].proj is not None:
        h = h @ first.directions[0].proj.materialize().T
    expected = run_layer(second, run_layer(first, x, (h, c))[0])[1]
    assert np.abs(got - expected).max() < 1e-5
